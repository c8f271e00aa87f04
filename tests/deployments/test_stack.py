"""End to end: the local stack, two process workers, the shared limit, outputs in S3.

``python -m deployments.stack up`` starts a real ``prefect server start`` on
loopback, the emulator (allowing more calls in flight than the ``segmind``
limit), a moto S3 server and two ``prefect worker start`` processes, and
registers the deployments with ``prefect deploy --all``. Two runs of the batch
deployment are triggered through the REST API the way the UI's run form does,
each asking for more concurrency than the limit. Every check uses a client of
its own: the REST API, boto3, the emulator's counters, psutil.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import psutil
import pytest

from deployments.definitions import NIGHTLY_CRON, NIGHTLY_TIMEZONE
from deployments.stack import S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, STACK_ID_ENV, StackState
from tests.support import decode, emulator_stats, image_bytes, wait_until

pytestmark = pytest.mark.timeout(600)

LIMIT = 2
EMULATOR_MAX_CONCURRENCY = 8
ROWS_PER_RUN = 16
EMULATOR_LATENCY_S = 1.0
BATCH = "batch/nightly-catalogue"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _stack(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deployments.stack", "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackState]:
    directory = tmp_path_factory.mktemp("stack")
    started = _stack(
        directory,
        "up",
        "--port",
        "0",
        "--no-ui",
        "--workers",
        "2",
        "--worker-limit",
        "1",
        "--concurrency",
        str(LIMIT),
        "--emulator-latency",
        str(EMULATOR_LATENCY_S),
        "--emulator-max-concurrency",
        str(EMULATOR_MAX_CONCURRENCY),
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        state = StackState.load(directory)
        assert state is not None
        yield state
    finally:
        _stack(directory, "down")  # also after a failed or timed-out up: nothing left behind


def _s3(state: StackState) -> Any:
    """boto3 on the stack's S3 server: an independent client."""
    return boto3.client(
        "s3",
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        region_name="us-east-1",
        endpoint_url=state.s3_endpoint_url,
    )


def _api(state: StackState) -> httpx.Client:
    return httpx.Client(base_url=state.api_url, timeout=30.0)


def _deployment(state: StackState, name: str) -> dict[str, Any]:
    with _api(state) as api:
        response = api.get(f"/deployments/name/{name}")
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def test_prefect_deployment_inspect_shows_the_nightly_schedule_and_the_form(
    stack: StackState,
) -> None:
    env = {**os.environ, **stack.environment()}
    inspected = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "deployment", "inspect", BATCH],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )

    assert inspected.returncode == 0, inspected.stderr
    assert f"'cron': '{NIGHTLY_CRON}'" in inspected.stdout
    assert f"'timezone': '{NIGHTLY_TIMEZONE}'" in inspected.stdout
    assert "'parameter_openapi_schema'" in inspected.stdout
    for parameter in ("manifest", "max_concurrency", "max_cost_usd", "storage", "credentials"):
        assert f"'{parameter}'" in inspected.stdout
    # The saved key is a block's secret: it is in no deployment's parameters.
    assert "local-stack-emulator-key" not in inspected.stdout
    deployment = _deployment(stack, BATCH)
    assert deployment["work_pool_name"] == "segmind-process"
    assert deployment["enforce_parameter_schema"] is True
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [NIGHTLY_CRON]


def _upload_batch(state: StackState, run: int) -> str:
    """A manifest of ``ROWS_PER_RUN`` p-image-edit rows, with its photo, in the bucket."""
    s3 = _s3(state)
    # Under the storage's prefix (outputs/): the worker reads no other part of the bucket.
    photo = f"outputs/inputs/run{run}/photo.jpg"
    s3.put_object(Bucket=state.bucket, Key=photo, Body=image_bytes((30 * run, 90, 160), fmt="JPEG"))
    rows = [
        {
            "id": f"run{run}-row{i}",
            "endpoint": "p-image-edit",
            "prompt": f"a poster, variant {i}",
            "images": [f"s3://{state.bucket}/{photo}"],
            "params": {"seed": 1000 * run + i},
        }
        for i in range(ROWS_PER_RUN)
    ]
    key = f"outputs/manifests/run{run}.jsonl"
    s3.put_object(
        Bucket=state.bucket, Key=key, Body="\n".join(json.dumps(r) for r in rows).encode()
    )
    return f"s3://{state.bucket}/{key}"


def _run_from_the_form(state: StackState, deployment: dict[str, Any], manifest: str) -> str:
    """What the UI's run form sends: the deployment's defaults with the fields changed."""
    parameters = {**deployment["parameters"], "manifest": manifest, "max_concurrency": 8}
    with _api(state) as api:
        # A SQLite server answers 503 when writes collide (the workers write too); the
        # write was rolled back, so asking again is what Prefect's own client does.
        response = wait_until(
            lambda: (
                (
                    r := api.post(
                        f"/deployments/{deployment['id']}/create_flow_run",
                        json={"parameters": parameters, "state": {"type": "SCHEDULED"}},
                    )
                ).status_code
                != 503
                and r
            ),
            timeout=60,
            interval=0.5,
            what="the server to accept the flow run",
        )
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


def _flow_run(state: StackState, run_id: str) -> dict[str, Any]:
    with _api(state) as api:
        response = api.get(f"/flow_runs/{run_id}")
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def _waiting_task_runs(state: StackState, run_id: str) -> int:
    """How many of a flow run's task runs are running (while the test holds every slot,
    each is waiting for one)."""
    with _api(state) as api:
        response = api.post(
            "/task_runs/filter",
            json={
                "flow_runs": {"id": {"any_": [run_id]}},
                "task_runs": {"state": {"type": {"any_": ["RUNNING"]}}},
                "limit": 200,
            },
        )
    response.raise_for_status()
    return len(response.json())


@contextmanager
def _holding_every_slot(state: StackState) -> Iterator[None]:
    """Take the ``segmind`` limit's slots through the REST API, and give them back."""
    with _api(state) as api:
        taken = api.post(
            "/v2/concurrency_limits/increment-with-lease",
            json={
                "names": ["segmind"],
                "slots": LIMIT,
                "mode": "concurrency",
                "lease_duration": 600,
            },
        )
        assert taken.status_code == 200, taken.text
        assert taken.json()["limits"], "the segmind limit exists"
        try:
            yield
        finally:
            api.post(
                "/v2/concurrency_limits/decrement-with-lease",
                json={"lease_id": taken.json()["lease_id"]},
            ).raise_for_status()


def _call_ends(state: StackState, run_id: str) -> list[datetime]:
    """When each Segmind call (task run) of a flow run ended, in order."""
    with _api(state) as api:
        response = api.post(
            "/task_runs/filter",
            json={"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200},
        )
    response.raise_for_status()
    ends = [datetime.fromisoformat(t["end_time"]) for t in response.json() if t["end_time"]]
    assert len(ends) == ROWS_PER_RUN
    return sorted(ends)


def test_two_batches_on_two_workers_stay_under_the_shared_limit(stack: StackState) -> None:
    deployment = _deployment(stack, BATCH)
    # The defaults point at the saved blocks, by reference (what setup put there).
    assert set(deployment["parameters"]["storage"]) == {"$ref"}
    assert set(deployment["parameters"]["credentials"]) == {"$ref"}
    manifests = [_upload_batch(stack, run) for run in (1, 2)]

    # The two flow-run processes start seconds apart (worker polls, process start), which
    # could let one run finish its calls before the other asks for a slot. The test holds
    # every slot until both runs wait for one, so both compete from the first call.
    with _holding_every_slot(stack):
        run_ids = [_run_from_the_form(stack, deployment, m) for m in manifests]
        for run_id in run_ids:
            wait_until(
                lambda run_id=run_id: _waiting_task_runs(stack, run_id) > 0,
                timeout=300,
                interval=0.5,
                what=f"flow run {run_id} to wait for a slot",
            )
        assert emulator_stats(stack.emulator_url)["billed"] == 0  # nothing got past the hold
    runs = [
        wait_until(
            lambda run_id=run_id: (r := _flow_run(stack, run_id))["state_type"] in TERMINAL and r,
            timeout=300,
            interval=0.5,
            what=f"flow run {run_id} to end",
        )
        for run_id in run_ids
    ]

    assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"], [
        r["state"]["message"] for r in runs
    ]
    # Each worker takes one flow run at a time (--worker-limit 1), and the two runs
    # overlapped: two workers ran them at the same time, their calls competing for
    # the same 2 slots.
    spans = [
        (datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"]))
        for r in runs
    ]
    assert spans[0][0] < spans[1][1]
    assert spans[1][0] < spans[0][1]
    # Their calls interleaved too: the process holding the slots let the other in.
    calls = [_call_ends(stack, run_id) for run_id in run_ids]
    assert calls[0][0] < calls[1][-1]
    assert calls[1][0] < calls[0][-1]
    logs = Path(stack.directory) / "logs"
    started_by = {
        worker: sorted(
            r["name"]
            for r in runs
            if f"Flow run '{r['name']}' submitted to infrastructure"
            in (logs / f"{worker}.log").read_text()
        )
        for worker in ("stack-worker-1", "stack-worker-2")
    }
    assert sorted(len(names) for names in started_by.values()) == [1, 1], started_by
    stats = emulator_stats(stack.emulator_url)
    # 16 calls wanted in flight (8 per run); the shared limit let 2 through at a time.
    assert stats["max_in_flight"] == LIMIT < EMULATOR_MAX_CONCURRENCY
    assert stats["billed"] == 2 * ROWS_PER_RUN
    assert stats["by_status"] == {"200": 2 * ROWS_PER_RUN}

    s3 = _s3(stack)
    listed = s3.list_objects_v2(Bucket=stack.bucket, Prefix="outputs/batch/")
    keys = {o["Key"] for o in listed.get("Contents", [])}
    results = [k for k in keys if k.endswith("-results.jsonl")]
    assert len(results) == 2
    lines = [
        json.loads(line)
        for key in results
        for line in s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read().splitlines()
    ]
    assert sorted(line["id"] for line in lines) == sorted(
        f"run{run}-row{i}" for run in (1, 2) for i in range(ROWS_PER_RUN)
    )
    assert {line["status"] for line in lines} == {"succeeded"}
    for line in lines:
        key = line["output"].removeprefix(f"s3://{stack.bucket}/")
        assert key in keys
        data = s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
        decode(data)
        sidecar = json.loads(s3.get_object(Bucket=stack.bucket, Key=f"{key}.json")["Body"].read())
        assert sidecar["output"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_second_up_in_the_same_folder_is_refused_and_starts_nothing(stack: StackState) -> None:
    before = {p.pid for p in _marked(stack.stack_id)}

    again = _stack(Path(stack.directory), "up", "--port", "0", "--no-ui")

    assert again.returncode == 1
    assert "already runs" in again.stderr
    assert StackState.load(Path(stack.directory)) == stack  # the state file is untouched
    assert {p.pid for p in _marked(stack.stack_id)} - before == set()  # nothing new started
    assert all(psutil.pid_exists(p.pid) for p in stack.processes)


def _marked(stack_id: str) -> list[psutil.Process]:
    marked = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(STACK_ID_ENV) == stack_id:
                marked.append(process)
        except psutil.Error:
            continue
    return marked


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


def test_down_stops_every_process_and_frees_every_port(stack: StackState) -> None:
    started = [psutil.Process(p.pid) for p in stack.processes]
    marked = _marked(stack.stack_id)
    urls = [stack.api_url, stack.emulator_url, stack.s3_endpoint_url]
    assert len(started) == 5
    assert {p.pid for p in started} <= {p.pid for p in marked}
    assert all(_listening(url) for url in urls)

    stopped = _stack(Path(stack.directory), "down")

    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    assert [p.pid for p in marked if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert _marked(stack.stack_id) == []
    assert not any(_listening(url) for url in urls)
    assert not (Path(stack.directory) / "stack.json").exists()
    again = _stack(Path(stack.directory), "status")
    assert "no stack in" in again.stdout


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        refused = _stack(tmp_path, "up", "--port", str(port), "--no-ui")

    assert refused.returncode == 1
    assert f"port {port} is in use" in refused.stderr
    state = StackState.load(tmp_path)
    assert state is None or state.processes == []


def test_status_and_down_without_a_stack_say_so(tmp_path: Path) -> None:
    assert "no stack in" in _stack(tmp_path, "status").stdout
    stopped = _stack(tmp_path, "down")
    assert stopped.returncode == 0
    assert "no stack in" in stopped.stdout
