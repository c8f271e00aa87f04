"""The batch flow, end to end: Prefect test server, emulator and S3 (moto) or a local folder.

Every test pins seeds no other test pins, and its prompts name the test:
Prefect's cache records live for the whole session and are keyed by the
request (slug, parameters with the seed, input contents), so a request shared
with another test would be served from that test's record and not paid.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import shutil
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import State
from prefect.deployments.runner import RunnerDeployment
from prefect.logging.handlers import APILogHandler
from prefect.utilities.callables import parameter_schema

from blocks import ObjectStorage, SegmindCredentials
from emulator import SegmindEmulator
from flows.batch import BatchOutcome, RowDefaults, batch
from flows.common import SEED_MAX
from segmind_core.contract import FluxAspectRatio
from segmind_core.outputs import SIDECAR_SUFFIX
from tasks.artifacts import (
    ESTIMATE_KEY,
    GALLERY_KEY,
    PROGRESS_KEY,
    RESULTS_KEY,
)
from tasks.caching import credentials_service_tag
from tests.conftest import EmulatorFactory, S3Server
from tests.flows.manifests import ASTRONAUT, CHELSEA, COFFEE, csv_text, jsonl, row, write
from tests.support import API_KEY, decode, emulator_stats, image_bytes, wait_until

pytestmark = pytest.mark.usefixtures("prefect_harness")

DAY = r"\d{4}-\d{2}-\d{2}"
BUCKET = "outputs"
RUN_NAME = r"[a-z0-9._-]+"


# --- helpers ---------------------------------------------------------------------------


def s3_storage(s3: S3Server, prefix: str) -> ObjectStorage:
    return ObjectStorage(
        base_url=f"s3://{BUCKET}/{prefix}",
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
    )


def s3_keys(s3: S3Server, prefix: str) -> list[str]:
    client = s3.client()
    keys: list[str] = []
    token: dict[str, str] = {}
    while True:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **token)
        keys.extend(entry["Key"] for entry in listed.get("Contents", []))
        if not listed.get("IsTruncated"):
            return keys
        token = {"ContinuationToken": listed["NextContinuationToken"]}


def s3_get(s3: S3Server, key: str) -> bytes:
    data: bytes = s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return data


def s3_key_of(url: str) -> str:
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("s3", BUCKET), url
    return parts.path.lstrip("/")


def s3_put(s3: S3Server, key: str, data: bytes) -> str:
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def run(manifest: str, **arguments: Any) -> tuple[State[Any], BatchOutcome]:
    """Run the batch flow; its final state and its outcome (whether Completed or Failed)."""
    state: State[Any] = batch(manifest=manifest, return_state=True, **arguments)
    outcome = state.result(raise_on_failure=False)
    assert isinstance(outcome, BatchOutcome), (state, outcome)
    return state, outcome


def parse_results(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines()]


def local_results(outcome: BatchOutcome) -> list[dict[str, Any]]:
    return parse_results(Path(outcome.results_url).read_bytes())


def by_id(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in results}


def sidecar_of(url: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(Path(f"{url}{SIDECAR_SUFFIX}").read_text())
    return loaded


def flow_run_id_of(state: State[Any]) -> UUID:
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return flow_run_id


def artifacts_of(flow_run_id: UUID, *keys: str) -> list[Any]:
    """The flow run's artifacts (every version), only those under ``keys`` when given."""
    with get_client(sync_client=True) as client:
        artifacts: list[Any] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys)))
            if keys
            else None,
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    return artifacts


def progress_of(state: State[Any]) -> float:
    """Where the flow run's one progress artifact stands."""
    progress = artifacts_of(flow_run_id_of(state), PROGRESS_KEY)
    assert len(progress) == 1, progress
    assert progress[0].type == "progress"
    return float(progress[0].data)


def copy_photos(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        path.stem: Path(shutil.copy(path, folder / path.name))
        for path in (COFFEE, CHELSEA, ASTRONAUT)
    }


def output_day(outcome: BatchOutcome) -> str:
    match = re.search(rf"/batch/({DAY})/runs/", outcome.results_url)
    assert match is not None, outcome.results_url
    return match.group(1)


# --- 200 rows, 5 bad, on S3 ------------------------------------------------------------

ROWS = 200


def catalogue_on_s3(
    s3: S3Server, prefix: str, seed_base: int
) -> tuple[str, dict[int, tuple[str, ...]]]:
    """200 p-image-edit rows with pinned seeds, 5 of them bad, as JSONL on S3.

    Returns the manifest's URL and, for each bad line, what its error must say.
    """
    # Small plain sources keep the run quick: outputs are about 1 Mpx whatever the input.
    colours = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 60, 200)}
    sources = [
        s3_put(s3, f"{prefix}/sources/{name}.jpg", image_bytes(colour, (160, 120), "JPEG"))
        for name, colour in colours.items()
    ]
    rows = [
        row(
            f"sku-{n:03d}",
            "p-image-edit",
            f"batch catalogue test: product shot {n}",
            [sources[n % 3]],
            seed=seed_base + n,
        )
        for n in range(1, ROWS + 1)
    ]
    bad: dict[int, tuple[str, ...]] = {}  # line N is row N
    rows[11] = row("sku-012", "flux-kontext-ultra", "x", [sources[0]], seed=seed_base + 12)
    bad[12] = ("line 12 (sku-012): endpoint 'flux-kontext-ultra' is not one of",)
    rows[49] = row(
        "sku-050", "p-image-edit", "x", [sources[1]], aspect_ratio="7:3", seed=seed_base + 50
    )
    bad[50] = ("line 50 (sku-050): aspect_ratio: Input should be", "(got '7:3')")
    rows[99] = row("sku-100", "multi-image-kontext-pro", "x", [sources[2]], seed=seed_base + 100)
    bad[100] = ("line 100 (sku-100): multi-image-kontext-pro takes 2 image(s), got 1",)
    rows[149] = row("sku-010", "p-image-edit", "x", [sources[0]], seed=seed_base + 150)
    bad[150] = ("line 150 (sku-010): id repeats line 10",)
    # Passes the manifest check; fails in its task, before anything is sent or paid.
    missing = f"s3://{BUCKET}/{prefix}/sources/no-such-photo.jpg"
    rows[179] = row("sku-180", "p-image-edit", "x", [missing], seed=seed_base + 180)
    bad[180] = (f"no such object: {missing}",)
    url = s3_put(s3, f"{prefix}/manifests/catalogue.jsonl", jsonl(rows).encode())
    return url, bad


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("max_failed_rows", "seed_base"), [(0, 710_000), (5, 720_000)], ids=["strict", "tolerant"]
)
def test_200_rows_with_5_bad_ones_on_s3(
    segmind_env: SegmindEmulator,
    s3: S3Server,
    caplog: pytest.LogCaptureFixture,
    max_failed_rows: int,
    seed_base: int,
) -> None:
    # moto logs every S3 request (about ten a row); capturing them costs seconds.
    caplog.set_level(logging.WARNING, logger="werkzeug")
    prefix = f"batch-{uuid.uuid4().hex[:8]}"
    manifest, bad = catalogue_on_s3(s3, prefix, seed_base)

    state, outcome = run(
        manifest, storage=s3_storage(s3, prefix), max_concurrency=8, max_failed_rows=max_failed_rows
    )

    assert re.fullmatch(
        rf"s3://{BUCKET}/{prefix}/batch/{DAY}/runs/{RUN_NAME}-results\.jsonl", outcome.results_url
    ), outcome.results_url
    if max_failed_rows == 0:
        assert state.is_failed(), state
        assert state.message is not None
        assert "5 of 200" in state.message
        assert outcome.results_url in state.message
    else:
        assert state.is_completed(), state
        assert state.result() == outcome
    assert (outcome.rows, outcome.succeeded, outcome.failed, outcome.not_run) == (200, 195, 5, 0)
    assert outcome.paid_usd == Decimal("1.95")
    # The row with the missing image passed the check, so it is in the estimate.
    assert outcome.estimate_usd == Decimal("1.96")
    assert outcome.saved_usd == Decimal("0")
    assert outcome.calls == 196
    assert outcome.stopped is None

    # One paid request per good row; nothing for the bad ones.
    stats = emulator_stats(segmind_env.url)
    assert (stats["requests"], stats["billed"]) == (195, 195)
    assert stats["spent_usd"] == pytest.approx(1.95)
    assert stats["max_in_flight"] <= 8

    # The outputs, read back by an independent client.
    day = output_day(outcome)
    folder = f"{prefix}/batch/{day}/"
    keys = s3_keys(s3, f"{prefix}/batch/")
    outputs = [k for k in keys if not k.startswith(f"{folder}runs/")]
    images = sorted(k for k in outputs if not k.endswith(SIDECAR_SUFFIX))
    assert len(images) == 195
    good_ids = {f"sku-{n:03d}" for n in range(1, ROWS + 1) if n not in bad}
    assert images == sorted(f"{folder}{i}.png" for i in good_ids)
    assert sorted(k for k in outputs if k.endswith(SIDECAR_SUFFIX)) == [
        f"{k}{SIDECAR_SUFFIX}" for k in images
    ]
    assert [k for k in keys if k.startswith(f"{folder}runs/")] == [s3_key_of(outcome.results_url)]
    for key in images:
        data = s3_get(s3, key)
        sidecar = json.loads(s3_get(s3, f"{key}{SIDECAR_SUFFIX}"))
        assert decode(data).format == "PNG"
        assert hashlib.sha256(data).hexdigest() == sidecar["output"]["sha256"], key
        assert sidecar["slug"] == "p-image-edit"
        row_id = key.removeprefix(folder).removesuffix(".png")
        assert sidecar["job_id"] == row_id
        assert sidecar["seed"] == seed_base + int(row_id.removeprefix("sku-"))

    # The results manifest: one line per row, in manifest order.
    results = parse_results(s3_get(s3, s3_key_of(outcome.results_url)))
    assert [r["line"] for r in results] == list(range(1, ROWS + 1))
    failed = {r["line"]: r for r in results if r["status"] == "failed"}
    assert sorted(failed) == sorted(bad)
    for line, needles in bad.items():
        for needle in needles:
            assert needle in failed[line]["error"], failed[line]
        assert (failed[line]["output"], failed[line]["cost_usd"]) == (None, 0), failed[line]
    assert [failed[line]["id"] for line in sorted(bad)] == [
        "sku-012",
        "sku-050",
        "sku-100",
        "sku-010",
        "sku-180",
    ]
    succeeded = [r for r in results if r["status"] == "succeeded"]
    assert len(succeeded) == 195
    assert {r["id"] for r in succeeded} == good_ids
    for r in succeeded:
        assert r["output"] == f"s3://{BUCKET}/{folder}{r['id']}.png"
        assert r["endpoint"] == "p-image-edit"
        assert r["cost_usd"] == 0.01
        assert (r["cached"], r["error"], r["intermediate"]) == (False, None, None)
        assert r["seed"] == seed_base + r["line"]

    # The progress artifact of this run reached 100.
    assert progress_of(state) == 100


# --- budget ----------------------------------------------------------------------------


def budget_manifest(tmp_path: Path, seed_base: int) -> str:
    photos = copy_photos(tmp_path / "photos")
    rows = [
        row(f"b-{n}", "p-image-edit", f"batch budget test {n}", [str(photos["coffee"])])
        for n in range(1, 4)
    ]
    rows.append(row("b-4", "flux-kontext-pro", "batch budget test 4", [str(photos["chelsea"])]))
    for n, r in enumerate(rows, start=1):
        r["params"] = {"seed": seed_base + n}
    return write(tmp_path / "budget.jsonl", jsonl(rows))


def test_a_budget_below_the_estimate_refuses_the_batch_before_any_call(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    manifest = budget_manifest(tmp_path, 730_000)  # 3 x 0.01 + 0.05 = 0.08 USD

    state, outcome = run(
        manifest, storage=ObjectStorage(base_url=str(tmp_path / "out")), max_cost_usd=0.07
    )

    assert state.is_failed(), state
    assert state.message is not None
    assert "max_cost_usd" in state.message
    assert "0 of 4 rows failed, 4 not run" in state.message
    assert outcome.results_url in state.message
    assert emulator_stats(segmind_env.url)["requests"] == 0
    assert (outcome.succeeded, outcome.failed, outcome.not_run, outcome.calls) == (0, 0, 4, 0)
    assert outcome.estimate_usd == Decimal("0.08")
    assert outcome.paid_usd == Decimal("0")
    assert outcome.stopped is not None
    assert "0.08" in outcome.stopped
    assert "max_cost_usd 0.07" in outcome.stopped
    results = local_results(outcome)
    assert [r["status"] for r in results] == ["not_run"] * 4
    for r in results:
        assert "max_cost_usd" in r["error"]
        assert (r["output"], r["cost_usd"]) == (None, 0)
    # Nothing but the results manifest was written.
    written = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == [Path(outcome.results_url)]


def test_a_budget_equal_to_the_estimate_runs(segmind_env: SegmindEmulator, tmp_path: Path) -> None:
    manifest = budget_manifest(tmp_path, 731_000)

    state, outcome = run(
        manifest, storage=ObjectStorage(base_url=str(tmp_path / "out")), max_cost_usd=0.08
    )

    assert state.is_completed(), state
    assert (outcome.succeeded, outcome.failed, outcome.not_run) == (4, 0, 0)
    assert outcome.paid_usd == outcome.estimate_usd == Decimal("0.08")
    stats = emulator_stats(segmind_env.url)
    assert (stats["requests"], stats["billed"]) == (4, 4)
    assert stats["spent_usd"] == pytest.approx(0.08)


# --- 406 mid-batch ---------------------------------------------------------------------


def test_credits_running_out_stop_new_calls(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    poor = start_emulator(credits_usd=Decimal("0.05"))  # five p-image-edit calls
    photos = copy_photos(tmp_path / "photos")
    rows = [
        row(f"c-{n}", "p-image-edit", f"batch credits test {n}", [str(photos["astronaut"])])
        for n in range(1, 9)
    ]
    for n, r in enumerate(rows, start=1):
        r["params"] = {"seed": 740_000 + n}
    manifest = write(tmp_path / "credits.jsonl", jsonl(rows))

    state, outcome = run(
        manifest,
        storage=ObjectStorage(base_url=str(tmp_path / "out")),
        credentials=SegmindCredentials(api_key=API_KEY, base_url=poor.url),
        max_concurrency=1,
    )

    assert state.is_failed(), state
    assert state.message is not None
    assert "1 of 8 rows failed" in state.message
    assert "2 not run" in state.message
    assert "credits ran out" in state.message
    assert (outcome.succeeded, outcome.failed, outcome.not_run) == (5, 1, 2)
    assert outcome.paid_usd == Decimal("0.05")
    assert outcome.calls == 6
    assert outcome.stopped is not None
    assert "406 on row c-6" in outcome.stopped
    results = local_results(outcome)
    assert [r["status"] for r in results] == ["succeeded"] * 5 + ["failed"] + ["not_run"] * 2
    assert [r["cost_usd"] for r in results] == [0.01] * 5 + [0] * 3
    assert "406" in results[5]["error"]
    for r in results[6:]:
        assert "credits" in r["error"]
        assert r["output"] is None
    for r in results[:5]:
        assert Path(r["output"]).is_file()
    stats = emulator_stats(poor.url)
    assert (stats["requests"], stats["billed"]) == (6, 5)
    assert stats["spent_usd"] == pytest.approx(0.05)
    assert stats["credits_remaining"] == 0
    assert progress_of(state) == 100


# --- CSV and JSONL ---------------------------------------------------------------------


def formats_rows(fmt: str) -> list[dict[str, Any]]:
    """Three good rows and three bad ones; images relative to the manifest's folder."""
    return [
        row(
            "mug-marble",
            "flux-kontext-pro",
            f"batch {fmt} test: the mug on marble",
            ["../photos/coffee.jpg"],
            aspect_ratio="1:1",
            seed=7,
            output_format="png",
            safety_tolerance=2,
        ),
        row(
            "cat-mug",
            "multi-image-kontext-pro",
            f"batch {fmt} test: the cat beside the mug",
            ["../photos/coffee.jpg", "../photos/chelsea.jpg"],
            seed=7,
            output_format="jpg",
        ),
        row("no-prompt", "p-image-edit", None, ["../photos/chelsea.jpg"], seed=750_003),
        row(
            "poster",
            "p-image-edit",
            f"batch {fmt} test: a travel poster",
            ["../photos/astronaut.jpg"],
            aspect_ratio="2:3",
            seed=750_004,
        ),
        row(
            "too-wide",
            "p-image-edit",
            f"batch {fmt} test: wide",
            ["../photos/astronaut.jpg"],
            aspect_ratio="21:9",
            seed=750_005,
        ),
        row("mug-marble", "p-image-edit", "again", ["../photos/coffee.jpg"], seed=750_006),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_csv_and_jsonl_manifests_give_the_same_outcome(
    segmind_env: SegmindEmulator, tmp_path: Path, fmt: str
) -> None:
    photos = copy_photos(tmp_path / "photos")
    rows = formats_rows(fmt)
    text = jsonl(rows) if fmt == "jsonl" else csv_text(rows)
    manifest = write(tmp_path / "manifests" / f"catalogue.{fmt}", text)
    first_line = 1 if fmt == "jsonl" else 2  # CSV: the header is line 1

    state, outcome = run(manifest, storage=ObjectStorage(base_url=str(tmp_path / "out")))

    assert state.is_failed(), state
    assert state.message is not None
    assert "3 of 6 rows failed, 0 not run" in state.message
    assert (outcome.succeeded, outcome.failed, outcome.not_run) == (3, 3, 0)
    assert outcome.paid_usd == Decimal("0.11")
    stats = emulator_stats(segmind_env.url)
    assert (stats["requests"], stats["billed"]) == (3, 3)
    results = local_results(outcome)
    assert [(r["id"], r["line"], r["status"]) for r in results] == [
        ("mug-marble", first_line, "succeeded"),
        ("cat-mug", first_line + 1, "succeeded"),
        ("no-prompt", first_line + 2, "failed"),
        ("poster", first_line + 3, "succeeded"),
        ("too-wide", first_line + 4, "failed"),
        ("mug-marble", first_line + 5, "failed"),
    ]
    assert "prompt is required" in results[2]["error"]
    assert "aspect_ratio" in results[4]["error"]
    assert "21:9" in results[4]["error"]
    assert f"id repeats line {first_line}" in results[5]["error"]

    folder = tmp_path / "out" / "batch" / output_day(outcome)
    expected = {"mug-marble": "png", "cat-mug": "jpg", "poster": "png"}
    for row_id, ext in expected.items():
        output = results[[r["id"] for r in results].index(row_id)]["output"]
        assert output == str(folder / f"{row_id}.{ext}")
        data = Path(output).read_bytes()
        assert decode(data).format == {"png": "PNG", "jpg": "JPEG"}[ext]
        assert hashlib.sha256(data).hexdigest() == sidecar_of(output)["output"]["sha256"]

    # Typed parameters: the seed 7 (a number in CSV too), tolerance and format.
    marble = sidecar_of(str(folder / "mug-marble.png"))
    assert marble["slug"] == "flux-kontext-pro"
    assert marble["seed"] == 7
    assert marble["parameters"]["seed"] == 7
    assert type(marble["parameters"]["seed"]) is int
    assert marble["parameters"]["safety_tolerance"] == 2
    assert marble["parameters"]["aspect_ratio"] == "1:1"
    assert marble["inputs"]["input_image"] == str(photos["coffee"])
    merged = sidecar_of(str(folder / "cat-mug.jpg"))
    assert merged["parameters"]["seed"] == 7
    assert merged["parameters"]["output_format"] == "jpg"
    # "|"-separated in CSV: both images, relative to the manifest's folder.
    assert merged["inputs"] == {
        "input_image_1": str(photos["coffee"]),
        "input_image_2": str(photos["chelsea"]),
    }
    poster = sidecar_of(str(folder / "poster.png"))
    assert poster["parameters"]["aspect_ratio"] == "2:3"
    assert poster["inputs"] == {"image_urls": [str(photos["astronaut"])]}


# --- replace_background_then_merge rows -------------------------------------------------


def test_replace_background_then_merge_rows_store_both_images(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    photos = copy_photos(tmp_path / "photos")
    pair = [str(photos["coffee"]), str(photos["chelsea"])]
    rows = [
        row(
            "scene",
            "replace_background_then_merge",
            "batch two-step test: the cat by the cup",
            pair,
            background_prompt="batch two-step test: a marble counter",
            seed=760_001,
        ),
        row(
            "scene-jpg",
            "replace_background_then_merge",
            "batch two-step test: the cat by the cup, jpg",
            pair,
            background_prompt="batch two-step test: a wooden table",
            seed=760_002,
            output_format="jpg",
        ),
        row(
            "no-background",
            "replace_background_then_merge",
            "batch two-step test: no background prompt",
            pair,
            seed=760_003,
        ),
    ]
    manifest = write(tmp_path / "scenes.jsonl", jsonl(rows))

    state, outcome = run(
        manifest, storage=ObjectStorage(base_url=str(tmp_path / "out")), max_failed_rows=1
    )

    assert state.is_completed(), state
    assert (outcome.succeeded, outcome.failed, outcome.not_run) == (2, 1, 0)
    assert outcome.calls == 4
    assert outcome.paid_usd == outcome.estimate_usd == Decimal("0.20")
    stats = emulator_stats(segmind_env.url)
    assert stats["billed"] == 4
    assert {slug: s["billed"] for slug, s in stats["by_slug"].items()} == {
        "flux-kontext-pro": 2,
        "multi-image-kontext-pro": 2,
    }
    results = by_id(local_results(outcome))
    assert "needs background_prompt" in results["no-background"]["error"]
    folder = tmp_path / "out" / "batch" / output_day(outcome)
    for row_id, ext, seed in (("scene", "png", 760_001), ("scene-jpg", "jpg", 760_002)):
        result = results[row_id]
        assert result["status"] == "succeeded"
        assert result["output"] == str(folder / f"{row_id}.{ext}")
        assert result["intermediate"] == str(folder / f"{row_id}-background.{ext}")
        assert result["cost_usd"] == pytest.approx(0.10)
        assert result["seed"] == seed
        background = sidecar_of(result["intermediate"])
        merged = sidecar_of(result["output"])
        assert background["slug"] == "flux-kontext-pro"
        assert background["parameters"]["prompt"].startswith("batch two-step test: a ")
        assert background["inputs"] == {"input_image": pair[0]}
        assert merged["slug"] == "multi-image-kontext-pro"
        assert merged["inputs"] == {
            "input_image_1": result["intermediate"],
            "input_image_2": pair[1],
        }
        assert merged["input_identities"]["input_image_1"] == (
            f"sha256:{background['output']['sha256']}"
        )
        for path in (result["intermediate"], result["output"]):
            data = Path(path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == sidecar_of(path)["output"]["sha256"]
            decode(data)
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert names == sorted(
        f"{name}{suffix}"
        for name in (
            "scene.png",
            "scene-background.png",
            "scene-jpg.jpg",
            "scene-jpg-background.jpg",
        )
        for suffix in ("", SIDECAR_SUFFIX)
    )


# --- reruns ----------------------------------------------------------------------------


def test_two_services_sharing_storage_each_pay_and_deleted_images_are_paid_again(
    segmind_env: SegmindEmulator, start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    photos = copy_photos(tmp_path / "photos")
    rows = [
        row(f"s-{n}", "p-image-edit", f"two services {n}", [str(photos["coffee"])])
        for n in range(1, 4)
    ]
    for n, r in enumerate(rows, start=1):
        r["params"] = {"seed": 772_000 + n}
    manifest = write(tmp_path / "services.jsonl", jsonl(rows))
    name = f"batch-services-{uuid.uuid4().hex[:8]}"
    ObjectStorage(base_url=str(tmp_path / "out")).save(name)
    other = start_emulator()
    services = {
        "first": SegmindCredentials(api_key=API_KEY, base_url=segmind_env.url),
        "second": SegmindCredentials(api_key=API_KEY, base_url=other.url),
    }

    def run_against(service: str) -> list[dict[str, Any]]:
        state, outcome = run(
            manifest, storage=ObjectStorage.load(name), credentials=services[service]
        )
        assert state.is_completed(), state
        return local_results(outcome)

    first, second = run_against("first"), run_against("second")

    assert (emulator_stats(segmind_env.url)["billed"], emulator_stats(other.url)["billed"]) == (
        3,
        3,
    )
    assert [r["cached"] for r in first + second] == [False] * 6
    for mine, theirs in zip(first, second, strict=True):
        assert mine["output"] != theirs["output"]
        assert sidecar_of(mine["output"])["service"] == segmind_env.url
        assert sidecar_of(theirs["output"])["service"] == other.url

    for r in first:  # the images go; their sidecars stay
        Path(r["output"]).unlink()
    again = run_against("first")

    assert emulator_stats(segmind_env.url)["billed"] == 6
    assert [(r["cached"], r["output"]) for r in again] == [(False, r["output"]) for r in first]
    for r in again:
        image = Path(r["output"]).read_bytes()
        assert hashlib.sha256(image).hexdigest() == sidecar_of(r["output"])["output"]["sha256"]


@pytest.mark.parametrize(("saved", "seed_base"), [(False, 770_000), (True, 771_000)])
def test_a_rerun_into_the_same_storage_pays_nothing(
    segmind_env: SegmindEmulator, tmp_path: Path, saved: bool, seed_base: int
) -> None:
    photos = copy_photos(tmp_path / "photos")
    rows = [
        row("r-1", "p-image-edit", "batch rerun test 1", [str(photos["coffee"])]),
        row("r-2", "p-image-edit", "batch rerun test 2", [str(photos["chelsea"])]),
        row("r-3", "flux-kontext-pro", "batch rerun test 3", [str(photos["astronaut"])]),
        row(
            "r-4",
            "replace_background_then_merge",
            "batch rerun test 4",
            [str(photos["coffee"]), str(photos["chelsea"])],
            background_prompt="batch rerun test 4: a beach",
        ),
    ]
    for n, r in enumerate(rows, start=1):
        r["params"] = {"seed": seed_base + n}
    manifest = write(tmp_path / "rerun.jsonl", jsonl(rows))
    base = tmp_path / "out"
    if saved:
        name = f"batch-rerun-{uuid.uuid4().hex[:8]}"
        ObjectStorage(base_url=str(base)).save(name)

    def storage() -> ObjectStorage:
        if not saved:
            return ObjectStorage(base_url=str(base))
        loaded = ObjectStorage.load(name)
        assert isinstance(loaded, ObjectStorage)
        assert loaded._block_document_id is not None  # saved: cache records go beside outputs
        return loaded

    first_state, first = run(manifest, storage=storage())
    second_state, second = run(manifest, storage=storage())

    assert first_state.is_completed(), first_state
    assert second_state.is_completed(), second_state
    assert first.paid_usd == Decimal("0.17")  # 2 x 0.01 + 0.05 + 0.05 + 0.05
    assert first.saved_usd == Decimal("0")
    assert second.paid_usd == Decimal("0")
    assert second.saved_usd == first.paid_usd
    assert second.results_url != first.results_url
    assert emulator_stats(segmind_env.url)["billed"] == 5
    before, after = local_results(first), local_results(second)
    assert [r["cached"] for r in before] == [False] * 4
    assert [r["cached"] for r in after] == [True] * 4
    assert [r["cost_usd"] for r in after] == [0] * 4
    assert [r["status"] for r in after] == ["succeeded"] * 4
    for old, new in zip(before, after, strict=True):
        assert (new["output"], new["seed"], new["intermediate"]) == (
            old["output"],
            old["seed"],
            old["intermediate"],
        )
    # A saved block keeps Prefect's cache records in itself, beside the outputs.
    if saved:
        digests = {
            sidecar_of(path)["request_digest"]
            for r in before
            for path in (r["output"], r["intermediate"])
            if path is not None
        }
        assert len(digests) == 5
        records = sorted(p.name for p in base.glob("segmind-*"))
        service = credentials_service_tag(SegmindCredentials(base_url=segmind_env.url))
        assert records == sorted(f"segmind-{digest}-{service}" for digest in digests)


# --- the same request in two rows ---------------------------------------------------------


def test_rows_with_the_same_request_are_paid_once_and_each_id_has_its_own_image(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    # Three ids, one request: paid once; each id still gets {id}.png and its sidecar,
    # as documented, and its results line points at its own file.
    photos = copy_photos(tmp_path / "photos")
    ids = ["dup-a", "dup-b", "dup-c"]
    rows = [
        row(row_id, "p-image-edit", "batch duplicate test", [str(photos["coffee"])], seed=772_001)
        for row_id in ids
    ]
    manifest = write(tmp_path / "duplicates.jsonl", jsonl(rows))
    base = tmp_path / "out"

    state, outcome = run(manifest, storage=ObjectStorage(base_url=str(base)))

    assert state.is_completed(), state
    assert emulator_stats(segmind_env.url)["billed"] == 1
    assert outcome.paid_usd == Decimal("0.01")
    assert outcome.saved_usd == Decimal("0.02")
    results = by_id(local_results(outcome))
    day = output_day(outcome)
    payers = [row_id for row_id in ids if results[row_id]["cost_usd"] == 0.01]
    assert len(payers) == 1, results
    (payer,) = payers
    paid_bytes = (base / "batch" / day / f"{payer}.png").read_bytes()
    paid_sidecar = sidecar_of(str(base / "batch" / day / f"{payer}.png"))
    for row_id in ids:
        result = results[row_id]
        path = base / "batch" / day / f"{row_id}.png"
        assert result["status"] == "succeeded"
        assert Path(result["output"]) == path
        assert path.read_bytes() == paid_bytes
        sidecar = sidecar_of(str(path))
        assert sidecar["job_id"] == row_id
        assert sidecar["output"]["sha256"] == hashlib.sha256(paid_bytes).hexdigest()
        assert sidecar["seed"] == result["seed"] == 772_001
        assert sidecar["request_digest"] == paid_sidecar["request_digest"]
        if row_id == payer:
            assert (result["cached"], sidecar["cost_usd"]) == (False, "0.01")
            assert "reused_from" not in sidecar
        else:
            assert (result["cached"], result["cost_usd"], sidecar["cost_usd"]) == (True, 0, "0")
            assert sidecar["reused_from"]["job_id"] == payer
            assert sidecar["reused_from"]["cost_usd"] == "0.01"
            assert sidecar["attempts"] == 0


# --- defaults --------------------------------------------------------------------------


def test_defaults_fill_what_rows_leave_out_and_rows_win(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    photos = copy_photos(tmp_path / "photos")
    pair = [str(photos["coffee"]), str(photos["chelsea"])]
    rows = [
        row("plain", "p-image-edit", "batch defaults test: plain", [str(photos["coffee"])]),
        row(
            "own",
            "p-image-edit",
            "batch defaults test: own",
            [str(photos["chelsea"])],
            seed=780_002,
            aspect_ratio="2:3",
        ),
        row("flux", "flux-kontext-pro", "batch defaults test: flux", [str(photos["astronaut"])]),
        row("merge", "multi-image-kontext-pro", "batch defaults test: merge", pair),
        row(
            "merge-own",
            "multi-image-kontext-pro",
            "batch defaults test: merge, own tolerance",
            pair,
            safety_tolerance=1,
        ),
    ]
    manifest = write(tmp_path / "defaults.jsonl", jsonl(rows))
    defaults = RowDefaults(seed=780_000, aspect_ratio="1:1", safety_tolerance=5)

    state, outcome = run(
        manifest,
        storage=ObjectStorage(base_url=str(tmp_path / "out")),
        defaults=defaults,
        max_failed_rows=1,
    )

    assert state.is_completed(), state
    assert (outcome.succeeded, outcome.failed, outcome.not_run) == (4, 1, 0)
    stats = emulator_stats(segmind_env.url)
    assert (stats["requests"], stats["billed"]) == (4, 4)
    results = by_id(local_results(outcome))
    # Tolerance 5 is refused by the merge only: that row fails, before anything is paid.
    assert results["merge"]["status"] == "failed"
    assert "safety_tolerance" in results["merge"]["error"]
    assert results["merge"]["cost_usd"] == 0

    plain = sidecar_of(results["plain"]["output"])["parameters"]
    assert (plain["seed"], plain["aspect_ratio"]) == (780_000, "1:1")
    assert "safety_tolerance" not in plain  # p-image-edit has no such parameter
    own = sidecar_of(results["own"]["output"])["parameters"]
    assert (own["seed"], own["aspect_ratio"]) == (780_002, "2:3")
    flux = sidecar_of(results["flux"]["output"])["parameters"]
    assert (flux["seed"], flux["aspect_ratio"], flux["safety_tolerance"]) == (780_000, "1:1", 5)
    merge_own = sidecar_of(results["merge-own"]["output"])["parameters"]
    assert (merge_own["seed"], merge_own["aspect_ratio"], merge_own["safety_tolerance"]) == (
        780_000,
        "1:1",
        1,
    )
    assert [results[i]["seed"] for i in ("plain", "own", "flux", "merge-own")] == [
        780_000,
        780_002,
        780_000,
        780_000,
    ]


# --- the parameter form ----------------------------------------------------------------


def docstring_args(doc: str) -> dict[str, str]:
    """The ``Args:`` entries of a Google-style docstring, continuation lines kept."""
    section = inspect.cleandoc(doc).split("Args:\n", 1)[1].split("\n\n", 1)[0]
    entries: dict[str, str] = {}
    name = ""
    for line in section.splitlines():
        match = re.fullmatch(r" {4}(\w+): (.*)", line)
        if match:
            name = match.group(1)
            entries[name] = match.group(2)
        else:
            entries[name] += "\n" + line.strip()
    return entries


def check_schema(schema: dict[str, Any]) -> None:
    definitions = schema["definitions"]
    assert definitions["FluxAspectRatio"]["enum"] == [ratio.value for ratio in FluxAspectRatio]
    assert len(definitions["FluxAspectRatio"]["enum"]) == 14
    assert definitions["OutputFormat"]["enum"] == ["jpg", "png"]
    assert definitions["BatchEndpoint"]["enum"] == [
        "flux-kontext-pro",
        "flux-kontext-max",
        "multi-image-kontext-pro",
        "multi-image-kontext-max",
        "p-image-edit",
        "replace_background_then_merge",
    ]
    properties = schema["properties"]
    assert list(properties) == [
        "manifest",
        "storage",
        "credentials",
        "defaults",
        "max_concurrency",
        "max_cost_usd",
        "max_failed_rows",
        "refresh_cache",
    ]
    assert schema["required"] == ["manifest"]
    concurrency = properties["max_concurrency"]
    assert (concurrency["minimum"], concurrency["maximum"], concurrency["default"]) == (1, 64, 4)
    assert properties["max_failed_rows"]["minimum"] == 0
    assert properties["max_cost_usd"]["anyOf"][0] == {"minimum": 0, "type": "number"}
    row_defaults = definitions["RowDefaults"]["properties"]
    tolerance = row_defaults["safety_tolerance"]["anyOf"][0]
    assert (tolerance["minimum"], tolerance["maximum"]) == (0, 6)
    seed = row_defaults["seed"]["anyOf"][0]
    assert (seed["minimum"], seed["maximum"]) == (0, SEED_MAX)
    assert row_defaults["aspect_ratio"]["anyOf"][0] == {"$ref": "#/definitions/FluxAspectRatio"}
    assert row_defaults["output_format"]["anyOf"][0] == {"$ref": "#/definitions/OutputFormat"}
    assert row_defaults["endpoint"]["anyOf"][0] == {"$ref": "#/definitions/BatchEndpoint"}
    assert definitions["RowDefaults"]["additionalProperties"] is False
    # Each parameter's description is its entry under Args: in the docstring.
    assert batch.fn.__doc__ is not None
    described = docstring_args(batch.fn.__doc__)
    assert sorted(described) == sorted(properties)
    for name, text in described.items():
        assert properties[name]["description"] == text, name
    # The secret fields of the blocks are masked in the form.
    storage = definitions["ObjectStorage"]
    assert storage["secret_fields"] == ["aws_access_key_id", "aws_secret_access_key"]
    assert definitions["SegmindCredentials"]["secret_fields"] == ["api_key"]


def test_the_parameter_schema_has_the_enums_bounds_and_descriptions() -> None:
    check_schema(parameter_schema(batch.fn).model_dump())


def test_a_deployment_carries_the_same_parameter_schema() -> None:
    deployment = batch.to_deployment(name="x")
    assert isinstance(deployment, RunnerDeployment)
    # Prefect 3.8 keeps it in a private attribute; it is sent as parameter_openapi_schema.
    schema = deployment._parameter_openapi_schema.model_dump()
    check_schema(schema)
    assert schema == parameter_schema(batch.fn).model_dump()


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"max_concurrency": 0}, "max_concurrency: Input should be greater than or equal to 1"),
        ({"max_concurrency": 65}, "max_concurrency: Input should be less than or equal to 64"),
        ({"max_cost_usd": -0.5}, "max_cost_usd: Input should be greater than or equal to 0"),
        ({"max_failed_rows": -1}, "max_failed_rows: Input should be greater than or equal to 0"),
        (
            {"defaults": {"safety_tolerance": 7}},
            "defaults.safety_tolerance: Input should be less than or equal to 6",
        ),
        ({"defaults": {"aspect_ratio": "7:3"}}, "defaults.aspect_ratio"),
    ],
    ids=["concurrency-0", "concurrency-65", "cost", "failed-rows", "tolerance", "ratio"],
)
def test_invalid_parameters_are_refused_before_any_call(
    segmind_env: SegmindEmulator, tmp_path: Path, arguments: dict[str, Any], problem: str
) -> None:
    manifest = write(
        tmp_path / "one.jsonl",
        jsonl([row("one", "p-image-edit", "batch parameters test", [str(COFFEE)], seed=1)]),
    )

    state = batch(
        manifest=manifest,
        storage=ObjectStorage(base_url=str(tmp_path / "out")),
        return_state=True,
        **arguments,
    )

    assert state.is_failed(), state
    assert state.message is not None
    assert "invalid parameters" in state.message
    assert problem in state.message
    assert emulator_stats(segmind_env.url)["requests"] == 0
    assert not (tmp_path / "out").exists()


# --- secrets ---------------------------------------------------------------------------


def test_no_secret_reaches_a_log_artifact_or_results_manifest(
    start_emulator: EmulatorFactory, s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    poor = start_emulator(credits_usd=Decimal("0.02"))  # two calls, then a 406
    prefix = f"secrets-{uuid.uuid4().hex[:8]}"
    source = s3_put(s3, f"{prefix}/sources/coffee.jpg", COFFEE.read_bytes())
    rows = [
        row(f"s-{n}", "p-image-edit", f"batch secrets test {n}", [source], seed=790_000 + n)
        for n in range(1, 5)
    ]
    rows.append(row("s-bad", "p-image-edit", "x", [source], aspect_ratio="7:3"))
    manifest = s3_put(s3, f"{prefix}/secrets.jsonl", jsonl(rows).encode())
    storage = s3_storage(s3, prefix)
    credentials = SegmindCredentials(api_key=API_KEY, base_url=poor.url)

    state, outcome = run(manifest, storage=storage, credentials=credentials, max_concurrency=1)

    assert state.is_failed(), state
    assert (outcome.succeeded, outcome.failed, outcome.not_run) == (2, 2, 1)
    flow_run_id = flow_run_id_of(state)
    texts: dict[str, str] = {}

    # Every log record this process produced, at every level.
    texts["captured logs"] = "\n".join(
        f"{record.name} {record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    assert "406" in texts["captured logs"]

    # The flow run's logs on the Prefect server, once the last one has arrived.
    APILogHandler().flush()

    def server_logs() -> list[Any]:
        with get_client(sync_client=True) as client:
            logs: list[Any] = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        return logs if any("Results:" in log.message for log in logs) else []

    logs = wait_until(server_logs, timeout=15, what="the flow run's logs to reach the server")
    texts["server logs"] = "\n".join(log.model_dump_json() for log in logs)
    assert "406" in texts["server logs"]
    assert "aspect_ratio" in texts["server logs"]

    # Every artifact of the run: estimate, progress, results table, gallery.
    artifacts = artifacts_of(flow_run_id)
    assert {a.key for a in artifacts} == {ESTIMATE_KEY, PROGRESS_KEY, RESULTS_KEY, GALLERY_KEY}
    for artifact in artifacts:
        texts[f"artifact {artifact.key}"] = artifact.model_dump_json()
    assert "s-4" in texts[f"artifact {RESULTS_KEY}"]

    # The results manifest, and every object in the bucket (sidecars included).
    results = s3_get(s3, s3_key_of(outcome.results_url))
    assert len(parse_results(results)) == 5
    texts["results manifest"] = results.decode()
    for key in s3_keys(s3, prefix):
        if not key.endswith((".png", ".jpg")):
            texts[f"object {key}"] = s3_get(s3, key).decode(errors="replace")

    # The flow run as the server keeps it, parameters included.
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    texts["flow run"] = flow_run.model_dump_json()
    texts["state"] = repr(state) + str(state.message) + outcome.model_dump_json()

    for secret in (API_KEY, s3.secret_access_key):
        leaks = [name for name, text in texts.items() if secret in text]
        assert leaks == [], secret
