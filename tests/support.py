"""Helpers shared by the tests: generated images and a loopback file server."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

API_KEY = "test-key-not-secret"

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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
