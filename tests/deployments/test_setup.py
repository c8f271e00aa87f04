"""python -m deployments.setup against Prefect's test server: creates, then only updates."""

from __future__ import annotations

import pytest
from prefect import get_client

from blocks import ObjectStorage, SegmindCredentials
from deployments.setup import (
    CREDENTIALS_BLOCK,
    STORAGE_BLOCK,
    SetupSettings,
    main,
    set_up,
)
from tests.support import API_KEY

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

    assert f"work pool {pool}: created (process)" in first
    assert f"work pool {pool}: already there" in second
    assert any(line.startswith(f"concurrency limit {limit_name}:") for line in first)
    assert f"concurrency limit {limit_name}: already 3 slots" in second
    printed = capsys.readouterr().out
    assert f"concurrency limit {limit_name}: set to 5 slots" in printed
    assert API_KEY not in "\n".join([*first, *second, printed])
    with get_client(sync_client=True) as client:
        work_pool = client.read_work_pool(pool)
        limit = client.read_global_concurrency_limit_by_name(limit_name)
        pools = [p.name for p in client.read_work_pools()]
    assert work_pool.type == "process"
    assert "command" in work_pool.base_job_template["job_configuration"]
    assert pools.count(pool) == 1
    assert limit.limit == 5
    assert limit.slot_decay_per_second == pytest.approx(0.5)
    # The blocks load back; the key is stored as a secret, the S3 secrets are not stored.
    credentials = SegmindCredentials.load(CREDENTIALS_BLOCK)
    assert credentials.api_key is not None
    assert credentials.api_key.get_secret_value() == API_KEY
    assert credentials.concurrency_limit == limit_name
    assert API_KEY not in repr(credentials)
    storage = ObjectStorage.load(STORAGE_BLOCK)
    assert storage.base_url == "outputs"  # the last run (main) asked for the default
    assert storage.aws_secret_access_key is None


def test_setup_refuses_a_concurrency_below_one() -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--concurrency", "0", "--limit-name", "never-created"])
    assert refused.value.code == 2
