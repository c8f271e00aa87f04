"""Helpers shared by the tests: generated images and a loopback file server."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
from PIL import Image

T = TypeVar("T")

API_KEY = "test-key-not-secret"

# Output sizes as Segmind documents them: an oracle kept apart from the product's table.
DOCUMENTED_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1392, 752),
    "9:16": (752, 1392),
    "4:3": (1184, 880),
    "3:4": (880, 1184),
    "3:2": (1248, 832),
    "2:3": (832, 1248),
    "21:9": (1568, 672),
    "9:21": (672, 1568),
    "4:5": (944, 1104),
    "5:4": (1104, 944),
    "2:1": (1456, 720),
    "1:2": (720, 1456),
}

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


def image_bytes(
    color: tuple[int, int, int] = (200, 40, 40),
    size: tuple[int, int] = (640, 480),
    fmt: str = "PNG",
) -> bytes:
    """A solid-colour image encoded in ``fmt``."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...`` for ``data``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_uri(
    color: tuple[int, int, int] = (200, 40, 40),
    size: tuple[int, int] = (640, 480),
    fmt: str = "PNG",
) -> str:
    """A data URI of a solid-colour image."""
    return data_uri(image_bytes(color, size, fmt), _MIME[fmt])


def decode(data: bytes) -> Image.Image:
    """Open image bytes with Pillow and load them fully (fails on a broken image)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@contextmanager
def file_server(files: Mapping[str, tuple[int, bytes, str]]) -> Iterator[str]:
    """Serve ``{path: (status, body, content type)}`` on 127.0.0.1; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body, content_type = files.get(self.path, (404, b"not found", "text/plain"))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if status in (301, 302, 307, 308):
                self.send_header("Location", body.decode())
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as base_url:
        yield base_url


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on a threaded server on 127.0.0.1; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds.

    A bounded wait on an observable state, not a fixed sleep: it returns as soon as
    the condition holds and raises ``AssertionError`` naming ``what`` otherwise.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(interval)


def emulator_client(
    base_url: str, *, key: str | None = API_KEY, timeout: float = 30.0, **kwargs: Any
) -> httpx.Client:
    """A plain-HTTP client for a loopback emulator, sending ``key`` as ``x-api-key``.

    ``verify=False`` only skips loading CA certificates (about 20 ms per client);
    nothing here speaks TLS.
    """
    headers: dict[str, str] = {}
    if key is not None:
        headers["x-api-key"] = key
    headers.update(kwargs.pop("headers", {}))
    return httpx.Client(
        base_url=base_url,
        headers=headers,
        timeout=timeout,
        verify=False,  # noqa: S501 - loopback HTTP only
        **kwargs,
    )


def emulator_stats(base_url: str) -> dict[str, Any]:
    """``GET /_emulator/stats`` of the emulator at ``base_url``."""
    with emulator_client(base_url, key=None, timeout=10.0) as client:
        response = client.get("/_emulator/stats")
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


def burst(
    base_url: str,
    count: int,
    send: Callable[[httpx.Client], httpx.Response],
    *,
    key: str | None = API_KEY,
) -> list[httpx.Response]:
    """Make ``count`` requests at the same moment, each from its own thread and client.

    Every client opens its connection first (``GET /_emulator/health``) and keeps
    it, so the requests reach the server together whatever its listen backlog.
    """
    headers = {} if key is None else {"x-api-key": key}
    clients = [
        httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=30.0,
            verify=False,  # noqa: S501 - loopback HTTP only
        )
        for _ in range(count)
    ]
    try:
        for client in clients:
            client.get("/_emulator/health").raise_for_status()
        barrier = threading.Barrier(count)

        def run(client: httpx.Client) -> httpx.Response:
            barrier.wait(timeout=10.0)
            return send(client)

        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(run, clients))
    finally:
        for client in clients:
            client.close()


@contextmanager
def without_flow_heartbeats() -> Iterator[None]:
    """Prefect settings without flow-run heartbeats.

    The heartbeat thread sleeps in one-second steps and every flow run joins it
    on exit, which adds about a second to each flow a test runs. Heartbeats
    only detect crashed runs on a long-lived server, which the tests do not use.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
