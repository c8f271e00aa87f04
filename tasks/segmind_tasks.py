"""One Prefect task per Segmind endpoint, and a generic one for any slug.

Each task is a thin wrapper: it turns the image arguments into references
(`segmind_core.images.to_image_ref`), and calls `SegmindClient.generate`
through the credentials block. Everything that can be checked before money is
spent (parameters against the contract, local images) is checked there first.

Retries happen at two levels, and their product bounds the total:

- inside the client, transient failures (429 honouring ``Retry-After``, 5xx,
  timeouts, dropped or truncated answers) are retried up to the block's
  ``max_attempts`` (6 by default) within ``max_retry_time_s``;
- Prefect's task retries are only an outer net: `TASK_RETRIES` more runs, and
  only for a `TransientError` that outlived the client's budget
  (`retry_transient_errors`); a permanent error (400, 401, 403, 404, 406, bad
  input) fails the task run at once.

So one task run makes at most ``max_attempts * (TASK_RETRIES + 1)`` HTTP
attempts: 18 with the defaults. Only a complete 200 is billed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from PIL import Image
from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from pydantic import BaseModel, ConfigDict, Field

from blocks.segmind_credentials import SegmindCredentials
from segmind_core.client import GeneratedImage
from segmind_core.contract import FluxAspectRatio, OutputFormat, PImageEditAspectRatio
from segmind_core.errors import TransientError
from segmind_core.images import ImageInput, to_image_ref

__all__ = [
    "TASK_RETRIES",
    "EditResult",
    "edit_image_with_kontext_max",
    "edit_image_with_kontext_pro",
    "edit_images_with_p_image_edit",
    "merge_images_with_kontext_max",
    "merge_images_with_kontext_pro",
    "retry_transient_errors",
    "run_segmind_endpoint",
]

TASK_RETRIES = 2
TASK_RETRY_DELAY_S = 10.0


class EditResult(BaseModel):
    """What a task returns: the image and how it was made. Never the key.

    Attributes:
        slug: Endpoint that made the image.
        image: The encoded image bytes.
        format: ``png`` or ``jpg``.
        width: Pixels.
        height: Pixels.
        seed: The seed used; drawn client-side when none was given.
        cost_usd: Price of the generation.
        credits_remaining: Balance reported by the service after the call.
        latency_s: Wall time of the call, client retries included.
        attempts: HTTP attempts the client made.
        request_id: The service's request id, when it sent one.
    """

    model_config = ConfigDict(frozen=True)

    slug: str
    image: bytes = Field(repr=False)
    format: OutputFormat
    width: int
    height: int
    seed: int
    cost_usd: Decimal
    credits_remaining: Decimal | None
    latency_s: float
    attempts: int
    request_id: str | None

    @classmethod
    def from_generated(cls, generated: GeneratedImage) -> EditResult:
        """Build from the client's result (dropping the request body and its inline images)."""
        return cls(
            slug=generated.slug,
            image=generated.image,
            format=generated.format,
            width=generated.width,
            height=generated.height,
            seed=generated.seed,
            cost_usd=generated.cost_usd,
            credits_remaining=generated.credits_remaining,
            latency_s=generated.latency_s,
            attempts=generated.attempts,
            request_id=generated.request_id,
        )


def retry_transient_errors(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry a task run only after a `TransientError`.

    It must stay a plain function: Prefect treats other callables as "never retry".
    """
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False


_TASK_OPTIONS: dict[str, Any] = {
    "retries": TASK_RETRIES,
    "retry_delay_seconds": TASK_RETRY_DELAY_S,
    "retry_condition_fn": retry_transient_errors,
    # Caching keyed on the request and its inputs comes with the storage layer;
    # Prefect's default policy would hash the credentials block and image bytes.
    "cache_policy": NO_CACHE,
}


def _generate(
    slug: str, params: dict[str, Any], credentials: SegmindCredentials | None
) -> EditResult:
    """Call ``slug`` with ``params``; the body shared by every task."""
    logger = get_run_logger()
    credentials = credentials if credentials is not None else SegmindCredentials()
    with credentials.get_client(logger=logger) as client:
        generated = client.generate(slug, params)
    credits = generated.credits_remaining
    logger.info(
        "%s: %dx%d %s, seed %d, %.2f USD, %s USD left, %.1f s, %d attempt(s)",
        slug,
        generated.width,
        generated.height,
        generated.format.value,
        generated.seed,
        generated.cost_usd,
        "?" if credits is None else f"{credits:.2f}",
        generated.latency_s,
        generated.attempts,
    )
    return EditResult.from_generated(generated)


def _flux_params(
    prompt: str,
    image: ImageInput | None,
    aspect_ratio: FluxAspectRatio | str,
    output_format: OutputFormat | str,
    safety_tolerance: int,
    seed: int | None,
) -> dict[str, Any]:
    """The body of a single-image FLUX.1 Kontext call (pro and max share it)."""
    params: dict[str, Any] = {
        "prompt": prompt,
        "aspect_ratio": aspect_ratio,
        "output_format": output_format,
        "safety_tolerance": safety_tolerance,
        "seed": seed,
    }
    if image is not None:
        params["input_image"] = to_image_ref(image, field="input_image")
    return params


@task(name="edit-image-with-kontext-pro", **_TASK_OPTIONS)
def edit_image_with_kontext_pro(
    prompt: str,
    image: ImageInput | None = None,
    aspect_ratio: FluxAspectRatio | str = FluxAspectRatio.MATCH_INPUT_IMAGE,
    output_format: OutputFormat | str = OutputFormat.PNG,
    safety_tolerance: int = 2,
    seed: int | None = None,
    credentials: SegmindCredentials | None = None,
) -> EditResult:
    """Edit one image (or make one from text) with FLUX.1 Kontext Pro, $0.05 per image.

    Args:
        prompt: The edit to make, e.g. "replace the background with a beach".
        image: URL, local path, bytes or PIL image; none for text-to-image.
        aspect_ratio: One of 14 ratios, or match_input_image.
        output_format: ``png`` or ``jpg``.
        safety_tolerance: 0 (strict) to 6; at most 2 applies with an input image.
        seed: Fixes the result; a seed is drawn and recorded when none is given.
        credentials: The credentials block; none means the environment.

    Example:
        ```python
        result = edit_image_with_kontext_pro("make it a watercolour", image="cat.jpg", seed=7)
        ```
    """
    params = _flux_params(prompt, image, aspect_ratio, output_format, safety_tolerance, seed)
    return _generate("flux-kontext-pro", params, credentials)


@task(name="edit-image-with-kontext-max", **_TASK_OPTIONS)
def edit_image_with_kontext_max(
    prompt: str,
    image: ImageInput | None = None,
    aspect_ratio: FluxAspectRatio | str = FluxAspectRatio.MATCH_INPUT_IMAGE,
    output_format: OutputFormat | str = OutputFormat.PNG,
    safety_tolerance: int = 2,
    seed: int | None = None,
    credentials: SegmindCredentials | None = None,
) -> EditResult:
    """Edit one image with FLUX.1 Kontext Max, $0.10 per image; arguments as the pro task.

    Example:
        ```python
        result = edit_image_with_kontext_max("studio lighting", image="https://...", seed=1)
        ```
    """
    params = _flux_params(prompt, image, aspect_ratio, output_format, safety_tolerance, seed)
    return _generate("flux-kontext-max", params, credentials)


def _merge_params(
    prompt: str,
    image_1: ImageInput,
    image_2: ImageInput,
    aspect_ratio: FluxAspectRatio | str | None,
    output_format: OutputFormat | str | None,
    safety_tolerance: int | None,
    seed: int | None,
) -> dict[str, Any]:
    """The given arguments; the endpoints' own defaults differ (pro vs max).

    ``seed`` is always sent, ``None`` included: the client then draws one and
    records it, instead of the endpoint's fixed default (42 on max).
    """
    params: dict[str, Any] = {
        "prompt": prompt,
        "input_image_1": to_image_ref(image_1, field="input_image_1"),
        "input_image_2": to_image_ref(image_2, field="input_image_2"),
        "aspect_ratio": aspect_ratio,
        "output_format": output_format,
        "safety_tolerance": safety_tolerance,
    }
    return {key: value for key, value in params.items() if value is not None} | {"seed": seed}


@task(name="merge-images-with-kontext-pro", **_TASK_OPTIONS)
def merge_images_with_kontext_pro(
    prompt: str,
    image_1: ImageInput,
    image_2: ImageInput,
    aspect_ratio: FluxAspectRatio | str = FluxAspectRatio.MATCH_INPUT_IMAGE,
    output_format: OutputFormat | str = OutputFormat.PNG,
    safety_tolerance: int = 2,
    seed: int | None = None,
    credentials: SegmindCredentials | None = None,
) -> EditResult:
    """Merge two images with multi-image Kontext Pro, $0.05 per image.

    Args:
        prompt: How to combine them, e.g. "the cat sitting next to the cup".
        image_1: First image (sets match_input_image): URL, path, bytes or PIL image.
        image_2: Second image.
        aspect_ratio: One of 14 ratios, or match_input_image.
        output_format: ``png`` or ``jpg``.
        safety_tolerance: 0 (strict) to 2.
        seed: Fixes the result; drawn and recorded when none is given.
        credentials: The credentials block; none means the environment.
    """
    params = _merge_params(
        prompt, image_1, image_2, aspect_ratio, output_format, safety_tolerance, seed
    )
    return _generate("multi-image-kontext-pro", params, credentials)


@task(name="merge-images-with-kontext-max", **_TASK_OPTIONS)
def merge_images_with_kontext_max(
    prompt: str,
    image_1: ImageInput,
    image_2: ImageInput,
    aspect_ratio: FluxAspectRatio | str = FluxAspectRatio.R_16_9,
    output_format: OutputFormat | str = OutputFormat.JPG,
    safety_tolerance: int = 1,
    seed: int | None = None,
    credentials: SegmindCredentials | None = None,
) -> EditResult:
    """Merge two images with multi-image Kontext Max, $0.10 per image.

    Defaults follow the endpoint's documentation: 16:9, jpg, tolerance 1. A
    seed is drawn and recorded when none is given (the endpoint itself would
    use 42).
    """
    params = _merge_params(
        prompt, image_1, image_2, aspect_ratio, output_format, safety_tolerance, seed
    )
    return _generate("multi-image-kontext-max", params, credentials)


@task(name="edit-images-with-p-image-edit", **_TASK_OPTIONS)
def edit_images_with_p_image_edit(
    prompt: str,
    images: Sequence[ImageInput],
    aspect_ratio: PImageEditAspectRatio | str = PImageEditAspectRatio.MATCH_INPUT_IMAGE,
    disable_safety_checker: bool = False,
    seed: int | None = None,
    credentials: SegmindCredentials | None = None,
) -> EditResult:
    """Edit or combine 1 to 5 images with Pruna p-image-edit, $0.01 per image, PNG out.

    Args:
        prompt: The edit, e.g. "make the character lean on the logo".
        images: 1 to 5 images: URLs, paths, bytes or PIL images.
        aspect_ratio: One of 7 ratios, or match_input_image.
        disable_safety_checker: Turn the safety checker off.
        seed: Fixes the result; drawn and recorded when none (or -1) is given.
        credentials: The credentials block; none means the environment.
    """
    params: dict[str, Any] = {
        "prompt": prompt,
        "image_urls": [
            to_image_ref(image, field=f"image_urls[{i}]") for i, image in enumerate(images)
        ],
        "aspect_ratio": aspect_ratio,
        "disable_safety_checker": disable_safety_checker,
    }
    if seed is not None:
        params["seed"] = seed
    else:
        params["seed"] = -1  # drawn client-side and recorded, not the endpoint's fixed 42
    return _generate("p-image-edit", params, credentials)


@task(name="run-segmind-endpoint", **_TASK_OPTIONS)
def run_segmind_endpoint(
    slug: str,
    params: Mapping[str, Any],
    images: Mapping[str, ImageInput | Sequence[ImageInput]] | None = None,
    credentials: SegmindCredentials | None = None,
) -> EditResult:
    """Call any endpoint in the registry with a raw parameter mapping.

    Args:
        slug: Endpoint slug, e.g. ``"flux-kontext-pro"``.
        params: The JSON body (image fields may be left to ``images``).
        images: Image fields given as URLs, paths, bytes or PIL images (a list for
            ``image_urls``); turned into references and merged into ``params``.
        credentials: The credentials block; none means the environment.
    """
    body = dict(params)
    for field, value in (images or {}).items():
        if isinstance(value, str | bytes | os.PathLike | Image.Image):
            body[field] = to_image_ref(value, field=field)
        else:
            body[field] = [to_image_ref(v, field=f"{field}[{i}]") for i, v in enumerate(value)]
    return _generate(slug, body, credentials)
