"""The shared limit on Segmind calls: one slot of a Prefect global concurrency limit per call.

Every endpoint task holds a slot of the credentials block's limit
(`SegmindCredentials.resolved_concurrency_limit`: its ``concurrency_limit``,
else ``SEGMIND_CONCURRENCY_LIMIT``, else ``segmind``) around each HTTP
attempt, so all workers of one Prefect server together keep at most that many calls in
flight. With a Prefect server configured (``PREFECT_API_URL``) the limit must
exist: a missing one is an error that says how to create it, never a silent
pass. Without a server (Prefect's temporary one in a single process), there is
nothing to share and no slot is taken.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, cast

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from blocks.segmind_credentials import DEFAULT_CONCURRENCY_LIMIT
from segmind_core.client import resuming_paid_request
from segmind_core.errors import CallNotMadeError, InsufficientCreditsError
from tasks.rate_tokens import RateLimitError, RateTokens
from tasks.shared_slots import MissingConcurrencyLimitError, SharedSlots, missing_limit_message

__all__ = [
    "DEFAULT_LIMIT",
    "FlowRunCalls",
    "MissingConcurrencyLimitError",
    "ensure_concurrency_limit",
    "ensure_rate_limit",
    "flow_run_call_gate",
    "flow_run_call_limit",
    "rate_tokens",
    "require_concurrency_limit",
    "segmind_call_slot",
    "shared_slots",
]

DEFAULT_LIMIT = DEFAULT_CONCURRENCY_LIMIT


def segmind_call_slot(
    limit: str | None,
    rate_limit: str | None = None,
    *,
    flow_run_gate: FlowRunCalls | None = None,
) -> Callable[[], AbstractContextManager[object]]:
    """What the client holds around each attempt: a slot of ``limit``, or nothing.

    With ``rate_limit``, a token of that rate limit is taken once the slot is
    held, right before the request: taken earlier, tokens would pile up while
    their calls waited for slots and then start together, over the rate.
    With ``flow_run_gate`` (see `flow_run_call_limit`), a permit of it is taken
    first: the flow run's own bound on its calls in flight.
    """
    shared = _shared_slot(limit, rate_limit)
    if flow_run_gate is None:
        return shared
    gate = flow_run_gate

    @contextmanager
    def gate_then_shared() -> Iterator[None]:
        with gate.permit(), shared():
            gate.check()  # a 406 may have come while this call waited for the shared slot
            yield

    return gate_then_shared


def _shared_slot(
    limit: str | None, rate_limit: str | None
) -> Callable[[], AbstractContextManager[object]]:
    if not PREFECT_API_URL.value() or not (limit or rate_limit):
        return nullcontext
    hold = shared_slots(limit).hold if limit else nullcontext
    if not rate_limit:
        return hold
    tokens = rate_tokens(rate_limit)

    @contextmanager
    def slot_then_token() -> Iterator[None]:
        with hold():
            tokens.take()
            yield

    return slot_then_token


class FlowRunCalls:
    """One flow run's bound on its Segmind calls in flight, which a 406 closes.

    Once a call met a 406 (credits ran out), no other call of the flow run is
    sent: a call waiting for a permit, or holding one while it waits for the
    shared limit, raises `CallNotMadeError` instead. Resuming a queued request
    that was already paid for (`segmind_core.client.resuming_paid_request`)
    is still allowed.

    Args:
        calls: Calls in flight at most.
    """

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.stopped: str | None = None
        self._permits = threading.BoundedSemaphore(calls)

    def check(self) -> None:
        """Raise `CallNotMadeError` if the flow run's calls have stopped."""
        if self.stopped is not None and not resuming_paid_request.get():
            raise CallNotMadeError(f"not called: {self.stopped}", reason=self.stopped)

    @contextmanager
    def permit(self) -> Iterator[None]:
        """Hold one of the permits around a call; none is made after the run has stopped.

        Raises:
            CallNotMadeError: a call of this flow run met a 406 (credits ran out);
                nothing was sent.
        """
        with self._permits:
            self.check()
            try:
                yield
            except InsufficientCreditsError as exc:
                # Set before the permit is given back: no waiting call goes out after it.
                self.stopped = f"Segmind credits ran out ({exc.status or 406} on an earlier call)"
                raise


_flow_run_gates: dict[str, FlowRunCalls] = {}
_flow_run_gates_lock = threading.Lock()


@contextmanager
def flow_run_call_limit(calls: int) -> Iterator[FlowRunCalls | None]:
    """Inside: the current flow run's endpoint tasks keep at most ``calls`` calls in flight.

    A flow that bounds its calls this way can start more task runs than
    ``calls``: each task run's own work before and after its call (checking
    inputs, the cache, storing the output, reporting its states) then overlaps
    other task runs' calls instead of leaving a call idle. Measured with 8 calls
    of 1 s: 200 rows took 28.8 s with 8 task runs at a time, for a bound of 25 s.
    After a 406 no other call of the flow run is sent (`CallNotMadeError`).

    Outside a flow run it bounds nothing (and yields None). The bound is this
    process's; the shared limit (`segmind_call_slot`) still bounds every worker.
    """
    run_id = _current_flow_run_id()
    if run_id is None:
        yield None
        return
    gate = FlowRunCalls(calls)
    with _flow_run_gates_lock:
        if run_id in _flow_run_gates:
            raise RuntimeError(f"flow run {run_id} already has a call limit")
        _flow_run_gates[run_id] = gate
    try:
        yield gate
    finally:
        with _flow_run_gates_lock:
            del _flow_run_gates[run_id]


def flow_run_call_gate() -> FlowRunCalls | None:
    """The bound `flow_run_call_limit` set for the current flow run, if any."""
    run_id = _current_flow_run_id()
    if run_id is None:
        return None
    with _flow_run_gates_lock:
        return _flow_run_gates.get(run_id)


def _current_flow_run_id() -> str | None:
    """The flow run whose code is running, from its body or one of its task runs.

    Prefect's own rule (``prefect.context.get_run_context``): with both contexts,
    a flow run context whose id is not the task run's flow run is a subflow
    running inside that task, so the subflow is the current flow run.
    """
    task_found = TaskRunContext.get()
    flow_found = FlowRunContext.get()
    flow_id = None if flow_found is None or flow_found.flow_run is None else flow_found.flow_run.id
    if task_found is not None and (flow_id is None or flow_id == task_found.task_run.flow_run_id):
        task_flow_id = task_found.task_run.flow_run_id
        return None if task_flow_id is None else str(task_flow_id)
    return None if flow_id is None else str(flow_id)


def require_concurrency_limit(limit: str | None, rate_limit: str | None = None) -> None:
    """Fail now, before anything is paid, when the calls would need a limit that is missing.

    Raises:
        MissingConcurrencyLimitError: a Prefect server is configured and has no
            ``limit``, or no ``rate_limit`` whose slots decay.
    """
    if not PREFECT_API_URL.value():
        return
    from prefect import get_client

    with get_client(sync_client=True) as client:
        if limit:
            try:
                client.read_global_concurrency_limit_by_name(limit)
            except ObjectNotFound:
                raise MissingConcurrencyLimitError(missing_limit_message(limit)) from None
        if rate_limit:
            try:
                found = client.read_global_concurrency_limit_by_name(rate_limit)
            except ObjectNotFound:
                found = None
            if found is None or not found.slot_decay_per_second:
                raise RateLimitError(
                    f"the Prefect server has no rate limit {rate_limit!r} (a limit whose "
                    "slots decay): create it with `python -m deployments.setup "
                    "--rate-per-minute N`, or empty the credentials block's rate_limit"
                )


_per_process: dict[tuple[type, str, str], Any] = {}
_per_process_lock = threading.Lock()


def shared_slots(limit: str) -> SharedSlots:
    """This process's `SharedSlots` for ``limit`` on the configured Prefect server.

    One per process and limit, so that every task run of the process queues in
    the same line (see `tasks.shared_slots` for why that keeps slots busy).
    """
    slots: SharedSlots = _one_per_process(SharedSlots, limit)
    return slots


def rate_tokens(rate_limit: str) -> RateTokens:
    """This process's `RateTokens` for ``rate_limit`` on the configured Prefect server."""
    tokens: RateTokens = _one_per_process(RateTokens, rate_limit)
    return tokens


def _one_per_process(kind: Callable[[str], Any], name: str) -> Any:
    key = (cast(type, kind), str(PREFECT_API_URL.value()), name)
    with _per_process_lock:
        if key not in _per_process:
            _per_process[key] = kind(name)
        return _per_process[key]


def ensure_concurrency_limit(
    client: SyncPrefectClient, slots: int, *, name: str = DEFAULT_LIMIT
) -> str:
    """Create the in-flight limit ``name`` with ``slots``, or update it; says what it did.

    Its slots never decay: a decaying slot would be freed while its call is still
    in flight. Calls per minute are `ensure_rate_limit`'s, on a limit of their own.
    """
    return _ensure_limit(client, name, slots, decay=0.0, noun="concurrency limit")


def ensure_rate_limit(client: SyncPrefectClient, per_minute: float, *, name: str) -> str:
    """Create or update the rate limit ``name``: one token, renewed ``per_minute`` times a minute.

    One slot decaying at ``per_minute / 60`` per second: a call takes it and the
    next can start once it has decayed, so calls start at most ``per_minute``
    times a minute (plus the one token at the start of a minute).
    """
    return _ensure_limit(client, name, 1, decay=per_minute / 60, noun="rate limit")


def _ensure_limit(
    client: SyncPrefectClient, name: str, slots: int, *, decay: float, noun: str
) -> str:
    what = f"{slots} slots" if noun == "concurrency limit" else f"{decay * 60:g} a minute"
    try:
        existing = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=slots, slot_decay_per_second=decay)
        )
        return f"{noun} {name}: created with {what}"
    if existing.limit == slots and (existing.slot_decay_per_second or 0.0) == decay:
        return f"{noun} {name}: already {what}"
    client.update_global_concurrency_limit(
        name, GlobalConcurrencyLimitUpdate(limit=slots, slot_decay_per_second=decay)
    )
    return f"{noun} {name}: set to {what}"
