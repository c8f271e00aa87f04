"""The flows' artifacts: progress, publishing that never fails a run, thumbnails to open."""

from __future__ import annotations

import base64
import hashlib
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import httpx
import pytest
from prefect import flow, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.runtime import flow_run

from segmind_core.batch import BatchReport, RowResult, RowStatus
from segmind_core.contract import OutputFormat
from segmind_core.generation import EditResult
from segmind_core.object_store import ObjectStore
from tasks.artifacts import (
    GALLERY_KEY,
    OUTPUTS_KEY,
    PROGRESS_KEY,
    BatchProgress,
    publish_outputs,
    publish_results,
)
from tests.conftest import S3Server
from tests.segmind_core.test_report import grid
from tests.support import decode, image_bytes

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


# --- outputs and the gallery as a person sees them ---------------------------------------------


def edit_result(store: ObjectStore, key: str, data: bytes, *, seed: int) -> EditResult:
    image = decode(data)
    return EditResult(
        slug="flux-kontext-pro",
        url=store.write(key, data),
        key=key,
        sha256=hashlib.sha256(data).hexdigest(),
        format=OutputFormat.PNG,
        width=image.width,
        height=image.height,
        size_bytes=len(data),
        seed=seed,
        cost_usd=Decimal("0.05"),
        credits_remaining=None,
        latency_s=0.0,
        attempts=1,
        request_digest="d" * 64,
    )


def markdown_of(flow_run_id: UUID, key: str) -> str:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    assert len(artifacts) == 1, artifacts
    assert artifacts[0].type == "markdown"
    data = artifacts[0].data
    assert isinstance(data, str)
    return data


@flow
def publishes_two_steps(store: ObjectStore) -> UUID:
    folder = "two-steps/2026-12-07"
    inputs = [
        ("Input A", store.write(f"{folder}/runs/r-a.png", image_bytes((200, 0, 0), (600, 400)))),
        ("Input B", store.write(f"{folder}/runs/r-b.png", image_bytes((0, 200, 0), (451, 300)))),
    ]
    background = edit_result(store, f"{folder}/bg.png", image_bytes(size=(1248, 832)), seed=7)
    merged = edit_result(store, f"{folder}/m.png", image_bytes((0, 0, 200), (1248, 832)), seed=8)
    publish_outputs(
        "Two steps", [("Background", background), ("Merged", merged)], store=store, inputs=inputs
    )
    return cast(UUID, flow_run.get_id())


def s3_store(s3: S3Server) -> ObjectStore:
    return ObjectStore.from_url(
        "s3://outputs/prefix",
        key=s3.access_key_id,
        secret=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        client_kwargs={"region_name": s3.region},
    )


def test_on_s3_the_outputs_artifact_links_stored_thumbnails_to_the_images(s3: S3Server) -> None:
    store = s3_store(s3)

    markdown = markdown_of(publishes_two_steps(store), OUTPUTS_KEY)

    thumbnails, captions = grid(markdown)
    assert [cell.alt for cell in thumbnails] == ["Input A", "Input B", "Background", "Merged"]
    assert [cell.texts[0] for cell in captions] == ["Input A", "Input B", "Background", "Merged"]
    expected = ["runs/r-a.png", "runs/r-b.png", "bg.png", "m.png"]
    client = s3.client()
    with httpx.Client(trust_env=False) as browser:
        for cell, name in zip(thumbnails, expected, strict=True):
            key = f"prefix/two-steps/2026-12-07/{name}"
            thumbnail_object = f"prefix/_thumbnails/two-steps/2026-12-07/{name}.jpg"
            stored = client.get_object(Bucket="outputs", Key=thumbnail_object)["Body"].read()
            assert max(decode(stored).size) == 320
            assert cell.src is not None
            assert cell.href is not None
            assert cell.src.startswith(f"{s3.endpoint_url}/outputs/{thumbnail_object}?")
            assert cell.href.startswith(f"{s3.endpoint_url}/outputs/{key}?")
            thumbnail, full = browser.get(cell.src), browser.get(cell.href)
            assert (thumbnail.status_code, full.status_code) == (200, 200)
            assert thumbnail.content == stored
            assert full.content == client.get_object(Bucket="outputs", Key=key)["Body"].read()
    assert "The links are presigned: they work until" in markdown
    assert "seed 7" in markdown
    assert "s3://outputs/prefix/two-steps/2026-12-07/m.png" in markdown


def test_in_a_local_folder_the_outputs_artifact_embeds_its_thumbnails(tmp_path: Path) -> None:
    store = ObjectStore.from_url(str(tmp_path))

    markdown = markdown_of(publishes_two_steps(store), OUTPUTS_KEY)

    thumbnails, _ = grid(markdown)
    sizes = []
    for cell in thumbnails:
        assert cell.href is None
        assert cell.src is not None
        assert cell.src.startswith("data:image/jpeg;base64,")
        image = decode(base64.b64decode(cell.src.split(",", 1)[1], validate=True))
        assert image.format == "JPEG"
        sizes.append(image.size)
    assert sizes == [(320, 213), (320, 213), (320, 213), (320, 213)]
    assert f"`{tmp_path}/two-steps/2026-12-07/bg.png`" in markdown
    assert "a browser cannot open a worker's local path" in markdown
    assert not (tmp_path / "two-steps/2026-12-07/thumbnails").exists()


def test_the_gallery_lists_failures_first_and_survives_an_unreadable_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ObjectStore.from_url(str(tmp_path))
    good = store.write("batch/d/good.png", image_bytes(size=(1024, 1024)))
    broken = store.write("batch/d/broken.png", b"not an image")
    report = BatchReport(
        results=[
            RowResult(
                id="good",
                line=1,
                endpoint="p-image-edit",
                status=RowStatus.SUCCEEDED,
                output=good,
                seed=1,
                cost_usd=Decimal("0.01"),
            ),
            RowResult(
                id="gone",
                line=2,
                endpoint="p-image-edit",
                status=RowStatus.FAILED,
                error="503 from Segmind",
            ),
            RowResult(
                id="broken",
                line=3,
                endpoint="p-image-edit",
                status=RowStatus.SUCCEEDED,
                output=broken,
                seed=3,
                cost_usd=Decimal("0.01"),
            ),
        ],
        estimate_usd=Decimal("0.03"),
        paid_usd=Decimal("0.02"),
    )

    @flow
    def publishes_gallery() -> UUID:
        publish_results(report, results_url=store.url("batch/d/runs/r.jsonl"), store=store)
        return cast(UUID, flow_run.get_id())

    with caplog.at_level(logging.WARNING):
        markdown = markdown_of(publishes_gallery(), GALLERY_KEY)

    assert markdown.index("| 2 | gone | failed | 503 from Segmind |") < markdown.index("<table>")
    thumbnails, captions = grid(markdown)
    assert [cell.texts[0] for cell in captions] == ["good", "broken"]
    assert thumbnails[0].src is not None
    assert thumbnails[0].src.startswith("data:image/jpeg;base64,")
    assert thumbnails[1].texts == ["no thumbnail (UnidentifiedImageError)"]
    assert captions[0].texts[-1] == "1024x1024 PNG"
    assert f"No thumbnail of {broken}: UnidentifiedImageError" in caplog.text
