"""Merge two images into one with multi-image FLUX.1 Kontext Pro or Max."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from blocks.object_storage import ObjectStorage
from blocks.segmind_credentials import SegmindCredentials
from flows.common import SEED_MAX, refuse_inline_blocks, run_endpoint_task
from flows.edit_image import KontextModel
from segmind_core.contract import FluxAspectRatio, OutputFormat
from segmind_core.generation import EditResult
from tasks.segmind_tasks import merge_images_with_kontext_max, merge_images_with_kontext_pro

__all__ = ["merge_images"]


@flow(name="merge-images")
def merge_images(
    prompt: str,
    image_1: str,
    image_2: str,
    model: KontextModel = KontextModel.PRO,
    aspect_ratio: FluxAspectRatio = FluxAspectRatio.MATCH_INPUT_IMAGE,
    output_format: OutputFormat = OutputFormat.PNG,
    safety_tolerance: Annotated[int, Field(ge=0, le=2)] = 2,
    seed: Annotated[int | None, Field(ge=0, le=SEED_MAX)] = None,
    output_name: str | None = None,
    storage: ObjectStorage | None = None,
    credentials: SegmindCredentials | None = None,
    refresh_cache: bool = False,
) -> EditResult:
    """Combine two images as the prompt says.

    Args:
        prompt: How to combine them, e.g. "the cat from image 2 sitting beside the cup".
        image_1: First image (match_input_image follows it), a JPEG, PNG, GIF or WEBP: an
            https URL, an s3:// URL or a path on the worker, e.g. examples/photos/coffee.jpg.
        image_2: Second image, the same kinds, e.g. examples/photos/chelsea.jpg.
        model: pro ($0.05 per image) or max ($0.10).
        aspect_ratio: Output ratio; match_input_image follows the first image.
        output_format: png or jpg.
        safety_tolerance: 0 (strict) to 2.
        seed: 0 to 999999999999999; fixes the result and makes reruns free (cached); drawn
            and recorded when empty.
        output_name: Name of the output file; the request's digest when empty.
        storage: Where the image, its sidecar and cache records go; empty means ./outputs.
        credentials: Segmind credentials block; empty means SEGMIND_API_KEY and SEGMIND_BASE_URL.
        refresh_cache: Generate again even when a cached result exists (pays again).

    Returns:
        The stored image: where it is, its seed, and what it cost this run.
    """
    refuse_inline_blocks(storage=storage, credentials=credentials)
    storage = storage if storage is not None else ObjectStorage()
    task = (
        merge_images_with_kontext_pro
        if model is KontextModel.PRO
        else merge_images_with_kontext_max
    )
    return run_endpoint_task(
        task,
        "Merged image",
        storage=storage,
        refresh_cache=refresh_cache,
        prompt=prompt,
        image_1=image_1,
        image_2=image_2,
        aspect_ratio=aspect_ratio,
        output_format=output_format,
        safety_tolerance=safety_tolerance,
        seed=seed,
        credentials=credentials,
        job_id=output_name,
    )
