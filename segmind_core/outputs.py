"""Where generated images are stored, and the JSON sidecar that says how each was made.

Layout: ``{flow}/{YYYY-MM-DD}/{name}.{png|jpg}`` under the store's base URL,
with ``{name}.{png|jpg}.json`` beside it. ``name`` is a caller-given job id or
a content address (the request's digest); every part is sanitised.

Visibility protocol: the image is written first and its sidecar last, each in
one step (`ObjectStore.write`). An image without a sidecar is treated as
absent (`OutputStore.load` returns ``None``), so a reader never trusts an
image whose writer did not finish: at worst it makes the image again.

Every sidecar names the service that made the image (``service``, the base
URL's root): an output is reused only by runs against the same service, and
only while its image is still there with the sidecar's size (`Slot`).

Writes and look-ups after a paid call are retried for a bounded time
(`StorageRetry`), long enough to ride out a short storage outage. When storage
still fails, the paid bytes and their sidecar go to a local *spill* folder
(``{spill_dir}/{service}/{request digest}.{ext}`` and ``.json``), from which the
next attempt on that machine stores them without calling the service again.

Queue mode keeps a *pending record* per job while its request is in Segmind's
queue: ``_queue/{service}/{flow}/{name}.{ext}.json`` (`queue_key`; no date, so a
re-run on another day finds it) with the request id and the service, written
before the first poll and removed once the output and its sidecar are stored.
A run against the same service that finds one polls that request again
instead of paying for a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError

from segmind_core.contract import OutputFormat
from segmind_core.errors import OutputNotStoredError
from segmind_core.object_store import ObjectStore

__all__ = [
    "PENDING_PREFIX",
    "SIDECAR_SUFFIX",
    "SPILL_DIR_ENV",
    "OutputStore",
    "Slot",
    "StorageRetry",
    "StoredImage",
    "default_spill_dir",
    "output_key",
    "queue_key",
    "sanitise_key_part",
    "service_tag",
]

SIDECAR_SUFFIX = ".json"
PENDING_PREFIX = "_queue/"
_MAX_PART = 120
_PILLOW_FORMATS = {"PNG": OutputFormat.PNG, "JPEG": OutputFormat.JPG}
SPILL_DIR_ENV = "SEGMIND_SPILL_DIR"
"""Environment variable naming the local folder for paid images storage refused."""
_logger = logging.getLogger(__name__)
T = TypeVar("T")


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


def service_tag(service: str) -> str:
    """A service root (``https://api.segmind.com``) as a key part (``api.segmind.com``)."""
    return sanitise_key_part(service.split("://", 1)[-1])


def queue_key(flow: str, name: str, output_format: OutputFormat, service: str) -> str:
    """The key of a job's pending record: ``{service}/{flow}/{name}.{ext}``, with no date.

    A run killed after submitting and run again on another day finds it; a run
    against another service never does.
    """
    return (
        f"{service_tag(service)}/{sanitise_key_part(flow)}/"
        f"{sanitise_key_part(name)}.{output_format.value}"
    )


def default_spill_dir() -> Path:
    """``$SEGMIND_SPILL_DIR``, else ``segmind-prefect/unstored`` in ``$XDG_CACHE_HOME``.

    ``$XDG_CACHE_HOME`` defaults to ``~/.cache``.
    """
    configured = os.environ.get(SPILL_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not cache:
        try:
            cache = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory (a bare container user)
            cache = tempfile.gettempdir()
    return Path(cache) / "segmind-prefect" / "unstored"


@dataclass(frozen=True)
class StorageRetry:
    """How long a storage operation is retried before the store is given up on.

    The default rides out an outage of a minute (an S3 ``SlowDown``, a restarting
    endpoint): backoff from ``backoff_initial_s`` doubling to ``backoff_max_s``,
    with jitter, and no new attempt once ``max_elapsed_s`` would be passed.

    Attributes:
        max_elapsed_s: Longest time spent retrying one operation.
        backoff_initial_s: Wait before the first retry.
        backoff_max_s: Longest wait between two attempts.
        sleep: Called to wait (tests pass a fake one).
        clock: Monotonic seconds (tests pass a fake one).
    """

    max_elapsed_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def run(self, what: str, step: Callable[[], T]) -> T:
        """``step()``, retried after any error but a programming one until the budget is spent.

        Raises:
            Exception: the last error, once the budget is spent.
        """
        deadline = self.clock() + self.max_elapsed_s
        retry = 0
        while True:
            try:
                return step()
            except (ValueError, TypeError, KeyError):
                raise
            except Exception as exc:
                retry += 1
                ceiling = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (retry - 1))
                delay = ceiling * (0.5 + 0.5 * self._rng.random())
                if self.clock() + delay > deadline:
                    raise
                _logger.warning(
                    "storage: %s failed (%s: %s); retry %d in %.1f s",
                    what,
                    type(exc).__name__,
                    exc,
                    retry,
                    delay,
                )
                self.sleep(delay)


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


@dataclass(frozen=True)
class Slot:
    """What an output key holds now.

    Attributes:
        key: The key.
        stored: The sidecar, when one is there and readable.
        has_sidecar: Whether a sidecar object is there (readable or not).
        image_size: Length of the image object there (asked only when a sidecar is);
            ``None`` when there is none.
    """

    key: str
    stored: StoredImage | None
    has_sidecar: bool
    image_size: int | None

    @property
    def intact(self) -> bool:
        """A readable sidecar whose image is there with the sidecar's size."""
        return self.stored is not None and self.image_size == self.stored.size_bytes

    @property
    def writable(self) -> bool:
        """Writing here loses nothing paid for.

        True when there is no sidecar (an image without one is a writer's
        unfinished output, made again), or a readable sidecar whose image is gone.
        """
        return not self.has_sidecar or (self.stored is not None and self.image_size is None)

    def made_by(self, service: str) -> bool:
        """Whether a readable sidecar here names ``service`` as its maker."""
        return self.stored is not None and self.stored.metadata.get("service") == service


class OutputStore:
    """Saves images with sidecars and finds them again.

    Args:
        store: Where outputs go.
        spill_dir: Local folder for paid images storage refused; `default_spill_dir` when
            not given.
        retry: How long writes and look-ups are retried.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        spill_dir: str | os.PathLike[str] | None = None,
        retry: StorageRetry | None = None,
    ) -> None:
        self.store = store
        self.spill_dir = Path(spill_dir) if spill_dir is not None else default_spill_dir()
        self.retry = retry or StorageRetry()

    def save(self, key: str, image: bytes, metadata: Mapping[str, Any]) -> StoredImage:
        """Store ``image`` under ``key``, then its sidecar (``metadata`` plus the image's facts).

        Each write is retried within `StorageRetry`.

        Raises:
            ValueError: when ``image`` is not a PNG or JPEG.
            Exception: the storage's last error once the retry budget is spent.
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
        text = json.dumps(sidecar, indent=2, default=str).encode()
        sidecar_key = key + SIDECAR_SUFFIX
        self.retry.run(f"writing {url}", lambda: self.store.write(key, image))
        self.retry.run(f"writing {url}.json", lambda: self.store.write(sidecar_key, text))
        return _stored(key, sidecar)

    def load(self, key: str) -> StoredImage | None:
        """The image under ``key`` if its sidecar exists and is readable, else ``None``."""
        try:
            raw = self.store.read(key + SIDECAR_SUFFIX)
        except FileNotFoundError:
            return None
        return _parsed(key, raw)

    def probe(self, key: str) -> Slot:
        """What ``key`` holds now: its sidecar, and the size of its image when it has one.

        Retried within `StorageRetry`.
        """
        return self.retry.run(f"reading {self.store.url(key)}", lambda: self._probe(key))

    def _probe(self, key: str) -> Slot:
        try:
            raw = self.store.read(key + SIDECAR_SUFFIX)
        except FileNotFoundError:
            return Slot(key, None, has_sidecar=False, image_size=None)
        stored = _parsed(key, raw)
        if stored is None:
            _logger.warning(
                "the sidecar %s is unreadable: its output is not reused and not overwritten",
                self.store.url(key + SIDECAR_SUFFIX),
            )
        return Slot(key, stored, has_sidecar=True, image_size=self.store.size(key))

    # Paid images storage refused ---------------------------------------------------------

    def _spill_paths(self, service: str, digest: str) -> tuple[Path, Path]:
        folder = self.spill_dir / service_tag(service)
        name = sanitise_key_part(digest)
        return folder / f"{name}.json", folder / f"{name}.image"

    def spill(
        self, service: str, digest: str, image: bytes, metadata: Mapping[str, Any], error: str
    ) -> Path:
        """Keep a paid image and its sidecar metadata on local disk; returns the image's path.

        The image is written first and the record (``.json``) last, each by a rename,
        so a record always has its whole image.

        Raises:
            OSError: the local disk refused too.
        """
        record_path, image_path = self._spill_paths(service, digest)
        suffix = {"PNG": ".png", "JPEG": ".jpg"}.get(_pillow_format(image) or "", "")
        image_path = image_path.with_suffix(suffix or ".image")
        record = {
            "image_file": image_path.name,
            "sha256": hashlib.sha256(image).hexdigest(),
            "service": service,
            "request_digest": digest,
            "spilled_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "storage_error": error,
            "sidecar": dict(metadata),
        }
        image_path.parent.mkdir(parents=True, exist_ok=True)
        _write_locally(image_path, image)
        _write_locally(record_path, json.dumps(record, indent=2, default=str).encode())
        return image_path

    def spilled(self, service: str, digest: str) -> tuple[bytes, dict[str, Any], Path] | None:
        """A paid image `spill` kept for ``service`` and ``digest``: bytes, sidecar metadata, path.

        ``None`` when there is none, or when what is there is incomplete or altered.
        """
        record_path, _ = self._spill_paths(service, digest)
        try:
            record = json.loads(record_path.read_bytes())
            image_path = record_path.parent / str(record["image_file"])
            image = image_path.read_bytes()
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if hashlib.sha256(image).hexdigest() != record.get("sha256") or not isinstance(
            record.get("sidecar"), dict
        ):
            _logger.warning("ignoring the altered spilled image %s", image_path)
            return None
        return image, record["sidecar"], image_path

    def drop_spilled(self, service: str, digest: str) -> None:
        """Remove what `spill` kept for ``service`` and ``digest`` (once it is stored)."""
        record_path, image_path = self._spill_paths(service, digest)
        with contextlib.suppress(OSError):
            record = json.loads(record_path.read_bytes())
            image_path = record_path.parent / str(record["image_file"])
        for path in (record_path, image_path):  # the record first: it marks a spill complete
            with contextlib.suppress(OSError):
                path.unlink()

    def not_stored(
        self,
        service: str,
        digest: str,
        image: bytes,
        metadata: Mapping[str, Any],
        key: str,
        cause: Exception,
    ) -> OutputNotStoredError:
        """The error for a paid image storage refused, after keeping it with `spill`."""
        what = (
            f"the paid image of request {digest} could not be stored at {self.store.url(key)} "
            f"within {self.retry.max_elapsed_s:g} s of retries ({type(cause).__name__}: {cause})"
        )
        try:
            path = self.spill(service, digest, image, metadata, f"{type(cause).__name__}: {cause}")
        except OSError as exc:
            _logger.error("%s, and keeping it in %s failed too: %s", what, self.spill_dir, exc)
            return OutputNotStoredError(
                f"{what}; keeping it in {self.spill_dir} failed too ({type(exc).__name__}: "
                f"{exc}): the image is lost",
                slug=metadata.get("slug"),
            )
        error = OutputNotStoredError(
            f"{what}. It is kept at {path}: the next attempt on this machine stores it "
            "from there without paying again",
            slug=metadata.get("slug"),
        )
        error.spill_path = str(path)
        return error

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


def _pillow_format(image: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(image)) as decoded:
            return decoded.format
    except (OSError, ValueError):
        return None


def _write_locally(path: Path, data: bytes) -> None:
    """Write ``path`` in one step: a temporary file beside it, flushed, then renamed."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def _parsed(key: str, raw: bytes) -> StoredImage | None:
    """The sidecar ``raw`` of ``key``; ``None`` when it is not one (cut short, altered)."""
    try:
        sidecar = json.loads(raw)
        return _stored(key, sidecar)
    except (ValueError, KeyError, TypeError):
        return None


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
