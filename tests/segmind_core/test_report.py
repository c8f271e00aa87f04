"""The static HTML page that shows a run's images side by side."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from html.parser import HTMLParser

import httpx

from segmind_core.batch import BatchReport, RowResult, RowStatus, calls_for, estimate_cost
from segmind_core.contract import OutputFormat, get_endpoint
from segmind_core.generation import EditResult
from segmind_core.manifest import check_rows
from segmind_core.object_store import ObjectStore
from segmind_core.report import (
    PROBLEM_LIMIT,
    ReportImage,
    render_batch_estimate_markdown,
    render_batch_results_markdown,
    render_outputs_markdown,
    render_report_page,
)
from tests.conftest import S3Server


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


class Links:
    """A ``link`` that presigns s3:// outputs only, and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, url: str) -> str | None:
        self.asked.append(url)
        if url.startswith("s3://"):
            return "https://127.0.0.1/signed/" + url.removeprefix("s3://") + "?X-Amz-Signature=abc"
        return None


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
        MIXED, results_url="s3://outputs/runs/r-results.jsonl", link=Links()
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
    markdown = render_batch_results_markdown(MIXED, results_url="r.jsonl", link=Links())

    assert "## Rows that did not succeed" in markdown
    assert table_rows(markdown) == [
        ["3", "c", "failed", r"503 \| retry \*later\* second line"],
        ["4", "d", "not_run", "not run: Segmind credits ran out"],
        ["5", "", "failed", "line 5: not valid JSON"],
    ]


def test_results_markdown_shows_outputs_through_the_link_or_as_paths() -> None:
    links = Links()

    markdown = render_batch_results_markdown(MIXED, results_url="r.jsonl", link=links)

    assert links.asked == ["s3://outputs/b/a.png", "/srv/outputs/b_2.png"]
    assert "## Outputs (2 of 2)" in markdown
    assert (
        "- **a** (flux-kontext-pro, seed 7, 0.05 USD)\n\n"
        "  ![a](https://127.0.0.1/signed/outputs/b/a.png?X-Amz-Signature=abc)"
    ) in markdown
    assert (
        r"- **b\_2** (replace\_background\_then\_merge, seed 8, cached): `/srv/outputs/b_2.png`"
    ) in markdown
    assert markdown.index("**a**") < markdown.index(r"**b\_2**")


def test_results_markdown_says_why_new_calls_were_stopped() -> None:
    report = MIXED.model_copy(update={"stopped": "Segmind credits ran out (406 on row c)"})

    markdown = render_batch_results_markdown(report, results_url="r.jsonl", link=Links())

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
    links = Links()

    markdown = render_batch_results_markdown(
        report, results_url="r.jsonl", link=links, gallery_limit=2
    )

    assert "## Outputs (2 of 3)" in markdown
    assert "**r1**" in markdown
    assert "**r2**" in markdown
    assert "**r3**" not in markdown
    assert links.asked == ["s3://o/r1.png", "s3://o/r2.png"]
    assert "## Rows that did not succeed" not in markdown


def test_results_markdown_without_outputs_has_no_gallery() -> None:
    report = BatchReport(
        results=[result("a", 1, RowStatus.NOT_RUN, error="not run: over budget")],
        estimate_usd=Decimal("0.05"),
        stopped="over budget",
    )
    links = Links()

    markdown = render_batch_results_markdown(report, results_url="r.jsonl", link=links)

    assert "## Outputs" not in markdown
    assert links.asked == []
    assert "**1 rows**: 0 succeeded, 0 failed, 1 not run." in markdown


def test_results_markdown_caps_the_problem_table() -> None:
    count = PROBLEM_LIMIT + 3
    report = BatchReport(
        results=[result(f"r{n}", n, RowStatus.FAILED, error="boom") for n in range(1, count + 1)],
        estimate_usd=Decimal(0),
    )

    markdown = render_batch_results_markdown(report, results_url="r.jsonl", link=Links())

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


def test_outputs_markdown_lists_each_output_and_what_this_run_paid() -> None:
    outputs = [
        (
            "Background replaced",
            edit_result(
                "flux-kontext-pro", "s3://o/bg.png", seed=7, cost="0.05", fmt=OutputFormat.PNG
            ),
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
    links = Links()

    markdown = render_outputs_markdown("Run <1>", outputs, link=links)

    lines = markdown.splitlines()
    assert lines[0] == r"# Run \<1\>"
    assert (
        "- **Background replaced**: flux-kontext-pro, 1184x880 png, seed 7, 0.05 USD: "
        "`s3://o/bg.png`"
    ) in lines
    assert (
        "  ![Background replaced](https://127.0.0.1/signed/o/bg.png?X-Amz-Signature=abc)" in lines
    )
    assert (
        r"- **Merged \#1**: multi-image-kontext-pro, 1184x880 jpg, seed 8, "
        "from cache, 0.00 USD: `/srv/o/merged.jpg`"
    ) in lines
    assert markdown.count("![") == 1
    assert links.asked == ["s3://o/bg.png", "/srv/o/merged.jpg"]
    assert lines[-1] == "Paid in this run: **0.05 USD**."


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

    markdown = render_outputs_markdown("t", outputs, link=lambda url: None)

    assert markdown.splitlines()[-1] == "Paid in this run: **0.01 USD**."
    assert "![" not in markdown


# --- the gallery through real presigned URLs ------------------------------------------------------


def test_results_gallery_links_read_the_outputs_from_s3(s3: S3Server) -> None:
    store = ObjectStore.from_url(
        "s3://outputs/runs",
        key=s3.access_key_id,
        secret=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        client_kwargs={"region_name": s3.region},
    )
    url = store.write("a.png", b"\x89PNG-not-really")
    report = BatchReport(
        results=[result("a", 1, RowStatus.SUCCEEDED, output=url, cost="0.05", seed=1)],
        estimate_usd=Decimal("0.05"),
        paid_usd=Decimal("0.05"),
    )
    link: Callable[[str], str | None] = store.presigned_url_for

    markdown = render_batch_results_markdown(report, results_url="r.jsonl", link=link)

    match = re.search(r"!\[a\]\((http://127\.0\.0\.1:\d+/[^)\s]+)\)", markdown)
    assert match, markdown
    with httpx.Client(trust_env=False) as client:
        response = client.get(match.group(1))
    assert response.status_code == 200
    assert response.content == b"\x89PNG-not-really"


def test_control_characters_cannot_break_out_of_a_markdown_table_row() -> None:
    from segmind_core.report import _md

    escaped = _md("a\rb\n# heading\x00|c")

    for control in ("\r", "\n", "\x00"):
        assert control not in escaped
    assert escaped == "a b \\# heading \\|c"
