"""A PostgreSQL server of the local stack's own: its data folder, on loopback, for Prefect.

Debian's PostgreSQL binaries (``apt-get install postgresql``) run a cluster in
``<stack folder>/postgres``: ``initdb`` once (user ``prefect``, trust on
loopback: it listens on 127.0.0.1 only and its socket sits in the folder),
``pg_ctl start`` on a free port, the database ``prefect``. PostgreSQL refuses
to run as root, so as root every command runs as the ``postgres`` user, who
then owns the folder. ``stop`` is a fast shutdown.

Why the stack offers it: on SQLite the Prefect server answers "database is
locked" when two writes meet inside a transaction (seen on a run's Resume from
the UI, and on creating runs), where PostgreSQL waits its turn.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DATABASE", "USER", "PostgresError", "binaries", "postmaster_pid", "start", "stop"]

USER = "prefect"
DATABASE = "prefect"
_OS_USER = "postgres"  # who runs the server when the stack runs as root


class PostgresError(RuntimeError):
    """PostgreSQL is not installed, or a command of it failed."""


def binaries() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: Debian's newest, else the ``PATH``'s."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    found = debian[-1] if debian else shutil.which("initdb")
    if not found:
        raise PostgresError(
            "PostgreSQL is not installed: `apt-get install postgresql` (Debian's package)"
        )
    return Path(found).parent


def start(folder: Path, port: int, env: dict[str, str], log: Path) -> str:
    """Start the cluster in ``folder`` on ``port`` (made once); returns Prefect's database URL.

    Raises:
        PostgresError: not installed, or ``initdb``, ``pg_ctl`` or ``createdb`` failed.
    """
    bin_dir = binaries()
    data = folder / "data"
    if not (data / "PG_VERSION").exists():
        folder.mkdir(parents=True, exist_ok=True)
        _own(folder)
        _check_reachable(folder, env)
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust"], env)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    _own(log.parent, only=log)
    pg_ctl = str(bin_dir / "pg_ctl")
    _run([pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"], env)
    client = ["-h", "127.0.0.1", "-p", str(port), "-U", USER]
    query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"  # noqa: S608 - a constant
    if _run([str(bin_dir / "psql"), *client, "-d", "postgres", "-tAc", query], env).strip() != "1":
        _run([str(bin_dir / "createdb"), *client, DATABASE], env)
    return f"postgresql+asyncpg://{USER}@127.0.0.1:{port}/{DATABASE}"


def postmaster_pid(folder: Path) -> int | None:
    """The running server's process id, from its pid file; ``None`` when it is not there."""
    pid_file = folder / "data" / "postmaster.pid"
    try:
        return int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def stop(folder: Path, env: dict[str, str]) -> None:
    """Fast shutdown of the cluster in ``folder``, if it runs (sessions are cut, not awaited)."""
    if postmaster_pid(folder) is None:
        return
    _run([str(binaries() / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "-w", "stop"], env)


def _as_owner(argv: Sequence[str]) -> list[str]:
    """``argv`` as PostgreSQL will run it: as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return list(argv)
    return ["runuser", "-u", _OS_USER, "--", *argv]


def _check_reachable(folder: Path, env: dict[str, str]) -> None:
    """As root, PostgreSQL runs as ``postgres``, who must be able to enter ``folder``."""
    try:
        _run(["test", "-w", str(folder)], env)
    except PostgresError:
        raise PostgresError(
            f"the {_OS_USER} user, who runs PostgreSQL for root, cannot write to {folder}: "
            "choose a --dir every user can enter (not under a folder only root may open)"
        ) from None


def _own(folder: Path, only: Path | None = None) -> None:
    """As root, give ``folder`` (or just the file ``only`` in it) to the ``postgres`` user."""
    if os.geteuid() != 0:
        return
    if only is not None:
        only.touch()
        shutil.chown(only, user=_OS_USER)
        return
    shutil.chown(folder, user=_OS_USER)


def _run(argv: Sequence[str], env: dict[str, str]) -> str:
    done = subprocess.run(  # noqa: S603 - PostgreSQL's own commands
        _as_owner(argv),
        cwd="/",  # the postgres user may not enter ours
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
        raise PostgresError(f"{Path(argv[0]).name} failed:\n{tail}")
    return done.stdout
