"""Faults of the infrastructure, through the whole stack, each landing mid-batch.

One stack for the module (`bench.infrastructure_faults.fault_stack`): a real
``prefect server start`` on SQLite, one ``prefect worker start`` on the process
pool, the emulator (1 s per call) and a moto S3 server that the worker reaches
through a loopback TCP proxy the test controls. Each test runs the batch
deployment on a manifest of its own (``ROWS`` rows, new seeds), created through
the REST API as the UI's run form does, and injects its fault once the
emulator has billed a third of the rows: the Prefect server restarted, the
flow-run process killed with SIGKILL and the batch started again with a new
run of the deployment, S3 refusing connections for 20 s, the emulator answering 503 to
everything for 30 s.

Each then checks, from outside the product (the REST API, the emulator's
counters, boto3 on moto): every row stored (image and sidecar, whole) or with a
reason in the results manifest; no image without its sidecar; the bill equal to
the rows stored, plus for the kill only the ``/v1`` answers the README says a
kill may lose; the run's final state agreeing with the results manifest. The
judgement is `bench.infrastructure_faults.judge`; the numbers are printed
(``pytest -s``), and ``python bench/infrastructure_faults.py`` prints them at
a larger size for the README.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.infrastructure_faults import FaultReport, FaultStack, fault_stack, run_fault

pytestmark = pytest.mark.timeout(900)

ROWS = 24
MAX_CONCURRENCY = 4
LATENCY_S = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    directory: Path = tmp_path_factory.mktemp("faults-stack")
    with fault_stack(
        directory, max_concurrency=MAX_CONCURRENCY, latency=LATENCY_S, say=lambda _line: None
    ) as running:
        yield running


def _run(stack: FaultStack, fault: str, seed_base: int) -> FaultReport:
    report = run_fault(
        stack, fault, rows=ROWS, max_concurrency=MAX_CONCURRENCY, seed_base=seed_base
    )
    print(report.line())
    for reason in report.reasons:
        print(f"  reason: {reason}")
    # Mid-batch: the fault began after the first calls were paid and before the last.
    assert 0 < report.injected_at_billed < ROWS, report.line()
    return report


def test_the_prefect_server_restarted_mid_batch(stack: FaultStack) -> None:
    report = _run(stack, "server-restart", 910_000)

    assert report.problems == [], report.line()
    assert report.run_count == 1


def test_the_flow_run_process_killed_mid_batch_and_started_again(stack: FaultStack) -> None:
    report = _run(stack, "flow-run-kill", 920_000)

    assert report.problems == [], report.line()
    # The worker said what happened to the killed process: Crashed, exit code -9.
    assert report.crashed.startswith("Crashed:"), report.crashed
    assert "-9" in report.crashed or "SIGKILL" in report.crashed, report.crashed
    assert report.run_count == 1  # a new run of the deployment, to its end
    assert report.may_lose <= 2 * MAX_CONCURRENCY


def test_s3_unreachable_for_20_s_mid_batch(stack: FaultStack) -> None:
    report = _run(stack, "s3-outage", 930_000)

    assert report.s3_refused > 0, "the stack never met the outage"
    assert report.problems == [], report.line()


def test_segmind_answering_503_for_30_s_mid_batch(stack: FaultStack) -> None:
    report = _run(stack, "segmind-503", 940_000)

    assert report.injected.get("503", 0) > 0, "no call met a 503"
    assert report.problems == [], report.line()
