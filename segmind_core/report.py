"""What people read about a run: an HTML page of its images, and Markdown summaries.

The Markdown goes into Prefect artifacts; it is built here, without Prefect,
from the results and a `segmind_core.thumbnails.Preview` of each image.
Thumbnails sit in an HTML table inside the Markdown, each linked to its
full-size image: Prefect's classic UI shows a Markdown link around an image
(``[![alt](thumbnail)](full)``) as text, but renders an HTML block with its
links (its newer UI renders both).
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
    from segmind_core.batch import BatchReport, RowResult
    from segmind_core.generation import EditResult
    from segmind_core.manifest import ManifestRow
    from segmind_core.thumbnails import Preview

__all__ = [
    "ReportImage",
    "render_batch_estimate_markdown",
    "render_batch_results_markdown",
    "render_outputs_markdown",
    "render_report_page",
]

GALLERY_LIMIT = 48
PROBLEM_LIMIT = 100
GRID_COLUMNS = 4
CAPTION_LABEL_LIMIT = 60


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


def _flat(text: object) -> str:
    """``text`` on one line: line breaks and other control characters become spaces."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", str(text))


def _md(text: object) -> str:
    """``text`` safe inside Markdown (tables, links): special characters escaped."""
    return re.sub(r"([\\`*_\[\]<>|#!])", r"\\\1", _flat(text))


def _html(text: object) -> str:
    """``text`` safe inside an HTML block of the Markdown: escaped, on one line.

    A blank line would end the block.
    """
    return html.escape(_flat(text), quote=True)


@dataclass(frozen=True)
class _Tile:
    """One thumbnail of a grid: its label, how it is shown, and the lines under it."""

    label: str
    preview: Preview
    caption: Sequence[str] = ()


def _short(label: str) -> str:
    """``label`` on one line, cut to `CAPTION_LABEL_LIMIT` characters (a prompt can be a label)."""
    label = _flat(label)
    if len(label) <= CAPTION_LABEL_LIMIT:
        return label
    return label[: CAPTION_LABEL_LIMIT - 3] + "..."


def _thumbnail_html(tile: _Tile) -> str:
    """The thumbnail, linked to the full-size image when a browser can open it."""
    shown = tile.preview
    if shown.thumbnail is None:
        body = _html(f"no thumbnail ({shown.problem or 'unknown'})")
    else:
        body = f'<img src="{_html(shown.thumbnail)}" alt="{_html(_short(tile.label))}">'
    return f'<a href="{_html(shown.full)}">{body}</a>' if shown.full else body


def _caption_html(tile: _Tile) -> str:
    """The label in bold, then each line of the caption."""
    lines = [f"<strong>{_html(_short(tile.label))}</strong>", *map(_html, tile.caption)]
    return "<br>".join(lines)


def _grid(tiles: Sequence[_Tile], columns: int = GRID_COLUMNS) -> list[str]:
    """Thumbnails in rows of ``columns``, each caption in the row below: an HTML table."""
    if not tiles:
        return []
    width = f'width="{100 // columns}%" align="center"'
    lines = ["<table>"]
    for start in range(0, len(tiles), columns):
        row = tiles[start : start + columns]
        cells = "".join(f'<td {width} valign="bottom">{_thumbnail_html(t)}</td>' for t in row)
        captions = "".join(f'<td {width} valign="top">{_caption_html(t)}</td>' for t in row)
        lines += [f"<tr>{cells}</tr>", f"<tr>{captions}</tr>"]
    return [*lines, "</table>"]


def _size(shown: Preview) -> list[str]:
    """``["1024x1024 PNG"]`` when the image was read, else nothing."""
    return [f"{shown.width}x{shown.height} {shown.format}"] if shown.width else []


def _duration(seconds: int) -> str:
    """``3600`` as "1 hour", ``172800`` as "2 days"; seconds when no unit divides it."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} s"


def _links_note(previews: Sequence[Preview]) -> list[str]:
    """What a person needs to know about the links: when they expire, or why there are none."""
    notes: list[str] = []
    expiries = sorted(
        (p.expires_at, p.expires_in_s) for p in previews if p.expires_at and p.expires_in_s
    )
    if expiries:
        first, lifetime = expiries[0]
        notes.append(
            "Click a thumbnail for the full-size image. The links are presigned: they work "
            f"until {first:%Y-%m-%d %H:%M} UTC ({_duration(lifetime)} after publishing, "
            "the storage's presign_expiry_s)."
        )
    if any(p.full is None for p in previews):
        notes.append(
            "Images without a link are files on the worker (thumbnails embedded here): "
            "a browser cannot open a worker's local path, so use the path listed."
        )
    return [line for note in notes for line in ("", note)]


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
    preview: Callable[[str], Preview],
    gallery_limit: int = GALLERY_LIMIT,
) -> str:
    """The batch's summary, its failures, then a grid of thumbnails of its outputs.

    Args:
        report: The finished batch.
        results_url: Where the results manifest is.
        preview: How an output URL is shown (`segmind_core.thumbnails.preview`).
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
    lines += _problems_table(problems)
    if succeeded:
        shown = succeeded[:gallery_limit]
        lines += ["", f"## Outputs ({len(shown)} of {len(succeeded)})", ""]
        lines += _gallery(shown, preview)
    return "\n".join(lines) + "\n"


def _problems_table(problems: Sequence[RowResult]) -> list[str]:
    """The rows that did not succeed, as a Markdown table (at most `PROBLEM_LIMIT`)."""
    if not problems:
        return []
    lines = ["", "## Rows that did not succeed", "", "| line | id | status | reason |"]
    lines.append("|---:|---|---|---|")
    for result in problems[:PROBLEM_LIMIT]:
        lines.append(
            f"| {result.line} | {_md(result.id or '')} | {result.status.value} "
            f"| {_md(result.error or '')} |"
        )
    if len(problems) > PROBLEM_LIMIT:
        lines.append(f"\n... and {len(problems) - PROBLEM_LIMIT} more in the results manifest.")
    return lines


def _gallery(results: Sequence[RowResult], preview: Callable[[str], Preview]) -> list[str]:
    """The outputs' thumbnails in a grid, where each is stored, and what the links do."""
    tiles = []
    for result in results:
        assert result.output is not None  # noqa: S101 - the caller keeps rows with an output
        shown = preview(result.output)
        cost = "cached" if result.cached else f"{result.cost_usd:.2f} USD"
        caption = [result.endpoint or "", f"seed {result.seed}, {cost}", *_size(shown)]
        tiles.append(_Tile(result.id or "", shown, caption))
    stored = [f"- **{_md(r.id)}**: `{r.output}`" for r in results]
    return [*_grid(tiles), "", "Stored at:", "", *stored, *_links_note([t.preview for t in tiles])]


def render_outputs_markdown(
    title: str,
    outputs: Sequence[tuple[str, EditResult]],
    *,
    preview: Callable[[str], Preview],
    inputs: Sequence[tuple[str, str]] = (),
) -> str:
    """Labelled images side by side, then each one's size, seed, cost and place.

    Args:
        title: The heading.
        outputs: Each output with its label ("Background replaced", "Variation 1"...).
        preview: How an image URL is shown (`segmind_core.thumbnails.preview`).
        inputs: Labelled input images (URLs in storage) shown first, e.g. a
            two-step flow's inputs before its intermediate and its result.
    """
    tiles = []
    for label, url in inputs:
        shown = preview(url)
        tiles.append(_Tile(label, shown, ["input", *_size(shown)]))
    tiles += [_Tile(label, preview(result.url), _output_facts(result)) for label, result in outputs]
    paid = sum((result.cost_usd for _, result in outputs if not result.reused), Decimal(0))
    lines = [f"# {_md(title)}", "", *_grid(tiles), ""]
    lines += [f"- **{_md(label)}**: input: `{url}`" for label, url in inputs]
    lines += [
        f"- **{_md(label)}**: {_md(', '.join(_output_facts(result)))}: `{result.url}`"
        for label, result in outputs
    ]
    lines += [
        "",
        f"Paid in this run: **{paid:.2f} USD**.",
        *_links_note([t.preview for t in tiles]),
    ]
    return "\n".join(lines) + "\n"


def _output_facts(result: EditResult) -> list[str]:
    """Endpoint, size and format, seed, and what this run paid for it."""
    cost = "from cache, 0.00 USD" if result.reused else f"{result.cost_usd:.2f} USD"
    return [
        result.slug,
        f"{result.width}x{result.height} {result.format.value}",
        f"seed {result.seed}",
        cost,
    ]
