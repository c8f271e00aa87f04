"""Slots of one Prefect global concurrency limit, handed over without idle time.

Prefect's ``concurrency()`` left the ``segmind`` limit's slots idle about half
the time when more calls wanted a slot than it had (2 slots, 8 task runs, 16
one-second calls: 15-17 s for an ideal 8 s). Measured causes:

- every waiting thread asks the server; each refusal (423) raises the
  ``Retry-After`` the server gives everyone (average occupancy times waiters
  over slots), so a freed slot waits for a sleeper to wake up;
- one process sends its acquisitions through one queue, one at a time, so a
  request sleeping its ``Retry-After`` holds up every request behind it;
- on a SQLite server an acquisition that meets another write gets 503
  ("database is locked"), which Prefect's client retries after 2 s.

`SharedSlots` keeps the server as the only judge of the bound (every slot is
a lease the server granted; nothing is ever taken without one) and changes
only how a process waits: its threads queue locally in order, only the head
of the queue asks the server, a slot this process frees goes to its next
thread at once (but after ``fair_turns`` times the limit's size of such
hand-overs in a row it waits one poll interval, so that another process that
is asking gets a turn), a full limit is asked again after at most ``poll_max_s``, and
transient errors are retried after tens of milliseconds. A lease outlives a
crash by at most ``lease_s``; while held, it is renewed every ``renew_every_s``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.context import TaskRunContext
from prefect.settings import PREFECT_API_URL

from segmind_core.errors import PermanentError

__all__ = [
    "MissingConcurrencyLimitError",
    "SharedSlots",
    "SlotCounters",
    "backoff_s",
    "prefect_api_http",
    "retry_after_s",
    "send_once",
]

logger = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class MissingConcurrencyLimitError(PermanentError):
    """The Prefect server has no global concurrency limit of the configured name."""


def missing_limit_message(name: str) -> str:
    """What to do about a limit that does not exist."""
    return (
        f"the Prefect server has no global concurrency limit {name!r}: create it with "
        "`python -m deployments.setup`, or empty the credentials block's concurrency_limit"
    )


@dataclass
class SlotCounters:
    """What one process's waiting cost, for the benchmark and the tests."""

    acquired: int = 0
    refused: int = 0
    """423 answers: the limit was full (other processes held it)."""
    transient_errors: int = 0
    """503 and other retried errors."""
    renewed: int = 0
    released: int = 0
    release_failures: int = 0
    lost: int = 0
    """Leases the server no longer knew when renewed."""
    courtesies: int = 0
    """Hand-overs held back so that another process could take the slot."""


class SharedSlots:
    """This process's way into one global concurrency limit.

    Args:
        name: The limit's name on the Prefect server.
        poll_max_s: Longest wait before asking a full limit again (the server's
            ``Retry-After`` when shorter; always it for a limit whose slots decay).
        lease_s: Lease the server grants per slot; it frees the slot by itself
            this long after a crash.
        renew_every_s: How often held leases are renewed.
        refresh_s: How old this process's idea of the limit's size may get.
        max_transient_errors: Retried errors in a row before giving up.
        fair_turns: After this many times the limit's size of hand-overs in a row
            inside this process, the next waits ``poll_max_s`` to 2 x ``poll_max_s``
            before asking, so a process that is waiting gets a turn.
        http: An HTTP client whose base URL is the Prefect API. By default, the
            httpx client inside a Prefect client (its URL, auth headers and TLS
            settings), used without Prefect's retry loop: that loop waits 2 s
            after a 503 even with retries off, and 503s are common on SQLite.
    """

    def __init__(
        self,
        name: str,
        *,
        poll_max_s: float = 0.5,
        lease_s: float = 300.0,
        renew_every_s: float = 60.0,
        refresh_s: float = 30.0,
        max_transient_errors: int = 12,
        fair_turns: int = 4,
        http: httpx.Client | None = None,
    ) -> None:
        self.name = name
        self.poll_max_s = poll_max_s
        self.lease_s = lease_s
        self.renew_every_s = renew_every_s
        self.refresh_s = refresh_s
        self.max_transient_errors = max_transient_errors
        self.fair_turns = fair_turns
        self._http = http
        self._condition = threading.Condition()
        self._queue: deque[object] = deque()
        self._leases: set[UUID] = set()
        self._size: int | None = None
        self._decays = False
        self._active = True
        self._size_read_at: float | None = None
        self._renewer: threading.Thread | None = None
        self._streak = 0
        self._rng = random.Random()  # noqa: S311 - jitter, not crypto
        self.counters = SlotCounters()

    @property
    def held(self) -> int:
        """Slots this process holds now."""
        with self._condition:
            return len(self._leases)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold one slot for the block; wait in order for it.

        Raises:
            MissingConcurrencyLimitError: the limit does not exist.
        """
        self._refresh_size()
        if not self._active:
            yield  # the server does not enforce an inactive limit
            return
        ticket = object()
        holder = _holder()
        with self._condition:
            self._queue.append(ticket)
        try:
            lease_id = self._acquire(ticket, holder)
        finally:
            with self._condition:
                self._queue.remove(ticket)
                self._condition.notify_all()
        try:
            yield
        finally:
            try:
                self._release(lease_id)
            finally:
                with self._condition:
                    self._leases.discard(lease_id)
                    self._condition.notify_all()

    def _acquire(self, ticket: object, holder: ConcurrencyLeaseHolder | None) -> UUID:
        """Wait for this ticket's turn, then ask the server until it grants a lease.

        Only the head of the queue asks, and only while this process holds fewer
        slots than the limit has; no lock is held during a request. Between asks
        it waits for a slot this process frees, or ``poll_max_s`` at most.
        """
        body: dict[str, Any] = {
            "names": [self.name],
            "slots": 1,
            "mode": "concurrency",
            "lease_duration": self.lease_s,
        }
        if holder is not None:
            body["holder"] = holder.model_dump(mode="json")
        errors = 0
        refused = False
        while True:
            with self._condition:
                self._condition.wait_for(
                    lambda: self._queue[0] is ticket and len(self._leases) < (self._size or 1)
                )
                handing_over = bool(self._leases)  # the process holds others: a hand-over
                courtesy = handing_over and self._streak >= self.fair_turns * (self._size or 1)
                if courtesy:
                    self._streak = 0
                    self.counters.courtesies += 1
            if courtesy:
                # Let the freed slot go to another process, if one is asking (they ask
                # at least every poll_max_s); else this process takes it back.
                time.sleep(self.poll_max_s * (1.0 + self._rng.random()))
            try:
                response = self._post("/v2/concurrency_limits/increment-with-lease", body)
                response.raise_for_status()
                answer: dict[str, Any] = response.json()
                if not answer.get("limits"):
                    raise MissingConcurrencyLimitError(missing_limit_message(self.name))
                lease_id = UUID(answer["lease_id"])
                with self._condition:
                    self._streak = self._streak + 1 if handing_over and not refused else 0
                    self._leases.add(lease_id)
                    self.counters.acquired += 1
                self._start_renewer()
                return lease_id
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                if status == 423:
                    errors = 0  # the server answered: transient errors count in a row
                    refused = True
                    self.counters.refused += 1
                    wait = retry_after_s(exc.response, default=self.poll_max_s)
                    if not self._decays:
                        wait = min(wait, self.poll_max_s)
                elif status in TRANSIENT_STATUS:
                    errors = self._count_transient(errors, exc)
                    wait = self._backoff(errors)
                    if status == 429:  # Prefect Cloud's rate limit: wait as asked
                        wait = max(wait, retry_after_s(exc.response, default=wait))
                else:
                    raise
            except httpx.TransportError as exc:
                errors = self._count_transient(errors, exc)
                wait = self._backoff(errors)
            with self._condition:
                self._condition.wait(timeout=wait)  # woken early when a slot is freed here

    def _count_transient(self, errors: int, exc: Exception) -> int:
        self.counters.transient_errors += 1
        if errors + 1 > self.max_transient_errors:
            raise exc
        return errors + 1

    def _backoff(self, errors: int) -> float:
        return backoff_s(errors, self._rng)

    def _release(self, lease_id: UUID) -> None:
        """Give the slot back; a failure is logged, never raised (the call was paid)."""
        for attempt in range(1, self.max_transient_errors + 1):
            try:
                response = self._post(
                    "/v2/concurrency_limits/decrement-with-lease", {"lease_id": str(lease_id)}
                )
                response.raise_for_status()
                self.counters.released += 1
                return
            except Exception as exc:  # anything: the call it guarded was paid for
                status = getattr(getattr(exc, "response", None), "status_code", None)
                # Not after a timeout waiting for the answer: the release may have been
                # done, and a second one could free another holder's slot.
                retryable = status in TRANSIENT_STATUS or (
                    isinstance(exc, httpx.TransportError)
                    and not isinstance(exc, httpx.ReadTimeout | httpx.RemoteProtocolError)
                )
                if not retryable:
                    break
                time.sleep(self._backoff(attempt))  # backoff before the next try
        self.counters.release_failures += 1
        logger.warning(
            "could not release a slot of the concurrency limit %r; the server frees it "
            "when its lease ends (at most %.0f s; a server restarted meanwhile does not: "
            "then run `python -m deployments.setup --reset-held-slots` with nothing running)",
            self.name,
            self.lease_s,
        )

    def _refresh_size(self) -> None:
        """Read the limit's size and state when this process's copy is stale."""
        now = time.monotonic()
        if self._size_read_at is not None and now - self._size_read_at < self.refresh_s:
            return
        path = f"/v2/concurrency_limits/{quote(self.name, safe='')}"
        errors = 0
        while True:
            try:
                response = self._send("GET", path)
                if response.status_code == 404:
                    raise MissingConcurrencyLimitError(missing_limit_message(self.name))
                response.raise_for_status()
                break
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code not in TRANSIENT_STATUS:
                    raise
                errors = self._count_transient(errors, exc)
            except httpx.TransportError as exc:
                errors = self._count_transient(errors, exc)
            time.sleep(self._backoff(errors))  # backoff before the next try
        limit: dict[str, Any] = response.json()
        with self._condition:
            self._size = max(int(limit["limit"]), 1)
            self._active = bool(limit.get("active", True))
            self._decays = float(limit.get("slot_decay_per_second") or 0.0) > 0
            self._size_read_at = now
            self._condition.notify_all()

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._send("POST", path, body)

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return send_once(self._http or prefect_api_http(), method, path, body)

    def _lost(self, lease_id: UUID) -> None:
        """The server no longer knows a lease this process holds: say so, stop renewing it."""
        with self._condition:
            self._leases.discard(lease_id)
            self._condition.notify_all()
        self.counters.lost += 1
        logger.error(
            "a slot of the concurrency limit %r was lost (its lease ended on the server): "
            "the call holding it runs on without one",
            self.name,
        )

    def _start_renewer(self) -> None:
        """Start the thread that renews held leases (once per process and limit)."""
        if self._renewer is None or not self._renewer.is_alive():
            self._renewer = threading.Thread(
                target=self._renew_forever, name=f"renew-slots-{self.name}", daemon=True
            )
            self._renewer.start()

    def _renew_forever(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.renew_every_s):
            with self._condition:
                leases = list(self._leases)
            for lease_id in leases:
                try:
                    response = self._post(
                        f"/v2/concurrency_limits/leases/{lease_id}/renew",
                        {"lease_duration": self.lease_s},
                    )
                    if response.status_code in (404, 410):
                        self._lost(lease_id)
                        continue
                    response.raise_for_status()
                    self.counters.renewed += 1
                except Exception:  # a renewal failure must not end the thread
                    logger.warning("could not renew a lease of the concurrency limit %r", self.name)


_prefect_clients: dict[str, SyncPrefectClient] = {}
_prefect_clients_lock = threading.Lock()


def prefect_api_http() -> httpx.Client:
    """The httpx client inside a Prefect client of the configured API, one per process.

    It carries Prefect's URL, auth headers and TLS settings; `send_once` uses it
    without Prefect's retry loop.
    """
    url = str(PREFECT_API_URL.value())
    with _prefect_clients_lock:
        if url not in _prefect_clients:
            client = get_client(sync_client=True)
            client.__enter__()  # open for the life of the process
            _prefect_clients[url] = client
        http: httpx.Client = _prefect_clients[url]._client
        return http


def send_once(
    client: httpx.Client, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    """One request, without Prefect's retry loop (``httpx.Client.send`` itself).

    Prefect's loop waits 2 s after a 503 even with retries turned off, and a
    SQLite-backed server answers 503 whenever two writes meet.
    """
    request = client.build_request(method, path, json=body)
    if method != "GET" and getattr(client, "enable_csrf_support", False):
        # A server with CSRF protection wants Prefect's token on every change.
        client._add_csrf_headers(request)  # type: ignore[attr-defined]
    return httpx.Client.send(client, request)


def backoff_s(errors: int, rng: random.Random) -> float:
    """Tens of milliseconds after a first transient error, doubling to 2 s, with jitter."""
    base: float = min(0.05 * 2.0 ** (errors - 1), 2.0)
    return base * (0.5 + rng.random())


def retry_after_s(response: httpx.Response, *, default: float) -> float:
    """The ``Retry-After`` of a 423, in seconds, or ``default``."""
    try:
        return max(float(str(response.headers["Retry-After"])), 0.0)
    except (KeyError, ValueError):
        return default


def _holder() -> ConcurrencyLeaseHolder | None:
    """The task run that holds the slot, shown with the limit in the Prefect UI."""
    context = TaskRunContext.get()
    if context is None:
        return None
    return ConcurrencyLeaseHolder(type="task_run", id=context.task_run.id)
