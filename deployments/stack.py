"""The whole local stack in one command, and one command to stop it.

``python -m deployments.stack up`` starts, on 127.0.0.1 and from this checkout:

- a Prefect server with its UI, on SQLite in ``.stack/prefect-home`` or, with
  ``--database postgresql``, on a PostgreSQL server of its own in
  ``.stack/postgres`` (`deployments.postgres`);
- the Segmind emulator (no key, no cost);
- an S3-compatible server (moto) with the bucket ``segmind-outputs``;
- ``--workers`` process workers on the work pool ``segmind-process``;

then runs ``python -m deployments.setup`` (work pool, blocks, the ``segmind``
concurrency limit), ``prefect deploy --all`` (every deployment of
``prefect.yaml``, the nightly schedule included) and points the deployments'
``storage`` and ``credentials`` at the saved blocks. It prints the UI's URL and
how to trigger a run. ``python -m deployments.stack down`` stops every process
it started, their children, and any process that inherited the stack's marker
(a flow run a worker left behind); ``status`` says what is running;
``restart-server`` stops the Prefect server and starts it again on the same
port and database (what an upgrade or a host reboot does to the workers).

Every process gets ``SEGMIND_STACK_ID`` in its environment; ``down`` finds
them by it, so nothing is left behind even when a worker died first. Logs stay
in ``.stack/logs`` after ``down``; ``down --purge`` removes the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from deployments import postgres
from deployments.definitions import DEPLOYMENTS, WORK_POOL

__all__ = [
    "STACK_ID_ENV",
    "StackError",
    "StackSettings",
    "StackState",
    "down",
    "main",
    "restart_server",
    "stack_processes",
    "status",
    "up",
]

REPO = Path(__file__).resolve().parents[1]
STACK_ID_ENV = "SEGMIND_STACK_ID"
EMULATOR_KEY = "local-stack-emulator-key"  # the emulator's; never a real key
S3_ACCESS_KEY_ID = "local-stack"
S3_SECRET_ACCESS_KEY = "local-stack-secret"  # noqa: S105 - moto accepts any
STATE_FILE = "stack.json"
STARTUP_TIMEOUT_S = 180.0
SERVICES = frozenset({"prefect-server", "emulator", "s3-server", "postgresql"})
"""What the workers need; ``down`` stops these last."""
DATABASES = ("sqlite", "postgresql")
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
"""Where the server keeps concurrency-slot leases: files in its Prefect home, not its
memory, so a restarted server still knows who holds the ``segmind`` slots (with the
in-memory default, slots held at a restart stay taken for good)."""


class StackError(RuntimeError):
    """The stack could not start, or is in a state the command cannot act on."""


@dataclass(frozen=True)
class StackSettings:
    """What ``up`` starts.

    Attributes:
        directory: Where the state file, logs and the Prefect home live.
        port: The Prefect server's port (0 picks a free one).
        workers: Process workers on the work pool.
        worker_limit: Flow runs one worker runs at once (``None``: no limit).
        concurrency: Slots of the ``segmind`` limit: Segmind calls in flight across
            every worker.
        emulator_latency: Seconds the emulator takes per image (Segmind: 7-23 s).
        emulator_max_concurrency: Calls in flight the emulator allows before it
            answers 429, like an account's limit.
        ui: Serve the Prefect UI.
        bucket: The S3 bucket outputs go to.
        database: The Prefect server's database: ``sqlite`` (a file in the Prefect
            home) or ``postgresql`` (a server of the stack's own, in ``postgres/``).
        storage_endpoint_url: The S3 endpoint the storage block names, which the
            workers use; empty means the stack's S3 server. A proxy in front of it
            lets a test cut the workers off from S3 while the server keeps its objects.
    """

    directory: Path = REPO / ".stack"
    port: int = 4200
    workers: int = 2
    worker_limit: int | None = None
    concurrency: int = 4
    emulator_latency: float = 2.0
    emulator_max_concurrency: int = 8
    ui: bool = True
    bucket: str = "segmind-outputs"
    database: str = "sqlite"
    storage_endpoint_url: str = ""


@dataclass
class StackProcess:
    """One process the stack started (``create_time`` tells it from a reused pid)."""

    name: str
    pid: int
    create_time: float


@dataclass
class StackState:
    """What ``up`` started, saved in ``<directory>/stack.json``; no secret in it."""

    stack_id: str
    directory: str
    api_url: str = ""
    ui_url: str = ""
    emulator_url: str = ""
    s3_endpoint_url: str = ""
    bucket: str = ""
    database: str = "sqlite"
    processes: list[StackProcess] = field(default_factory=list)

    def save(self) -> None:
        """Write the state file (after every process, so a failed ``up`` can be stopped)."""
        path = Path(self.directory) / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> StackState | None:
        """The state ``up`` saved in ``directory``, or ``None`` when there is none."""
        path = directory / STATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        processes = [StackProcess(**p) for p in data.pop("processes", [])]
        return cls(**data, processes=processes)

    def environment(self) -> dict[str, str]:
        """The environment the stack's commands run with (and a user's shell could)."""
        home = str(Path(self.directory) / "prefect-home")
        return {
            STACK_ID_ENV: self.stack_id,
            "PREFECT_HOME": home,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def up(settings: StackSettings, say: Callable[[str], None] = print) -> StackState:
    """Start everything, register the deployments, and return what runs where.

    Raises:
        StackError: a stack already runs in the directory, a port is taken, or a
            part did not start (everything started so far is stopped again).
    """
    directory = settings.directory.resolve()
    running = StackState.load(directory)
    if running is not None and _alive(running):
        raise StackError(
            f"a stack already runs from {directory} (Prefect at "
            f"{running.ui_url or running.api_url}); stop it with `python -m deployments.stack down`"
        )
    if running is not None:
        down(directory, say=lambda _line: None)
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    (directory / "prefect-home").mkdir(exist_ok=True)
    port = settings.port or _free_port()
    if not _port_is_free(port):
        raise StackError(f"port {port} is in use: pass --port with another (or 0 for any)")
    state = StackState(
        stack_id=uuid.uuid4().hex,
        directory=str(directory),
        api_url=f"http://127.0.0.1:{port}/api",
        ui_url=f"http://127.0.0.1:{port}" if settings.ui else "",
        bucket=settings.bucket,
        database=settings.database,
    )
    state.save()
    try:
        _start(settings, state, port, say)
    except BaseException:
        say(f"the stack did not start; stopping what had started (logs in {directory}/logs)")
        down(directory, say=lambda _line: None)
        raise
    return state


def _start(
    settings: StackSettings, state: StackState, port: int, say: Callable[[str], None]
) -> None:
    directory = Path(state.directory)
    logs = directory / "logs"
    # Self-contained: none of the caller's Prefect (a production database URL, a
    # Cloud key), AWS or Segmind settings reaches the stack's processes.
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "AWS_", "SEGMIND_"))
    }
    env = {**inherited, **state.environment()}
    prefect = str(Path(sys.executable).parent / "prefect")

    server_env = {**env, "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE}
    if settings.database == "postgresql":
        say("starting PostgreSQL for the Prefect server")
        server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = _start_postgres(state, env)
    say("starting the Prefect server, the Segmind emulator and the S3 server")
    server_argv = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server_argv += ["--analytics-off"] + ([] if settings.ui else ["--no-ui"])
    server = _spawn(state, "prefect-server", server_argv, server_env, logs)
    emulator = _spawn(
        state,
        "emulator",
        [
            sys.executable,
            "-m",
            "emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--api-key",
            EMULATOR_KEY,
            "--latency",
            str(settings.emulator_latency),
            "--max-concurrency",
            str(settings.emulator_max_concurrency),
        ],
        env,
        logs,
    )
    s3_port = _free_port()
    s3 = _spawn(
        state,
        "s3-server",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
        env,
        logs,
    )
    state.emulator_url = _wait_for(
        lambda: _emulator_url(logs / "emulator.log"), emulator, "the emulator"
    )
    state.s3_endpoint_url = f"http://127.0.0.1:{s3_port}"
    _wait_for(lambda: _answers(f"{state.s3_endpoint_url}/moto-api/"), s3, "the S3 server")
    _create_bucket(state)
    state.save()
    say(f"  emulator  {state.emulator_url}   S3 {state.s3_endpoint_url} (bucket {state.bucket})")
    _wait_for(lambda: _answers(f"{state.api_url}/health"), server, "the Prefect server")
    say(f"  Prefect   {state.api_url}")

    env["SEGMIND_API_KEY"] = EMULATOR_KEY  # saved in the credentials block as a secret
    setup = [sys.executable, "-m", "deployments.setup", "--concurrency", str(settings.concurrency)]
    setup += ["--storage-url", f"s3://{state.bucket}/outputs"]
    setup += ["--storage-endpoint-url", settings.storage_endpoint_url or state.s3_endpoint_url]
    setup += ["--segmind-base-url", state.emulator_url]
    _run([*setup, "--reset-held-slots"], env, logs / "setup.log", say)  # nothing runs yet
    say("registering the deployments (prefect deploy --all)")
    _run([prefect, "--no-prompt", "deploy", "--all"], env, logs / "deploy.log", say=None)
    pointing = [sys.executable, "-m", "deployments.setup", "--point-deployments-at-blocks"]
    _run(pointing, env, logs / "setup.log", say=None)
    del env["SEGMIND_API_KEY"]  # the workers read it from the block

    env["PREFECT_WORKER_QUERY_SECONDS"] = "2"  # a run starts within 2 s, not 10 (the default)
    names = [f"stack-worker-{n}" for n in range(1, settings.workers + 1)]
    for name in names:
        argv = [prefect, "worker", "start", "--pool", WORK_POOL, "--name", name]
        if settings.worker_limit is not None:
            argv += ["--limit", str(settings.worker_limit)]
        _spawn(state, name, argv, env, logs)
    _wait_for(lambda: _workers_online(state.api_url, names), None, "the workers", state=state)
    say(f"  {len(names)} worker(s) on the work pool {WORK_POOL}: {', '.join(names)}")


def _start_postgres(state: StackState, env: dict[str, str]) -> str:
    """The stack's PostgreSQL, recorded as one of its processes; Prefect's database URL."""
    directory = Path(state.directory)
    try:
        url = postgres.start(
            directory / "postgres", _free_port(), env, directory / "logs" / "postgresql.log"
        )
    except postgres.PostgresError as exc:
        raise StackError(str(exc)) from exc
    pid = postgres.postmaster_pid(directory / "postgres")
    if pid is None:
        raise StackError("PostgreSQL started but left no pid file; see logs/postgresql.log")
    state.processes.append(StackProcess("postgresql", pid, psutil.Process(pid).create_time()))
    state.save()
    return url


def down(
    directory: Path = StackSettings.directory,
    *,
    purge: bool = False,
    say: Callable[[str], None] = print,
) -> int:
    """Stop every process of the stack in ``directory``; returns how many were stopped."""
    directory = directory.resolve()
    state = StackState.load(directory)
    if state is None:
        say(f"no stack in {directory}")
        return 0
    # Workers and their flow runs first, while the Prefect server is still up to
    # record their slot releases; then the servers. Scanned again until none is
    # left, so a flow run started meanwhile is stopped too.
    services = {p.pid for p in state.processes if p.name in SERVICES}
    stopped: set[int] = set()
    killed = 0
    for last in (False, True):
        for _round in range(5):
            found = [
                p
                for p in stack_processes(state)
                if last or (p.pid not in services and not _child_of(p, services))
            ]
            if not found:
                break
            stopped.update(p.pid for p in found)
            killed += _terminate(found)
    (directory / STATE_FILE).unlink(missing_ok=True)
    if purge:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    say(
        f"stopped {len(stopped)} process(es)"
        + (f" ({killed} needed SIGKILL)" if killed else "")
        + ("" if purge else f"; logs kept in {directory / 'logs'}")
    )
    return len(stopped)


def restart_server(
    directory: Path = StackSettings.directory, say: Callable[[str], None] = print
) -> StackState:
    """Stop the stack's Prefect server and start it again: same command, port and database.

    Its workers and flow runs keep running and meet a server that is gone for
    a while. Returns the state with the new server process.

    Raises:
        StackError: no stack runs in ``directory``, or the server did not come back.
    """
    directory = directory.resolve()
    state = StackState.load(directory)
    recorded = None if state is None else _recorded(state, "prefect-server")
    if state is None or recorded is None or not _is_alive(recorded):
        raise StackError(f"no running Prefect server of a stack in {directory}")
    old = psutil.Process(recorded.pid)
    argv, env = old.cmdline(), old.environ()  # the database URL is in its environment
    _terminate([old, *old.children(recursive=True)])
    state.processes.remove(recorded)
    server = _spawn(state, "prefect-server", argv, env, directory / "logs", append=True)
    _wait_for(lambda: _answers(f"{state.api_url}/health"), server, "the Prefect server")
    say(f"restarted the Prefect server at {state.api_url} (pid {server.pid})")
    return state


def _recorded(state: StackState, name: str) -> StackProcess | None:
    return next((p for p in state.processes if p.name == name), None)


def _terminate(processes: list[psutil.Process]) -> int:
    """SIGTERM, then SIGKILL after 15 s; returns how many needed SIGKILL."""
    for process in processes:
        with suppress(psutil.Error):
            process.send_signal(signal.SIGTERM)
    _gone, alive = psutil.wait_procs(processes, timeout=15)
    for process in alive:
        with suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=10)
    return len(alive)


def _child_of(process: psutil.Process, parents: set[int]) -> bool:
    try:
        return any(parent.pid in parents for parent in process.parents())
    except psutil.Error:
        return False


def stack_processes(state: StackState) -> list[psutil.Process]:
    """Every live process of the stack: those it started, their children, its marker's."""
    found: dict[int, psutil.Process] = {}
    for recorded in state.processes:
        with suppress(psutil.Error):
            process = psutil.Process(recorded.pid)
            if abs(process.create_time() - recorded.create_time) < 1.0:
                found[process.pid] = process
                for child in process.children(recursive=True):
                    found[child.pid] = child
    me = os.getpid()
    for process in psutil.process_iter():
        if process.pid == me or process.pid in found:
            continue
        with suppress(psutil.Error):
            if process.environ().get(STACK_ID_ENV) == state.stack_id:
                found[process.pid] = process
    return list(found.values())


def status(directory: Path = StackSettings.directory) -> list[str]:
    """One line per process and URL of the stack in ``directory``."""
    state = StackState.load(directory.resolve())
    if state is None:
        return [f"no stack in {directory.resolve()}"]
    lines = []
    for recorded in state.processes:
        alive = _is_alive(recorded)
        lines.append(
            f"{recorded.name:16} pid {recorded.pid:<8} {'running' if alive else 'stopped'}"
        )
    lines += _how_to_use(state)
    return lines


def _how_to_use(state: StackState) -> list[str]:
    batch = next(d for d in DEPLOYMENTS if d.entrypoint.endswith(":batch"))
    env = f"PREFECT_API_URL={state.api_url}"
    prefect, python = (_shown(Path(sys.executable).parent / name) for name in ("prefect", "python"))
    return [
        "",
        f"Prefect UI:     {state.ui_url or '(started with --no-ui)'}",
        f"Prefect API:    {state.api_url}",
        f"Segmind:        {state.emulator_url} (the emulator; stats at /_emulator/stats)",
        f"Outputs:        s3://{state.bucket}/outputs on {state.s3_endpoint_url}",
        "",
        "Trigger a run: in the UI, Deployments > batch/nightly-catalogue > Run > Quick run;",
        f"or: {env} {prefect} deployment run batch/{batch.name}",
        "List the outputs:",
        f"  AWS_ACCESS_KEY_ID={S3_ACCESS_KEY_ID} AWS_SECRET_ACCESS_KEY={S3_SECRET_ACCESS_KEY} "
        f"{python} -c \"import s3fs; print('\\n'.join(s3fs.S3FileSystem("
        f"endpoint_url='{state.s3_endpoint_url}').find('{state.bucket}')))\"",
        "Stop everything: bash scripts/stack down   (or python -m deployments.stack down)",
    ]


def _shown(path: Path) -> str:
    """A command's path as a user in the repository would type it."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def _spawn(
    state: StackState,
    name: str,
    argv: list[str],
    env: dict[str, str],
    logs: Path,
    *,
    append: bool = False,
) -> psutil.Process:
    log: IO[bytes]
    with open(logs / f"{name}.log", "ab" if append else "wb") as log:  # one stack per log
        popen = subprocess.Popen(  # noqa: S603 - our own commands
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process = psutil.Process(popen.pid)
    state.processes.append(StackProcess(name, popen.pid, process.create_time()))
    state.save()
    return process


def _run(
    argv: list[str], env: dict[str, str], log_path: Path, say: Callable[[str], None] | None
) -> None:
    done = subprocess.run(  # noqa: S603 - our own commands
        argv, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=300
    )
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise StackError(f"{' '.join(Path(a).name for a in argv[:3])} failed:\n{tail}")
    if say is not None:
        for line in done.stdout.splitlines():
            say(f"  {line}")


def _wait_for(
    ready: Callable[[], Any],
    process: psutil.Process | None,
    what: str,
    *,
    state: StackState | None = None,
) -> Any:
    """Poll ``ready`` until it returns something truthy; fail if the process died."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if process is not None and not _running(process):
            raise StackError(f"{what} exited while starting; see its log")
        if state is not None:
            dead = [p.name for p in state.processes if not _is_alive(p)]
            if dead:
                raise StackError(f"{', '.join(dead)} exited while starting; see the logs")
        time.sleep(0.2)  # polling a condition, with a deadline
    raise StackError(f"{what} did not start within {STARTUP_TIMEOUT_S:.0f} s; see the logs")


def _emulator_url(log: Path) -> str | None:
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("emulator listening on "):
            return line.removeprefix("emulator listening on ").strip()
    return None


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _workers_online(api_url: str, names: Sequence[str]) -> bool:
    try:
        response = httpx.post(f"{api_url}/work_pools/{WORK_POOL}/workers/filter", json={})
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    online = {w["name"] for w in response.json() if w.get("status") == "ONLINE"}
    return set(names) <= online


def _create_bucket(state: StackState) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=state.s3_endpoint_url,
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=state.bucket)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # As the server binds: a port whose last connections are in TIME_WAIT (a
        # browser was open on the stack just stopped) is free to listen on.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _running(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running()) and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_alive(recorded: StackProcess) -> bool:
    try:
        process = psutil.Process(recorded.pid)
        same = abs(process.create_time() - recorded.create_time) < 1.0
        return same and _running(process)
    except psutil.Error:
        return False


def _alive(state: StackState) -> bool:
    return any(_is_alive(p) for p in state.processes)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``python -m deployments.stack up|down|status`` command."""
    parser = argparse.ArgumentParser(
        prog="python -m deployments.stack",
        description="The local stack: Prefect server and UI, Segmind emulator, S3, workers.",
    )
    parser.add_argument("--dir", type=Path, default=StackSettings.directory, help="state folder")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start everything and register the deployments")
    start.add_argument("--port", type=int, default=4200, help="Prefect's port (0: any free)")
    start.add_argument("--workers", type=int, default=2, help="process workers (default 2)")
    start.add_argument("--worker-limit", type=int, help="flow runs per worker at once")
    start.add_argument("--concurrency", type=int, default=4, help="slots of the segmind limit")
    start.add_argument("--emulator-latency", type=float, default=2.0, help="seconds per image")
    start.add_argument(
        "--emulator-max-concurrency", type=int, default=8, help="calls in flight before a 429"
    )
    start.add_argument("--no-ui", action="store_true", help="serve the API only")
    start.add_argument(
        "--storage-endpoint-url",
        default="",
        help="S3 endpoint the workers use (default: the stack's S3 server; a proxy in front of it)",
    )
    start.add_argument(
        "--database",
        choices=DATABASES,
        default="sqlite",
        help="the Prefect server's database (postgresql: a server of the stack's own)",
    )
    stop = commands.add_parser("down", help="stop every process of the stack")
    stop.add_argument("--purge", action="store_true", help="also delete the state folder")
    commands.add_parser("status", help="what runs, and where")
    commands.add_parser(
        "restart-server", help="stop the Prefect server and start it again (same port, database)"
    )
    args = parser.parse_args(argv)

    if args.command == "down":
        down(args.dir, purge=args.purge)
        return 0
    if args.command == "status":
        print("\n".join(status(args.dir)))
        return 0
    if args.command == "restart-server":
        try:
            restart_server(args.dir)
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    for option in ("workers", "concurrency", "emulator_max_concurrency"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.worker_limit is not None and args.worker_limit < 1:
        parser.error("--worker-limit must be at least 1")
    settings = StackSettings(
        directory=args.dir,
        port=args.port,
        workers=args.workers,
        worker_limit=args.worker_limit,
        concurrency=args.concurrency,
        emulator_latency=args.emulator_latency,
        emulator_max_concurrency=args.emulator_max_concurrency,
        ui=not args.no_ui,
        database=args.database,
        storage_endpoint_url=args.storage_endpoint_url,
    )
    try:
        state = up(settings)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(_how_to_use(state)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
