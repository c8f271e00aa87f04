"""Thumbnails of stored images, and the links a person's browser opens them through.

A thumbnail is a small JPEG (longest side 320 px, upright, RGB) made with
Pillow from the stored image: one GET per image. On storage that presigns
(S3) it is written under ``_thumbnails/`` at the storage's base, at the image's
own key plus ``.jpg`` (so the outputs' folders hold only outputs, sidecars and
results manifests), and both are linked through presigned URLs, which a browser
opens without credentials until they expire. Elsewhere (a local folder, memory)
a browser cannot reach the storage: the thumbnail travels inside the page as a
``data:`` URI, and the full-size image is named by its path. Making a thumbnail never raises: a
`Preview` without one says why.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import posixpath
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from PIL import Image, ImageOps

from segmind_core.object_store import ObjectStore

__all__ = [
    "THUMBNAILS_FOLDER",
    "THUMBNAIL_SIDE",
    "Preview",
    "key_in",
    "make_thumbnail",
    "preview",
    "thumbnail_key",
]

THUMBNAIL_SIDE = 320
THUMBNAILS_FOLDER = "_thumbnails"
_JPEG_QUALITY = 80


def make_thumbnail(data: bytes, *, max_side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG of the image ``data`` whose longest side is at most ``max_side`` pixels.

    Turned upright as its EXIF orientation says, in RGB (transparent parts on
    white). Smaller images keep their size.

    Raises:
        PIL.UnidentifiedImageError: ``data`` is not an image Pillow reads.
        OSError: the image is truncated or cannot be decoded.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (max_side, max_side))  # a JPEG decodes at a smaller scale
        upright = ImageOps.exif_transpose(image)
        upright.thumbnail((max_side, max_side))
        out = io.BytesIO()
        _flattened(upright).save(out, "JPEG", quality=_JPEG_QUALITY, optimize=True)
    return out.getvalue()


def _flattened(image: Image.Image) -> Image.Image:
    """``image`` in RGB; transparent parts on white, where JPEG would make them black."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


@dataclass(frozen=True)
class Preview:
    """How a page shows one stored image.

    Attributes:
        thumbnail: The thumbnail's presigned URL, or the thumbnail itself as a
            ``data:`` URI; ``None`` when none could be made (see ``problem``).
        full: A presigned URL of the full-size image; ``None`` when a browser
            cannot open it (a local folder: its path is all there is).
        width: Of the full-size image, when it was read.
        height: Of the full-size image, when it was read.
        format: Of the full-size image as Pillow names it (``PNG``, ``JPEG``...).
        expires_at: When the presigned URLs stop working (UTC), if there are any.
        expires_in_s: Their lifetime: the store's presign setting.
        problem: Why there is no thumbnail (the exception's type, never its text).
    """

    thumbnail: str | None
    full: str | None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    expires_at: datetime | None = None
    expires_in_s: int | None = None
    problem: str | None = None


def preview(store: ObjectStore, url: str) -> Preview:
    """The thumbnail and full-size links of the image at ``url``, made through ``store``.

    An image under ``store`` is read back for its thumbnail. On a store that
    presigns, the thumbnail is written under `thumbnail_key` and both links are
    presigned; otherwise (or when that write fails) the thumbnail is a
    ``data:`` URI. An image stored elsewhere (served from the cache of another
    storage) gets no thumbnail, only a presigned link when ``store`` can make one.
    """
    key = key_in(store, url)
    links = _links(store, _browser_url(store, key) if key else store.presigned_url_for(url))
    if key is None:
        return replace(links, problem="stored outside this storage")
    try:
        data = store.read(key)
        thumbnail = make_thumbnail(data)
        with Image.open(io.BytesIO(data)) as image:
            (width, height), image_format = image.size, image.format
    except Exception as exc:  # a person's view must never fail a run that paid
        return replace(links, problem=type(exc).__name__)
    stored = _stored_thumbnail(store, key, thumbnail) if links.full else None
    return replace(
        links,
        thumbnail=stored or _data_uri(thumbnail),
        width=width,
        height=height,
        format=image_format,
    )


def key_in(store: ObjectStore, url: str) -> str | None:
    """The key of ``url`` under ``store``'s base URL; ``None`` when it is stored elsewhere."""
    marker = "_"
    base = store.url(marker)[: -len(marker)]  # the base URL as `ObjectStore.url` spells it
    key = url[len(base) :] if url.startswith(base) else ""
    return key if key and store.url(key) == url else None


def thumbnail_key(key: str) -> str:
    """Where the thumbnail of ``key`` goes: ``_thumbnails/{key}.jpg``.

    Apart from the outputs, so that a listing of an output folder finds only
    what the flows document there. The name keeps the image's extension
    (``coffee.png.jpg``), as sidecars do, so ``coffee.png`` and ``coffee.jpg``
    of the same row never share one.
    """
    return posixpath.join(THUMBNAILS_FOLDER, f"{key}.jpg")


def _stored_thumbnail(store: ObjectStore, key: str, thumbnail: bytes) -> str | None:
    """Write ``thumbnail`` beside ``key``; its presigned URL, or ``None`` when that failed."""
    where = thumbnail_key(key)
    try:
        store.write(where, thumbnail)
    except Exception:  # the data: URI still shows it
        return None
    return _browser_url(store, where)


def _browser_url(store: ObjectStore, key: str) -> str | None:
    """A presigned URL of ``key`` that a browser shows rather than saves; ``None`` off S3."""
    content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return store.presigned_url(key, content_type=content_type)


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _links(store: ObjectStore, full: str | None) -> Preview:
    """A preview with no thumbnail yet: ``full``, and when presigned URLs made now expire."""
    if full is None:
        return Preview(None, None)
    lifetime = store.presign_expiry_s
    return Preview(
        None,
        full,
        expires_at=datetime.now(UTC) + timedelta(seconds=lifetime),
        expires_in_s=lifetime,
    )
