"""The Prefect UI as a person uses it: deployments run from their forms, results on the run page.

The stack is started with the README's command (``bash scripts/stack up``); a
real Chromium fills the classic UI's forms (the one the server serves by
default) with "Validate parameters" left on and only the defaults, and the
V2 UI's form is checked too. The REST API is read only to know when to look.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Locator, Page, expect

from deployments.stack import StackState
from tests.ui.browser import Steps
from tests.ui.conftest import TERMINAL, Api
from tests.ui.pages import (
    image_widths,
    open_artifact,
    open_artifacts,
    open_deployment,
    start_custom_run,
    start_quick_run,
    submit_custom_run,
)

pytestmark = pytest.mark.timeout(900)


def test_batch_quick_run_with_validation_completes_and_shows_its_gallery(
    stack: StackState, api: Api, page: Page, steps: Steps
) -> None:
    deployment = api.deployment("batch/nightly-catalogue")
    runs_before = api.runs_of(deployment["id"])
    steps(
        "open the batch deployment",
        lambda: open_deployment(page, stack.ui_url, "batch", "nightly-catalogue"),
    )
    run_id = steps("Quick run with validation on", lambda: start_quick_run(page))
    assert api.runs_of(deployment["id"]) == runs_before + 1

    assert api.wait_for_state(run_id, TERMINAL) == "COMPLETED", api.flow_run(run_id)["state"]
    steps("open the run's artifacts", lambda: open_artifacts(page, stack.ui_url, run_id))
    steps("open the gallery", lambda: open_artifact(page, "segmind-batch-gallery"))
    widths = steps("the gallery's images load", lambda: image_widths(page), picture="gallery")
    assert widths
    assert all(width > 0 for width in widths), widths


@pytest.mark.parametrize(
    ("flow_name", "ends_in"),
    [
        ("edit-image", "COMPLETED"),
        ("merge-images", "COMPLETED"),
        ("edit-each-image-with-p-image-edit", "COMPLETED"),
        ("review-variations", "PAUSED"),  # it waits for a person: answered below
    ],
)
def test_every_on_demand_deployment_runs_from_quick_run_and_its_defaults(
    stack: StackState, api: Api, page: Page, steps: Steps, flow_name: str, ends_in: str
) -> None:
    deployment = api.deployment(f"{flow_name}/on-demand")
    runs_before = api.runs_of(deployment["id"])
    steps(
        f"open {flow_name}",
        lambda: open_deployment(page, stack.ui_url, flow_name, "on-demand"),
    )
    run_id = steps("Quick run with validation on", lambda: start_quick_run(page))

    assert api.runs_of(deployment["id"]) == runs_before + 1
    reached = api.wait_for_state(run_id, {ends_in, *TERMINAL})
    assert reached == ends_in, api.flow_run(run_id)["state"]
    if ends_in == "PAUSED":  # publish nothing, so the run ends and frees its worker
        api.resume(run_id, {"publish": [], "note": ""})
        assert api.wait_for_state(run_id, TERMINAL) == "COMPLETED"


def test_two_step_custom_run_with_only_the_defaults_shows_every_step(
    stack: StackState, api: Api, page: Page, steps: Steps
) -> None:
    steps(
        "open replace-background-then-merge",
        lambda: open_deployment(page, stack.ui_url, "replace-background-then-merge", "on-demand"),
    )
    steps("Custom run: the form with the defaults", lambda: start_custom_run(page))
    steps(
        "the saved blocks are preselected",
        lambda: (
            expect(page.get_by_text("segmind-outputs", exact=True)).to_be_visible(),
            expect(page.get_by_text("segmind-credentials", exact=True)).to_be_visible(),
            expect(page.get_by_text("Validate parameters")).to_be_visible(),
        ),
        picture="run-form",
    )
    run_id = steps("submit", lambda: submit_custom_run(page))

    assert api.wait_for_state(run_id, TERMINAL) == "COMPLETED", api.flow_run(run_id)["state"]
    steps("open the run's artifacts", lambda: open_artifacts(page, stack.ui_url, run_id))
    steps("open the steps side by side", lambda: open_artifact(page, "segmind-outputs"))
    widths = steps("inputs, intermediate and result load", lambda: image_widths(page))
    steps("the result artifact", lambda: None, picture="result-artifact")
    assert len(widths) >= 4, widths
    assert all(width > 0 for width in widths), widths


def use_json_input(form: Page | Locator, parameter: str, value: str) -> None:
    """A parameter's menu, Use JSON input, then ``value`` typed in as JSON."""
    page = form if isinstance(form, Page) else form.page
    label = page.locator(".schema-form-property__label", has_text=re.compile(f"^{parameter}"))
    field = form.locator(".schema-form-property", has=label).first
    field.locator(".schema-form-property-menu button").first.click()
    page.get_by_text("Use JSON input", exact=True).click()
    field.locator("textarea").fill(value)


@pytest.mark.parametrize(
    ("flow_name", "parameter", "typed", "refusal"),
    [
        (
            "edit-each-image-with-p-image-edit",
            "aspect_ratio",
            '"21:9"',
            "'21:9' is not one of ['match_input_image', '1:1', '16:9', '9:16'",
        ),
        (
            "review-variations",
            "seeds",
            "[1, 10000000000000000]",
            "10000000000000000 is greater than the maximum of 999999999999999",
        ),
    ],
    ids=["aspect-ratio-p-image-edit-refuses", "seed-out-of-range"],
)
def test_a_wrong_value_typed_in_the_form_is_refused_before_any_run_exists(
    stack: StackState,
    api: Api,
    page: Page,
    steps: Steps,
    flow_name: str,
    parameter: str,
    typed: str,
    refusal: str,
) -> None:
    deployment = api.deployment(f"{flow_name}/on-demand")
    runs_before = api.runs_of(deployment["id"])
    steps(f"open {flow_name}", lambda: open_deployment(page, stack.ui_url, flow_name, "on-demand"))
    steps("Custom run", lambda: start_custom_run(page))
    steps(f"type {typed} as {parameter}", lambda: use_json_input(page, parameter, typed))
    page.get_by_role("button", name="Submit").click()

    steps("the form says why", lambda: expect(page.get_by_text(refusal)).to_be_visible())
    assert "/run" in page.url  # still on the form
    assert api.runs_of(deployment["id"]) == runs_before


def test_the_v2_ui_run_form_accepts_the_saved_blocks(
    stack: StackState, api: Api, page: Page, steps: Steps
) -> None:
    """Prefect's V2 UI (one click away in the classic one) runs the same defaults."""
    deployment = api.deployment("edit-image/on-demand")
    runs_before = api.runs_of(deployment["id"])
    steps(
        "open the deployment in the V2 UI",
        lambda: page.goto(f"{stack.ui_url}/v2/deployments/deployment/{deployment['id']}"),
    )
    steps("Run", lambda: page.get_by_role("button", name="Run", exact=True).click())
    steps("Custom run", lambda: page.get_by_text("Custom run", exact=True).click())
    steps(
        "the saved blocks are preselected",
        lambda: (
            expect(page.get_by_text("segmind-outputs", exact=True).first).to_be_visible(),
            expect(page.get_by_text("segmind-credentials", exact=True).first).to_be_visible(),
        ),
    )
    page.wait_for_load_state("networkidle")
    with page.expect_response("**/create_flow_run") as created:
        steps("submit", lambda: page.get_by_role("button", name="Submit").click())

    assert created.value.status == 201, created.value.text()
    assert api.runs_of(deployment["id"]) == runs_before + 1
