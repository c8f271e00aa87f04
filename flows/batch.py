"""Run a manifest of image edits: bounded concurrency, partial failure, progress, budget.

Each manifest row (`segmind_core.manifest`) is one call, or two for
``replace_background_then_merge``; `segmind_core.batch.run_batch` runs them
with at most ``max_concurrency`` calls in flight. A bad row fails alone; a 406
(credits exhausted) stops new calls. The results manifest (JSONL, one line per
row: ``id``, ``status``, ``output``, ``error``, ``cost_usd``, ``cached``...) is
written next to the outputs, at ``batch/{date}/runs/{run}-results.jsonl``.
The run is Completed only when every row succeeded (or at most
``max_failed_rows`` failed and none was left unrun); otherwise Failed, with the
counts and the results manifest's URL in its message.

From a terminal, with credentials and storage from the environment::

    python -m flows.batch examples/manifests/catalogue.jsonl --output s3://bucket/prefix

(``--queue`` calls through Segmind's v2 queue: a run killed mid-batch and run
again polls the requests it had submitted instead of paying for them again.)

It prints progress, then the results manifest's URL as its last line, and
exits 0 only when the run Completed (1 when it Failed; 2, before anything
starts, for bad arguments, an unreadable manifest, more rows the check refuses
than ``--max-failed-rows`` allows, or no API key).

The command is its user's own: a local manifest is read wherever it is, and the
local files its rows name (relative to it, or absolute) wherever they are,
unless ``SEGMIND_INPUT_ROOTS`` is set (then those roots and the manifest's
folder); a manifest in storage makes its folder readable (``SEGMIND_INPUT_BUCKETS``).
A deployment's runs never come here: the worker's input policy
(`segmind_core.fetch.InputPolicy`) applies to them as configured, and no flow
parameter widens it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import posixpath
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit
from uuid import UUID

from prefect import flow, get_client, get_run_logger
from prefect.client.schemas.objects import State
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from blocks.object_storage import ObjectStorage
from blocks.segmind_credentials import CONCURRENCY_LIMIT_ENV, SegmindCredentials
from flows.common import (
    MAX_CONCURRENCY,
    SEED_MAX,
    TASK_RUNNER_THREADS,
    endpoint_caller,
    refuse_inline_blocks,
    run_file_key,
    run_rows,
)
from segmind_core.batch import (
    BatchReport,
    RowResult,
    RowStatus,
    estimate_cost,
)
from segmind_core.contract import FluxAspectRatio, OutputFormat
from segmind_core.errors import AuthenticationError
from segmind_core.fetch import INPUT_BUCKETS_ENV, INPUT_ROOTS_ENV, display_url
from segmind_core.manifest import REPLACE_BACKGROUND_THEN_MERGE, ManifestError, load_manifest
from tasks.artifacts import BatchProgress, publish_estimate, publish_results
from tasks.caching import storage_location_tag
from tasks.concurrency import require_concurrency_limit

__all__ = ["MAX_CONCURRENCY", "BatchEndpoint", "BatchOutcome", "RowDefaults", "batch", "main"]


class BatchEndpoint(StrEnum):
    """What a manifest row can run: one endpoint, or the two-step flow."""

    FLUX_KONTEXT_PRO = "flux-kontext-pro"
    FLUX_KONTEXT_MAX = "flux-kontext-max"
    MULTI_IMAGE_KONTEXT_PRO = "multi-image-kontext-pro"
    MULTI_IMAGE_KONTEXT_MAX = "multi-image-kontext-max"
    P_IMAGE_EDIT = "p-image-edit"
    REPLACE_BACKGROUND_THEN_MERGE = REPLACE_BACKGROUND_THEN_MERGE


class RowDefaults(BaseModel):
    """Values for the rows that leave them out; a row's own values always win.

    A default applies only to the endpoints that have the parameter
    (p-image-edit has no ``output_format`` or ``safety_tolerance``). A value an
    endpoint refuses (tolerance 4 on a merge, 21:9 on p-image-edit) fails those
    rows, before anything is paid.

    Args:
        endpoint: For rows that name none.
        aspect_ratio: Output ratio; p-image-edit accepts only the first 8 values.
        output_format: ``png`` or ``jpg`` (FLUX endpoints).
        safety_tolerance: 0 (strict) to 6 for single-image FLUX; merges accept 0 to 2.
        seed: 0 to 999999999999999; pins every row without a seed, which makes reruns free
            (served from the cache).
    """

    model_config = ConfigDict(extra="forbid")

    endpoint: BatchEndpoint | None = Field(
        default=None, title="Endpoint", description="For rows that name none."
    )
    aspect_ratio: FluxAspectRatio | None = Field(
        default=None,
        title="Aspect ratio",
        description="Output ratio; p-image-edit accepts only the first 8 values.",
    )
    output_format: OutputFormat | None = Field(
        default=None, title="Output format", description="png or jpg (FLUX endpoints)."
    )
    safety_tolerance: int | None = Field(
        default=None,
        ge=0,
        le=6,
        title="Safety tolerance",
        description="0 (strict) to 6 for single-image FLUX; merges accept 0 to 2.",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=SEED_MAX,
        title="Seed",
        description=(
            "0 to 999999999999999; pins every row without a seed, which makes reruns free "
            "(served from the cache)."
        ),
    )

    def parameters(self) -> dict[str, Any]:
        """The parameter defaults, as manifest ``params``."""
        return self.model_dump(mode="json", exclude={"endpoint"}, exclude_none=True)


class BatchOutcome(BaseModel):
    """What a batch run did.

    Attributes:
        results_url: The results manifest (JSONL, one line per row).
        rows: Rows in the manifest.
        succeeded: Rows with an output.
        failed: Rows that failed (the manifest check's rejects included).
        not_run: Rows left unrun (budget refusal, credits exhausted).
        estimate_usd: List price of every call, before any was made.
        paid_usd: What the run paid.
        saved_usd: List price of the calls served from a cache.
        calls: Task runs started for the rows.
        stopped: Why new calls stopped early, if they did.
    """

    results_url: str
    rows: int
    succeeded: int
    failed: int
    not_run: int
    estimate_usd: Decimal
    paid_usd: Decimal
    saved_usd: Decimal
    calls: int
    stopped: str | None = None


@flow(
    name="batch",
    task_runner=ThreadPoolTaskRunner(max_workers=TASK_RUNNER_THREADS),  # type: ignore[arg-type]
)
def batch(
    manifest: str,
    storage: ObjectStorage | None = None,
    credentials: SegmindCredentials | None = None,
    defaults: RowDefaults | None = None,
    max_concurrency: Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)] = 4,
    max_cost_usd: Annotated[float | None, Field(ge=0)] = None,
    max_failed_rows: Annotated[int, Field(ge=0)] = 0,
    refresh_cache: bool = False,
) -> BatchOutcome | State[Any]:
    """Run every row of a manifest; a bad row fails alone, and a budget guards the spend.

    Args:
        manifest: JSONL or CSV manifest: a local path, s3:// URL or any fsspec URL.
        storage: Where outputs, sidecars, cache records and the results manifest go;
            empty means ./outputs.
        credentials: Segmind credentials block; empty means SEGMIND_API_KEY and SEGMIND_BASE_URL.
        defaults: Endpoint and parameters for rows that leave them out.
        max_concurrency: Calls in flight at most, 1 to 64 (Segmind's own rate limit
            applies too: about 5 a minute on the free tier).
        max_cost_usd: Refuse the batch, before any call, when its estimate is over this.
        max_failed_rows: Failed rows still allowed for the run to end Completed.
        refresh_cache: Generate again even when a cached result exists (pays again).

    Returns:
        The outcome when the run succeeded; otherwise a Failed state whose message
        has the counts and the results manifest's URL.
    """
    logger = get_run_logger()
    refuse_inline_blocks(storage=storage, credentials=credentials)
    storage = storage if storage is not None else ObjectStorage()
    store = storage.get_store()
    defaults = defaults if defaults is not None else RowDefaults()
    checked_credentials = credentials or SegmindCredentials()
    require_concurrency_limit(
        checked_credentials.resolved_concurrency_limit(),
        checked_credentials.resolved_rate_limit(),
    )
    budget = None if max_cost_usd is None else Decimal(str(max_cost_usd))
    checked = load_manifest(
        manifest,
        defaults=defaults.parameters(),
        default_endpoint=None if defaults.endpoint is None else defaults.endpoint.value,
        store=store,
    )
    total = len(checked.rows) + len(checked.rejected)
    publish_estimate(checked.rows, rejected=len(checked.rejected), max_cost_usd=budget)
    for rejected in checked.rejected:
        logger.warning("Rejected (nothing paid): %s", rejected.reason)
    unseeded = sum(1 for row in checked.rows if "seed" not in row.params)
    if unseeded:
        logger.warning(
            "%d row(s) have no seed: each gets a new one and is paid for on every run. "
            "Pin a seed (in the row, or defaults.seed) to make reruns free.",
            unseeded,
        )

    progress = BatchProgress(total)
    call = endpoint_caller(storage, credentials, refresh_cache=refresh_cache)

    def on_result(result: RowResult) -> None:
        progress.advance()
        where = f"-> {result.output}" if result.output else f": {result.error}"
        cost = "cached" if result.cached else f"{result.cost_usd:.2f} USD"
        logger.info(
            "[%d/%d] %s %s (%s) %s", progress.done, total, result.id, result.status, cost, where
        )

    estimate_note = f"; max_cost_usd {budget:.2f}" if budget is not None else ""
    logger.info(
        "Manifest %s: %d row(s) to run, %d rejected; estimate %.2f USD at list price%s",
        display_url(manifest),
        len(checked.rows),
        len(checked.rejected),
        estimate_cost(checked.rows),
        estimate_note,
    )
    report = run_rows(
        checked.rows,
        call,
        rejected=checked.rejected,
        max_concurrency=max_concurrency,
        max_cost_usd=budget,
        on_result=on_result,
    )
    results_url = store.write(run_file_key("-results.jsonl"), report.results_jsonl())
    publish_results(report, results_url=results_url, store=store)
    outcome = _outcome(report, results_url)
    logger.info("%s. Results: %s", report.summary(), results_url)

    if report.stopped is not None or outcome.not_run or outcome.failed > max_failed_rows:
        allowed = f" (max_failed_rows {max_failed_rows})" if max_failed_rows else ""
        stopped = f"; stopped: {report.stopped}" if report.stopped else ""
        return Failed(
            message=(
                f"{outcome.failed} of {outcome.rows} rows failed{allowed}, "
                f"{outcome.not_run} not run{stopped}; results: {results_url}"
            ),
            data=outcome,
        )
    return outcome


def _outcome(report: BatchReport, results_url: str) -> BatchOutcome:
    return BatchOutcome(
        results_url=results_url,
        rows=len(report.results),
        succeeded=report.count(RowStatus.SUCCEEDED),
        failed=report.count(RowStatus.FAILED),
        not_run=report.count(RowStatus.NOT_RUN),
        estimate_usd=report.estimate_usd,
        paid_usd=report.paid_usd,
        saved_usd=report.saved_usd,
        calls=report.calls,
        stopped=report.stopped,
    )


# --- the local run command -----------------------------------------------------------

_FINAL = ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]
_RECORDING_TIMEOUT_S = 120.0


_SERVER_STARTUP_TIMEOUT_S = 120


class TemporaryServerError(RuntimeError):
    """The local Prefect server the command starts for itself did not come up."""


@contextmanager
def _prefect_api() -> Iterator[bool]:
    """A Prefect API for the run: the configured one, else a temporary local server.

    Yields whether the server is temporary. Prefect would start the same server
    on its own, but stop it at exit while it is still recording the last task
    runs (``Error flushing N events``, task runs left Running); starting it here
    lets the command wait for the records first.

    A temporary server serves this process alone, so the calls take no slot of
    a shared concurrency limit (``SEGMIND_CONCURRENCY_LIMIT`` is empty meanwhile):
    ``--max-concurrency`` is the bound, and a slot costs Prefect API calls.
    """
    if PREFECT_API_URL.value():
        yield False
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    # Prefect's default (20 s) is too short on a busy machine: the server takes 10-25 s.
    timeout = max(
        get_current_settings().server.ephemeral.startup_timeout_seconds,
        _SERVER_STARTUP_TIMEOUT_S,
    )
    try:
        server.start(timeout=timeout)
    except RuntimeError:
        server.stop()
        raise TemporaryServerError(
            f"the temporary local Prefect server did not start within {timeout:g} s; "
            "set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher, or PREFECT_API_URL "
            "to use a running server"
        ) from None
    previous_limit = os.environ.get(CONCURRENCY_LIMIT_ENV)
    os.environ[CONCURRENCY_LIMIT_ENV] = ""
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield True
    finally:
        if previous_limit is None:
            os.environ.pop(CONCURRENCY_LIMIT_ENV, None)
        else:
            os.environ[CONCURRENCY_LIMIT_ENV] = previous_limit
        server.stop()


def wait_for_task_run_records(flow_run_id: UUID, expected: int | None, timeout_s: float) -> int:
    """Wait until the server has recorded the flow run's task runs as finished.

    Task runs reach the server as events that it records in the background; a
    server stopped before that is done loses them. ``expected`` is how many the
    run started; when unknown (the flow failed early), waits until none of those
    recorded is unfinished. Returns how many finished ones the server has.
    """
    EventsWorker.drain_all()
    flow_runs = {"id": {"any_": [str(flow_run_id)]}}
    finished = {"flow_runs": flow_runs, "task_runs": {"state": {"type": {"any_": _FINAL}}}}
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            recorded = int(client.request("POST", "/task_runs/count", json=finished).json())
            if expected is None:
                everything = {"flow_runs": flow_runs}
                total = int(client.request("POST", "/task_runs/count", json=everything).json())
                done = recorded >= total
            else:
                done = recorded >= expected
            if done or time.monotonic() > deadline:
                return recorded
            time.sleep(0.1)  # polling the server's record, not waiting for time to pass


def _storage_block_name(storage: ObjectStorage) -> str:
    """A block name for the command's output location (one per location)."""
    return f"batch-command-{storage_location_tag(storage)}"


def _bounded(
    kind: Callable[[str], float], low: float, high: float | None = None
) -> Callable[[str], Any]:
    """An argparse type: ``kind`` within ``low`` and ``high``, refused at once otherwise."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low or (high is not None and value > high):
            limits = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: {limits}")
        return value

    return parse


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.batch",
        description=(
            "Run a batch manifest locally. Credentials come from SEGMIND_API_KEY (and "
            "SEGMIND_BASE_URL); S3 credentials from the usual AWS_* variables."
        ),
    )
    parser.add_argument("manifest", help="JSONL or CSV manifest: a path or fsspec URL")
    parser.add_argument(
        "--output", required=True, help="where outputs go: s3://bucket/prefix or a folder"
    )
    parser.add_argument(
        "--max-concurrency",
        type=_bounded(int, 1, MAX_CONCURRENCY),
        default=4,
        help=f"calls in flight (1 to {MAX_CONCURRENCY}, default 4)",
    )
    parser.add_argument(
        "--max-cost-usd", type=_bounded(float, 0), help="refuse if the estimate is over this"
    )
    parser.add_argument(
        "--max-failed-rows", type=_bounded(int, 0), default=0, help="failures still allowed"
    )
    parser.add_argument("--refresh-cache", action="store_true", help="generate again and pay")
    parser.add_argument(
        "--queue",
        action="store_true",
        help="call through Segmind's v2 queue (a killed run resumes its requests unpaid)",
    )
    return parser.parse_args(argv)


@contextmanager
def _users_own_files(manifest: str) -> Iterator[None]:
    """What the command may read, while it runs: the manifest its user names is their own.

    The input roots and buckets protect a deployment's runs from whoever triggers
    them; a deployment's runs never come here. So:

    - a local manifest: with ``SEGMIND_INPUT_ROOTS`` unset, the local files it
      names are read wherever they are (as its user could read them); with it
      set, under those roots and the manifest's folder;
    - a manifest in storage (``s3://bucket/prefix/m.jsonl``): its folder is added
      to ``SEGMIND_INPUT_BUCKETS``, so it and the images beside it are read;
    - an http(s) manifest changes nothing.
    """
    parts = urlsplit(manifest)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https", "data") or (len(scheme) > 1 and not parts.netloc):
        yield
        return
    if len(scheme) > 1:
        name = INPUT_BUCKETS_ENV
        value = f"{scheme}://{parts.netloc}{posixpath.dirname(parts.path)}".rstrip("/")
        configured = os.environ.get(name)
        value = f"{configured} {value}" if configured and configured.strip() else value
    else:
        name = INPUT_ROOTS_ENV
        folder = Path(manifest).expanduser().resolve().parent
        configured = os.environ.get(name)
        value = (
            f"{configured}{os.pathsep}{folder}"
            if configured and configured.strip()
            else folder.anchor
        )
    os.environ[name] = value
    try:
        yield
    finally:
        if configured is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = configured


def _refused_manifest(manifest: str, storage: ObjectStorage, max_failed_rows: int) -> str | None:
    """Why the command refuses the manifest before anything starts, or ``None``.

    It cannot be read, or the check refuses more rows than ``max_failed_rows``
    allows: the run would end Failed, so nothing is paid for; every problem is
    listed with its line.
    """
    try:
        checked = load_manifest(manifest, store=storage.get_store())
    except ManifestError as exc:
        return str(exc)
    if len(checked.rejected) <= max_failed_rows:
        return None
    problems = ManifestError(display_url(manifest), checked.problems())
    allowed = "" if max_failed_rows else " (or pass --max-failed-rows N to run the rest)"
    return f"{problems}\nNothing was run or paid for: fix them{allowed}."


def main(argv: Sequence[str] | None = None) -> int:
    """The ``python -m flows.batch`` command; returns the exit code."""
    args = _arguments(argv)
    # From the environment: the key is read inside the tasks, never a flow parameter.
    credentials = SegmindCredentials(queue=True if args.queue else None)
    try:
        credentials.resolved_api_key()
    except AuthenticationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    storage = ObjectStorage(base_url=args.output)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_users_own_files(args.manifest))
        refused = _refused_manifest(args.manifest, storage, args.max_failed_rows)
        if refused is not None:
            print(f"error: {refused}", file=sys.stderr)
            return 2
        try:
            temporary = stack.enter_context(_prefect_api())
        except TemporaryServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        # Saved, the block keeps Prefect's cache records beside the outputs, so the
        # next run (another day, another machine) finds them there. No secret is in it.
        storage.save(_storage_block_name(storage), overwrite=True)
        state = batch(
            manifest=args.manifest,
            storage=storage,
            credentials=credentials,
            max_concurrency=args.max_concurrency,
            max_cost_usd=args.max_cost_usd,
            max_failed_rows=args.max_failed_rows,
            refresh_cache=args.refresh_cache,
            return_state=True,
        )
        outcome = state.result(raise_on_failure=False)
        flow_run_id = state.state_details.flow_run_id
        if temporary and flow_run_id is not None:
            expected = outcome.calls if isinstance(outcome, BatchOutcome) else None
            recorded = wait_for_task_run_records(flow_run_id, expected, _RECORDING_TIMEOUT_S)
            if expected is not None and recorded < expected:
                print(
                    f"warning: the local Prefect server recorded {recorded} of "
                    f"{expected} task runs before it stopped",
                    file=sys.stderr,
                )
    if not isinstance(outcome, BatchOutcome):
        print(f"error: {state.message or outcome}", file=sys.stderr)
        return 1
    print(
        f"{state.name}: {outcome.succeeded} succeeded, {outcome.failed} failed, "
        f"{outcome.not_run} not run; paid {outcome.paid_usd:.2f} USD "
        f"(estimate {outcome.estimate_usd:.2f}, cache saved {outcome.saved_usd:.2f})",
        file=sys.stderr,
    )
    print(outcome.results_url, flush=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
