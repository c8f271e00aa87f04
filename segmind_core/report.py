"""What people read about a run: an HTML page of its images, and batch summaries in Markdown.

The Markdown goes into Prefect artifacts; it is built here, without Prefect,
from the batch report.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from segmind_core.contract import get_endpoint

if TYPE_CHECKING:
    from segmind_core.batch import BatchReport
    from segmind_core.generation import EditResult
    from segmind_core.manifest import ManifestRow

__all__ = [
    "ReportImage",
    "render_batch_estimate_markdown",
    "render_batch_results_markdown",
    "render_outputs_markdown",
    "render_report_page",
]

GALLERY_LIMIT = 48
PROBLEM_LIMIT = 100


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


def _md(text: object) -> str:
    """``text`` safe inside Markdown (tables, links): special characters escaped."""
    flat = re.sub(r"[\x00-\x1f\x7f]+", " ", str(text))  # line breaks and other controls
    return re.sub(r"([\\`*_\[\]<>|#!])", r"\\\1", flat)


def render_batch_estimate_markdown(
    rows: Sequence[ManifestRow],
    calls: Sequence[str],
    *,
    rejected: int,
    max_cost_usd: Decimal | None,
) -> str:
    """The cost estimate of a batch, before any call: calls per endpoint at list price.

    Args:
        rows: The good rows.
        calls: The slug of every call the rows will make.
        rejected: How many rows the manifest check set aside.
        max_cost_usd: The budget, if one was set.
    """
    counts = Counter(calls)
    lines = [
        "# Cost estimate",
        "",
        f"{len(rows)} rows to run ({rejected} rejected by the manifest check), "
        f"{len(calls)} calls at list price. Rows served from the cache cost nothing, "
        "so this is an upper bound.",
        "",
        "| endpoint | calls | price (USD) | subtotal (USD) |",
        "|---|---:|---:|---:|",
    ]
    total = Decimal(0)
    for slug, count in sorted(counts.items()):
        price = get_endpoint(slug).price_usd
        total += price * count
        lines.append(f"| {_md(slug)} | {count} | {price:.2f} | {price * count:.2f} |")
    verdict = ""
    if max_cost_usd is not None:
        within = total <= max_cost_usd
        verdict = f"; budget (max_cost_usd) {max_cost_usd:.2f} USD: " + (
            "within it." if within else "over it, so the batch is refused."
        )
    lines += ["", f"**Estimate: {total:.2f} USD**{verdict}"]
    return "\n".join(lines) + "\n"


def render_batch_results_markdown(
    report: BatchReport,
    *,
    results_url: str,
    link: Callable[[str], str | None],
    gallery_limit: int = GALLERY_LIMIT,
) -> str:
    """The batch's summary, its failures and a gallery of its outputs.

    Args:
        report: The finished batch.
        results_url: Where the results manifest is.
        link: An HTTPS link for an output URL (presigned), or ``None`` when there
            is none (local storage: the path is shown instead).
        gallery_limit: Outputs shown at most.
    """
    from segmind_core.batch import RowStatus

    succeeded = [r for r in report.results if r.status is RowStatus.SUCCEEDED and r.output]
    problems = [r for r in report.results if r.status is not RowStatus.SUCCEEDED]
    lines = [
        "# Batch results",
        "",
        f"**{len(report.results)} rows**: {report.count(RowStatus.SUCCEEDED)} succeeded, "
        f"{report.count(RowStatus.FAILED)} failed, {report.count(RowStatus.NOT_RUN)} not run.",
        "",
        f"Paid **{report.paid_usd:.2f} USD** (estimate {report.estimate_usd:.2f} USD); "
        f"the cache saved **{report.saved_usd:.2f} USD** "
        f"({sum(1 for r in report.results if r.cached)} rows cost nothing).",
        "",
        f"Results manifest: `{results_url}`",
    ]
    if report.stopped:
        lines += ["", f"New calls were stopped: {_md(report.stopped)}."]
    if problems:
        lines += ["", "## Rows that did not succeed", "", "| line | id | status | reason |"]
        lines.append("|---:|---|---|---|")
        for result in problems[:PROBLEM_LIMIT]:
            lines.append(
                f"| {result.line} | {_md(result.id or '')} | {result.status.value} "
                f"| {_md(result.error or '')} |"
            )
        if len(problems) > PROBLEM_LIMIT:
            lines.append(f"\n... and {len(problems) - PROBLEM_LIMIT} more in the results manifest.")
    if succeeded:
        shown = succeeded[:gallery_limit]
        lines += ["", f"## Outputs ({len(shown)} of {len(succeeded)})", ""]
        for result in shown:
            assert result.output is not None  # noqa: S101 - filtered above
            href = link(result.output)
            cost = "cached" if result.cached else f"{result.cost_usd:.2f} USD"
            caption = f"**{_md(result.id)}** ({_md(result.endpoint)}, seed {result.seed}, {cost})"
            if href is None:
                lines.append(f"- {caption}: `{result.output}`")
            else:
                lines.append(f"- {caption}\n\n  ![{_md(result.id)}]({href})")
    return "\n".join(lines) + "\n"


def render_outputs_markdown(
    title: str,
    outputs: Sequence[tuple[str, EditResult]],
    *,
    link: Callable[[str], str | None],
) -> str:
    """Labelled outputs with size, seed and cost: images through ``link``, else paths."""
    lines = [f"# {_md(title)}", ""]
    paid = sum((result.cost_usd for _, result in outputs if not result.reused), Decimal(0))
    for label, result in outputs:
        cost = "from cache, 0.00 USD" if result.reused else f"{result.cost_usd:.2f} USD"
        lines.append(
            f"- **{_md(label)}**: {_md(result.slug)}, {result.width}x{result.height} "
            f"{result.format.value}, seed {result.seed}, {cost}: `{result.url}`"
        )
        href = link(result.url)
        if href is not None:
            lines.append(f"\n  ![{_md(label)}]({href})")
    lines += ["", f"Paid in this run: **{paid:.2f} USD**."]
    return "\n".join(lines) + "\n"
