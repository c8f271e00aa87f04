"""The edit-image flow, end to end: Prefect test server and a loopback emulator.

Each test stores into its own folder under ``tmp_path`` and pins a seed no
other test pins (73xx), or none: Prefect's cache records last the whole test
session and are keyed by the request (slug, parameters with the seed, input
contents), so a shared request would be served from another test's record.
"""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import State
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from blocks import ObjectStorage
from emulator import SegmindEmulator
from flows.common import RECORDS_FOLDER, SEED_MAX
from flows.edit_image import KontextModel, edit_image
from segmind_core.contract import FluxAspectRatio, OutputFormat
from segmind_core.generation import EditResult
from tasks.artifacts import OUTPUTS_KEY
from tests.flows.outputs import assert_stored as assert_stored_output
from tests.flows.outputs import flow_run_artifacts
from tests.support import DOCUMENTED_SIZES

pytestmark = pytest.mark.usefixtures("prefect_harness")

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
COFFEE = PHOTOS / "coffee.jpg"  # 600x400: match_input_image gives 3:2
FLOW = "edit-image"
PROMPT = "edit-image test: put the cup on a marble counter"


def run(storage: ObjectStorage, **arguments: Any) -> State[EditResult]:
    arguments.setdefault("image", str(COFFEE))
    state: State[EditResult] = edit_image(
        prompt=arguments.pop("prompt", PROMPT), storage=storage, return_state=True, **arguments
    )
    assert state.is_completed(), state
    return state


def assert_stored(result: EditResult, base: Path, **expected: Any) -> dict[str, Any]:
    return assert_stored_output(result, base, flow=FLOW, **expected)


def outputs_artifacts(state: State[Any]) -> list[Any]:
    return flow_run_artifacts(state, OUTPUTS_KEY)


def test_an_edit_is_stored_with_its_sidecar_and_an_outputs_artifact(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    state = run(ObjectStorage(base_url=str(tmp_path)), seed=7301)
    result = state.result()

    sidecar = assert_stored(result, tmp_path, slug="flux-kontext-pro", size=DOCUMENTED_SIZES["3:2"])
    assert result.seed == 7301
    assert sidecar["parameters"]["seed"] == 7301
    assert sidecar["parameters"]["prompt"] == PROMPT
    assert result.cost_usd == Decimal("0.05")
    assert not result.reused
    # Named by the request digest when no output name is given.
    assert result.key.endswith(f"/{result.request_digest}.png")
    stats = segmind_env.stats()
    assert stats["billed"] == 1
    assert {slug: s["billed"] for slug, s in stats["by_slug"].items()} == {"flux-kontext-pro": 1}

    artifacts = outputs_artifacts(state)
    assert len(artifacts) == 1, artifacts
    artifact = artifacts[0]
    assert artifact.type == "markdown"
    assert result.url in artifact.data
    assert "seed 7301" in artifact.data
    assert "0.05 USD" in artifact.data


@pytest.mark.parametrize(
    ("aspect_ratio", "output_format"),
    [("21:9", "jpg"), ("4:5", "png"), ("2:1", "png")],
)
def test_the_output_has_the_size_of_its_aspect_ratio(
    segmind_env: SegmindEmulator, tmp_path: Path, aspect_ratio: str, output_format: str
) -> None:
    state = run(
        ObjectStorage(base_url=str(tmp_path)),
        aspect_ratio=aspect_ratio,
        output_format=output_format,
        output_name="Coffee Cup",
    )
    result = state.result()

    assert_stored(
        result,
        tmp_path,
        slug="flux-kontext-pro",
        size=DOCUMENTED_SIZES[aspect_ratio],
        fmt=output_format,
    )
    # The output name, sanitised, names the file.
    assert result.key.endswith(f"/coffee-cup.{output_format}")
    assert segmind_env.stats()["billed"] == 1


def test_from_text_alone_the_image_is_square(segmind_env: SegmindEmulator, tmp_path: Path) -> None:
    state = run(
        ObjectStorage(base_url=str(tmp_path)),
        image=None,
        prompt="edit-image test: a red bicycle",
        seed=7302,
    )

    sidecar = assert_stored(
        state.result(), tmp_path, slug="flux-kontext-pro", size=DOCUMENTED_SIZES["1:1"]
    )
    assert sidecar["inputs"] == {}
    assert segmind_env.stats()["billed"] == 1


def test_max_calls_the_max_endpoint_at_its_price(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    state = run(ObjectStorage(base_url=str(tmp_path)), model="max", seed=7303)
    result = state.result()

    assert_stored(result, tmp_path, slug="flux-kontext-max", size=DOCUMENTED_SIZES["3:2"])
    assert result.cost_usd == Decimal("0.10")
    stats = segmind_env.stats()
    assert stats["spent_usd"] == pytest.approx(0.10)
    assert {slug: s["billed"] for slug, s in stats["by_slug"].items()} == {"flux-kontext-max": 1}
    assert "0.10 USD" in outputs_artifacts(state)[0].data


def test_a_second_identical_run_pays_nothing(segmind_env: SegmindEmulator, tmp_path: Path) -> None:
    storage = ObjectStorage(base_url=str(tmp_path))
    first = run(storage, seed=7304).result()
    second_state = run(storage, seed=7304)
    second = second_state.result()

    assert not first.reused
    assert second.reused
    assert second.url == first.url
    assert second.sha256 == first.sha256
    assert second.seed == 7304
    assert segmind_env.stats()["billed"] == 1
    # The second run's artifact says the image cost it nothing.
    data = outputs_artifacts(second_state)[0].data
    assert "from cache, 0.00 USD" in data
    assert "Paid in this run: **0.00 USD**" in data


def test_a_run_into_other_storage_stores_its_output_there(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    # The same request into a second, empty folder (as a second ``--output`` would).
    first_base, second_base = tmp_path / "first", tmp_path / "second"
    first = run(ObjectStorage(base_url=str(first_base)), seed=7305).result()
    second = run(ObjectStorage(base_url=str(second_base)), seed=7305).result()

    assert_stored(first, first_base, slug="flux-kontext-pro", size=DOCUMENTED_SIZES["3:2"])
    # What the caller asked for: the image in the storage it named.
    assert Path(second.url).is_relative_to(second_base.resolve()), (
        f"the run into {second_base} returned {second.url}: a cache record of the "
        "run into the other folder, and nothing was stored where it was asked"
    )
    assert_stored(second, second_base, slug="flux-kontext-pro", size=DOCUMENTED_SIZES["3:2"])


def test_after_its_folder_is_deleted_a_request_is_made_again_not_served_from_a_stale_record(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    base = tmp_path / "outputs"
    first = run(ObjectStorage(base_url=str(base)), seed=7306).result()
    # The cache record went with the outputs, into the folder itself.
    assert list((base / RECORDS_FOLDER).iterdir())
    again = run(ObjectStorage(base_url=str(base)), seed=7306).result()
    assert again.reused
    assert segmind_env.stats()["billed"] == 1

    shutil.rmtree(base)
    third = run(ObjectStorage(base_url=str(base)), seed=7306).result()

    assert not third.reused
    assert segmind_env.stats()["billed"] == 2
    assert third.sha256 == first.sha256  # the same request, so the same image
    assert_stored(third, base, slug="flux-kontext-pro", size=DOCUMENTED_SIZES["3:2"])


@pytest.mark.parametrize(
    "bad",
    [
        {"safety_tolerance": 7},
        {"safety_tolerance": -1},
        {"seed": -5},
        {"seed": SEED_MAX + 1},
        {"aspect_ratio": "7:3"},
        {"model": "ultra"},
        {"output_format": "gif"},
    ],
    ids=lambda bad: "-".join(f"{k}={v}" for k, v in bad.items()),
)
def test_invalid_parameters_are_refused_before_any_call(
    segmind_env: SegmindEmulator, tmp_path: Path, bad: dict[str, Any]
) -> None:
    with pytest.raises(ParameterTypeError) as raised:
        edit_image(
            prompt=PROMPT, image=str(COFFEE), storage=ObjectStorage(base_url=str(tmp_path)), **bad
        )

    assert next(iter(bad)) in str(raised.value)
    assert segmind_env.stats()["requests"] == 0
    assert not any(tmp_path.iterdir())


def test_the_parameter_schema_offers_the_choices_and_bounds() -> None:
    schema = parameter_schema(edit_image).model_dump()
    properties, definitions = schema["properties"], schema["definitions"]

    assert schema["required"] == ["prompt"]
    assert definitions["FluxAspectRatio"]["enum"] == [ratio.value for ratio in FluxAspectRatio]
    assert len(definitions["FluxAspectRatio"]["enum"]) == 14
    assert definitions["KontextModel"]["enum"] == ["pro", "max"]
    assert set(definitions["OutputFormat"]["enum"]) == {fmt.value for fmt in OutputFormat}
    assert properties["model"]["default"] == KontextModel.PRO.value
    assert properties["aspect_ratio"]["default"] == "match_input_image"
    tolerance = properties["safety_tolerance"]
    assert (tolerance["minimum"], tolerance["maximum"], tolerance["default"]) == (0, 6, 2)
    seed = next(option for option in properties["seed"]["anyOf"] if option.get("type") == "integer")
    assert (seed["minimum"], seed["maximum"]) == (0, 999_999_999_999_999)
    assert properties["seed"]["default"] is None
    # Every parameter is described for the UI's form.
    assert all(prop.get("description") for prop in properties.values())
