"""The stack's own PostgreSQL: made in a folder, used over loopback, stopped, made again."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from deployments import postgres


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder the ``postgres`` user can enter (pytest's own are root's only)."""
    made = Path(tempfile.mkdtemp(prefix="segmind-pg-test-"))
    made.chmod(0o755)
    (made / "logs").mkdir()
    yield made
    postgres.stop(made / "postgres", dict(os.environ))
    shutil.rmtree(made, ignore_errors=True)


async def select_one(url: str) -> int:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return int(await connection.fetchval("SELECT 1"))
    finally:
        await connection.close()


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for whoever it was handed to when pg_ctl left."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_cluster_is_made_used_stopped_and_started_again(folder: Path) -> None:
    env = dict(os.environ)
    cluster, log = folder / "postgres", folder / "logs" / "postgresql.log"

    url = postgres.start(cluster, free_port(), env, log)

    assert url.startswith("postgresql+asyncpg://prefect@127.0.0.1:")
    assert url.endswith("/prefect")
    assert asyncio.run(select_one(url)) == 1
    pid = postgres.postmaster_pid(cluster)
    assert pid is not None
    assert running(pid)
    listening = {c.laddr.ip for c in psutil.Process(pid).net_connections() if c.status == "LISTEN"}
    assert listening == {"127.0.0.1"}

    postgres.stop(cluster, env)
    assert postgres.postmaster_pid(cluster) is None
    assert not running(pid)

    again = postgres.start(cluster, free_port(), env, log)  # the same data, the database kept
    assert asyncio.run(select_one(again)) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_as_root_a_folder_the_postgres_user_cannot_enter_is_refused_clearly() -> None:
    private = Path(tempfile.mkdtemp(prefix="segmind-pg-private-"))  # mode 0700, root's
    try:
        with pytest.raises(postgres.PostgresError, match=r"cannot write to .*choose a --dir"):
            postgres.start(private / "postgres", free_port(), dict(os.environ), private / "pg.log")
    finally:
        shutil.rmtree(private, ignore_errors=True)
