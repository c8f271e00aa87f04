"""Turning the images a caller has into references an endpoint accepts.

A caller may pass an ``http(s)`` URL, a ``data:`` URI, an ``s3://`` URL (or
one on the output store's filesystem), a local path, raw bytes or a PIL
image. Every one is read and checked here, before any money is spent (JPEG,
PNG, GIF or WEBP; bytes and pixels bounded, decompression bombs refused from
the header, before any pixel is decoded). What may be read, from where, is
`segmind_core.fetch.InputPolicy`: http(s) hosts on public addresses, s3, and
local files under the configured roots. An ``http(s)`` URL is downloaded only
to check it and is sent as is (the service fetches it). With S3 storage, other
images are sent as presigned URLs (uploaded under ``inputs/{sha256}`` first
when they are not already in the store); otherwise inline as data URIs.

Each resolved image also has an *identity* for the cache key: the sha256 of
its content, or the URL itself for ``http(s)`` inputs (whose content the
service fetches and this project never sees).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlsplit

import fsspec
from PIL import Image, UnidentifiedImageError

from segmind_core.errors import PermanentError
from segmind_core.fetch import FetchRefusedError, InputPolicy, display_url, fetch_http
from segmind_core.object_store import ObjectStore

__all__ = [
    "ImageInput",
    "InvalidInputImageError",
    "ResolvedImage",
    "image_identity",
    "read_image_input",
    "resolve_image",
    "to_image_ref",
]

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | Image.Image

MAX_INPUT_BYTES = 20 * 1024 * 1024
MAX_INPUT_PIXELS = 64_000_000
_MIME_TYPES = {
    "JPEG": "image/jpeg",
    # A JPEG with more pictures after the first (phone photos with a depth map or
    # gain map): Pillow calls it MPO; the first picture is a plain JPEG.
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
}


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
    too_large = (
        f"{origin} has more pixels than the {MAX_INPUT_PIXELS} allowed, so many that it looks "
        "like a decompression bomb (refused before decoding)"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # open() reads the header only: the size is known before any pixel is decoded.
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format or ""
                width, height = image.width, image.height
                if width * height > MAX_INPUT_PIXELS:
                    raise InvalidInputImageError(
                        field,
                        f"{origin} is {width}x{height} = {width * height} pixels, more than "
                        f"the {MAX_INPUT_PIXELS} allowed (refused before decoding)",
                    )
                if fmt in ("JPEG", "MPO") and _is_progressive(image):
                    # Pillow decodes a progressive JPEG with a buffer of every
                    # coefficient (hundreds of MiB for 64 MP, draft mode or not):
                    # check its markers instead.
                    if not _jpeg_is_complete(data):
                        raise ValueError("truncated")
                elif fmt in ("JPEG", "MPO"):
                    # verify() does not notice a JPEG cut short; decoding at 1/8 scale
                    # (draft mode) does, at a small share of a full decode's cost.
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                    image.load()
                elif fmt == "GIF":
                    # verify() does nothing for GIF.
                    if not _gif_is_complete(data):
                        raise ValueError("truncated")
                else:
                    image.verify()
    except InvalidInputImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInputImageError(field, too_large) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Warning):
        raise InvalidInputImageError(
            field, f"{origin} is not a readable image (JPEG, PNG, GIF or WEBP), or is truncated"
        ) from None
    if fmt not in _MIME_TYPES:
        raise InvalidInputImageError(
            field, f"{origin} is a {fmt} image; the endpoints take JPEG, PNG, GIF or WEBP"
        )
    return _MIME_TYPES[fmt]


def _is_progressive(image: Image.Image) -> bool:
    return bool(image.info.get("progressive") or image.info.get("progression"))


def _jpeg_is_complete(data: bytes) -> bool:
    """Whether the JPEG's segments run whole from its start to its end-of-image marker.

    Segments are skipped by their lengths, and each scan's entropy-coded data up to
    the next marker (an ``FF`` there is followed by ``00``, a restart marker or
    fill). Bytes after the end marker (a motion photo's video, appended metadata)
    are not looked at.
    """
    size = len(data)
    if not data.startswith(b"\xff\xd8"):
        return False
    position = 2
    while True:
        if position >= size or data[position] != 0xFF:
            return False
        while position < size and data[position] == 0xFF:  # fill bytes before a marker
            position += 1
        if position >= size:
            return False
        marker = data[position]
        position += 1
        if marker == 0xD9:  # end of image
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length follows
            continue
        if position + 2 > size:
            return False
        length = (data[position] << 8) | data[position + 1]
        if length < 2:
            return False
        position += length
        if position > size:
            return False
        if marker == 0xDA:  # start of scan: skip its entropy-coded data
            while True:
                position = data.find(b"\xff", position)
                if position < 0 or position + 1 >= size:
                    return False
                following = data[position + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    position += 2
                elif following == 0xFF:
                    position += 1
                else:
                    break


def _gif_is_complete(data: bytes) -> bool:
    """Whether every block of a GIF is whole, up to its trailer (or the end, after a frame)."""
    view = memoryview(data)
    if len(view) < 13:
        return False
    position = 13 + _color_table_size(view[10])
    frames = 0
    while position < len(view):
        kind = view[position]
        if kind == 0x3B:  # trailer
            return frames > 0
        if kind == 0x21:  # extension: label, then sub-blocks
            position += 2
        elif kind == 0x2C:  # image: descriptor, colour table, LZW code size, sub-blocks
            if position + 10 > len(view):
                return False
            position += 10 + _color_table_size(view[position + 9]) + 1
            frames += 1
        else:
            return False
        while True:  # sub-blocks, each a size byte and that many bytes; size 0 ends
            if position >= len(view):
                return False
            size = view[position]
            position += 1 + size
            if size == 0:
                break
        if position > len(view):
            return False
    # No trailer: whole only if the data ends exactly after a block, with a frame.
    return position == len(view) and frames > 0


def _color_table_size(packed: int) -> int:
    return 3 * 2 ** ((packed & 0x07) + 1) if packed & 0x80 else 0


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


def to_image_ref(value: ImageInput, *, field: str, policy: InputPolicy | None = None) -> str:
    """The reference to send for one input image, without checking remote URLs.

    Args:
        value: An ``http(s)`` URL or ``data:`` URI (passed through unchecked), a
            local path under the policy's roots, image bytes, or a PIL image.
        field: The parameter name, used in error messages.
        policy: Where inputs may be read from; `InputPolicy.from_env` by default.

    Returns:
        A URL or a ``data:image/...;base64,`` URI.

    Raises:
        InvalidInputImageError: for a missing or refused file, a non-image, an
            unsupported format or an oversized image.

    Example:
        >>> to_image_ref("https://example.com/cat.png", field="input_image")
        'https://example.com/cat.png'
    """
    if isinstance(value, str) and urlsplit(value).scheme.lower() in ("http", "https", "data"):
        return value
    data, mime = _read_checked(value, field=field, store=None, policy=policy)
    return _data_uri(data, mime)


_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}


@dataclass(frozen=True)
class ResolvedImage:
    """An input image ready to send.

    Attributes:
        ref: What goes in the request: a URL (plain or presigned) or a data URI.
        identity: For the cache key: ``sha256:<hex>`` of the content, or the http(s) URL.
        source: What the caller gave, for sidecars: a URL or path; never a presigned
            URL and never inline data.
    """

    ref: str
    identity: str
    source: str


def _is_remote_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in ("http", "https")


def read_image_input(
    value: ImageInput,
    *,
    field: str,
    store: ObjectStore | None = None,
    policy: InputPolicy | None = None,
) -> bytes:
    """The bytes of an input, read within the policy and checked to be a usable image.

    ``s3://`` URLs and URLs on ``store``'s filesystem are read through ``store``
    when it is on the same filesystem (its credentials apply), otherwise with
    fsspec's defaults; ``http(s)`` URLs with `segmind_core.fetch.fetch_http`.

    Raises:
        InvalidInputImageError: refused, unreadable, missing, not an image, or too large.
    """
    return _read_checked(value, field=field, store=store, policy=policy)[0]


def _read_checked(
    value: ImageInput, *, field: str, store: ObjectStore | None, policy: InputPolicy | None
) -> tuple[bytes, str]:
    """`read_image_input`'s work: the bytes and their MIME type, decoded once."""
    if isinstance(value, Image.Image):
        data = _encode_pil_image(field, value)
        return data, _check_image_bytes(field, data, "the PIL image")
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        return data, _check_image_bytes(field, data, "the image bytes")
    policy = policy if policy is not None else InputPolicy.from_env()
    text = os.fspath(value)
    if not text.strip():
        raise InvalidInputImageError(field, "no image given (an empty URL or path)")
    try:
        scheme = (
            policy.check_scheme(text, store.protocol if store is not None else None)
            if isinstance(value, str)
            else ""
        )
        if scheme == "data":
            _, _, payload = text.partition(",")
            try:
                data = base64.b64decode(payload, validate=True)
            except ValueError:
                raise InvalidInputImageError(field, "the data URI is not valid base64") from None
            return data, _check_image_bytes(field, data, "the data URI")
        if scheme in ("http", "https"):
            data = fetch_http(text, policy)
            return data, _check_image_bytes(field, data, display_url(text))
        if scheme:
            policy.check_store_url(
                text,
                store.protocol if store is not None else None,
                store.root if store is not None else None,
            )
            data = _read_fsspec_url(field, text, store, policy.max_bytes)
            return data, _check_image_bytes(field, data, display_url(text))
        path = _local_policy(policy, store).check_local_path(text)
    except FetchRefusedError as exc:
        raise InvalidInputImageError(field, str(exc)) from None
    if not path.is_file():
        raise InvalidInputImageError(field, f"no such file: {path}")
    size = path.stat().st_size
    if size > policy.max_bytes:
        raise InvalidInputImageError(
            field, f"file {path} is {size} bytes; the limit is {policy.max_bytes}"
        )
    data = path.read_bytes()
    return data, _check_image_bytes(field, data, f"file {path}")


def _local_policy(policy: InputPolicy, store: ObjectStore | None) -> InputPolicy:
    """``policy``, plus the output folder when outputs go to a local folder.

    A flow's intermediate image (stored there) is the next step's input.
    """
    if store is None or store.protocol != "file" or not store.root:
        return policy
    return replace(policy, local_roots=(*policy.local_roots, Path(store.root)))


def _read_fsspec_url(field: str, url: str, store: ObjectStore | None, max_bytes: int) -> bytes:
    scheme = urlsplit(url).scheme.lower()
    try:
        if store is not None and scheme == store.protocol:
            size = store.fs.size(url)
            if size is not None and size > max_bytes:
                raise InvalidInputImageError(
                    field, f"{url} is {size} bytes; the limit is {max_bytes}"
                )
            data: bytes = store.fs.cat_file(url)
            return data
        with fsspec.open(url, "rb") as handle:
            data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise InvalidInputImageError(field, f"{url} is over the {max_bytes}-byte limit")
            return data
    except InvalidInputImageError:
        raise
    except FileNotFoundError:
        raise InvalidInputImageError(field, f"no such object: {url}") from None
    except (OSError, ValueError, ImportError) as exc:
        raise InvalidInputImageError(
            field, f"cannot read {url}: {type(exc).__name__}: {exc}"
        ) from None


def resolve_image(
    value: ImageInput,
    *,
    field: str,
    store: ObjectStore | None = None,
    policy: InputPolicy | None = None,
) -> ResolvedImage:
    """Check an input image and decide how to send it.

    Args:
        value: URL, data URI, s3 URL, local path, bytes or PIL image.
        field: The parameter name, for error messages.
        store: The output store; when it is S3, non-http inputs are sent as
            presigned URLs instead of inline data.
        policy: Where inputs may be read from; `InputPolicy.from_env` by default.

    Raises:
        InvalidInputImageError: before anything is sent, for an unusable input.
    """
    if isinstance(value, str) and _is_remote_url(value):
        # Downloaded to check it (reachable, an image, within bounds); sent as is.
        _read_checked(value, field=field, store=store, policy=policy)
        return ResolvedImage(ref=value, identity=value, source=display_url(value))
    data, mime = _read_checked(value, field=field, store=store, policy=policy)
    digest = hashlib.sha256(data).hexdigest()
    if isinstance(value, str | os.PathLike) and not str(value).startswith("data:"):
        source = os.fspath(value)
    else:
        source = f"sha256:{digest}"
    if store is not None and store.can_presign:
        key = f"inputs/{digest}.{_EXTENSIONS[mime]}"
        if isinstance(value, str) and urlsplit(value).scheme.lower() == store.protocol:
            url = store.fs.url(value, expires=store.presign_expiry_s)
        else:
            if not store.exists(key):
                store.write(key, data)
            url = store.presigned_url(key)
        return ResolvedImage(ref=str(url), identity=f"sha256:{digest}", source=source)
    return ResolvedImage(ref=_data_uri(data, mime), identity=f"sha256:{digest}", source=source)


def image_identity(
    value: ImageInput,
    *,
    field: str,
    store: ObjectStore | None = None,
    policy: InputPolicy | None = None,
) -> str:
    """The cache identity of an input without uploading it: the URL or the content digest.

    Raises:
        InvalidInputImageError: for an unusable input.
    """
    if isinstance(value, str) and _is_remote_url(value):
        return value
    data = read_image_input(value, field=field, store=store, policy=policy)
    return "sha256:" + hashlib.sha256(data).hexdigest()
