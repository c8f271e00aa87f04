"""Running a checked manifest: estimate, bounded concurrency, partial failure, budget.

Prefect-free: `run_batch` takes a ``call`` function that starts one paid call
and returns a `concurrent.futures.Future` of its `EditResult`. The batch flow
passes one that submits a Prefect task; tests can pass a thread pool.

- Each row becomes one call, or two in order for ``replace_background_then_merge``
  (the background of the first image is replaced, then merged with the second).
- At most ``max_concurrency`` calls are in flight; a row's second call goes
  ahead of new rows, so rows finish rather than pile up half done.
- A row that fails does not stop the others. A 406 (credits exhausted) stops
  new calls: rows not started yet end ``not_run`` with the reason.
- `estimate_cost` prices every call at the list price before anything runs;
  ``max_cost_usd`` refuses a batch whose estimate is over it, with nothing run.
- A row without a seed gets one drawn per call (a new variation each run, so
  never served from a cache); pin one to make reruns free.
- Two rows with the same request are paid once; each still gets its own image
  under its own id (`own_output` copies the one paid for, cost 0, its sidecar
  naming the id it was reused from).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainSerializer, field_validator

from segmind_core.contract import get_endpoint
from segmind_core.errors import CallNotMadeError, InsufficientCreditsError, SegmindError
from segmind_core.generation import EditResult
from segmind_core.manifest import (
    BACKGROUND_SUFFIX,
    REPLACE_BACKGROUND_THEN_MERGE,
    ManifestRow,
    RejectedRow,
)
from segmind_core.outputs import OutputStore, output_key

__all__ = [
    "BatchCall",
    "BatchReport",
    "RowResult",
    "RowStatus",
    "calls_for",
    "estimate_cost",
    "first_call",
    "next_call",
    "own_output",
    "run_batch",
]

# Money as a JSON number in the results manifest and artifacts; exact in Python.
UsdAmount = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]
_FLUX_FIELDS = ("aspect_ratio", "output_format", "safety_tolerance", "seed")


class RowStatus(StrEnum):
    """How a row ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_RUN = "not_run"


@dataclass(frozen=True)
class BatchCall:
    """One paid call of a row.

    Attributes:
        row_id: The row it belongs to.
        slug: The endpoint.
        params: The body without its images (``prompt`` included).
        images: Image fields (a list for ``image_urls``).
        job_id: The output's name.
    """

    row_id: str
    slug: str
    params: dict[str, Any]
    images: dict[str, str | list[str]]
    job_id: str

    @property
    def price_usd(self) -> Decimal:
        """The list price of the call."""
        return get_endpoint(self.slug).price_usd


def _seeded(params: dict[str, Any]) -> dict[str, Any]:
    # -1 asks for a seed drawn (and recorded) per call, for every endpoint: not the
    # fixed default some endpoints have (42), which would make every row alike.
    return {**params, "seed": params.get("seed", -1)}


def first_call(row: ManifestRow) -> BatchCall:
    """The row's first (often only) call."""
    if row.endpoint == REPLACE_BACKGROUND_THEN_MERGE:
        params = {name: row.params[name] for name in _FLUX_FIELDS if name in row.params}
        return BatchCall(
            row.id,
            "flux-kontext-pro",
            _seeded({**params, "prompt": row.background_prompt}),
            {"input_image": row.images[0]},
            f"{row.id}{BACKGROUND_SUFFIX}",
        )
    fields = get_endpoint(row.endpoint).request_model.model_fields
    images: dict[str, str | list[str]]
    if "image_urls" in fields:
        images = {"image_urls": list(row.images)}
    elif "input_image_1" in fields:
        images = {"input_image_1": row.images[0], "input_image_2": row.images[1]}
    else:
        images = {"input_image": row.images[0]} if row.images else {}
    return BatchCall(
        row.id, row.endpoint, _seeded({**row.params, "prompt": row.prompt}), images, row.id
    )


def next_call(row: ManifestRow, done: EditResult) -> BatchCall | None:
    """The call after ``done``, or ``None`` when the row is complete."""
    if row.endpoint != REPLACE_BACKGROUND_THEN_MERGE or done.slug != "flux-kontext-pro":
        return None
    params = {name: row.params[name] for name in _FLUX_FIELDS if name in row.params}
    return BatchCall(
        row.id,
        "multi-image-kontext-pro",
        _seeded({**params, "prompt": row.prompt}),
        {"input_image_1": done.url, "input_image_2": row.images[1]},
        row.id,
    )


def calls_for(row: ManifestRow) -> list[str]:
    """The slugs the row will call, in order."""
    if row.endpoint == REPLACE_BACKGROUND_THEN_MERGE:
        return ["flux-kontext-pro", "multi-image-kontext-pro"]
    return [row.endpoint]


def estimate_cost(rows: Iterable[ManifestRow]) -> Decimal:
    """What the rows cost at list price if none is served from a cache (an upper bound)."""
    return sum(
        (get_endpoint(slug).price_usd for row in rows for slug in calls_for(row)), Decimal(0)
    )


class RowResult(BaseModel):
    """One line of the results manifest.

    Attributes:
        id: The row's id (``None`` when the row had no usable one).
        line: Where the row is in the manifest.
        endpoint: The row's endpoint, as given.
        status: ``succeeded``, ``failed`` or ``not_run``.
        output: The final image, when there is one.
        error: Why the row failed or did not run.
        cost_usd: What this run paid for the row (0 when served from a cache).
        cached: Every call of the row was served without paying.
        seed: The seed of the final image.
        intermediate: The first image of a two-step row (kept even when step two failed).
    """

    model_config = ConfigDict(frozen=True)

    id: str | None
    line: int
    endpoint: str | None
    status: RowStatus
    output: str | None = None
    error: str | None = None
    cost_usd: UsdAmount = Decimal(0)
    cached: bool = False
    seed: int | None = None
    intermediate: str | None = None

    @field_validator("id", "endpoint", "output", "error", "intermediate")
    @classmethod
    def _writable(cls, text: str | None) -> str | None:
        """Text the results manifest (UTF-8) can hold: a lone surrogate is escaped.

        The manifest check refuses rows with one; this keeps a results manifest
        from failing to be written, after money was spent, whatever else has one.
        """
        if text is None or text.isascii():
            return text
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class BatchReport(BaseModel):
    """Every row's result and the money.

    Attributes:
        results: One per manifest row, in manifest order.
        estimate_usd: The list price of every call of the good rows.
        paid_usd: What was paid.
        saved_usd: The list price of the calls served from a cache.
        calls: Calls started (one task run each, in the flow).
        stopped: Why new calls were stopped early (budget or credits), if they were.
    """

    results: list[RowResult]
    estimate_usd: UsdAmount
    paid_usd: UsdAmount = Decimal(0)
    saved_usd: UsdAmount = Decimal(0)
    calls: int = 0
    stopped: str | None = None

    def count(self, status: RowStatus) -> int:
        """How many rows ended with ``status``."""
        return sum(1 for result in self.results if result.status is status)

    def results_jsonl(self) -> bytes:
        """The results manifest: one JSON object per row."""
        return "".join(f"{result.model_dump_json()}\n" for result in self.results).encode()

    def summary(self) -> str:
        """One line: the counts and the money."""
        return (
            f"{self.count(RowStatus.SUCCEEDED)} succeeded, {self.count(RowStatus.FAILED)} failed, "
            f"{self.count(RowStatus.NOT_RUN)} not run of {len(self.results)} rows; "
            f"paid {self.paid_usd:.2f} USD (estimate {self.estimate_usd:.2f}), "
            f"cache saved {self.saved_usd:.2f} USD"
        )


def describe_error(exc: BaseException) -> str:
    """A failure as one line for the results manifest (our errors carry no secrets)."""
    if isinstance(exc, SegmindError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass
class _RowRun:
    row: ManifestRow
    paid: Decimal = Decimal(0)
    all_reused: bool = True
    intermediate: str | None = None
    results: list[EditResult] = field(default_factory=list)


def rejected_result(rejected: RejectedRow) -> RowResult:
    """The result of a row the manifest check set aside: failed, nothing paid."""
    return RowResult(
        id=rejected.id,
        line=rejected.line,
        endpoint=rejected.endpoint,
        status=RowStatus.FAILED,
        error=rejected.reason,
    )


def run_batch(
    rows: Sequence[ManifestRow],
    call: Callable[[BatchCall], Future[EditResult]],
    *,
    rejected: Sequence[RejectedRow] = (),
    max_concurrency: int = 4,
    max_cost_usd: Decimal | None = None,
    on_result: Callable[[RowResult], None] | None = None,
) -> BatchReport:
    """Run every row, at most ``max_concurrency`` calls at a time.

    Args:
        rows: The good rows.
        call: Starts one call; its future's result says whether it was reused
            (``EditResult.reused``: nothing paid) and what it cost.
        rejected: Rows the manifest check set aside; they end ``failed`` at once.
        max_concurrency: Calls in flight at most.
        max_cost_usd: Refuse to start when the estimate is over it.
        on_result: Told of each row as it ends (rejected rows first).

    Returns:
        The report; its results follow manifest order.
    """
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
    finished: list[RowResult] = []

    def finish(result: RowResult) -> None:
        finished.append(result)
        if on_result is not None:
            on_result(result)

    for bad in rejected:
        finish(rejected_result(bad))
    estimate = estimate_cost(rows)
    report = BatchReport(results=[], estimate_usd=estimate)
    queue: deque[ManifestRow] = deque(rows)

    if max_cost_usd is not None and estimate > max_cost_usd:
        report.stopped = (
            f"the estimate, {estimate:.2f} USD, is over max_cost_usd {max_cost_usd:.2f} USD; "
            "nothing was run"
        )
    in_flight: dict[Future[EditResult], tuple[_RowRun, BatchCall]] = {}
    stopped_by_a_call_not_made = False

    def start(run: _RowRun, next_: BatchCall) -> None:
        try:
            future = call(next_)
        except Exception as exc:  # could not even start: the row fails, the batch goes on
            finish(_ended(run, RowStatus.FAILED, error=describe_error(exc)))
            return
        in_flight[future] = (run, next_)
        report.calls += 1

    while (queue and report.stopped is None) or in_flight:
        while queue and report.stopped is None and len(in_flight) < max_concurrency:
            row = queue.popleft()
            start(_RowRun(row), first_call(row))
        if not in_flight:
            continue
        done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
        for future in done:
            run, made = in_flight.pop(future)
            try:
                result = future.result()
            except CallNotMadeError as exc:  # never sent: a 406 had stopped the calls
                if report.stopped is None:  # until the row that met the 406 is seen
                    report.stopped = exc.reason
                    stopped_by_a_call_not_made = True
                finish(_ended(run, RowStatus.NOT_RUN, error=f"not run: {report.stopped}"))
                continue
            except Exception as exc:  # a row's failure is data, not the batch's end
                if isinstance(exc, InsufficientCreditsError) and (
                    report.stopped is None or stopped_by_a_call_not_made
                ):
                    report.stopped = f"Segmind credits ran out (406 on row {made.row_id})"
                    stopped_by_a_call_not_made = False
                finish(_ended(run, RowStatus.FAILED, error=describe_error(exc)))
                continue
            run.results.append(result)
            if result.reused:
                report.saved_usd += made.price_usd
            else:
                run.paid += result.cost_usd
                run.all_reused = False
                report.paid_usd += result.cost_usd
            following = next_call(run.row, result)
            if following is None:
                finish(_ended(run, RowStatus.SUCCEEDED))
            elif report.stopped is not None:
                run.intermediate = result.url
                finish(_ended(run, RowStatus.NOT_RUN, error=f"not run: {report.stopped}"))
            else:
                run.intermediate = result.url
                start(run, following)

    for row in queue:
        finish(_ended(_RowRun(row), RowStatus.NOT_RUN, error=f"not run: {report.stopped}"))
    report.results = sorted(finished, key=lambda result: result.line)
    return report


def _ended(run: _RowRun, status: RowStatus, error: str | None = None) -> RowResult:
    last = run.results[-1] if run.results and status is RowStatus.SUCCEEDED else None
    return RowResult(
        id=run.row.id,
        line=run.row.line,
        endpoint=run.row.endpoint,
        status=status,
        output=None if last is None else last.url,
        error=error,
        cost_usd=run.paid,
        cached=bool(run.results) and run.all_reused and status is RowStatus.SUCCEEDED,
        seed=None if last is None else last.seed,
        intermediate=run.intermediate,
    )


def read_results(data: bytes) -> list[RowResult]:
    """Parse a results manifest written by `BatchReport.results_jsonl`."""
    return [RowResult.model_validate(json.loads(line)) for line in data.decode().splitlines()]


# Sidecar fields about the call that made an image, as a copy (which made none) has them.
_NO_CALL = {"credits_remaining": None, "latency_s": 0.0, "attempts": 0, "request_id": None}


def own_output(
    outputs: OutputStore,
    result: EditResult,
    *,
    job_id: str,
    flow_name: str,
    day: date,
    run_ids: Mapping[str, str | None] | None = None,
) -> EditResult:
    """``result`` as job ``job_id``'s own image: a copy under its id when it was another's.

    A call served from a cache (Prefect's record, or the store) returns the image
    of whichever job paid for that request: in one batch, another row with the
    same request. The row's documented place, ``{flow}/{day}/{job_id}.{ext}``,
    then gets a copy of that image with a sidecar of its own: the same request
    digest and parameters, ``cost_usd`` 0, no call, and ``reused_from`` naming the
    job, key and cost of the original. An image of the job itself (another day's,
    or time-stamped) is returned as is; so is a copy made before. A key holding
    another request's image is never overwritten: the copy is time-stamped.

    Raises:
        ValueError: the image the result names has no sidecar, or does not match it.
    """
    original = outputs.load(result.key)
    if original is None:
        raise ValueError(
            f"{result.url}, the stored image this request was served from, has no sidecar; "
            "run again with refresh_cache to make it again"
        )
    if original.metadata.get("job_id") == job_id:
        return result
    key = output_key(flow_name, day, job_id, result.format)
    existing = outputs.load(key)
    if existing is not None and existing.metadata.get("request_digest") == result.request_digest:
        return _as_copy(result, existing.url, key)
    if existing is not None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        key = output_key(flow_name, day, f"{job_id}-{stamp}", result.format)
    metadata = {
        name: value
        for name, value in original.metadata.items()
        if name not in ("output", "stored_at")
    }
    metadata.update(
        _NO_CALL,
        job_id=job_id,
        cost_usd="0",
        reused_from={
            "job_id": original.metadata.get("job_id"),
            "key": original.key,
            "url": original.url,
            "cost_usd": original.metadata.get("cost_usd"),
            "request_id": original.metadata.get("request_id"),
        },
        **dict(run_ids or {}),
    )
    copy = outputs.save(key, outputs.read_verified(original), metadata)
    return _as_copy(result, copy.url, copy.key)


def _as_copy(result: EditResult, url: str, key: str) -> EditResult:
    return result.model_copy(
        update={
            "url": url,
            "key": key,
            "reused": True,
            "cost_usd": Decimal(0),
            "credits_remaining": None,
            "latency_s": 0.0,
            "attempts": 0,
        }
    )
