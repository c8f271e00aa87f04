"""Checks the flow tests share: a stored output with its sidecar, a flow run's artifacts."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import State

from segmind_core.generation import EditResult
from segmind_core.outputs import SIDECAR_SUFFIX
from tests.support import API_KEY, decode

DAY = r"\d{4}-\d{2}-\d{2}"


def assert_stored(
    result: EditResult,
    base: Path,
    *,
    flow: str,
    slug: str,
    size: tuple[int, int],
    fmt: str = "png",
) -> dict[str, Any]:
    """``result`` names an image of ``size`` under ``base`` with a matching sidecar."""
    assert result.slug == slug
    path = Path(result.url)
    assert path == base.resolve() / result.key
    assert re.fullmatch(rf"{flow}/{DAY}/[a-z0-9._-]+\.{fmt}", result.key), result.key
    data = path.read_bytes()
    image = decode(data)
    assert image.size == (result.width, result.height) == size
    assert image.format == {"png": "PNG", "jpg": "JPEG"}[fmt]
    assert hashlib.sha256(data).hexdigest() == result.sha256
    sidecar_text = Path(f"{path}{SIDECAR_SUFFIX}").read_text()
    sidecar: dict[str, Any] = json.loads(sidecar_text)
    assert sidecar["output"]["sha256"] == result.sha256
    assert sidecar["seed"] == result.seed
    assert sidecar["slug"] == slug
    assert sidecar["flow_name"] == flow
    assert API_KEY not in sidecar_text
    return sidecar


def flow_run_artifacts(state: State[Any], key: str) -> list[Any]:
    """The artifacts with ``key`` of the flow run that ended in ``state``."""
    flow_run_id: UUID | None = state.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        artifacts: list[Any] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    return artifacts
