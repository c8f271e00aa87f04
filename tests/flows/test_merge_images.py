"""The merge-images flow, end to end: Prefect test server and a loopback emulator.

Each test stores into its own folder under ``tmp_path`` and pins a seed no
other test pins (83xx), or none: Prefect's cache records last the whole test
session and are keyed by the request (slug, parameters with the seed, input
contents), so a shared request would be served from another test's record.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import State
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from blocks import ObjectStorage
from emulator import SegmindEmulator
from flows.common import SEED_MAX
from flows.merge_images import merge_images
from segmind_core.contract import FluxAspectRatio, OutputFormat
from segmind_core.generation import EditResult
from tasks.artifacts import OUTPUTS_KEY
from tests.flows.outputs import assert_stored as assert_stored_output
from tests.flows.outputs import flow_run_artifacts
from tests.support import DOCUMENTED_SIZES

pytestmark = pytest.mark.usefixtures("prefect_harness")

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
COFFEE = PHOTOS / "coffee.jpg"  # 600x400: 3:2
ASTRONAUT = PHOTOS / "astronaut.jpg"  # 512x512: 1:1
FLOW = "merge-images"
PROMPT = "merge-images test: the astronaut holding the cup"


def run(storage: ObjectStorage, **arguments: Any) -> State[EditResult]:
    arguments.setdefault("image_1", str(COFFEE))
    arguments.setdefault("image_2", str(ASTRONAUT))
    state: State[EditResult] = merge_images(
        prompt=PROMPT, storage=storage, return_state=True, **arguments
    )
    assert state.is_completed(), state
    return state


def assert_stored(result: EditResult, base: Path, **expected: Any) -> dict[str, Any]:
    return assert_stored_output(result, base, flow=FLOW, **expected)


def outputs_artifacts(state: State[Any]) -> list[Any]:
    return flow_run_artifacts(state, OUTPUTS_KEY)


def test_a_merge_is_stored_with_its_sidecar_and_an_outputs_artifact(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    state = run(ObjectStorage(base_url=str(tmp_path)), seed=8301)
    result = state.result()

    # match_input_image follows the first image: coffee.jpg, 3:2.
    sidecar = assert_stored(
        result, tmp_path, slug="multi-image-kontext-pro", size=DOCUMENTED_SIZES["3:2"]
    )
    assert result.seed == 8301
    assert result.cost_usd == Decimal("0.05")
    assert not result.reused
    assert sidecar["inputs"] == {"input_image_1": str(COFFEE), "input_image_2": str(ASTRONAUT)}
    assert sidecar["input_identities"]["input_image_1"] == (
        f"sha256:{hashlib.sha256(COFFEE.read_bytes()).hexdigest()}"
    )
    assert sidecar["parameters"]["safety_tolerance"] == 2
    stats = segmind_env.stats()
    assert {slug: s["billed"] for slug, s in stats["by_slug"].items()} == {
        "multi-image-kontext-pro": 1
    }

    artifacts = outputs_artifacts(state)
    assert len(artifacts) == 1, artifacts
    assert artifacts[0].type == "markdown"
    assert result.url in artifacts[0].data
    assert "seed 8301" in artifacts[0].data


def test_the_first_image_sets_the_size_unless_a_ratio_is_given(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    storage = ObjectStorage(base_url=str(tmp_path))
    square = run(storage, image_1=str(ASTRONAUT), image_2=str(COFFEE)).result()
    wide = run(storage, aspect_ratio="16:9", output_format="jpg", output_name="Wide One").result()

    assert_stored(square, tmp_path, slug="multi-image-kontext-pro", size=DOCUMENTED_SIZES["1:1"])
    assert_stored(
        wide, tmp_path, slug="multi-image-kontext-pro", size=DOCUMENTED_SIZES["16:9"], fmt="jpg"
    )
    assert wide.key.endswith("/wide-one.jpg")
    assert segmind_env.stats()["billed"] == 2


def test_max_calls_the_max_endpoint_at_its_price(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    state = run(ObjectStorage(base_url=str(tmp_path)), model="max", seed=8302)
    result = state.result()

    # The flow's own defaults apply to max too: match_input_image and png.
    assert_stored(result, tmp_path, slug="multi-image-kontext-max", size=DOCUMENTED_SIZES["3:2"])
    assert result.cost_usd == Decimal("0.10")
    assert result.seed == 8302
    stats = segmind_env.stats()
    assert stats["spent_usd"] == pytest.approx(0.10)
    assert {slug: s["billed"] for slug, s in stats["by_slug"].items()} == {
        "multi-image-kontext-max": 1
    }
    assert "0.10 USD" in outputs_artifacts(state)[0].data


def test_a_second_identical_run_pays_nothing(segmind_env: SegmindEmulator, tmp_path: Path) -> None:
    storage = ObjectStorage(base_url=str(tmp_path))
    first = run(storage, seed=8303).result()
    second_state = run(storage, seed=8303)
    second = second_state.result()

    assert not first.reused
    assert second.reused
    assert (second.url, second.sha256, second.seed) == (first.url, first.sha256, 8303)
    assert segmind_env.stats()["billed"] == 1
    assert "from cache, 0.00 USD" in outputs_artifacts(second_state)[0].data


def test_without_a_seed_each_run_draws_and_records_one(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    storage = ObjectStorage(base_url=str(tmp_path))
    first = run(storage).result()
    second = run(storage).result()

    # Never the endpoint's fixed default: each run is a new variation, paid.
    assert not second.reused
    assert first.url != second.url
    for result in (first, second):
        sidecar = assert_stored(
            result, tmp_path, slug="multi-image-kontext-pro", size=DOCUMENTED_SIZES["3:2"]
        )
        assert sidecar["seed"] == result.seed
    assert segmind_env.stats()["billed"] == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"safety_tolerance": 3},
        {"safety_tolerance": -1},
        {"seed": -5},
        {"seed": SEED_MAX + 1},
        {"aspect_ratio": "3:1"},
        {"model": "ultra"},
    ],
    ids=lambda bad: "-".join(f"{k}={v}" for k, v in bad.items()),
)
def test_invalid_parameters_are_refused_before_any_call(
    segmind_env: SegmindEmulator, tmp_path: Path, bad: dict[str, Any]
) -> None:
    with pytest.raises(ParameterTypeError) as raised:
        merge_images(
            prompt=PROMPT,
            image_1=str(COFFEE),
            image_2=str(ASTRONAUT),
            storage=ObjectStorage(base_url=str(tmp_path)),
            **bad,
        )

    assert next(iter(bad)) in str(raised.value)
    assert segmind_env.stats()["requests"] == 0
    assert not any(tmp_path.iterdir())


def test_both_images_are_required() -> None:
    with pytest.raises(TypeError):
        merge_images(prompt=PROMPT, image_1=str(COFFEE))  # type: ignore[call-arg]


def test_the_parameter_schema_offers_the_choices_and_bounds() -> None:
    schema = parameter_schema(merge_images).model_dump()
    properties, definitions = schema["properties"], schema["definitions"]

    assert schema["required"] == ["prompt", "image_1", "image_2"]
    assert definitions["FluxAspectRatio"]["enum"] == [ratio.value for ratio in FluxAspectRatio]
    assert len(definitions["FluxAspectRatio"]["enum"]) == 14
    assert definitions["KontextModel"]["enum"] == ["pro", "max"]
    assert set(definitions["OutputFormat"]["enum"]) == {fmt.value for fmt in OutputFormat}
    tolerance = properties["safety_tolerance"]
    assert (tolerance["minimum"], tolerance["maximum"], tolerance["default"]) == (0, 2, 2)
    seed = next(option for option in properties["seed"]["anyOf"] if option.get("type") == "integer")
    assert (seed["minimum"], seed["maximum"]) == (0, 999_999_999_999_999)
    assert all(prop.get("description") for prop in properties.values())
