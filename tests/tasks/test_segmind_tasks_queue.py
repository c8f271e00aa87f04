"""A Prefect task retry in queue mode polls the request it had submitted, unpaid.

The task runs in a flow under the Prefect test server, against the emulator over
HTTP. Its first run gives up polling after 50 ms (a queue timeout: a transient
error, so Prefect retries the task); the retry must find the pending record and
poll the same request instead of submitting a new one. The credentials block has
no field for the queue timeout, so ``SegmindCredentials.get_client`` is wrapped
to pass one to the first client only (and a 10 ms poll interval to every client).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import State

from blocks import ObjectStorage, SegmindCredentials
from segmind_core.client import LoggerLike, SegmindClient
from segmind_core.outputs import PENDING_PREFIX, SIDECAR_SUFFIX
from tasks import EditResult, edit_image_with_kontext_pro
from tests.conftest import EmulatorFactory
from tests.support import emulator_client, emulator_stats, image_bytes, wait_until

pytestmark = pytest.mark.usefixtures("prefect_harness")

KEY = "SG_queue_task_key_SECRET_1618"  # fake, recognisable on purpose
TEST_FLOW = "segmind-queue-task-test"
edit_pro = edit_image_with_kontext_pro.with_options(retry_delay_seconds=0)


@pytest.fixture
def first_client_times_out(monkeypatch: pytest.MonkeyPatch) -> list[SegmindClient]:
    """Every client the tasks make; the first one stops polling after 50 ms."""
    made: list[SegmindClient] = []
    original = SegmindCredentials.get_client

    def get_client(
        self: SegmindCredentials, logger: LoggerLike | None = None, **overrides: Any
    ) -> SegmindClient:
        overrides.setdefault("poll_interval_s", 0.01)
        if not made:
            overrides["queue_timeout_s"] = 0.05
        client = original(self, logger, **overrides)
        made.append(client)
        return client

    monkeypatch.setattr(SegmindCredentials, "get_client", get_client)
    return made


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


def run_retried_task(
    start_emulator: EmulatorFactory, tmp_path: Path, seed: int | None, job_id: str | None
) -> tuple[EditResult, dict[str, Any]]:
    """One edit task whose first run times out polling; returns its result and the
    emulator's stats once every job finished. Checks the retry happened."""
    emulator = start_emulator(api_key=KEY, latency_s=0.3)
    credentials = SegmindCredentials(
        api_key=KEY, base_url=emulator.url, queue=True, backoff_initial_s=0.01, backoff_max_s=0.05
    )
    root = tmp_path / "store"
    storage = ObjectStorage(base_url=str(root))
    prompt = f"on a beach {uuid.uuid4().hex}"  # never served from another test's cache

    @flow(name=TEST_FLOW)
    def one_edit() -> EditResult:
        return edit_pro(
            prompt,
            image=image_bytes((40, 160, 220), (64, 48)),
            seed=seed,
            credentials=credentials,
            storage=storage,
            job_id=job_id,
        )

    state: State[EditResult] = one_edit(return_state=True)

    assert state.is_completed(), state
    result = state.result()
    assert isinstance(result, EditResult)
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert [run.run_count for run in runs] == [2], "the task ran twice: once retried"
    stats = wait_until(
        lambda: (s := emulator_stats(emulator.url))["in_flight"] == 0 and s,
        what="every job finishing",
    )
    files = files_under(root)
    assert not [name for name in files if name.startswith(PENDING_PREFIX)]
    sidecar = json.loads(files[result.key + SIDECAR_SUFFIX])
    assert sidecar["task_run_id"] == str(runs[0].id)
    assert sidecar["seed"] == result.seed
    assert KEY not in json.dumps(sidecar)
    with emulator_client(emulator.url, key=KEY) as api:
        job = api.get(f"/v2/requests/{sidecar['request_id']}")
    assert job.json()["metrics"]["seed"] == result.seed, "the sidecar names the queued job"
    return result, stats


@pytest.mark.parametrize(
    ("seed", "job_id"), [(5, None), (None, "cup")], ids=["pinned-seed", "drawn-seed-with-job-id"]
)
def test_a_task_retry_in_queue_mode_resumes_the_submitted_request_unpaid(
    start_emulator: EmulatorFactory,
    tmp_path: Path,
    first_client_times_out: list[SegmindClient],
    seed: int | None,
    job_id: str | None,
) -> None:
    result, stats = run_retried_task(start_emulator, tmp_path, seed, job_id)

    assert len(first_client_times_out) == 2
    assert all(client.queue for client in first_client_times_out)
    assert stats["requests"] == 1, "the retry submitted a new request"
    assert stats["billed"] == 1
    if seed is not None:
        assert result.seed == seed


def test_a_retried_task_with_a_drawn_seed_and_no_job_id_does_not_pay_twice(
    start_emulator: EmulatorFactory,
    tmp_path: Path,
    first_client_times_out: list[SegmindClient],
) -> None:
    """A retry resumes the queued request although the seed was drawn, not pinned.

    The seed is derived from the task run's id, so the retry makes the same
    request (same digest, same output key) and finds its pending record.
    """
    _, stats = run_retried_task(start_emulator, tmp_path, None, None)

    assert stats["requests"] == 1, "the retry submitted (and paid) a new request"
    assert stats["billed"] == 1
