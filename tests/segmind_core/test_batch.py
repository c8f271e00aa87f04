"""run_batch: bounded concurrency, partial failure, the 406 stop, the budget and the money.

Most tests drive the engine through its ``call`` seam with a fake that runs on a
thread pool and can hold calls (Events, Barriers) so that timings never decide
an outcome. The last tests generate for real against the emulator over HTTP.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from emulator import SegmindEmulator
from segmind_core.batch import (
    BatchCall,
    BatchReport,
    RowResult,
    RowStatus,
    calls_for,
    estimate_cost,
    own_output,
    read_results,
    run_batch,
)
from segmind_core.client import SegmindClient
from segmind_core.contract import InvalidRequestError, OutputFormat, get_endpoint
from segmind_core.errors import CallNotMadeError, InsufficientCreditsError, ServerError
from segmind_core.generation import EditResult, generate_and_store
from segmind_core.manifest import REPLACE_BACKGROUND_THEN_MERGE, ManifestRow, check_rows
from segmind_core.object_store import ObjectStore
from segmind_core.outputs import OutputStore
from segmind_core.request_spec import RequestSpec
from tests.conftest import EmulatorFactory
from tests.support import API_KEY, decode, image_bytes

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
COFFEE = str(PHOTOS / "coffee.jpg")
CHELSEA = str(PHOTOS / "chelsea.jpg")
IMAGE_A = "https://127.0.0.1/a.png"
IMAGE_B = "https://127.0.0.1/b.png"
IMAGE_C = "https://127.0.0.1/c.png"
WAIT_S = 10.0
FLUX = "flux-kontext-pro"
MULTI = "multi-image-kontext-pro"
DAY = date(2026, 3, 14)
FLOW = "batch-test"


def price(slug: str) -> Decimal:
    return get_endpoint(slug).price_usd


# --- rows ---------------------------------------------------------------------------------


def flux(row_id: str, **params: Any) -> dict[str, Any]:
    return {
        "id": row_id,
        "endpoint": FLUX,
        "prompt": f"edit {row_id}",
        "images": [IMAGE_A],
        "params": params,
    }


def merge(row_id: str, **params: Any) -> dict[str, Any]:
    return {
        "id": row_id,
        "endpoint": REPLACE_BACKGROUND_THEN_MERGE,
        "prompt": f"merge {row_id}",
        "background_prompt": f"a beach for {row_id}",
        "images": [IMAGE_A, IMAGE_B],
        "params": params,
    }


def pedit(row_id: str, **params: Any) -> dict[str, Any]:
    return {
        "id": row_id,
        "endpoint": "p-image-edit",
        "prompt": f"pedit {row_id}",
        "images": [IMAGE_A, IMAGE_B, IMAGE_C],
        "params": params,
    }


def multi(row_id: str, slug: str = MULTI, **params: Any) -> dict[str, Any]:
    return {
        "id": row_id,
        "endpoint": slug,
        "prompt": f"multi {row_id}",
        "images": [IMAGE_A, IMAGE_B],
        "params": params,
    }


def good_rows(*raw: Mapping[str, Any]) -> list[ManifestRow]:
    manifest = check_rows(list(raw))
    assert not manifest.rejected, manifest.problems()
    return manifest.rows


# --- the call seam ------------------------------------------------------------------------


def fake_url(job_id: str) -> str:
    return f"memory://fake-outputs/{job_id}.png"


class FakeCalls:
    """A ``call`` for run_batch: records every call and answers it on a thread pool.

    Calls can be held until an Event is set (``gates``) or until enough of them
    wait together (``barrier``); ``failures`` makes a job raise; ``reused`` jobs
    come back as found in the store (nothing paid).
    """

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.calls: list[BatchCall] = []
        self.results: dict[str, EditResult] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.gates: dict[str, threading.Event] = {}
        self.barrier: threading.Barrier | None = None
        self.failures: dict[str, BaseException] = {}
        self.reused: set[str] = set()
        self._seeds = itertools.count(1000)

    @property
    def job_ids(self) -> list[str]:
        with self.lock:
            return [made.job_id for made in self.calls]

    def gate(self, job_id: str) -> threading.Event:
        return self.gates.setdefault(job_id, threading.Event())

    def __call__(self, planned: BatchCall) -> Future[EditResult]:
        with self.lock:
            self.calls.append(planned)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return self.pool.submit(self._run, planned)

    def _run(self, planned: BatchCall) -> EditResult:
        try:
            gate = self.gates.get(planned.job_id)
            if gate is not None and not gate.wait(WAIT_S):
                raise AssertionError(f"the gate of {planned.job_id} never opened")
            if self.barrier is not None:
                self.barrier.wait(WAIT_S)
            failure = self.failures.get(planned.job_id)
            if failure is not None:
                raise failure
            result = self._result(planned)
            with self.lock:
                self.results[planned.job_id] = result
            return result
        finally:
            with self.lock:
                self.in_flight -= 1

    def _result(self, planned: BatchCall) -> EditResult:
        reused = planned.job_id in self.reused
        seed = planned.params["seed"]
        if seed == -1:
            with self.lock:
                seed = next(self._seeds)
        return EditResult(
            slug=planned.slug,
            url=fake_url(planned.job_id),
            key=f"{planned.job_id}.png",
            sha256="0" * 64,
            format=OutputFormat.PNG,
            width=1024,
            height=1024,
            size_bytes=1234,
            seed=seed,
            cost_usd=Decimal(0) if reused else planned.price_usd,
            credits_remaining=None if reused else Decimal("10.00"),
            latency_s=0.0 if reused else 1.5,
            attempts=0 if reused else 1,
            request_digest="d" * 64,
            reused=reused,
        )


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=24, thread_name_prefix="fake-call") as executor:
        yield executor


@pytest.fixture
def fake(pool: ThreadPoolExecutor) -> FakeCalls:
    return FakeCalls(pool)


def by_id(report: BatchReport) -> dict[str | None, RowResult]:
    return {result.id: result for result in report.results}


# --- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_concurrency", [0, -1])
def test_max_concurrency_below_one_is_refused_before_anything(
    fake: FakeCalls, max_concurrency: int
) -> None:
    manifest = check_rows([flux("a"), {"id": "bad"}])
    seen: list[RowResult] = []

    with pytest.raises(
        ValueError, match=f"max_concurrency must be at least 1, not {max_concurrency}"
    ):
        run_batch(
            manifest.rows,
            fake,
            rejected=manifest.rejected,
            max_concurrency=max_concurrency,
            on_result=seen.append,
        )

    assert fake.calls == []
    assert seen == []


def test_no_rows_make_an_empty_report(fake: FakeCalls) -> None:
    report = run_batch([], fake)

    assert report.results == []
    assert report.calls == 0
    assert report.estimate_usd == 0
    assert report.stopped is None
    assert fake.calls == []


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_concurrency", "rows"),
    [
        (1, [flux(f"r{n}") for n in range(4)]),
        (3, [flux(f"r{n}") for n in range(9)]),
        (4, [pedit(f"r{n}") for n in range(8)]),
        (2, [merge(f"m{n}") for n in range(4)]),  # eight calls, second steps included
    ],
    ids=["1-of-4", "3-of-9", "4-of-8", "2-merge"],
)
def test_calls_in_flight_reach_but_never_exceed_max_concurrency(
    fake: FakeCalls, max_concurrency: int, rows: list[dict[str, Any]]
) -> None:
    # Every call waits until max_concurrency calls wait with it: the batch only
    # gets through when it keeps exactly that many in flight.
    fake.barrier = threading.Barrier(max_concurrency)
    checked = good_rows(*rows)

    report = run_batch(checked, fake, max_concurrency=max_concurrency)

    assert fake.max_in_flight == max_concurrency
    assert [r.status for r in report.results] == [RowStatus.SUCCEEDED] * len(rows)
    assert report.calls == len(fake.calls) == sum(len(calls_for(row)) for row in checked)


def test_more_room_than_rows_starts_every_row_at_once(fake: FakeCalls) -> None:
    fake.barrier = threading.Barrier(3)  # breaks (and the rows fail) unless all 3 wait together

    report = run_batch(good_rows(flux("a"), flux("b"), flux("c")), fake, max_concurrency=10)

    assert report.count(RowStatus.SUCCEEDED) == 3
    assert fake.max_in_flight == 3


def test_a_rows_second_call_goes_ahead_of_new_rows(fake: FakeCalls) -> None:
    rows = good_rows(merge("m"), flux("a"), merge("n"))

    report = run_batch(rows, fake, max_concurrency=1)

    assert fake.job_ids == ["m-background", "m", "a", "n-background", "n"]
    assert fake.max_in_flight == 1
    assert report.count(RowStatus.SUCCEEDED) == 3


# --- one result per row, in manifest order ---------------------------------------------------


def test_every_row_has_one_result_in_manifest_order_whatever_order_they_end(
    fake: FakeCalls,
) -> None:
    manifest = check_rows(
        [flux("r1"), flux("r2"), flux("bad", aspect_ratio="7:3"), flux("r4"), merge("r5")]
    )
    good = [row.id for row in manifest.rows]
    assert good == ["r1", "r2", "r4", "r5"]
    # Rows end last to first: each row is released only once the engine has
    # reported the row after it.
    for row_id in good:
        fake.gate(row_id)
    fake.gate("r5").set()
    seen: list[RowResult] = []

    def on_result(result: RowResult) -> None:
        seen.append(result)
        if result.id in good and good.index(result.id) > 0:
            fake.gate(good[good.index(result.id) - 1]).set()

    report = run_batch(
        manifest.rows, fake, rejected=manifest.rejected, max_concurrency=10, on_result=on_result
    )

    assert [r.id for r in seen] == ["bad", "r5", "r4", "r2", "r1"]
    assert [(r.line, r.id) for r in report.results] == [
        (1, "r1"),
        (2, "r2"),
        (3, "bad"),
        (4, "r4"),
        (5, "r5"),
    ]
    assert [r.status for r in report.results] == [
        RowStatus.SUCCEEDED,
        RowStatus.SUCCEEDED,
        RowStatus.FAILED,
        RowStatus.SUCCEEDED,
        RowStatus.SUCCEEDED,
    ]
    assert sorted(seen, key=lambda r: r.line) == report.results
    assert report.calls == 5


def test_each_endpoint_gets_its_images_in_its_own_fields(fake: FakeCalls) -> None:
    rows = good_rows(
        flux("f", aspect_ratio="16:9"),
        {"id": "t", "endpoint": FLUX, "prompt": "a cat from nothing"},
        multi("m", slug="multi-image-kontext-max"),
        pedit("p", aspect_ratio="16:9"),
    )

    run_batch(rows, fake, max_concurrency=1)

    calls = {made.job_id: made for made in fake.calls}
    assert calls["f"] == BatchCall(
        "f",
        FLUX,
        {"aspect_ratio": "16:9", "prompt": "edit f", "seed": -1},
        {"input_image": IMAGE_A},
        "f",
    )
    assert calls["t"].images == {}
    assert calls["t"].params == {"prompt": "a cat from nothing", "seed": -1}
    assert calls["m"].slug == "multi-image-kontext-max"
    assert calls["m"].images == {"input_image_1": IMAGE_A, "input_image_2": IMAGE_B}
    assert calls["p"].slug == "p-image-edit"
    assert calls["p"].images == {"image_urls": [IMAGE_A, IMAGE_B, IMAGE_C]}
    assert calls["p"].params == {"aspect_ratio": "16:9", "prompt": "pedit p", "seed": -1}


# --- failures ------------------------------------------------------------------------------


def test_a_failing_row_does_not_stop_the_others(fake: FakeCalls) -> None:
    fake.failures["b"] = ServerError("503 from Segmind", status=503, slug=FLUX, attempts=3)
    fake.failures["c"] = RuntimeError("disk full\nsecond line of the traceback")
    fake.failures["d"] = ValueError("")
    rows = good_rows(flux("a"), flux("b"), flux("c"), flux("d"), flux("e"))
    seen: list[RowResult] = []

    report = run_batch(rows, fake, max_concurrency=2, on_result=seen.append)

    results = by_id(report)
    assert [r.status for r in report.results] == [
        RowStatus.SUCCEEDED,
        RowStatus.FAILED,
        RowStatus.FAILED,
        RowStatus.FAILED,
        RowStatus.SUCCEEDED,
    ]
    assert results["b"].error == "flux-kontext-pro: 503 from Segmind (after 3 attempts)"
    assert results["c"].error == "RuntimeError: disk full"
    assert results["d"].error == "ValueError"
    for failed in ("b", "c", "d"):
        assert results[failed].output is None
        assert results[failed].cost_usd == 0
        assert results[failed].seed is None
        assert results[failed].cached is False
    assert results["e"].output == fake_url("e")
    assert results["a"].error is None
    assert sorted(fake.job_ids) == ["a", "b", "c", "d", "e"]
    assert report.stopped is None
    assert report.paid_usd == 2 * price(FLUX)
    assert len(seen) == 5
    assert report.summary() == (
        "2 succeeded, 3 failed, 0 not run of 5 rows; "
        "paid 0.10 USD (estimate 0.25), cache saved 0.00 USD"
    )


def test_a_call_that_cannot_start_fails_its_row_and_the_batch_goes_on(fake: FakeCalls) -> None:
    def call(planned: BatchCall) -> Future[EditResult]:
        if planned.job_id in ("b", "c-background"):
            raise RuntimeError(f"cannot submit {planned.job_id}")
        return fake(planned)

    rows = good_rows(flux("a"), flux("b"), merge("c"), flux("d"))

    report = run_batch(rows, call, max_concurrency=1)

    results = by_id(report)
    assert [results[i].status for i in "abcd"] == [
        RowStatus.SUCCEEDED,
        RowStatus.FAILED,
        RowStatus.FAILED,
        RowStatus.SUCCEEDED,
    ]
    assert results["b"].error == "RuntimeError: cannot submit b"
    assert results["c"].error == "RuntimeError: cannot submit c-background"
    assert report.calls == 2
    assert sorted(fake.job_ids) == ["a", "d"]


def test_rejected_rows_fail_with_their_reason_and_are_never_called(fake: FakeCalls) -> None:
    manifest = check_rows(
        [
            flux("a"),
            {**flux("x"), "id": None},
            flux("b", aspect_ratio="7:3"),
            {**flux("u"), "endpoint": "flux-kontext-ultra"},
            pedit("c"),
        ]
    )
    assert [r.line for r in manifest.rejected] == [2, 3, 4]
    seen: list[RowResult] = []

    report = run_batch(manifest.rows, fake, rejected=manifest.rejected, on_result=seen.append)

    assert sorted(fake.job_ids) == ["a", "c"]
    assert report.calls == 2
    assert [r.line for r in report.results] == [1, 2, 3, 4, 5]
    for rejected in manifest.rejected:
        (result,) = [r for r in report.results if r.line == rejected.line]
        assert result.status is RowStatus.FAILED
        assert result.error == rejected.reason
        assert result.id == rejected.id
        assert result.cost_usd == 0
        assert result.output is None
    results = {r.line: r for r in report.results}
    assert results[2].id is None
    assert results[2].endpoint == FLUX
    assert "id is required" in (results[2].error or "")
    assert results[3].id == "b"
    assert (results[3].error or "").startswith("line 3 (b): aspect_ratio: ")
    assert results[4].endpoint == "flux-kontext-ultra"
    assert results[1].status is results[5].status is RowStatus.SUCCEEDED
    # Rejected rows are reported first, then the rows that ran.
    assert [r.line for r in seen[:3]] == [2, 3, 4]
    assert len(seen) == 5
    assert report.estimate_usd == price(FLUX) + price("p-image-edit")


# --- 406: credits ran out --------------------------------------------------------------------


def out_of_credits(slug: str = FLUX) -> InsufficientCreditsError:
    return InsufficientCreditsError(
        f"406 from Segmind: out of credits, 0.01 USD left; {slug} costs 0.05 USD per image. "
        "Top up the account.",
        status=406,
        slug=slug,
    )


def test_a_406_stops_new_calls_and_lets_calls_in_flight_finish(fake: FakeCalls) -> None:
    fake.failures["a"] = out_of_credits()
    fake.gate("b")  # b is in flight until the engine has taken in a's 406
    seen: list[RowResult] = []

    def on_result(result: RowResult) -> None:
        seen.append(result)
        if result.id == "a":
            fake.gate("b").set()

    rows = good_rows(flux("a"), flux("b"), flux("c"), pedit("d"), merge("e"))
    report = run_batch(rows, fake, max_concurrency=2, on_result=on_result)

    results = by_id(report)
    assert fake.job_ids == ["a", "b"]
    assert report.calls == 2
    assert results["a"].status is RowStatus.FAILED
    assert "406" in (results["a"].error or "")
    assert "out of credits" in (results["a"].error or "")
    assert results["b"].status is RowStatus.SUCCEEDED
    assert results["b"].output == fake_url("b")
    assert results["b"].cost_usd == price(FLUX)
    for row_id in ("c", "d", "e"):
        result = results[row_id]
        assert result.status is RowStatus.NOT_RUN
        assert result.error is not None
        assert "406" in result.error
        assert "credits" in result.error
        assert result.error.startswith("not run: ")
        assert result.cost_usd == 0
        assert result.output is None
    assert report.stopped is not None
    assert "406" in report.stopped
    assert "row a" in report.stopped
    assert report.paid_usd == price(FLUX)
    assert [r.id for r in seen] == ["a", "b", "c", "d", "e"]
    assert report.count(RowStatus.NOT_RUN) == 3


@pytest.mark.parametrize("not_made_first", [True, False], ids=["not-made-first", "406-first"])
def test_a_call_not_made_after_a_406_is_a_row_not_run_and_the_406_row_is_named(
    fake: FakeCalls, not_made_first: bool
) -> None:
    # Started before the 406 was known, b's call was never sent (the flows' call limit).
    fake.failures["a"] = out_of_credits()
    # As the client raises it: its message carries the slug and attempts, its reason not.
    fake.failures["b"] = CallNotMadeError(
        "not called: Segmind credits ran out (406 on an earlier call)",
        reason="Segmind credits ran out (406 on an earlier call)",
        slug=FLUX,
        attempts=2,
    )
    first, second = ("b", "a") if not_made_first else ("a", "b")
    fake.gate(second)
    order: list[str] = []

    def on_result(result: RowResult) -> None:
        order.append(str(result.id))
        if result.id == first:
            fake.gate(second).set()

    rows = good_rows(flux("a"), flux("b"), flux("c"))
    report = run_batch(rows, fake, max_concurrency=2, on_result=on_result)

    results = by_id(report)
    assert order[:2] == [first, second]
    assert results["a"].status is RowStatus.FAILED
    assert results["b"].status is RowStatus.NOT_RUN
    assert (results["b"].error or "").startswith("not run: Segmind credits ran out (406 on ")
    assert FLUX not in (results["b"].error or "")
    assert "attempts" not in (results["b"].error or "")
    assert results["b"].cost_usd == 0
    assert results["c"].status is RowStatus.NOT_RUN
    assert fake.job_ids == ["a", "b"]
    # Whichever ended first, the batch names the row that met the 406.
    assert report.stopped == "Segmind credits ran out (406 on row a)"


def test_a_406_leaves_a_half_done_two_step_row_not_run_with_its_intermediate(
    fake: FakeCalls,
) -> None:
    fake.failures["a"] = out_of_credits()
    fake.gate("m-background")

    def on_result(result: RowResult) -> None:
        if result.id == "a":
            fake.gate("m-background").set()

    report = run_batch(
        good_rows(merge("m"), flux("a"), flux("b")), fake, max_concurrency=2, on_result=on_result
    )

    results = by_id(report)
    assert fake.job_ids == ["m-background", "a"]
    assert results["m"].status is RowStatus.NOT_RUN
    assert results["m"].intermediate == fake_url("m-background")
    assert results["m"].output is None
    assert results["m"].cost_usd == price(FLUX)  # step one was paid for
    assert "406" in (results["m"].error or "")
    assert results["b"].status is RowStatus.NOT_RUN
    assert report.paid_usd == price(FLUX)


# --- budget --------------------------------------------------------------------------------


def test_a_budget_below_the_estimate_runs_nothing(fake: FakeCalls) -> None:
    manifest = check_rows([flux("a"), merge("m"), flux("bad", aspect_ratio="7:3"), pedit("p")])
    estimate = estimate_cost(manifest.rows)
    assert estimate == 2 * price(FLUX) + price(MULTI) + price("p-image-edit")
    seen: list[RowResult] = []

    report = run_batch(
        manifest.rows,
        fake,
        rejected=manifest.rejected,
        max_cost_usd=estimate - Decimal("0.01"),
        on_result=seen.append,
    )

    assert fake.calls == []
    assert report.calls == 0
    assert report.paid_usd == 0
    assert report.estimate_usd == estimate
    assert report.stopped is not None
    assert f"{estimate:.2f} USD" in report.stopped
    assert f"max_cost_usd {estimate - Decimal('0.01'):.2f} USD" in report.stopped
    assert "nothing was run" in report.stopped
    statuses = {r.id: r.status for r in report.results}
    assert statuses == {
        "a": RowStatus.NOT_RUN,
        "m": RowStatus.NOT_RUN,
        "bad": RowStatus.FAILED,
        "p": RowStatus.NOT_RUN,
    }
    for result in report.results:
        if result.status is RowStatus.NOT_RUN:
            assert result.error == f"not run: {report.stopped}"
    assert len(seen) == 4


def test_a_budget_equal_to_the_estimate_runs(fake: FakeCalls) -> None:
    rows = good_rows(flux("a"), merge("m"), pedit("p"))
    estimate = estimate_cost(rows)

    report = run_batch(rows, fake, max_cost_usd=estimate)

    assert report.stopped is None
    assert report.count(RowStatus.SUCCEEDED) == 3
    assert report.calls == 4
    assert report.paid_usd == estimate


def test_a_budget_above_the_estimate_runs(fake: FakeCalls) -> None:
    rows = good_rows(flux("a"))

    report = run_batch(rows, fake, max_cost_usd=Decimal("100"))

    assert report.stopped is None
    assert fake.job_ids == ["a"]


# --- the estimate ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "slugs"),
    [
        (flux("f"), [FLUX]),
        (multi("m"), [MULTI]),
        (multi("x", slug="multi-image-kontext-max"), ["multi-image-kontext-max"]),
        ({**flux("y"), "endpoint": "flux-kontext-max"}, ["flux-kontext-max"]),
        (pedit("p"), ["p-image-edit"]),
        (merge("r"), [FLUX, MULTI]),
    ],
)
def test_estimate_prices_each_call_from_the_contract(raw: dict[str, Any], slugs: list[str]) -> None:
    (row,) = good_rows(raw)

    assert calls_for(row) == slugs
    assert estimate_cost([row]) == sum((price(slug) for slug in slugs), Decimal(0))
    assert isinstance(estimate_cost([row]), Decimal)


def test_estimate_of_a_mixed_batch_and_of_nothing() -> None:
    rows = good_rows(flux("a"), merge("m"), pedit("p"), multi("x", slug="multi-image-kontext-max"))

    assert estimate_cost(rows) == (
        price(FLUX)
        + (price(FLUX) + price(MULTI))
        + price("p-image-edit")
        + price("multi-image-kontext-max")
    )
    assert estimate_cost([]) == Decimal(0)
    # The list prices at the time of writing, as a cross-check of the sum.
    assert estimate_cost(good_rows(merge("m"))) == Decimal("0.10")


# --- two-step rows ---------------------------------------------------------------------------


def test_a_two_step_row_makes_its_calls_in_order(fake: FakeCalls) -> None:
    rows = good_rows(merge("scene", aspect_ratio="4:5", output_format="jpg", safety_tolerance=1))

    report = run_batch(rows, fake)

    first, second = fake.calls
    assert first == BatchCall(
        "scene",
        FLUX,
        {
            "aspect_ratio": "4:5",
            "output_format": "jpg",
            "safety_tolerance": 1,
            "seed": -1,
            "prompt": "a beach for scene",
        },
        {"input_image": IMAGE_A},
        "scene-background",
    )
    assert second == BatchCall(
        "scene",
        MULTI,
        {
            "aspect_ratio": "4:5",
            "output_format": "jpg",
            "safety_tolerance": 1,
            "seed": -1,
            "prompt": "merge scene",
        },
        {"input_image_1": fake_url("scene-background"), "input_image_2": IMAGE_B},
        "scene",
    )
    (result,) = report.results
    assert result.status is RowStatus.SUCCEEDED
    assert result.endpoint == REPLACE_BACKGROUND_THEN_MERGE
    assert result.output == fake_url("scene")
    assert result.intermediate == fake_url("scene-background")
    assert result.seed == fake.results["scene"].seed
    assert result.cost_usd == price(FLUX) + price(MULTI)
    assert report.calls == 2


def test_a_two_step_row_keeps_its_intermediate_when_step_two_fails(fake: FakeCalls) -> None:
    fake.failures["scene"] = ServerError("502 from Segmind", status=502, slug=MULTI)

    report = run_batch(good_rows(merge("scene"), flux("other")), fake)

    results = by_id(report)
    assert fake.job_ids.index("scene-background") < fake.job_ids.index("scene")
    assert results["scene"].status is RowStatus.FAILED
    assert results["scene"].intermediate == fake_url("scene-background")
    assert results["scene"].output is None
    assert results["scene"].error == "multi-image-kontext-pro: 502 from Segmind"
    assert results["scene"].cost_usd == price(FLUX)
    assert results["other"].status is RowStatus.SUCCEEDED
    assert report.paid_usd == 2 * price(FLUX)


def test_a_two_step_row_whose_first_step_fails_makes_no_second_call(fake: FakeCalls) -> None:
    fake.failures["scene-background"] = RuntimeError("boom")

    report = run_batch(good_rows(merge("scene")), fake)

    assert fake.job_ids == ["scene-background"]
    (result,) = report.results
    assert result.status is RowStatus.FAILED
    assert result.intermediate is None
    assert result.error == "RuntimeError: boom"


# --- seeds -----------------------------------------------------------------------------------


def test_rows_without_a_seed_ask_for_a_drawn_one_and_pinned_seeds_are_kept(
    fake: FakeCalls,
) -> None:
    rows = good_rows(
        flux("free"),
        flux("pinned", seed=7),
        pedit("pedit-free"),  # the contract's default would be 42 for every row
        pedit("pedit-minus-one", seed=-1),
        merge("merge-free"),
        merge("merge-pinned", seed=5),
    )

    report = run_batch(rows, fake, max_concurrency=3)

    seeds = {made.job_id: made.params["seed"] for made in fake.calls}
    assert seeds == {
        "free": -1,
        "pinned": 7,
        "pedit-free": -1,
        "pedit-minus-one": -1,
        "merge-free-background": -1,
        "merge-free": -1,
        "merge-pinned-background": 5,
        "merge-pinned": 5,
    }
    results = by_id(report)
    assert results["pinned"].seed == 7
    assert results["merge-pinned"].seed == 5
    for row_id in ("free", "pedit-free", "pedit-minus-one", "merge-free"):
        assert results[row_id].seed == fake.results[row_id].seed
        assert results[row_id].seed >= 1000  # the fake's drawn seeds


# --- the money: paid, saved, cached -----------------------------------------------------------


def test_reused_calls_are_saved_not_paid_and_cached_needs_every_call_reused(
    fake: FakeCalls,
) -> None:
    fake.reused |= {"a", "m1-background", "m1", "m2-background", "m3-background"}
    fake.failures["m3"] = RuntimeError("merge failed")
    rows = good_rows(
        flux("a", seed=1), merge("m1", seed=1), merge("m2", seed=1), flux("b"), merge("m3", seed=1)
    )

    report = run_batch(rows, fake, max_concurrency=2)

    results = by_id(report)
    assert results["a"].cached is True
    assert results["a"].cost_usd == 0
    assert results["m1"].cached is True
    assert results["m1"].cost_usd == 0
    assert results["m2"].cached is False
    assert results["m2"].cost_usd == price(MULTI)
    assert results["b"].cached is False
    assert results["b"].cost_usd == price(FLUX)
    assert results["m3"].status is RowStatus.FAILED
    assert results["m3"].cached is False
    assert results["m3"].cost_usd == 0
    assert results["m3"].intermediate == fake_url("m3-background")
    assert report.paid_usd == price(MULTI) + price(FLUX)
    assert report.saved_usd == price(FLUX) + (price(FLUX) + price(MULTI)) + price(FLUX) + price(
        FLUX
    )
    assert report.calls == 8
    assert report.estimate_usd == estimate_cost(rows)


def test_a_row_that_paid_for_everything_is_not_cached(fake: FakeCalls) -> None:
    report = run_batch(good_rows(merge("m", seed=2)), fake)

    (result,) = report.results
    assert result.cached is False
    assert report.saved_usd == 0
    assert report.paid_usd == result.cost_usd == price(FLUX) + price(MULTI)


# --- the results manifest --------------------------------------------------------------------


def test_results_jsonl_round_trips_with_money_as_json_numbers(fake: FakeCalls) -> None:
    fake.reused.add("cached")
    fake.failures["broken"] = RuntimeError("no")
    manifest = check_rows(
        [
            flux("paid", seed=3),
            merge("two-step", seed=4),
            flux("cached", seed=5),
            flux("broken"),
            flux("rejected", seed="x"),
        ]
    )

    report = run_batch(manifest.rows, fake, rejected=manifest.rejected)
    data = report.results_jsonl()

    assert data.endswith(b"\n")
    lines = data.decode().splitlines()
    assert len(lines) == 5
    objects = [json.loads(line) for line in lines]
    assert [o["id"] for o in objects] == ["paid", "two-step", "cached", "broken", "rejected"]
    for obj in objects:
        assert type(obj["cost_usd"]) in (int, float)
    assert objects[0]["cost_usd"] == float(price(FLUX))
    assert objects[1]["cost_usd"] == float(price(FLUX) + price(MULTI))
    assert objects[1]["intermediate"] == fake_url("two-step-background")
    assert objects[2]["cached"] is True
    assert objects[3]["status"] == "failed"
    assert objects[4]["status"] == "failed"
    assert objects[0]["seed"] == 3
    assert read_results(data) == report.results
    dumped = json.loads(report.model_dump_json())
    for money in ("estimate_usd", "paid_usd", "saved_usd"):
        assert type(dumped[money]) is float
    assert dumped["paid_usd"] == float(2 * price(FLUX) + price(MULTI))


def test_read_results_of_an_empty_manifest_is_empty() -> None:
    assert read_results(b"") == []


# --- for real, against the emulator ------------------------------------------------------------


def emulator_caller(
    pool: ThreadPoolExecutor, client: SegmindClient, outputs: OutputStore
) -> Callable[[BatchCall], Future[EditResult]]:
    def call(planned: BatchCall) -> Future[EditResult]:
        return pool.submit(
            generate_and_store,
            client,
            RequestSpec(planned.slug, planned.params, planned.images),
            outputs,
            flow_name=FLOW,
            day=DAY,
            job_id=planned.job_id,
        )

    return call


def test_a_batch_generates_against_the_emulator_and_a_rerun_pays_only_for_unpinned_rows(
    emulator: SegmindEmulator, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    rows = good_rows(
        {
            "id": "cup",
            "endpoint": FLUX,
            "prompt": "the cup on marble",
            "images": [COFFEE],
            "params": {"seed": 7, "aspect_ratio": "1:1"},
        },
        {
            "id": "pair",
            "endpoint": "p-image-edit",
            "prompt": "the cat beside the cup",
            "images": [COFFEE, CHELSEA],
        },
        {
            "id": "scene",
            "endpoint": REPLACE_BACKGROUND_THEN_MERGE,
            "prompt": "the cat next to the cup",
            "background_prompt": "a rainy window",
            "images": [COFFEE, CHELSEA],
            "params": {"seed": 3},
        },
    )
    outputs = OutputStore(ObjectStore.from_url(str(tmp_path / "outputs")))

    with SegmindClient(API_KEY, base_url=emulator.url) as client:
        call = emulator_caller(pool, client, outputs)
        first = run_batch(rows, call, max_concurrency=2)
        stats = emulator.stats()

        assert [r.status for r in first.results] == [RowStatus.SUCCEEDED] * 3, first.results
        assert first.calls == 4
        assert stats["billed"] == 4
        assert {slug: s["billed"] for slug, s in stats["by_slug"].items()} == {
            FLUX: 2,
            "p-image-edit": 1,
            MULTI: 1,
        }
        assert stats["max_in_flight"] <= 2
        assert first.paid_usd == first.estimate_usd == estimate_cost(rows)
        assert Decimal(str(stats["spent_usd"])) == first.paid_usd
        assert first.saved_usd == 0
        results = by_id(first)
        assert results["cup"].seed == 7
        assert results["scene"].seed == 3
        assert results["pair"].seed is not None
        assert 0 <= results["pair"].seed < 2**31
        for result in first.results:
            assert result.output is not None
            assert decode(Path(result.output).read_bytes()).size[0] > 0
        assert results["scene"].intermediate is not None
        assert Path(results["scene"].intermediate).is_file()
        assert results["scene"].intermediate != results["scene"].output
        assert Path(results["cup"].output or "").name == "cup.png"

        # Again: the pinned rows are found in the store, the unpinned one is a new variation.
        second = run_batch(rows, call, max_concurrency=2)

    again = by_id(second)
    assert emulator.stats()["billed"] == 5
    assert again["cup"].cached is True
    assert again["scene"].cached is True
    assert again["pair"].cached is False
    assert again["cup"].output == results["cup"].output
    assert again["scene"].output == results["scene"].output
    assert again["pair"].output != results["pair"].output
    assert second.paid_usd == price("p-image-edit")
    assert second.saved_usd == price(FLUX) + price(FLUX) + price(MULTI)


def test_a_406_from_the_emulator_stops_the_batch(
    start_emulator: EmulatorFactory, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    emulator = start_emulator(credits_usd=Decimal("0.05"))
    rows = good_rows(
        *(
            {"id": name, "endpoint": FLUX, "prompt": f"make {name}", "params": {"seed": n}}
            for n, name in enumerate(["first", "second", "third"], start=1)
        )
    )
    outputs = OutputStore(ObjectStore.from_url(str(tmp_path / "outputs")))

    with SegmindClient(API_KEY, base_url=emulator.url) as client:
        report = run_batch(rows, emulator_caller(pool, client, outputs), max_concurrency=1)

    results = by_id(report)
    assert results["first"].status is RowStatus.SUCCEEDED
    assert results["second"].status is RowStatus.FAILED
    assert "406" in (results["second"].error or "")
    assert results["third"].status is RowStatus.NOT_RUN
    assert "406" in (results["third"].error or "")
    assert "credits" in (results["third"].error or "")
    assert report.stopped is not None
    assert "row second" in report.stopped
    assert report.calls == 2
    stats = emulator.stats()
    assert stats["billed"] == 1
    assert stats["requests"] == 2
    assert report.paid_usd == price(FLUX)


def test_a_portrait_phone_photo_comes_back_portrait(
    emulator: SegmindEmulator, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    # Stored 1200x900 with EXIF "turn 90 degrees" (as a phone held upright writes it):
    # a viewer shows it 900x1200, and match_input_image must follow that shape (3:4).
    image = Image.new("RGB", (1200, 900), (30, 90, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    photo = tmp_path / "portrait.jpg"
    photo.write_bytes(buffer.getvalue())
    rows = good_rows(
        {"id": "upright", "endpoint": FLUX, "prompt": "exif test", "images": [str(photo)]}
    )
    outputs = OutputStore(ObjectStore.from_url(str(tmp_path / "outputs")))

    with SegmindClient(API_KEY, base_url=emulator.url) as client:
        report = run_batch(rows, emulator_caller(pool, client, outputs), max_concurrency=1)

    (result,) = report.results
    assert result.status is RowStatus.SUCCEEDED, result
    assert decode(Path(result.output or "").read_bytes()).size == (880, 1184)  # 3:4, portrait


def test_a_row_with_a_lone_surrogate_in_its_id_is_rejected_and_the_results_are_written(
    fake: FakeCalls,
) -> None:
    # The id cannot name a file or be written as UTF-8: the row is set aside unpaid,
    # and the results manifest (UTF-8 JSON) is still written, naming its line.
    manifest = check_rows([flux("good", seed=1), flux("sku-\ud800", seed=2)])

    report = run_batch(manifest.rows, fake, rejected=manifest.rejected)

    assert [call.row_id for call in fake.calls] == ["good"]
    lines = [json.loads(line) for line in report.results_jsonl().decode("utf-8").splitlines()]
    assert [(line["id"], line["line"], line["status"]) for line in lines] == [
        ("good", 1, "succeeded"),
        (None, 2, "failed"),
    ]
    assert lines[1]["error"].startswith("line 2: id, 'sku-\\ud800', is not valid text")


# --- one request, several ids: each id its own image -------------------------------------------

PNG_BYTES = image_bytes((10, 200, 10), (48, 32))


def stored_result(outputs: OutputStore, key: str, job_id: str, digest: str = "d1") -> EditResult:
    """An image stored under ``key`` as job ``job_id`` paid for it, and its result."""
    stored = outputs.save(
        key,
        PNG_BYTES,
        {"job_id": job_id, "request_digest": digest, "seed": 5, "cost_usd": "0.05"},
    )
    return EditResult(
        slug=FLUX,
        url=stored.url,
        key=stored.key,
        sha256=stored.sha256,
        format=OutputFormat.PNG,
        width=stored.width,
        height=stored.height,
        size_bytes=stored.size_bytes,
        seed=5,
        cost_usd=Decimal("0.05"),
        credits_remaining=None,
        latency_s=1.0,
        attempts=1,
        request_digest=digest,
        reused=True,
    )


def test_an_image_of_another_job_is_copied_under_the_jobs_own_id(tmp_path: Path) -> None:
    outputs = OutputStore(ObjectStore.from_url(str(tmp_path)))
    served = stored_result(outputs, f"{FLOW}/2026-03-14/first.png", "first")

    own = own_output(
        outputs, served, job_id="second", flow_name=FLOW, day=DAY, run_ids={"flow_run_id": "f"}
    )

    assert own.key == f"{FLOW}/2026-03-14/second.png"
    assert (own.reused, own.cost_usd, own.attempts) == (True, Decimal(0), 0)
    assert Path(own.url).read_bytes() == PNG_BYTES
    sidecar = json.loads(Path(f"{own.url}.json").read_text())
    assert sidecar["job_id"] == "second"
    assert sidecar["cost_usd"] == "0"
    assert sidecar["request_digest"] == "d1"
    assert sidecar["flow_run_id"] == "f"
    assert sidecar["reused_from"]["job_id"] == "first"
    assert sidecar["reused_from"]["key"] == served.key
    # Asked again (the next run): the copy is found, not made again.
    assert own_output(outputs, served, job_id="second", flow_name=FLOW, day=DAY).key == own.key


def test_a_jobs_own_image_is_returned_as_is_even_from_another_day(tmp_path: Path) -> None:
    outputs = OutputStore(ObjectStore.from_url(str(tmp_path)))
    served = stored_result(outputs, f"{FLOW}/2026-03-13/cup.png", "cup")

    assert own_output(outputs, served, job_id="cup", flow_name=FLOW, day=DAY) == served
    assert not (tmp_path / FLOW / "2026-03-14").exists()


def test_a_copy_never_overwrites_another_requests_image(tmp_path: Path) -> None:
    outputs = OutputStore(ObjectStore.from_url(str(tmp_path)))
    served = stored_result(outputs, f"{FLOW}/2026-03-14/first.png", "first")
    taken = stored_result(outputs, f"{FLOW}/2026-03-14/second.png", "second", digest="other")

    own = own_output(outputs, served, job_id="second", flow_name=FLOW, day=DAY)

    assert own.key.startswith(f"{FLOW}/2026-03-14/second-20")
    assert outputs.load(taken.key) is not None
    assert json.loads(Path(f"{taken.url}.json").read_text())["request_digest"] == "other"


def test_an_image_without_its_sidecar_is_not_handed_on(tmp_path: Path) -> None:
    outputs = OutputStore(ObjectStore.from_url(str(tmp_path)))
    served = stored_result(outputs, f"{FLOW}/2026-03-14/first.png", "first")
    Path(f"{served.url}.json").unlink()

    with pytest.raises(ValueError, match="has no sidecar"):
        own_output(outputs, served, job_id="second", flow_name=FLOW, day=DAY)


def test_a_prompt_with_a_lone_surrogate_is_refused_before_anything_is_sent(
    emulator: SegmindEmulator, tmp_path: Path
) -> None:
    # What a task given such a prompt does (a flow parameter cannot carry one: Prefect
    # cannot encode it to create the run). Before, the HTTP client failed to encode
    # the body: a UnicodeEncodeError traceback instead of the contract's message.
    outputs = OutputStore(ObjectStore.from_url(str(tmp_path / "outputs")))
    spec = RequestSpec(FLUX, {"prompt": "a cup \udfff", "seed": 1})

    with (
        SegmindClient(API_KEY, base_url=emulator.url) as client,
        pytest.raises(InvalidRequestError) as refused,
    ):
        generate_and_store(client, spec, outputs, flow_name=FLOW, day=DAY)

    assert "prompt: is not valid text: it has a lone surrogate" in str(refused.value)
    assert emulator.stats()["requests"] == 0


def test_a_results_line_is_written_whatever_text_it_carries() -> None:
    # A file name with bytes that are not UTF-8 reaches Python as lone surrogates
    # (U+DC80 to U+DCFF); an error naming it must not stop the results manifest.
    result = RowResult(
        id="r", line=1, endpoint=FLUX, status=RowStatus.FAILED, error="no such file: /x/\udcff.png"
    )
    report = BatchReport(results=[result], estimate_usd=Decimal(0))

    (line,) = read_results(report.results_jsonl())

    assert line.error == "no such file: /x/\\udcff.png"
