"""What a person does in the classic Prefect UI, one function per action.

Locators are what the person reads: link and button names, field labels,
texts. Each function leaves the page where the next action starts.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

__all__ = [
    "image_widths",
    "open_artifact",
    "open_artifacts",
    "open_deployment",
    "run_id_from_url",
    "start_custom_run",
    "start_quick_run",
    "submit_custom_run",
]

RUN_URL = re.compile(r"/runs/flow-run/([0-9a-f-]{36})")


def open_deployment(page: Page, ui_url: str, flow_name: str, deployment: str) -> None:
    """Deployments, then the row of ``flow_name``'s deployment."""
    page.goto(f"{ui_url}/deployments")
    row = page.locator("tr", has_text=flow_name)
    row.get_by_role("link", name=deployment, exact=True).click()
    page.wait_for_url("**/deployments/deployment/**")
    expect(page.get_by_role("button", name="Run", exact=True)).to_be_visible()


def start_quick_run(page: Page) -> str:
    """Run, Quick run, then Run in the form it opens (validation left on); the run's id."""
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Quick run", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Validate parameters")).to_be_visible()
    expect(dialog.get_by_role("checkbox")).to_be_checked()
    dialog.get_by_role("button", name="Run", exact=True).click()
    return _view_the_new_run(page)


def start_custom_run(page: Page) -> None:
    """Run, Custom run: the form page, filled with the deployment's defaults."""
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.wait_for_url("**/run?**")
    expect(page.get_by_role("button", name="Submit")).to_be_visible()


def submit_custom_run(page: Page) -> str:
    """Submit the custom run form as it stands; the new run's id."""
    page.get_by_role("button", name="Submit").click()
    return _view_the_new_run(page)


def _view_the_new_run(page: Page) -> str:
    """The toast's View run, to the run's page."""
    page.get_by_role("button", name="View run").last.click()
    page.wait_for_url(RUN_URL)
    return run_id_from_url(page.url)


def run_id_from_url(url: str) -> str:
    found = RUN_URL.search(url)
    assert found, f"not a flow run page: {url}"
    return found.group(1)


def open_artifacts(page: Page, ui_url: str, run_id: str) -> None:
    """The run's page, its Artifacts tab."""
    page.goto(f"{ui_url}/runs/flow-run/{run_id}")
    page.get_by_text("Artifacts", exact=True).click()


ARTIFACT_IMAGES = ".markdown-renderer img"
"""The images of a Markdown artifact as the classic UI renders it (not the UI's own logo)."""


def image_widths(page: Page) -> list[int]:
    """The natural width of every image of the artifact once each has loaded or failed."""
    page.wait_for_function(
        f"() => {{ const images = [...document.querySelectorAll({ARTIFACT_IMAGES!r})];"
        " return images.length > 0 && images.every(i => i.complete); }"
    )
    widths: list[int] = page.eval_on_selector_all(
        ARTIFACT_IMAGES, "els => els.map(e => e.naturalWidth)"
    )
    return widths


def open_artifact(page: Page, key: str) -> None:
    """From the run's Artifacts tab, the artifact ``key``, on its own page."""
    page.get_by_text(key, exact=True).first.click()
    page.wait_for_url("**/artifacts/artifact/**")
