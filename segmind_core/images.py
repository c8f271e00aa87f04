"""Turning the images a caller has into references an endpoint accepts.

A caller may pass an ``http(s)`` URL (sent as is), a ``data:`` URI (sent as
is), a local path, raw bytes or a PIL image. Local ones are checked here,
before any money is spent, and sent inline as data URIs. (Presigned storage
URLs replace inline data when an S3 storage block is configured.)
"""

from __future__ import annotations

import base64
import io
import os
import warnings
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlsplit

from PIL import Image, UnidentifiedImageError

from segmind_core.errors import PermanentError

__all__ = ["ImageInput", "InvalidInputImageError", "to_image_ref"]

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | Image.Image

MAX_INPUT_BYTES = 20 * 1024 * 1024
MAX_INPUT_PIXELS = 64_000_000
_MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}


class InvalidInputImageError(PermanentError, ValueError):
    """An input image that cannot be sent: missing, not an image, or too large.

    Attributes:
        field: The parameter the image was given for.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def _check_image_bytes(field: str, data: bytes, origin: str) -> str:
    """Check ``data`` is a JPEG, PNG, GIF or WEBP image; returns its MIME type."""
    if not data:
        raise InvalidInputImageError(field, f"{origin} is empty")
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidInputImageError(
            field, f"{origin} is {len(data)} bytes; the limit is {MAX_INPUT_BYTES}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format or ""
                pixels = image.width * image.height
                image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Warning):
        raise InvalidInputImageError(
            field, f"{origin} is not a readable image (JPEG, PNG, GIF or WEBP)"
        ) from None
    if fmt not in _MIME_TYPES:
        raise InvalidInputImageError(
            field, f"{origin} is a {fmt} image; the endpoints take JPEG, PNG, GIF or WEBP"
        )
    if pixels > MAX_INPUT_PIXELS:
        raise InvalidInputImageError(field, f"{origin} has {pixels} pixels, too many")
    return _MIME_TYPES[fmt]


def _encode_pil_image(field: str, image: Image.Image) -> bytes:
    """Encode a PIL image as JPEG (if it was one) or PNG, converting modes PNG cannot hold."""
    fmt = "JPEG" if image.format == "JPEG" else "PNG"
    if fmt == "JPEG" and image.mode != "RGB":
        image = image.convert("RGB")
    elif fmt == "PNG" and image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError) as exc:
        raise InvalidInputImageError(field, f"the PIL image cannot be encoded: {exc}") from None
    return buffer.getvalue()


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def to_image_ref(value: ImageInput, *, field: str) -> str:
    """The reference to send for one input image.

    Args:
        value: An ``http(s)`` URL or ``data:`` URI (passed through), a local
            path, image bytes, or a PIL image.
        field: The parameter name, used in error messages.

    Returns:
        A URL or a ``data:image/...;base64,`` URI.

    Raises:
        InvalidInputImageError: for a missing file, a non-image, an
            unsupported format or an oversized image.

    Example:
        >>> to_image_ref("https://example.com/cat.png", field="input_image")
        'https://example.com/cat.png'
    """
    if isinstance(value, Image.Image):
        data = _encode_pil_image(field, value)
        return _data_uri(data, _check_image_bytes(field, data, "the PIL image"))
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        return _data_uri(data, _check_image_bytes(field, data, "the image bytes"))
    text = os.fspath(value)
    scheme = urlsplit(text).scheme.lower() if isinstance(value, str) else ""
    if scheme in ("http", "https", "data"):
        return text
    if scheme and len(scheme) > 1:
        raise InvalidInputImageError(
            field, f"{scheme}:// inputs are not supported yet; give an http(s) URL or a local path"
        )
    path = Path(text).expanduser()
    if not path.is_file():
        raise InvalidInputImageError(field, f"no such file: {path}")
    data = path.read_bytes()
    return _data_uri(data, _check_image_bytes(field, data, f"file {path}"))
