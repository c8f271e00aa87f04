"""Fetching and decoding input images: http(s) URLs and data URIs.

The emulator fetches loopback URLs only unless it was started with
``--allow-remote-inputs``: a test tool must not become a way to reach other
hosts. The check runs on every hop of a redirect. (A host name is resolved
once for the check and again by the connection; for a test tool on a
developer's machine that gap is acceptable.)
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

__all__ = ["InputError", "InputFetcher", "LoadedImage", "is_loopback_host"]

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP"})
_MAX_PIXELS = 64_000_000
_MAX_REDIRECTS = 5


class InputError(Exception):
    """An input image that cannot be used; answered with 400 (v1) or FAILED (v2)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class LoadedImage:
    """A decoded input image and the bytes it came from."""

    image: Image.Image
    data: bytes
    format: str


def is_loopback_host(host: str) -> bool:
    """True when every address ``host`` stands for is a loopback address.

    IP literals are judged as they are; names are resolved. A name that does
    not resolve is not loopback.
    """
    bare = host.strip("[]")
    try:
        return _is_loopback_ip(bare)
    except ValueError:
        pass
    if bare.lower() == "localhost" or bare.lower().endswith(".localhost"):
        return True
    try:
        infos = socket.getaddrinfo(bare, None)
    except OSError:
        return False
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addresses) and all(_is_loopback_ip(addr) for addr in addresses)


def _is_loopback_ip(text: str) -> bool:
    """Loopback test for an IP literal, IPv4-mapped IPv6 (``::ffff:127.0.0.1``) included."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class InputFetcher:
    """Turns the image references of a request into decoded images."""

    def __init__(self, *, allow_remote: bool, max_bytes: int, timeout_s: float = 15.0) -> None:
        self._allow_remote = allow_remote
        self._max_bytes = max_bytes
        self._timeout = httpx.Timeout(timeout_s, connect=5.0)

    def load(self, field: str, ref: str) -> LoadedImage:
        """Fetch or decode ``ref`` and check that it is a JPEG, PNG, GIF or WEBP image.

        Raises:
            InputError: naming ``field`` and saying what is wrong.
        """
        data = (
            self._decode_data_uri(field, ref)
            if ref.startswith("data:")
            else self._fetch(field, ref)
        )
        return self._decode_image(field, data)

    def _decode_data_uri(self, field: str, ref: str) -> bytes:
        _, _, payload = ref.partition(",")
        if len(payload) * 3 // 4 > self._max_bytes:
            raise InputError(field, f"inline image is larger than {self._max_bytes} bytes")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(field, "the data URI is not valid base64") from None

    def _check_host(self, field: str, url: str) -> None:
        host = urlsplit(url).hostname or ""
        if not self._allow_remote and not is_loopback_host(host):
            raise InputError(
                field,
                f"the emulator fetches loopback URLs only and {host!r} is not one "
                "(start it with --allow-remote-inputs to allow other hosts)",
            )

    def _fetch(self, field: str, url: str) -> bytes:
        current = url
        with httpx.Client(timeout=self._timeout, follow_redirects=False) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                self._check_host(field, current)
                try:
                    with client.stream("GET", current) as response:
                        if response.is_redirect and "location" in response.headers:
                            current = str(response.url.join(response.headers["location"]))
                            continue
                        if response.status_code != 200:
                            raise InputError(
                                field,
                                f"fetching {_short(url)} answered HTTP {response.status_code}",
                            )
                        return self._read_capped(field, response)
                except httpx.HTTPError as exc:
                    raise InputError(
                        field, f"could not fetch {_short(url)}: {type(exc).__name__}: {exc}"
                    ) from None
        raise InputError(field, f"fetching {_short(url)} redirected too many times")

    def _read_capped(self, field: str, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise InputError(field, f"image is larger than {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _decode_image(self, field: str, data: bytes) -> LoadedImage:
        if not data:
            raise InputError(field, "the image is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                fmt = image.format or ""
                if fmt not in SUPPORTED_FORMATS:
                    raise InputError(
                        field,
                        f"{fmt or 'this'} images are not supported; use JPEG, PNG, GIF or WEBP",
                    )
                if image.width * image.height > _MAX_PIXELS:
                    raise InputError(field, f"image is {image.width}x{image.height}, too large")
                image.load()
        except InputError:
            raise
        except (
            UnidentifiedImageError,
            OSError,
            SyntaxError,
            ValueError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ):
            raise InputError(field, "not a decodable image (JPEG, PNG, GIF or WEBP)") from None
        return LoadedImage(image=image, data=data, format=fmt)


def _short(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."
