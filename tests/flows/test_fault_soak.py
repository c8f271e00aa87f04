"""Fault soak, CI size: a batch against an emulator that fails often; every row still succeeds.

The full-size run (300 rows at the issue's rates: 10 % 500, 5 % 429, 2 % reset,
2 % truncate, 1 % timeout) is ``python bench/fault_soak.py``; this test shares
its rows and checks and runs 40 rows. At the issue's rates 40 rows would meet a
timeout or a reset only now and then, so the rates here are higher and the
fault sequence is seeded: with seed 16 the run makes 77 requests and meets
10 500s, 9 429s (4 with Retry-After), 8 resets, 6 truncated bodies and 4
timeouts (concurrent calls could move a draw or two, not the mix), and the
test asserts on the emulator's fault counters, so it fails if one kind was not
injected.

Checked by independent clients: boto3 for the objects (one image and one
sidecar per row, each image decodes and matches its sidecar's sha256) and the
emulator's ``/_emulator/stats`` for the money (billed calls equal rows: a
generation that succeeded is never paid twice).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from bench.fault_soak import (
    ISSUE_FAULTS,
    RetryAfterTally,
    SoakCheck,
    SoakRow,
    check_billing,
    check_outputs,
    put_soak_inputs,
)
from blocks import ObjectStorage, SegmindCredentials
from emulator import SegmindEmulator
from flows.batch import BatchOutcome, batch
from tests.conftest import EmulatorFactory, S3Server
from tests.support import API_KEY, emulator_stats

pytestmark = pytest.mark.usefixtures("prefect_harness")

BUCKET = "outputs"
ROWS = 40
# Every kind the issue names, often enough that 40 rows meet each several times.
CI_FAULTS = {"500": 0.15, "429": 0.10, "reset": 0.06, "truncate": 0.06, "timeout": 0.05}
FAULT_SEED = 16
# Well above the slowest real answer (1 s seen here, 2 s on a loaded machine): an answer
# that is paid for but arrives after the read timeout would be paid again by the retry.
READ_TIMEOUT_S = 5.0
SEED_BASE = 830_000  # pinned seeds no other test uses


@dataclass
class Soak:
    """One soak run: its rows, outcome, the objects checked by boto3, the emulator."""

    rows: list[SoakRow]
    outcome: BatchOutcome
    check: SoakCheck
    emulator: SegmindEmulator
    retry_after: RetryAfterTally


def run_soak(
    start_emulator: EmulatorFactory,
    s3: S3Server,
    *,
    rows: int,
    faults: dict[str, float],
    seed_base: int,
    queue: bool = False,
    **emulator_options: Any,
) -> Soak:
    """A batch of ``rows`` against an emulator with ``faults``; every row must succeed."""
    emulator = start_emulator(
        latency_s=0.02,
        faults=faults,
        fault_seed=FAULT_SEED,
        retry_after_s=1,
        retry_after_rate=0.5,
        # Longer than the read timeout: the client gives up first, as on a hung answer.
        timeout_hold_s=READ_TIMEOUT_S + 2.0,
        **emulator_options,
    )
    retry_after = RetryAfterTally(emulator)
    boto = s3.client()
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    manifest, soak_rows = put_soak_inputs(
        boto, prefix, rows, seed_base=seed_base, tag=f"fault soak test {prefix}"
    )
    storage = ObjectStorage(
        base_url=f"s3://{BUCKET}/{prefix}",
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
    )
    credentials = SegmindCredentials(
        api_key=API_KEY,
        base_url=emulator.url,
        read_timeout_s=READ_TIMEOUT_S,
        max_attempts=12,
        backoff_initial_s=0.1,
        backoff_max_s=1.0,
        queue=queue,
    )

    state: Any = batch(
        manifest=manifest,
        storage=storage,
        credentials=credentials,
        max_concurrency=8,
        return_state=True,
    )

    outcome = state.result(raise_on_failure=False)
    assert isinstance(outcome, BatchOutcome), (state, outcome)
    assert state.is_completed(), state.message
    assert (outcome.rows, outcome.succeeded, outcome.failed, outcome.not_run) == (rows, rows, 0, 0)
    expected_usd = sum((row.price_usd for row in soak_rows), Decimal("0"))
    assert outcome.paid_usd == outcome.estimate_usd == expected_usd
    assert outcome.saved_usd == Decimal("0")

    # What landed, read back by boto3: one image and one sidecar per row, nothing else.
    check = check_outputs(boto, prefix, soak_rows, outcome.results_url)
    assert check.problems == []
    assert check.images_checked == rows
    return Soak(soak_rows, outcome, check, emulator, retry_after)


@pytest.mark.timeout(180)
def test_a_batch_under_faults_stores_every_row_and_pays_each_once(
    start_emulator: EmulatorFactory, s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    # moto logs every S3 request (about ten a row); capturing them costs seconds.
    caplog.set_level(logging.WARNING, logger="werkzeug")
    soak = run_soak(start_emulator, s3, rows=ROWS, faults=CI_FAULTS, seed_base=SEED_BASE)
    emulator, rows, check, retry_after = soak.emulator, soak.rows, soak.check, soak.retry_after
    expected_usd = soak.outcome.paid_usd
    assert sum(check.attempts.values()) == ROWS
    assert max(check.attempts) > 1, check.attempts  # some rows needed retries

    # Every kind of fault was met, and 429s came both with and without Retry-After.
    stats = emulator_stats(emulator.url)
    injected = stats["faults_injected"]
    assert set(injected) == set(CI_FAULTS), injected
    assert all(count >= 1 for count in injected.values()), injected
    assert {kind: stats["by_status"].get(kind, 0) for kind in CI_FAULTS} == injected
    assert retry_after.with_header >= 1, vars(retry_after)
    assert retry_after.without_header >= 1, vars(retry_after)
    assert retry_after.with_header + retry_after.without_header == injected["429"]

    # Paid once per row: every request was either one injected fault or one row's 200.
    slowest = (
        f"slowest first-try answer {check.max_first_try_latency_s} s, "
        f"read timeout {READ_TIMEOUT_S} s"
    )
    assert stats["billed"] == ROWS, slowest
    assert stats["requests"] == ROWS + sum(injected.values()), stats
    assert Decimal(str(stats["spent_usd"])).quantize(Decimal("0.01")) == expected_usd
    assert check_billing(stats, rows, CI_FAULTS) == []


@pytest.mark.timeout(180)
def test_with_v1_each_answer_cut_after_the_service_billed_it_is_paid_again(
    start_emulator: EmulatorFactory, s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """The limit of /v1 the README states: a lost answer cannot be fetched again."""
    caplog.set_level(logging.WARNING, logger="werkzeug")
    soak = run_soak(
        start_emulator,
        s3,
        rows=16,
        faults={"truncate": 0.25},
        seed_base=SEED_BASE + 1000,
        bill_cut_answers=True,
    )

    stats = emulator_stats(soak.emulator.url)
    cut = stats["faults_injected"].get("truncate", 0)
    assert cut >= 1, stats
    assert stats["billed"] == 16 + cut


@pytest.mark.timeout(180)
def test_a_queue_batch_under_faults_pays_once_per_row_even_when_polls_and_downloads_fail(
    start_emulator: EmulatorFactory, s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Queue mode: faults on status polls, result reads and downloads cost nothing.

    The service bills cut answers here. The one way to pay twice is a submission
    whose answer (the request id) is cut: its job runs, and nobody knows its id.
    """
    caplog.set_level(logging.WARNING, logger="werkzeug")
    soak = run_soak(
        start_emulator,
        s3,
        rows=ROWS,
        faults=ISSUE_FAULTS,
        seed_base=SEED_BASE + 2000,
        queue=True,
        bill_cut_answers=True,
        queue_read_faults=True,
    )

    stats = emulator_stats(soak.emulator.url)
    injected = stats["faults_injected"]
    on_reads = {kind: n for kind, n in injected.items() if kind.endswith(" on read")}
    assert sum(on_reads.values()) >= 10, injected  # polls and downloads met faults
    assert len(on_reads) >= 3, injected
    cut_submissions = injected.get("truncate", 0)
    assert stats["billed"] == ROWS + cut_submissions, stats
    assert stats["jobs"].get("QUEUED") == stats["billed"]
    assert stats["jobs"].get("COMPLETED") == stats["billed"]
