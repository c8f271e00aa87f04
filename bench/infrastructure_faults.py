"""Faults of the infrastructure, through the whole stack: four of them, each mid-batch.

Run: ``python bench/infrastructure_faults.py [--rows 24] [--max-concurrency 4]
[--latency 1.0] [--faults server-restart,flow-run-kill,s3-outage,segmind-503]``.

It starts the local stack (`deployments.stack`): a real ``prefect server start``
on SQLite, one ``prefect worker start`` on the process pool, the emulator and a
moto S3 server. The storage block the worker uses names a loopback TCP proxy in
front of moto (`TcpProxy`): moto keeps its objects in memory, so it is never
restarted; the proxy is what goes away. For each fault a manifest of ``--rows``
p-image-edit rows (ids and seeds of its own, so nothing is reused from another
fault) goes to the bucket, a run of ``batch/nightly-catalogue`` is created
through the REST API as the UI's run form does, and once the emulator has billed
a third of the rows the fault is injected:

- ``server-restart``: the Prefect server gets SIGTERM and is started again on
  the same port and database (`deployments.stack.restart_server`);
- ``flow-run-kill``: the flow-run process the worker started gets SIGKILL; the
  worker marks the run Crashed; the batch is then started again as a user
  would, with a new run of the deployment on the same manifest (not the UI's
  *Retry* on the crashed run: Prefect's worker reports the crash twice, once
  from its runner and once more, seconds later, when its own wait on the
  process returns, and a Retry made in between is crashed by that second
  report);
- ``s3-outage``: for 20 s the proxy resets every open connection and every new
  one as soon as it is accepted (connection refused, in effect);
- ``segmind-503``: for 30 s the emulator answers 503 to every generation
  request (``POST /_emulator/faults``).

Then, judged from outside the product (the REST API, the emulator's counters,
boto3 on moto): every row is stored (its image and sidecar; the image decodes
and matches the sidecar's sha256) or has a reason in the run's results
manifest; no image without its sidecar; the emulator billed exactly the rows
stored, plus, for the kill only, the ``/v1`` answers the README says a kill
may lose (billed once the kill settled minus rows stored at the kill, at most
2 x ``max_concurrency``); the run's final state agrees with the results
manifest (Completed with every row stored, else Failed, "N of M rows failed").

The stack's ``segmind`` limit has twice ``max_concurrency`` slots: a killed
run's slot leases are freed by the server only when they expire (300 s), and
the retried run should not wait for them.

Prints a line per fault and PASS or FAIL, writes
``bench/results/infrastructure_faults.json`` and exits 1 on FAIL.
``tests/deployments/test_infrastructure_faults.py`` runs the same scenarios in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as ``python bench/infrastructure_faults.py``
    sys.path.insert(0, str(REPO))

from bench.crash_resume import (  # noqa: E402 - after the path fix above
    Inventory,
    S3Access,
    S3Objects,
    take_inventory,
)
from bench.crash_resume import wait_for as poll_until  # noqa: E402
from bench.provenance import git_commit  # noqa: E402
from deployments.stack import (  # noqa: E402
    S3_ACCESS_KEY_ID,
    S3_SECRET_ACCESS_KEY,
    STACK_ID_ENV,
    StackSettings,
    StackState,
    down,
    restart_server,
    up,
)

RESULTS = REPO / "bench" / "results" / "infrastructure_faults.json"
BATCH = "batch/nightly-catalogue"
OUTPUTS = "outputs"  # the stack's storage block: s3://{bucket}/outputs
ENDPOINT = "p-image-edit"
FAULTS = ("server-restart", "flow-run-kill", "s3-outage", "segmind-503")
S3_OUTAGE_S = 20.0
SEGMIND_OUTAGE_S = 30.0
TERMINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
POLL_S = 0.2
"""Interval of every condition polled here (REST API, emulator counters)."""
RUN_TIMEOUT_S = 120.0
SLOTS = "segmind"  # the stack's global concurrency limit on Segmind calls


# --- the S3 switch ------------------------------------------------------------------------


class TcpProxy:
    """A loopback TCP proxy in front of ``target``, which a test can cut off and restore.

    Cut, it resets every open connection and every new one as soon as it is
    accepted: a client sees "connection reset" at once, as with a refused
    connection, and nothing reaches the target. ``refused`` counts the new
    connections turned away, so the outage is seen to have been met.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self.target: tuple[str, int] | None = None
        self.refused = 0
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: what clients are given instead of the target's URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        """Accept connections in a background thread; returns self."""
        self._thread.start()
        return self

    def cut(self) -> None:
        """Reset every open connection, and every new one until `restore`."""
        self._cut.set()
        with self._lock:
            opened = list(self._open)
        for sock in opened:
            _reset(sock)

    def restore(self) -> None:
        """Forward new connections again."""
        self._cut.clear()

    def close(self) -> None:
        """Stop accepting and end every connection."""
        self._closed.set()
        self.cut()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _address = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            if self._cut.is_set() or self.target is None:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with self._lock:
            pair = [s for s in (source, sink) if s in self._open]
            self._open.difference_update(pair)
        for sock in pair:
            _reset(sock)


def _reset(sock: socket.socket) -> None:
    """End a connection with a TCP reset (wakes a thread blocked reading it)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# --- the stack ----------------------------------------------------------------------------


@dataclass
class FaultStack:
    """A running stack whose worker reaches S3 through ``proxy``."""

    state: StackState
    proxy: TcpProxy
    directory: Path

    def s3(self) -> Any:
        """boto3 on the S3 server itself (not through the proxy): an independent client."""
        return S3Access(self.state.s3_endpoint_url, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY).client()

    def api(self) -> httpx.Client:
        """A plain HTTP client on the Prefect REST API."""
        return httpx.Client(base_url=self.state.api_url, timeout=30.0)

    def emulator(self) -> httpx.Client:
        """A plain HTTP client on the emulator (its control endpoints take no key)."""
        return httpx.Client(base_url=self.state.emulator_url, timeout=10.0)


@contextlib.contextmanager
def fault_stack(
    directory: Path, *, max_concurrency: int, latency: float, say: Callable[[str], None] = print
) -> Iterator[FaultStack]:
    """Start the stack in ``directory`` with S3 behind a proxy; stop all of it on the way out."""
    proxy = TcpProxy().start()
    settings = StackSettings(
        directory=directory,
        port=0,
        workers=1,
        concurrency=2 * max_concurrency,
        emulator_latency=latency,
        emulator_max_concurrency=4 * max_concurrency,
        ui=False,
        storage_endpoint_url=proxy.url,
    )
    try:
        state = up(settings, say=say)
        host, port = state.s3_endpoint_url.removeprefix("http://").split(":")
        proxy.target = (host, int(port))
        yield FaultStack(state, proxy, directory)
    finally:
        down(directory, say=say)
        proxy.close()


# --- observing ----------------------------------------------------------------------------


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """`bench.crash_resume.wait_for`, polling every `POLL_S`."""
    return poll_until(condition, timeout=timeout, what=what, interval=POLL_S)


def emulator_stats(stack: FaultStack) -> dict[str, Any]:
    """``GET /_emulator/stats``."""
    with stack.emulator() as emulator:
        response = emulator.get("/_emulator/stats")
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


def settled_stats(stack: FaultStack, *, quiet_s: float = 1.0) -> dict[str, Any]:
    """The emulator's counters once nothing is in flight and none moved for ``quiet_s``."""
    last: dict[str, Any] = {}
    quiet_since = time.monotonic()

    def settled() -> dict[str, Any] | None:
        nonlocal last, quiet_since
        stats = emulator_stats(stack)
        if stats != last or stats["in_flight"]:
            last, quiet_since = stats, time.monotonic()
            return None
        return stats if time.monotonic() - quiet_since >= quiet_s else None

    found: dict[str, Any] = wait_for(settled, timeout=120, what="the emulator to settle")
    return found


def flow_run(stack: FaultStack, run_id: str) -> dict[str, Any] | None:
    """The flow run as the REST API shows it; ``None`` while the server does not answer."""
    try:
        with stack.api() as api:
            response = api.get(f"/flow_runs/{run_id}")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    found: dict[str, Any] = response.json()
    return found


def wait_for_state(
    stack: FaultStack, run_id: str, types: frozenset[str], timeout: float = RUN_TIMEOUT_S
) -> dict[str, Any]:
    """The flow run once its state type is one of ``types``."""

    def reached() -> dict[str, Any] | None:
        run = flow_run(stack, run_id)
        return run if run is not None and run["state_type"] in types else None

    found: dict[str, Any] = wait_for(
        reached, timeout=timeout, what=f"flow run {run_id} to be {'/'.join(sorted(types))}"
    )
    return found


def held_slots(stack: FaultStack) -> int | None:
    """Slots of the ``segmind`` limit held now; ``None`` while the server does not answer."""
    try:
        with stack.api() as api:
            response = api.get(f"/v2/concurrency_limits/{SLOTS}")
    except httpx.HTTPError:
        return None
    return int(response.json()["active_slots"]) if response.status_code == 200 else None


def _post_until_accepted(stack: FaultStack, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST, asked again while a SQLite server answers 503 (the write was rolled back)."""
    with stack.api() as api:
        response: httpx.Response = wait_for(
            lambda: (r := api.post(path, json=body)).status_code != 503 and r,
            timeout=60,
            what=f"the server to accept POST {path}",
        )
    return response


# --- one run ------------------------------------------------------------------------------


def upload_manifest(
    stack: FaultStack, tag: str, rows: int, seed_base: int
) -> tuple[str, list[str]]:
    """A manifest of ``rows`` p-image-edit rows ``{tag}-NN`` and its photo, in the bucket."""
    s3 = stack.s3()
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (seed_base % 200, 90, 160)).save(buffer, format="PNG")
    # Under the storage block's prefix: the only part of the bucket runs may read.
    photo = f"{OUTPUTS}/inputs/{tag}/photo.png"
    s3.put_object(Bucket=stack.state.bucket, Key=photo, Body=buffer.getvalue())
    ids = [f"{tag}-{i:02d}" for i in range(rows)]
    lines = [
        json.dumps(
            {
                "id": row_id,
                "endpoint": ENDPOINT,
                "prompt": f"a poster, {row_id}",
                "images": [f"s3://{stack.state.bucket}/{photo}"],
                "params": {"seed": seed_base + i},
            }
        )
        for i, row_id in enumerate(ids)
    ]
    key = f"{OUTPUTS}/manifests/{tag}.jsonl"
    s3.put_object(Bucket=stack.state.bucket, Key=key, Body="\n".join(lines).encode())
    return f"s3://{stack.state.bucket}/{key}", ids


def start_run(stack: FaultStack, manifest: str, max_concurrency: int) -> str:
    """Create a run of the batch deployment as the UI's run form does; its id."""
    with stack.api() as api:
        deployment = api.get(f"/deployments/name/{BATCH}").raise_for_status().json()
    parameters = {
        **deployment["parameters"],
        "manifest": manifest,
        "max_concurrency": max_concurrency,
    }
    response = _post_until_accepted(
        stack,
        f"/deployments/{deployment['id']}/create_flow_run",
        {"parameters": parameters, "state": {"type": "SCHEDULED"}},
    )
    response.raise_for_status()
    run_id: str = response.json()["id"]
    return run_id


def flow_run_process(stack: FaultStack, run_id: str) -> psutil.Process:
    """The process the worker started for flow run ``run_id`` (``python -m prefect.engine``)."""

    def find() -> psutil.Process | None:
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                env = process.environ()
                if (
                    env.get(STACK_ID_ENV) == stack.state.stack_id
                    and env.get("PREFECT__FLOW_RUN_ID") == run_id
                ):
                    return process
        return None

    found: psutil.Process = wait_for(find, timeout=30, what=f"the process of flow run {run_id}")
    return found


# --- the faults ---------------------------------------------------------------------------


@dataclass
class Batch:
    """One fault's batch: its manifest, row ids, concurrency, and the run followed to its end."""

    manifest: str
    ids: list[str]
    max_concurrency: int
    run_id: str = ""


@dataclass
class FaultReport:
    """What one fault did, as seen from outside the product.

    Attributes:
        fault: Which fault.
        rows: Rows in the manifest.
        max_concurrency: The run's ``max_concurrency``.
        injected_at_billed: Calls billed when the fault began.
        fault_s: How long the fault lasted (server down; outage window; kill to new run).
        stored: Rows stored at the end (image and sidecar).
        with_reason: Rows not stored, each with a reason in the results manifest.
        billed: Calls the emulator billed for the fault's rows.
        may_lose: Paid answers the README says the fault may lose (the kill only).
        requests: Generation requests the emulator received.
        refused: Answers that were not a billed 200 (injected 503s included).
        injected: Faults the emulator injected, by kind (the 503s).
        s3_refused: Connections to S3 the proxy turned away during the outage.
        state: The run's final state type and name.
        message: The run's final state message.
        crashed: The killed run's final state and message (the kill).
        run_count: Times the (last) flow run ran.
        slots_held_before: Slots of the ``segmind`` limit held when the run was created.
        slots_held_after: Slots held once the run ended: as many as before, but for
            a killed run's leases (until they expire, 300 s after their last renewal).
        wall_s: Seconds from the run's creation to its final state.
        reasons: One reason of each kind the results manifest gives.
        problems: What did not hold; empty when the fault was survived.
    """

    fault: str
    rows: int
    max_concurrency: int
    injected_at_billed: int = 0
    fault_s: float = 0.0
    stored: int = 0
    with_reason: int = 0
    billed: int = 0
    may_lose: int = 0
    requests: int = 0
    refused: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    s3_refused: int = 0
    state: str = ""
    message: str = ""
    crashed: str = ""
    run_count: int = 0
    slots_held_before: int | None = None
    slots_held_after: int | None = None
    wall_s: float = 0.0
    reasons: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for a person."""
        lost = f" (+{self.may_lose} lost by the kill)" if self.may_lose else ""
        return (
            f"{self.fault}: fault at {self.injected_at_billed} billed, {self.fault_s:.1f} s; "
            f"{self.stored}/{self.rows} stored, {self.with_reason} with a reason; "
            f"billed {self.billed}{lost}; {self.requests} requests ({self.refused} not billed); "
            f"run {self.state} after {self.wall_s:.1f} s, ran {self.run_count}x, "
            f"{self.slots_held_after} slot(s) held after: {self.message}"
        )


def _restart_server(stack: FaultStack, _batch: Batch, report: FaultReport) -> None:
    begun = time.monotonic()
    restart_server(stack.directory, say=lambda _line: None)
    report.fault_s = time.monotonic() - begun


def _kill_flow_run(stack: FaultStack, batch: Batch, report: FaultReport) -> None:
    """SIGKILL the flow-run process; once the run is Crashed, start the batch again."""
    process = flow_run_process(stack, batch.run_id)
    begun = time.monotonic()
    process.send_signal(signal.SIGKILL)
    crashed = wait_for_state(stack, batch.run_id, frozenset({"CRASHED", "FAILED", "COMPLETED"}))
    report.crashed = f"{crashed['state_name']}: {crashed['state']['message']}"
    if crashed["state_type"] != "CRASHED":
        report.problems.append(f"after SIGKILL the run is {report.crashed}, not Crashed")
    billed = settled_stats(stack)["billed"]
    stored_at_kill = len(_inventory(stack, batch.ids).stored())
    report.may_lose = billed - stored_at_kill
    batch.run_id = start_run(stack, batch.manifest, batch.max_concurrency)
    report.fault_s = time.monotonic() - begun


def _s3_outage(stack: FaultStack, _batch: Batch, report: FaultReport) -> None:
    refused = stack.proxy.refused
    stack.proxy.cut()
    _hold(S3_OUTAGE_S)
    stack.proxy.restore()
    report.fault_s = S3_OUTAGE_S
    report.s3_refused = stack.proxy.refused - refused


def _segmind_503(stack: FaultStack, _batch: Batch, report: FaultReport) -> None:
    with stack.emulator() as emulator:
        emulator.post("/_emulator/faults", json={"faults": {"503": 1.0}}).raise_for_status()
        try:
            _hold(SEGMIND_OUTAGE_S)
        finally:
            emulator.post("/_emulator/faults", json={"faults": {}}).raise_for_status()
    report.fault_s = SEGMIND_OUTAGE_S


def _hold(seconds: float) -> None:
    """Keep a fault on for ``seconds``: its duration, not a wait for something to happen."""
    time.sleep(seconds)


INJECT: dict[str, Callable[[FaultStack, Batch, FaultReport], None]] = {
    "server-restart": _restart_server,
    "flow-run-kill": _kill_flow_run,
    "s3-outage": _s3_outage,
    "segmind-503": _segmind_503,
}


def run_fault(
    stack: FaultStack, fault: str, *, rows: int, max_concurrency: int, seed_base: int
) -> FaultReport:
    """Run a batch, inject ``fault`` once a third of its rows are billed, and judge the end."""
    tag = fault.split("-")[0] + f"{seed_base % 1000:03d}"
    manifest, ids = upload_manifest(stack, tag, rows, seed_base)
    report = FaultReport(fault, rows, max_concurrency)
    with stack.emulator() as emulator:
        emulator.post("/_emulator/reset").raise_for_status()
    created = time.monotonic()
    batch = Batch(manifest, ids, max_concurrency)
    report.slots_held_before = held_slots(stack)
    batch.run_id = start_run(stack, manifest, max_concurrency)
    at = max(1, rows // 3)
    report.injected_at_billed = wait_for(
        lambda: (billed := emulator_stats(stack)["billed"]) >= at and billed,
        timeout=RUN_TIMEOUT_S,
        what=f"{at} calls to be billed",
    )
    INJECT[fault](stack, batch, report)
    final = wait_for_state(stack, batch.run_id, TERMINAL)
    report.wall_s = time.monotonic() - created
    stats = settled_stats(stack)
    report.billed, report.requests = stats["billed"], stats["requests"]
    report.refused = stats["requests"] - stats["billed"]
    report.injected = dict(stats["faults_injected"])
    report.state = f"{final['state_type']}/{final['state_name']}"
    report.message = final["state"]["message"] or ""
    report.run_count = final["run_count"]
    report.slots_held_after = held_slots(stack)
    judge(stack, batch.run_id, ids, report)
    return report


# --- the judgement ------------------------------------------------------------------------


@dataclass
class TaggedObjects:
    """The stack's outputs whose file name starts with ``{tag}-``: one fault's rows only."""

    objects: S3Objects
    tag: str

    def listing(self) -> dict[str, int]:
        """Every key of the fault's rows (relative to the outputs' prefix) and its size."""
        return {
            key: size
            for key, size in self.objects.listing().items()
            if key.rsplit("/", 1)[-1].startswith(f"{self.tag}-")
        }

    def read(self, key: str) -> bytes:
        """The object ``key`` under the outputs' prefix."""
        return self.objects.read(key)


def _objects(stack: FaultStack, ids: Sequence[str]) -> TaggedObjects:
    tag = ids[0].rsplit("-", 1)[0]
    return TaggedObjects(S3Objects(stack.s3(), stack.state.bucket, OUTPUTS), tag)


def _inventory(stack: FaultStack, ids: Sequence[str]) -> Inventory:
    return take_inventory(_objects(stack, ids), ids)


def results_manifest(stack: FaultStack, run_id: str) -> list[dict[str, Any]] | None:
    """The run's results manifest (``batch/{day}/runs/{name}-{id8}-results.jsonl``), if any."""
    objects = S3Objects(stack.s3(), stack.state.bucket, OUTPUTS)
    suffix = f"-{run_id[:8]}-results.jsonl"
    keys = [key for key in objects.listing() if key.endswith(suffix)]
    if len(keys) != 1:
        return None
    return [json.loads(line) for line in objects.read(keys[0]).decode().splitlines()]


def judge(stack: FaultStack, run_id: str, ids: Sequence[str], report: FaultReport) -> None:
    """Every row stored or with a reason, no image alone, the bill, the state: into ``report``."""
    objects = _objects(stack, ids)
    inventory = take_inventory(objects, ids)
    for kind in ("orphans", "temporaries", "strays"):
        found = getattr(inventory, kind)
        if found:
            report.problems.append(f"{len(found)} {kind}: {found[:3]}")
    stored = {row_id for row_id in ids if _stored_whole(objects, inventory, row_id, report)}
    results = results_manifest(stack, run_id)
    if results is None:
        report.problems.append("the run wrote no results manifest")
        results = []
    by_id = {str(line.get("id")): line for line in results}
    if results and sorted(str(line.get("id")) for line in results) != sorted(ids):
        report.problems.append("the results manifest does not list every row once")
    reasons = set()
    for row_id in ids:
        line = by_id.get(row_id, {})
        if row_id in stored:
            if results and line.get("status") != "succeeded":
                report.problems.append(f"{row_id} is stored but its result is {line}")
            continue
        if line.get("status") == "succeeded" or not line.get("error"):
            report.problems.append(f"{row_id} is not stored and has no reason: {line}")
            continue
        report.with_reason += 1
        reasons.add(str(line["error"])[:160])
    report.reasons = sorted(reasons)
    report.stored = len(stored)
    if report.billed != report.stored + report.may_lose:
        report.problems.append(
            f"billed {report.billed} for {report.stored} rows stored"
            + (f" and {report.may_lose} lost by the kill" if report.may_lose else "")
        )
    _judge_state(report)
    _judge_slots(report)


def _judge_slots(report: FaultReport) -> None:
    """The run gave back every slot it took; a killed process's leases only expire."""
    before, after = report.slots_held_before or 0, report.slots_held_after
    leaked = None if after is None else after - before
    allowed = report.max_concurrency if report.fault == "flow-run-kill" else 0
    if leaked is None or leaked > allowed:
        report.problems.append(
            f"{leaked} slot(s) of the {SLOTS} limit still held after the run "
            f"({before} before, {after} after; {allowed} may wait for their leases to expire)"
        )


def _stored_whole(
    objects: TaggedObjects, inventory: Inventory, row_id: str, report: FaultReport
) -> bool:
    """Whether the row has one image and one sidecar, the image whole and as the sidecar says."""
    images, sidecars = inventory.images.get(row_id, []), inventory.sidecars.get(row_id, [])
    if not sidecars:
        return False
    if len(images) != 1 or len(sidecars) != 1:
        report.problems.append(f"{row_id}: {len(images)} image(s), {len(sidecars)} sidecar(s)")
        return False
    data = objects.read(images[0])
    sidecar = json.loads(objects.read(sidecars[0]))
    if hashlib.sha256(data).hexdigest() != sidecar["output"]["sha256"]:
        report.problems.append(f"{row_id}: the image does not match its sidecar's sha256")
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as exc:  # a broken image is a finding, not a crash of the check
        report.problems.append(f"{row_id}: the image does not decode: {exc}")
        return False
    return True


def _judge_state(report: FaultReport) -> None:
    """Completed with every row stored; otherwise Failed, its message counting the rows."""
    failed = report.rows - report.stored
    if failed == 0:
        if not report.state.startswith("COMPLETED"):
            report.problems.append(f"every row is stored but the run is {report.state}")
        return
    said = f"{failed} of {report.rows} rows failed"
    if not report.state.startswith("FAILED") or not report.message.startswith(said):
        report.problems.append(
            f"{failed} row(s) not stored, but the run is {report.state}: {report.message!r}"
        )
    if report.may_lose > 2 * report.max_concurrency:
        report.problems.append(
            f"the kill lost {report.may_lose} paid answers; the README allows at most "
            f"2 x max_concurrency = {2 * report.max_concurrency}"
        )


# --- the command --------------------------------------------------------------------------


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Four infrastructure faults, mid-batch.")
    parser.add_argument("--rows", type=int, default=24, help="rows per fault")
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--latency", type=float, default=1.0, help="emulator seconds per call")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, in order")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the faults on one stack; 0 when every one was survived, else 1."""
    args = _arguments(argv)
    faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        print(f"unknown fault(s) {unknown}; choose from {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    begun = time.monotonic()
    reports: list[FaultReport] = []
    directory = Path(tempfile.mkdtemp(prefix="infrastructure-faults-"))  # logs kept
    with fault_stack(
        directory, max_concurrency=args.max_concurrency, latency=args.latency
    ) as stack:
        started_s = time.monotonic() - begun
        for n, fault in enumerate(faults):
            report = run_fault(
                stack,
                fault,
                rows=args.rows,
                max_concurrency=args.max_concurrency,
                seed_base=810_000 + 1000 * n,
            )
            print(report.line(), flush=True)
            for problem in report.problems:
                print(f"  problem: {problem}")
            reports.append(report)
    failed = [r.fault for r in reports if r.problems]
    numbers = {
        "rows": args.rows,
        "max_concurrency": args.max_concurrency,
        "latency_s": args.latency,
        "stack_start_s": round(started_s, 1),
        "total_s": round(time.monotonic() - begun, 1),
        "faults": [
            {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(r).items()}
            for r in reports
        ],
        "result": "FAIL" if failed else "PASS",
        "commit": git_commit(),
    }
    print(f"{numbers['result']}: {len(reports) - len(failed)} of {len(reports)} faults survived")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(numbers, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
