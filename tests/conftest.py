"""Fixtures: emulators on loopback, started and stopped per test."""

from __future__ import annotations

import os
import tempfile

# Before anything imports Prefect: no telemetry, and a private home per run.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from emulator import SegmindEmulator
from tests.support import API_KEY

EmulatorFactory = Callable[..., SegmindEmulator]


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


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect server and database for the session (~18 s to start, once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def segmind_env(emulator: SegmindEmulator, monkeypatch: pytest.MonkeyPatch) -> SegmindEmulator:
    """``SEGMIND_API_KEY`` and ``SEGMIND_BASE_URL`` pointing at the default emulator."""
    monkeypatch.setenv("SEGMIND_API_KEY", API_KEY)
    monkeypatch.setenv("SEGMIND_BASE_URL", emulator.url)
    return emulator
