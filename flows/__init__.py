"""Prefect flows that compose the endpoint tasks."""

from flows.batch import BatchEndpoint, BatchOutcome, RowDefaults, batch
from flows.edit_each_image_with_p_image_edit import (
    PImageEditOutcome,
    edit_each_image_with_p_image_edit,
)
from flows.edit_image import KontextModel, edit_image
from flows.merge_images import merge_images
from flows.replace_background_then_merge import (
    ReplaceBackgroundThenMergeOutcome,
    replace_background_then_merge,
)

__all__ = [
    "BatchEndpoint",
    "BatchOutcome",
    "KontextModel",
    "PImageEditOutcome",
    "ReplaceBackgroundThenMergeOutcome",
    "RowDefaults",
    "batch",
    "edit_each_image_with_p_image_edit",
    "edit_image",
    "merge_images",
    "replace_background_then_merge",
]
