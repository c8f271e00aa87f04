"""prefect.yaml and deployments/definitions.py agree, and every entrypoint is a real flow."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import Flow
from prefect.utilities.schema_tools.validation import validate

from deployments.definitions import (
    DEPLOYMENTS,
    NIGHTLY_CRON,
    NIGHTLY_TIMEZONE,
    WORK_POOL,
    DeploymentDefinition,
)
from deployments.serve import runner_deployment
from flows.common import SEED_MAX
from segmind_core.contract import FluxAspectRatio

ROOT = Path(__file__).resolve().parents[2]


def prefect_yaml() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return loaded


def ids(definition: DeploymentDefinition) -> str:
    return definition.entrypoint.split(":")[1]


def test_prefect_yaml_lists_exactly_the_definitions_in_order() -> None:
    entries = prefect_yaml()["deployments"]

    assert [(e["name"], e["entrypoint"]) for e in entries] == [
        (d.name, d.entrypoint) for d in DEPLOYMENTS
    ]
    for entry, definition in zip(entries, DEPLOYMENTS, strict=True):
        assert " ".join(entry["description"].split()) == definition.description
        assert entry["parameters"] == definition.parameters
        assert tuple(entry["tags"]) == definition.tags
        assert entry["enforce_parameter_schema"] is True
        assert entry["work_pool"]["name"] == WORK_POOL
        schedules = entry.get("schedules") or []
        if definition.cron is None:
            assert schedules == []
        else:
            assert schedules == [
                {"cron": definition.cron, "timezone": definition.timezone, "active": True}
            ]


def test_only_the_batch_runs_on_a_nightly_schedule_with_a_time_zone() -> None:
    scheduled = [d for d in DEPLOYMENTS if d.cron is not None]

    assert [d.entrypoint for d in scheduled] == ["flows/batch.py:batch"]
    assert scheduled[0].cron == NIGHTLY_CRON == "0 2 * * *"
    assert scheduled[0].timezone == NIGHTLY_TIMEZONE


def test_every_flow_module_has_one_deployment_and_descriptions_are_unique() -> None:
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "flows").glob("*.py")
        if path.name not in ("__init__.py", "common.py")
    }
    deployed = [d.entrypoint.split(":")[0] for d in DEPLOYMENTS]

    assert sorted(deployed) == sorted(modules)
    assert len({d.description for d in DEPLOYMENTS}) == len(DEPLOYMENTS)
    # A deployment is known by flow name and deployment name: those must not repeat.
    names = [(d.load_flow().name, d.name) for d in DEPLOYMENTS]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("definition", DEPLOYMENTS, ids=ids)
def test_each_entrypoint_imports_a_flow_and_its_defaults_fit_its_form(
    definition: DeploymentDefinition,
) -> None:
    flow = definition.load_flow()
    assert isinstance(flow, Flow)
    path = ROOT / definition.entrypoint.split(":")[0]
    assert path.is_file()

    deployment = runner_deployment(definition)

    schema = deployment._parameter_openapi_schema.model_dump()
    # The defaults must pass the form's own checks (required fields are filled at run time).
    errors = validate(
        copy.deepcopy(definition.parameters), schema, ignore_required=True, raise_on_error=False
    )
    assert errors == []
    # ...and a default out of range would not.
    if "max_concurrency" in definition.parameters:
        broken = {**definition.parameters, "max_concurrency": 0}
        assert validate(broken, schema, ignore_required=True) != []
    assert deployment.description == definition.description
    assert deployment.parameters == definition.parameters
    assert deployment.enforce_parameter_schema is True


def _local_paths(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str) and v.startswith("examples/")]


@pytest.mark.parametrize("definition", DEPLOYMENTS, ids=ids)
def test_every_deployment_runs_from_its_defaults_alone(definition: DeploymentDefinition) -> None:
    """Quick run sends the defaults: they fill every required parameter, with shipped files."""
    schema = runner_deployment(definition)._parameter_openapi_schema.model_dump()

    missing = set(schema.get("required", [])) - set(definition.parameters)
    assert missing == set(), f"{definition.entrypoint}: Quick run would lack {missing}"
    assert validate(copy.deepcopy(definition.parameters), schema, raise_on_error=False) == []
    shipped = [p for v in definition.parameters.values() for p in _local_paths(v)]
    assert shipped, f"{definition.entrypoint} names no shipped example input"
    for path in shipped:
        assert (ROOT / path).is_file(), path


@pytest.mark.parametrize("definition", DEPLOYMENTS, ids=ids)
def test_image_fields_say_what_they_accept_with_an_example(
    definition: DeploymentDefinition,
) -> None:
    properties = runner_deployment(definition)._parameter_openapi_schema.model_dump()["properties"]
    image_fields = [name for name in properties if "image" in name]
    for name in image_fields:
        description = " ".join(properties[name]["description"].split())
        assert "JPEG, PNG, GIF or WEBP" in description or "the same kinds" in description, name
        assert "e.g." in description, name
    assert image_fields or definition.entrypoint.endswith(":batch")


def _seed_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    found = [part for name, part in schema["properties"].items() if name == "seed"]
    for definition in schema.get("definitions", {}).values():
        found += [p for n, p in definition.get("properties", {}).items() if n == "seed"]
    return found


@pytest.mark.parametrize("definition", DEPLOYMENTS, ids=ids)
def test_every_seed_field_is_bounded_where_the_form_checks_it_and_says_its_range(
    definition: DeploymentDefinition,
) -> None:
    """The classic UI's form drops a property's own bounds but keeps those inside anyOf."""
    schema = runner_deployment(definition)._parameter_openapi_schema.model_dump()

    for seed in _seed_fields(schema):
        (integer,) = [branch for branch in seed["anyOf"] if branch.get("type") == "integer"]
        assert (integer["minimum"], integer["maximum"]) == (0, SEED_MAX)
        assert seed["description"].startswith(f"0 to {SEED_MAX};")


def test_the_served_batch_has_its_cron_time_zone_and_enums() -> None:
    (batch,) = [d for d in DEPLOYMENTS if d.cron is not None]

    deployment = runner_deployment(batch)

    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == NIGHTLY_CRON
    assert schedule.schedule.timezone == NIGHTLY_TIMEZONE
    on_demand = runner_deployment(DEPLOYMENTS[1])
    assert not on_demand.schedules
    definitions = deployment._parameter_openapi_schema.model_dump()["definitions"]
    assert definitions["FluxAspectRatio"]["enum"] == [ratio.value for ratio in FluxAspectRatio]
