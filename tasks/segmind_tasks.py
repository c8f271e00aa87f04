"""One Prefect task per Segmind endpoint, and a generic one for any slug.

Each task is a thin wrapper over `segmind_core.generation.generate_and_store`:
it describes its request as a `RequestSpec`, and that function checks the
inputs and the parameters before anything is paid, calls the service through
the credentials block, and stores the image and its sidecar in the storage
block. A task returns an `EditResult`: a reference to the stored image and how
it was made, never the image bytes and never the key.

Caching (`tasks.caching`): a task with a pinned seed is keyed by its request
digest; with ``persist_result=True`` and ``result_storage`` set to the storage
block, a second run, process or worker is served from the record without a
call. Records are JSON of the `EditResult` and are served only while its image
and sidecar are stored (`tasks.result_records`). Without a seed, one is drawn,
recorded, and never served from cache.

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

A task run without a pinned seed uses a seed derived from its run id, so its
retries ask for the same image. In queue mode (the credentials block's
``queue``) a retry then finds the pending record of the request it submitted
and polls it again instead of paying for another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.runtime import flow_run, task_run
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

from blocks.object_storage import ObjectStorage
from blocks.segmind_credentials import SegmindCredentials
from segmind_core.contract import FluxAspectRatio, OutputFormat, PImageEditAspectRatio
from segmind_core.errors import TransientError
from segmind_core.generation import EditResult, generate_and_store, seed_for_run
from segmind_core.images import ImageInput
from segmind_core.outputs import OutputStore
from segmind_core.request_spec import RequestSpec
from tasks.caching import request_cache_policy
from tasks.concurrency import flow_run_call_gate, segmind_call_slot
from tasks.result_records import EditResultSerializer

__all__ = [
    "TASK_RETRIES",
    "EditResult",
    "edit_image_with_kontext_max",
    "edit_image_with_kontext_pro",
    "edit_images_with_p_image_edit",
    "merge_images_with_kontext_max",
    "merge_images_with_kontext_pro",
    "output_day",
    "retry_transient_errors",
    "run_segmind_endpoint",
]

TASK_RETRIES = 2
TASK_RETRY_DELAY_S = 10.0


def retry_transient_errors(task: Task[..., Any], run: TaskRun, state: State[Any]) -> bool:
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


def _task_options(build_spec: Callable[[dict[str, Any]], RequestSpec]) -> dict[str, Any]:
    return {
        "retries": TASK_RETRIES,
        "retry_delay_seconds": TASK_RETRY_DELAY_S,
        "retry_condition_fn": retry_transient_errors,
        "cache_policy": request_cache_policy(build_spec),
        "persist_result": True,
        # Records are JSON of the EditResult, read without running code (tasks.result_records).
        "result_serializer": EditResultSerializer(),
    }


def _generate(
    spec: RequestSpec,
    credentials: SegmindCredentials | None,
    storage: ObjectStorage | None,
    job_id: str | None,
) -> EditResult:
    """Run ``spec`` and store the output; the body shared by every task."""
    logger = get_run_logger()
    credentials = credentials if credentials is not None else SegmindCredentials()
    storage = storage if storage is not None else ObjectStorage()
    slot = segmind_call_slot(
        credentials.resolved_concurrency_limit(),
        credentials.resolved_rate_limit(),
        flow_run_gate=flow_run_call_gate(),
    )
    with credentials.get_client(logger=logger, attempt_slot=slot) as client:
        stored = generate_and_store(
            client,
            spec,
            OutputStore(storage.get_store()),
            flow_name=str(flow_run.get_flow_name() or "adhoc"),
            day=output_day(),
            job_id=job_id,
            run_ids={"flow_run_id": flow_run.get_id(), "task_run_id": task_run.get_id()},
            refresh=_refreshing(),
            # Unpinned: one seed per task run, kept by its retries (which then
            # resume a queued request instead of paying for another variation).
            seed=seed_for_run(task_run.get_id()) if task_run.get_id() else None,
        )
    if stored.reused:
        logger.info("%s: already stored at %s; nothing paid", spec.slug, stored.url)
    else:
        logger.info(
            "%s: %dx%d %s, seed %d, %.2f USD, %s USD left, %.1f s, %d attempt(s) -> %s",
            spec.slug,
            stored.width,
            stored.height,
            stored.format,
            stored.seed,
            stored.cost_usd,
            "?" if stored.credits_remaining is None else f"{stored.credits_remaining:.2f}",
            stored.latency_s,
            stored.attempts,
            stored.url,
        )
    return stored


def output_day() -> date:
    """The date in output keys: the flow run's scheduled start (UTC), else today.

    A nightly run that starts late, or retries past midnight, keeps one folder.
    """
    started = flow_run.get_scheduled_start_time() if flow_run.get_id() else None
    return (started or datetime.now(UTC)).astimezone(UTC).date()


def _refreshing() -> bool:
    """Whether this task run was asked to refresh its cache (and so to pay again)."""
    context = TaskRunContext.get()
    if context is None:
        return False
    return bool(context.task.refresh_cache or PREFECT_TASKS_REFRESH_CACHE.value())


def _flux_spec(slug: str) -> Callable[[dict[str, Any]], RequestSpec]:
    def build(inputs: dict[str, Any]) -> RequestSpec:
        image = inputs.get("image")
        return RequestSpec(
            slug,
            {
                "prompt": inputs["prompt"],
                "aspect_ratio": inputs.get("aspect_ratio"),
                "output_format": inputs.get("output_format"),
                "safety_tolerance": inputs.get("safety_tolerance"),
                "seed": inputs.get("seed"),
            },
            {} if image is None else {"input_image": image},
        )

    return build


def _merge_spec(slug: str) -> Callable[[dict[str, Any]], RequestSpec]:
    def build(inputs: dict[str, Any]) -> RequestSpec:
        # ``seed`` is passed even when None: then one is drawn and recorded, instead
        # of the endpoint's own fixed default (42 on max).
        return RequestSpec(
            slug,
            {
                "prompt": inputs["prompt"],
                "aspect_ratio": inputs.get("aspect_ratio"),
                "output_format": inputs.get("output_format"),
                "safety_tolerance": inputs.get("safety_tolerance"),
                "seed": inputs.get("seed") if inputs.get("seed") is not None else -1,
            },
            {"input_image_1": inputs["image_1"], "input_image_2": inputs["image_2"]},
        )

    return build


def _p_image_edit_spec(inputs: dict[str, Any]) -> RequestSpec:
    seed = inputs.get("seed")
    return RequestSpec(
        "p-image-edit",
        {
            "prompt": inputs["prompt"],
            "aspect_ratio": inputs.get("aspect_ratio"),
            "disable_safety_checker": inputs.get("disable_safety_checker"),
            "seed": -1 if seed is None else seed,
        },
        {"image_urls": list(inputs["images"])},
    )


def _generic_spec(inputs: dict[str, Any]) -> RequestSpec:
    return RequestSpec(inputs["slug"], dict(inputs["params"]), dict(inputs.get("images") or {}))


@task(name="edit-image-with-kontext-pro", **_task_options(_flux_spec("flux-kontext-pro")))
def edit_image_with_kontext_pro(
    prompt: str,
    image: ImageInput | None = None,
    aspect_ratio: FluxAspectRatio | str = FluxAspectRatio.MATCH_INPUT_IMAGE,
    output_format: OutputFormat | str = OutputFormat.PNG,
    safety_tolerance: int = 2,
    seed: int | None = None,
    credentials: SegmindCredentials | None = None,
    storage: ObjectStorage | None = None,
    job_id: str | None = None,
) -> EditResult:
    """Edit one image (or make one from text) with FLUX.1 Kontext Pro, $0.05 per image.

    Args:
        prompt: The edit to make, e.g. "replace the background with a beach".
        image: URL, s3:// URL, local path, bytes or PIL image; none for text-to-image.
        aspect_ratio: One of 14 ratios, or match_input_image.
        output_format: ``png`` or ``jpg``.
        safety_tolerance: 0 (strict) to 6; at most 2 applies with an input image.
        seed: Fixes the result (and makes it cacheable); drawn and recorded when none.
        credentials: The credentials block; none means SEGMIND_API_KEY and SEGMIND_BASE_URL.
        storage: Where the image and its sidecar go; none means the local ``outputs`` folder.
        job_id: Name of the output (sanitised); the request digest when not given.

    Example:
        ```python
        result = edit_image_with_kontext_pro("make it a watercolour", image="cat.jpg", seed=7)
        print(result.url)
        ```
    """
    spec = _flux_spec("flux-kontext-pro")(locals())
    return _generate(spec, credentials, storage, job_id)


@task(name="edit-image-with-kontext-max", **_task_options(_flux_spec("flux-kontext-max")))
def edit_image_with_kontext_max(
    prompt: str,
    image: ImageInput | None = None,
    aspect_ratio: FluxAspectRatio | str = FluxAspectRatio.MATCH_INPUT_IMAGE,
    output_format: OutputFormat | str = OutputFormat.PNG,
    safety_tolerance: int = 2,
    seed: int | None = None,
    credentials: SegmindCredentials | None = None,
    storage: ObjectStorage | None = None,
    job_id: str | None = None,
) -> EditResult:
    """Edit one image with FLUX.1 Kontext Max, $0.10 per image; arguments as the pro task.

    Example:
        ```python
        result = edit_image_with_kontext_max("studio lighting", image="s3://bucket/a.png", seed=1)
        ```
    """
    spec = _flux_spec("flux-kontext-max")(locals())
    return _generate(spec, credentials, storage, job_id)


@task(name="merge-images-with-kontext-pro", **_task_options(_merge_spec("multi-image-kontext-pro")))
def merge_images_with_kontext_pro(
    prompt: str,
    image_1: ImageInput,
    image_2: ImageInput,
    aspect_ratio: FluxAspectRatio | str = FluxAspectRatio.MATCH_INPUT_IMAGE,
    output_format: OutputFormat | str = OutputFormat.PNG,
    safety_tolerance: int = 2,
    seed: int | None = None,
    credentials: SegmindCredentials | None = None,
    storage: ObjectStorage | None = None,
    job_id: str | None = None,
) -> EditResult:
    """Merge two images with multi-image Kontext Pro, $0.05 per image.

    Args:
        prompt: How to combine them, e.g. "the cat sitting next to the cup".
        image_1: First image (sets match_input_image): URL, s3:// URL, path, bytes or PIL image.
        image_2: Second image.
        aspect_ratio: One of 14 ratios, or match_input_image.
        output_format: ``png`` or ``jpg``.
        safety_tolerance: 0 (strict) to 2.
        seed: Fixes the result (and makes it cacheable); drawn and recorded when none.
        credentials: The credentials block; none means SEGMIND_API_KEY and SEGMIND_BASE_URL.
        storage: Where the image and its sidecar go; none means the local ``outputs`` folder.
        job_id: Name of the output (sanitised); the request digest when not given.
    """
    spec = _merge_spec("multi-image-kontext-pro")(locals())
    return _generate(spec, credentials, storage, job_id)


@task(name="merge-images-with-kontext-max", **_task_options(_merge_spec("multi-image-kontext-max")))
def merge_images_with_kontext_max(
    prompt: str,
    image_1: ImageInput,
    image_2: ImageInput,
    aspect_ratio: FluxAspectRatio | str = FluxAspectRatio.R_16_9,
    output_format: OutputFormat | str = OutputFormat.JPG,
    safety_tolerance: int = 1,
    seed: int | None = None,
    credentials: SegmindCredentials | None = None,
    storage: ObjectStorage | None = None,
    job_id: str | None = None,
) -> EditResult:
    """Merge two images with multi-image Kontext Max, $0.10 per image; arguments as pro.

    Defaults follow the endpoint's documentation: 16:9, jpg, tolerance 1. A seed
    is drawn and recorded when none is given (the endpoint itself would use 42).
    """
    spec = _merge_spec("multi-image-kontext-max")(locals())
    return _generate(spec, credentials, storage, job_id)


@task(name="edit-images-with-p-image-edit", **_task_options(_p_image_edit_spec))
def edit_images_with_p_image_edit(
    prompt: str,
    images: Sequence[ImageInput],
    aspect_ratio: PImageEditAspectRatio | str = PImageEditAspectRatio.MATCH_INPUT_IMAGE,
    disable_safety_checker: bool = False,
    seed: int | None = None,
    credentials: SegmindCredentials | None = None,
    storage: ObjectStorage | None = None,
    job_id: str | None = None,
) -> EditResult:
    """Edit or combine 1 to 5 images with Pruna p-image-edit, $0.01 per image, PNG out.

    Args:
        prompt: The edit, e.g. "make the character lean on the logo".
        images: 1 to 5 images: URLs, s3:// URLs, paths, bytes or PIL images.
        aspect_ratio: One of 7 ratios, or match_input_image.
        disable_safety_checker: Turn the safety checker off.
        seed: Fixes the result (and makes it cacheable); drawn and recorded when none or -1.
        credentials: The credentials block; none means SEGMIND_API_KEY and SEGMIND_BASE_URL.
        storage: Where the image and its sidecar go; none means the local ``outputs`` folder.
        job_id: Name of the output (sanitised); the request digest when not given.
    """
    spec = _p_image_edit_spec(locals())
    return _generate(spec, credentials, storage, job_id)


@task(name="run-segmind-endpoint", **_task_options(_generic_spec))
def run_segmind_endpoint(
    slug: str,
    params: Mapping[str, Any],
    images: Mapping[str, ImageInput | Sequence[ImageInput]] | None = None,
    credentials: SegmindCredentials | None = None,
    storage: ObjectStorage | None = None,
    job_id: str | None = None,
) -> EditResult:
    """Call any endpoint in the registry with a raw parameter mapping.

    Args:
        slug: Endpoint slug, e.g. ``"flux-kontext-pro"``.
        params: The JSON body without its image fields.
        images: Image fields as URLs, s3:// URLs, paths, bytes or PIL images (a list
            for ``image_urls``).
        credentials: The credentials block; none means SEGMIND_API_KEY and SEGMIND_BASE_URL.
        storage: Where the image and its sidecar go; none means the local ``outputs`` folder.
        job_id: Name of the output (sanitised); the request digest when not given.
    """
    spec = _generic_spec(locals())
    return _generate(spec, credentials, storage, job_id)
