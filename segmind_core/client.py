"""An httpx client for Segmind's v1 endpoints, with bounded retries.

``generate`` validates the parameters against the contract, draws a seed when
none was given (so every result records the seed that made it), posts the
JSON body with the key in ``x-api-key``, checks that the answer decodes as an
image, and retries transient failures:

- 429: waits ``Retry-After`` (seconds or an HTTP date) when the service sends
  it, otherwise backs off like the other transient errors;
- 500, 502, 503, 504, timeouts, refused, reset or truncated connections and
  undecodable bodies: exponential backoff with jitter.

A complete 200 whose image decodes is paid for and never asked again: one in a
format that is not stored (WEBP, GIF...) is converted to the format the request
asked for, and `GeneratedImage.converted_from` says so.

With ``queue=True`` the client goes through Segmind's v2 queue instead:
``POST /v2/{slug}`` returns a request id (told to ``on_submitted`` at once, so
a caller can persist it), then the status is polled until the request is
``COMPLETED`` and the output image is downloaded. Polling and downloading are
free, so their transient failures are retried without paying again, and a
caller that crashed can pass the persisted `QueuedRequest` as ``resume`` to
pick the same request up. The queue keeps results for an hour; a result that
is gone raises `QueuedResultExpiredError`.

At most ``RetryPolicy.max_attempts`` HTTP attempts are made, and no new
attempt starts once ``RetryPolicy.max_elapsed_s`` would be passed. Every retry
is logged with its reason and attempt number. Permanent errors (400, 401,
403, 404, 406, 422) fail at once.

The key lives in a ``SecretStr`` and in the request header, nowhere else: not
in ``repr``, log lines or error messages.
"""

from __future__ import annotations

import email.utils
import io
import logging
import random
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from PIL import Image
from pydantic import SecretStr

from segmind_core._version import __version__
from segmind_core.contract import Endpoint, OutputFormat, SegmindRequest, get_endpoint
from segmind_core.errors import (
    AuthenticationError,
    BadImageError,
    InsufficientCreditsError,
    NetworkError,
    QueuedResultExpiredError,
    RateLimitedError,
    RequestRejectedError,
    SegmindError,
    ServerError,
    TransientError,
    UnexpectedResponseError,
)
from segmind_core.fetch import display_url
from segmind_core.tls import shared_tls_context

__all__ = [
    "DEFAULT_BASE_URL",
    "QUEUE_RESULT_TTL",
    "GeneratedImage",
    "QueuedRequest",
    "RetryPolicy",
    "SegmindClient",
    "checked_api_key",
    "resuming_paid_request",
    "service_root",
]

DEFAULT_BASE_URL = "https://api.segmind.com"
USER_AGENT = f"segmind-prefect-workflows/{__version__}"
_SEED_BOUND = 2**31
_DETAIL_CHARS = 300
_PILLOW_TO_FORMAT = {"PNG": OutputFormat.PNG, "JPEG": OutputFormat.JPG}

QUEUE_RESULT_TTL = timedelta(hours=1)
"""How long Segmind's queue keeps a completed request's result."""
_MAX_OUTPUT_BYTES = 100 * 1024 * 1024

LoggerLike = logging.Logger | logging.LoggerAdapter[Any]
T = TypeVar("T")


@dataclass(frozen=True)
class QueuedRequest:
    """A request submitted to Segmind's v2 queue: enough to poll it again later.

    Attributes:
        request_id: The queue's id for it.
        slug: The endpoint.
        submitted_at: When it was accepted (UTC).
    """

    request_id: str
    slug: str
    submitted_at: datetime

    def to_json(self) -> dict[str, str]:
        """As JSON values, for a pending-request record."""
        return {
            "request_id": self.request_id,
            "slug": self.slug,
            "submitted_at": self.submitted_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueuedRequest:
        """Read back what `to_json` wrote.

        Raises:
            ValueError: a record that is not one.
        """
        try:
            submitted = datetime.fromisoformat(str(data["submitted_at"]))
            return cls(str(data["request_id"]), str(data["slug"]), submitted)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a queued-request record: {exc}") from None


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries transient failures.

    Attributes:
        max_attempts: HTTP attempts per call, the first included.
        max_elapsed_s: No new attempt starts after this many seconds from the first.
        backoff_initial_s: Wait before the first retry (without ``Retry-After``).
        backoff_max_s: Longest backoff between two attempts.
        backoff_multiplier: Growth of the backoff per retry.
        jitter: Share of each backoff drawn at random (0 = none, 1 = full jitter).
    """

    max_attempts: int = 6
    max_elapsed_s: float = 600.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_elapsed_s <= 0 or self.backoff_initial_s < 0 or self.backoff_max_s < 0:
            raise ValueError("retry times must not be negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(
            self.backoff_max_s, self.backoff_initial_s * self.backoff_multiplier ** (retry - 1)
        )
        return ceiling * (1 - self.jitter * rng.random())


@dataclass(frozen=True)
class GeneratedImage:
    """One generated image and how it was made. Never holds the key.

    Attributes:
        slug: Endpoint that made it.
        image: The encoded image bytes.
        format: ``png`` or ``jpg``, as decoded from the bytes.
        width: Pixels.
        height: Pixels.
        seed: The seed actually used (drawn client-side when none was given).
        parameters: The JSON body that was sent (the key is a header, not in it).
        cost_usd: Price of this generation from the price table.
        credits_remaining: Balance the service reported after the call, if it did.
        latency_s: Wall time of the call, retries included.
        attempts: HTTP attempts made (queue mode: submissions, status polls and
            result fetches, a fetch counting once with its download).
        request_id: The service's request id, if it sent one.
        converted_from: The format the service answered in (``webp``...) when the
            image was converted to ``format`` because that one is not stored.
    """

    slug: str
    image: bytes = field(repr=False)
    format: OutputFormat
    width: int
    height: int
    seed: int
    parameters: dict[str, Any] = field(repr=False)
    cost_usd: Decimal
    credits_remaining: Decimal | None
    latency_s: float
    attempts: int
    request_id: str | None
    converted_from: str | None = None


def service_root(base_url: str) -> str:
    """The identity of the service a base URL names: ``scheme://host[:port][/path]``.

    Lower-case scheme and host, no default port, user info, query or trailing
    slash: what a sidecar records as the service that made an image (never a
    credential that a URL may carry).
    """
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = host if port is None or port == default else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def checked_api_key(api_key: str | SecretStr, label: str) -> SecretStr:
    """The key without surrounding whitespace, refused when a header cannot carry it.

    A key copied with a line break (a CRLF ``.env`` file, a mounted secret file)
    would make the HTTP library quote it in its error: refused here, before any
    call, with a message that does not contain it.

    Raises:
        AuthenticationError: no key, or one with spaces, controls or non-ASCII inside.
    """
    text = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    text = text.strip()
    if not text:
        raise AuthenticationError(f"no Segmind API key in {label}")
    if not all("!" <= character <= "~" for character in text):
        raise AuthenticationError(
            f"the Segmind API key in {label} contains a space, a control character or "
            "non-ASCII text, which an HTTP header cannot carry: check how it was copied"
        )
    return SecretStr(text)


resuming_paid_request: ContextVar[bool] = ContextVar("resuming_paid_request", default=False)
"""True while a client resumes a queued request that was paid for (nothing new is sent).

An attempt slot that stops new calls (the batch flows' call limit, after a 406)
still lets it through: its result is paid for and expires upstream in an hour.
"""


@contextmanager
def _resuming_paid_request(resuming: bool) -> Iterator[None]:
    token = resuming_paid_request.set(resuming)
    try:
        yield
    finally:
        resuming_paid_request.reset(token)


class SegmindClient:
    """Calls Segmind endpoints; one instance can be shared by threads.

    Args:
        api_key: The Segmind API key.
        base_url: Server root; ``/v1/{slug}`` is appended.
        connect_timeout_s: Longest wait for a connection.
        read_timeout_s: Longest wait for an answer (generations take 7-30 s).
        retry: Retry policy for transient failures.
        credentials_label: Where the key came from, for messages, e.g. "block 'segmind-prod'".
        logger: Where retries are logged (a Prefect run logger inside tasks).
        transport: An httpx transport, for the rare test that needs one.
        sleep: Called to wait between attempts.
        attempt_slot: Held around each HTTP attempt (not while waiting to retry): a
            Prefect global concurrency slot, so many workers stay under one limit.
            In queue mode it is held from the submission until the result is in.
        queue: Go through the v2 queue (submit, then poll) instead of ``/v1``.
        poll_interval_s: First wait between two status polls; it grows to 5 s.
        queue_timeout_s: Longest wait for a queued request to complete.

    Example:
        >>> with SegmindClient(api_key="...") as client:  # doctest: +SKIP
        ...     result = client.generate("p-image-edit", {"prompt": "...", "image_urls": [url]})
    """

    def __init__(
        self,
        api_key: str | SecretStr,
        *,
        base_url: str = DEFAULT_BASE_URL,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 180.0,
        retry: RetryPolicy | None = None,
        credentials_label: str = "the configured credentials",
        logger: LoggerLike | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        attempt_slot: Callable[[], AbstractContextManager[object]] | None = None,
        queue: bool = False,
        poll_interval_s: float = 1.0,
        queue_timeout_s: float = 1800.0,
    ) -> None:
        self._api_key = checked_api_key(api_key, credentials_label)
        self.base_url = base_url.rstrip("/")
        self.service = service_root(self.base_url)
        self.queue = queue
        self.poll_interval_s = poll_interval_s
        self.queue_timeout_s = queue_timeout_s
        self.retry = retry or RetryPolicy()
        self.credentials_label = credentials_label
        self.read_timeout_s = read_timeout_s
        self._logger: LoggerLike = logger or logging.getLogger(__name__)
        self._sleep = sleep
        self._attempt_slot = attempt_slot or nullcontext
        self._rng = random.Random()  # noqa: S311 - backoff jitter, not crypto
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"User-Agent": USER_AGENT, "Accept": "image/*, application/json"},
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            transport=transport,
            verify=shared_tls_context(),
        )

    def __repr__(self) -> str:
        return f"SegmindClient(base_url={self.base_url!r}, credentials={self.credentials_label!r})"

    def __enter__(self) -> SegmindClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def generate(
        self,
        slug: str,
        params: Mapping[str, Any] | SegmindRequest,
        *,
        on_submitted: Callable[[QueuedRequest], None] | None = None,
        resume: QueuedRequest | None = None,
    ) -> GeneratedImage:
        """Run one generation, retrying transient failures within the policy.

        Args:
            slug: Endpoint slug, e.g. ``"flux-kontext-pro"``.
            params: The request body as a mapping, or a validated request model.
            on_submitted: Queue mode: told of the request as soon as the queue
                accepted it, before polling (persist it there to resume after a crash).
            resume: A request submitted earlier (with these same parameters): poll
                it instead of submitting again. Implies queue mode.

        Returns:
            The image and how it was made.

        Raises:
            InvalidRequestError: the parameters break the contract (nothing was sent).
            PermanentError: the service refused the request; retrying cannot help.
            QueuedResultExpiredError: the queue no longer has the result.
            TransientError: the retry budget ran out.
        """
        endpoint = get_endpoint(slug)
        request = params if isinstance(params, SegmindRequest) else endpoint.validate(params)
        if request.requested_seed() is None:
            request = request.model_copy(update={"seed": secrets.randbelow(_SEED_BOUND)})
        payload = request.to_payload()
        started = time.monotonic()
        if self.queue or resume is not None:
            with _resuming_paid_request(resume is not None), self._attempt_slot():
                submit_attempts = 0
                if resume is None:
                    queued, submit_attempts = self._retrying(
                        slug, started, lambda: self._submit(endpoint, payload)
                    )
                    if on_submitted is not None:
                        on_submitted(queued)
                else:
                    queued = resume
                    self._logger.info(
                        "Segmind %s: resuming queued request %s (submitted %s); not paying again",
                        slug,
                        queued.request_id,
                        queued.submitted_at.isoformat(timespec="seconds"),
                    )
                result, poll_attempts = self._wait_for(endpoint, request, queued)
            attempts = submit_attempts + poll_attempts
        else:
            result, attempts = self._retrying(
                slug, started, lambda: self._attempt(endpoint, request, payload)
            )
        return GeneratedImage(
            **result,
            slug=slug,
            parameters=payload,
            cost_usd=endpoint.price_usd,
            latency_s=time.monotonic() - started,
            attempts=attempts,
        )

    def _retrying(self, slug: str, started: float, step: Callable[[], T]) -> tuple[T, int]:
        """``step()``, retried after transient errors within the policy; and the attempts made."""
        deadline = started + self.retry.max_elapsed_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return step(), attempt
            except SegmindError as error:
                error.slug, error.attempts = slug, attempt
                if not isinstance(error, TransientError):
                    raise
                delay = self._delay_before_retry(error, attempt, deadline)
                if delay is None:
                    raise
                self._logger.warning(
                    "Segmind %s: %s; retry %d of %d in %.1f s",
                    slug,
                    error.message,
                    attempt,
                    self.retry.max_attempts - 1,
                    delay,
                )
                self._sleep(delay)

    # The v2 queue --------------------------------------------------------

    def _key_header(self) -> dict[str, str]:
        return {"x-api-key": self._api_key_text()}

    def _api_key_text(self) -> str:
        return self._api_key.get_secret_value()

    def _transport_error(self, exc: httpx.HTTPError, what: str) -> NetworkError:
        if isinstance(exc, httpx.TimeoutException):
            return NetworkError(
                f"no complete answer from Segmind {what} within the timeout "
                f"({type(exc).__name__}; read timeout {self.read_timeout_s:g} s)"
            )
        detail = str(exc).replace(self._api_key.get_secret_value(), "[API key]")
        return NetworkError(
            f"the connection to Segmind failed {what} ({type(exc).__name__}: {detail})"
        )

    def _submit(self, endpoint: Endpoint, payload: dict[str, Any]) -> QueuedRequest:
        """``POST /v2/{slug}``: one attempt to queue the request (paid when it completes)."""
        try:
            response = self._http.post(
                f"/v2/{endpoint.slug}", json=payload, headers=self._key_header()
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, "while submitting to the queue") from None
        if response.status_code != 200:
            raise self._error_for(endpoint, response)
        body = _json_object(response)
        request_id = body.get("request_id") if body else None
        if not isinstance(request_id, str) or not request_id:
            raise NetworkError(
                "the queue's answer to a submission has no request id "
                f"({len(response.content)} bytes)",
                status=200,
            )
        return QueuedRequest(request_id, endpoint.slug, datetime.now(UTC))

    def _wait_for(
        self, endpoint: Endpoint, request: SegmindRequest, queued: QueuedRequest
    ) -> tuple[dict[str, Any], int]:
        """Poll ``queued`` until it completed; returns the decoded result and the polls made."""
        deadline = time.monotonic() + self.queue_timeout_s
        interval = self.poll_interval_s
        polls = 0
        while True:
            polls += 1
            body, polled = self._retrying(
                endpoint.slug,
                time.monotonic(),
                lambda: self._queue_get(endpoint, queued, "/status"),
            )
            polls += polled - 1
            status = body.get("status")
            if status == "COMPLETED":
                result, fetched = self._retrying(
                    endpoint.slug,
                    time.monotonic(),
                    lambda: self._queued_result(endpoint, request, queued),
                )
                return result, polls + fetched
            if status not in ("QUEUED", "PROCESSING"):
                raise UnexpectedResponseError(
                    f"Segmind's queue reports request {queued.request_id} as {status!r}",
                    slug=endpoint.slug,
                )
            if time.monotonic() + interval > deadline:
                raise NetworkError(
                    f"queued request {queued.request_id} is still {status} after "
                    f"{self.queue_timeout_s:g} s; it is kept, and a retry polls it again",
                    slug=endpoint.slug,
                )
            self._sleep(interval)
            interval = min(5.0, interval * 1.5)

    def _queue_get(self, endpoint: Endpoint, queued: QueuedRequest, suffix: str) -> dict[str, Any]:
        """``GET /v2/requests/{id}{suffix}``: the request's state, or the error it maps to."""
        try:
            response = self._http.get(
                f"/v2/requests/{queued.request_id}{suffix}", headers=self._key_header()
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, "while polling the queue") from None
        body = _json_object(response)
        if response.status_code == 404:
            raise self._gone(endpoint, queued)
        if response.status_code == 422 and body is not None and body.get("status") == "FAILED":
            error = body.get("error")
            said = _redacted(None if error is None else str(error), self._api_key_text())
            raise RequestRejectedError(
                f"Segmind's queue reports request {queued.request_id} FAILED"
                + (f": {said}" if said else "")
                + ". Fix the request; a failed request is not charged.",
                status=422,
                detail=said,
                slug=endpoint.slug,
            )
        if response.status_code != 200:
            raise self._error_for(endpoint, response)
        if body is None:
            raise NetworkError(
                f"the queue's answer about request {queued.request_id} is not a JSON object",
                status=200,
            )
        return body

    @staticmethod
    def _expired(queued: QueuedRequest) -> bool:
        return datetime.now(UTC) - queued.submitted_at >= QUEUE_RESULT_TTL

    def _gone(self, endpoint: Endpoint, queued: QueuedRequest) -> SegmindError:
        age = datetime.now(UTC) - queued.submitted_at
        submitted = queued.submitted_at.isoformat(timespec="seconds")
        if age >= QUEUE_RESULT_TTL:
            error = QueuedResultExpiredError(
                f"the result of queued request {queued.request_id} (submitted {submitted}, "
                f"{age.total_seconds() / 3600:.1f} h ago) has expired: Segmind keeps results "
                "for 1 hour. It was paid for if it completed; running it again submits a "
                "new request and pays again.",
                status=404,
                slug=endpoint.slug,
            )
            error.request_id = queued.request_id
            return error
        return RequestRejectedError(
            f"404 from Segmind: the queue does not know request {queued.request_id} "
            f"(submitted {submitted}); was it made with another key or base URL?",
            status=404,
            slug=endpoint.slug,
        )

    def _queued_result(
        self, endpoint: Endpoint, request: SegmindRequest, queued: QueuedRequest
    ) -> dict[str, Any]:
        """The completed request's output, downloaded and decoded (free to repeat)."""
        body = self._queue_get(endpoint, queued, "")
        output = body.get("output")
        if isinstance(output, list) and output:
            output = output[0]
        if not isinstance(output, str) or urlsplit(output).scheme not in ("http", "https"):
            raise UnexpectedResponseError(
                f"the completed request {queued.request_id} has no output URL",
                slug=endpoint.slug,
            )
        # The key goes to the API only, never to wherever the output is hosted.
        try:
            with self._http.stream("GET", output, follow_redirects=True) as response:
                if response.status_code in (404, 410) or (
                    response.status_code == 403 and self._expired(queued)
                ):  # an expired presigned link answers 403
                    raise self._gone(endpoint, queued)
                if response.status_code != 200:
                    raise ServerError(
                        f"{response.status_code} when downloading the output of queued "
                        f"request {queued.request_id}",
                        status=response.status_code,
                    )
                content = _read_bounded(response, _MAX_OUTPUT_BYTES)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, "while downloading a queued output") from None
        found = body.get("metrics")
        metrics: dict[str, Any] = found if isinstance(found, dict) else {}
        decoded = self._decode_image(endpoint, request, content, "the queued output")
        seed = metrics.get("seed")
        requested = request.requested_seed()
        decoded["seed"] = (
            int(seed) if isinstance(seed, int) else (requested if requested is not None else -1)
        )
        credits = metrics.get("remaining_credits")
        decoded["credits_remaining"] = _decimal(None if credits is None else str(credits))
        decoded["request_id"] = queued.request_id
        return decoded

    def _delay_before_retry(
        self, error: TransientError, attempt: int, deadline: float
    ) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up."""
        if attempt >= self.retry.max_attempts:
            return None
        retry_after = error.retry_after_s if isinstance(error, RateLimitedError) else None
        delay = retry_after if retry_after is not None else self.retry.backoff_s(attempt, self._rng)
        if time.monotonic() + delay > deadline:
            error.message += (
                f"; not retried: waiting {delay:.1f} s would pass the "
                f"{self.retry.max_elapsed_s:g} s retry budget"
            )
            return None
        return delay

    def _attempt(
        self, endpoint: Endpoint, request: SegmindRequest, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """One HTTP attempt; returns the fields of a `GeneratedImage` or raises."""
        slug = endpoint.slug
        headers = {"x-api-key": self._api_key.get_secret_value()}
        try:
            with self._attempt_slot():
                response = self._http.post(f"/v1/{slug}", json=payload, headers=headers)
                if response.status_code != 200:
                    # Raised inside the slot: a holder that stops on a 406 (the batch
                    # flows' call limit) knows before the next call takes the slot.
                    raise self._error_for(endpoint, response)
        except httpx.TimeoutException as exc:
            raise NetworkError(
                f"no complete answer from Segmind within the timeout "
                f"({type(exc).__name__}; read timeout {self.read_timeout_s:g} s)"
            ) from None
        except httpx.TransportError as exc:
            # Never the transport's text as is: h11 quotes bad header values (the key).
            detail = str(exc).replace(self._api_key.get_secret_value(), "[API key]")
            raise NetworkError(
                f"the connection to Segmind failed ({type(exc).__name__}: {detail})"
            ) from None
        return self._decode(endpoint, request, response)

    def _decode(
        self, endpoint: Endpoint, request: SegmindRequest, response: httpx.Response
    ) -> dict[str, Any]:
        what = f"the 200 answer ({response.headers.get('content-type')})"
        decoded = self._decode_image(endpoint, request, response.content, what)
        seed_header = response.headers.get("x-seed-value")
        requested = request.requested_seed()
        seed = int(seed_header) if seed_header and seed_header.lstrip("-").isdigit() else requested
        decoded["seed"] = seed if seed is not None else -1
        decoded["credits_remaining"] = _decimal(response.headers.get("x-remaining-credits"))
        decoded["request_id"] = response.headers.get("x-request-id")
        return decoded

    def _decode_image(
        self, endpoint: Endpoint, request: SegmindRequest, content: bytes, what: str
    ) -> dict[str, Any]:
        """The image fields of a result; `BadImageError` (transient) when it does not decode."""
        slug = endpoint.slug
        try:
            with Image.open(io.BytesIO(content)) as image:
                image.load()
                pillow_format, width, height = image.format, image.width, image.height
        except (OSError, SyntaxError, ValueError):
            raise BadImageError(
                f"{what} from Segmind is not a decodable image ({len(content)} bytes)",
                status=200,
            ) from None
        fmt = _PILLOW_TO_FORMAT.get(pillow_format or "")
        if fmt is None:
            # Complete and decodable, so paid for: converted, never asked again.
            wanted = request.image_format()
            self._logger.warning(
                "Segmind %s answered with a %s image; stored converted to %s (not asked again)",
                slug,
                pillow_format,
                wanted.value,
            )
            return {
                "image": _converted(content, wanted, slug),
                "format": wanted,
                "width": width,
                "height": height,
                "converted_from": str(pillow_format or "unknown").lower(),
            }
        if fmt is not request.image_format():
            # Paid for already: keep it, record what it really is, and say so.
            self._logger.warning(
                "Segmind %s returned %s although %s was asked for",
                slug,
                fmt.value,
                request.image_format().value,
            )
        return {"image": content, "format": fmt, "width": width, "height": height}

    def _error_for(self, endpoint: Endpoint, response: httpx.Response) -> SegmindError:
        """The typed error for a non-200 answer, with a message that says what to do."""
        status, slug = response.status_code, endpoint.slug
        detail = _redacted(_detail(response), self._api_key_text())
        said = f": {detail}" if detail else ""
        common: dict[str, Any] = {"status": status, "detail": detail, "slug": slug}
        if status == 401:
            return AuthenticationError(
                f"401 from Segmind: the key in {self.credentials_label} was rejected{said}. "
                "Check or replace the key.",
                **common,
            )
        if status == 403:
            return AuthenticationError(
                f"403 from Segmind: the key in {self.credentials_label} may not use {slug}{said}.",
                **common,
            )
        if status == 406:
            credits = _decimal(response.headers.get("x-remaining-credits"))
            left = f"{credits:.2f} USD left" if credits is not None else "balance unknown"
            error = InsufficientCreditsError(
                f"406 from Segmind: out of credits, {left}; {slug} costs "
                f"{endpoint.price_usd:.2f} USD per image{said}. Top up the account.",
                **common,
            )
            error.credits_remaining = credits
            return error
        if status in (400, 404, 422):
            return RequestRejectedError(
                f"{status} from Segmind: {slug} rejected the request{said}. "
                "Fix the parameters; nothing was charged.",
                **common,
            )
        if status == 429:
            rate_limited = RateLimitedError(f"429 from Segmind: rate limited{said}", **common)
            rate_limited.retry_after_s = parse_retry_after(response.headers.get("retry-after"))
            return rate_limited
        if status in (500, 502, 503, 504):
            return ServerError(f"{status} from Segmind{said}", **common)
        return UnexpectedResponseError(f"{status} from Segmind: unexpected answer{said}", **common)


def _converted(content: bytes, target: OutputFormat, slug: str) -> bytes:
    """``content`` (a decodable image) encoded as ``target``; the first frame of an animation.

    Raises:
        UnexpectedResponseError: Pillow cannot convert it (permanent: never asked again).
    """
    try:
        with Image.open(io.BytesIO(content)) as image:
            alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            mode = "RGBA" if alpha and target is OutputFormat.PNG else "RGB"
            out = io.BytesIO()
            image.convert(mode).save(out, format="PNG" if target is OutputFormat.PNG else "JPEG")
    except (OSError, ValueError) as exc:
        raise UnexpectedResponseError(
            f"Segmind's 200 answer decodes but cannot be converted to {target.value} "
            f"({type(exc).__name__}: {exc}); it was paid for, so it is not asked again",
            status=200,
            slug=slug,
        ) from None
    return out.getvalue()


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns ``None`` for a missing or unreadable header; never a negative number.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise UnexpectedResponseError(f"a queued output is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _detail(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return None


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")


def _redacted(detail: str | None, api_key: str) -> str | None:
    """The service's words for messages: no key, no URL query or user info; 300 chars.

    An error body may echo the key (a proxy's error page, a misconfigured gateway) or
    an input's presigned URL, whose signature is a credential for that object.
    """
    if detail is None:
        return None
    if api_key:
        detail = detail.replace(api_key, "[API key]")
    detail = _URL.sub(lambda match: display_url(match.group(0)), detail)
    # Cut after redacting: a key cut in two would no longer be found.
    return detail[:_DETAIL_CHARS]


def _decimal(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None
