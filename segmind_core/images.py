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
the content sent, or the URL for ``http(s)`` inputs (whose content the
service fetches), less the query parameters of a presigned signature (AWS,
S3-compatible, Google Cloud Storage, Azure SAS, CloudFront): a URL signed
again for the same object is the same input (`remote_identity`).

Images are sent upright: one whose EXIF orientation says it is turned (a
portrait phone photo is stored landscape, with a tag saying "rotate 90") is
turned as the tag says and re-encoded in its format before it is sent, so
the service sees the picture a viewer shows, and its identity is the digest
of what is sent. An ``http(s)`` input that needs turning is sent as that
upright copy (uploaded, or inline) instead of its URL.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit

import fsspec
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from segmind_core.errors import PermanentError
from segmind_core.fetch import (
    FetchRefusedError,
    InputPolicy,
    display_url,
    fetch_http,
    same_store_scheme,
)
from segmind_core.object_store import ObjectStore

__all__ = [
    "ImageInput",
    "InvalidInputImageError",
    "ResolvedImage",
    "image_identity",
    "read_image_input",
    "remote_identity",
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


_ORIENTATION = 0x0112  # the EXIF tag: 1 is upright, 2 to 8 a mirroring and/or turn
_UPRIGHT_SAVE = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP"}


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation Pillow read with the header (1 when there is none).

    Only EXIF found before the pixels is looked at (JPEG's APP1, WEBP's chunk,
    a PNG ``eXIf`` before its data): asking Pillow for a PNG's EXIF otherwise
    decodes the whole image.
    """
    raw = image.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        value = int(exif.get(_ORIENTATION, 1))
    except (ValueError, TypeError, OSError, SyntaxError):  # a broken EXIF block: leave it
        return 1
    return value if 1 <= value <= 8 else 1


def _upright(field: str, data: bytes, origin: str) -> bytes | None:
    """``data`` turned as its EXIF orientation says, re-encoded; ``None`` when already upright.

    JPEG keeps its quantisation tables and chroma subsampling (the quality it
    had), PNG is lossless, WEBP is saved at quality 95. Animated images and
    GIFs are left as they are.
    """
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format or ""
        if fmt not in _UPRIGHT_SAVE or _orientation(image) == 1:
            return None
        if fmt != "MPO" and getattr(image, "n_frames", 1) > 1:
            return None
        options: dict[str, object] = {}
        if fmt in ("JPEG", "MPO"):
            options["qtables"] = getattr(image, "quantization", None) or None
            sampling = JpegImagePlugin.get_sampling(image)
            if sampling != -1:
                options["subsampling"] = sampling
        elif fmt == "WEBP":
            options["quality"] = 95
        if image.info.get("icc_profile"):
            options["icc_profile"] = image.info["icc_profile"]
        try:
            turned = ImageOps.exif_transpose(image)
            options["exif"] = turned.getexif().tobytes()  # the orientation tag is gone
            buffer = io.BytesIO()
            turned.save(buffer, format=_UPRIGHT_SAVE[fmt], **options)
        except (OSError, ValueError) as exc:
            raise InvalidInputImageError(
                field, f"{origin} cannot be turned upright as its EXIF says: {exc}"
            ) from None
    upright = buffer.getvalue()
    _check_image_bytes(field, upright, f"{origin} (turned upright)")
    return upright


def to_image_ref(value: ImageInput, *, field: str, policy: InputPolicy | None = None) -> str:
    """The reference to send for one input image, without checking remote URLs.

    Args:
        value: An ``http(s)`` URL or ``data:`` URI (passed through unchecked), a
            local path under the policy's roots, image bytes, or a PIL image.
        field: The parameter name, used in error messages.
        policy: Where inputs may be read from; `InputPolicy.from_env` by default.

    Returns:
        A URL or a ``data:image/...;base64,`` URI (of the image turned upright).

    Raises:
        InvalidInputImageError: for a missing or refused file, a non-image, an
            unsupported format or an oversized image.

    Example:
        >>> to_image_ref("https://example.com/cat.png", field="input_image")
        'https://example.com/cat.png'
    """
    if isinstance(value, str) and urlsplit(value).scheme.lower() in ("http", "https", "data"):
        return value
    checked = _read_checked(value, field=field, store=None, policy=policy)
    return _data_uri(checked.data, checked.mime)


_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}


@dataclass(frozen=True)
class ResolvedImage:
    """An input image ready to send.

    Attributes:
        ref: What goes in the request: a URL (plain or presigned) or a data URI.
        identity: For the cache key: ``sha256:<hex>`` of the content sent, or the
            http(s) URL (`remote_identity`).
        source: What the caller gave, for sidecars: a URL or path; never a presigned
            URL and never inline data.
    """

    ref: str
    identity: str
    source: str


class _Checked(NamedTuple):
    """An input read and checked: the bytes to send, their type, whether they were turned.

    ``turned``: turned upright as the EXIF said, so they differ from the original.
    """

    data: bytes
    mime: str
    turned: bool


def _is_remote_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in ("http", "https")


# Query parameters of presigned URLs, by family: dropped from an identity when the
# family's signature is there. AWS SigV4 (and S3-compatible stores), Google Cloud
# Storage V4: every parameter with the prefix.
_SIGNED_PREFIXES = {"x-amz-signature": "x-amz-", "x-goog-signature": "x-goog-"}
# AWS SigV2, GCS V2, CloudFront: these names, when "signature" is there.
_SIGNATURE_NAMES = frozenset(
    {"signature", "awsaccesskeyid", "googleaccessid", "expires", "key-pair-id", "policy"}
)
# Azure SAS, when "sig" and its version "sv" are there.
_SAS_NAMES = frozenset(
    {"sig", "sv", "ss", "srt", "sp", "se", "st", "spr", "sr", "sip", "ses", "sdd"}
    | {"skoid", "sktid", "skt", "ske", "sks", "skv", "saoid", "suoid", "scid"}
)


def remote_identity(url: str) -> str:
    """The cache identity of an http(s) input: the URL without the parameters of a signature.

    A presigned URL carries its signature, date and expiry in the query, so the
    same object signed again would be a new input and paid again. Dropped, when
    the family's signature is present: AWS SigV4 ``X-Amz-*`` (S3 and compatible
    stores), Google Cloud Storage ``X-Goog-*``, SigV2/GCS V2/CloudFront
    ``Signature``, ``Expires``, ``AWSAccessKeyId``, ``GoogleAccessId``,
    ``Key-Pair-Id``, ``Policy``, and Azure SAS (``sig``, ``sv``, ``se``...). Every
    other parameter stays, in order (``versionId``, ``response-content-type``...).
    """
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    names = {name.lower() for name, _ in pairs}

    def signing(name: str) -> bool:
        lower = name.lower()
        return (
            any(
                signature in names and lower.startswith(prefix)
                for signature, prefix in _SIGNED_PREFIXES.items()
            )
            or ("signature" in names and lower in _SIGNATURE_NAMES)
            or ("sig" in names and "sv" in names and lower in _SAS_NAMES)
            or (lower == "x-amz-security-token" and "signature" in names)
        )

    kept = [(name, value) for name, value in pairs if not signing(name)]
    if len(kept) == len(pairs):
        return url
    return parts._replace(query=urlencode(kept)).geturl()


def read_image_input(
    value: ImageInput,
    *,
    field: str,
    store: ObjectStore | None = None,
    policy: InputPolicy | None = None,
) -> bytes:
    """The bytes of an input as they would be sent: checked, and turned upright.

    Read within the policy, checked to be a usable image, and turned upright as
    its EXIF orientation says.

    ``s3://`` and ``s3a://`` URLs, and URLs on ``store``'s filesystem, are read
    through ``store`` when it is on the same filesystem (its credentials and
    endpoint apply), otherwise with fsspec's defaults; ``http(s)`` URLs with
    `segmind_core.fetch.fetch_http`.

    Raises:
        InvalidInputImageError: refused, unreadable, missing, not an image, or too large.
    """
    return _read_checked(value, field=field, store=store, policy=policy).data


def _read_checked(
    value: ImageInput, *, field: str, store: ObjectStore | None, policy: InputPolicy | None
) -> _Checked:
    """`read_image_input`'s work: the bytes and their MIME type, decoded once."""
    data, origin = _read_raw(value, field=field, store=store, policy=policy)
    mime = _check_image_bytes(field, data, origin)
    upright = _upright(field, data, origin)
    return _Checked(data, mime, False) if upright is None else _Checked(upright, mime, True)


def _read_raw(
    value: ImageInput, *, field: str, store: ObjectStore | None, policy: InputPolicy | None
) -> tuple[bytes, str]:
    """The bytes of an input, read within the policy, and how to name it in messages."""
    if isinstance(value, Image.Image):
        return _encode_pil_image(field, value), "the PIL image"
    if isinstance(value, bytes | bytearray):
        return bytes(value), "the image bytes"
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
        _check_text(field, text, scheme)
        if scheme == "data":
            _, _, payload = text.partition(",")
            try:
                return base64.b64decode(payload, validate=True), "the data URI"
            except ValueError:
                raise InvalidInputImageError(field, "the data URI is not valid base64") from None
        if scheme in ("http", "https"):
            return fetch_http(text, policy), display_url(text)
        if scheme:
            policy.check_store_url(
                text,
                store.protocol if store is not None else None,
                store.root if store is not None else None,
            )
            return _read_fsspec_url(field, text, store, policy.max_bytes), display_url(text)
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
    return path.read_bytes(), f"file {path}"


def _check_text(field: str, text: str, scheme: str) -> None:
    """Refuse a URL or path with a lone surrogate code point (from a JSON escape).

    A local path may hold the surrogates Python uses for undecodable file name
    bytes (U+DC80 to U+DCFF); those the file system takes back.
    """
    try:
        if scheme:
            text.encode("utf-8")
        else:
            os.fsencode(text)
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
        raise InvalidInputImageError(
            field, f"{shown[:200]!s} is not valid text (it has a lone surrogate code point)"
        ) from None


def _local_policy(policy: InputPolicy, store: ObjectStore | None) -> InputPolicy:
    """``policy``, plus the output folder when outputs go to a local folder.

    A flow's intermediate image (stored there) is the next step's input.
    """
    if store is None or store.protocol != "file" or not store.root:
        return policy
    return replace(policy, local_roots=(*policy.local_roots, Path(store.root)))


def _on_store(url: str, store: ObjectStore | None) -> bool:
    """Whether ``url`` is on ``store``'s filesystem (``s3a://`` is on an ``s3`` store)."""
    return store is not None and same_store_scheme(urlsplit(url).scheme, store.protocol)


def _store_path(url: str, store: ObjectStore) -> str:
    """``url`` as ``store``'s filesystem names it (``s3a://b/k`` is ``s3://b/k``)."""
    parts = urlsplit(url)
    return f"{store.protocol}://{parts.netloc}{parts.path}"


def _read_fsspec_url(field: str, url: str, store: ObjectStore | None, max_bytes: int) -> bytes:
    try:
        if store is not None and _on_store(url, store):
            path = _store_path(url, store)
            size = store.fs.size(path)
            if size is not None and size > max_bytes:
                raise InvalidInputImageError(
                    field, f"{url} is {size} bytes; the limit is {max_bytes}"
                )
            data: bytes = store.fs.cat_file(path)
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
    checked = _read_checked(value, field=field, store=store, policy=policy)
    if isinstance(value, str) and _is_remote_url(value):
        # Downloaded to check it (reachable, an image, within bounds); sent as is,
        # unless it had to be turned upright.
        identity, source = remote_identity(value), display_url(value)
        if not checked.turned:
            return ResolvedImage(ref=value, identity=identity, source=source)
        return ResolvedImage(ref=_sendable(checked, store), identity=identity, source=source)
    digest = hashlib.sha256(checked.data).hexdigest()
    if isinstance(value, str | os.PathLike) and not str(value).startswith("data:"):
        source = os.fspath(value)
    else:
        source = f"sha256:{digest}"
    if (
        store is not None
        and store.can_presign
        and not checked.turned
        and isinstance(value, str)
        and _on_store(value, store)
    ):
        url = store.fs.url(_store_path(value, store), expires=store.presign_expiry_s)
        return ResolvedImage(ref=str(url), identity=f"sha256:{digest}", source=source)
    return ResolvedImage(ref=_sendable(checked, store), identity=f"sha256:{digest}", source=source)


def _sendable(checked: _Checked, store: ObjectStore | None) -> str:
    """A reference to checked bytes: a data URI, or presigned after an upload on S3.

    The upload goes under ``inputs/{sha256}.{ext}`` (once per content).
    """
    if store is None or not store.can_presign:
        return _data_uri(checked.data, checked.mime)
    key = f"inputs/{hashlib.sha256(checked.data).hexdigest()}.{_EXTENSIONS[checked.mime]}"
    if not store.exists(key):
        store.write(key, checked.data)
    return str(store.presigned_url(key))


def image_identity(
    value: ImageInput,
    *,
    field: str,
    store: ObjectStore | None = None,
    policy: InputPolicy | None = None,
) -> str:
    """The cache identity of an input without uploading it.

    The URL (`remote_identity`) of an http(s) input, else the digest of the content sent.

    Raises:
        InvalidInputImageError: for an unusable input.
    """
    if isinstance(value, str) and _is_remote_url(value):
        return remote_identity(value)
    data = read_image_input(value, field=field, store=store, policy=policy)
    return "sha256:" + hashlib.sha256(data).hexdigest()
