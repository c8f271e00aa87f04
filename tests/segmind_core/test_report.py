"""The static HTML page that shows a run's images side by side."""

from __future__ import annotations

from html.parser import HTMLParser

from segmind_core.report import ReportImage, render_report_page


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
