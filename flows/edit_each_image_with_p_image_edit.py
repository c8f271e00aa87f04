"""Apply one p-image-edit prompt to each image of a list, a few calls at a time."""

from __future__ import annotations

from decimal import Decimal
from pathlib import PurePosixPath
from typing import Annotated, Any
from urllib.parse import urlsplit

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from blocks.object_storage import ObjectStorage
from blocks.segmind_credentials import SegmindCredentials
from flows.common import (
    MAX_CONCURRENCY,
    SEED_MAX,
    TASK_RUNNER_THREADS,
    endpoint_caller,
    refuse_inline_blocks,
    run_file_key,
    run_rows,
)
from segmind_core.batch import RowResult, RowStatus
from segmind_core.contract import PImageEditAspectRatio
from segmind_core.manifest import check_rows
from segmind_core.outputs import sanitise_key_part
from tasks.artifacts import publish_results

__all__ = ["PImageEditOutcome", "edit_each_image_with_p_image_edit", "output_names"]


class PImageEditOutcome(BaseModel):
    """One result per input image, and the money.

    Attributes:
        results: In the order of ``images``: status, output URL or error, cost.
        results_url: The same as JSONL, next to the outputs.
        paid_usd: What the run paid.
        saved_usd: List price of the images served from the cache.
    """

    results: list[RowResult]
    results_url: str
    paid_usd: Decimal
    saved_usd: Decimal


def output_names(images: list[str]) -> list[str]:
    """An output name per image: its file name's stem, made unique with a counter."""
    names: list[str] = []
    for image in images:
        stem = PurePosixPath(urlsplit(image).path).stem or "image"
        try:
            base = sanitise_key_part(stem)
        except ValueError:
            base = "image"
        name, counter = base, 1
        while name in names:  # a.png, a.png, a-2.png: a, a-2, a-2-2
            counter += 1
            name = f"{base}-{counter}"
        names.append(name)
    return names


@flow(
    name="edit-each-image-with-p-image-edit",
    task_runner=ThreadPoolTaskRunner(max_workers=TASK_RUNNER_THREADS),  # type: ignore[arg-type]
)
def edit_each_image_with_p_image_edit(
    prompt: str,
    images: Annotated[list[str], Field(min_length=1)],
    reference_images: Annotated[list[str] | None, Field(max_length=4)] = None,
    aspect_ratio: PImageEditAspectRatio = PImageEditAspectRatio.MATCH_INPUT_IMAGE,
    disable_safety_checker: bool = False,
    seed: Annotated[int | None, Field(ge=0, le=SEED_MAX)] = None,
    max_concurrency: Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)] = 4,
    storage: ObjectStorage | None = None,
    credentials: SegmindCredentials | None = None,
    refresh_cache: bool = False,
) -> PImageEditOutcome | State[Any]:
    """Edit every image of a list with the same Pruna p-image-edit prompt ($0.01 each).

    Args:
        prompt: The edit, e.g. "make it a vintage travel poster".
        images: The images to edit, one output each, JPEG, PNG, GIF or WEBP: https URLs,
            s3:// URLs or paths on the worker, e.g. ["examples/photos/astronaut.jpg"].
        reference_images: Up to 4 more images sent with every call (a logo, a style), the
            same kinds, e.g. ["s3://my-bucket/brand/logo.png"].
        aspect_ratio: Output ratio; match_input_image follows each image.
        disable_safety_checker: Turn Segmind's safety checker off.
        seed: 0 to 999999999999999; fixes the results and makes reruns free (cached); drawn
            per image when empty.
        max_concurrency: Calls in flight at most, 1 to 64.
        storage: Where images, sidecars and cache records go; empty means ./outputs.
        credentials: Segmind credentials block; empty means SEGMIND_API_KEY and SEGMIND_BASE_URL.
        refresh_cache: Generate again even when a cached result exists (pays again).

    Returns:
        One result per image; a Failed state (the others still stored) when any failed.
    """
    logger = get_run_logger()
    refuse_inline_blocks(storage=storage, credentials=credentials)
    storage = storage if storage is not None else ObjectStorage()
    store = storage.get_store()
    params: dict[str, Any] = {
        "aspect_ratio": aspect_ratio.value,
        "disable_safety_checker": disable_safety_checker,
    }
    if seed is not None:
        params["seed"] = seed
    rows = [
        {
            "id": name,
            "endpoint": "p-image-edit",
            "prompt": prompt,
            "images": [image, *(reference_images or [])],
            "params": params,
        }
        for name, image in zip(output_names(images), images, strict=True)
    ]
    checked = check_rows(rows, source="images")
    report = run_rows(
        checked.rows,
        endpoint_caller(storage, credentials, refresh_cache=refresh_cache),
        rejected=checked.rejected,
        max_concurrency=max_concurrency,
    )
    results_url = store.write(run_file_key("-results.jsonl"), report.results_jsonl())
    publish_results(report, results_url=results_url, store=store)
    outcome = PImageEditOutcome(
        results=report.results,
        results_url=results_url,
        paid_usd=report.paid_usd,
        saved_usd=report.saved_usd,
    )
    logger.info("%s. Results: %s", report.summary(), results_url)
    failed = [r for r in report.results if r.status is not RowStatus.SUCCEEDED]
    if failed:
        reasons = "; ".join(f"{r.id}: {r.error}" for r in failed[:5])
        return Failed(
            message=f"{len(failed)} of {len(images)} image(s) failed: {reasons}", data=outcome
        )
    return outcome
