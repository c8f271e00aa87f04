"""Prefect tasks, one per Segmind endpoint, over the Prefect-free client."""

from tasks.segmind_tasks import (
    TASK_RETRIES,
    EditResult,
    edit_image_with_kontext_max,
    edit_image_with_kontext_pro,
    edit_images_with_p_image_edit,
    merge_images_with_kontext_max,
    merge_images_with_kontext_pro,
    retry_transient_errors,
    run_segmind_endpoint,
)

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
