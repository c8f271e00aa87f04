"""Prepare a Prefect server for the deployments; safe to run again and again.

``python -m deployments.setup`` (with ``PREFECT_API_URL`` set) makes sure that:

- the process work pool `WORK_POOL` exists with the locked job template of
  `deployments.work_pool_template` (a pool made earlier from Prefect's default
  template is converged to it, and the job variables it no longer accepts are
  dropped from the pool's deployments): a run's job variables cannot set the
  worker's environment, command or working folder;
- the block types `SegmindCredentials` and `ObjectStorage` are registered;
- the block documents ``segmind-credentials`` and ``segmind-outputs`` are saved
  (the key from ``SEGMIND_API_KEY`` when set, else read on the worker; the
  Segmind server always named, from ``--segmind-base-url``, else
  ``SEGMIND_BASE_URL``, else Segmind's, so a worker's environment cannot send
  the key elsewhere; the storage URL from ``--storage-url``; S3 secrets are
  never saved here: the workers' AWS environment supplies them);
- the global concurrency limit ``segmind`` exists with ``--concurrency`` slots
  (``SEGMIND_CONCURRENCY``, 4 by default): Segmind calls in flight;
- with ``--rate-per-minute R``, the rate limit ``segmind-rate`` exists too (one
  slot decaying at R/60 per second) and the credentials block names it, so
  calls start at most about R times a minute across every worker;
- ``--point-deployments-at-blocks`` (after ``prefect deploy --all``) does only
  this: the deployments' ``storage`` and ``credentials`` default to those two
  blocks, so a scheduled run or a UI quick run writes to the bucket with the
  saved key.

Running it again changes only what differs from what was asked.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass

from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import (
    DeploymentUpdate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
    WorkPoolUpdate,
)
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectNotFound

from blocks.object_storage import ObjectStorage
from blocks.segmind_credentials import BASE_URL_ENV, SegmindCredentials
from deployments.definitions import DEPLOYMENTS, WORK_POOL
from deployments.work_pool_template import (
    REFUSED_VARIABLES,
    SAFE_VARIABLES,
    locked_base_job_template,
)
from segmind_core.client import DEFAULT_BASE_URL
from segmind_core.fetch import display_url
from tasks.concurrency import DEFAULT_LIMIT, ensure_concurrency_limit, ensure_rate_limit

__all__ = [
    "CONCURRENCY_LIMIT",
    "CREDENTIALS_BLOCK",
    "STORAGE_BLOCK",
    "SetupSettings",
    "main",
    "point_deployments_at_blocks",
    "set_up",
]

CONCURRENCY_LIMIT = DEFAULT_LIMIT
CREDENTIALS_BLOCK = "segmind-credentials"
STORAGE_BLOCK = "segmind-outputs"
DEFAULT_CONCURRENCY = 4


@dataclass(frozen=True)
class SetupSettings:
    """What to create.

    Attributes:
        concurrency: Slots of the ``segmind`` limit: Segmind calls in flight across
            every worker (see the README for a value per Segmind tier).
        rate_per_minute: When set, a rate limit ``<concurrency_limit>-rate`` caps
            calls per minute across every worker (Segmind's free tier allows about
            5, Pro about 50).
        storage_url: Base URL of the ``segmind-outputs`` block.
        storage_endpoint_url: S3-compatible endpoint of that block, if not AWS.
        segmind_base_url: Segmind server the ``segmind-credentials`` block names
            (always saved: a worker's ``SEGMIND_BASE_URL`` cannot redirect the key).
        work_pool: Name of the process work pool.
        concurrency_limit: Name of the global concurrency limit (the credentials
            block's ``concurrency_limit`` must name the same).
        point_deployments_at_blocks: Only make the two saved blocks the default
            ``storage`` and ``credentials`` of this project's deployments (which
            must exist); nothing else is changed.
        reset_held_slots: Count the limits' slots as free: for a server that just
            started with nothing running (Prefect keeps leases in memory, so after a
            restart a slot held before it stays counted with no lease to end it).
    """

    concurrency: int = DEFAULT_CONCURRENCY
    rate_per_minute: float | None = None
    storage_url: str = "outputs"
    storage_endpoint_url: str | None = None
    segmind_base_url: str = DEFAULT_BASE_URL
    work_pool: str = WORK_POOL
    concurrency_limit: str = CONCURRENCY_LIMIT
    point_deployments_at_blocks: bool = False
    reset_held_slots: bool = False

    @property
    def rate_limit_name(self) -> str:
        """The rate limit's name: the concurrency limit's, plus ``-rate``."""
        return f"{self.concurrency_limit}-rate"


def set_up(settings: SetupSettings) -> list[str]:
    """Create or update everything; returns one line per thing, saying what was done."""
    done: list[str] = []
    if settings.point_deployments_at_blocks:
        with get_client(sync_client=True) as client:
            return point_deployments_at_blocks(client)
    with get_client(sync_client=True) as client:
        done.append(_work_pool(client, settings.work_pool))
        done.extend(_drop_refused_job_variables(client, settings.work_pool))
        done.append(
            ensure_concurrency_limit(client, settings.concurrency, name=settings.concurrency_limit)
        )
        if settings.rate_per_minute is not None:
            done.append(
                ensure_rate_limit(client, settings.rate_per_minute, name=settings.rate_limit_name)
            )
        if settings.reset_held_slots:
            for name in (settings.concurrency_limit, settings.rate_limit_name):
                with suppress(ObjectNotFound):
                    client.update_global_concurrency_limit(
                        name, GlobalConcurrencyLimitUpdate(active_slots=0)
                    )
            done.append(f"concurrency limit {settings.concurrency_limit}: no slot held")
    for block_type in (SegmindCredentials, ObjectStorage):
        block_type.register_type_and_schema()
    done.append(
        f"block types {SegmindCredentials.get_block_type_slug()}, "
        f"{ObjectStorage.get_block_type_slug()}: registered"
    )
    api_key = os.environ.get("SEGMIND_API_KEY") or None
    SegmindCredentials(
        api_key=api_key,
        base_url=settings.segmind_base_url,
        concurrency_limit=settings.concurrency_limit,
        rate_limit=None if settings.rate_per_minute is None else settings.rate_limit_name,
    ).save(CREDENTIALS_BLOCK, overwrite=True)
    done.append(
        f"block {CREDENTIALS_BLOCK}: saved (server {display_url(settings.segmind_base_url)}, "
        + ("with the key from SEGMIND_API_KEY" if api_key else "no key: read on the worker")
        + ")"
    )
    ObjectStorage(base_url=settings.storage_url, endpoint_url=settings.storage_endpoint_url).save(
        STORAGE_BLOCK, overwrite=True
    )
    done.append(f"block {STORAGE_BLOCK}: saved ({settings.storage_url})")
    return done


def point_deployments_at_blocks(client: SyncPrefectClient) -> list[str]:
    """Make the saved blocks the default ``storage`` and ``credentials`` of our deployments.

    The defaults are block references (``{"$ref": {"block_document_id": ...}}``,
    what the UI's block picker sends), never the blocks' contents: no secret
    enters a deployment's parameters.
    """
    references = {}
    for parameter, block_type, name in (
        ("storage", ObjectStorage, STORAGE_BLOCK),
        ("credentials", SegmindCredentials, CREDENTIALS_BLOCK),
    ):
        document = client.read_block_document_by_name(
            name, block_type_slug=block_type.get_block_type_slug(), include_secrets=False
        )
        references[parameter] = {"$ref": {"block_document_id": str(document.id)}}
    ours = {definition.entrypoint for definition in DEPLOYMENTS}
    done = []
    for deployment in _all_deployments(client):
        if deployment.entrypoint not in ours:
            continue
        accepted = (deployment.parameter_openapi_schema or {}).get("properties", {})
        wanted = {k: v for k, v in references.items() if k in accepted}
        if not wanted:
            continue
        if all(deployment.parameters.get(k) == v for k, v in wanted.items()):
            done.append(
                f"deployment {deployment.name} of {deployment.entrypoint}: already uses the blocks"
            )
            continue
        client.update_deployment(
            deployment.id, DeploymentUpdate(parameters={**deployment.parameters, **wanted})
        )
        done.append(f"deployment {deployment.name} of {deployment.entrypoint}: uses the blocks")
    if not done:
        done.append("no deployment of this project yet: run `prefect deploy --all` first")
    return done


def _all_deployments(client: SyncPrefectClient) -> list[DeploymentResponse]:
    """Every deployment on the server, page by page."""
    found: list[DeploymentResponse] = []
    while page := client.read_deployments(limit=200, offset=len(found)):
        found.extend(page)
        if len(page) < 200:
            break
    return found


def _work_pool(client: SyncPrefectClient, name: str) -> str:
    """Create the process pool with the locked template, or converge an existing one to it."""
    locked = locked_base_job_template()
    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=locked))
        return f"work pool {name}: created (process, locked job template)"
    if pool.type != "process":
        raise SystemExit(f"work pool {name} exists with type {pool.type!r}, not 'process'")
    if pool.base_job_template == locked:
        return f"work pool {name}: already there (locked job template)"
    client.update_work_pool(name, WorkPoolUpdate(base_job_template=locked))
    return (
        f"work pool {name}: job template locked (a run's job variables can no longer set "
        + ", ".join(REFUSED_VARIABLES)
        + ")"
    )


def _drop_refused_job_variables(client: SyncPrefectClient, pool: str) -> list[str]:
    """Remove from the pool's deployments every job variable the locked template refuses.

    The worker would ignore them, but the server checks a deployment's job
    variables with each run's: left in place, they would get every run refused.
    """
    done = []
    for deployment in _all_deployments(client):
        variables = deployment.job_variables or {}
        refused = sorted(key for key in variables if key not in SAFE_VARIABLES)
        if deployment.work_pool_name != pool or not refused:
            continue
        kept = {key: value for key, value in variables.items() if key in SAFE_VARIABLES}
        client.update_deployment(deployment.id, DeploymentUpdate(job_variables=kept))
        done.append(
            f"deployment {deployment.name} of {deployment.entrypoint}: job variables "
            f"{', '.join(refused)} dropped (the work pool refuses them)"
        )
    return done


def _arguments(argv: Sequence[str] | None) -> SetupSettings:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.setup",
        description="Create the work pool, blocks and concurrency limit (idempotent).",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=int(os.environ.get("SEGMIND_CONCURRENCY", DEFAULT_CONCURRENCY)),
        help="Segmind calls in flight across all workers (default SEGMIND_CONCURRENCY or 4)",
    )
    parser.add_argument("--rate-per-minute", type=float, help="also cap calls per minute")
    parser.add_argument("--storage-url", default="outputs", help="base URL of segmind-outputs")
    parser.add_argument("--storage-endpoint-url", help="S3-compatible endpoint, if not AWS")
    parser.add_argument(
        "--segmind-base-url",
        default=os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL,
        help=f"Segmind server the credentials block names (default {BASE_URL_ENV}, "
        f"else {DEFAULT_BASE_URL}; the emulator's URL offline)",
    )
    parser.add_argument("--work-pool", default=WORK_POOL, help="process work pool name")
    parser.add_argument(
        "--limit-name", default=CONCURRENCY_LIMIT, help="global concurrency limit name"
    )
    parser.add_argument(
        "--point-deployments-at-blocks",
        action="store_true",
        help="only this: after `prefect deploy --all`, deployments default to the saved blocks",
    )
    parser.add_argument(
        "--reset-held-slots",
        action="store_true",
        help="count every slot as free (only on a server with nothing running)",
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.rate_per_minute is not None and args.rate_per_minute <= 0:
        parser.error("--rate-per-minute must be above 0")
    if not args.segmind_base_url.strip():
        parser.error("--segmind-base-url must name a server (empty would let workers choose)")
    return SetupSettings(
        concurrency=args.concurrency,
        rate_per_minute=args.rate_per_minute,
        storage_url=args.storage_url,
        storage_endpoint_url=args.storage_endpoint_url,
        segmind_base_url=args.segmind_base_url,
        work_pool=args.work_pool,
        concurrency_limit=args.limit_name,
        point_deployments_at_blocks=args.point_deployments_at_blocks,
        reset_held_slots=args.reset_held_slots,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The ``python -m deployments.setup`` command."""
    for line in set_up(_arguments(argv)):
        print(line)


if __name__ == "__main__":
    main()
