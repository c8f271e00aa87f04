"""A run's job variables cannot change the worker's environment, command or folder.

Against Prefect's test server (a real server process): the pool that
``deployments.setup`` makes or converges, each override tried through the API
(refused with 422 where the server checks job variables, ``prefect deploy`` of a
``prefect.yaml`` that sets ``env`` included), and a real
``prefect worker start`` process running flow runs whose overrides skipped the
server's checks (``POST /flow_runs/`` checks none; ``PATCH /deployments/``
checks none without a work pool name): the worker ignores them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.workers.process import ProcessWorker

from deployments.setup import SetupSettings, set_up
from deployments.work_pool_template import (
    REFUSED_VARIABLES,
    SAFE_VARIABLES,
    locked_base_job_template,
)

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(300)]

LIMIT = "segmind-pool-template-test"  # the session's other tests use ``segmind``
WORKER_SERVER = "http://127.0.0.1:7"  # the worker's own SEGMIND_BASE_URL
RUN_SERVER = "http://127.0.0.1:9"  # where a run would send the key
OVERRIDES: dict[str, dict[str, Any]] = {
    "env": {"env": {"SEGMIND_BASE_URL": RUN_SERVER, "SEGMIND_INPUT_ROOTS": "/"}},
    "env.NAME": {"env.SEGMIND_BASE_URL": RUN_SERVER},
    "command": {"command": "touch /tmp/never-made-by-a-run"},
    "working_dir": {"working_dir": "/"},
}
"""Each dangerous override, as a run's job variables (``env.NAME`` is Prefect's dotted form)."""


def settings(pool: str) -> SetupSettings:
    return SetupSettings(
        storage_url="memory://pool-template-test", work_pool=pool, concurrency_limit=LIMIT
    )


@pytest.fixture
def client() -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as client:
        yield client


@pytest.fixture
def pool(client: SyncPrefectClient) -> Iterator[str]:
    """A work pool name of this test's own; the pool and its deployments go afterwards."""
    name = f"segmind-process-{uuid4().hex[:8]}"
    yield name
    for deployment in client.read_deployments():
        if deployment.work_pool_name == name:
            client.delete_deployment(deployment.id)
    with contextlib.suppress(ObjectNotFound):
        client.delete_work_pool(name)


def deployment_in(
    client: SyncPrefectClient, pool: str, entrypoint: str = "probe.py:probe", **fields: Any
) -> UUID:
    """A deployment of a stand-in flow in ``pool``, as ``prefect deploy`` makes one."""
    flow_id = client.create_flow_from_name(f"probe-{uuid4().hex[:8]}")
    return client.create_deployment(
        flow_id=flow_id,
        name="probe",
        entrypoint=entrypoint,
        work_pool_name=pool,
        work_queue_name="default",
        **fields,
    )


def api() -> httpx.Client:
    """A plain HTTP client on the test server's REST API, as the UI or a script uses it."""
    return httpx.Client(base_url=str(PREFECT_API_URL.value()), timeout=30.0)


# --- The pool setup makes, or converges ------------------------------------------------


def test_setup_makes_the_pool_with_no_variable_for_env_command_or_folder(
    client: SyncPrefectClient, pool: str
) -> None:
    said = set_up(settings(pool))

    template = client.read_work_pool(pool).base_job_template
    assert f"work pool {pool}: created (process, locked job template)" in said
    assert template == locked_base_job_template()
    assert set(template["variables"]["properties"]) == set(SAFE_VARIABLES)
    assert template["variables"]["additionalProperties"] is False
    assert not set(REFUSED_VARIABLES) & set(template["job_configuration"])


def test_setup_converges_a_pool_made_from_the_default_template(
    client: SyncPrefectClient, pool: str
) -> None:
    default = ProcessWorker.get_default_base_job_template()
    client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=default))
    # A deployment an older prefect.yaml gave job variables the default template accepted.
    variables = {"env": {"SEGMIND_INPUT_ROOTS": "/"}, "command": "true", "stream_output": False}
    deployment_id = deployment_in(client, pool, job_variables=variables)
    name = client.read_deployment(deployment_id).name

    first = set_up(settings(pool))
    second = set_up(settings(pool))

    assert client.read_work_pool(pool).base_job_template == locked_base_job_template()
    assert (
        f"work pool {pool}: job template locked (a run's job variables can no longer set "
        "env, command, working_dir)"
    ) in first
    assert (
        f"deployment {name} of probe.py:probe: job variables command, env dropped "
        "(the work pool refuses them)"
    ) in first
    assert f"work pool {pool}: already there (locked job template)" in second
    assert not any(line.startswith("deployment ") for line in second)
    assert client.read_deployment(deployment_id).job_variables == {"stream_output": False}
    # Its runs are accepted again (the server checks the deployment's variables with each run's).
    run = client.create_flow_run_from_deployment(deployment_id)
    assert run.state is not None
    assert run.state.is_scheduled()


# --- The server refuses the overrides where it checks job variables ----------------------


@pytest.mark.parametrize("override", OVERRIDES.values(), ids=OVERRIDES.keys())
def test_the_server_refuses_each_override_of_a_run_or_a_deployment(
    client: SyncPrefectClient, pool: str, override: dict[str, Any]
) -> None:
    set_up(settings(pool))
    deployment_id = deployment_in(client, pool)

    with api() as rest:
        # The UI's custom run and create_flow_run_from_deployment(job_variables=...).
        run = rest.post(
            f"/deployments/{deployment_id}/create_flow_run", json={"job_variables": override}
        )
        # A scheduled run's job variables edited afterwards.
        scheduled = rest.post(f"/deployments/{deployment_id}/create_flow_run", json={})
        edit = rest.patch(f"/flow_runs/{scheduled.json()['id']}", json={"job_variables": override})
        # A deployment carrying them itself (prefect.yaml's job_variables).
        flow_id = client.create_flow_from_name(f"probe-{uuid4().hex[:8]}")
        deployment = rest.post(
            "/deployments/",
            json={
                "flow_id": str(flow_id),
                "name": "carries-job-variables",
                "entrypoint": "probe.py:probe",
                "work_pool_name": pool,
                "job_variables": override,
            },
        )
        # What stays open is harmless, and accepted.
        harmless = rest.post(
            f"/deployments/{deployment_id}/create_flow_run",
            json={"job_variables": {"stream_output": False, "name": "a run's name"}},
        )

    assert (run.status_code, edit.status_code, deployment.status_code) == (422, 422, 422)
    assert "Additional properties are not allowed" in run.text
    assert scheduled.status_code == harmless.status_code == 201


# --- A worker ignores the overrides that skipped the server's checks --------------------

PROBE = """
import json, os, sys
from prefect import flow

@flow
def probe(out: str) -> None:
    with open(out, "w") as seen:
        json.dump(
            {
                "SEGMIND_BASE_URL": os.environ.get("SEGMIND_BASE_URL"),
                "SEGMIND_INPUT_ROOTS": os.environ.get("SEGMIND_INPUT_ROOTS"),
                "cwd": os.getcwd(),
            },
            seen,
        )
"""


def scheduled_run(
    rest: httpx.Client, deployment_id: UUID, pool: str, out: Path, job_variables: dict[str, Any]
) -> str:
    """A flow run made through ``POST /flow_runs/``, which checks no job variable."""
    deployment = rest.get(f"/deployments/{deployment_id}").json()
    response = rest.post(
        "/flow_runs/",
        json={
            "flow_id": deployment["flow_id"],
            "deployment_id": str(deployment_id),
            "work_pool_name": pool,
            "work_queue_name": "default",
            "parameters": {"out": str(out)},
            "job_variables": job_variables,
            "state": {"type": "SCHEDULED"},
        },
    )
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


def test_a_worker_ignores_overrides_that_skipped_the_servers_checks(
    client: SyncPrefectClient, pool: str, tmp_path: Path
) -> None:
    set_up(settings(pool))
    code, elsewhere, outputs = tmp_path / "code", tmp_path / "elsewhere", tmp_path / "seen"
    for folder in (code, elsewhere, outputs):
        folder.mkdir()
    (code / "probe.py").write_text(textwrap.dedent(PROBE))
    marker = tmp_path / "the-run-command-ran"
    overrides = {
        "env": {"env": {"SEGMIND_BASE_URL": RUN_SERVER, "SEGMIND_INPUT_ROOTS": "/"}},
        "env.NAME": {"env.SEGMIND_BASE_URL": RUN_SERVER},
        "command": {"command": f"touch {marker}"},
        "working_dir": {"working_dir": str(elsewhere)},
    }
    deployment_id = deployment_in(client, pool, entrypoint=f"{code}/probe.py:probe")
    # A deployment whose own job variables were set where the server checks none.
    carrying = deployment_in(client, pool, entrypoint=f"{code}/probe.py:probe")
    with api() as rest:
        patched = rest.patch(
            f"/deployments/{carrying}",
            json={"job_variables": {"env": {"SEGMIND_BASE_URL": RUN_SERVER}}},
        )
        assert patched.status_code == 204, patched.text
        runs = {
            name: scheduled_run(rest, deployment_id, pool, outputs / f"{name}.json", variables)
            for name, variables in overrides.items()
        }
        runs["deployment env"] = scheduled_run(
            rest, carrying, pool, outputs / "deployment env.json", {}
        )

    worker = run_worker_once(pool)

    assert worker.returncode == 0, worker.stdout + worker.stderr
    seen = {
        name: what_the_run_saw(client, run_id, outputs / f"{name}.json")
        for name, run_id in runs.items()
    }
    honest = {
        "state": "COMPLETED",
        "SEGMIND_BASE_URL": WORKER_SERVER,
        "SEGMIND_INPUT_ROOTS": os.environ["SEGMIND_INPUT_ROOTS"],
        "in the folder the run named": False,
    }
    assert seen == {name: honest for name in runs}
    assert not marker.exists()


def what_the_run_saw(client: SyncPrefectClient, run_id: str, out: Path) -> dict[str, Any]:
    """The run's final state and what its probe wrote (nothing when the probe never ran)."""
    state = client.read_flow_run(UUID(run_id)).state_type
    probe = json.loads(out.read_text()) if out.exists() else {}
    return {
        "state": state.value if state else None,
        "SEGMIND_BASE_URL": probe.get("SEGMIND_BASE_URL"),
        "SEGMIND_INPUT_ROOTS": probe.get("SEGMIND_INPUT_ROOTS"),
        "in the folder the run named": (
            Path(probe["cwd"]).resolve() == (out.parent.parent / "elsewhere").resolve()
            if probe
            else None
        ),
    }


def run_worker_once(pool: str) -> subprocess.CompletedProcess[str]:
    """``prefect worker start --run-once``: one poll, then it waits for the runs it started."""
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "SEGMIND_BASE_URL": WORKER_SERVER,
    }
    prefect = str(Path(sys.executable).parent / "prefect")
    return subprocess.run(
        [prefect, "worker", "start", "--pool", pool, "--run-once", "--limit", "10"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


def test_prefect_deploy_refuses_a_prefect_yaml_that_sets_a_runs_environment(
    pool: str, tmp_path: Path
) -> None:
    set_up(settings(pool))
    (tmp_path / "probe.py").write_text(textwrap.dedent(PROBE))
    (tmp_path / "prefect.yaml").write_text(
        textwrap.dedent(
            f"""
            name: reintroduces-env
            deployments:
              - name: probe
                entrypoint: probe.py:probe
                work_pool:
                  name: {pool}
                  job_variables:
                    env:
                      SEGMIND_BASE_URL: {RUN_SERVER}
            """
        )
    )
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    prefect = str(Path(sys.executable).parent / "prefect")

    deployed = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )

    assert deployed.returncode != 0, deployed.stdout
    assert "Additional properties are not allowed ('env' was unexpected)" in (
        deployed.stdout + deployed.stderr
    )
    with get_client(sync_client=True) as client:
        assert not [d for d in client.read_deployments() if d.work_pool_name == pool]
