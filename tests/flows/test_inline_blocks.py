"""A deployment's run takes saved blocks only (`flows.common.refuse_inline_blocks`).

Runs are created on the Prefect test server from an enforcing deployment, the
way the UI form or the API creates them, then executed in this process by
Prefect's flow engine (as a worker's flow-run process would). The "elsewhere"
a block given inline points at is a second loopback emulator: it must receive
nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect import Flow, get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import State
from prefect.flow_engine import run_flow_sync
from prefect.utilities.callables import parameter_schema

from blocks import ObjectStorage, SegmindCredentials
from emulator import SegmindEmulator
from flows.batch import batch
from flows.common import InlineBlockError
from flows.edit_each_image_with_p_image_edit import edit_each_image_with_p_image_edit
from flows.edit_image import edit_image
from flows.merge_images import merge_images
from flows.replace_background_then_merge import replace_background_then_merge
from tests.conftest import EmulatorFactory

pytestmark = pytest.mark.usefixtures("prefect_harness")

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
KEY = "inline-blocks-test-key"


class DeploymentRuns:
    """Deployments on the test server, and runs of them executed here."""

    def __init__(self, client: SyncPrefectClient) -> None:
        self.client = client
        self.created: list[UUID] = []

    def deploy(self, flow: Flow[..., Any]) -> UUID:
        suffix = uuid4().hex[:8]
        flow_id = self.client.create_flow_from_name(f"{flow.name}-{suffix}")
        deployment_id = self.client.create_deployment(
            flow_id=flow_id,
            name=f"inline-{suffix}",
            entrypoint=f"{flow.fn.__module__.replace('.', '/')}.py:{flow.fn.__name__}",
            parameter_openapi_schema=parameter_schema(flow.fn).model_dump_for_openapi(),
            enforce_parameter_schema=True,
        )
        self.created.append(deployment_id)
        return deployment_id

    def run(self, flow: Flow[..., Any], parameters: dict[str, Any]) -> State[Any]:
        """Create a run of ``flow``'s deployment (the server checks the schema), run it here."""
        flow_run = self.client.create_flow_run_from_deployment(
            self.deploy(flow), parameters=parameters
        )
        assert flow_run.deployment_id is not None
        state = run_flow_sync(
            flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state"
        )
        assert isinstance(state, State)
        return state


@pytest.fixture
def runs() -> Iterator[DeploymentRuns]:
    with get_client(sync_client=True) as client:
        created = DeploymentRuns(client)
        yield created
        for deployment_id in created.created:
            client.delete_deployment(deployment_id)


@pytest.fixture
def elsewhere(start_emulator: EmulatorFactory) -> SegmindEmulator:
    """Where an inline block sends calls: it must get none."""
    return start_emulator(api_key=KEY)


def _failure(state: State[Any]) -> BaseException:
    assert state.is_failed(), state
    with pytest.raises(InlineBlockError) as raised:
        state.result()
    return raised.value


ONE_IMAGE = {"prompt": "inline test", "image": str(PHOTOS / "coffee.jpg"), "seed": 7801}
FLOWS: dict[str, tuple[Flow[..., Any], dict[str, Any]]] = {
    "edit_image": (edit_image, ONE_IMAGE),
    "merge_images": (
        merge_images,
        {
            "prompt": "inline test",
            "image_1": str(PHOTOS / "coffee.jpg"),
            "image_2": str(PHOTOS / "coffee.jpg"),
            "seed": 7802,
        },
    ),
    "edit_each_image_with_p_image_edit": (
        edit_each_image_with_p_image_edit,
        {"prompt": "inline test", "images": [str(PHOTOS / "coffee.jpg")], "seed": 7803},
    ),
    "replace_background_then_merge": (
        replace_background_then_merge,
        {
            "product_image": str(PHOTOS / "coffee.jpg"),
            "second_image": str(PHOTOS / "coffee.jpg"),
            "background_prompt": "inline test",
            "merge_prompt": "inline test",
            "seed": 7804,
        },
    ),
    "batch": (batch, {"manifest": "examples/manifests/catalogue.jsonl"}),
}


@pytest.mark.parametrize("flow_name", sorted(FLOWS))
def test_inline_credentials_naming_another_server_are_refused_before_any_call(
    flow_name: str,
    runs: DeploymentRuns,
    elsewhere: SegmindEmulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # The worker has a key in its environment; the triggerer names their own server
    # and leaves the key out, hoping the worker's key goes there.
    monkeypatch.setenv("SEGMIND_API_KEY", KEY)
    flow, parameters = FLOWS[flow_name]
    storage_id = ObjectStorage(base_url=str(tmp_path)).save(f"inline-test-{uuid4().hex[:8]}")
    state = runs.run(
        flow,
        {
            **parameters,
            "credentials": {"base_url": elsewhere.url},
            "storage": {"$ref": {"block_document_id": str(storage_id)}},
        },
    )

    error = _failure(state)
    assert str(error).startswith("credentials: a deployment's run takes saved, named blocks")
    assert "Nothing was run" in str(error)
    assert elsewhere.stats()["requests"] == 0
    assert not list(tmp_path.iterdir())


def test_inline_storage_is_refused_before_anything_is_read_or_written(
    runs: DeploymentRuns, tmp_path: Path
) -> None:
    state = runs.run(edit_image, {**ONE_IMAGE, "storage": {"base_url": str(tmp_path)}})

    error = _failure(state)
    assert str(error).startswith("storage: a deployment's run takes saved, named blocks")
    assert not list(tmp_path.iterdir())


def test_both_inline_are_named_together(runs: DeploymentRuns, tmp_path: Path) -> None:
    state = runs.run(
        edit_image,
        {**ONE_IMAGE, "storage": {"base_url": str(tmp_path)}, "credentials": {"queue": True}},
    )

    assert str(_failure(state)).startswith("credentials, storage: a deployment's run takes")


def test_saved_blocks_picked_for_a_deployment_run_are_used(
    runs: DeploymentRuns, start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = start_emulator(api_key=KEY)
    suffix = uuid4().hex[:8]
    credentials_id = SegmindCredentials(api_key=KEY, base_url=emulator.url).save(
        f"inline-test-credentials-{suffix}"
    )
    storage_id = ObjectStorage(base_url=str(tmp_path)).save(f"inline-test-storage-{suffix}")

    state = runs.run(
        edit_image,
        {
            **ONE_IMAGE,
            "credentials": {"$ref": {"block_document_id": str(credentials_id)}},
            "storage": {"$ref": {"block_document_id": str(storage_id)}},
        },
    )

    assert state.is_completed(), state
    assert emulator.stats()["billed"] == 1
    stored = sorted(path.suffix for path in tmp_path.glob("edit-image/*/*") if path.is_file())
    assert stored == [".json", ".png"]


def test_unsaved_blocks_outside_a_deployment_are_the_callers_own(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = start_emulator(api_key=KEY)
    state = edit_image(
        **{**ONE_IMAGE, "seed": 7805},
        credentials=SegmindCredentials(api_key=KEY, base_url=emulator.url),
        storage=ObjectStorage(base_url=str(tmp_path)),
        return_state=True,
    )

    assert state.is_completed(), state
    assert emulator.stats()["billed"] == 1


def test_a_key_typed_inline_is_masked_in_the_runs_stored_parameters(
    runs: DeploymentRuns, elsewhere: SegmindEmulator
) -> None:
    canary = "sk-INLINE-CANARY-0123456789"
    secret = "aws-INLINE-SECRET-CANARY-9876"  # noqa: S105 - a canary
    state = runs.run(
        edit_image,
        {
            **ONE_IMAGE,
            "credentials": {"api_key": canary, "base_url": elsewhere.url},
            "storage": {"base_url": "s3://outputs/x", "aws_secret_access_key": secret},
        },
    )

    _failure(state)
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    stored = runs.client.read_flow_run(flow_run_id).parameters
    text = json.dumps(stored)
    assert canary not in text
    assert secret not in text
    assert stored["credentials"]["api_key"] == "**********"
    assert stored["credentials"]["base_url"] == elsewhere.url
    assert stored["storage"]["aws_secret_access_key"] == "**********"  # noqa: S105
    assert stored["prompt"] == ONE_IMAGE["prompt"]
    assert elsewhere.stats()["requests"] == 0


def test_an_anonymous_block_saved_through_the_api_counts_as_inline(
    runs: DeploymentRuns, tmp_path: Path
) -> None:
    # Anyone who may trigger a run may also save a block document without a name,
    # then pass a reference to it.
    private = tmp_path / "private"
    private.mkdir()
    block_id = ObjectStorage(base_url=str(private))._save_sync(is_anonymous=True)

    state = runs.run(
        edit_image, {**ONE_IMAGE, "storage": {"$ref": {"block_document_id": str(block_id)}}}
    )

    assert str(_failure(state)).startswith("storage: a deployment's run takes saved, named")
    assert not list(private.iterdir())
