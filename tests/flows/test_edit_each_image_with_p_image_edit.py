"""The edit-each-image-with-p-image-edit flow, end to end: Prefect test server and emulator.

Each test stores into its own folder under ``tmp_path`` and pins a seed no
other test pins (93xx), or none: Prefect's cache records last the whole test
session and are keyed by the request (slug, parameters with the seed, input
contents), so a shared request would be served from another test's record.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import State
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from blocks import ObjectStorage, SegmindCredentials
from emulator import SegmindEmulator
from flows.common import SEED_MAX
from flows.edit_each_image_with_p_image_edit import (
    PImageEditOutcome,
    edit_each_image_with_p_image_edit,
    output_names,
)
from segmind_core.contract import PImageEditAspectRatio
from segmind_core.outputs import SIDECAR_SUFFIX
from tasks.artifacts import RESULTS_KEY
from tests.conftest import EmulatorFactory
from tests.flows.outputs import DAY, flow_run_artifacts
from tests.support import API_KEY, DOCUMENTED_SIZES, decode, image_bytes

pytestmark = pytest.mark.usefixtures("prefect_harness")

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
COFFEE = PHOTOS / "coffee.jpg"  # 600x400: 3:2
CHELSEA = PHOTOS / "chelsea.jpg"  # 451x300: 3:2
ASTRONAUT = PHOTOS / "astronaut.jpg"  # 512x512: 1:1
FLOW = "edit-each-image-with-p-image-edit"
PROMPT = "p-image-edit flow test: make it a vintage travel poster"


def run(storage: ObjectStorage, images: list[str], **arguments: Any) -> State[Any]:
    state: State[Any] = edit_each_image_with_p_image_edit(
        prompt=PROMPT, images=images, storage=storage, return_state=True, **arguments
    )
    return state


def outcome_of(state: State[Any]) -> PImageEditOutcome:
    outcome = state.result(raise_on_failure=False)
    assert isinstance(outcome, PImageEditOutcome), outcome
    return outcome


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_output(output: str, base: Path, name: str, size: tuple[int, int]) -> dict[str, Any]:
    """An image named ``name`` under ``base``, of ``size``, with a matching sidecar."""
    path = Path(output)
    relative = path.relative_to(base.resolve())
    assert re.fullmatch(rf"{FLOW}/{DAY}/{re.escape(name)}\.png", str(relative)), relative
    data = path.read_bytes()
    image = decode(data)
    assert (image.format, image.size) == ("PNG", size)
    sidecar_text = Path(f"{path}{SIDECAR_SUFFIX}").read_text()
    sidecar: dict[str, Any] = json.loads(sidecar_text)
    assert sidecar["output"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["slug"] == "p-image-edit"
    assert sidecar["flow_name"] == FLOW
    assert sidecar["job_id"] == name
    assert API_KEY not in sidecar_text
    return sidecar


def results_lines(outcome: PImageEditOutcome, base: Path) -> list[dict[str, Any]]:
    path = Path(outcome.results_url)
    relative = path.relative_to(base.resolve())
    assert re.fullmatch(rf"{FLOW}/{DAY}/runs/[a-z0-9._-]+-results\.jsonl", str(relative))
    return [json.loads(line) for line in path.read_text().splitlines()]


def results_table(state: State[Any]) -> list[dict[str, Any]]:
    artifacts = flow_run_artifacts(state, RESULTS_KEY)
    assert len(artifacts) == 1, artifacts
    assert artifacts[0].type == "table"
    data = artifacts[0].data
    table: list[dict[str, Any]] = json.loads(data) if isinstance(data, str) else data
    return table


def test_each_image_gets_an_output_named_after_it_with_the_references(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    # A second image whose file is also called coffee.jpg (chelsea's pixels).
    other = tmp_path / "inputs" / "more"
    other.mkdir(parents=True)
    second_coffee = Path(shutil.copy(CHELSEA, other / "coffee.jpg"))
    logo = tmp_path / "inputs" / "logo.png"
    logo.write_bytes(image_bytes((20, 90, 200), (64, 64)))
    images = [str(COFFEE), str(ASTRONAUT), str(second_coffee)]
    references = [str(logo), str(CHELSEA)]
    base = tmp_path / "out"

    state = run(ObjectStorage(base_url=str(base)), images, reference_images=references, seed=9301)

    assert state.is_completed(), state
    outcome = outcome_of(state)
    names = ["coffee", "astronaut", "coffee-2"]
    assert [result.id for result in outcome.results] == names
    assert all(result.status == "succeeded" for result in outcome.results), outcome.results
    sizes = [DOCUMENTED_SIZES["3:2"], DOCUMENTED_SIZES["1:1"], DOCUMENTED_SIZES["3:2"]]
    for result, name, image, size in zip(outcome.results, names, images, sizes, strict=True):
        assert result.output is not None
        sidecar = assert_output(result.output, base, name, size)
        assert result.seed == sidecar["seed"] == 9301
        assert result.cost_usd == Decimal("0.01")
        assert not result.cached
        # The references go with every call, after the image itself.
        assert sidecar["inputs"] == {"image_urls": [image, *references]}
        assert sidecar["input_identities"]["image_urls"] == [
            f"sha256:{sha256_of(Path(path))}" for path in (image, *references)
        ]
    assert outcome.paid_usd == Decimal("0.03")
    assert outcome.saved_usd == 0
    stats = segmind_env.stats()
    assert stats["billed"] == 3
    assert {slug: s["billed"] for slug, s in stats["by_slug"].items()} == {"p-image-edit": 3}

    # The results manifest: one JSON line per image, as the outcome says.
    lines = results_lines(outcome, base)
    assert [(line["id"], line["status"], line["output"]) for line in lines] == [
        (result.id, "succeeded", result.output) for result in outcome.results
    ]
    table = results_table(state)
    assert sorted(row["id"] for row in table) == sorted(names)
    assert {row["status"] for row in table} == {"succeeded"}


def test_a_second_identical_run_pays_nothing(segmind_env: SegmindEmulator, tmp_path: Path) -> None:
    storage = ObjectStorage(base_url=str(tmp_path))
    images = [str(COFFEE), str(ASTRONAUT)]
    first = outcome_of(run(storage, images, aspect_ratio="4:3", seed=9302))
    second = outcome_of(run(storage, images, aspect_ratio="4:3", seed=9302))

    assert [result.output for result in second.results] == [
        result.output for result in first.results
    ]
    for result in first.results:
        assert result.output is not None
        assert_output(result.output, tmp_path, str(result.id), DOCUMENTED_SIZES["4:3"])
    assert [result.cached for result in first.results] == [False, False]
    assert [result.cached for result in second.results] == [True, True]
    assert (first.paid_usd, second.paid_usd) == (Decimal("0.02"), Decimal("0"))
    assert second.saved_usd == Decimal("0.02")
    assert segmind_env.stats()["billed"] == 2
    # Each run has its own results manifest.
    assert first.results_url != second.results_url
    assert [line["cached"] for line in results_lines(second, tmp_path)] == [True, True]


def test_a_missing_image_fails_the_run_and_the_others_are_stored(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    missing = tmp_path / "inputs" / "lost-photo.jpg"
    images = [str(COFFEE), str(missing), str(ASTRONAUT)]
    base = tmp_path / "out"

    state = run(ObjectStorage(base_url=str(base)), images, seed=9303)

    assert state.is_failed(), state
    assert state.message is not None
    assert "1 of 3 image(s) failed" in state.message
    assert "lost-photo" in state.message
    outcome = outcome_of(state)
    assert [(result.id, result.status) for result in outcome.results] == [
        ("coffee", "succeeded"),
        ("lost-photo", "failed"),
        ("astronaut", "succeeded"),
    ]
    lost = outcome.results[1]
    assert lost.output is None
    assert lost.error is not None
    assert str(missing) in lost.error
    assert lost.cost_usd == 0
    good = [outcome.results[0], outcome.results[2]]
    for result, size in zip(good, [DOCUMENTED_SIZES["3:2"], DOCUMENTED_SIZES["1:1"]], strict=True):
        assert result.output is not None
        assert_output(result.output, base, str(result.id), size)
    assert segmind_env.stats()["billed"] == 2
    assert outcome.paid_usd == Decimal("0.02")
    lines = results_lines(outcome, base)
    assert [(line["id"], line["status"]) for line in lines] == [
        ("coffee", "succeeded"),
        ("lost-photo", "failed"),
        ("astronaut", "succeeded"),
    ]
    assert not list(base.glob(f"{FLOW}/*/lost-photo*"))


def test_at_most_max_concurrency_calls_are_in_flight(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    slow = start_emulator(latency_s=0.2)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    images = []
    for index in range(6):
        path = inputs / f"swatch-{index}.png"
        path.write_bytes(image_bytes((40 * index, 100, 255 - 30 * index), (96, 64)))
        images.append(str(path))
    credentials = SegmindCredentials(api_key=API_KEY, base_url=slow.url)

    state = run(
        ObjectStorage(base_url=str(tmp_path / "out")),
        images,
        max_concurrency=2,
        credentials=credentials,
        aspect_ratio="3:2",
    )

    assert state.is_completed(), state
    outcome = outcome_of(state)
    assert [result.id for result in outcome.results] == [f"swatch-{i}" for i in range(6)]
    assert all(result.status == "succeeded" for result in outcome.results)
    stats = slow.stats()
    assert stats["billed"] == 6
    assert 1 <= stats["max_in_flight"] <= 2


@pytest.mark.parametrize(
    "bad",
    [
        {"images": []},
        {"reference_images": [str(CHELSEA)] * 5},
        {"seed": -5},
        {"seed": SEED_MAX + 1},
        {"aspect_ratio": "21:9"},
        {"max_concurrency": 0},
        {"max_concurrency": 65},
    ],
    ids=lambda bad: "-".join(f"{k}={v}" for k, v in bad.items())[:40],
)
def test_invalid_parameters_are_refused_before_any_call(
    segmind_env: SegmindEmulator, tmp_path: Path, bad: dict[str, Any]
) -> None:
    arguments: dict[str, Any] = {"images": [str(COFFEE)], **bad}
    with pytest.raises(ParameterTypeError) as raised:
        edit_each_image_with_p_image_edit(
            prompt=PROMPT, storage=ObjectStorage(base_url=str(tmp_path)), **arguments
        )

    assert next(iter(bad)) in str(raised.value)
    assert segmind_env.stats()["requests"] == 0
    assert not any(tmp_path.iterdir())


def test_output_names_follow_the_file_names() -> None:
    assert output_names(
        [
            "/photos/Coffee Cup.JPG",
            "s3://bucket/a/coffee-cup.png",
            "https://example.invalid/img/cat.jpg?size=large",
            "https://example.invalid/",
            "/photos/coffee cup.jpg",
        ]
    ) == ["coffee-cup", "coffee-cup-2", "cat", "image", "coffee-cup-3"]


def test_the_parameter_schema_offers_the_choices_and_bounds() -> None:
    schema = parameter_schema(edit_each_image_with_p_image_edit).model_dump()
    properties, definitions = schema["properties"], schema["definitions"]

    assert schema["required"] == ["prompt", "images"]
    ratios = definitions["PImageEditAspectRatio"]["enum"]
    assert ratios == [ratio.value for ratio in PImageEditAspectRatio]
    assert len(ratios) == 8
    assert "21:9" not in ratios
    images = properties["images"]
    assert (images["type"], images["minItems"]) == ("array", 1)
    references = next(
        option
        for option in properties["reference_images"]["anyOf"]
        if option.get("type") == "array"
    )
    assert references["maxItems"] == 4
    concurrency = properties["max_concurrency"]
    assert (concurrency["minimum"], concurrency["maximum"], concurrency["default"]) == (1, 64, 4)
    seed = next(option for option in properties["seed"]["anyOf"] if option.get("type") == "integer")
    assert (seed["minimum"], seed["maximum"]) == (0, 999_999_999_999_999)
    assert properties["disable_safety_checker"]["default"] is False
    assert all(prop.get("description") for prop in properties.values())


def test_output_names_never_repeat() -> None:
    assert output_names(["a.png", "x/a.png", "a-2.png", "b.jpg"]) == ["a", "a-2", "a-2-2", "b"]
