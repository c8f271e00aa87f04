"""Credits, billing, request counters and the concurrency and rate caps.

Everything sits behind one lock so that a stats snapshot is consistent:
``billed`` and ``spent_usd`` always agree with ``credits_remaining``.

Credits are reserved when a generation starts and charged only when it
succeeds, so concurrent calls can never spend more than the balance, and a
call that fails (or is cut off by an injected fault) costs nothing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = ["EmulatorState"]


@dataclass
class _SlugStats:
    requests: int = 0
    billed: int = 0
    spent_usd: Decimal = Decimal("0")


@dataclass
class _Counters:
    requests: int = 0
    billed: int = 0
    spent_usd: Decimal = Decimal("0")
    max_in_flight: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_slug: dict[str, _SlugStats] = field(default_factory=dict)
    faults_injected: Counter[str] = field(default_factory=Counter)
    jobs: Counter[str] = field(default_factory=Counter)


class EmulatorState:
    """Ledger and counters of one emulator instance (thread-safe)."""

    def __init__(
        self,
        credits_usd: Decimal,
        max_concurrency: int | None,
        rpm: int | None,
    ) -> None:
        self._cond = threading.Condition()
        self._initial_credits = credits_usd
        self._max_concurrency = max_concurrency
        self._rpm = rpm
        self._credits = credits_usd
        self._reserved = Decimal("0")
        self._in_flight = 0
        self._accepted_at: deque[float] = deque()
        self._counters = _Counters()

    # Credits -------------------------------------------------------------

    @property
    def credits_remaining(self) -> Decimal:
        """The balance after every charge so far (reservations not deducted)."""
        with self._cond:
            return self._credits

    def reserve(self, price: Decimal) -> bool:
        """Hold ``price`` against the balance; False when what is left cannot cover it."""
        with self._cond:
            if self._credits - self._reserved < price:
                return False
            self._reserved += price
            return True

    def release(self, price: Decimal) -> None:
        """Give back a reservation for a generation that did not succeed."""
        with self._cond:
            self._reserved -= price

    def charge(self, slug: str, price: Decimal) -> Decimal:
        """Turn a reservation into a charge; returns the balance afterwards."""
        with self._cond:
            self._reserved -= price
            self._credits -= price
            self._counters.billed += 1
            self._counters.spent_usd += price
            slug_stats = self._slug(slug)
            slug_stats.billed += 1
            slug_stats.spent_usd += price
            return self._credits

    # Counters ------------------------------------------------------------

    def _slug(self, slug: str) -> _SlugStats:
        return self._counters.by_slug.setdefault(slug, _SlugStats())

    def count_request(self, slug: str) -> None:
        """Count one generation request (v1 call or v2 submit), whatever its outcome."""
        with self._cond:
            self._counters.requests += 1
            self._slug(slug).requests += 1

    def count_outcome(self, outcome: str) -> None:
        """Count how a generation request was answered: a status code or a fault name."""
        with self._cond:
            self._counters.by_status[outcome] += 1

    def count_fault(self, kind: str) -> None:
        """Count one injected fault."""
        with self._cond:
            self._counters.faults_injected[kind] += 1

    def count_job(self, status: str) -> None:
        """Count a v2 job reaching ``status``."""
        with self._cond:
            self._counters.jobs[status] += 1

    # Caps ------------------------------------------------------------------

    def try_enter(self) -> bool:
        """Take an in-flight slot without waiting; False when the cap is reached."""
        with self._cond:
            if self._max_concurrency is not None and self._in_flight >= self._max_concurrency:
                return False
            self._enter_locked()
            return True

    def enter_when_free(self, stop: threading.Event) -> bool:
        """Wait for an in-flight slot (v2 jobs queue); False if the emulator is stopping."""
        with self._cond:
            while self._max_concurrency is not None and self._in_flight >= self._max_concurrency:
                if stop.is_set():
                    return False
                self._cond.wait(timeout=0.5)  # re-check ``stop`` now and then
            self._enter_locked()
            return True

    def _enter_locked(self) -> None:
        self._in_flight += 1
        self._counters.max_in_flight = max(self._counters.max_in_flight, self._in_flight)

    def leave(self) -> None:
        """Give back an in-flight slot."""
        with self._cond:
            self._in_flight -= 1
            self._cond.notify()

    def try_accept_rate(self, now: float | None = None) -> float | None:
        """Admit one request under the per-minute cap.

        Returns:
            ``None`` when admitted, otherwise the epoch time when the oldest
            request of the window leaves it (when a retry can succeed).
        """
        if self._rpm is None:
            return None
        now = time.time() if now is None else now
        with self._cond:
            while self._accepted_at and self._accepted_at[0] <= now - 60.0:
                self._accepted_at.popleft()
            if len(self._accepted_at) >= self._rpm:
                return self._accepted_at[0] + 60.0
            self._accepted_at.append(now)
            return None

    # Snapshot and reset --------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-ready data (money as numbers with cent precision)."""
        with self._cond:
            c = self._counters
            return {
                "requests": c.requests,
                "billed": c.billed,
                "spent_usd": float(c.spent_usd),
                "credits_remaining": float(self._credits),
                "credits_reserved": float(self._reserved),
                "in_flight": self._in_flight,
                "max_in_flight": c.max_in_flight,
                "by_status": dict(sorted(c.by_status.items())),
                "by_slug": {
                    slug: {
                        "requests": s.requests,
                        "billed": s.billed,
                        "spent_usd": float(s.spent_usd),
                    }
                    for slug, s in sorted(c.by_slug.items())
                },
                "faults_injected": dict(sorted(c.faults_injected.items())),
                "jobs": dict(sorted(c.jobs.items())),
            }

    def reset(self, credits_usd: Decimal | None = None) -> None:
        """Clear every counter and restore the balance (to ``credits_usd`` if given).

        Generations still in flight keep their slot and finish normally.
        """
        with self._cond:
            if credits_usd is not None:
                self._initial_credits = credits_usd
            self._credits = self._initial_credits
            self._counters = _Counters(max_in_flight=self._in_flight)
            self._accepted_at.clear()
