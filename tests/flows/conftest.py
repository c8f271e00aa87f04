"""Fixtures for the tests that run Prefect flows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import without_flow_heartbeats


@pytest.fixture(autouse=True)
def _no_flow_heartbeats() -> Iterator[None]:
    """Flows end at once instead of joining a heartbeat thread (about 1 s per flow)."""
    with without_flow_heartbeats():
        yield
