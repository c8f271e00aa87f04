"""The replace-background-then-merge flow, end to end: Prefect test server and emulator."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from blocks import SegmindCredentials
from emulator import SegmindEmulator
from flows.replace_background_then_merge import (
    ReplaceBackgroundThenMergeOutcome,
    replace_background_then_merge,
)
from tests.support import API_KEY, decode, emulator_stats

pytestmark = pytest.mark.usefixtures("prefect_harness")

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
COFFEE = PHOTOS / "coffee.jpg"  # 600x400, snapped to 3:2
CHELSEA = PHOTOS / "chelsea.jpg"


def run_flow(output_dir: Path, **arguments: object) -> ReplaceBackgroundThenMergeOutcome:
    return replace_background_then_merge(
        product_image=str(COFFEE),
        second_image=str(CHELSEA),
        background_prompt="on a white marble counter",
        merge_prompt="the cat beside the cup",
        output_dir=str(output_dir),
        **arguments,  # type: ignore[arg-type]
    )


def image_sources(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


def assert_outputs(outcome: ReplaceBackgroundThenMergeOutcome, output_dir: Path) -> None:
    folder = Path(outcome.folder)
    assert folder.is_dir()
    assert folder.parent == output_dir.resolve()
    page = Path(outcome.page)
    assert page == folder / "index.html"
    background = Path(outcome.background_replaced)
    merged = Path(outcome.merged)
    for path in (page, background, merged):
        assert path.is_file(), path
        assert path.parent == folder

    # match_input_image follows coffee.jpg (600x400): the 3:2 bucket, for both steps.
    assert decode(background.read_bytes()).size == (1248, 832)
    merged_image = decode(merged.read_bytes())
    assert merged_image.size == (1248, 832)
    assert merged_image.format == "PNG"
    assert merged.suffix == ".png"

    sources = image_sources(page)
    assert sources == ["input-a.jpg", "input-b.jpg", background.name, merged.name]
    for name in sources:
        assert (folder / name).is_file(), name
    assert (folder / "input-a.jpg").read_bytes() == COFFEE.read_bytes()
    assert (folder / "input-b.jpg").read_bytes() == CHELSEA.read_bytes()
    assert outcome.cost_usd == Decimal("0.10")


def test_flow_writes_images_and_page_from_the_environment(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    outcome = run_flow(tmp_path, seed=7)

    assert_outputs(outcome, tmp_path)
    assert outcome.seeds == {"background": 7, "merge": 7}
    page_text = Path(outcome.page).read_text()
    assert "seed 7" in page_text
    stats = emulator_stats(segmind_env.url)
    assert stats["billed"] == 2
    assert stats["spent_usd"] == pytest.approx(0.10)
    assert {slug: s["billed"] for slug, s in stats["by_slug"].items()} == {
        "flux-kontext-pro": 1,
        "multi-image-kontext-pro": 1,
    }


def test_flow_without_a_seed_records_the_drawn_seeds(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    outcome = run_flow(tmp_path)

    assert_outputs(outcome, tmp_path)
    assert set(outcome.seeds) == {"background", "merge"}
    for seed in outcome.seeds.values():
        assert 0 <= seed < 2**31
    assert f"seed {outcome.seeds['merge']}" in Path(outcome.page).read_text()
    assert emulator_stats(segmind_env.url)["billed"] == 2


def test_flow_with_a_saved_credentials_block(
    emulator: SegmindEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing in the environment: the block alone must be enough.
    monkeypatch.delenv("SEGMIND_API_KEY", raising=False)
    monkeypatch.delenv("SEGMIND_BASE_URL", raising=False)
    name = f"segmind-flow-{uuid.uuid4().hex[:8]}"
    SegmindCredentials(api_key=API_KEY, base_url=emulator.url).save(name)
    credentials = SegmindCredentials.load(name)
    assert credentials.label() == f"block '{name}'"

    outcome = run_flow(tmp_path, seed=7, credentials=credentials)

    assert_outputs(outcome, tmp_path)
    assert outcome.seeds == {"background": 7, "merge": 7}
    assert emulator_stats(emulator.url)["billed"] == 2


def test_two_runs_write_two_folders(segmind_env: SegmindEmulator, tmp_path: Path) -> None:
    first = run_flow(tmp_path, seed=7)
    second = run_flow(tmp_path, seed=7)

    assert first.folder != second.folder
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        Path(o.folder).name for o in (first, second)
    )
    # Same inputs and seed: the same images (the emulator is deterministic).
    assert Path(first.merged).read_bytes() == Path(second.merged).read_bytes()
    assert emulator_stats(segmind_env.url)["billed"] == 4
