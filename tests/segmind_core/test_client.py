"""The Segmind client over real HTTP: successes, every status, retries, timing and secrecy.

Most tests drive the emulator on loopback. Answers the emulator never gives (403, 404,
422, 503, an unlisted status, a 200 that is not an image, the wrong format) come from a
small scripted server on 127.0.0.1, so they too cross a real socket.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from emulator import SegmindEmulator
from emulator.config import FaultKind
from emulator.faults import FaultInjector, FaultSettings
from segmind_core import __version__
from segmind_core.client import (
    USER_AGENT,
    GeneratedImage,
    RetryPolicy,
    SegmindClient,
    parse_retry_after,
    service_root,
)
from segmind_core.contract import (
    ENDPOINTS,
    InvalidRequestError,
    OutputFormat,
    UnknownEndpointError,
    validate_request,
)
from segmind_core.errors import (
    AuthenticationError,
    BadImageError,
    InsufficientCreditsError,
    NetworkError,
    PermanentError,
    RateLimitedError,
    RequestRejectedError,
    SegmindError,
    ServerError,
    TransientError,
    UnexpectedResponseError,
)
from tests.conftest import EmulatorFactory
from tests.support import API_KEY, decode, image_bytes, image_uri, serving

SECRET = "SG_0123456789abcdef_SECRET"  # noqa: S105 - a recognisable fake key
LABEL = "block 'segmind-prod'"
FAST = RetryPolicy(backoff_initial_s=0.01, backoff_max_s=0.05)
INPUT_A = image_uri((220, 30, 30), (64, 48))
INPUT_B = image_uri((30, 30, 220), (48, 64), "JPEG")
P_BODY: dict[str, Any] = {"prompt": "make it pop", "image_urls": [INPUT_A], "aspect_ratio": "1:1"}
NO_SERVER = "http://127.0.0.1:9"


def make_client(
    base_url: str,
    *,
    key: str = API_KEY,
    retry: RetryPolicy = FAST,
    logger: logging.Logger | None = None,
    sleeps: list[float] | None = None,
    sleep: Callable[[float], None] | None = None,
    **kwargs: Any,
) -> SegmindClient:
    """A client with fast backoff; ``sleeps`` records every wait (and still waits it)."""

    def record_and_sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)
        time.sleep(seconds)

    return SegmindClient(
        key,
        base_url=base_url,
        retry=retry,
        credentials_label=LABEL,
        logger=logger or logging.getLogger("tests.segmind_core.client"),
        sleep=sleep or record_and_sleep,
        **kwargs,
    )


def seed_for(
    outcomes: Sequence[str | None],
    faults: dict[str, float],
    *,
    retry_after_s: int | None = None,
) -> int:
    """A fault seed whose first requests meet ``outcomes`` (a fault kind, or None for none).

    The draws are replayed with the emulator's own injector, in the order the server
    makes them (a 429 also draws whether to send ``Retry-After``). Each test also checks
    the emulator's ``by_status``, so a wrong replay shows up as a failure, not a pass.
    """
    rates = {FaultKind(kind): rate for kind, rate in faults.items()}
    for seed in range(100_000):
        injector = FaultInjector(
            FaultSettings(rates=rates, seed=seed, retry_after_s=retry_after_s, retry_after_rate=1.0)
        )
        drawn: list[str | None] = []
        for _ in outcomes:
            kind = injector.draw()
            if kind is FaultKind.RATE_LIMITED:
                injector.retry_after()
            drawn.append(None if kind is None else kind.value)
        if drawn == list(outcomes):
            return seed
    raise AssertionError(f"no fault seed gives {outcomes}")


# A scripted server on loopback ------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    """One request the scripted server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def png_reply(size: tuple[int, int] = (32, 24), **headers: str) -> Reply:
    return Reply(200, image_bytes(size=size), "image/png", dict(headers))


@contextmanager
def scripted_server(replies: Sequence[Reply]) -> Iterator[tuple[str, list[Seen]]]:
    """Answer each POST with the next reply (the last one repeats); yields (URL, requests)."""
    seen: list[Seen] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with lock:
                seen.append(
                    Seen(
                        "POST",
                        self.path,
                        {name.lower(): value for name, value in self.headers.items()},
                        body,
                    )
                )
                reply = replies[min(len(seen), len(replies)) - 1]
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


# Success on every endpoint ------------------------------------------------------

SUCCESS_CASES: list[tuple[str, dict[str, Any], OutputFormat]] = [
    (
        "flux-kontext-pro",
        {"prompt": "a red hat", "input_image": INPUT_A, "aspect_ratio": "16:9", "seed": 7}
        | {"output_format": "jpg"},
        OutputFormat.JPG,
    ),
    (
        "flux-kontext-max",
        {"prompt": "a red hat", "aspect_ratio": "2:3", "output_format": "png", "seed": 11},
        OutputFormat.PNG,
    ),
    (
        "multi-image-kontext-pro",
        {"prompt": "merge", "input_image_1": INPUT_A, "input_image_2": INPUT_B}
        | {"aspect_ratio": "4:3", "output_format": "jpg", "seed": 123},
        OutputFormat.JPG,
    ),
    (
        "multi-image-kontext-max",
        {"prompt": "merge", "input_image_1": INPUT_A, "input_image_2": INPUT_B}
        | {"aspect_ratio": "21:9", "output_format": "png", "seed": 5},
        OutputFormat.PNG,
    ),
    (
        "p-image-edit",
        {"prompt": "make it pop", "image_urls": [INPUT_A, INPUT_B], "aspect_ratio": "3:2"}
        | {"seed": 999_999},
        OutputFormat.PNG,
    ),
]


@pytest.mark.parametrize(("slug", "body", "fmt"), SUCCESS_CASES, ids=[c[0] for c in SUCCESS_CASES])
def test_success_fills_every_field(
    emulator: SegmindEmulator, slug: str, body: dict[str, Any], fmt: OutputFormat
) -> None:
    endpoint = ENDPOINTS[slug]
    with make_client(emulator.url) as client:
        result = client.generate(slug, body)

    assert isinstance(result, GeneratedImage)
    assert result.slug == slug
    assert result.format is fmt
    decoded = decode(result.image)
    assert decoded.format == fmt.pillow_format
    assert (result.width, result.height) == decoded.size
    expected = endpoint.sizes[body["aspect_ratio"]]
    assert (result.width, result.height) == (expected.width, expected.height)
    assert result.seed == body["seed"]
    assert result.cost_usd == endpoint.price_usd
    assert isinstance(result.credits_remaining, Decimal)
    assert result.credits_remaining == Decimal("100") - endpoint.price_usd
    assert result.attempts == 1
    assert result.latency_s >= 0
    assert result.request_id is not None
    uuid.UUID(result.request_id)
    assert result.parameters["prompt"] == body["prompt"]
    assert result.parameters["seed"] == body["seed"]
    assert API_KEY not in json.dumps(result.parameters)
    assert not {"x-api-key", "api_key", "key"} & set(result.parameters)

    stats = emulator.stats()
    assert stats["requests"] == 1
    assert stats["billed"] == 1
    assert Decimal(str(stats["spent_usd"])) == endpoint.price_usd
    assert Decimal(str(stats["credits_remaining"])) == result.credits_remaining


def test_validated_request_model_is_accepted(emulator: SegmindEmulator) -> None:
    request = validate_request("p-image-edit", P_BODY | {"seed": 31})
    with make_client(emulator.url) as client:
        result = client.generate("p-image-edit", request)
    assert result.seed == 31
    assert result.parameters == request.to_payload()
    assert emulator.stats()["billed"] == 1


def test_missing_seed_is_drawn_client_side_and_used_by_the_service(
    emulator: SegmindEmulator,
) -> None:
    body = {"prompt": "a blue door", "input_image": INPUT_A, "aspect_ratio": "1:1"}
    with make_client(emulator.url) as client:
        first = client.generate("flux-kontext-pro", body)
        second = client.generate("flux-kontext-pro", body)
        replay = client.generate("flux-kontext-pro", body | {"seed": first.seed})

    assert "seed" not in body
    assert first.parameters["seed"] == first.seed
    assert 0 <= first.seed < 2**31
    assert second.parameters["seed"] == second.seed
    assert first.seed != second.seed  # drawn per call (a clash has odds of 2**-31)
    # The emulator renders from the seed it used: the same seed gives the same bytes,
    # so the seed it reported (x-seed-value) is the one the client drew and sent.
    assert replay.seed == first.seed
    assert replay.image == first.image
    assert second.image != first.image


def test_seed_minus_one_is_replaced_by_a_drawn_seed(emulator: SegmindEmulator) -> None:
    with make_client(emulator.url) as client:
        result = client.generate("p-image-edit", P_BODY | {"seed": -1})
    assert result.seed != -1
    assert result.parameters["seed"] == result.seed
    assert 0 <= result.seed < 2**31


def test_documented_default_seed_is_kept(emulator: SegmindEmulator) -> None:
    body = {"prompt": "merge", "input_image_1": INPUT_A, "input_image_2": INPUT_B}
    with make_client(emulator.url) as client:
        result = client.generate("multi-image-kontext-max", body)
    assert result.seed == 42
    assert result.parameters["seed"] == 42
    assert result.format is OutputFormat.JPG


def test_one_client_serves_many_threads(emulator: SegmindEmulator) -> None:
    with make_client(emulator.url) as client, ThreadPoolExecutor(max_workers=6) as pool:
        results = list(
            pool.map(lambda s: client.generate("p-image-edit", P_BODY | {"seed": s}), range(6))
        )
    assert sorted(r.seed for r in results) == list(range(6))
    assert all(r.attempts == 1 for r in results)
    stats = emulator.stats()
    assert stats["requests"] == 6
    assert stats["billed"] == 6


# Nothing is sent for requests the contract refuses ------------------------------


def test_invalid_parameters_fail_before_any_request(emulator: SegmindEmulator) -> None:
    with make_client(emulator.url) as client, pytest.raises(InvalidRequestError) as caught:
        client.generate("p-image-edit", {"prompt": "x", "image_urls": [], "aspect_ration": "1:1"})
    assert caught.value.slug == "p-image-edit"
    assert "image_urls" in str(caught.value)
    assert emulator.stats()["requests"] == 0


def test_unknown_slug_fails_before_any_request(emulator: SegmindEmulator) -> None:
    with make_client(emulator.url) as client, pytest.raises(UnknownEndpointError):
        client.generate("flux-dev", {"prompt": "x"})
    assert emulator.stats()["requests"] == 0


def test_empty_key_is_refused_at_construction() -> None:
    with pytest.raises(AuthenticationError, match=r"no Segmind API key in block 'segmind-prod'"):
        SegmindClient("", base_url=NO_SERVER, credentials_label=LABEL)


# Permanent errors: one attempt, no retry -----------------------------------------


def test_400_from_the_service_is_rejected_at_once(
    emulator: SegmindEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sleeps: list[float] = []
    body = {"prompt": "x", "image_urls": ["http://127.0.0.1:1/x.png"]}
    with (
        make_client(emulator.url, sleeps=sleeps) as client,
        pytest.raises(RequestRejectedError) as caught,
    ):
        client.generate("p-image-edit", body)
    error = caught.value
    assert error.status == 400
    assert error.attempts == 1
    assert error.slug == "p-image-edit"
    assert error.detail is not None
    assert "image_urls[0]" in error.detail
    assert "nothing was charged" in str(error)
    assert "(after" not in str(error)
    assert sleeps == []
    assert "retry" not in caplog.text
    stats = emulator.stats()
    assert stats["requests"] == 1
    assert stats["billed"] == 0


def test_401_names_the_credentials_label_not_the_key(
    emulator: SegmindEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        make_client(emulator.url, key=SECRET) as client,
        pytest.raises(AuthenticationError) as caught,
    ):
        client.generate("p-image-edit", P_BODY)
    error = caught.value
    assert error.status == 401
    assert error.attempts == 1
    assert "block 'segmind-prod'" in str(error)
    assert "Check or replace the key" in str(error)
    assert SECRET not in str(error)
    assert "retry" not in caplog.text
    assert emulator.stats()["requests"] == 1


def test_406_reports_the_balance(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(credits_usd=Decimal("0.03"))
    with (
        make_client(emulator.url) as client,
        pytest.raises(InsufficientCreditsError) as caught,
    ):
        client.generate("flux-kontext-pro", {"prompt": "x", "seed": 1})
    error = caught.value
    assert error.status == 406
    assert error.attempts == 1
    assert error.credits_remaining == Decimal("0.03")
    assert "0.03 USD left" in str(error)
    assert "costs 0.05 USD per image" in str(error)
    assert "Top up" in str(error)
    stats = emulator.stats()
    assert stats["requests"] == 1
    assert stats["billed"] == 0


@pytest.mark.parametrize(
    ("status", "error_type", "text"),
    [
        (403, AuthenticationError, "block 'segmind-prod' may not use p-image-edit"),
        (404, RequestRejectedError, "p-image-edit rejected the request"),
        (422, RequestRejectedError, "p-image-edit rejected the request"),
        (418, UnexpectedResponseError, "unexpected answer"),
    ],
)
def test_other_permanent_statuses_fail_after_one_attempt(
    status: int, error_type: type[SegmindError], text: str
) -> None:
    sleeps: list[float] = []
    replies = [Reply(status, error_body("nope from the service")), png_reply()]
    with (
        scripted_server(replies) as (url, seen),
        make_client(url, sleeps=sleeps) as client,
        pytest.raises(error_type) as caught,
    ):
        client.generate("p-image-edit", P_BODY)
    error = caught.value
    assert isinstance(error, PermanentError)
    assert error.status == status
    assert error.detail == "nope from the service"
    assert error.attempts == 1
    assert text in str(error)
    assert len(seen) == 1
    assert sleeps == []


def test_error_detail_falls_back_to_the_body_text() -> None:
    replies = [Reply(404, b"<html>404 page</html>", "text/html")]
    with (
        scripted_server(replies) as (url, _seen),
        make_client(url) as client,
        pytest.raises(RequestRejectedError) as caught,
    ):
        client.generate("p-image-edit", P_BODY)
    assert caught.value.detail == "<html>404 page</html>"


# Transient errors: retried --------------------------------------------------------


@pytest.mark.parametrize("code", ["500", "502", "504"])
def test_server_errors_are_retried_then_succeed(
    start_emulator: EmulatorFactory, caplog: pytest.LogCaptureFixture, code: str
) -> None:
    caplog.set_level(logging.WARNING, logger="tests.segmind_core.client")
    faults = {code: 0.5}
    emulator = start_emulator(faults=faults, fault_seed=seed_for([code, code, None], faults))
    sleeps: list[float] = []
    with make_client(emulator.url, sleeps=sleeps) as client:
        result = client.generate("p-image-edit", P_BODY)
    assert result.attempts == 3
    assert result.latency_s >= sum(sleeps)
    assert len(sleeps) == 2
    assert all(0 < s <= 0.05 for s in sleeps)
    stats = emulator.stats()
    assert stats["requests"] == 3
    assert stats["by_status"] == {code: 2, "200": 1}
    assert stats["billed"] == 1
    assert f"{code} from Segmind" in caplog.text
    assert "retry 1 of 5" in caplog.text
    assert "retry 2 of 5" in caplog.text


def test_mixed_server_errors_in_one_call(start_emulator: EmulatorFactory) -> None:
    faults = {"500": 0.2, "502": 0.2, "504": 0.2}
    seed = seed_for(["500", "502", "504", None], faults)
    emulator = start_emulator(faults=faults, fault_seed=seed)
    with make_client(emulator.url, retry=RetryPolicy(4, 60, 0.01, 0.05)) as client:
        result = client.generate("p-image-edit", P_BODY)
    assert result.attempts == 4
    assert emulator.stats()["by_status"] == {"500": 1, "502": 1, "504": 1, "200": 1}


def test_503_is_retried() -> None:
    replies = [Reply(503, error_body("busy")), png_reply(**{"x-seed-value": "42"})]
    with scripted_server(replies) as (url, seen), make_client(url) as client:
        result = client.generate("p-image-edit", P_BODY)
    assert result.attempts == 2
    assert len(seen) == 2
    assert seen[0].body == seen[1].body  # the same request again


def test_429_waits_for_retry_after(
    start_emulator: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tests.segmind_core.client")
    faults = {"429": 0.5}
    seed = seed_for(["429", None], faults, retry_after_s=1)
    emulator = start_emulator(faults=faults, fault_seed=seed, retry_after_s=1)
    sleeps: list[float] = []
    started = time.monotonic()
    with make_client(emulator.url, sleeps=sleeps) as client:
        result = client.generate("p-image-edit", P_BODY)
    elapsed = time.monotonic() - started
    assert result.attempts == 2
    assert sleeps == [1.0]  # Retry-After, not the 0.01-0.05 s backoff
    assert elapsed >= 1.0
    assert result.latency_s >= 1.0
    assert emulator.stats()["by_status"] == {"429": 1, "200": 1}
    assert "429 from Segmind: rate limited" in caplog.text
    assert "retry 1 of 5 in 1.0 s" in caplog.text


def test_429_without_retry_after_backs_off(start_emulator: EmulatorFactory) -> None:
    faults = {"429": 0.5}
    emulator = start_emulator(faults=faults, fault_seed=seed_for(["429", None], faults))
    sleeps: list[float] = []
    started = time.monotonic()
    with make_client(emulator.url, sleeps=sleeps) as client:
        result = client.generate("p-image-edit", P_BODY)
    assert result.attempts == 2
    assert len(sleeps) == 1
    assert 0.005 <= sleeps[0] <= 0.05
    assert time.monotonic() - started < 1.0
    assert emulator.stats()["by_status"] == {"429": 1, "200": 1}


def test_429_with_an_http_date_retry_after() -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    replies = [Reply(429, error_body("slow down"), headers={"Retry-After": soon}), png_reply()]
    sleeps: list[float] = []
    # Record the wait without waiting it: 30 s is too long for a test.
    with (
        scripted_server(replies) as (url, seen),
        make_client(url, retry=RetryPolicy(max_elapsed_s=300), sleep=sleeps.append) as client,
    ):
        result = client.generate("p-image-edit", P_BODY)
    assert result.attempts == 2
    assert len(seen) == 2
    assert len(sleeps) == 1
    assert 25 <= sleeps[0] <= 30


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_dropped_connections_are_retried(start_emulator: EmulatorFactory, kind: str) -> None:
    faults = {kind: 0.5}
    emulator = start_emulator(faults=faults, fault_seed=seed_for([kind, None], faults))
    with make_client(emulator.url) as client:
        result = client.generate("p-image-edit", P_BODY)
    assert result.attempts == 2
    decode(result.image)
    stats = emulator.stats()
    assert stats["by_status"] == {kind: 1, "200": 1}
    assert stats["billed"] == 1


def test_read_timeout_is_retried(
    start_emulator: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tests.segmind_core.client")
    faults = {"timeout": 0.5}
    emulator = start_emulator(
        faults=faults, fault_seed=seed_for(["timeout", None], faults), timeout_hold_s=2
    )
    started = time.monotonic()
    with make_client(emulator.url, read_timeout_s=0.5) as client:
        result = client.generate("p-image-edit", P_BODY)
    elapsed = time.monotonic() - started
    assert result.attempts == 2
    assert 0.5 <= elapsed < 2.0  # gave up on the held answer after the read timeout
    assert emulator.stats()["by_status"] == {"timeout": 1, "200": 1}
    assert "no complete answer from Segmind within the timeout" in caplog.text


def test_refused_connection_is_a_network_error() -> None:
    with (
        make_client("http://127.0.0.1:1", retry=RetryPolicy(2, 60, 0.01, 0.02)) as client,
        pytest.raises(NetworkError) as caught,
    ):
        client.generate("p-image-edit", P_BODY)
    assert caught.value.attempts == 2
    assert "the connection to Segmind failed" in str(caught.value)


def test_a_200_that_is_not_an_image_is_bad_image() -> None:
    replies = [Reply(200, b"this is not an image", "text/plain")]
    policy = RetryPolicy(3, 60, 0.01, 0.02)
    with (
        scripted_server(replies) as (url, seen),
        make_client(url, retry=policy) as client,
        pytest.raises(BadImageError) as caught,
    ):
        client.generate("p-image-edit", P_BODY)
    error = caught.value
    assert isinstance(error, TransientError)
    assert error.status == 200
    assert error.attempts == 3
    assert "not a decodable image" in str(error)
    assert "text/plain" in str(error)
    assert len(seen) == 3


def encoded(pil_format: str, size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    color: int | tuple[int, ...] = 3 if mode == "P" else (200, 40, 90, 128)[: len(mode)]
    Image.new(mode, size, color).save(out, format=pil_format)
    return out.getvalue()


@pytest.mark.parametrize(
    ("pil_format", "mode", "slug", "body", "stored_as"),
    [
        ("WEBP", "RGB", "p-image-edit", P_BODY, "PNG"),
        ("WEBP", "RGBA", "p-image-edit", P_BODY, "PNG"),
        ("WEBP", "RGBA", "flux-kontext-pro", {"prompt": "x", "output_format": "jpg"}, "JPEG"),
        ("GIF", "P", "p-image-edit", P_BODY, "PNG"),
    ],
    ids=["webp-png", "webp-alpha-png", "webp-alpha-jpg", "gif-png"],
)
def test_a_complete_200_in_a_format_not_stored_is_converted_never_asked_again(
    caplog: pytest.LogCaptureFixture,
    pil_format: str,
    mode: str,
    slug: str,
    body: dict[str, Any],
    stored_as: str,
) -> None:
    """BUG: a decodable WEBP 200 (paid for) was retried as transient: 6 paid calls."""
    caplog.set_level(logging.WARNING, logger="tests.segmind_core.client")
    replies = [Reply(200, encoded(pil_format, (40, 30), mode), f"image/{pil_format.lower()}")]
    with scripted_server(replies) as (url, seen), make_client(url) as client:
        result = client.generate(slug, body)

    assert len(seen) == 1, "paid once, asked once"
    assert result.attempts == 1
    assert decode(result.image).format == stored_as
    expected = OutputFormat.PNG if stored_as == "PNG" else OutputFormat.JPG
    assert result.format is expected
    assert (result.width, result.height) == decode(result.image).size == (40, 30)
    assert result.converted_from == pil_format.lower()
    assert f"answered with a {pil_format} image" in caplog.text


def test_a_png_or_jpeg_answer_is_not_converted() -> None:
    with scripted_server([png_reply((20, 10))]) as (url, _), make_client(url) as client:
        result = client.generate("p-image-edit", P_BODY)
    assert result.converted_from is None


@pytest.mark.parametrize(
    ("base_url", "root"),
    [
        ("https://api.segmind.com", "https://api.segmind.com"),
        ("https://API.Segmind.com:443/", "https://api.segmind.com"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://user:SECRET@proxy.local:80/segmind/?token=SECRET", "http://proxy.local/segmind"),
    ],
)
def test_service_root_names_the_service_without_credentials(base_url: str, root: str) -> None:
    assert service_root(base_url) == root
    with SegmindClient(SECRET, base_url=base_url) as client:
        assert client.service == root


def test_a_bad_image_then_a_good_one_succeeds() -> None:
    replies = [Reply(200, b"\x89PNG\r\n\x1a\ncut", "image/png"), png_reply((40, 30))]
    with scripted_server(replies) as (url, seen), make_client(url) as client:
        result = client.generate("p-image-edit", P_BODY)
    assert result.attempts == 2
    assert (result.width, result.height) == (40, 30)
    assert len(seen) == 2


# Giving up -----------------------------------------------------------------------


def test_attempts_run_out(
    start_emulator: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tests.segmind_core.client")
    emulator = start_emulator(faults={"500": 1.0})
    policy = RetryPolicy(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05)
    with (
        make_client(emulator.url, retry=policy) as client,
        pytest.raises(ServerError) as caught,
    ):
        client.generate("p-image-edit", P_BODY)
    error = caught.value
    assert error.attempts == 3
    assert error.status == 500
    assert error.slug == "p-image-edit"
    assert str(error).endswith("(after 3 attempts)")
    assert str(error).startswith("p-image-edit: 500 from Segmind")
    stats = emulator.stats()
    assert stats["requests"] == 3
    assert stats["billed"] == 0
    assert "retry 1 of 2" in caplog.text
    assert "retry 2 of 2" in caplog.text
    assert "retry 3" not in caplog.text
    # Prefect persists failures: the escaped error survives pickling whole.
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert str(copy) == str(error)
    assert copy.attempts == 3


def test_network_attempts_run_out(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"reset": 1.0})
    with (
        make_client(emulator.url, retry=RetryPolicy(2, 60, 0.01, 0.02)) as client,
        pytest.raises(NetworkError) as caught,
    ):
        client.generate("p-image-edit", P_BODY)
    assert caught.value.attempts == 2
    assert emulator.stats()["requests"] == 2


def test_retry_after_beyond_the_budget_gives_up_at_once(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(faults={"429": 1.0}, retry_after_s=5)
    sleeps: list[float] = []
    policy = RetryPolicy(max_elapsed_s=2, backoff_initial_s=0.01, backoff_max_s=0.05)
    started = time.monotonic()
    with (
        make_client(emulator.url, retry=policy, sleeps=sleeps) as client,
        pytest.raises(RateLimitedError) as caught,
    ):
        client.generate("p-image-edit", P_BODY)
    error = caught.value
    assert time.monotonic() - started < 2.0
    assert sleeps == []
    assert error.retry_after_s == 5
    assert error.attempts == 1
    assert "waiting 5.0 s would pass the 2 s retry budget" in str(error)
    assert emulator.stats()["requests"] == 1


def test_budget_stops_retries_before_attempts_run_out(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"500": 1.0})
    policy = RetryPolicy(max_attempts=50, max_elapsed_s=0.3, backoff_initial_s=0.1, jitter=0)
    with (
        make_client(emulator.url, retry=policy) as client,
        pytest.raises(ServerError) as caught,
    ):
        client.generate("p-image-edit", P_BODY)
    # Waits of 0.1 and 0.2 s fit in 0.3 s; the next (0.4 s) would not.
    assert 2 <= caught.value.attempts <= 3
    assert "retry budget" in str(caught.value)
    assert emulator.stats()["requests"] == caught.value.attempts


# Logging, headers and formats ------------------------------------------------------


def test_retries_log_reason_and_attempt(
    start_emulator: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("tests.segmind_core.client.retries")
    caplog.set_level(logging.WARNING, logger=logger.name)
    faults = {"500": 0.3, "502": 0.3}
    emulator = start_emulator(faults=faults, fault_seed=seed_for(["500", "502", None], faults))
    with make_client(emulator.url, logger=logger) as client:
        client.generate("p-image-edit", P_BODY)
    records = [r for r in caplog.records if r.name == logger.name]
    assert len(records) == 2
    assert all(r.levelno == logging.WARNING for r in records)
    first, second = (r.getMessage() for r in records)
    assert first.startswith("Segmind p-image-edit: 500 from Segmind")
    assert "retry 1 of 5" in first
    assert second.startswith("Segmind p-image-edit: 502 from Segmind")
    assert "retry 2 of 5" in second


def test_headers_name_the_project_and_carry_the_key() -> None:
    with scripted_server([png_reply()]) as (url, seen), make_client(url, key=SECRET) as client:
        result = client.generate("p-image-edit", P_BODY | {"seed": 3})
    assert len(seen) == 1
    request = seen[0]
    assert request.path == "/v1/p-image-edit"
    assert request.headers["user-agent"] == f"segmind-prefect-workflows/{__version__}"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["x-api-key"] == SECRET
    assert "authorization" not in request.headers
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == result.parameters
    assert SECRET.encode() not in request.body


def test_missing_service_headers_fall_back(caplog: pytest.LogCaptureFixture) -> None:
    with scripted_server([png_reply((50, 20))]) as (url, _seen), make_client(url) as client:
        result = client.generate("flux-kontext-pro", {"prompt": "x"})
    assert result.seed == result.parameters["seed"]
    assert result.credits_remaining is None
    assert result.request_id is None
    assert (result.width, result.height) == (50, 20)


def test_other_format_than_asked_is_kept_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tests.segmind_core.client")
    jpeg = Reply(200, image_bytes(size=(30, 20), fmt="JPEG"), "image/jpeg")
    with scripted_server([jpeg]) as (url, seen), make_client(url) as client:
        result = client.generate("p-image-edit", P_BODY)
    assert result.format is OutputFormat.JPG
    assert decode(result.image).format == "JPEG"
    assert len(seen) == 1
    assert "Segmind p-image-edit returned jpg although png was asked for" in caplog.text


def test_generated_image_repr_leaves_out_the_bytes(emulator: SegmindEmulator) -> None:
    with make_client(emulator.url) as client:
        result = client.generate("p-image-edit", P_BODY)
    text = repr(result)
    assert text.startswith("GeneratedImage(slug='p-image-edit'")
    assert "image=" not in text
    assert "parameters=" not in text
    assert "PNG\\r\\n" not in text
    assert "base64" not in text
    assert len(text) < 500


# The key never leaks ---------------------------------------------------------------


def _texts_of(error: BaseException) -> list[str]:
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    texts.append(repr(vars(error)))
    link = error.__cause__ or error.__context__
    while link is not None:
        texts += [str(link), repr(link)]
        link = link.__cause__ or link.__context__
    return texts


def _capture(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("the call did not fail")


def test_the_key_never_appears(
    start_emulator: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    emulator = start_emulator(api_key=SECRET, faults={}, timeout_hold_s=2)
    policy = RetryPolicy(2, 60, 0.01, 0.02)
    texts: list[str] = []
    errors: list[BaseException] = []
    with make_client(emulator.url, key=SECRET, retry=policy, read_timeout_s=0.5) as client:
        texts.append(repr(client))
        texts.append(str(client))
        result = client.generate("p-image-edit", P_BODY)
        texts += [repr(result), json.dumps(result.parameters), str(vars(client).keys())]

        for faults in ({"500": 1.0}, {"reset": 1.0}, {"truncate": 1.0}, {"timeout": 1.0}):
            emulator.set_faults(faults=faults)
            errors.append(_capture(lambda: client.generate("p-image-edit", P_BODY)))
        emulator.set_faults(faults={})
        emulator.reset(credits_usd=Decimal("0"))
        errors.append(_capture(lambda: client.generate("p-image-edit", P_BODY)))

    other = start_emulator()  # its key is API_KEY: SECRET is now the wrong key
    with make_client(other.url, key=SECRET) as client:
        errors.append(_capture(lambda: client.generate("p-image-edit", P_BODY)))

    assert [type(e) for e in errors] == [
        ServerError,
        NetworkError,
        NetworkError,
        NetworkError,
        InsufficientCreditsError,
        AuthenticationError,
    ]
    assert "retry 1 of 1" in caplog.text  # the failures were logged
    for error in errors:
        texts += _texts_of(error)
        assert SECRET.encode() not in pickle.dumps(error)
    texts.append(caplog.text)
    texts += [str(r.args) for r in caplog.records]
    leaks = [text for text in texts if SECRET in text]
    assert leaks == []


# Retry-After parsing and the retry policy -----------------------------------------


NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0", 0.0),
        ("-5", 0.0),
        ("1.5", 1.5),
        ("  7 ", 7.0),
        ("Sun, 01 Jun 2025 12:00:05 GMT", 5.0),
        ("Sun, 01 Jun 2025 11:59:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_date_without_now_is_relative_to_the_clock() -> None:
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    seconds = parse_retry_after(future)
    assert seconds is not None
    assert 55 <= seconds <= 60


def test_backoff_grows_and_is_capped() -> None:
    import random

    policy = RetryPolicy(backoff_initial_s=1, backoff_max_s=5, backoff_multiplier=2, jitter=0)
    rng = random.Random(0)
    assert [policy.backoff_s(n, rng) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    jittered = RetryPolicy(backoff_initial_s=4, backoff_max_s=4, jitter=0.5)
    waits = [jittered.backoff_s(1, rng) for _ in range(200)]
    assert all(2.0 <= w <= 4.0 for w in waits)
    assert len(set(waits)) > 100


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_elapsed_s": 0},
        {"backoff_initial_s": -1},
        {"backoff_max_s": -0.1},
        {"jitter": 1.5},
        {"jitter": -0.1},
    ],
)
def test_retry_policy_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["sk-SECRET\r\n-9", "sk SECRET", "sk-SECRET-\u00e9", "\n"])
def test_a_key_a_header_cannot_carry_is_refused_without_being_quoted(bad: str) -> None:
    from segmind_core.client import checked_api_key

    with pytest.raises(AuthenticationError) as refused:
        SegmindClient(api_key=bad, base_url="http://127.0.0.1:9")
    assert bad.strip() not in str(refused.value) or not bad.strip()
    with pytest.raises(AuthenticationError):
        checked_api_key(bad, "the test")


def test_surrounding_whitespace_of_a_key_is_dropped() -> None:
    from segmind_core.client import checked_api_key

    # A CRLF .env file leaves "\r" at the end: dropped, like the other surrounding blanks.
    assert checked_api_key("  sk-abc\r\n", "the test").get_secret_value() == "sk-abc"


# Error bodies that echo secrets -------------------------------------------------

ECHOED_KEY = "SG_live_echo_CANARY_0123456789abcdef"
PRESIGNED = (
    "https://inputs.s3.amazonaws.com/photo.png"
    "?X-Amz-Credential=AKIAECHO%2F20261121&X-Amz-Signature=ECHOSIGNATURE123"
)


class _EchoingGateway(BaseHTTPRequestHandler):
    """A gateway that answers with the request's key and an input's URL in its body."""

    def do_GET(self) -> None:
        # The queue: the request FAILED, and the service's error text names the key.
        key = self.headers.get("x-api-key", "")
        error = f"could not fetch {PRESIGNED} with key {key}"
        self._answer(422, json.dumps({"status": "FAILED", "error": error}), "application/json")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        key = self.headers.get("x-api-key", "")
        if self.path.startswith("/v2/"):
            self._answer(
                200, json.dumps({"request_id": "r-1", "status": "QUEUED"}), "application/json"
            )
            return
        if self.path == "/v1/multi-image-kontext-pro":
            # The key straddles the 300th character of the message's detail.
            self._answer(400, "x" * 280 + key + " and more", "text/plain")
            return
        status = {"/v1/p-image-edit": 401, "/v1/flux-kontext-pro": 502}.get(self.path, 404)
        if status == 401:
            body = json.dumps({"error": f"Invalid API key '{key}'; could not fetch {PRESIGNED}"})
            content_type = "application/json"
        else:
            body = f"<html>Bad gateway. x-api-key: {key} url={PRESIGNED}</html>"
            content_type = "text/html"
        self._answer(status, body, content_type)

    def _answer(self, status: int, body: str, content_type: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("slug", "queue", "status"),
    [
        ("p-image-edit", False, 401),
        ("flux-kontext-pro", False, 502),
        ("p-image-edit", True, 422),  # the queue's FAILED text
    ],
)
def test_an_error_that_echoes_the_key_or_a_presigned_url_is_redacted(
    slug: str, queue: bool, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    params: dict[str, Any] = {"prompt": "x", "seed": 1}
    if slug == "p-image-edit":
        params["image_urls"] = ["https://example.invalid/a.png"]
    with serving(_EchoingGateway) as url:
        client = SegmindClient(
            ECHOED_KEY,
            base_url=url,
            queue=queue,
            poll_interval_s=0.01,
            retry=RetryPolicy(max_attempts=2, backoff_initial_s=0.01),
        )
        with client, pytest.raises(SegmindError) as caught:
            client.generate(slug, params)

    error = caught.value
    seen = "\n".join([str(error), repr(error), str(error.detail), caplog.text])
    assert error.status == status
    assert "[API key]" in str(error)
    assert "https://inputs.s3.amazonaws.com/photo.png?..." in str(error)
    for secret in (ECHOED_KEY, "ECHOSIGNATURE123", "AKIAECHO"):
        assert secret not in seen


def test_a_key_at_the_cut_of_a_long_error_text_is_redacted_whole() -> None:
    with serving(_EchoingGateway) as url:
        client = SegmindClient(ECHOED_KEY, base_url=url, retry=RetryPolicy(max_attempts=1))
        with client, pytest.raises(SegmindError) as caught:
            client.generate(
                "multi-image-kontext-pro",
                {
                    "prompt": "x",
                    "seed": 1,
                    "input_image_1": "https://e.invalid/1.png",
                    "input_image_2": "https://e.invalid/2.png",
                },
            )

    message = str(caught.value)
    assert caught.value.status == 400
    assert "x" * 280 + "[API key]" in message
    assert ECHOED_KEY[:12] not in message
