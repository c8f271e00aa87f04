"""generate_and_store in queue mode: the pending record, resuming after a crash, expiry.

A real queue-mode client talks to the emulator over HTTP; outputs go to a private
``memory://`` store, whose objects the tests list straight from the filesystem.
Billing is judged from the emulator's ``GET /_emulator/stats``: ``requests`` counts
submissions, ``billed`` completed (paid) jobs.

A "crash" after the submission is simulated three ways: the process dying while
polling (a client whose ``_wait_for`` raises), a queue timeout (a transient error
after which Prefect would retry the task), and the output store failing to write
the image after the result was downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from emulator import SegmindEmulator
from segmind_core.client import QueuedRequest, RetryPolicy, SegmindClient, service_root
from segmind_core.contract import Endpoint, OutputFormat, SegmindRequest
from segmind_core.errors import (
    NetworkError,
    OutputNotStoredError,
    QueuedResultExpiredError,
    RequestRejectedError,
    SegmindError,
)
from segmind_core.generation import EditResult, generate_and_store
from segmind_core.object_store import ObjectStore
from segmind_core.outputs import (
    PENDING_PREFIX,
    SIDECAR_SUFFIX,
    SPILL_DIR_ENV,
    OutputStore,
    StorageRetry,
    queue_key,
)
from segmind_core.request_spec import RequestSpec
from tests.conftest import EmulatorFactory
from tests.support import (
    decode,
    emulator_client,
    emulator_stats,
    image_bytes,
    serving,
    wait_until,
)

KEY = "SG_queue_generation_key_SECRET_2718"  # fake, recognisable on purpose
DAY = date(2026, 3, 14)
FLOW = "queue-test"
JOB = "cup-1"
OUTPUT_KEY = f"{FLOW}/2026-03-14/{JOB}.png"
API_PENDING_KEY = f"{PENDING_PREFIX}{OUTPUT_KEY}{SIDECAR_SUFFIX}"
FAST = RetryPolicy(backoff_initial_s=0.01, backoff_max_s=0.05)
INPUT = image_bytes((40, 160, 220), (64, 48))
RECORD_FIELDS = {"request_id", "slug", "submitted_at", "request_digest", "seed"}


class Crash(Exception):  # noqa: N818 - a simulated process death, not an error
    """The process "dies" while polling."""


def queue_client(base_url: str, **kwargs: Any) -> SegmindClient:
    settings: dict[str, Any] = {
        "base_url": base_url,
        "retry": FAST,
        "queue": True,
        "poll_interval_s": 0.01,
        "logger": logging.getLogger("tests.segmind_core.generation_queue"),
    }
    settings.update(kwargs)
    return SegmindClient(KEY, **settings)


class CrashWhilePolling(SegmindClient):
    """A queue-mode client that dies right after the queue accepted the request."""

    def _wait_for(
        self, endpoint: Endpoint, request: SegmindRequest, queued: QueuedRequest
    ) -> tuple[dict[str, Any], int]:
        raise Crash


@dataclass
class ImageWriteFailingStore(ObjectStore):
    """A store that cannot write output images (the pending record and sidecars go through)."""

    def write(self, key: str, data: bytes) -> str:
        if key.endswith(".png") or key.endswith(".jpg"):
            raise OSError("simulated crash while storing the image")
        return super().write(key, data)


@pytest.fixture(autouse=True)
def spill_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Paid images storage refused go to a folder of the test's own."""
    folder = tmp_path / "spill"
    monkeypatch.setenv(SPILL_DIR_ENV, str(folder))
    return folder


def no_wait_retry() -> StorageRetry:
    """Storage retries on a fake clock: the whole budget passes without waiting."""
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    return StorageRetry(sleep=sleep, clock=lambda: now[0])


@pytest.fixture
def outputs() -> Iterator[OutputStore]:
    store = OutputStore(ObjectStore.from_url(f"memory://queue-{uuid.uuid4().hex}"))
    yield store
    root = "/" + store.store.root.lstrip("/")
    if store.store.fs.exists(root):
        store.store.fs.rm(root, recursive=True)


def objects(outputs: OutputStore) -> dict[str, bytes]:
    """Every object under the store's base, by key, read straight from the filesystem."""
    fs = outputs.store.fs
    root = "/" + outputs.store.root.lstrip("/")
    if not fs.exists(root):
        return {}
    return {
        path.removeprefix(root + "/"): fs.cat_file(path)
        for path in fs.find(root)
        if not fs.isdir(path)
    }


def record_key(emulator: SegmindEmulator) -> str:
    """The key of the job's pending record for runs against ``emulator``."""
    return queue_key(FLOW, JOB, OutputFormat.PNG, service_root(emulator.url))


def pending_key(emulator: SegmindEmulator) -> str:
    """Where the job's pending record is stored for runs against ``emulator``."""
    return f"{PENDING_PREFIX}{record_key(emulator)}{SIDECAR_SUFFIX}"


def pending_of(outputs: OutputStore) -> dict[str, Any]:
    """The one pending record (not set aside) in ``outputs``."""
    live = [
        key
        for key in objects(outputs)
        if key.startswith(PENDING_PREFIX) and not key.startswith(f"{PENDING_PREFIX}expired/")
    ]
    assert len(live) == 1, live
    record: dict[str, Any] = json.loads(objects(outputs)[live[0]])
    return record


def spec(seed: int | None = 7, prompt: str = "on a beach") -> RequestSpec:
    return RequestSpec("flux-kontext-pro", {"prompt": prompt, "seed": seed}, {"input_image": INPUT})


def run(
    client: SegmindClient, request: RequestSpec, outputs: OutputStore, job_id: str | None = JOB
) -> EditResult:
    return generate_and_store(client, request, outputs, flow_name=FLOW, day=DAY, job_id=job_id)


def stats(emulator: SegmindEmulator) -> dict[str, Any]:
    return emulator_stats(emulator.url)


def settled(emulator: SegmindEmulator) -> dict[str, Any]:
    """The stats once no job is queued or running any more."""
    return wait_until(
        lambda: (
            (s := stats(emulator))["in_flight"] == 0
            and sum(s["jobs"].get(k, 0) for k in ("COMPLETED", "FAILED")) == s["jobs"].get("QUEUED")
            and s
        ),
        what="every job finishing",
    )


def job_status(emulator: SegmindEmulator, request_id: str) -> int:
    with emulator_client(emulator.url, key=KEY) as api:
        return api.get(f"/v2/requests/{request_id}/status").status_code


def sidecar(outputs: OutputStore, key: str = OUTPUT_KEY) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(objects(outputs)[key + SIDECAR_SUFFIX])
    return data


def interrupt(
    how: str, emulator: SegmindEmulator, request: RequestSpec, outputs: OutputStore
) -> None:
    """A first run that is cut off after the queue accepted (and will bill) the request."""
    if how == "crash-while-polling":
        with (
            CrashWhilePolling(
                KEY, base_url=emulator.url, retry=FAST, queue=True, poll_interval_s=0.01
            ) as client,
            pytest.raises(Crash),
        ):
            run(client, request, outputs)
    elif how == "queue-timeout":
        client = queue_client(emulator.url, queue_timeout_s=0.01)
        with client, pytest.raises(NetworkError, match="still"):
            run(client, request, outputs)
    else:
        store = outputs.store
        failing = OutputStore(
            ImageWriteFailingStore(fs=store.fs, protocol=store.protocol, root=store.root),
            retry=no_wait_retry(),
        )
        with (
            queue_client(emulator.url) as client,
            pytest.raises(OutputNotStoredError, match="simulated") as caught,
        ):
            run(client, request, failing)
        assert caught.value.spill_path is not None


# The pending record -------------------------------------------------------------------


def test_the_pending_record_exists_while_polling_and_goes_once_the_output_is_stored(
    start_emulator: EmulatorFactory, outputs: OutputStore
) -> None:
    emulator = start_emulator(api_key=KEY, latency_s=0.5)
    seen_while_polling: list[tuple[dict[str, bytes], int]] = []

    def look_then_sleep(seconds: float) -> None:
        seen_while_polling.append((objects(outputs), stats(emulator)["billed"]))
        time.sleep(seconds)

    started = datetime.now(UTC)
    with queue_client(emulator.url, sleep=look_then_sleep) as client:
        result = run(client, spec(seed=7), outputs)

    assert seen_while_polling, "the client polled at least twice"
    early, billed_then = seen_while_polling[0]
    assert billed_then == 0, "the record was there before the result existed"
    assert pending_key(emulator) in early
    assert OUTPUT_KEY not in early
    text = early[pending_key(emulator)].decode()
    record = json.loads(text)
    assert record.keys() >= RECORD_FIELDS
    assert record["slug"] == "flux-kontext-pro"
    assert record["request_digest"] == result.request_digest
    assert record["seed"] == 7
    submitted = datetime.fromisoformat(record["submitted_at"])
    assert submitted.tzinfo is not None
    assert started <= submitted <= datetime.now(UTC)
    assert KEY not in text
    assert "x-api-key" not in text.lower()

    after = objects(outputs)
    assert not [k for k in after if k.startswith(PENDING_PREFIX)], "the record is removed"
    assert result.key == OUTPUT_KEY
    assert decode(after[OUTPUT_KEY]).format == "PNG"
    assert sidecar(outputs)["request_id"] == record["request_id"]
    assert KEY not in after[OUTPUT_KEY + SIDECAR_SUFFIX].decode()
    snap = settled(emulator)
    assert (snap["requests"], snap["billed"]) == (1, 1)
    assert snap["jobs"] == {"QUEUED": 1, "COMPLETED": 1}


def test_without_queue_mode_no_pending_record_is_written(
    start_emulator: EmulatorFactory, outputs: OutputStore
) -> None:
    emulator = start_emulator(api_key=KEY)
    with queue_client(emulator.url, queue=False) as client:
        run(client, spec(seed=8), outputs)

    assert not [k for k in objects(outputs) if k.startswith(PENDING_PREFIX)]
    assert stats(emulator)["jobs"] == {}, "a /v1 call"


# Resuming -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["crash-while-polling", "queue-timeout", "image-write-fails"])
def test_an_interrupted_run_is_resumed_by_the_next_without_paying_again(
    start_emulator: EmulatorFactory, outputs: OutputStore, how: str
) -> None:
    emulator = start_emulator(api_key=KEY, latency_s=0.3)
    interrupt(how, emulator, spec(seed=7), outputs)

    record = pending_of(outputs)
    assert OUTPUT_KEY not in objects(outputs)
    assert settled(emulator)["billed"] == 1, "the queued request ran and was paid"

    with queue_client(emulator.url) as client:
        result = run(client, spec(seed=7), outputs)

    assert not result.reused
    assert result.key == OUTPUT_KEY
    assert result.seed == 7
    assert result.request_digest == record["request_digest"]
    after = objects(outputs)
    assert decode(after[OUTPUT_KEY]).size == (result.width, result.height)
    stored = sidecar(outputs)
    assert stored["request_id"] == record["request_id"]
    assert stored["seed"] == 7
    assert pending_key(emulator) not in after
    snap = settled(emulator)
    assert snap["requests"] == 1, "nothing was submitted again"
    assert snap["billed"] == 1


def test_an_unseeded_request_under_the_same_job_id_resumes_and_takes_the_pending_seed(
    start_emulator: EmulatorFactory, outputs: OutputStore
) -> None:
    emulator = start_emulator(api_key=KEY, latency_s=0.1)
    interrupt("crash-while-polling", emulator, spec(seed=None), outputs)
    record = pending_of(outputs)
    drawn = record["seed"]
    assert isinstance(drawn, int)
    assert 0 <= drawn < 2**31

    with queue_client(emulator.url) as client:
        result = run(client, spec(seed=None), outputs)

    assert result.seed == drawn
    assert result.request_digest == record["request_digest"]
    stored = sidecar(outputs)
    assert stored["request_id"] == record["request_id"]
    assert stored["seed"] == drawn
    assert stored["parameters"]["seed"] == drawn
    assert pending_key(emulator) not in objects(outputs)
    snap = settled(emulator)
    assert (snap["requests"], snap["billed"]) == (1, 1)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (spec(seed=None), spec(seed=None, prompt="in the snow")),
        (spec(seed=7), spec(seed=8)),
    ],
    ids=["unseeded-other-prompt", "pinned-other-seed"],
)
def test_another_request_under_the_same_job_id_does_not_take_the_pending_one(
    start_emulator: EmulatorFactory, outputs: OutputStore, first: RequestSpec, second: RequestSpec
) -> None:
    emulator = start_emulator(api_key=KEY)
    interrupt("crash-while-polling", emulator, first, outputs)
    record = pending_of(outputs)

    with queue_client(emulator.url) as client:
        result = run(client, second, outputs)

    assert result.request_digest != record["request_digest"]
    assert sidecar(outputs, result.key)["request_id"] != record["request_id"]
    if second.params["seed"] is not None:
        assert result.seed == second.params["seed"]
    snap = settled(emulator)
    assert (snap["requests"], snap["billed"]) == (2, 2)
    # The first request's record is not overwritten: it is kept aside, with why.
    aside = [
        json.loads(data)
        for name, data in objects(outputs).items()
        if name.startswith(f"{PENDING_PREFIX}expired/")
    ]
    assert [(a["request_id"], a["request_digest"]) for a in aside] == [
        (record["request_id"], record["request_digest"])
    ]
    assert aside[0]["set_aside_because"] == f"superseded by request {result.request_digest}"


def test_a_pending_record_whose_output_was_already_stored_is_cleared_without_a_call(
    start_emulator: EmulatorFactory, outputs: OutputStore
) -> None:
    emulator = start_emulator(api_key=KEY)
    interrupt("crash-while-polling", emulator, spec(seed=7), outputs)
    kept = objects(outputs)[pending_key(emulator)]
    with queue_client(emulator.url) as client:
        first = run(client, spec(seed=7), outputs)
    # As if that run had died after the sidecar, before the record was removed.
    outputs.store.write(pending_key(emulator), kept)

    with queue_client(emulator.url) as client:
        again = run(client, spec(seed=7), outputs)

    assert again.reused
    assert again.sha256 == first.sha256
    assert pending_key(emulator) not in objects(outputs)
    snap = settled(emulator)
    assert (snap["requests"], snap["billed"]) == (1, 1)


@pytest.mark.parametrize("why", ["another-request", "refresh"])
def test_a_request_whose_key_is_taken_resumes_after_a_crash(
    start_emulator: EmulatorFactory, outputs: OutputStore, why: str
) -> None:
    """BUG: when the output key is already taken (another request under the same job
    id, or a refresh), the new output gets a time-stamped key and its pending record
    is written under that key; the next run computes a new time stamp, never finds
    the record, and submits (and pays) again."""
    emulator = start_emulator(api_key=KEY)
    with queue_client(emulator.url) as client:
        run(client, spec(seed=7), outputs)
    again = spec(seed=8) if why == "another-request" else spec(seed=7)
    refresh = why == "refresh"

    with (
        CrashWhilePolling(
            KEY, base_url=emulator.url, retry=FAST, queue=True, poll_interval_s=0.01
        ) as crashing,
        pytest.raises(Crash),
    ):
        generate_and_store(
            crashing, again, outputs, flow_name=FLOW, day=DAY, job_id=JOB, refresh=refresh
        )
    pending = [k for k in objects(outputs) if k.startswith(PENDING_PREFIX)]
    assert len(pending) == 1, "the interrupted request is recorded"
    assert settled(emulator)["requests"] == 2

    with queue_client(emulator.url) as client:
        result = generate_and_store(
            client, again, outputs, flow_name=FLOW, day=DAY, job_id=JOB, refresh=refresh
        )

    assert result.key != OUTPUT_KEY, "the first output is kept"
    snap = settled(emulator)
    assert snap["requests"] == 2, (
        f"the crashed request (record {pending[0]}) was not resumed: submitted again"
    )
    assert snap["billed"] == 2
    assert not [k for k in objects(outputs) if k.startswith(PENDING_PREFIX)]


# Expiry -------------------------------------------------------------------------------


def test_an_expired_pending_request_is_set_aside_and_the_next_run_pays_again(
    start_emulator: EmulatorFactory, outputs: OutputStore
) -> None:
    emulator = start_emulator(api_key=KEY, result_ttl_s=0.2)
    interrupt("crash-while-polling", emulator, spec(seed=7), outputs)
    record = pending_of(outputs)
    wait_until(
        lambda: job_status(emulator, record["request_id"]) == 404, what="the result expiring"
    )
    # The record is from a run two hours ago.
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    outputs.store.write(
        pending_key(emulator), json.dumps({**record, "submitted_at": two_hours_ago}).encode()
    )

    with queue_client(emulator.url) as client, pytest.raises(QueuedResultExpiredError) as caught:
        run(client, spec(seed=7), outputs)

    message = caught.value.message
    assert record["request_id"] in message
    assert "expired" in message
    assert "Segmind keeps results for 1 hour" in message
    assert "pays again" in message
    after = objects(outputs)
    assert pending_key(emulator) not in after
    assert OUTPUT_KEY not in after
    aside = [k for k in after if k.startswith(f"{PENDING_PREFIX}expired/{record_key(emulator)}.")]
    assert len(aside) == 1, list(after)
    assert aside[0].endswith(".json")
    kept = json.loads(after[aside[0]])
    assert kept["request_id"] == record["request_id"]
    assert kept["request_digest"] == record["request_digest"]
    assert "expired" in kept["set_aside_because"]
    snap = stats(emulator)
    assert (snap["requests"], snap["billed"]) == (1, 1)

    with queue_client(emulator.url) as client:
        result = run(client, spec(seed=7), outputs)

    assert result.key == OUTPUT_KEY
    assert sidecar(outputs)["request_id"] != record["request_id"]
    assert pending_key(emulator) not in objects(outputs)
    snap = settled(emulator)
    assert (snap["requests"], snap["billed"]) == (2, 2), "a new request, paid again"


def test_a_recent_pending_request_the_queue_does_not_know_is_not_paid_for_again(
    start_emulator: EmulatorFactory, outputs: OutputStore
) -> None:
    # The record names a request this service does not know (made with another key, say).
    emulator = start_emulator(api_key=KEY)
    interrupt("crash-while-polling", emulator, spec(seed=7), outputs)
    record = {**pending_of(outputs), "request_id": "req-made-with-another-key"}
    outputs.store.write(pending_key(emulator), json.dumps(record).encode())

    with queue_client(emulator.url) as client, pytest.raises(RequestRejectedError) as caught:
        run(client, spec(seed=7), outputs)

    assert not isinstance(caught.value, QueuedResultExpiredError)
    assert "req-made-with-another-key" in caught.value.message
    assert "another key or base URL" in caught.value.message
    assert pending_of(outputs)["request_id"] == "req-made-with-another-key", "kept"
    assert stats(emulator)["requests"] == 1, "nothing was submitted again"


def test_a_pending_record_of_another_service_is_not_resumed_and_is_kept(
    start_emulator: EmulatorFactory, outputs: OutputStore
) -> None:
    """BUG: records were keyed by output only, so a run against another service root
    "resumed" the first service's request there (a 404) instead of making its own."""
    first = start_emulator(api_key=KEY)
    interrupt("crash-while-polling", first, spec(seed=7), outputs)
    record = pending_of(outputs)
    other = start_emulator(api_key=KEY)

    with queue_client(other.url) as client:
        result = run(client, spec(seed=7), outputs)

    assert record["service"] == service_root(first.url)
    assert not result.reused
    assert sidecar(outputs, result.key)["service"] == service_root(other.url)
    assert settled(other)["billed"] == 1, "the other service made (and billed) its own"
    # The first service's record is untouched: a run against it still resumes it.
    assert json.loads(objects(outputs)[pending_key(first)]) == record
    with queue_client(first.url) as client:
        resumed = run(client, spec(seed=7), outputs)
    assert sidecar(outputs, resumed.key)["request_id"] == record["request_id"]
    assert resumed.key != result.key
    snap = settled(first)
    assert (snap["requests"], snap["billed"]) == (1, 1)
    assert not [k for k in objects(outputs) if k.startswith(PENDING_PREFIX)]


def test_a_run_killed_after_submitting_is_resumed_on_the_next_utc_day(
    start_emulator: EmulatorFactory, outputs: OutputStore
) -> None:
    """BUG: the record's key held the run's day, so a re-run after midnight (UTC)
    did not find it and paid again."""
    emulator = start_emulator(api_key=KEY)
    interrupt("crash-while-polling", emulator, spec(seed=7), outputs)
    record = pending_of(outputs)

    with queue_client(emulator.url) as client:
        result = generate_and_store(
            client, spec(seed=7), outputs, flow_name=FLOW, day=DAY + timedelta(days=1), job_id=JOB
        )

    snap = settled(emulator)
    assert (snap["requests"], snap["billed"]) == (1, 1), "resumed, not submitted again"
    assert not result.reused
    assert result.key == OUTPUT_KEY, "stored where the paying run meant it to go"
    assert sidecar(outputs)["request_id"] == record["request_id"]
    assert not [k for k in objects(outputs) if k.startswith(PENDING_PREFIX)]


# Requests that can never complete ------------------------------------------------------


@contextmanager
def flaky_input_host(image: bytes, statuses: list[int]) -> Iterator[tuple[str, list[int]]]:
    """Serves ``image`` at ``/cup.png``, answering the n-th GET with ``statuses[n]``
    (200 once the list is used up); yields the URL and the statuses answered."""
    answered: list[int] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                status = statuses[len(answered)] if len(answered) < len(statuses) else 200
                answered.append(status)
            payload = image if status == 200 else b"not found"
            self.send_response(status)
            self.send_header("Content-Type", "image/png" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as base_url:
        yield f"{base_url}/cup.png", answered


def test_a_failed_request_is_submitted_again_by_the_next_run_not_resumed(
    start_emulator: EmulatorFactory, outputs: OutputStore
) -> None:
    """BUG: a FAILED queued request leaves its pending record behind, so every later run
    "resumes" the failed request and fails again without submitting, even once the
    cause is gone. A failed request was not charged and can never complete.
    """
    emulator = start_emulator(api_key=KEY)
    png = image_bytes((40, 160, 220), (64, 48))
    # GET 1: the product's own input check; GET 2: the queue's worker (the host is down).
    with flaky_input_host(png, [200, 404]) as (url, answered):
        request = RequestSpec(
            "flux-kontext-pro", {"prompt": "on a beach", "seed": 7}, {"input_image": url}
        )
        with queue_client(emulator.url) as client, pytest.raises(RequestRejectedError) as caught:
            run(client, request, outputs)
        assert "FAILED" in caught.value.message
        assert answered == [200, 404]
        assert settled(emulator)["billed"] == 0

        # The input host is back: the same request can now succeed.
        with queue_client(emulator.url) as client:
            try:
                result = run(client, request, outputs)
            except SegmindError as error:
                pytest.fail(
                    f"the second run did not submit again ({type(error).__name__}: "
                    f"{error.message}); pending record left: "
                    f"{pending_key(emulator) in objects(outputs)}"
                )

    assert result.key == OUTPUT_KEY
    snap = settled(emulator)
    assert (snap["requests"], snap["billed"]) == (2, 1)
    assert pending_key(emulator) not in objects(outputs)


def test_a_failed_request_leaves_no_pending_record(
    start_emulator: EmulatorFactory, outputs: OutputStore
) -> None:
    """BUG (the cause of the test above): the record outlives a FAILED request."""
    emulator = start_emulator(api_key=KEY)
    png = image_bytes((40, 160, 220), (64, 48))
    with flaky_input_host(png, [200, 404]) as (url, _):
        request = RequestSpec(
            "flux-kontext-pro", {"prompt": "on a beach", "seed": 9}, {"input_image": url}
        )
        with queue_client(emulator.url) as client, pytest.raises(RequestRejectedError):
            run(client, request, outputs)

    assert settled(emulator)["jobs"].get("FAILED") == 1
    assert pending_key(emulator) not in objects(outputs)


def test_the_resumed_run_records_the_cost_and_balance_of_the_queued_request(
    start_emulator: EmulatorFactory, outputs: OutputStore
) -> None:
    emulator = start_emulator(api_key=KEY)
    interrupt("crash-while-polling", emulator, spec(seed=7), outputs)
    settled(emulator)

    with queue_client(emulator.url) as client:
        result = run(client, spec(seed=7), outputs)

    assert result.credits_remaining == Decimal("99.95")
    assert Decimal(sidecar(outputs)["credits_remaining"]) == Decimal("99.95")
    assert Decimal(sidecar(outputs)["cost_usd"]) == Decimal("0.05")


# Two runs of the same job id at once -----------------------------------------------------


class PollsWhenLetGo(SegmindClient):
    """A queue-mode client that, once its request is recorded, polls only when let go."""

    def __init__(self, *args: Any, go: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.go = go

    def _wait_for(
        self, endpoint: Endpoint, request: SegmindRequest, queued: QueuedRequest
    ) -> tuple[dict[str, Any], int]:
        assert self.go.wait(timeout=60), "never let go"
        return super()._wait_for(endpoint, request, queued)


def test_two_runs_of_one_job_id_at_once_keep_each_others_record_and_image(
    start_emulator: EmulatorFactory, outputs: OutputStore
) -> None:
    """Run A is polling when run B (the row edited since) starts under the same job id."""
    emulator = start_emulator(api_key=KEY)
    let_go = {"A": threading.Event(), "B": threading.Event()}
    results: dict[str, EditResult] = {}
    failures: list[BaseException] = []

    def start(name: str, prompt: str) -> threading.Thread:
        def body() -> None:
            client = PollsWhenLetGo(
                KEY,
                base_url=emulator.url,
                retry=FAST,
                queue=True,
                poll_interval_s=0.01,
                go=let_go[name],
            )
            try:
                with client:
                    results[name] = run(client, spec(prompt=prompt), outputs)
            except BaseException as exc:  # reported by the assertions below
                failures.append(exc)

        thread = threading.Thread(target=body, name=f"run-{name}")
        thread.start()
        return thread

    def recorded() -> str | None:
        raw = objects(outputs).get(pending_key(emulator))
        return None if raw is None else str(json.loads(raw)["request_id"])

    run_a = start("A", "on a beach")
    request_a = wait_until(recorded, what="run A's pending record")
    run_b = start("B", "in a forest")
    request_b = wait_until(
        lambda: (found := recorded()) != request_a and found, what="run B's pending record"
    )

    let_go["A"].set()
    run_a.join(timeout=60)
    # A stored its image and left B's record alone: a crash of B now loses nothing.
    assert recorded() == request_b
    let_go["B"].set()
    run_b.join(timeout=60)

    assert not failures, failures
    stored = objects(outputs)
    # Each paid image is kept under its own key, and matches what its run returned.
    assert results["A"].key == OUTPUT_KEY
    assert results["B"].key != OUTPUT_KEY
    for name in ("A", "B"):
        assert hashlib.sha256(stored[results[name].key]).hexdigest() == results[name].sha256
    assert sidecar(outputs, results["B"].key)["parameters"]["prompt"] == "in a forest"
    assert sidecar(outputs)["parameters"]["prompt"] == "on a beach"
    # No record left; A's was set aside by B (the row had changed), never lost.
    assert pending_key(emulator) not in stored
    aside = [k for k in stored if k.startswith(f"{PENDING_PREFIX}expired/")]
    assert [json.loads(stored[k])["request_id"] for k in aside] == [request_a]
    assert settled(emulator)["billed"] == 2


def test_records_set_aside_in_the_same_second_are_all_kept(outputs: OutputStore) -> None:
    for request_id in ("REQ-A", "REQ-B", "REQ-C"):
        outputs.save_pending(OUTPUT_KEY, {"request_id": request_id})
        assert outputs.set_pending_aside(OUTPUT_KEY, f"{request_id} set aside") is not None

    stored = objects(outputs)
    kept = sorted(json.loads(data)["request_id"] for data in stored.values())
    assert kept == ["REQ-A", "REQ-B", "REQ-C"]
    assert API_PENDING_KEY not in stored
    assert outputs.set_pending_aside(OUTPUT_KEY, "nothing pending") is None


def test_a_record_is_cleared_only_by_its_own_request(outputs: OutputStore) -> None:
    outputs.save_pending(OUTPUT_KEY, {"request_id": "REQ-B"})

    assert outputs.clear_pending(OUTPUT_KEY, "REQ-A") is False
    assert pending_of(outputs)["request_id"] == "REQ-B"
    assert outputs.clear_pending(OUTPUT_KEY, "REQ-B") is True
    assert API_PENDING_KEY not in objects(outputs)
