"""Where generated images are stored, and the JSON sidecar that says how each was made.

Layout: ``{flow}/{YYYY-MM-DD}/{name}.{png|jpg}`` under the store's base URL,
with ``{name}.{png|jpg}.json`` beside it. ``name`` is a caller-given job id or
a content address (the request's digest); every part is sanitised.

Visibility protocol: the image is written first and its sidecar last, each in
one step (`ObjectStore.write`). An image without a sidecar is treated as
absent (`OutputStore.load` returns ``None``), so a reader never trusts an
image whose writer did not finish: at worst it makes the image again.

Queue mode keeps a *pending record* per output while its request is in
Segmind's queue: ``_queue/{key}.json`` with the request id, written before
the first poll and removed once the output and its sidecar are stored. A run
that finds one polls that request again instead of paying for a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from PIL import Image, UnidentifiedImageError

from segmind_core.contract import OutputFormat
from segmind_core.object_store import ObjectStore

__all__ = [
    "PENDING_PREFIX",
    "SIDECAR_SUFFIX",
    "OutputStore",
    "StoredImage",
    "output_key",
    "sanitise_key_part",
]

SIDECAR_SUFFIX = ".json"
PENDING_PREFIX = "_queue/"
_MAX_PART = 120
_PILLOW_FORMATS = {"PNG": OutputFormat.PNG, "JPEG": OutputFormat.JPG}


def sanitise_key_part(text: str) -> str:
    """Lower-case letters, digits, ``.``, ``_`` and ``-`` only; at most 120 characters.

    A longer name keeps its beginning and ends with a digest of the whole, so
    names that differ only at the end (``-background``, a time stamp) never
    share a key.

    Raises:
        ValueError: when nothing usable is left (``""``, ``".."``, ``"///"``).
    """
    clean = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip(".-_")
    clean = re.sub(r"-{2,}", "-", clean)
    if len(clean) > _MAX_PART:
        digest = hashlib.sha256(clean.encode()).hexdigest()[:16]
        clean = f"{clean[: _MAX_PART - 17].rstrip('.-_')}-{digest}"
    if not clean:
        raise ValueError(f"{text!r} leaves nothing usable as a storage key")
    return clean


def output_key(flow: str, day: date, name: str, output_format: OutputFormat) -> str:
    """The key of an output image: ``{flow}/{YYYY-MM-DD}/{name}.{ext}``, sanitised."""
    return (
        f"{sanitise_key_part(flow)}/{day:%Y-%m-%d}/{sanitise_key_part(name)}.{output_format.value}"
    )


@dataclass(frozen=True)
class StoredImage:
    """A stored image and its sidecar.

    Attributes:
        key: Key of the image under the store's base URL.
        url: URL of the image (``s3://...``, a local path, ``memory://...``).
        sha256: Hex digest of the image bytes.
        format: ``png`` or ``jpg``.
        width: Pixels.
        height: Pixels.
        size_bytes: Length of the image.
        metadata: The whole sidecar.
    """

    key: str
    url: str
    sha256: str
    format: OutputFormat
    width: int
    height: int
    size_bytes: int
    metadata: dict[str, Any]


class OutputStore:
    """Saves images with sidecars and finds them again."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def save(self, key: str, image: bytes, metadata: Mapping[str, Any]) -> StoredImage:
        """Store ``image`` under ``key``, then its sidecar (``metadata`` plus the image's facts).

        Raises:
            ValueError: when ``image`` is not a PNG or JPEG.
        """
        try:
            with Image.open(io.BytesIO(image)) as decoded:
                fmt = _PILLOW_FORMATS.get(decoded.format or "")
                width, height = decoded.width, decoded.height
        except UnidentifiedImageError:
            raise ValueError("the bytes to store are not an image") from None
        if fmt is None:
            raise ValueError("only PNG and JPEG outputs are stored")
        url = self.store.url(key)
        sidecar = {
            **metadata,
            "output": {
                "key": key,
                "url": url,
                "sha256": hashlib.sha256(image).hexdigest(),
                "format": fmt.value,
                "width": width,
                "height": height,
                "bytes": len(image),
            },
            "stored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.store.write(key, image)
        self.store.write(key + SIDECAR_SUFFIX, json.dumps(sidecar, indent=2, default=str).encode())
        return _stored(key, sidecar)

    def load(self, key: str) -> StoredImage | None:
        """The image under ``key`` if its sidecar exists, else ``None``."""
        try:
            raw = self.store.read(key + SIDECAR_SUFFIX)
        except FileNotFoundError:
            return None
        return _stored(key, json.loads(raw))

    def save_pending(self, key: str, record: Mapping[str, Any]) -> None:
        """Record that the output for ``key`` is being made by a queued request."""
        self.store.write(_pending_key(key), json.dumps(dict(record), indent=2).encode())

    def load_pending(self, key: str) -> dict[str, Any] | None:
        """The pending record for ``key``, or ``None`` (also for an unreadable one)."""
        try:
            raw = self.store.read(_pending_key(key))
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def pending_url(self, key: str) -> str:
        """Where the pending record for ``key`` is (or would be)."""
        return self.store.url(_pending_key(key))

    def clear_pending(self, key: str, request_id: str) -> bool:
        """Remove the pending record for ``key`` if it is request ``request_id``'s.

        Another run may have recorded its own request under the same key since
        (the same job id, run twice at once): that record is left alone.
        Returns whether a record was removed.
        """
        record = self.load_pending(key)
        if record is None or record.get("request_id") != request_id:
            return False
        self._remove_pending(key)
        return True

    def _remove_pending(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.store.fs.rm_file(self.store.path(_pending_key(key)))

    def set_pending_aside(self, key: str, reason: str) -> str | None:
        """Move the pending record for ``key`` under ``_queue/expired/``; returns its URL.

        The copy is named by the request id and the time to the microsecond, so two
        records set aside in the same second are both kept. ``None`` when there
        was no record.
        """
        record = self.load_pending(key)
        if record is None:
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        request = sanitise_key_part(str(record.get("request_id") or "unknown"))
        url = self.store.write(
            f"{PENDING_PREFIX}expired/{key}.{stamp}.{request}.json",
            json.dumps({**record, "set_aside_because": reason}, indent=2).encode(),
        )
        self._remove_pending(key)
        return url

    def read_verified(self, stored: StoredImage) -> bytes:
        """The image bytes, checked against the sidecar's sha256.

        Raises:
            ValueError: when the bytes do not match.
        """
        data = self.store.read(stored.key)
        if hashlib.sha256(data).hexdigest() != stored.sha256:
            raise ValueError(f"{stored.url} does not match the sha256 in its sidecar")
        return data


def _pending_key(key: str) -> str:
    return f"{PENDING_PREFIX}{key}{SIDECAR_SUFFIX}"


def _stored(key: str, sidecar: dict[str, Any]) -> StoredImage:
    output = sidecar["output"]
    return StoredImage(
        key=key,
        url=output["url"],
        sha256=output["sha256"],
        format=OutputFormat(output["format"]),
        width=output["width"],
        height=output["height"],
        size_bytes=output["bytes"],
        metadata=sidecar,
    )
