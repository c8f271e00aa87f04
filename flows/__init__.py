"""Prefect flows that compose the endpoint tasks."""

from flows.replace_background_then_merge import (
    ReplaceBackgroundThenMergeOutcome,
    replace_background_then_merge,
)

__all__ = ["ReplaceBackgroundThenMergeOutcome", "replace_background_then_merge"]
