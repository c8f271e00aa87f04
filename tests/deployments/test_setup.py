"""python -m deployments.setup against Prefect's test server: creates, then only updates."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from prefect import Flow, get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import ObjectNotFound
from prefect.utilities.callables import parameter_schema

from blocks import ObjectStorage, SegmindCredentials
from deployments.definitions import DEPLOYMENTS, DeploymentDefinition
from deployments.setup import (
    CREDENTIALS_BLOCK,
    STORAGE_BLOCK,
    SetupSettings,
    main,
    point_deployments_at_blocks,
    set_up,
)
from deployments.work_pool_template import locked_base_job_template
from flows.edit_image import edit_image
from segmind_core.client import DEFAULT_BASE_URL
from tests.conftest import EmulatorFactory
from tests.support import API_KEY, emulator_stats, image_uri

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_setup_creates_everything_then_changes_only_what_differs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEGMIND_API_KEY", API_KEY)
    # Names of their own: the session's other tests use the harness's ``segmind`` limit.
    pool, limit_name = "segmind-process-setup-test", "segmind-setup-test"
    settings = SetupSettings(
        concurrency=3,
        storage_url="s3://outputs/nightly",
        storage_endpoint_url="http://127.0.0.1:9",
        segmind_base_url="http://127.0.0.1:8",
        work_pool=pool,
        concurrency_limit=limit_name,
    )

    first = set_up(settings)
    second = set_up(settings)
    main(
        [
            "--concurrency",
            "5",
            "--rate-per-minute",
            "30",
            "--work-pool",
            pool,
            "--limit-name",
            limit_name,
        ]
    )

    assert f"work pool {pool}: created (process, locked job template)" in first
    assert f"work pool {pool}: already there (locked job template)" in second
    assert any(line.startswith(f"concurrency limit {limit_name}:") for line in first)
    assert f"concurrency limit {limit_name}: already 3 slots" in second
    printed = capsys.readouterr().out
    assert f"concurrency limit {limit_name}: set to 5 slots" in printed
    assert f"rate limit {limit_name}-rate: created with 30 a minute" in printed
    assert API_KEY not in "\n".join([*first, *second, printed])
    with get_client(sync_client=True) as client:
        work_pool = client.read_work_pool(pool)
        limit = client.read_global_concurrency_limit_by_name(limit_name)
        rate = client.read_global_concurrency_limit_by_name(f"{limit_name}-rate")
        pools = [p.name for p in client.read_work_pools()]
    assert work_pool.type == "process"
    assert work_pool.base_job_template == locked_base_job_template()
    assert pools.count(pool) == 1
    assert limit.limit == 5
    # The in-flight limit never decays (a decayed slot would free a call still running);
    # the rate is a limit of its own: one token, renewed 30 times a minute.
    assert limit.slot_decay_per_second == 0
    assert (rate.limit, rate.slot_decay_per_second) == (1, pytest.approx(0.5))
    # The blocks load back; the key is stored as a secret, the S3 secrets are not stored.
    credentials = SegmindCredentials.load(CREDENTIALS_BLOCK)
    assert credentials.api_key is not None
    assert credentials.api_key.get_secret_value() == API_KEY
    assert credentials.concurrency_limit == limit_name
    assert credentials.rate_limit == f"{limit_name}-rate"
    assert API_KEY not in repr(credentials)
    storage = ObjectStorage.load(STORAGE_BLOCK)
    assert storage.base_url == "outputs"  # the last run (main) asked for the default
    assert storage.aws_secret_access_key is None


def test_setup_refuses_a_concurrency_below_one() -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--concurrency", "0", "--limit-name", "never-created"])
    assert refused.value.code == 2


def test_setup_refuses_an_empty_segmind_server(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--segmind-base-url", " ", "--limit-name", "never-created"])
    assert refused.value.code == 2
    assert "--segmind-base-url must name a server" in capsys.readouterr().err


# --- --point-deployments-at-blocks ---------------------------------------------------
# Names of their own again; every deployment a test creates is deleted after it, so
# the project's entrypoints have no deployment outside these tests.
POINT_POOL, POINT_LIMIT = "segmind-process-point-test", "segmind-point-test"
FOREIGN_ENTRYPOINT = "elsewhere/edit_image.py:edit_image"
EDIT_IMAGE = next(d for d in DEPLOYMENTS if d.entrypoint == "flows/edit_image.py:edit_image")


class Deployments:
    """Creates deployments (and flow runs) on the test server; deletes them afterwards."""

    def __init__(self, client: SyncPrefectClient) -> None:
        self.client = client
        self.suffix = uuid4().hex[:8]
        self.deployments: list[UUID] = []
        self.flow_runs: list[UUID] = []

    def create(
        self,
        flow: Flow[..., Any],
        entrypoint: str,
        name: str,
        parameters: dict[str, Any],
        schema: dict[str, Any] | None = None,
    ) -> UUID:
        """A deployment as ``prefect deploy`` makes it: the flow's schema, enforced.

        Block-valued defaults go in at creation: POST /deployments/ checks defaults
        with every nested ``required`` stripped from the schema, which once turned
        a ``not: {required: [$ref]}`` in our blocks' schemas into ``not: {}`` and
        refused any block default (422). ``propertyNames`` (inside ``allOf``) survives that.
        """
        flow_id = self.client.create_flow_from_name(f"{flow.name}-{self.suffix}")
        deployment_id = self.client.create_deployment(
            flow_id=flow_id,
            name=f"{name}-{self.suffix}",
            entrypoint=entrypoint,
            parameters=copy.deepcopy(parameters),
            parameter_openapi_schema=(
                schema if schema is not None else parameter_schema(flow.fn).model_dump_for_openapi()
            ),
            enforce_parameter_schema=True,
        )
        self.deployments.append(deployment_id)
        return deployment_id

    def parameters(self, deployment_id: UUID) -> dict[str, Any]:
        parameters: dict[str, Any] = self.client.read_deployment(deployment_id).parameters
        return parameters

    def name(self, deployment_id: UUID) -> str:
        return self.client.read_deployment(deployment_id).name

    def delete_all(self) -> None:
        for flow_run_id in self.flow_runs:
            with contextlib.suppress(ObjectNotFound):
                self.client.delete_flow_run(flow_run_id)
        for deployment_id in self.deployments:
            with contextlib.suppress(ObjectNotFound):
                self.client.delete_deployment(deployment_id)


@pytest.fixture
def deployments() -> Iterator[Deployments]:
    with get_client(sync_client=True) as client:
        created = Deployments(client)
        try:
            yield created
        finally:
            created.delete_all()


def point_settings() -> SetupSettings:
    return SetupSettings(
        storage_url="memory://point-test",
        work_pool=POINT_POOL,
        concurrency_limit=POINT_LIMIT,
        point_deployments_at_blocks=True,
    )


def block_references(client: SyncPrefectClient) -> dict[str, dict[str, Any]]:
    """``storage`` and ``credentials`` as references to the saved blocks."""
    storage = client.read_block_document_by_name(
        STORAGE_BLOCK, block_type_slug=ObjectStorage.get_block_type_slug()
    )
    credentials = client.read_block_document_by_name(
        CREDENTIALS_BLOCK, block_type_slug=SegmindCredentials.get_block_type_slug()
    )
    return {
        "storage": {"$ref": {"block_document_id": str(storage.id)}},
        "credentials": {"$ref": {"block_document_id": str(credentials.id)}},
    }


def test_point_deployments_at_blocks_references_the_saved_blocks_and_keeps_the_rest(
    deployments: Deployments,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SEGMIND_API_KEY", API_KEY)
    defaults: dict[UUID, dict[str, Any]] = {}
    ours: dict[UUID, DeploymentDefinition] = {}
    for definition in DEPLOYMENTS:
        parameters = dict(definition.parameters)
        if definition is EDIT_IMAGE:
            # A default set by hand before: replaced; the other defaults are kept.
            parameters.update(storage={"base_url": "memory://old"}, seed=7)
        deployment_id = deployments.create(
            definition.load_flow(), definition.entrypoint, definition.name, parameters
        )
        defaults[deployment_id] = parameters
        ours[deployment_id] = definition
    foreign_parameters = {"prompt": "not ours", "storage": {"base_url": "memory://foreign"}}
    foreign = deployments.create(edit_image, FOREIGN_ENTRYPOINT, "foreign", foreign_parameters)

    # Without the flag, the deployments are left alone.
    without = set_up(
        SetupSettings(
            storage_url="memory://point-test", work_pool=POINT_POOL, concurrency_limit=POINT_LIMIT
        )
    )
    assert not any(line.startswith("deployment ") for line in without)
    for deployment_id, parameters in defaults.items():
        assert deployments.parameters(deployment_id) == parameters

    first = set_up(point_settings())
    main(["--point-deployments-at-blocks", "--work-pool", POINT_POOL, "--limit-name", POINT_LIMIT])
    second = capsys.readouterr().out.splitlines()

    references = block_references(deployments.client)
    for deployment_id, definition in ours.items():
        expected = {**defaults[deployment_id], **references}
        assert deployments.parameters(deployment_id) == expected
        name = deployments.name(deployment_id)
        prefix = f"deployment {name} of {definition.entrypoint}:"
        assert f"{prefix} uses the blocks" in first
        assert f"{prefix} already uses the blocks" in second
    edited = next(i for i, d in ours.items() if d is EDIT_IMAGE)
    assert deployments.parameters(edited)["seed"] == 7
    assert deployments.parameters(edited)["storage"] != {"base_url": "memory://old"}
    # Another project's deployment: untouched and not reported.
    assert deployments.parameters(foreign) == foreign_parameters
    foreign_name = deployments.name(foreign)
    assert not any(foreign_name in line for line in [*first, *second])
    # Re-saving the blocks kept their ids, so the references still hold.
    assert block_references(deployments.client) == references
    # The key is saved in the block, and only there: no deployment's parameters carry it.
    credentials = SegmindCredentials.load(CREDENTIALS_BLOCK)
    assert credentials.api_key is not None
    assert credentials.api_key.get_secret_value() == API_KEY
    for deployment in deployments.client.read_deployments():
        assert API_KEY not in json.dumps(deployment.parameters)
    assert API_KEY not in "\n".join([*first, *second])


def test_point_deployments_at_blocks_says_so_when_no_deployment_is_ours(
    deployments: Deployments, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGMIND_API_KEY", API_KEY)
    foreign_parameters = {"prompt": "not ours"}
    foreign = deployments.create(edit_image, FOREIGN_ENTRYPOINT, "lonely", foreign_parameters)
    ours = {d.entrypoint for d in DEPLOYMENTS}
    existing = deployments.client.read_deployments()
    assert not [d.name for d in existing if d.entrypoint in ours], "a deployment was left over"

    done = set_up(point_settings())

    assert done[-1] == "no deployment of this project yet: run `prefect deploy --all` first"
    assert not any(line.startswith("deployment ") for line in done)
    assert deployments.parameters(foreign) == foreign_parameters
    assert point_deployments_at_blocks(deployments.client) == [done[-1]]


def test_a_run_of_an_enforcing_deployment_accepts_saved_block_references(
    deployments: Deployments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server-side check that answered 409 when a saved block was picked in the UI."""
    monkeypatch.setenv("SEGMIND_API_KEY", API_KEY)
    deployment_id = deployments.create(
        edit_image, EDIT_IMAGE.entrypoint, EDIT_IMAGE.name, EDIT_IMAGE.parameters
    )
    set_up(point_settings())
    client = deployments.client
    references = block_references(client)
    assert client.read_deployment(deployment_id).enforce_parameter_schema is True

    # The run form with a saved block picked for storage, and a quick run with the defaults.
    picked = client.create_flow_run_from_deployment(
        deployment_id, parameters={"prompt": "a watercolour", "storage": references["storage"]}
    )
    deployments.flow_runs.append(picked.id)
    quick = client.create_flow_run_from_deployment(deployment_id)
    deployments.flow_runs.append(quick.id)

    assert picked.parameters["storage"] == references["storage"]
    assert picked.parameters["credentials"] == references["credentials"]
    assert picked.parameters["prompt"] == "a watercolour"
    assert quick.parameters == {**EDIT_IMAGE.parameters, **references}
    assert picked.state is not None
    assert picked.state.is_scheduled()
    # The schema is enforced: a wrong parameter is refused...
    with pytest.raises(httpx.HTTPStatusError) as refused:
        client.create_flow_run_from_deployment(deployment_id, parameters={"prompt": 5})
    assert refused.value.response.status_code == 409
    # ...and without our blocks' exclusion, the same pick is refused as ambiguous.
    schema = parameter_schema(edit_image.fn).model_dump_for_openapi()
    for definition in ("ObjectStorage", "SegmindCredentials"):
        del schema["definitions"][definition]["allOf"]
    legacy = deployments.create(
        edit_image, "legacy/edit_image.py:edit_image", "legacy", {"prompt": "x"}, schema=schema
    )
    with pytest.raises(httpx.HTTPStatusError) as ambiguous:
        client.create_flow_run_from_deployment(
            legacy, parameters={"storage": references["storage"]}
        )
    assert ambiguous.value.response.status_code == 409
    assert "valid under each of" in ambiguous.value.response.text


def test_pointing_changes_only_the_deployments_never_the_saved_blocks(
    deployments: Deployments, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGMIND_API_KEY", API_KEY)
    set_up(
        SetupSettings(
            storage_url="s3://kept/prefix",
            work_pool=POINT_POOL,
            concurrency_limit=POINT_LIMIT,
            rate_per_minute=30,
        )
    )
    monkeypatch.delenv("SEGMIND_API_KEY")  # a shell without the key, later

    said = set_up(point_settings())

    assert not any(line.startswith(("block", "work pool", "concurrency")) for line in said)
    credentials = SegmindCredentials.load(CREDENTIALS_BLOCK)
    assert credentials.api_key is not None
    assert credentials.api_key.get_secret_value() == API_KEY
    assert credentials.rate_limit == f"{POINT_LIMIT}-rate"
    assert ObjectStorage.load(STORAGE_BLOCK).base_url == "s3://kept/prefix"


def test_reset_held_slots_frees_slots_a_restart_left_counted() -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    name = f"reset-{uuid4().hex[:8]}"
    settings = SetupSettings(
        storage_url="memory://reset-test", work_pool=POINT_POOL, concurrency_limit=name
    )
    set_up(settings)
    with get_client(sync_client=True) as client:
        # What a server restart leaves: slots counted, their in-memory leases gone.
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=3))
        left = client.read_global_concurrency_limit_by_name(name).active_slots

    said = set_up(SetupSettings(**{**settings.__dict__, "reset_held_slots": True}))

    with get_client(sync_client=True) as client:
        after = client.read_global_concurrency_limit_by_name(name).active_slots
    assert (left, after) == (3, 0)
    assert f"concurrency limit {name}: no slot held" in said


def test_the_saved_credentials_name_their_server_and_a_workers_environment_cannot_move_it(
    start_emulator: EmulatorFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ours, elsewhere = start_emulator(), start_emulator(api_key="another-servers-key")
    monkeypatch.setenv("SEGMIND_API_KEY", API_KEY)
    monkeypatch.setenv("SEGMIND_BASE_URL", ours.url)  # the shell setup runs in
    common = ["--work-pool", POINT_POOL, "--limit-name", POINT_LIMIT]
    main([*common, "--storage-url", "memory://server-test"])
    said = capsys.readouterr().out
    # A worker whose environment names another server, as a run's job variables could.
    monkeypatch.setenv("SEGMIND_BASE_URL", elsewhere.url)

    credentials = SegmindCredentials.load(CREDENTIALS_BLOCK)
    with credentials.get_client() as client:
        client.generate("p-image-edit", {"prompt": "blue", "image_urls": [image_uri()]})

    assert credentials.base_url == ours.url
    assert f"block {CREDENTIALS_BLOCK}: saved (server {ours.url}, with the key" in said
    assert emulator_stats(ours.url)["billed"] == 1
    assert emulator_stats(elsewhere.url)["requests"] == 0
    # Without a server named anywhere, the block names Segmind's.
    monkeypatch.delenv("SEGMIND_BASE_URL")
    main([*common, "--storage-url", "memory://server-test"])
    assert SegmindCredentials.load(CREDENTIALS_BLOCK).base_url == DEFAULT_BASE_URL
