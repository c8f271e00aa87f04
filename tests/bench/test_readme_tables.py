"""The README's soak and crash tables are the committed results, row for row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import readme_tables

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_shows_the_committed_soak_and_crash_results() -> None:
    lines = README.read_text().splitlines()
    for row in readme_tables.rows():
        assert row in lines, f"README.md does not show: {row}\n(run python -m bench.readme_tables)"


@pytest.mark.parametrize(
    "path", [readme_tables.SOAK, readme_tables.CRASH_V1, readme_tables.CRASH_QUEUE]
)
def test_the_committed_results_passed_at_a_clean_commit(path: Path) -> None:
    results = json.loads(path.read_text())
    assert results.get("result") == "PASS" or results.get("passed") is True, path.name
    assert not results["problems"], results["problems"]
    assert results["commit"]
    assert not results["commit"].endswith("-dirty"), results["commit"]


def test_a_changed_number_changes_the_row() -> None:
    soak = readme_tables.load(readme_tables.SOAK)
    crash = readme_tables.load(readme_tables.CRASH_V1)
    assert readme_tables.soak_row({**soak, "billed": soak["billed"] + 1}) != (
        readme_tables.soak_row(soak)
    )
    assert readme_tables.crash_row({**crash, "lost": crash["lost"] + 1}) != (
        readme_tables.crash_row(crash)
    )
