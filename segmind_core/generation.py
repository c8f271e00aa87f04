"""One generation from request to stored output: the body of every endpoint task.

Steps, each before any money is spent unless said otherwise:

1. Draw a seed when none is pinned (so the digest, the key and the sidecar all
   name the seed actually used, and a new variation gets a new key).
2. Resolve and check every input image (`resolve_image`).
3. Validate the body against the contract and compute the request digest.
4. Look the output up in the store: an output of the same digest, made by the
   same service, whose image is still there with its sidecar's size, is
   returned as is (a second line of defence behind Prefect's cache, e.g. after
   a crash between writing the image and recording the result). An image paid
   for by an earlier attempt that storage refused (kept in the spill folder) is
   stored now, without calling the service.
5. Call the service (paid), then store the image and, last, its sidecar, with
   retries; if storage refuses them for the whole budget, keep them in the
   spill folder and raise `OutputNotStoredError` naming it.

Nothing paid for is overwritten: a key that holds another service's output,
an unreadable sidecar or an image that is not its sidecar's is left alone, and
the output goes to ``{name}-{service}`` beside it (found again by a re-run).

In queue mode (`SegmindClient` with ``queue=True``) step 5 keeps a pending
record (`OutputStore.save_pending`, at `queue_key`: no date, one per service)
from the moment the queue accepts the request until its output is stored. A
run that finds a pending record for the same output polls that request instead
of paying for a new one: after a crash, a killed worker or a task retry. A
request without a pinned seed takes over the seed of the pending one (same job
id, same parameters otherwise), so it resumes too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from PIL import Image
from pydantic import BaseModel, ConfigDict

from segmind_core.client import QueuedRequest, SegmindClient
from segmind_core.contract import OutputFormat, get_endpoint
from segmind_core.errors import QueuedResultExpiredError, RequestRejectedError, SegmindError
from segmind_core.fetch import display_url
from segmind_core.images import ResolvedImage, resolve_image
from segmind_core.object_store import ObjectStore
from segmind_core.outputs import (
    OutputStore,
    Slot,
    StoredImage,
    output_key,
    queue_key,
    service_tag,
)
from segmind_core.request_spec import RequestSpec, request_digest

__all__ = [
    "EditResult",
    "generate_and_store",
    "resolve_spec_images",
    "seed_for_run",
    "with_drawn_seed",
]

_SEED_BOUND = 2**31
_RECORD_ATTEMPTS = 3
_logger = logging.getLogger(__name__)


class EditResult(BaseModel):
    """A stored output and how it was made: a reference, never the image bytes or the key.

    Attributes:
        slug: Endpoint that made the image.
        url: Where the image is (``s3://...``, a local path, ``memory://...``).
        key: Its key under the store's base URL; the sidecar is ``key + ".json"``.
        sha256: Digest of the image bytes (also in the sidecar).
        format: ``png`` or ``jpg``.
        width: Pixels.
        height: Pixels.
        size_bytes: Length of the image.
        seed: The seed used; drawn and recorded when none was given.
        cost_usd: What the call cost; 0 when the output was found in the store.
        credits_remaining: Balance after the call, when one was made.
        latency_s: Wall time of the call, retries included (0 when found).
        attempts: HTTP attempts (0 when found).
        request_digest: Identity of the request: the cache key and the content address.
        reused: True when the output was found in the store and nothing was paid.
            A result served from Prefect's cache is the record of the run that
            paid (``reused`` False, its cost); the task run's state is then
            ``Cached``, which is how the flows count it as free.
    """

    model_config = ConfigDict(frozen=True)

    slug: str
    url: str
    key: str
    sha256: str
    format: OutputFormat
    width: int
    height: int
    size_bytes: int
    seed: int
    cost_usd: Decimal
    credits_remaining: Decimal | None
    latency_s: float
    attempts: int
    request_digest: str
    reused: bool = False


def resolve_spec_images(
    spec: RequestSpec, store: ObjectStore | None
) -> dict[str, ResolvedImage | list[ResolvedImage]]:
    """Resolve every image field of ``spec`` (lists stay lists)."""
    resolved: dict[str, ResolvedImage | list[ResolvedImage]] = {}
    for name, value in spec.images.items():
        if isinstance(value, str | bytes | os.PathLike | Image.Image):
            resolved[name] = resolve_image(value, field=name, store=store)
        else:
            resolved[name] = [
                resolve_image(item, field=f"{name}[{i}]", store=store)
                for i, item in enumerate(value)
            ]
    return resolved


def _pick(
    resolved: Mapping[str, ResolvedImage | list[ResolvedImage]], attribute: str
) -> dict[str, Any]:
    return {
        name: [getattr(item, attribute) for item in value]
        if isinstance(value, list)
        else getattr(value, attribute)
        for name, value in resolved.items()
    }


def with_drawn_seed(spec: RequestSpec, seed: int | None = None) -> RequestSpec:
    """``spec`` with ``seed`` (else a random one) pinned when it had none (or -1)."""
    if spec.fixed_seed() is not None:
        return spec
    drawn = seed if seed is not None else secrets.randbelow(_SEED_BOUND)
    return replace(spec, params={**spec.params, "seed": drawn})


def seed_for_run(run_id: object) -> int:
    """A seed derived from a run id: the same on every retry of that run, new for the next.

    A task retried by Prefect then asks for the same variation (and, in queue
    mode, finds the request it submitted before) instead of a new one.
    """
    return int.from_bytes(hashlib.sha256(str(run_id).encode()).digest()[:8], "big") % _SEED_BOUND


def generate_and_store(
    client: SegmindClient,
    spec: RequestSpec,
    outputs: OutputStore,
    *,
    flow_name: str,
    day: date,
    job_id: str | None = None,
    run_ids: Mapping[str, str | None] | None = None,
    refresh: bool = False,
    seed: int | None = None,
) -> EditResult:
    """Run ``spec`` unless its output is already stored, and store what was paid for.

    Args:
        client: The Segmind client.
        spec: The request.
        outputs: Where the image and its sidecar go.
        flow_name: First part of the output key.
        day: Second part of the output key.
        job_id: The name of the output; the request digest when not given.
        run_ids: Flow and task run ids for the sidecar.
        refresh: Generate again (and pay again) even when the output is stored.
            A new image whose key is taken (a refresh, or another request under
            the same ``job_id`` on the same day) gets a time-stamped key, so the
            one already paid for is kept.
        seed: The seed to use when ``spec`` pins none; drawn at random when not given.

    Raises:
        InvalidInputImageError: an input cannot be used (nothing was sent).
        InvalidRequestError: the parameters break the contract (nothing was sent).
        OutputNotStoredError: the image was paid for but storage refused it; it is
            kept in the output store's spill folder and the next attempt stores it.
        SegmindError: the call failed.
    """
    seed_drawn = spec.fixed_seed() is None
    spec = with_drawn_seed(spec, seed)
    resolved = resolve_spec_images(spec, outputs.store)
    endpoint = get_endpoint(spec.slug)
    identities = _pick(resolved, "identity")
    request = endpoint.validate({**spec.canonical_params(), **_pick(resolved, "ref")})
    digest = request_digest(spec, identities)
    job_name = job_id or digest
    service = client.service
    # Where the job's pending record lives: no date, and one place per service.
    record_key = queue_key(flow_name, job_name, request.image_format(), service)
    unseeded = _unseeded_digest(spec, identities)

    resume: QueuedRequest | None = None
    pending = outputs.load_pending(record_key) if client.queue else None
    if pending is not None and pending.get("service") == service:
        if pending.get("request_digest") == digest:
            resume = QueuedRequest.from_json(pending)
        elif seed_drawn and pending.get("unseeded_digest") == unseeded:
            # The same request but for its drawn seed: take the pending one's seed over.
            spec = replace(spec, params={**spec.params, "seed": int(pending["seed"])})
            request = endpoint.validate({**spec.canonical_params(), **_pick(resolved, "ref")})
            digest = request_digest(spec, identities)
            resume = QueuedRequest.from_json(pending)

    def stamped() -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return output_key(flow_name, day, f"{job_name}-{stamp}", request.image_format())

    slot = _slot(
        outputs, flow_name, day, job_name, request.image_format(), service, pending, resume
    )
    found = _reusable(slot, digest, service)
    if found is not None and (not refresh or resume is not None):
        if resume is not None:  # stored before the record was removed
            _forget_pending(outputs, record_key, resume.request_id)
        return _reference(spec, found, digest, reused=True)
    key = slot.key if slot.writable else stamped()

    kept = outputs.spilled(service, digest)
    if kept is not None:
        # Paid for by an earlier attempt that storage refused: store it, pay nothing.
        image, sidecar, path = kept
        _logger.info("storing the paid image kept at %s; not calling Segmind", path)
        stored = _store_paid(outputs, service, digest, key, stamped, image, sidecar)
        if resume is not None:
            _forget_pending(outputs, record_key, resume.request_id)
        return _paid(spec, stored, digest)

    if pending is not None and resume is None:
        # Another request's record (the row changed since a crash): keep it, aside.
        outputs.set_pending_aside(record_key, f"superseded by request {digest}")
    submitted: list[QueuedRequest] = []

    def on_submitted(queued: QueuedRequest) -> None:
        submitted.append(queued)
        record = {
            **queued.to_json(),
            "service": service,
            "request_digest": digest,
            "unseeded_digest": unseeded,
            "seed": request.requested_seed(),
            "job_id": job_id,
            "output_key": key,
        }
        for attempt in range(_RECORD_ATTEMPTS):
            try:
                outputs.save_pending(record_key, record)
                return
            except Exception as exc:  # the request is paid for: poll it whatever happens
                if attempt + 1 == _RECORD_ATTEMPTS:
                    _logger.warning(
                        "could not record queued request %s for %s (%s: %s); polling it "
                        "anyway, but a crash now would lose it",
                        queued.request_id,
                        record_key,
                        type(exc).__name__,
                        exc,
                    )
                else:
                    time.sleep(0.2 * (attempt + 1))

    try:
        generated = client.generate(spec.slug, request, on_submitted=on_submitted, resume=resume)
    except (QueuedResultExpiredError, RequestRejectedError) as error:
        _settle_failed_record(outputs, record_key, resume or next(iter(submitted), None), error)
        raise
    sidecar = {
        "slug": spec.slug,
        "service": service,
        "request_digest": digest,
        "job_id": job_id,
        "parameters": spec.canonical_params(),
        "inputs": _pick(resolved, "source"),
        "input_identities": {
            name: [_recorded(i) for i in value] if isinstance(value, list) else _recorded(value)
            for name, value in identities.items()
        },
        "seed": generated.seed,
        "cost_usd": str(generated.cost_usd),
        "credits_remaining": (
            None if generated.credits_remaining is None else str(generated.credits_remaining)
        ),
        "latency_s": round(generated.latency_s, 3),
        "attempts": generated.attempts,
        "request_id": generated.request_id,
        **({"converted_from": generated.converted_from} if generated.converted_from else {}),
        "flow_name": flow_name,
        **{name: value for name, value in (run_ids or {}).items()},
    }
    stored = _store_paid(outputs, service, digest, key, stamped, generated.image, sidecar)
    queued = resume or next(iter(submitted), None)
    if queued is not None:
        _forget_pending(outputs, record_key, queued.request_id)
    return _reference(spec, stored, digest, reused=False).model_copy(
        update={
            "cost_usd": generated.cost_usd,
            "credits_remaining": generated.credits_remaining,
            "latency_s": generated.latency_s,
            "attempts": generated.attempts,
        }
    )


def _slot(
    outputs: OutputStore,
    flow_name: str,
    day: date,
    name: str,
    output_format: OutputFormat,
    service: str,
    pending: Mapping[str, Any] | None,
    resume: QueuedRequest | None,
) -> Slot:
    """Where this job's output is, or goes: its own key, or its service's beside it.

    The job's key (or, when resuming, the key its pending record names) unless
    that holds what this service cannot use or overwrite: another service's
    output, an unreadable sidecar, an image that is not its sidecar's. Then the
    key that names the service too (``{name}-{service}``), so a re-run finds it.
    """
    key = output_key(flow_name, day, name, output_format)
    if resume is not None and pending is not None and pending.get("output_key"):
        key = str(pending["output_key"])
    slot = outputs.probe(key)
    if slot.writable or (slot.made_by(service) and slot.intact):
        return slot
    beside = f"{name}-{service_tag(service)}"
    return outputs.probe(output_key(flow_name, day, beside, output_format))


def _reusable(slot: Slot, digest: str, service: str) -> StoredImage | None:
    """This request's output in ``slot`` if ``service`` made it and its image is in place."""
    stored = slot.stored
    if stored is None or not (slot.intact and slot.made_by(service)):
        return None
    return stored if stored.metadata.get("request_digest") == digest else None


def _store_paid(
    outputs: OutputStore,
    service: str,
    digest: str,
    key: str,
    stamped: Callable[[], str],
    image: bytes,
    sidecar: Mapping[str, Any],
) -> StoredImage:
    """Store a paid image under ``key`` (a new key if another run took it meanwhile).

    Storage errors are retried (`StorageRetry`); when they outlast the budget the
    image is kept in the spill folder and `OutputNotStoredError` says where. Once
    stored, a kept copy is removed.

    Raises:
        OutputNotStoredError: storage refused the image for the whole budget.
    """
    try:
        if not outputs.probe(key).writable:  # stored meanwhile by another run: keep it
            key = stamped()
        stored = outputs.save(key, image, sidecar)
    except Exception as exc:
        raise outputs.not_stored(service, digest, image, sidecar, key, exc) from exc
    outputs.drop_spilled(service, digest)
    return stored


def _forget_pending(outputs: OutputStore, record_key: str, request_id: str) -> None:
    """Remove a stored request's pending record; a failure only leaves a stale record."""
    try:
        outputs.clear_pending(record_key, request_id)
    except Exception as exc:  # the output is stored: a later run clears the record
        _logger.warning(
            "could not remove the pending record of request %s (%s: %s)",
            request_id,
            type(exc).__name__,
            exc,
        )


def _settle_failed_record(
    outputs: OutputStore, record_key: str, polled: QueuedRequest | None, error: SegmindError
) -> None:
    """After an expired or failed queued request, set its record aside or say how to.

    A request that expired or failed can never complete: its record goes aside so
    the next run submits again instead of polling it. Only its own record: another
    run may have recorded its request since.
    """
    record = outputs.load_pending(record_key) if polled is not None else None
    if polled is None or not record or record.get("request_id") != polled.request_id:
        return
    if isinstance(error, QueuedResultExpiredError) or error.status == 422:
        outputs.set_pending_aside(record_key, error.message)
    elif error.status == 404:
        # Unknown but recent: another key, say. Paying again is the user's call, so the
        # record stays and the message names it.
        error.message += (
            f". Its pending record is kept at {outputs.pending_url(record_key)}: "
            "delete it to submit the request again (and pay again)"
        )


def _recorded(identity: str) -> str:
    """An input identity as a sidecar records it: a URL without its query string.

    Presigned signatures and tokens live in the query; a digest stands in for it.
    """
    parts = urlsplit(identity)
    if parts.scheme not in ("http", "https") or not (parts.query or parts.username):
        return identity
    query = hashlib.sha256(parts.query.encode()).hexdigest()[:16]
    return f"{display_url(identity).removesuffix('?...')}?sha256={query}"


def _unseeded_digest(spec: RequestSpec, identities: Mapping[str, Any]) -> str:
    """The request digest with the seed left out: what a drawn seed must not change."""
    params = {name: value for name, value in spec.params.items() if name != "seed"}
    return request_digest(replace(spec, params=params), identities)


def _paid(spec: RequestSpec, stored: StoredImage, digest: str) -> EditResult:
    """The result of an image paid for by an earlier attempt, from its sidecar."""
    meta = stored.metadata
    credits = meta.get("credits_remaining")
    return _reference(spec, stored, digest, reused=False).model_copy(
        update={
            "cost_usd": Decimal(str(meta.get("cost_usd", "0"))),
            "credits_remaining": None if credits is None else Decimal(str(credits)),
            "latency_s": float(meta.get("latency_s", 0.0)),
            "attempts": int(meta.get("attempts", 0)),
        }
    )


def _reference(spec: RequestSpec, stored: StoredImage, digest: str, *, reused: bool) -> EditResult:
    return EditResult(
        slug=spec.slug,
        url=stored.url,
        key=stored.key,
        sha256=stored.sha256,
        format=stored.format,
        width=stored.width,
        height=stored.height,
        size_bytes=stored.size_bytes,
        seed=int(stored.metadata["seed"]),
        cost_usd=Decimal("0"),
        credits_remaining=None,
        latency_s=0.0,
        attempts=0,
        request_digest=digest,
        reused=reused,
    )
