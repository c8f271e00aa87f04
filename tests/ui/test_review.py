"""The review step in the browser: three variations, the pause form, variation 2 published.

A person starts ``review-variations`` from its form with the defaults (three
seeds), waits for the run to pause, opens the gallery, presses Resume, picks
variation 2 in Prefect's own input form and submits. boto3 then finds under
``published/`` exactly the bytes of variation 2 and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from deployments.stack import StackState
from tests.ui.browser import Steps
from tests.ui.conftest import TERMINAL, Api
from tests.ui.pages import (
    image_widths,
    open_artifact,
    open_artifacts,
    open_deployment,
    start_custom_run,
    submit_custom_run,
)

pytestmark = pytest.mark.timeout(900)


def choose_in_the_resume_form(page: Page, variation: str, note: str) -> None:
    """Resume, tick ``variation`` in the form's multiple choice, write the note.

    The list opens from the keyboard (a mouse click on it opened nothing in
    headless Chromium); the choice then shows as a chip in the field.
    """
    page.get_by_role("button", name="Resume").click()
    dialog = page.get_by_role("dialog")
    choices = dialog.get_by_role("button", name="No items selected")
    choices.focus()
    choices.press("ArrowDown")
    page.get_by_role("option", name=variation, exact=True).click()
    dialog.locator("textarea").last.fill(note)
    expect(dialog.get_by_role("button", name=variation, exact=True)).to_be_visible()


def objects(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_choosing_variation_2_in_the_pause_form_publishes_exactly_its_bytes(
    stack: StackState, api: Api, s3: Any, page: Page, steps: Steps
) -> None:
    steps(
        "open review-variations",
        lambda: open_deployment(page, stack.ui_url, "review-variations", "on-demand"),
    )
    steps("Custom run with the defaults (3 seeds)", lambda: start_custom_run(page))
    run_id = steps("submit", lambda: submit_custom_run(page))
    assert api.wait_for_state(run_id, {"PAUSED", *TERMINAL}) == "PAUSED"

    steps("open the variations", lambda: open_artifacts(page, stack.ui_url, run_id))
    steps("the gallery", lambda: open_artifact(page, "segmind-outputs"))
    widths = steps("three variations load", lambda: image_widths(page), picture="variations")
    assert len(widths) >= 3, widths
    assert all(width > 0 for width in widths), widths
    page.goto(f"{stack.ui_url}/runs/flow-run/{run_id}")
    steps(
        "choose variation 2",
        lambda: choose_in_the_resume_form(page, "2", "the second one, for the spring page"),
        picture="review-form",
    )
    steps(
        "submit the choice",
        lambda: page.get_by_role("dialog").get_by_role("button", name="Submit").click(),
    )

    assert api.wait_for_state(run_id, TERMINAL) == "COMPLETED", api.flow_run(run_id)["state"]
    prefix = "outputs/"
    stored = objects(s3, stack.bucket, prefix)
    sidecars = {k: json.loads(v) for k, v in stored.items() if k.endswith(".json")}
    variation_2 = [
        k for k, car in sidecars.items() if car.get("seed") == 2 and "/published/" not in k
    ]
    assert variation_2, sorted(sidecars)
    original = stored[variation_2[0].removesuffix(".json")]
    published = {k: v for k, v in stored.items() if "/published/" in k and not k.endswith(".json")}
    assert [hashlib.sha256(v).hexdigest() for v in published.values()] == [
        hashlib.sha256(original).hexdigest()
    ], sorted(published)
    (sidecar,) = [car for k, car in sidecars.items() if "/published/" in k]
    assert sidecar["review"]["note"] == "the second one, for the spring page"
    steps(
        "the run says what was published",
        lambda: expect(page.get_by_text("Completed").first).to_be_visible(),
    )
