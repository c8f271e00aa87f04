"""A real browser on the Prefect UI: Debian's Chromium driven by Playwright, step by step.

Every step is named and leaves a screenshot; a step that fails raises an
``AssertionError`` naming the step, with the page's text and the screenshot's
path, so a red test reads like the person's path up to where it broke.
With ``SEGMIND_UI_PICTURES`` set to a folder, the steps given a ``picture``
name are also saved there under that name: ``scripts/ui-pictures`` makes the
README's pictures that way.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from playwright.sync_api import Browser, Page, sync_playwright

__all__ = ["CHROMIUM_ARGS", "Steps", "chromium_path", "launch_chromium"]

T = TypeVar("T")
# Headless, as root, on a machine without a network beyond loopback: no sandbox,
# no GPU, and none of Chromium's own background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    # No name is looked up but loopback's (the V2 UI asks for fonts and news online).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
PAGE_TEXT_LIMIT = 4000


def chromium_path() -> str:
    """Debian's Chromium (``apt-get install chromium``); Playwright never downloads one here."""
    found = os.environ.get("SEGMIND_CHROMIUM") or shutil.which("chromium")
    if not found:
        raise AssertionError(
            "Chromium is not installed: `apt-get install chromium` (Debian's package), "
            "or set SEGMIND_CHROMIUM to its path"
        )
    return found


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """A headless Chromium for the session."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Steps:
    """Named steps on one page, each followed by a screenshot."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.count = 0
        pictures = os.environ.get("SEGMIND_UI_PICTURES")
        self.pictures = Path(pictures) if pictures else None
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, action: Callable[[], T], *, picture: str | None = None) -> T:
        """Do ``action`` as step ``name``; screenshot after it, or explain why it failed."""
        self.count += 1
        shot = self.folder / f"{self.count:02d}-{re.sub(r'[^a-z0-9]+', '-', name.lower())}.png"
        try:
            result = action()
        except Exception as exc:
            self.page.screenshot(path=str(shot), full_page=True)
            raise AssertionError(
                f"step {self.count} '{name}' failed: {exc}\n"
                f"screenshot: {shot}\npage {self.page.url} says:\n{self.text()}"
            ) from exc
        self.page.screenshot(path=str(shot), full_page=picture is None)
        if picture is not None and self.pictures is not None:
            self.pictures.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, self.pictures / f"{picture}.png")
        return result

    def text(self) -> str:
        """What the page says, cut to a readable length."""
        try:
            return self.page.inner_text("body")[:PAGE_TEXT_LIMIT]
        except Exception as exc:  # the page itself may be what broke
            return f"(no text: {exc})"
