"""Prefect flows that compose the endpoint tasks.

The batch flow is imported from `flows.batch` itself: importing it here would
make ``python -m flows.batch`` load the module twice.
"""

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
    "KontextModel",
    "PImageEditOutcome",
    "ReplaceBackgroundThenMergeOutcome",
    "edit_each_image_with_p_image_edit",
    "edit_image",
    "merge_images",
    "replace_background_then_merge",
]
