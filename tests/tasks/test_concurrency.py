"""Every Segmind call holds a slot of the Prefect global concurrency limit while in flight."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
from prefect import flow, get_client, task
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks import ObjectStorage, SegmindCredentials
from flows.batch import batch
from segmind_core.client import resuming_paid_request
from segmind_core.errors import CallNotMadeError, InsufficientCreditsError, ServerError
from tasks import concurrency, edit_images_with_p_image_edit
from tasks.concurrency import (
    FlowRunCalls,
    MissingConcurrencyLimitError,
    ensure_concurrency_limit,
    flow_run_call_gate,
    flow_run_call_limit,
    segmind_call_slot,
)
from tests.conftest import EmulatorFactory
from tests.support import API_KEY, image_bytes

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run_six_calls_at_once(credentials: SegmindCredentials, tmp_path: Path, offset: int) -> None:
    storage = ObjectStorage(base_url=str(tmp_path / f"out-{offset}"))
    photo = image_bytes(size=(64, 48))

    @flow
    def six() -> None:
        futures = [
            edit_images_with_p_image_edit.submit(
                "slots", [photo], seed=offset + i, credentials=credentials, storage=storage
            )
            for i in range(6)
        ]
        for future in futures:
            future.result()

    six()


def test_calls_of_all_tasks_together_stay_under_the_limit(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = start_emulator(latency_s=0.3)
    with get_client(sync_client=True) as client:
        ensure_concurrency_limit(client, 2, name="segmind-two-slots")
    limited = SegmindCredentials(
        api_key=API_KEY, base_url=emulator.url, concurrency_limit="segmind-two-slots"
    )

    run_six_calls_at_once(limited, tmp_path, offset=610_000)

    stats = emulator.stats()
    assert stats["billed"] == 6
    assert 1 <= stats["max_in_flight"] <= 2

    # The same six calls without a limit run side by side: the bound above was the limit's.
    emulator.reset()
    unlimited = limited.model_copy(update={"concurrency_limit": None})
    assert unlimited.resolved_concurrency_limit() is None  # SEGMIND_CONCURRENCY_LIMIT is ""
    run_six_calls_at_once(unlimited, tmp_path, offset=620_000)
    assert emulator.stats()["max_in_flight"] > 2


def test_a_missing_limit_is_an_error_before_anything_is_paid(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = start_emulator()
    credentials = SegmindCredentials(
        api_key=API_KEY, base_url=emulator.url, concurrency_limit="no-such-limit"
    )
    storage = ObjectStorage(base_url=str(tmp_path))

    @flow
    def one() -> None:
        edit_images_with_p_image_edit(
            "slots",
            [image_bytes(size=(64, 48))],
            seed=630_001,
            credentials=credentials,
            storage=storage,
        )

    with pytest.raises(MissingConcurrencyLimitError, match=r"no-such-limit.*deployments\.setup"):
        one()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"id": "a", "endpoint": "flux-kontext-pro", "prompt": "x", "params": {"seed": 1}}\n'
    )
    state = batch(
        manifest=str(manifest), storage=storage, credentials=credentials, return_state=True
    )
    assert state.is_failed()
    assert "no-such-limit" in (state.message or "")
    assert emulator.stats()["requests"] == 0


def test_without_a_prefect_server_no_slot_is_taken() -> None:
    with temporary_settings({PREFECT_API_URL: None}):
        assert segmind_call_slot("segmind") is nullcontext
    assert segmind_call_slot(None) is nullcontext
    assert segmind_call_slot("segmind") is not nullcontext


def test_the_limit_comes_from_the_block_then_the_environment_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert SegmindCredentials(concurrency_limit="mine").resolved_concurrency_limit() == "mine"
    monkeypatch.setenv("SEGMIND_CONCURRENCY_LIMIT", "from-env")
    assert SegmindCredentials().resolved_concurrency_limit() == "from-env"
    monkeypatch.setenv("SEGMIND_CONCURRENCY_LIMIT", "")
    assert SegmindCredentials().resolved_concurrency_limit() is None
    monkeypatch.delenv("SEGMIND_CONCURRENCY_LIMIT")
    assert SegmindCredentials().resolved_concurrency_limit() == "segmind"


def test_a_flow_run_call_limit_bounds_the_calls_of_more_task_runs(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = start_emulator(latency_s=0.3)
    unlimited = SegmindCredentials(api_key=API_KEY, base_url=emulator.url, concurrency_limit="")
    assert unlimited.resolved_concurrency_limit() is None  # no shared limit: only the gate
    storage = ObjectStorage(base_url=str(tmp_path / "out"))
    photo = image_bytes(size=(64, 48))

    @flow
    def six_task_runs_two_calls() -> None:
        with flow_run_call_limit(2):
            futures = [
                edit_images_with_p_image_edit.submit(
                    "gate", [photo], seed=640_000 + i, credentials=unlimited, storage=storage
                )
                for i in range(6)
            ]
            for future in futures:
                future.result()

    six_task_runs_two_calls()

    stats = emulator.stats()
    assert stats["billed"] == 6
    assert 1 <= stats["max_in_flight"] <= 2
    # Without the gate the same six task runs call side by side (see the test above).
    emulator.reset()
    run_six_calls_at_once(unlimited, tmp_path, offset=650_000)
    assert emulator.stats()["max_in_flight"] > 2


def test_a_flow_run_call_limit_is_its_own_flow_runs_and_ends_with_the_block() -> None:
    assert flow_run_call_gate() is None  # outside any flow run
    seen: dict[str, int | None] = {}

    def gate_id() -> int | None:
        gate = flow_run_call_gate()
        return None if gate is None else id(gate)

    @task
    def gate_in_a_task() -> int | None:
        return gate_id()

    @flow
    def child() -> int | None:
        return gate_id()

    @flow
    def limited_subflow() -> tuple[int | None, int | None]:
        with flow_run_call_limit(2) as gate:
            return (None if gate is None else id(gate)), gate_in_a_task.submit().result()

    @task
    def subflow_in_a_task() -> tuple[int | None, int | None]:
        return limited_subflow()

    @flow
    def parent() -> None:
        seen["before"] = gate_id()
        # A subflow run from inside a task registers its limit under its own flow run,
        # where its task runs find it.
        seen["subflow in a task"], seen["its task"] = subflow_in_a_task.submit().result()
        with flow_run_call_limit(3):
            gate = flow_run_call_gate()
            assert isinstance(gate, FlowRunCalls)
            assert gate.calls == 3
            seen["flow"] = id(gate)
            seen["task"] = gate_in_a_task.submit().result()
            seen["subflow"] = child()
            with (
                pytest.raises(RuntimeError, match="already has a call limit"),
                flow_run_call_limit(1),
            ):
                pass
        seen["after"] = gate_id()

    parent()

    assert seen["before"] is None
    assert seen["flow"] is not None
    assert seen["task"] == seen["flow"]  # a task run of the flow run takes the same permits
    assert seen["subflow"] is None  # another flow run: not bound by its parent's gate
    assert seen["after"] is None
    assert seen["subflow in a task"] is not None
    assert seen["its task"] == seen["subflow in a task"]
    assert seen["subflow in a task"] != seen["flow"]
    with flow_run_call_limit(1) as nothing:  # outside a flow run it bounds nothing
        assert nothing is None
        assert flow_run_call_gate() is None


def test_after_a_406_no_waiting_call_of_the_flow_run_is_sent() -> None:
    calls = FlowRunCalls(1)
    outcome: list[str] = []
    permit_held = threading.Event()
    answered_406 = threading.Event()
    met_406 = threading.Event()

    def call_meeting_a_406() -> None:
        try:
            with calls.permit():
                permit_held.set()
                answered_406.wait(10)
                raise InsufficientCreditsError("406 from Segmind: out of credits", status=406)
        except InsufficientCreditsError:
            met_406.set()

    def waiting_call() -> None:
        try:
            with calls.permit():  # the only permit is held: waits for the 406 call
                outcome.append("sent")
        except CallNotMadeError as exc:
            outcome.append(str(exc))

    first = threading.Thread(target=call_meeting_a_406)
    first.start()
    assert permit_held.wait(10)
    waiter = threading.Thread(target=waiting_call)
    waiter.start()
    answered_406.set()
    first.join(10)
    waiter.join(10)

    assert met_406.is_set()
    assert outcome == ["not called: Segmind credits ran out (406 on an earlier call)"]
    assert calls.stopped is not None
    with pytest.raises(CallNotMadeError), calls.permit():
        pytest.fail("no call after the stop")


def test_other_errors_leave_the_flow_runs_calls_open_and_give_the_permit_back() -> None:
    calls = FlowRunCalls(2)

    def failing_call() -> None:
        with calls.permit():
            raise ServerError("500 from Segmind", status=500)

    with pytest.raises(ServerError):
        failing_call()
    with calls.permit(), calls.permit():  # both permits are free again
        assert calls.stopped is None


def test_a_call_holding_a_permit_is_not_sent_if_a_406_came_while_it_waited_for_a_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = FlowRunCalls(2)

    @contextmanager
    def shared_slot_after_a_406_elsewhere() -> Iterator[None]:
        calls.stopped = "Segmind credits ran out (406 on an earlier call)"  # meanwhile
        yield

    monkeypatch.setattr(
        concurrency, "_shared_slot", lambda limit, rate: shared_slot_after_a_406_elsewhere
    )
    slot = segmind_call_slot("segmind", flow_run_gate=calls)

    with pytest.raises(CallNotMadeError, match="not called"), slot():
        pytest.fail("the call was sent after the 406")
    with calls._permits, calls._permits:  # both permits came back
        pass


def test_resuming_a_paid_queued_request_goes_through_after_a_406() -> None:
    calls = FlowRunCalls(1)
    calls.stopped = "Segmind credits ran out (406 on an earlier call)"
    with pytest.raises(CallNotMadeError), calls.permit():
        pytest.fail("a new call after the stop")
    token = resuming_paid_request.set(True)
    try:
        with calls.permit():  # its result is paid for: fetch it
            resumed = True
    finally:
        resuming_paid_request.reset(token)
    assert resumed
