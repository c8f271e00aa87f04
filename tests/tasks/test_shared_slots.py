"""`SharedSlots` against the real Prefect test server, with faults injected on the HTTP path.

Each test makes its own global concurrency limit (a unique name) on the session's
Prefect server. Faults come from `FaultyTransport`, an httpx transport between
`SharedSlots` and the real server: it answers chosen requests itself (a 503, a
423 with ``Retry-After``, a refused connection) and forwards the rest, and it
records every request it saw, in order.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prefect import flow, get_client, task
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.context import TaskRunContext
from prefect.settings import PREFECT_API_URL

from tasks.concurrency import ensure_concurrency_limit, segmind_call_slot, shared_slots
from tasks.shared_slots import TRANSIENT_STATUS, MissingConcurrencyLimitError, SharedSlots
from tests.support import wait_until

pytestmark = pytest.mark.usefixtures("prefect_harness")

INCREMENT = "/v2/concurrency_limits/increment-with-lease"
DECREMENT = "/v2/concurrency_limits/decrement-with-lease"
RENEW = "/renew"
MIN_LEASE_S = 60.0  # the server refuses shorter leases


# --- the seam: a transport on the real HTTP path ----------------------------------------


Answer = Callable[[httpx.Request], httpx.Response]


@dataclass
class Seen:
    """One request the transport saw."""

    method: str
    path: str
    body: Any
    injected: bool = False
    status: int | None = None
    """The answer's status (None while in flight, or when the request raised)."""

    @property
    def real_transient_error(self) -> bool:
        """The real server answered with a status that is retried (SQLite's 503s happen)."""
        return not self.injected and self.status in TRANSIENT_STATUS


@dataclass
class Fault:
    """Answer the next ``times`` requests whose path ends with ``suffix`` with ``answer``."""

    suffix: str
    times: int
    answer: Answer


def status(code: int, headers: dict[str, str] | None = None) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, headers=headers, json={"detail": "injected"}, request=request)

    return answer


def refuse_connection(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("injected: connection refused", request=request)


class FaultyTransport(httpx.BaseTransport):
    """Forwards to the real server, except where a `Fault` applies; records every request."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self._lock = threading.Lock()
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []

    def fail(self, suffix: str, answer: Answer, *, times: int = 1_000_000) -> None:
        with self._lock:
            self.faults.append(Fault(suffix, times, answer))

    def heal(self) -> None:
        with self._lock:
            self.faults.clear()

    def requests(self, suffix: str, method: str = "POST") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == method and s.path.endswith(suffix)]

    def real_transient_errors(self, suffix: str) -> int:
        """How many of these requests the real server answered with a retried error."""
        return sum(s.real_transient_error for s in self.requests(suffix))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        content = request.read()
        seen = Seen(request.method, request.url.path, json.loads(content) if content else None)
        with self._lock:
            self.seen.append(seen)
            fault = next(
                (f for f in self.faults if f.times > 0 and request.url.path.endswith(f.suffix)),
                None,
            )
            if fault is not None:
                fault.times -= 1
                seen.injected = True
        response = (
            fault.answer(request) if fault is not None else self._inner.handle_request(request)
        )
        seen.status = response.status_code
        return response

    def close(self) -> None:
        self._inner.close()


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def api_url() -> str:
    url = str(PREFECT_API_URL.value())
    assert url.startswith("http://127.0.0.1:"), url
    return url


@pytest.fixture
def prefect() -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as client:
        yield client


@pytest.fixture
def make_limit(prefect: SyncPrefectClient) -> Iterator[Callable[..., str]]:
    """Create a global concurrency limit with a unique name; deleted after the test."""
    made: list[str] = []

    def make(slots: int, *, prefix: str = "shared-slots-") -> str:
        name = f"{prefix}{uuid.uuid4().hex[:12]}"
        ensure_concurrency_limit(prefect, slots, name=name)
        made.append(name)
        return name

    yield make
    for name in made:
        prefect.delete_global_concurrency_limit_by_name(name)


@pytest.fixture
def connect(api_url: str) -> Iterator[Callable[[], tuple[httpx.Client, FaultyTransport]]]:
    """An independent HTTP client to the Prefect API (one per "process"), and its transport."""
    clients: list[httpx.Client] = []

    def make() -> tuple[httpx.Client, FaultyTransport]:
        transport = FaultyTransport()
        client = httpx.Client(base_url=api_url, transport=transport, timeout=30.0)
        clients.append(client)
        return client, transport

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def observer(api_url: str) -> Iterator[httpx.Client]:
    """A plain client for the test's own reads and clean-ups, never faulted."""
    with httpx.Client(base_url=api_url, timeout=30.0) as client:
        yield client


def active_slots(prefect: SyncPrefectClient, name: str) -> int:
    return prefect.read_global_concurrency_limit_by_name(name).active_slots


def release_lease(observer: httpx.Client, lease_id: str) -> None:
    """Free a lease the product could not (the server's SQLite may answer 503: ask again)."""

    def released() -> bool:
        response = observer.post(DECREMENT, json={"lease_id": lease_id})
        if response.status_code in TRANSIENT_STATUS:
            return False
        response.raise_for_status()
        return True

    wait_until(released, what=f"release of lease {lease_id}")


def slots_for(name: str, http: httpx.Client, **settings: Any) -> SharedSlots:
    settings.setdefault("poll_max_s", 0.1)
    settings.setdefault("lease_s", MIN_LEASE_S)
    return SharedSlots(name, http=http, **settings)


# --- the bound ----------------------------------------------------------------------------


def test_two_processes_together_never_hold_more_than_the_limit(
    make_limit: Callable[..., str], connect: Callable[..., Any], prefect: SyncPrefectClient
) -> None:
    name = make_limit(2)
    workers = [slots_for(name, connect()[0]) for _ in range(2)]
    lock = threading.Lock()
    holders = 0
    max_holders = 0
    server_seen: list[int] = []
    ran = 0
    # Every holder waits for a second one: the limit's two slots are held together,
    # and a bound below two would break the barrier.
    pair = threading.Barrier(2)

    def call(slots: SharedSlots) -> None:
        nonlocal holders, max_holders, ran
        with slots.hold():
            with lock:
                holders += 1
                max_holders = max(max_holders, holders)
            pair.wait(timeout=20)
            server = active_slots(prefect, name)
            with lock:
                server_seen.append(server)
                holders -= 1
                ran += 1

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(call, slots) for slots in workers for _ in range(8)]
        for future in futures:
            future.result()

    assert ran == 16
    assert max_holders == 2
    assert len(server_seen) == 16
    assert all(1 <= seen <= 2 for seen in server_seen), server_seen
    assert active_slots(prefect, name) == 0
    for slots in workers:
        assert slots.counters.acquired == 8
        assert slots.counters.released == slots.counters.acquired
        assert slots.counters.release_failures == 0
        assert slots.held == 0


def test_a_limit_full_in_another_process_is_asked_again_until_a_slot_is_free(
    make_limit: Callable[..., str], connect: Callable[..., Any], prefect: SyncPrefectClient
) -> None:
    name = make_limit(1)
    first = slots_for(name, connect()[0])
    second_http, second_transport = connect()
    second = slots_for(name, second_http)
    got_it = threading.Event()

    def wait_for_a_slot() -> None:
        with second.hold():
            got_it.set()

    with first.hold():
        waiter = threading.Thread(target=wait_for_a_slot)
        waiter.start()
        # The server itself refuses (423), more than once: the waiter keeps asking.
        wait_until(lambda: second.counters.refused >= 2, what="two refusals")
        assert not got_it.is_set()
        assert active_slots(prefect, name) == 1
    waiter.join(timeout=20)
    assert got_it.is_set()
    assert second.counters.acquired == 1
    assert len(second_transport.requests(INCREMENT)) == (
        second.counters.refused + second.counters.transient_errors + 1
    )
    assert active_slots(prefect, name) == 0


# --- the local queue -------------------------------------------------------------------


def test_threads_of_one_process_get_the_slot_in_the_order_they_queued(
    make_limit: Callable[..., str], connect: Callable[..., Any], prefect: SyncPrefectClient
) -> None:
    name = make_limit(1)
    http, transport = connect()
    slots = slots_for(name, http, refresh_s=600)
    order: list[int] = []

    def waiter(index: int) -> None:
        with slots.hold():
            order.append(index)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(6)]
    with slots.hold():
        for index, thread in enumerate(threads):
            thread.start()
            wait_until(
                lambda n=index + 1: len(slots._queue) == n, what=f"{index + 1} threads queued"
            )
        # While this process holds all the limit's slots, its waiters do not ask the server.
        assert len(transport.requests(INCREMENT)) == 1 + slots.counters.transient_errors
        assert order == []
    for thread in threads:
        thread.join(timeout=20)

    assert order == list(range(6))
    assert slots.counters.acquired == 7
    assert slots.counters.refused == 0  # each slot went to the next thread, never to the server
    assert len(transport.requests(INCREMENT)) == 7 + slots.counters.transient_errors
    assert len(slots._queue) == 0
    assert active_slots(prefect, name) == 0


def test_the_size_is_read_once_per_refresh_and_a_larger_limit_is_used(
    make_limit: Callable[..., str], connect: Callable[..., Any], prefect: SyncPrefectClient
) -> None:
    name = make_limit(1)
    http, transport = connect()
    cached = slots_for(name, http, refresh_s=600)
    for _ in range(3):
        with cached.hold():
            pass
    assert len(transport.requests(f"/v2/concurrency_limits/{name}", method="GET")) == 1

    fresh_http, fresh_transport = connect()
    fresh = slots_for(name, fresh_http, refresh_s=0)
    with fresh.hold():
        pass
    prefect.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=2))
    pair = threading.Barrier(2)

    def call() -> int:
        with fresh.hold():
            pair.wait(timeout=20)  # both slots at once: the new size was read
            return fresh.held

    with ThreadPoolExecutor(max_workers=2) as pool:
        held = [f.result() for f in [pool.submit(call) for _ in range(2)]]
    assert held == [2, 2]
    assert len(fresh_transport.requests(f"/v2/concurrency_limits/{name}", method="GET")) == 3
    assert active_slots(prefect, name) == 0


# --- transient and permanent errors ---------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [status(503), status(429), status(502), refuse_connection],
    ids=["503", "429", "502", "connection-refused"],
)
def test_a_transient_error_on_acquiring_is_retried(
    answer: Answer,
    make_limit: Callable[..., str],
    connect: Callable[..., Any],
    prefect: SyncPrefectClient,
) -> None:
    name = make_limit(1)
    http, transport = connect()
    transport.fail(INCREMENT, answer, times=3)
    slots = slots_for(name, http)

    with slots.hold():
        assert active_slots(prefect, name) == 1

    real = transport.real_transient_errors(INCREMENT)
    assert slots.counters.transient_errors == 3 + real
    assert slots.counters.acquired == 1
    assert len(transport.requests(INCREMENT)) == 4 + real
    assert active_slots(prefect, name) == 0


def test_too_many_errors_in_a_row_raise_and_leave_no_slot_taken(
    make_limit: Callable[..., str], connect: Callable[..., Any], prefect: SyncPrefectClient
) -> None:
    name = make_limit(1)
    http, transport = connect()
    transport.fail(INCREMENT, status(500))
    slots = slots_for(name, http, max_transient_errors=2)
    ran = False

    with pytest.raises(httpx.HTTPStatusError) as raised, slots.hold():
        ran = True

    assert raised.value.response.status_code == 500
    assert not ran
    assert slots.counters.transient_errors == 3
    assert len(transport.requests(INCREMENT)) == 3
    assert slots.counters.acquired == 0
    assert slots.held == 0
    assert len(slots._queue) == 0
    assert active_slots(prefect, name) == 0

    transport.heal()
    with slots.hold():
        assert active_slots(prefect, name) == 1
    assert slots.counters.acquired == 1
    assert active_slots(prefect, name) == 0


def test_a_thread_that_gives_up_lets_the_next_one_in_the_queue_ask(
    make_limit: Callable[..., str], connect: Callable[..., Any], prefect: SyncPrefectClient
) -> None:
    name = make_limit(1)
    http, transport = connect()
    slots = slots_for(name, http, max_transient_errors=1, refresh_s=600)
    outcomes: dict[str, str] = {}

    def attempt(who: str) -> None:
        try:
            with slots.hold():
                outcomes[who] = "held"
        except httpx.HTTPStatusError as exc:
            outcomes[who] = f"raised {exc.response.status_code}"

    first = threading.Thread(target=attempt, args=("first",))
    second = threading.Thread(target=attempt, args=("second",))
    with slots.hold():
        first.start()
        wait_until(lambda: len(slots._queue) == 1, what="first queued")
        second.start()
        wait_until(lambda: len(slots._queue) == 2, what="second queued")
        # The head's next two asks fail: with one retry allowed, it gives up.
        transport.fail(INCREMENT, status(503), times=2)
    first.join(timeout=20)
    second.join(timeout=20)

    assert outcomes == {"first": "raised 503", "second": "held"}
    assert len(slots._queue) == 0
    assert slots.held == 0
    assert active_slots(prefect, name) == 0


def test_a_client_error_on_acquiring_is_not_retried(
    make_limit: Callable[..., str], connect: Callable[..., Any], prefect: SyncPrefectClient
) -> None:
    name = make_limit(1)
    http, transport = connect()
    transport.fail(INCREMENT, status(422), times=1)
    slots = slots_for(name, http)

    with pytest.raises(httpx.HTTPStatusError) as raised, slots.hold():
        pass

    assert raised.value.response.status_code == 422
    assert slots.counters.transient_errors == 0
    assert len(transport.requests(INCREMENT)) == 1
    assert len(slots._queue) == 0
    assert active_slots(prefect, name) == 0


@pytest.mark.timeout(20, func_only=True)  # honouring Retry-After: 30 would fail the test
def test_a_long_retry_after_is_capped_for_a_limit_without_decay(
    make_limit: Callable[..., str], connect: Callable[..., Any], prefect: SyncPrefectClient
) -> None:
    name = make_limit(1)
    http, transport = connect()
    transport.fail(INCREMENT, status(423, {"Retry-After": "30"}), times=1)
    slots = slots_for(name, http, poll_max_s=0.2)
    done = threading.Event()

    def call() -> None:
        with slots.hold():
            done.set()

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    # Well inside the 30 s the server asked for: the second ask was not put off.
    wait_until(done.is_set, timeout=12, what="the slot, asked again before Retry-After")
    caller.join(timeout=10)

    assert slots.counters.refused == 1
    assert slots.counters.acquired == 1
    assert len(transport.requests(INCREMENT)) == 2 + transport.real_transient_errors(INCREMENT)
    assert active_slots(prefect, name) == 0


# --- release ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "tries"),
    [(status(500), 2), (refuse_connection, 2), (status(400), 1)],
    ids=["500", "connection-refused", "400-not-retried"],
)
def test_a_failed_release_never_raises_and_is_counted(
    answer: Answer,
    tries: int,
    make_limit: Callable[..., str],
    connect: Callable[..., Any],
    prefect: SyncPrefectClient,
    observer: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = make_limit(2)
    http, transport = connect()
    transport.fail(DECREMENT, answer)
    slots = slots_for(name, http, max_transient_errors=2)
    caplog.set_level(logging.WARNING, logger="tasks.shared_slots")

    ran = False
    with slots.hold():
        ran = True
    assert ran
    assert slots.counters.release_failures == 1
    assert slots.counters.released == 0
    decrements = transport.requests(DECREMENT)
    assert len(decrements) == tries
    assert slots.held == 0
    assert any(r.levelno == logging.WARNING and name in r.getMessage() for r in caplog.records), (
        caplog.text
    )
    # The slot stays taken on the server until its lease ends; the lease is a real one.
    assert active_slots(prefect, name) == 1
    release_lease(observer, decrements[0].body["lease_id"])
    assert active_slots(prefect, name) == 0

    # An exception of the body comes out unchanged, even when the release fails too.
    boom = RuntimeError("the call failed")
    with pytest.raises(RuntimeError) as raised, slots.hold():
        raise boom
    assert raised.value is boom
    assert slots.counters.release_failures == 2
    release_lease(observer, transport.requests(DECREMENT)[-1].body["lease_id"])
    assert active_slots(prefect, name) == 0


def test_an_exception_in_the_body_propagates_and_the_slot_is_released(
    make_limit: Callable[..., str], connect: Callable[..., Any], prefect: SyncPrefectClient
) -> None:
    name = make_limit(1)
    http, transport = connect()
    slots = slots_for(name, http)

    class CallFailedError(Exception):
        pass

    boom = CallFailedError("segmind said no")
    inside: list[int] = []

    def call() -> None:
        inside.append(active_slots(prefect, name))
        raise boom

    with pytest.raises(CallFailedError) as raised, slots.hold():
        call()

    assert inside == [1]
    assert raised.value is boom
    assert slots.counters.released == 1
    assert slots.counters.release_failures == 0
    assert len(transport.requests(DECREMENT)) == 1 + transport.real_transient_errors(DECREMENT)
    assert slots.held == 0
    assert active_slots(prefect, name) == 0


# --- renewal ------------------------------------------------------------------------------


def test_held_leases_are_renewed_and_released_ones_no_longer(
    make_limit: Callable[..., str], connect: Callable[..., Any], prefect: SyncPrefectClient
) -> None:
    name = make_limit(1)
    http, transport = connect()
    slots = slots_for(name, http, lease_s=MIN_LEASE_S, renew_every_s=0.2)

    def renewed_leases() -> list[str]:
        return [s.path.split("/")[-2] for s in transport.requests(RENEW)]

    with slots.hold():
        wait_until(lambda: slots.counters.renewed >= 2, what="two renewals")
        (first_lease,) = [str(lease) for lease in slots._leases]
    assert transport.requests(DECREMENT)[-1].body == {"lease_id": first_lease}
    assert len(renewed_leases()) >= 2
    assert set(renewed_leases()) == {first_lease}
    assert all(s.body == {"lease_duration": MIN_LEASE_S} for s in transport.requests(RENEW))

    with slots.hold():
        (second_lease,) = [str(lease) for lease in slots._leases]
        wait_until(lambda: second_lease in renewed_leases(), what="renewal of the second lease")
    leases = renewed_leases()
    # One renewer thread renews in order: after the second lease's first renewal,
    # the released first lease is never renewed again.
    assert first_lease not in leases[leases.index(second_lease) :]
    assert slots.counters.release_failures == 0
    assert active_slots(prefect, name) == 0


# --- missing and inactive limits ----------------------------------------------------------


def test_a_missing_limit_is_an_error_that_says_how_to_create_it(
    connect: Callable[..., Any],
) -> None:
    name = f"shared-slots-missing-{uuid.uuid4().hex[:12]}"
    http, transport = connect()
    slots = slots_for(name, http)
    ran = False

    with pytest.raises(MissingConcurrencyLimitError) as raised, slots.hold():
        ran = True

    assert not ran
    assert repr(name) in str(raised.value)
    assert "python -m deployments.setup" in str(raised.value)
    assert transport.requests(INCREMENT) == []
    assert len(transport.requests(f"/v2/concurrency_limits/{name}", method="GET")) == 1


def test_a_limit_deleted_after_its_size_was_read_is_missing_too(
    connect: Callable[..., Any], prefect: SyncPrefectClient
) -> None:
    name = f"shared-slots-deleted-{uuid.uuid4().hex[:12]}"
    ensure_concurrency_limit(prefect, 1, name=name)
    http, transport = connect()
    slots = slots_for(name, http, refresh_s=600)
    with slots.hold():
        pass
    prefect.delete_global_concurrency_limit_by_name(name)

    with pytest.raises(MissingConcurrencyLimitError, match=r"deployments\.setup"), slots.hold():
        pass

    # The size was not read again: the increment's empty answer said it.
    assert len(transport.requests(INCREMENT)) == 2 + transport.real_transient_errors(INCREMENT)
    assert len(transport.requests(f"/v2/concurrency_limits/{name}", method="GET")) == 1
    assert len(slots._queue) == 0
    assert slots.held == 0


def test_an_inactive_limit_takes_no_slot(
    make_limit: Callable[..., str], connect: Callable[..., Any], prefect: SyncPrefectClient
) -> None:
    name = make_limit(1)
    prefect.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active=False))
    http, transport = connect()
    slots = slots_for(name, http)
    both = threading.Barrier(2)

    def call() -> int:
        with slots.hold():
            both.wait(timeout=10)  # two at once on a one-slot limit: nothing is enforced
            return slots.held

    with ThreadPoolExecutor(max_workers=2) as pool:
        held = [f.result() for f in [pool.submit(call) for _ in range(2)]]

    assert held == [0, 0]
    assert transport.requests(INCREMENT) == []
    assert transport.requests(DECREMENT) == []
    assert slots.counters.acquired == 0
    assert active_slots(prefect, name) == 0


# --- the holder ---------------------------------------------------------------------------


def test_a_slot_taken_in_a_task_run_is_held_by_that_task_run(
    make_limit: Callable[..., str],
    connect: Callable[..., Any],
    observer: httpx.Client,
    prefect: SyncPrefectClient,
) -> None:
    # The server lists a limit's holders only for "tag:" limits (its V1 API, by tag).
    name = make_limit(1, prefix="tag:shared-slots-")
    tag = name.removeprefix("tag:")
    slots = slots_for(name, connect()[0])

    def holders() -> list[str]:
        response = observer.get(f"/concurrency_limits/tag/{tag}")
        response.raise_for_status()
        return [str(h) for h in response.json()["active_slots"]]

    @task
    def call() -> tuple[str, list[str]]:
        context = TaskRunContext.get()
        assert context is not None
        with slots.hold():
            return str(context.task_run.id), holders()

    @flow
    def run() -> tuple[str, list[str]]:
        return call()

    task_run_id, seen = run()
    assert seen == [task_run_id]
    assert holders() == []

    # Outside a task run the lease has no holder.
    with slots.hold():
        assert holders() == []
        assert active_slots(prefect, name) == 1


# --- the product path ---------------------------------------------------------------------


def test_segmind_call_slot_holds_a_slot_of_the_process_wide_instance(
    make_limit: Callable[..., str], prefect: SyncPrefectClient
) -> None:
    name = make_limit(1)
    other = make_limit(1)

    slots = shared_slots(name)
    assert shared_slots(name) is slots
    assert shared_slots(other) is not slots
    hold = segmind_call_slot(name)
    assert hold == slots.hold
    assert segmind_call_slot(name) == hold

    # The default HTTP client (borrowed from a Prefect client) talks to the real server.
    with hold():
        assert active_slots(prefect, name) == 1
        assert slots.held == 1
    assert active_slots(prefect, name) == 0
    assert slots.counters.acquired == 1
    assert slots.counters.released == 1


# --- regressions found in review ------------------------------------------------------------


def undecodable(request: httpx.Request) -> httpx.Response:
    """A proxy's 502 that says gzip and is not: reading it raises httpx.DecodingError."""
    return httpx.Response(
        502, headers={"Content-Encoding": "gzip"}, content=b"not gzip", request=request
    )


def test_a_release_that_fails_in_an_unexpected_way_still_frees_the_local_slot(
    make_limit: Callable[..., str],
    connect: Callable[..., Any],
    prefect: SyncPrefectClient,
    observer: httpx.Client,
) -> None:
    name = make_limit(1)
    http, transport = connect()
    transport.fail(DECREMENT, undecodable, times=100)
    slots = slots_for(name, http, max_transient_errors=2, renew_every_s=0.1)

    boom = ValueError("the body's own error")
    with pytest.raises(ValueError, match="the body's own error") as raised, slots.hold():
        raise boom

    assert raised.value is boom
    assert slots.counters.release_failures == 1
    assert slots.held == 0  # the process no longer counts the slot as its own
    lease_id = transport.requests(DECREMENT)[0].body["lease_id"]
    renewals_then = len(transport.requests(RENEW))
    release_lease(observer, lease_id)  # what the server does when the lease ends
    transport.heal()
    with slots.hold():  # the next hold gets the one slot
        assert active_slots(prefect, name) == 1
    assert all(lease_id not in s.path for s in transport.requests(RENEW)[renewals_then:])


def test_transient_errors_count_in_a_row_a_423_in_between_resets_them(
    make_limit: Callable[..., str], connect: Callable[..., Any]
) -> None:
    name = make_limit(1)
    http, transport = connect()
    answers = iter([503, 423, 503, 423, 503])

    def scripted(request: httpx.Request) -> httpx.Response:
        code = next(answers)
        return httpx.Response(code, headers={"Retry-After": "0.05"}, json={}, request=request)

    transport.fail(INCREMENT, scripted, times=5)
    slots = slots_for(name, http, max_transient_errors=2)

    with slots.hold():
        held = slots.held

    assert held == 1
    assert slots.counters.refused == 2
    assert slots.counters.transient_errors == 3
    assert len(transport.requests(INCREMENT)) == 6


def test_a_transient_error_on_reading_the_limit_is_retried(
    make_limit: Callable[..., str], connect: Callable[..., Any]
) -> None:
    name = make_limit(1)
    http, transport = connect()
    transport.fail(f"/v2/concurrency_limits/{name}", status(503), times=2)
    slots = slots_for(name, http)

    with slots.hold():
        held = slots.held

    assert held == 1
    assert slots.counters.transient_errors == 2
    assert len(transport.requests(f"/v2/concurrency_limits/{name}", method="GET")) == 3


def test_a_busy_process_lets_a_waiting_one_take_a_turn(
    make_limit: Callable[..., str], connect: Callable[..., Any]
) -> None:
    """Without the courtesy, the busy process handed every freed slot to itself."""
    name = make_limit(2)
    busy = slots_for(name, connect()[0], poll_max_s=0.3, fair_turns=1)
    late = slots_for(name, connect()[0], poll_max_s=0.3)
    stop = threading.Event()

    def keep_calling() -> None:
        while not stop.is_set():
            with busy.hold():
                stop.wait(0.02)  # the call's duration

    workers = [threading.Thread(target=keep_calling) for _ in range(6)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: busy.counters.acquired >= 6, timeout=20, what="the busy process")
        got_in = threading.Event()

        def one_call() -> None:
            with late.hold():
                got_in.set()

        late_thread = threading.Thread(target=one_call)
        late_thread.start()
        wait_until(got_in.is_set, timeout=30, what="a turn for the waiting process")
        late_thread.join()
        still_busy = sum(worker.is_alive() for worker in workers)
    finally:
        stop.set()
        for worker in workers:
            worker.join()

    assert still_busy == 6  # it got its turn while the busy process still wanted every slot
    # The courtesy let it in; or, on a loaded SQLite server, the busy process's backoff
    # after a 503 did (seen once in CI: 8 transient errors, no courtesy needed).
    assert busy.counters.courtesies >= 1 or busy.counters.transient_errors >= 1
    assert late.counters.acquired == 1
