"""The shared limit on Segmind calls: one slot of a Prefect global concurrency limit per call.

Every endpoint task holds a slot of the credentials block's limit
(`SegmindCredentials.resolved_concurrency_limit`: its ``concurrency_limit``,
else ``SEGMIND_CONCURRENCY_LIMIT``, else ``segmind``) around each HTTP
attempt, so all workers of one Prefect server together keep at most that many calls in
flight. With a Prefect server configured (``PREFECT_API_URL``) the limit must
exist: a missing one is an error that says how to create it, never a silent
pass. Without a server (Prefect's temporary one in a single process), there is
nothing to share and no slot is taken.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from blocks.segmind_credentials import DEFAULT_CONCURRENCY_LIMIT
from tasks.shared_slots import MissingConcurrencyLimitError, SharedSlots, missing_limit_message

__all__ = [
    "DEFAULT_LIMIT",
    "MissingConcurrencyLimitError",
    "ensure_concurrency_limit",
    "require_concurrency_limit",
    "segmind_call_slot",
    "shared_slots",
]

DEFAULT_LIMIT = DEFAULT_CONCURRENCY_LIMIT


def segmind_call_slot(limit: str | None) -> Callable[[], AbstractContextManager[object]]:
    """What the client holds around each attempt: a slot of ``limit``, or nothing."""
    if not limit or not PREFECT_API_URL.value():
        return nullcontext
    slots = shared_slots(limit)
    return slots.hold


def require_concurrency_limit(limit: str | None) -> None:
    """Fail now, before anything is paid, when the calls would need a limit that is missing.

    Raises:
        MissingConcurrencyLimitError: a Prefect server is configured and has no ``limit``.
    """
    if not limit or not PREFECT_API_URL.value():
        return
    from prefect import get_client

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            raise MissingConcurrencyLimitError(missing_limit_message(limit)) from None


_registry: dict[tuple[str, str], SharedSlots] = {}
_registry_lock = threading.Lock()


def shared_slots(limit: str) -> SharedSlots:
    """This process's `SharedSlots` for ``limit`` on the configured Prefect server.

    One per process and limit, so that every task run of the process queues in
    the same line (see `tasks.shared_slots` for why that keeps slots busy).
    """
    key = (str(PREFECT_API_URL.value()), limit)
    with _registry_lock:
        if key not in _registry:
            _registry[key] = SharedSlots(limit)
        return _registry[key]


def ensure_concurrency_limit(
    client: SyncPrefectClient,
    slots: int,
    *,
    name: str = DEFAULT_LIMIT,
    rate_per_minute: float | None = None,
) -> str:
    """Create the global limit ``name`` with ``slots``, or update it; says what it did.

    ``rate_per_minute`` also makes slots decay at that rate, which caps calls per
    minute across all workers.
    """
    decay = 0.0 if rate_per_minute is None else rate_per_minute / 60
    try:
        existing = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=slots, slot_decay_per_second=decay)
        )
        return f"concurrency limit {name}: created with {slots} slots"
    if existing.limit == slots and (existing.slot_decay_per_second or 0.0) == decay:
        return f"concurrency limit {name}: already {slots} slots"
    client.update_global_concurrency_limit(
        name, GlobalConcurrencyLimitUpdate(limit=slots, slot_decay_per_second=decay)
    )
    return f"concurrency limit {name}: set to {slots} slots"
