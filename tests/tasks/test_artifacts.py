"""The flows' artifacts: progress that follows rows, and publishing that never fails a run."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import pytest
from prefect import flow, get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from tasks.artifacts import PROGRESS_KEY, BatchProgress, publish_outputs

pytestmark = pytest.mark.usefixtures("prefect_harness")


def progress_of(artifact_id: UUID) -> Any:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[PROGRESS_KEY]))
        )
    return next(a.data for a in artifacts if a.id == artifact_id)


def test_progress_follows_finished_rows_to_100() -> None:
    seen: dict[str, Any] = {}

    @flow
    def rows(total: int, finished: int) -> UUID:
        progress = BatchProgress(total, min_interval_s=0)
        seen["start"] = progress_of(progress._id)
        for _ in range(finished):
            progress.advance()
        seen["middle"] = progress_of(progress._id)
        for _ in range(total - finished):
            progress.advance()
        return progress._id

    artifact_id = rows(total=7, finished=3)

    assert seen["start"] == 0
    assert seen["middle"] == 42  # 3 of 7, in whole percent
    assert progress_of(artifact_id) == 100


def test_progress_waits_between_updates_but_always_reaches_100() -> None:
    seen: dict[str, Any] = {}

    @flow
    def rows(total: int) -> UUID:
        progress = BatchProgress(total, min_interval_s=3600)
        for _ in range(total - 1):
            progress.advance()
        seen["before the last"] = progress_of(progress._id)
        progress.advance()
        return progress._id

    artifact_id = rows(total=50)

    assert seen["before the last"] == 0  # 98% done, but the interval has not passed
    assert progress_of(artifact_id) == 100


def test_an_artifact_that_cannot_be_published_does_not_fail_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @flow
    def publishes() -> str:
        # No store to link outputs through: rendering fails inside the publisher.
        publish_outputs("Edited image", [("prompt", None)], store=None)  # type: ignore[list-item,arg-type]
        return "finished"

    with caplog.at_level(logging.WARNING):
        assert publishes() == "finished"

    assert "Could not publish publish_outputs" in caplog.text
