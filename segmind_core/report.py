"""A small static HTML page that shows a run's images side by side."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ReportImage", "render_report_page"]


@dataclass(frozen=True)
class ReportImage:
    """One panel of the page.

    Attributes:
        title: Heading above the image ("Input A", "Background replaced", ...).
        filename: The image file, relative to the page.
        caption: One line under the image (seed, size, cost...).
    """

    title: str
    filename: str
    caption: str = ""


def render_report_page(title: str, panels: Sequence[ReportImage]) -> str:
    """A self-contained HTML page of ``panels`` in a row.

    Every text is HTML-escaped; image sources are used as given (relative
    paths or presigned URLs).
    """
    figures = "\n".join(
        "<figure>"
        f"<figcaption><strong>{html.escape(panel.title)}</strong></figcaption>"
        f'<img src="{html.escape(panel.filename, quote=True)}" '
        f'alt="{html.escape(panel.title, quote=True)}">'
        f"<p>{html.escape(panel.caption)}</p>"
        "</figure>"
        for panel in panels
    )
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; background: #fafafa; }}
.row {{ display: flex; gap: 1.5rem; align-items: flex-start; flex-wrap: wrap; }}
figure {{ margin: 0; max-width: 22rem; }}
img {{ max-width: 100%; border: 1px solid #ccc; background: white; }}
p {{ font-size: 0.85rem; color: #555; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<div class="row">
{figures}
</div>
</body>
</html>
"""
    return page
