"""Fixtures: emulators on loopback, started and stopped per test."""

from __future__ import annotations

import os
import tempfile
import uuid

# Before anything imports Prefect: no telemetry, and a private home per run.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pytest

from emulator import SegmindEmulator
from tests.support import API_KEY

EmulatorFactory = Callable[..., SegmindEmulator]
REPOSITORY = Path(__file__).resolve().parent.parent
HARNESS_SLOTS = 100


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A memory:// base URL private to this test (the memory filesystem is process-global)."""
    name = f"test-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


@pytest.fixture
def start_emulator() -> Iterator[EmulatorFactory]:
    """Start an emulator with the given settings (``api_key`` defaults to the test key)."""
    started: list[SegmindEmulator] = []

    def start(**settings: Any) -> SegmindEmulator:
        settings.setdefault("api_key", API_KEY)
        emulator = SegmindEmulator(**settings).start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(start_emulator: EmulatorFactory) -> SegmindEmulator:
    """An emulator with default settings: 100 USD of credits, no latency, no faults."""
    return start_emulator()


@pytest.fixture
def api(emulator: SegmindEmulator) -> Iterator[httpx.Client]:
    """An httpx client pointed at the default emulator, sending the right key."""
    with httpx.Client(
        base_url=emulator.url, headers={"x-api-key": API_KEY}, timeout=30.0
    ) as client:
        yield client


@pytest.fixture(scope="session", autouse=True)
def _no_shared_limit_by_default() -> Iterator[None]:
    """Calls take no slot of a global concurrency limit unless a test names one.

    A slot costs two or three Prefect API calls per attempt, which would double
    the time of every call against the zero-latency emulator. The limit has its
    own tests (tests/tasks/test_concurrency.py) and benchmark.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGMIND_CONCURRENCY_LIMIT", "")
        yield


@pytest.fixture(scope="session", autouse=True)
def _inputs_from_loopback_and_temp_folders() -> Iterator[None]:
    """The input policy the tests run under: the emulator and file servers on
    127.0.0.1 are allowed, and local inputs may live in temporary folders or
    the repository. The policy's own tests build their policies explicitly.
    """
    from segmind_core.fetch import ALLOW_NETWORKS_ENV, INPUT_ROOTS_ENV

    roots = os.pathsep.join([tempfile.gettempdir(), str(REPOSITORY)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.1/32")
        patch.setenv(INPUT_ROOTS_ENV, roots)
        yield


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect server and database for the session (~18 s to start, once)."""
    from prefect import get_client
    from prefect.testing.utilities import prefect_test_harness

    from tasks.concurrency import ensure_concurrency_limit

    with prefect_test_harness(server_startup_timeout=120):
        # The endpoint tasks hold a slot of ``segmind`` per call when a server is
        # configured; this one is large enough never to make a test wait.
        with get_client(sync_client=True) as client:
            ensure_concurrency_limit(client, HARNESS_SLOTS)
        yield


@pytest.fixture
def segmind_env(emulator: SegmindEmulator, monkeypatch: pytest.MonkeyPatch) -> SegmindEmulator:
    """``SEGMIND_API_KEY`` and ``SEGMIND_BASE_URL`` pointing at the default emulator."""
    monkeypatch.setenv("SEGMIND_API_KEY", API_KEY)
    monkeypatch.setenv("SEGMIND_BASE_URL", emulator.url)
    return emulator


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server on loopback, with credentials that it accepts."""

    endpoint_url: str
    access_key_id: str = "moto-access-key-id"
    secret_access_key: str = "moto-secret-access-key-SECRET"  # noqa: S105 - test value
    region: str = "us-east-1"

    def client(self) -> Any:
        """An independent boto3 client, to check what landed."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """``ThreadedMotoServer`` on 127.0.0.1 for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server) -> S3Server:
    """The S3 server, emptied, with an empty bucket ``outputs``."""
    httpx.post(f"{s3_server.endpoint_url}/moto-api/reset").raise_for_status()
    s3_server.client().create_bucket(Bucket="outputs")
    return s3_server
