"""Errors raised by the Segmind client, each with a message that says what to do.

The tree::

    SegmindError                     status, detail (the service's {"error"}), slug
    ├── PermanentError               retrying cannot help: fix something first
    │   ├── AuthenticationError      401, 403: the key was missing or rejected
    │   ├── RequestRejectedError     400, 404, 422: the request itself is wrong
    │   ├── InsufficientCreditsError 406: the balance cannot cover the call
    │   ├── QueuedResultExpiredError a v2 queue result that is gone (kept 1 hour)
    │   └── UnexpectedResponseError  any other status the contract does not list
    └── TransientError               worth retrying after a pause
        ├── RateLimitedError         429 (``retry_after_s`` when the service said)
        ├── ServerError              500, 502, 503, 504
        ├── NetworkError             timeouts, refused or dropped connections,
        │                            truncated bodies
        ├── BadImageError            a 200 whose body is not a decodable image
        └── OutputNotStoredError     a paid image storage refused after retries:
                                     kept on local disk, stored by the next attempt

The client retries `TransientError` itself; a `TransientError` that escapes it
means the retry budget ran out (``attempts`` says how many were made).

The API key never appears in any message: errors are built from the status,
the service's ``error`` text and the credentials' *label* (e.g. "block
'segmind-prod'"), never from headers.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

__all__ = [
    "AuthenticationError",
    "BadImageError",
    "CallNotMadeError",
    "InsufficientCreditsError",
    "NetworkError",
    "OutputNotStoredError",
    "PermanentError",
    "QueuedResultExpiredError",
    "RateLimitedError",
    "RequestRejectedError",
    "SegmindError",
    "ServerError",
    "TransientError",
    "UnexpectedResponseError",
]


class SegmindError(Exception):
    """Base of every error from a Segmind call.

    Attributes:
        message: What happened and what to do about it.
        status: HTTP status, when the service answered.
        detail: The service's ``{"error": ...}`` text, when it sent one.
        slug: The endpoint that was called.
        attempts: How many HTTP attempts were made before giving up.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str | None = None,
        slug: str | None = None,
        attempts: int = 1,
    ) -> None:
        self.message = message
        self.status = status
        self.detail = detail
        self.slug = slug
        self.attempts = attempts
        super().__init__(message)

    def __str__(self) -> str:
        prefix = f"{self.slug}: " if self.slug and self.slug not in self.message else ""
        suffix = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{prefix}{self.message}{suffix}"

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only fields survive pickling (Prefect persists task failures).
        return (
            _rebuild,
            (type(self), self.message, self.status, self.detail, self.slug, self.attempts),
            self.__dict__,
        )


def _rebuild(
    cls: type[SegmindError],
    message: str,
    status: int | None,
    detail: str | None,
    slug: str | None,
    attempts: int,
) -> SegmindError:
    error = cls.__new__(cls)
    SegmindError.__init__(
        error, message, status=status, detail=detail, slug=slug, attempts=attempts
    )
    return error


class PermanentError(SegmindError):
    """Retrying the same request cannot succeed."""


class TransientError(SegmindError):
    """The same request may succeed later."""


class AuthenticationError(PermanentError):
    """401 or 403: the key is missing, wrong, expired or not allowed this model."""


class RequestRejectedError(PermanentError):
    """400, 404 or 422: the request is invalid or names an unknown model."""


class InsufficientCreditsError(PermanentError):
    """406: the account's credits cannot cover the call.

    Attributes:
        credits_remaining: The balance the service reported, if it did.
    """

    credits_remaining: Decimal | None = None


class CallNotMadeError(PermanentError):
    """The call was never sent: its batch had stopped (credits ran out) while it waited.

    Attributes:
        reason: Why the calls stopped, e.g. ``Segmind credits ran out (406 on an earlier call)``.
    """

    def __init__(self, message: str, *, reason: str = "", **fields: Any) -> None:
        super().__init__(message, **fields)
        self.reason = reason or message


class UnexpectedResponseError(PermanentError):
    """A status the contract does not describe."""


class RateLimitedError(TransientError):
    """429: too many requests.

    Attributes:
        retry_after_s: Seconds the service asked to wait, if it sent ``Retry-After``.
    """

    retry_after_s: float | None = None


class ServerError(TransientError):
    """500, 502, 503 or 504."""


class NetworkError(TransientError):
    """No complete answer arrived: a timeout, a refused or reset connection, a cut body."""


class BadImageError(TransientError):
    """A 200 whose body is not a decodable image (cut short, or not an image at all)."""


class OutputNotStoredError(TransientError):
    """A paid image that the output storage refused for the whole retry budget.

    Transient so that a task retry tries again: the image is kept on local disk
    (``spill_path``), and the next attempt on this machine stores it from there
    without calling the service. ``spill_path`` is ``None`` when even that failed
    (the message then says the image is lost).

    Attributes:
        spill_path: The local file holding the image, if it could be written.
    """

    spill_path: str | None = None


class QueuedResultExpiredError(PermanentError):
    """A v2 queue request whose result Segmind no longer keeps (results live one hour).

    Attributes:
        request_id: The queue's id of the request.
    """

    request_id: str | None = None
