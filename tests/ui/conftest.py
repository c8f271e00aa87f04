"""The local stack, started with the README's command, and a browser on its UI."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from playwright.sync_api import Browser, Page

from deployments.stack import S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, StackState
from tests.conftest import REPOSITORY
from tests.support import wait_until
from tests.ui.browser import Steps, launch_chromium

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
EMULATOR_LATENCY_S = 0.3


def _stack(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``bash scripts/stack ...`` as the README has a person type it."""
    return subprocess.run(
        ["bash", "scripts/stack", "--dir", str(directory), *args],  # noqa: S607
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="session")
def stack() -> Iterator[StackState]:
    """The whole stack with its UI, on free ports and PostgreSQL, stopped at the end.

    PostgreSQL, not SQLite: on SQLite, Prefect's server answered a Resume from the
    UI with "database is locked" and a V2 form's run with 503 when a worker's poll
    wrote at the same moment (a transaction that starts as a reader cannot become
    a writer there). The folder is one the ``postgres`` user can enter (pytest's
    are root's only); the stack's logs stay in it, its database does not.
    """
    directory = Path(tempfile.mkdtemp(prefix="segmind-ui-stack-"))
    directory.chmod(0o755)
    started = _stack(
        directory,
        "up",
        "--port",
        "0",
        "--database",
        "postgresql",
        "--emulator-latency",
        str(EMULATOR_LATENCY_S),
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        state = StackState.load(directory)
        assert state is not None
        assert state.database == "postgresql"
        assert state.ui_url
        yield state
    finally:
        _stack(directory, "down")
        shutil.rmtree(directory / "postgres", ignore_errors=True)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with launch_chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # The browser talks to loopback only: anything else is refused before it leaves.
    context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    yield opened
    context.close()


@pytest.fixture
def steps(page: Page, tmp_path: Path, request: pytest.FixtureRequest) -> Steps:
    """Named steps with a screenshot each, under the test's own folder."""
    return Steps(page, tmp_path / "screenshots" / request.node.name)


class Api:
    """The stack's REST API: what the tests read to know when to look (never a sleep)."""

    def __init__(self, state: StackState) -> None:
        self.client = httpx.Client(base_url=state.api_url, timeout=30.0)

    def flow_run(self, run_id: str) -> dict[str, Any]:
        response = self.client.get(f"/flow_runs/{run_id}")
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def state_of(self, run_id: str) -> str:
        return str(self.flow_run(run_id)["state"]["type"])

    def wait_for_state(self, run_id: str, wanted: set[str], timeout: float = 240) -> str:
        return wait_until(
            lambda: (state := self.state_of(run_id)) in wanted and state,
            timeout=timeout,
            interval=0.5,
            what=f"flow run {run_id} reaching {sorted(wanted)}",
        )

    def resume(self, run_id: str, run_input: dict[str, Any]) -> None:
        response = self.client.post(f"/flow_runs/{run_id}/resume", json={"run_input": run_input})
        response.raise_for_status()
        assert response.json()["status"] == "ACCEPT", response.json()

    def deployment(self, name: str) -> dict[str, Any]:
        response = self.client.get(f"/deployments/name/{name}")
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def runs_of(self, deployment_id: str) -> int:
        response = self.client.post(
            "/flow_runs/count", json={"deployments": {"id": {"any_": [deployment_id]}}}
        )
        response.raise_for_status()
        return int(response.json())


@pytest.fixture(scope="session")
def api(stack: StackState) -> Iterator[Api]:
    reader = Api(stack)
    yield reader
    reader.client.close()


@pytest.fixture(scope="session")
def s3(stack: StackState) -> Any:
    """boto3 on the stack's S3 server: an independent client."""
    return boto3.client(
        "s3",
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        region_name="us-east-1",
        endpoint_url=stack.s3_endpoint_url,
    )
