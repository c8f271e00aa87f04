"""Input images: fetched over HTTP from loopback, or inline as data URIs.

Every URL here is on 127.0.0.1, except the non-loopback ones the emulator must
refuse before it connects anywhere.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from PIL import ImageStat

from emulator import SegmindEmulator
from emulator.inputs import is_loopback_host
from tests.conftest import EmulatorFactory
from tests.support import (
    data_uri,
    decode,
    emulator_client,
    emulator_stats,
    file_server,
    image_bytes,
    image_uri,
)

RED = (220, 30, 30)
SMALL = (64, 48)
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
REMOTE = "10.255.255.1"  # never contacted: the emulator must refuse it first


FILES: dict[str, tuple[int, bytes, str]] = {
    **{f"/red.{fmt.lower()}": (200, image_bytes(RED, SMALL, fmt), MIME[fmt]) for fmt in MIME},
    "/blue.jpeg": (200, image_bytes((30, 30, 220), SMALL, "JPEG"), "image/jpeg"),
    "/boom.png": (500, b"boom", "text/plain"),
    "/text.png": (200, b"<html>hello</html>", "image/png"),
    "/red.bmp": (200, image_bytes(RED, SMALL, "BMP"), "image/bmp"),
    "/empty.png": (200, b"", "image/png"),
    "/start": (302, b"/middle", "text/plain"),
    "/loop": (302, b"/loop", "text/plain"),
    "/hop": (302, f"http://{REMOTE}/x.png".encode(), "text/plain"),
}


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    """One loopback file server for the module (``FILES``); yields its base URL."""
    served = dict(FILES)
    with file_server(served) as base:
        served["/middle"] = (307, f"{base}/red.png".encode(), "text/plain")
        yield base


def edit(emulator: SegmindEmulator, *refs: str) -> httpx.Response:
    with emulator_client(emulator.url) as client:
        return client.post("/v1/p-image-edit", json={"prompt": "make it pop", "image_urls": refs})


def error_of(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    message: str = response.json()["error"]
    return message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_supported_formats_are_fetched(emulator: SegmindEmulator, files: str, fmt: str) -> None:
    response = edit(emulator, f"{files}/red.{fmt.lower()}")

    assert response.status_code == 200, response.text
    output = decode(response.content)
    assert output.size == (1184, 880), "64x48 snaps to 4:3"
    red, green, blue = ImageStat.Stat(output.convert("RGB").crop((0, 0, 1184, 800))).mean
    assert red > 2 * green, "the output is built from the fetched red image"
    assert red > 2 * blue


def test_several_fetched_inputs(emulator: SegmindEmulator, files: str) -> None:
    response = edit(emulator, f"{files}/red.png", f"{files}/blue.jpeg")
    assert response.status_code == 200, response.text


def test_input_answering_404(emulator: SegmindEmulator, files: str) -> None:
    message = error_of(edit(emulator, image_uri(RED, SMALL), f"{files}/missing.png"))
    assert message.startswith("image_urls[1]:"), "names the failing field"
    assert "HTTP 404" in message
    assert "/missing.png" in message


def test_input_answering_500_names_the_field_for_flux(
    emulator: SegmindEmulator, files: str
) -> None:
    with emulator_client(emulator.url) as client:
        response = client.post(
            "/v1/flux-kontext-pro",
            json={"prompt": "make it pop", "input_image": f"{files}/boom.png"},
        )
    message = error_of(response)
    assert message.startswith("input_image:")
    assert "HTTP 500" in message


def test_unreachable_input(emulator: SegmindEmulator) -> None:
    port = free_port()
    message = error_of(edit(emulator, f"http://127.0.0.1:{port}/x.png"))
    assert message.startswith("image_urls[0]:")
    assert "could not fetch" in message
    assert "ConnectError" in message


def test_input_that_is_not_an_image(emulator: SegmindEmulator, files: str) -> None:
    message = error_of(edit(emulator, f"{files}/text.png"))
    assert "not a decodable image" in message


def test_bmp_input_is_not_supported(emulator: SegmindEmulator, files: str) -> None:
    message = error_of(edit(emulator, f"{files}/red.bmp"))
    assert "BMP images are not supported" in message
    assert "JPEG, PNG, GIF or WEBP" in message


def test_empty_input(emulator: SegmindEmulator, files: str) -> None:
    message = error_of(edit(emulator, f"{files}/empty.png"))
    assert "empty" in message


def test_fetched_input_above_the_size_limit(start_emulator: EmulatorFactory, files: str) -> None:
    size = len(FILES["/red.png"][1])
    emulator = start_emulator(max_input_bytes=size - 1)
    message = error_of(edit(emulator, f"{files}/red.png"))
    assert f"larger than {size - 1} bytes" in message


def test_fetched_input_at_the_size_limit(start_emulator: EmulatorFactory, files: str) -> None:
    emulator = start_emulator(max_input_bytes=len(FILES["/red.png"][1]))
    assert edit(emulator, f"{files}/red.png").status_code == 200


def test_inline_input_above_the_size_limit(start_emulator: EmulatorFactory) -> None:
    data = image_bytes(RED, SMALL)
    emulator = start_emulator(max_input_bytes=len(data) - 1)
    message = error_of(edit(emulator, data_uri(data)))
    assert "larger than" in message


def test_redirects_on_loopback_are_followed(emulator: SegmindEmulator, files: str) -> None:
    # /start -> 302 /middle (relative) -> 307 http://127.0.0.1:PORT/red.png (absolute)
    response = edit(emulator, f"{files}/start")
    assert response.status_code == 200, response.text


def test_redirect_loop_is_cut_off(emulator: SegmindEmulator, files: str) -> None:
    message = error_of(edit(emulator, f"{files}/loop"))
    assert "redirected too many times" in message


def test_redirect_off_loopback_is_refused_before_connecting(
    emulator: SegmindEmulator, files: str
) -> None:
    message = error_of(edit(emulator, f"{files}/hop"))
    # Refused by the host check, not by a failed (or timed-out) connection attempt.
    assert repr(REMOTE) in message
    assert "--allow-remote-inputs" in message
    assert "could not fetch" not in message


def test_remote_url_is_refused_without_allow_remote_inputs(emulator: SegmindEmulator) -> None:
    message = error_of(edit(emulator, f"http://{REMOTE}/x.png"))
    assert message.startswith("image_urls[0]:")
    assert "loopback" in message
    assert "--allow-remote-inputs" in message
    assert emulator_stats(emulator.url)["billed"] == 0


@pytest.mark.parametrize(
    "ref",
    [
        "data:image/png;base64,!!!not-base64!!!",
        "data:image/png;base64,aGVsbG8",  # missing padding
    ],
)
def test_malformed_base64_data_uri(emulator: SegmindEmulator, ref: str) -> None:
    message = error_of(edit(emulator, ref))
    assert message.startswith("image_urls[0]:")
    assert "not valid base64" in message


def test_data_uri_that_is_not_an_image(emulator: SegmindEmulator) -> None:
    message = error_of(edit(emulator, "data:image/png;base64,aGVsbG8="))
    assert "not a decodable image" in message


def test_inline_formats_are_accepted(emulator: SegmindEmulator) -> None:
    refs = [data_uri(image_bytes(RED, SMALL, fmt), MIME[fmt]) for fmt in MIME]
    assert edit(emulator, *refs).status_code == 200


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.5.5.5", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("10.0.0.1", False),
        ("8.8.8.8", False),
        ("192.168.1.1", False),
        ("0.0.0.0", False),  # noqa: S104 - "any address" is not loopback
        ("::", False),
        ("[2001:db8::1]", False),
        ("::ffff:127.0.0.1", True),
        ("[::ffff:127.0.0.2]", True),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_is_loopback_host(host: str, expected: bool) -> None:
    assert is_loopback_host(host) is expected
