"""A cap on Segmind calls per minute across every worker: a Prefect rate limit.

Segmind limits requests per minute per account (about 5 on the free tier, 50
on Pro). ``python -m deployments.setup --rate-per-minute R`` creates the
global concurrency limit ``segmind-rate`` with one slot that decays at R/60
per second, and names it in the credentials block's ``rate_limit``. Before each
attempt a call takes a token (Prefect's ``rate_limit`` mode: a slot that is
never released, only decays), so all workers together start at most about R
calls a minute. It is a separate limit on purpose: decay on the in-flight limit
``segmind`` would free the slots of calls still running and break that bound.

The server's ``Retry-After`` for a decaying limit is exact (the time until the
next token), so it is honoured; one thread per process asks at a time.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import httpx

from tasks.shared_slots import (
    TRANSIENT_STATUS,
    MissingConcurrencyLimitError,
    backoff_s,
    prefect_api_http,
    retry_after_s,
    send_once,
)

__all__ = ["RateLimitError", "RateTokens"]


class RateLimitError(MissingConcurrencyLimitError):
    """The named rate limit is missing or is not a rate limit (its slots do not decay)."""


class RateTokens:
    """Tokens of one decaying global concurrency limit, for this process.

    Args:
        name: The rate limit's name on the Prefect server.
        max_transient_errors: Retried errors in a row before giving up.
        http: An HTTP client whose base URL is the Prefect API (default: Prefect's own).
    """

    def __init__(
        self, name: str, *, max_transient_errors: int = 12, http: httpx.Client | None = None
    ) -> None:
        self.name = name
        self.max_transient_errors = max_transient_errors
        self._http = http
        self._lock = threading.Lock()
        self._rng = random.Random()  # noqa: S311 - jitter, not crypto
        self.taken = 0
        self.refused = 0

    def take(self) -> None:
        """Wait for a token; one thread of this process asks the server at a time.

        Raises:
            RateLimitError: the limit does not exist, or its slots do not decay.
        """
        errors = 0
        with self._lock:
            while True:
                try:
                    response = send_once(
                        self._http or prefect_api_http(),
                        "POST",
                        "/v2/concurrency_limits/increment",
                        {"names": [self.name], "slots": 1, "mode": "rate_limit"},
                    )
                except httpx.TransportError:
                    response = None
                wait = None if response is None else self._answer(response)
                if response is not None and wait is None:
                    self.taken += 1
                    return
                if response is not None and response.status_code == 423 and wait is not None:
                    errors = 0  # the server answered: transient errors count in a row
                else:
                    errors += 1
                    if errors > self.max_transient_errors:
                        raise RateLimitError(
                            f"no token from the rate limit {self.name!r}: {errors} errors in "
                            "a row from the Prefect server"
                        )
                    wait = max(wait or 0.0, backoff_s(errors, self._rng))
                time.sleep(wait)  # the server's own wait for a token, or a backoff

    def _answer(self, response: httpx.Response) -> float | None:
        """``None`` when a token was granted, else how long to wait before asking again."""
        if response.status_code == 200:
            granted: list[dict[str, Any]] = response.json()
            if not granted:
                raise RateLimitError(
                    f"the Prefect server has no rate limit {self.name!r}: create it with "
                    "`python -m deployments.setup --rate-per-minute N`, or empty the "
                    "credentials block's rate_limit"
                )
            return None
        if response.status_code == 423:
            self.refused += 1
            return retry_after_s(response, default=1.0)
        if response.status_code == 422:
            raise RateLimitError(
                f"the Prefect limit {self.name!r} is not a rate limit (its slots do not "
                "decay): create it with `python -m deployments.setup --rate-per-minute N`"
            )
        if response.status_code in TRANSIENT_STATUS:
            return retry_after_s(response, default=0.0)  # the caller adds its backoff
        response.raise_for_status()
        return None  # unreachable: raise_for_status raised for any other status
