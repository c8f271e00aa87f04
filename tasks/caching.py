"""The cache policy of the endpoint tasks: the request and its service, never the run or key.

The key is the request digest (`segmind_core.request_spec.request_digest`):
slug, canonical parameters and input identities (content digests for local,
bytes and ``s3://`` inputs; the URL for ``http(s)`` inputs), followed by a tag
of the service the credentials call (`credentials_service_tag`), so an image made by one
service is never served to a run against another. A request without
a pinned seed asks for a new variation, so it gets no key and is never served
from the cache.

Used with ``persist_result=True`` and ``result_storage`` set to a saved
`ObjectStorage` block, the records live beside the outputs, so a second
process or worker finds them. With unsaved storage the records live in
Prefect's local storage, shared by every output location, so the key also
names the location: a request paid into one folder or bucket is never
"served" to a run that writes somewhere else (whose outputs would then be
missing there). The policy is configured SERIALIZABLE with an
in-process lock manager: identical requests submitted concurrently in one
flow run wait for the first and are paid once.

Records are looked up through `tasks.result_records.SegmindResultStore`, which
the policy puts in place of the task run's result store when it returns a key:
a record is served only if it is JSON of an `EditResult` written by our
serializer (never a pickle or another serializer a planted record names) and
the image and sidecar it names are still in the task's storage. Anything else
is a miss, and the task runs.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.locking.memory import MemoryLockManager
from prefect.transactions import IsolationLevel

from blocks.object_storage import ObjectStorage
from blocks.segmind_credentials import SegmindCredentials
from segmind_core.client import service_root
from segmind_core.errors import SegmindError
from segmind_core.generation import EditResult
from segmind_core.images import ImageInput, image_identity
from segmind_core.object_store import ObjectStore
from segmind_core.outputs import SIDECAR_SUFFIX, service_tag
from segmind_core.request_spec import RequestSpec, request_digest
from tasks.result_records import SegmindResultStore

__all__ = [
    "SHARED_LOCKS",
    "SegmindRequestCachePolicy",
    "credentials_service_tag",
    "input_identities",
    "request_cache_policy",
    "still_stored_in",
    "storage_location_tag",
]

# One lock manager for every task of the process: locks are keyed by cache key.
SHARED_LOCKS = MemoryLockManager()  # type: ignore[no-untyped-call]


def input_identities(spec: RequestSpec, store: ObjectStore | None) -> dict[str, str | list[str]]:
    """The identity of every image field of ``spec`` (lists stay lists)."""
    identities: dict[str, str | list[str]] = {}
    for name, value in spec.images.items():
        if isinstance(value, str | bytes | os.PathLike | Image.Image):
            identities[name] = image_identity(value, field=name, store=store)
        else:
            items: Sequence[ImageInput] = value
            identities[name] = [
                image_identity(item, field=f"{name}[{i}]", store=store)
                for i, item in enumerate(items)
            ]
    return identities


@dataclass
class SegmindRequestCachePolicy(CachePolicy):
    """Cache key from the request a task is about to make.

    Attributes:
        build_spec: Turns the task's inputs into the `RequestSpec` it will send.
    """

    build_spec: Callable[[dict[str, Any]], RequestSpec] | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        """The request digest, or ``None`` (no caching) for an unpinned seed or bad input.

        Bad input gets no key rather than an error here: the task itself then
        fails with the specific error, before anything is paid.
        """
        if self.build_spec is None:
            return None
        try:
            spec = self.build_spec(inputs)
            if spec.fixed_seed() is None:
                return None
            given = inputs.get("storage")
            storage = given if given is not None else ObjectStorage()
            store = given.get_store() if given is not None else None
            key = "segmind-" + request_digest(spec, input_identities(spec, store))
            key += "-" + credentials_service_tag(inputs.get("credentials") or SegmindCredentials())
            if storage._block_document_id is None:
                key += "-" + storage_location_tag(storage)
        except (SegmindError, ValueError, OSError):
            return None
        # Prefect looks the key up through the task run's store right after this,
        # under the key's lock. Every record passes there, whatever holds it (the
        # block, a .prefect-records folder, Prefect's local storage), so that is
        # where records are read as JSON only and checked against the storage.
        task_ctx.result_store = SegmindResultStore.guarding(
            task_ctx.result_store, still_stored_in(storage.get_store())
        )
        return key


def still_stored_in(store: ObjectStore) -> Callable[[EditResult], bool]:
    """Whether a result's image and sidecar are in ``store`` now (not in a cached listing)."""

    def check(result: EditResult) -> bool:
        if store.url(result.key) != result.url:
            return False  # a record of another storage
        for key in (result.key, result.key + SIDECAR_SUFFIX):
            store.fs.invalidate_cache(posixpath.dirname(store.path(key)))
            if not store.exists(key):
                return False
        return True

    return check


def credentials_service_tag(credentials: SegmindCredentials) -> str:
    """The service ``credentials`` call, as a key part (`segmind_core.outputs.service_tag`).

    An image made by one service is never served from the cache to a run
    against another (the emulator's stand-ins to a run against Segmind, say).
    """
    return service_tag(service_root(credentials.resolved_base_url()))


def storage_location_tag(storage: ObjectStorage) -> str:
    """A short, stable name of where ``storage`` writes (`ObjectStorage.location`)."""
    return hashlib.sha256(storage.location().encode()).hexdigest()[:16]


def request_cache_policy(build_spec: Callable[[dict[str, Any]], RequestSpec]) -> CachePolicy:
    """The policy for one task, serialised per key within a process."""
    return SegmindRequestCachePolicy(build_spec=build_spec).configure(
        isolation_level=IsolationLevel.SERIALIZABLE, lock_manager=SHARED_LOCKS
    )
