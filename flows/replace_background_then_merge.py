"""Replace a product photo's background, then merge it with a second image.

Step 1, flux-kontext-pro: the background of ``product_image`` is replaced as
``background_prompt`` says. Step 2, multi-image-kontext-pro: that result and
``second_image`` are merged as ``merge_prompt`` says. Both images go to the
storage block with their sidecars, and a page showing inputs, intermediate
and output side by side is written beside them; the run's Markdown artifact
shows the same four images as thumbnails.
"""

from __future__ import annotations

import posixpath
from decimal import Decimal
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from blocks.object_storage import ObjectStorage
from blocks.segmind_credentials import SegmindCredentials
from flows.common import SEED_MAX, paid_in_this_run, record_storage, refuse_inline_blocks
from segmind_core.contract import FluxAspectRatio, OutputFormat
from segmind_core.images import read_image_input
from segmind_core.object_store import ObjectStore
from segmind_core.outputs import sanitise_key_part
from segmind_core.report import ReportImage, render_report_page
from tasks.artifacts import publish_outputs
from tasks.segmind_tasks import (
    EditResult,
    edit_image_with_kontext_pro,
    merge_images_with_kontext_pro,
)

__all__ = ["ReplaceBackgroundThenMergeOutcome", "replace_background_then_merge"]

TITLE = "Replace background, then merge"
BACKGROUND_TITLE = "Background replaced"
MERGED_TITLE = "Merged with input B"


class ReplaceBackgroundThenMergeOutcome(BaseModel):
    """Where the run's images and page are, and what it cost.

    Attributes:
        background_replaced: The intermediate image.
        merged: The final image.
        page: The page that shows inputs, intermediate and output.
        seeds: The seed of each step, to reproduce it.
        cost_usd: What this run paid (0 for steps served from the cache).
    """

    background_replaced: EditResult
    merged: EditResult
    page: str
    seeds: dict[str, int]
    cost_usd: Decimal


def _caption(result: EditResult) -> str:
    paid = "from cache, 0.00 USD" if result.reused else f"{result.cost_usd:.2f} USD"
    return (
        f"{result.slug}, {result.width}x{result.height} {result.format.value}, "
        f"seed {result.seed}, {paid}"
    )


def _link(store: ObjectStore, key: str, page_key: str) -> str:
    """How the page refers to ``key``: a presigned URL on S3, a relative path elsewhere."""
    presigned = store.presigned_url(key)
    if presigned is not None:
        return presigned
    return posixpath.relpath(key, posixpath.dirname(page_key))


def _result_link(store: ObjectStore, result: EditResult, page_key: str) -> str:
    """Link to a result, which the cache may have served from another storage.

    The cache key is the request alone (never the storage), so an identical
    request made earlier into other storage is served from there, not paid again.
    """
    if store.url(result.key) == result.url:
        return _link(store, result.key, page_key)
    return result.url


@task(name="write-run-page", cache_policy=NO_CACHE)
def write_run_page(
    storage: ObjectStorage,
    product_image: str,
    second_image: str,
    background: EditResult,
    merged: EditResult,
) -> str:
    """Copy the inputs beside the outputs, write the page and publish the artifact.

    Returns the page's URL.
    """
    store = storage.get_store()
    folder = posixpath.dirname(merged.key)
    run = sanitise_key_part(f"{flow_run.get_name() or 'local'}-{str(flow_run.get_id())[:8]}")
    page_key = f"{folder}/runs/{run}.html"
    panels = []
    inputs = []
    for title, source, field in (
        ("Input A (product)", product_image, "product_image"),
        ("Input B", second_image, "second_image"),
    ):
        data = read_image_input(source, field=field, store=store)
        input_key = f"{folder}/runs/{run}-{field}{Path(source).suffix.lower() or '.img'}"
        inputs.append((title, store.write(input_key, data)))
        panels.append(ReportImage(title, _link(store, input_key, page_key), source))
    panels.append(
        ReportImage(BACKGROUND_TITLE, _link(store, background.key, page_key), _caption(background))
    )
    panels.append(
        ReportImage(MERGED_TITLE, _result_link(store, merged, page_key), _caption(merged))
    )
    page = render_report_page(TITLE, panels)
    page_url = store.write(page_key, page.encode())
    steps = [(BACKGROUND_TITLE, background), (MERGED_TITLE, merged)]
    publish_outputs(TITLE, steps, store=store, inputs=inputs)
    return page_url


@flow(name="replace-background-then-merge")
def replace_background_then_merge(
    product_image: str,
    second_image: str,
    background_prompt: str,
    merge_prompt: str,
    aspect_ratio: FluxAspectRatio = FluxAspectRatio.MATCH_INPUT_IMAGE,
    output_format: OutputFormat = OutputFormat.PNG,
    seed: Annotated[int | None, Field(ge=0, le=SEED_MAX)] = None,
    storage: ObjectStorage | None = None,
    credentials: SegmindCredentials | None = None,
    refresh_cache: bool = False,
) -> ReplaceBackgroundThenMergeOutcome:
    """Replace the background of a product photo, then merge it with a second image.

    Args:
        product_image: The photo whose background is replaced, a JPEG, PNG, GIF or WEBP: an
            https URL, an s3:// URL or a path on the worker, e.g. examples/photos/coffee.jpg.
        second_image: The image merged with the result, the same kinds, e.g.
            examples/photos/chelsea.jpg.
        background_prompt: The new background, e.g. "on a marble counter at sunrise".
        merge_prompt: How to combine the two, e.g. "the cat sitting next to the cup".
        aspect_ratio: Ratio of both outputs; match_input_image follows the product photo.
        output_format: ``png`` or ``jpg`` for both outputs.
        seed: 0 to 999999999999999; fixes both steps and makes them cacheable; drawn and
            recorded when empty.
        storage: Where images, sidecars, cache records and the page go; empty means ./outputs.
        credentials: Segmind credentials block; empty means SEGMIND_API_KEY and SEGMIND_BASE_URL.
        refresh_cache: Generate again even when a cached result exists (pays again).

    Returns:
        The two stored images, the page, the seeds and what the run paid.
    """
    logger = get_run_logger()
    refuse_inline_blocks(storage=storage, credentials=credentials)
    storage = storage if storage is not None else ObjectStorage()
    records = record_storage(storage)
    background_state = edit_image_with_kontext_pro.with_options(
        result_storage=records, refresh_cache=refresh_cache
    )(
        prompt=background_prompt,
        image=product_image,
        aspect_ratio=aspect_ratio,
        output_format=output_format,
        seed=seed,
        credentials=credentials,
        storage=storage,
        return_state=True,
    )
    background = paid_in_this_run(background_state)
    merged_state = merge_images_with_kontext_pro.with_options(
        result_storage=records, refresh_cache=refresh_cache
    )(
        prompt=merge_prompt,
        image_1=background.url,
        image_2=second_image,
        aspect_ratio=aspect_ratio,
        output_format=output_format,
        seed=seed,
        credentials=credentials,
        storage=storage,
        return_state=True,
    )
    merged = paid_in_this_run(merged_state)
    page = write_run_page(storage, product_image, second_image, background, merged)
    cost = background.cost_usd * (not background.reused) + merged.cost_usd * (not merged.reused)
    logger.info("Page: %s (%.2f USD paid)", page, cost)
    return ReplaceBackgroundThenMergeOutcome(
        background_replaced=background,
        merged=merged,
        page=page,
        seeds={"background": background.seed, "merge": merged.seed},
        cost_usd=cost,
    )
