"""The manifest examples in the README are valid manifests, and match the shipped ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from segmind_core.manifest import check_manifest_text, read_manifest

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "examples" / "manifests"


def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize(("language", "fmt"), [("json", "jsonl"), ("csv", "csv")])
def test_the_readme_manifest_examples_are_valid(language: str, fmt: str) -> None:
    blocks = readme_blocks(language)
    assert len(blocks) == 1
    manifest = check_manifest_text(blocks[0], fmt=fmt, base_folder=MANIFESTS)
    assert manifest.rejected == []
    assert len(manifest.rows) >= 2
    # Their relative image paths name the shipped photographs.
    for row in manifest.rows:
        assert all(Path(image).is_file() for image in row.images), row.images


@pytest.mark.parametrize("name", ["catalogue.jsonl", "catalogue.csv"])
def test_the_shipped_example_manifests_are_valid(name: str) -> None:
    rows = read_manifest(str(MANIFESTS / name))
    assert [row.id for row in rows] == [
        "coffee-marble",
        "cat-and-coffee",
        "astronaut-poster",
        "coffee-scene",
    ]
