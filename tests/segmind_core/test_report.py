"""What people read about a run: the HTML page, and the Markdown of the artifacts."""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from segmind_core.batch import BatchReport, RowResult, RowStatus, calls_for, estimate_cost
from segmind_core.contract import OutputFormat, get_endpoint
from segmind_core.generation import EditResult
from segmind_core.manifest import check_rows
from segmind_core.object_store import ObjectStore
from segmind_core.report import (
    CAPTION_LABEL_LIMIT,
    PROBLEM_LIMIT,
    ReportImage,
    render_batch_estimate_markdown,
    render_batch_results_markdown,
    render_outputs_markdown,
    render_report_page,
)
from segmind_core.thumbnails import Preview, preview
from tests.conftest import S3Server
from tests.support import decode, image_bytes


class _Collector(HTMLParser):
    """Collects start tags with their attributes and every text node."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.texts.append(data.strip())


def parse(page: str) -> _Collector:
    collector = _Collector()
    collector.feed(page)
    collector.close()
    return collector


PANELS = [
    ReportImage("Input A", "input_a.png", "640x480"),
    ReportImage("Input B", "input_b.jpg", "seed 42"),
    ReportImage("Merged", "merged.png", "seed 7 | 0.05 USD | 1184x880"),
]


def test_every_panel_is_on_the_page_in_order() -> None:
    page = render_report_page("Run 2025-06-01", PANELS)
    assert page.startswith("<!doctype html>")
    parsed = parse(page)
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert [a["src"] for a in images] == ["input_a.png", "input_b.jpg", "merged.png"]
    assert [a["alt"] for a in images] == ["Input A", "Input B", "Merged"]
    assert [tag for tag, _ in parsed.tags].count("figure") == 3
    for panel in PANELS:
        assert panel.title in parsed.texts
        assert panel.caption in parsed.texts
    assert parsed.texts.count("Run 2025-06-01") == 2  # <title> and <h1>
    positions = [page.index(p.filename) for p in PANELS]
    assert positions == sorted(positions)


def test_text_is_html_escaped() -> None:
    panels = [
        ReportImage(
            "<script>alert(1)</script>",
            'odd "name" <x>.png',
            "cost < 1 & seed > 0",
        )
    ]
    page = render_report_page("Run <b>bold</b> & co", panels)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>" not in page
    assert "Run &lt;b&gt;bold&lt;/b&gt; &amp; co" in page
    assert "cost &lt; 1 &amp; seed &gt; 0" in page
    assert 'src="odd &quot;name&quot; &lt;x&gt;.png"' in page
    parsed = parse(page)
    (img,) = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert img["src"] == 'odd "name" <x>.png'
    assert img["alt"] == "<script>alert(1)</script>"
    assert "cost < 1 & seed > 0" in parsed.texts
    assert "script" not in [tag for tag, _ in parsed.tags]


def test_unicode_and_an_empty_caption() -> None:
    panels = [ReportImage("Fond remplacé — été", "é.png")]
    page = render_report_page("Résumé", panels)
    assert '<meta charset="utf-8">' in page
    assert "Fond remplacé — été" in page
    assert 'src="é.png"' in page
    assert "<p></p>" in page


def test_no_panels_still_makes_a_page() -> None:
    page = render_report_page("Nothing yet", [])
    assert "<figure>" not in page
    assert "<h1>Nothing yet</h1>" in page


# --- Markdown: the batch estimate -------------------------------------------------------------

IMAGE_A = "https://127.0.0.1/a.png"
IMAGE_B = "https://127.0.0.1/b.png"


def price(slug: str) -> Decimal:
    return get_endpoint(slug).price_usd


def batch_rows() -> list[dict[str, object]]:
    return [
        {"id": "a", "endpoint": "flux-kontext-pro", "prompt": "x", "images": [IMAGE_A]},
        {"id": "b", "endpoint": "flux-kontext-pro", "prompt": "y"},
        {
            "id": "m",
            "endpoint": "replace_background_then_merge",
            "prompt": "merge",
            "background_prompt": "a beach",
            "images": [IMAGE_A, IMAGE_B],
        },
        {"id": "p", "endpoint": "p-image-edit", "prompt": "z", "images": [IMAGE_A]},
    ]


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every table row after a header separator."""
    rows: list[list[str]] = []
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("|---"):
            in_table = True
            continue
        if in_table and line.startswith("|"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
        else:
            in_table = False
    return rows


def test_estimate_markdown_counts_the_calls_per_endpoint_at_list_price() -> None:
    rows = check_rows(batch_rows()).rows
    # In any order: the table is sorted by endpoint.
    calls = [slug for row in reversed(rows) for slug in calls_for(row)]
    assert calls[0] == "p-image-edit"

    markdown = render_batch_estimate_markdown(rows, calls, rejected=2, max_cost_usd=None)

    assert markdown.startswith("# Cost estimate\n")
    assert markdown.endswith("\n")
    assert "4 rows to run (2 rejected by the manifest check), 5 calls at list price." in markdown
    flux, multi, pedit = (
        price("flux-kontext-pro"),
        price("multi-image-kontext-pro"),
        price("p-image-edit"),
    )
    assert table_rows(markdown) == [
        ["flux-kontext-pro", "3", f"{flux:.2f}", f"{3 * flux:.2f}"],
        ["multi-image-kontext-pro", "1", f"{multi:.2f}", f"{multi:.2f}"],
        ["p-image-edit", "1", f"{pedit:.2f}", f"{pedit:.2f}"],
    ]
    total = estimate_cost(rows)
    assert total == 3 * flux + multi + pedit
    assert markdown.splitlines()[-1] == f"**Estimate: {total:.2f} USD**"
    assert "budget" not in markdown


def test_estimate_markdown_says_whether_the_budget_holds() -> None:
    rows = check_rows(batch_rows()).rows
    calls = [slug for row in rows for slug in calls_for(row)]
    total = estimate_cost(rows)

    equal = render_batch_estimate_markdown(rows, calls, rejected=0, max_cost_usd=total)
    above = render_batch_estimate_markdown(rows, calls, rejected=0, max_cost_usd=Decimal("5"))
    below = render_batch_estimate_markdown(
        rows, calls, rejected=0, max_cost_usd=total - Decimal("0.01")
    )

    assert equal.splitlines()[-1] == (
        f"**Estimate: {total:.2f} USD**; budget (max_cost_usd) {total:.2f} USD: within it."
    )
    assert above.splitlines()[-1].endswith("budget (max_cost_usd) 5.00 USD: within it.")
    assert below.splitlines()[-1] == (
        f"**Estimate: {total:.2f} USD**; budget (max_cost_usd) "
        f"{total - Decimal('0.01'):.2f} USD: over it, so the batch is refused."
    )


def test_estimate_markdown_of_no_rows() -> None:
    markdown = render_batch_estimate_markdown([], [], rejected=3, max_cost_usd=Decimal(0))

    assert "0 rows to run (3 rejected by the manifest check), 0 calls" in markdown
    assert table_rows(markdown) == []
    assert markdown.splitlines()[-1] == (
        "**Estimate: 0.00 USD**; budget (max_cost_usd) 0.00 USD: within it."
    )


# --- Markdown: the batch results -----------------------------------------------------------------


def result(
    row_id: str | None,
    line: int,
    status: RowStatus,
    *,
    endpoint: str = "flux-kontext-pro",
    output: str | None = None,
    error: str | None = None,
    cost: str = "0",
    cached: bool = False,
    seed: int | None = None,
) -> RowResult:
    return RowResult(
        id=row_id,
        line=line,
        endpoint=endpoint,
        status=status,
        output=output,
        error=error,
        cost_usd=Decimal(cost),
        cached=cached,
        seed=seed,
    )


EXPIRES_AT = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)
EMBEDDED = "data:image/jpeg;base64,/9j/AAAA"


class Previews:
    """A ``preview`` that "presigns" s3:// URLs, embeds local ones and cannot read
    ``broken.png``; it remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, url: str) -> Preview:
        self.asked.append(url)
        if url.endswith("broken.png"):
            return Preview(None, None, problem="UnidentifiedImageError")
        if url.startswith("s3://"):
            path = url.removeprefix("s3://")
            return Preview(
                thumbnail=f"https://127.0.0.1/thumbnails/{path}?X-Amz-Signature=abc&x=1",
                full=f"https://127.0.0.1/signed/{path}?X-Amz-Signature=abc&x=1",
                width=1024,
                height=768,
                format="PNG",
                expires_at=EXPIRES_AT,
                expires_in_s=3600,
            )
        return Preview(EMBEDDED, None, width=640, height=480, format="JPEG")


@dataclass
class Cell:
    """One cell of the thumbnail grid."""

    href: str | None = None
    src: str | None = None
    alt: str | None = None
    texts: list[str] = field(default_factory=list)


class _Grid(HTMLParser):
    """The rows of ``<td>`` cells of an HTML table."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[Cell]] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self.rows[-1].append(Cell())
        elif tag == "a":
            self.rows[-1][-1].href = attributes["href"]
        elif tag == "img":
            self.rows[-1][-1].src = attributes["src"]
            self.rows[-1][-1].alt = attributes["alt"]

    def handle_data(self, data: str) -> None:
        if data.strip() and self.rows and self.rows[-1]:
            self.rows[-1][-1].texts.append(data.strip())


def grid(markdown: str) -> list[list[Cell]]:
    """The thumbnail grid: one HTML block with no blank line, which would end it."""
    lines = markdown.splitlines()
    start, end = lines.index("<table>"), lines.index("</table>")
    assert lines[start - 1] == ""  # an HTML block starts after a blank line
    block = lines[start : end + 1]
    assert all(line.strip() for line in block), block
    parser = _Grid()
    parser.feed("\n".join(block))
    parser.close()
    assert parser.tables == 1
    return parser.rows


MIXED = BatchReport(
    results=[
        result("a", 1, RowStatus.SUCCEEDED, output="s3://outputs/b/a.png", cost="0.05", seed=7),
        result(
            "b_2",
            2,
            RowStatus.SUCCEEDED,
            endpoint="replace_background_then_merge",
            output="/srv/outputs/b_2.png",
            cached=True,
            seed=8,
        ),
        result("c", 3, RowStatus.FAILED, error="503 | retry *later*\nsecond line"),
        result("d", 4, RowStatus.NOT_RUN, error="not run: Segmind credits ran out"),
        result(None, 5, RowStatus.FAILED, error="line 5: not valid JSON"),
    ],
    estimate_usd=Decimal("0.20"),
    paid_usd=Decimal("0.05"),
    saved_usd=Decimal("0.10"),
    calls=4,
)


def test_results_markdown_summarises_the_counts_and_the_money() -> None:
    markdown = render_batch_results_markdown(
        MIXED, results_url="s3://outputs/runs/r-results.jsonl", preview=Previews()
    )

    lines = markdown.splitlines()
    assert lines[0] == "# Batch results"
    assert "**5 rows**: 2 succeeded, 2 failed, 1 not run." in lines
    assert (
        "Paid **0.05 USD** (estimate 0.20 USD); the cache saved **0.10 USD** (1 rows cost nothing)."
    ) in lines
    assert "Results manifest: `s3://outputs/runs/r-results.jsonl`" in lines
    assert "New calls were stopped" not in markdown
    assert markdown.endswith("\n")


def test_results_markdown_lists_the_rows_that_did_not_succeed_escaped() -> None:
    markdown = render_batch_results_markdown(MIXED, results_url="r.jsonl", preview=Previews())

    assert "## Rows that did not succeed" in markdown
    assert table_rows(markdown) == [
        ["3", "c", "failed", r"503 \| retry \*later\* second line"],
        ["4", "d", "not_run", "not run: Segmind credits ran out"],
        ["5", "", "failed", "line 5: not valid JSON"],
    ]


def test_results_markdown_lists_the_failures_before_the_grid_of_outputs() -> None:
    markdown = render_batch_results_markdown(MIXED, results_url="r.jsonl", preview=Previews())

    failures = markdown.index("## Rows that did not succeed")
    assert failures < markdown.index("| 3 | c | failed |") < markdown.index("## Outputs (2 of 2)")
    assert markdown.index("## Outputs (2 of 2)") < markdown.index("<table>")


def test_results_markdown_shows_outputs_as_linked_thumbnails_with_captions() -> None:
    previews = Previews()

    markdown = render_batch_results_markdown(MIXED, results_url="r.jsonl", preview=previews)

    assert previews.asked == ["s3://outputs/b/a.png", "/srv/outputs/b_2.png"]
    thumbnails, captions = grid(markdown)
    presigned, local = thumbnails
    # On S3: the presigned thumbnail, inside a link to the presigned full-size image.
    assert presigned.src == "https://127.0.0.1/thumbnails/outputs/b/a.png?X-Amz-Signature=abc&x=1"
    assert presigned.href == "https://127.0.0.1/signed/outputs/b/a.png?X-Amz-Signature=abc&x=1"
    assert presigned.alt == "a"
    # Locally: the embedded thumbnail, and no link a browser could not follow.
    assert (local.src, local.href, local.alt) == (EMBEDDED, None, "b_2")
    assert [cell.texts for cell in captions] == [
        ["a", "flux-kontext-pro", "seed 7, 0.05 USD", "1024x768 PNG"],
        ["b_2", "replace_background_then_merge", "seed 8, cached", "640x480 JPEG"],
    ]
    # Where each one is stored, and what the links do.
    lines = markdown.splitlines()
    assert "- **a**: `s3://outputs/b/a.png`" in lines
    assert r"- **b\_2**: `/srv/outputs/b_2.png`" in lines
    assert (
        "Click a thumbnail for the full-size image. The links are presigned: they work until "
        "2026-12-07 21:00 UTC (1 hour after publishing, the storage's presign_expiry_s)."
    ) in lines
    assert any("a browser cannot open a worker's local path" in line for line in lines)


def test_results_grid_has_four_thumbnails_a_row_each_with_its_caption_row() -> None:
    report = BatchReport(
        results=[
            result(f"r{n}", n, RowStatus.SUCCEEDED, output=f"s3://o/r{n}.png", seed=n)
            for n in range(1, 10)
        ],
        estimate_usd=Decimal("0.45"),
    )

    rows = grid(render_batch_results_markdown(report, results_url="r.jsonl", preview=Previews()))

    assert [len(row) for row in rows] == [4, 4, 4, 4, 1, 1]
    assert [cell.alt for cell in rows[0] + rows[2] + rows[4]] == [f"r{n}" for n in range(1, 10)]
    assert [cell.texts[0] for cell in rows[1] + rows[3] + rows[5]] == [
        f"r{n}" for n in range(1, 10)
    ]


def test_results_markdown_says_when_an_output_has_no_thumbnail() -> None:
    report = BatchReport(
        results=[result("x", 1, RowStatus.SUCCEEDED, output="/srv/broken.png", seed=1)],
        estimate_usd=Decimal("0.05"),
    )

    markdown = render_batch_results_markdown(report, results_url="r.jsonl", preview=Previews())

    thumbnails, captions = grid(markdown)
    assert (thumbnails[0].src, thumbnails[0].href) == (None, None)
    assert thumbnails[0].texts == ["no thumbnail (UnidentifiedImageError)"]
    assert captions[0].texts == ["x", "flux-kontext-pro", "seed 1, 0.00 USD"]  # size unknown
    assert "- **x**: `/srv/broken.png`" in markdown.splitlines()


def test_results_markdown_says_why_new_calls_were_stopped() -> None:
    report = MIXED.model_copy(update={"stopped": "Segmind credits ran out (406 on row c)"})

    markdown = render_batch_results_markdown(report, results_url="r.jsonl", preview=Previews())

    assert (
        "New calls were stopped: Segmind credits ran out (406 on row c)." in markdown.splitlines()
    )


def test_results_markdown_caps_the_gallery() -> None:
    report = BatchReport(
        results=[
            result(f"r{n}", n, RowStatus.SUCCEEDED, output=f"s3://o/r{n}.png", seed=n)
            for n in range(1, 4)
        ],
        estimate_usd=Decimal("0.15"),
    )
    previews = Previews()

    markdown = render_batch_results_markdown(
        report, results_url="r.jsonl", preview=previews, gallery_limit=2
    )

    assert "## Outputs (2 of 3)" in markdown
    assert [cell.alt for cell in grid(markdown)[0]] == ["r1", "r2"]
    assert "**r3**" not in markdown
    assert previews.asked == ["s3://o/r1.png", "s3://o/r2.png"]
    assert "## Rows that did not succeed" not in markdown


def test_results_markdown_without_outputs_has_no_gallery() -> None:
    report = BatchReport(
        results=[result("a", 1, RowStatus.NOT_RUN, error="not run: over budget")],
        estimate_usd=Decimal("0.05"),
        stopped="over budget",
    )
    previews = Previews()

    markdown = render_batch_results_markdown(report, results_url="r.jsonl", preview=previews)

    assert "## Outputs" not in markdown
    assert "<table>" not in markdown
    assert previews.asked == []
    assert "**1 rows**: 0 succeeded, 0 failed, 1 not run." in markdown


def test_results_markdown_caps_the_problem_table() -> None:
    count = PROBLEM_LIMIT + 3
    report = BatchReport(
        results=[result(f"r{n}", n, RowStatus.FAILED, error="boom") for n in range(1, count + 1)],
        estimate_usd=Decimal(0),
    )

    markdown = render_batch_results_markdown(report, results_url="r.jsonl", preview=Previews())

    shown = table_rows(markdown)
    assert len(shown) == PROBLEM_LIMIT
    assert shown[0][:2] == ["1", "r1"]
    assert shown[-1][:2] == [str(PROBLEM_LIMIT), f"r{PROBLEM_LIMIT}"]
    assert "... and 3 more in the results manifest." in markdown


# --- Markdown: labelled outputs -------------------------------------------------------------------


def edit_result(
    slug: str, url: str, *, seed: int, cost: str, fmt: OutputFormat, reused: bool = False
) -> EditResult:
    return EditResult(
        slug=slug,
        url=url,
        key=url.rsplit("/", 1)[-1],
        sha256="0" * 64,
        format=fmt,
        width=1184,
        height=880,
        size_bytes=100,
        seed=seed,
        cost_usd=Decimal(cost),
        credits_remaining=None,
        latency_s=0.0,
        attempts=0 if reused else 1,
        request_digest="d" * 64,
        reused=reused,
    )


TWO_OUTPUTS = [
    (
        "Background replaced",
        edit_result("flux-kontext-pro", "s3://o/bg.png", seed=7, cost="0.05", fmt=OutputFormat.PNG),
    ),
    (
        "Merged #1",
        edit_result(
            "multi-image-kontext-pro",
            "/srv/o/merged.jpg",
            seed=8,
            cost="0",
            fmt=OutputFormat.JPG,
            reused=True,
        ),
    ),
]


def test_outputs_markdown_lists_each_output_and_what_this_run_paid() -> None:
    previews = Previews()

    markdown = render_outputs_markdown("Run <1>", TWO_OUTPUTS, preview=previews)

    lines = markdown.splitlines()
    assert lines[0] == r"# Run \<1\>"
    assert (
        "- **Background replaced**: flux-kontext-pro, 1184x880 png, seed 7, 0.05 USD: "
        "`s3://o/bg.png`"
    ) in lines
    assert (
        r"- **Merged \#1**: multi-image-kontext-pro, 1184x880 jpg, seed 8, "
        "from cache, 0.00 USD: `/srv/o/merged.jpg`"
    ) in lines
    assert previews.asked == ["s3://o/bg.png", "/srv/o/merged.jpg"]
    assert "Paid in this run: **0.05 USD**." in lines
    thumbnails, captions = grid(markdown)
    assert [(cell.alt, cell.href) for cell in thumbnails] == [
        ("Background replaced", "https://127.0.0.1/signed/o/bg.png?X-Amz-Signature=abc&x=1"),
        ("Merged #1", None),
    ]
    assert thumbnails[1].src == EMBEDDED
    assert captions[0].texts == [
        "Background replaced",
        "flux-kontext-pro",
        "1184x880 png",
        "seed 7",
        "0.05 USD",
    ]
    assert captions[1].texts[-1] == "from cache, 0.00 USD"


def test_outputs_markdown_shows_the_inputs_first_side_by_side() -> None:
    inputs = [("Input A (product)", "s3://o/runs/a.jpg"), ("Input B", "s3://o/runs/b.jpg")]
    previews = Previews()

    markdown = render_outputs_markdown("Two steps", TWO_OUTPUTS, preview=previews, inputs=inputs)

    assert previews.asked == [
        "s3://o/runs/a.jpg",
        "s3://o/runs/b.jpg",
        "s3://o/bg.png",
        "/srv/o/merged.jpg",
    ]
    thumbnails, captions = grid(markdown)  # one row of four, one row of captions
    assert [cell.alt for cell in thumbnails] == [
        "Input A (product)",
        "Input B",
        "Background replaced",
        "Merged #1",
    ]
    assert thumbnails[0].href == "https://127.0.0.1/signed/o/runs/a.jpg?X-Amz-Signature=abc&x=1"
    assert captions[0].texts == ["Input A (product)", "input", "1024x768 PNG"]
    lines = markdown.splitlines()
    assert "- **Input A (product)**: input: `s3://o/runs/a.jpg`" in lines
    assert lines.index("- **Input B**: input: `s3://o/runs/b.jpg`") < lines.index(
        "- **Background replaced**: flux-kontext-pro, 1184x880 png, seed 7, 0.05 USD: "
        "`s3://o/bg.png`"
    )
    assert "Paid in this run: **0.05 USD**." in lines


def test_outputs_markdown_does_not_count_a_reused_cost() -> None:
    # A reused result that still carries a cost (a record of an earlier run) is not paid again.
    outputs = [
        ("A", edit_result("p-image-edit", "/o/a.png", seed=1, cost="0.01", fmt=OutputFormat.PNG)),
        (
            "B",
            edit_result(
                "p-image-edit", "/o/b.png", seed=2, cost="0.01", fmt=OutputFormat.PNG, reused=True
            ),
        ),
    ]

    markdown = render_outputs_markdown("t", outputs, preview=Previews())

    assert "Paid in this run: **0.01 USD**." in markdown.splitlines()
    assert "Click a thumbnail" not in markdown  # nothing presigned
    assert all(cell.href is None for cell in grid(markdown)[0])


def test_labels_are_escaped_cut_and_kept_on_one_line_inside_the_grid() -> None:
    label = '<script>alert("x")</script>\n\n' + "a long prompt " * 20
    outputs = [(label, TWO_OUTPUTS[0][1])]

    markdown = render_outputs_markdown("t", outputs, preview=Previews())

    assert "<script>" not in markdown
    thumbnails, captions = grid(markdown)  # no blank line ended the HTML block
    caption = captions[0].texts[0]
    assert caption.startswith('<script>alert("x")</script> a long prompt')
    assert caption.endswith("...")
    assert len(caption) == CAPTION_LABEL_LIMIT
    assert thumbnails[0].alt == caption


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(3600, "1 hour"), (172800, "2 days"), (900, "15 minutes"), (90, "90 s"), (60, "1 minute")],
)
def test_the_presign_lifetime_reads_as_a_person_would_say_it(seconds: int, text: str) -> None:
    shown = Preview("t", "f", expires_at=EXPIRES_AT, expires_in_s=seconds)

    markdown = render_outputs_markdown("t", [TWO_OUTPUTS[0]], preview=lambda url: shown)

    assert f"2026-12-07 21:00 UTC ({text} after publishing" in markdown


# --- the gallery through real presigned URLs, and embedded thumbnails ---------------------------


def one_row_report(url: str) -> BatchReport:
    return BatchReport(
        results=[result("a", 1, RowStatus.SUCCEEDED, output=url, cost="0.05", seed=1)],
        estimate_usd=Decimal("0.05"),
        paid_usd=Decimal("0.05"),
    )


def test_results_gallery_links_read_the_thumbnail_and_the_output_from_s3(s3: S3Server) -> None:
    store = ObjectStore.from_url(
        "s3://outputs/runs",
        key=s3.access_key_id,
        secret=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        client_kwargs={"region_name": s3.region},
    )
    original = image_bytes(size=(1024, 1024))
    url = store.write("a.png", original)

    markdown = render_batch_results_markdown(
        one_row_report(url), results_url="r.jsonl", preview=functools.partial(preview, store)
    )

    (cell,), _ = grid(markdown)
    assert cell.src is not None
    assert cell.href is not None
    with httpx.Client(trust_env=False) as client:
        thumbnail, full = client.get(cell.src), client.get(cell.href)
    for response in (thumbnail, full):
        assert response.status_code == 200
        assert str(response.url).startswith(f"{s3.endpoint_url}/outputs/runs/")
    assert decode(thumbnail.content).format == "JPEG"
    assert decode(thumbnail.content).size == (320, 320)
    assert full.content == original


def test_results_gallery_embeds_thumbnails_of_a_local_folder(tmp_path: Path) -> None:
    store = ObjectStore.from_url(str(tmp_path))
    url = store.write("a.png", image_bytes(size=(1248, 832)))

    markdown = render_batch_results_markdown(
        one_row_report(url), results_url="r.jsonl", preview=functools.partial(preview, store)
    )

    (cell,), _ = grid(markdown)
    assert cell.href is None
    assert cell.src is not None
    assert cell.src.startswith("data:image/jpeg;base64,")
    thumbnail = decode(base64.b64decode(cell.src.split(",", 1)[1], validate=True))
    assert (thumbnail.format, thumbnail.size) == ("JPEG", (320, 213))
    assert f"- **a**: `{url}`" in markdown.splitlines()


def test_control_characters_cannot_break_out_of_a_markdown_table_row() -> None:
    from segmind_core.report import _md

    escaped = _md("a\rb\n# heading\x00|c")

    for control in ("\r", "\n", "\x00"):
        assert control not in escaped
    assert escaped == "a b \\# heading \\|c"
