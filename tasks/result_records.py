"""Cache records of the endpoint tasks: JSON of `EditResult`, read without running code.

A Prefect cache record is a JSON envelope whose metadata names the serializer
of its result, and Prefect's own reader trusts that name: a record planted with
``"pickle"`` runs the code it carries on the worker that looks its key up, and
one with ``"json"`` imports and builds the classes it names. So:

- The tasks write their results with `EditResultSerializer`: the record's
  ``result`` is the `EditResult` as JSON.
- The tasks look records up through `SegmindResultStore`, which their cache
  policy installs (`tasks.caching`). It parses a record as JSON only
  (`load_record`), refuses any serializer but ours, validates the result as an
  `EditResult`, and serves it only while the output it names is still stored.
  Anything else is a cache miss: the task runs (and finds its stored output
  through the sidecar, or pays for a new one), and its record replaces the
  refused one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
from prefect._internal.compatibility.blocks import call_explicitly_sync_block_method
from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.results import ResultStore
from prefect.serializers import Serializer
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from segmind_core.generation import EditResult

__all__ = [
    "SERIALIZER_TYPE",
    "EditResultSerializer",
    "RecordedTaskError",
    "RefusedRecordError",
    "SegmindResultStore",
    "load_record",
]

SERIALIZER_TYPE = "segmind-edit-result"
"""The serializer a Segmind cache record must name; Prefect dispatches on it."""

_module_logger = logging.getLogger(__name__)


class RefusedRecordError(ValueError):
    """A cache record that is not JSON of an `EditResult` written by `EditResultSerializer`."""


class RecordedTaskError(RuntimeError):
    """A failed task run's error as read back from its result record (type name and message)."""


class EditResultSerializer(Serializer):
    """Prefect ``result_serializer`` of the endpoint tasks: `EditResult` as JSON.

    A failed task run's error (Prefect writes it too) is kept as its type name
    and message; it comes back as a `RecordedTaskError`, never as the original
    class, and is never served from the cache.
    """

    type: str = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        """``obj`` (an `EditResult` or an exception) as JSON bytes."""
        if isinstance(obj, EditResult):
            return obj.model_dump_json().encode()
        if isinstance(obj, BaseException):
            return _Failure(error=type(obj).__name__, message=str(obj)).model_dump_json().encode()
        raise TypeError(f"a Segmind task result is an EditResult, not {type(obj).__name__}")

    def loads(self, blob: bytes) -> Any:
        """The `EditResult` (or `RecordedTaskError`) in ``blob``; nothing else is built."""
        try:
            return EditResult.model_validate_json(blob)
        except ValidationError:
            failure = _Failure.model_validate_json(blob)
            return RecordedTaskError(f"{failure.error}: {failure.message}")


class _Failure(BaseModel):
    error: str
    message: str


class _Envelope(BaseModel):
    """A record as Prefect writes it, with nothing interpreted yet."""

    metadata: dict[str, Any]
    result: str


def load_record(data: bytes) -> ResultRecord[EditResult]:
    """The cache record in ``data``, read as JSON only: no import, no pickle, no hook.

    Raises:
        RefusedRecordError: when ``data`` is not a record that `EditResultSerializer`
            wrote of an `EditResult` (another serializer, another shape, bad JSON).
    """
    try:
        envelope = _Envelope.model_validate_json(data)
    except ValidationError:
        raise RefusedRecordError("not a JSON cache record") from None
    serializer = envelope.metadata.get("serializer")
    if serializer != {"type": SERIALIZER_TYPE}:
        named = serializer.get("type") if isinstance(serializer, dict) else serializer
        raise RefusedRecordError(f"its serializer is {str(named)[:40]!r}, not {SERIALIZER_TYPE!r}")
    try:
        metadata = ResultRecordMetadata.model_validate(envelope.metadata)
        result = EditResult.model_validate_json(envelope.result)
    except ValidationError:
        raise RefusedRecordError("its metadata or result is not valid") from None
    return ResultRecord(metadata=metadata, result=result)


class SegmindResultStore(ResultStore):
    """A `ResultStore` that serves only records `load_record` accepts, of outputs still stored.

    Prefect asks ``exists`` (under the key's lock) and then ``read``; ``read``
    returns the very record ``exists`` checked, so the storage is read once and
    a record swapped in between is never deserialized.
    """

    _still_stored: Callable[[EditResult], bool] | None = PrivateAttr(default=None)
    _checked: dict[str, ResultRecord[EditResult]] = PrivateAttr(default_factory=dict)

    @classmethod
    def guarding(
        cls, store: ResultStore, still_stored: Callable[[EditResult], bool]
    ) -> SegmindResultStore:
        """``store`` (same storage, serializer, locks), reading records as described above.

        Args:
            store: The task run's result store, as Prefect made it.
            still_stored: Whether the output an `EditResult` names is still in storage.
        """
        guarded = cls(**{name: getattr(store, name) for name in ResultStore.model_fields})
        guarded._still_stored = still_stored
        return guarded

    def exists(self, key: str) -> bool:
        """Whether ``key`` has a servable record: ours, unexpired, its output still stored."""
        record = self._servable(key)
        if record is None:
            self._checked.pop(key, None)
            return False
        self._checked[key] = record
        return True

    def read(self, key: str, holder: str | None = None) -> ResultRecord[Any]:
        """The record `exists` accepted for ``key`` (read and checked again if none)."""
        record = self._checked.pop(key, None) or self._servable(key)
        if record is None:
            raise RefusedRecordError(f"no servable Segmind cache record under {key!r}")
        record.mark_persisted()
        return record

    async def aexists(self, key: str) -> bool:
        """Async `exists`."""
        return await anyio.to_thread.run_sync(self.exists, key)

    async def aread(self, key: str, holder: str | None = None) -> ResultRecord[Any]:
        """Async `read`."""
        return await anyio.to_thread.run_sync(self.read, key, holder)

    def _servable(self, key: str) -> ResultRecord[EditResult] | None:
        if self.result_storage is None or self.metadata_storage is not None:
            return None  # the tasks keep whole records in their result storage
        try:
            # How Prefect itself reads a record (sync, whatever the block).
            data = call_explicitly_sync_block_method(self.result_storage, "read_path", (key,), {})
        except Exception:  # absent or unreadable: a miss, as in Prefect
            return None
        try:
            record = load_record(data)
        except RefusedRecordError as exc:
            _logger().warning("Cache record %s ignored (%s); the task runs instead.", key, exc)
            return None
        expiration = record.metadata.expiration
        if expiration is not None and expiration <= datetime.now(UTC):
            return None
        try:
            stored = self._still_stored is None or self._still_stored(record.result)
        except Exception:  # the storage cannot say: not served
            stored = False
        if not stored:
            _logger().info(
                "Cache record %s names %s, which is no longer stored; the task runs again.",
                key,
                record.result.url,
            )
            return None
        return record


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return _module_logger
