"""The replace-background-then-merge flow, end to end: Prefect test server and emulator.

Each test stores into its own folder under ``tmp_path`` and pins a seed no
other test pins (or none): requests with a pinned seed are cached for the
whole test session, and the billing counts below must not depend on the order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from blocks import ObjectStorage, SegmindCredentials
from emulator import SegmindEmulator
from flows.replace_background_then_merge import (
    ReplaceBackgroundThenMergeOutcome,
    replace_background_then_merge,
)
from segmind_core.outputs import SIDECAR_SUFFIX
from tasks import EditResult
from tasks.artifacts import OUTPUTS_KEY
from tasks.caching import credentials_service_tag
from tests.conftest import S3Server
from tests.flows.outputs import flow_run_artifacts
from tests.segmind_core.test_report import Cell, grid
from tests.support import API_KEY, decode, emulator_stats

pytestmark = pytest.mark.usefixtures("prefect_harness")

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
COFFEE = PHOTOS / "coffee.jpg"  # 600x400, snapped to 3:2
CHELSEA = PHOTOS / "chelsea.jpg"
FLOW = "replace-background-then-merge"
DAY = r"\d{4}-\d{2}-\d{2}"


def run_flow(storage: ObjectStorage, **arguments: object) -> ReplaceBackgroundThenMergeOutcome:
    return replace_background_then_merge(
        product_image=str(COFFEE),
        second_image=str(CHELSEA),
        background_prompt="on a white marble counter",
        merge_prompt="the cat beside the cup",
        storage=storage,
        **arguments,  # type: ignore[arg-type]
    )


def image_sources(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


def assert_stored(result: EditResult, base: Path, slug: str) -> bytes:
    """``result`` names an image under ``base`` with a sidecar that matches it; returns it."""
    assert result.slug == slug
    # Named by the request digest; a refreshed output also by when it was made.
    match = re.fullmatch(rf"{FLOW}/{DAY}/([0-9a-f]{{64}})(-\d{{8}}t\d{{12}}z)?\.png", result.key)
    assert match is not None, result.key
    assert match.group(1) == result.request_digest
    path = Path(result.url)
    assert path == base.resolve() / result.key
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == result.sha256
    sidecar_text = Path(f"{path}{SIDECAR_SUFFIX}").read_text()
    sidecar = json.loads(sidecar_text)
    assert sidecar["output"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["slug"] == slug
    assert sidecar["seed"] == result.seed
    assert sidecar["flow_name"] == FLOW
    assert API_KEY not in sidecar_text
    return data


def assert_outputs(
    outcome: ReplaceBackgroundThenMergeOutcome, base: Path, *, cost: Decimal
) -> Path:
    """Both images, their sidecars and the page are in ``base``; returns the page."""
    background, merged = outcome.background_replaced, outcome.merged
    background_data = assert_stored(background, base, "flux-kontext-pro")
    merged_data = assert_stored(merged, base, "multi-image-kontext-pro")
    assert Path(background.url).parent == Path(merged.url).parent

    # match_input_image follows coffee.jpg (600x400): the 3:2 bucket, for both steps.
    assert decode(background_data).size == (background.width, background.height) == (1248, 832)
    merged_image = decode(merged_data)
    assert merged_image.size == (merged.width, merged.height) == (1248, 832)
    assert merged_image.format == "PNG"

    # The merge step was given the stored intermediate, by its path.
    merged_sidecar = json.loads(Path(f"{merged.url}{SIDECAR_SUFFIX}").read_text())
    assert merged_sidecar["inputs"]["input_image_1"] == background.url
    assert merged_sidecar["input_identities"]["input_image_1"] == f"sha256:{background.sha256}"

    # The page: {flow}/{date}/runs/{run}.html, beside the images' folder.
    page = Path(outcome.page)
    assert page.is_file()
    assert page.parent == Path(merged.url).parent / "runs"
    assert re.fullmatch(rf"{FLOW}/{DAY}/runs/[a-z0-9._-]+\.html", str(page.relative_to(base)))
    run = page.stem
    sources = image_sources(page)
    assert sources == [
        f"{run}-product_image.jpg",
        f"{run}-second_image.jpg",
        f"../{Path(background.url).name}",
        f"../{Path(merged.url).name}",
    ]
    linked = [(page.parent / source).resolve() for source in sources]
    assert all(path.is_file() for path in linked), linked
    assert linked[0].read_bytes() == COFFEE.read_bytes()
    assert linked[1].read_bytes() == CHELSEA.read_bytes()
    assert linked[2] == Path(background.url)
    assert linked[3] == Path(merged.url)

    assert outcome.seeds == {"background": background.seed, "merge": merged.seed}
    assert outcome.cost_usd == cost
    return page


def test_flow_writes_images_and_page_from_the_environment(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    outcome = run_flow(ObjectStorage(base_url=str(tmp_path)), seed=21)

    page = assert_outputs(outcome, tmp_path, cost=Decimal("0.10"))
    assert outcome.seeds == {"background": 21, "merge": 21}
    assert not outcome.background_replaced.reused
    assert not outcome.merged.reused
    page_text = page.read_text()
    assert "seed 21" in page_text
    assert "0.05 USD" in page_text
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
    outcome = run_flow(ObjectStorage(base_url=str(tmp_path)))

    page = assert_outputs(outcome, tmp_path, cost=Decimal("0.10"))
    assert set(outcome.seeds) == {"background", "merge"}
    for seed in outcome.seeds.values():
        assert 0 <= seed < 2**31
    assert f"seed {outcome.seeds['merge']}" in page.read_text()
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

    outcome = run_flow(ObjectStorage(base_url=str(tmp_path)), seed=22, credentials=credentials)

    assert_outputs(outcome, tmp_path, cost=Decimal("0.10"))
    assert outcome.seeds == {"background": 22, "merge": 22}
    assert emulator_stats(emulator.url)["billed"] == 2


def test_a_second_run_into_the_same_storage_pays_nothing(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    storage = ObjectStorage(base_url=str(tmp_path))
    first = run_flow(storage, seed=23)
    second = run_flow(storage, seed=23)

    first_page = assert_outputs(first, tmp_path, cost=Decimal("0.10"))
    second_page = assert_outputs(second, tmp_path, cost=Decimal("0"))
    # The same images, served from the cache: nothing generated or paid again.
    assert second.merged.url == first.merged.url
    assert second.background_replaced.url == first.background_replaced.url
    assert second.merged.sha256 == first.merged.sha256
    assert not first.merged.reused
    assert second.background_replaced.reused
    assert second.merged.reused
    assert emulator_stats(segmind_env.url)["billed"] == 2
    # Each run has its own page, and the second says where its images came from.
    assert first_page != second_page
    assert first_page.is_file()
    assert "from cache, 0.00 USD" in second_page.read_text()
    assert "from cache" not in first_page.read_text()
    images = sorted(p.name for p in Path(first.merged.url).parent.glob("*.png"))
    assert images == sorted(Path(r.url).name for r in (first.background_replaced, first.merged))


def test_refresh_cache_generates_again_and_keeps_the_earlier_images(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    storage = ObjectStorage(base_url=str(tmp_path))
    first = run_flow(storage, seed=24)
    again = run_flow(storage, seed=24, refresh_cache=True)

    assert_outputs(first, tmp_path, cost=Decimal("0.10"))
    assert_outputs(again, tmp_path, cost=Decimal("0.10"))
    assert not again.background_replaced.reused
    assert not again.merged.reused
    assert emulator_stats(segmind_env.url)["billed"] == 4
    # New images under new keys; the ones paid for first are still there.
    assert again.merged.key != first.merged.key
    assert again.background_replaced.key != first.background_replaced.key
    assert again.merged.request_digest == first.merged.request_digest
    assert Path(first.merged.url).is_file()
    assert Path(first.background_replaced.url).is_file()
    # The emulator is deterministic: the same inputs and seed give the same images.
    assert again.merged.sha256 == first.merged.sha256


def test_a_saved_storage_block_keeps_the_cache_records_beside_the_outputs(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    name = f"flow-storage-{uuid.uuid4().hex[:8]}"
    ObjectStorage(base_url=str(tmp_path)).save(name)
    storage = ObjectStorage.load(name)

    first = run_flow(storage, seed=25)
    second = run_flow(ObjectStorage.load(name), seed=25)

    assert_outputs(first, tmp_path, cost=Decimal("0.10"))
    assert_outputs(second, tmp_path, cost=Decimal("0"))
    service = credentials_service_tag(SegmindCredentials(base_url=segmind_env.url))
    for result in (first.background_replaced, first.merged):
        assert (tmp_path / f"segmind-{result.request_digest}-{service}").is_file()
    assert second.merged.url == first.merged.url
    assert emulator_stats(segmind_env.url)["billed"] == 2


# --- the run's artifact: inputs, intermediate and result side by side --------------------------


def artifact_grid(
    storage: ObjectStorage, seed: int
) -> tuple[ReplaceBackgroundThenMergeOutcome, list[Cell], str]:
    """Run the flow; its outcome, the artifact's row of thumbnails, and the artifact."""
    state = replace_background_then_merge(
        product_image=str(COFFEE),
        second_image=str(CHELSEA),
        background_prompt="on a white marble counter",
        merge_prompt="the cat beside the cup",
        storage=storage,
        seed=seed,
        return_state=True,
    )
    outcome = state.result()
    (artifact,) = flow_run_artifacts(state, OUTPUTS_KEY)
    thumbnails, captions = grid(artifact.data)
    titles = ["Input A (product)", "Input B", "Background replaced", "Merged with input B"]
    assert [cell.alt for cell in thumbnails] == titles
    assert [cell.texts[0] for cell in captions] == titles
    assert captions[2].texts[1:] == ["flux-kontext-pro", "1248x832 png", f"seed {seed}", "0.05 USD"]
    return outcome, thumbnails, artifact.data


def test_the_artifact_embeds_the_four_thumbnails_of_a_local_run(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    outcome, thumbnails, markdown = artifact_grid(ObjectStorage(base_url=str(tmp_path)), 26)

    sources = [COFFEE.read_bytes(), CHELSEA.read_bytes()] + [
        Path(result.url).read_bytes() for result in (outcome.background_replaced, outcome.merged)
    ]
    for cell, source in zip(thumbnails, sources, strict=True):
        assert cell.href is None
        assert cell.src is not None
        assert cell.src.startswith("data:image/jpeg;base64,")
        thumbnail = decode(base64.b64decode(cell.src.split(",", 1)[1], validate=True))
        assert thumbnail.format == "JPEG"
        assert thumbnail.size == make_thumbnail_size(source)
    assert outcome.merged.url in markdown
    assert "a browser cannot open a worker's local path" in markdown


def test_on_s3_the_artifact_links_stored_thumbnails_to_the_full_images(
    segmind_env: SegmindEmulator, s3: S3Server
) -> None:
    storage = ObjectStorage(
        base_url="s3://outputs/run",
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
    )

    outcome, thumbnails, markdown = artifact_grid(storage, 27)

    client = s3.client()
    keys = {item["Key"] for item in client.list_objects_v2(Bucket="outputs")["Contents"]}
    with httpx.Client(trust_env=False) as browser:
        for cell in thumbnails:
            assert cell.src is not None
            assert cell.href is not None
            assert cell.src.startswith(f"{s3.endpoint_url}/outputs/run/_thumbnails/{FLOW}/")
            thumbnail_key = urlsplit(cell.src).path.removeprefix("/outputs/")
            assert thumbnail_key in keys
            thumbnail, full = browser.get(cell.src), browser.get(cell.href)
            assert (thumbnail.status_code, full.status_code) == (200, 200)
            assert max(decode(thumbnail.content).size) == 320
            decode(full.content)
    assert (
        full.content
        == client.get_object(
            Bucket="outputs", Key=outcome.merged.url.removeprefix("s3://outputs/")
        )["Body"].read()
    )
    assert "The links are presigned: they work until" in markdown


def make_thumbnail_size(data: bytes) -> tuple[int, int]:
    """The size of a 320 px thumbnail of ``data``, computed apart from the product."""
    width, height = decode(data).size
    scale = 320 / max(width, height)
    return (round(width * scale), round(height * scale))
