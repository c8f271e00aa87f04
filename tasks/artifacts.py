"""The flows' Prefect artifacts: the batch's estimate, progress, table and gallery; outputs.

The Markdown is rendered by `segmind_core.report`, with thumbnails and links
from `segmind_core.thumbnails` (presigned on S3, embedded elsewhere); this
module only hands it, and the table and the progress, to Prefect. Keys are
fixed, so each run adds a new version of the same artifact and the UI shows
their history.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, ParamSpec, cast
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from segmind_core.batch import BatchReport, RowStatus, calls_for
from segmind_core.generation import EditResult
from segmind_core.manifest import ManifestRow
from segmind_core.object_store import ObjectStore
from segmind_core.report import (
    render_batch_estimate_markdown,
    render_batch_results_markdown,
    render_outputs_markdown,
)
from segmind_core.thumbnails import Preview, preview

__all__ = [
    "ESTIMATE_KEY",
    "GALLERY_KEY",
    "OUTPUTS_KEY",
    "PROGRESS_KEY",
    "RESULTS_KEY",
    "TABLE_LIMIT",
    "BatchProgress",
    "publish_estimate",
    "publish_outputs",
    "publish_results",
]

ESTIMATE_KEY = "segmind-batch-estimate"
PROGRESS_KEY = "segmind-batch-progress"
RESULTS_KEY = "segmind-batch-results"
GALLERY_KEY = "segmind-batch-gallery"
OUTPUTS_KEY = "segmind-outputs"
TABLE_LIMIT = 1000
P = ParamSpec("P")


def _best_effort(publish: Callable[P, None]) -> Callable[P, None]:
    """Artifacts are for people: failing to publish one must not fail a run that paid."""

    @functools.wraps(publish)
    def publish_or_warn(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            publish(*args, **kwargs)
        except Exception as exc:
            get_run_logger().warning("Could not publish %s: %s", publish.__name__, exc)

    return publish_or_warn


def _previews(store: ObjectStore) -> Callable[[str], Preview]:
    """`segmind_core.thumbnails.preview` through ``store``, warning of a missing thumbnail."""

    def preview_or_warn(url: str) -> Preview:
        shown = preview(store, url)
        if shown.problem is not None:
            get_run_logger().warning("No thumbnail of %s: %s", url, shown.problem)
        return shown

    return preview_or_warn


class BatchProgress:
    """A progress artifact that follows finished rows.

    It is updated when the whole percentage has moved and ``min_interval_s``
    has passed since the last update (at most about 100 updates, however many
    rows, and none in a burst), and always when every row has ended (100).
    An update is a blocking call to the Prefect API from the loop that starts
    the next rows: one every other row of a 200-row batch cost that loop about
    0.6 s.
    """

    def __init__(self, total: int, *, min_interval_s: float = 1.0) -> None:
        self.total = total
        self.done = 0
        self.min_interval_s = min_interval_s
        self._shown = 0
        self._shown_at = time.monotonic()
        # Called from sync code, so a UUID, not a coroutine (the stubs allow both).
        self._id = cast(
            UUID,
            create_progress_artifact(
                progress=0.0,
                key=PROGRESS_KEY,
                description=f"Rows finished (succeeded, failed or not run) of {total}.",
            ),
        )

    def advance(self) -> None:
        """One more row has ended."""
        self.done += 1
        percent = 100 * self.done // max(self.total, 1)
        now = time.monotonic()
        due = now - self._shown_at >= self.min_interval_s or self.done >= self.total
        if percent > self._shown and due:
            self._shown = percent
            self._shown_at = now
            try:
                update_progress_artifact(self._id, progress=float(percent))
            except Exception as exc:  # a missed update must not stop a batch that is paying
                get_run_logger().warning("Could not update the progress artifact: %s", exc)


@_best_effort
def publish_estimate(
    rows: Sequence[ManifestRow], *, rejected: int, max_cost_usd: Decimal | None
) -> None:
    """The estimate of what the rows cost at list price, before any call."""
    calls = [slug for row in rows for slug in calls_for(row)]
    create_markdown_artifact(
        render_batch_estimate_markdown(rows, calls, rejected=rejected, max_cost_usd=max_cost_usd),
        key=ESTIMATE_KEY,
        description="What the batch costs at list price, computed before any call.",
    )


@_best_effort
def publish_results(report: BatchReport, *, results_url: str, store: ObjectStore) -> None:
    """The results table and the gallery (thumbnails linked to the outputs)."""
    ordered = sorted(report.results, key=lambda result: result.status is RowStatus.SUCCEEDED)
    table: list[dict[str, Any]] = [
        {
            "id": result.id,
            "line": result.line,
            "endpoint": result.endpoint,
            "status": result.status.value,
            "output": result.output,
            "error": result.error,
            "cost_usd": float(result.cost_usd),
            "cached": result.cached,
        }
        for result in ordered[:TABLE_LIMIT]
    ]
    shown = (
        ""
        if len(report.results) <= TABLE_LIMIT
        else f" The first {TABLE_LIMIT} of {len(report.results)} rows, failures first."
    )
    create_table_artifact(
        table,
        key=RESULTS_KEY,
        description=f"{report.summary()}.{shown} All rows: {results_url}",
    )
    create_markdown_artifact(
        render_batch_results_markdown(report, results_url=results_url, preview=_previews(store)),
        key=GALLERY_KEY,
        description="Summary, failures and outputs of the batch.",
    )


@_best_effort
def publish_outputs(
    title: str,
    outputs: Sequence[tuple[str, EditResult]],
    *,
    store: ObjectStore,
    inputs: Sequence[tuple[str, str]] = (),
) -> None:
    """A Markdown artifact of labelled outputs side by side: thumbnails, seed, size, cost, place.

    Args:
        title: The artifact's heading and description.
        outputs: Each output with its label ("Background replaced", "Variation 1"...).
        store: The storage the outputs are in: it makes the thumbnails and links.
        inputs: Labelled input images stored in ``store``, shown before the outputs.
    """
    create_markdown_artifact(
        render_outputs_markdown(title, outputs, preview=_previews(store), inputs=inputs),
        key=OUTPUTS_KEY,
        description=title,
    )
