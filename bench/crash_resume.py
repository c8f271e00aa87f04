"""Crash and resume: kill -9 a batch half-way, run it again, and check what was paid and stored.

Run: ``python bench/crash_resume.py [--rows 100] [--latency 0.5] [--max-concurrency 4]
[--kill-at 0.5] [--storage s3|local] [--queue] [-- EXTRA BATCH ARGS]``.

An in-process emulator answers every call after ``--latency`` seconds; a moto
S3 server on 127.0.0.1 holds the input images, the manifest and the outputs
(``--storage local``: a temporary folder instead). The script runs
``python -m flows.batch MANIFEST --output URL`` as a user would, in its own
process group, with no ``PREFECT_API_URL`` (so the command starts its own
temporary Prefect server). Once the emulator has billed ``--kill-at`` of the
rows, it sends SIGKILL to the whole group (the flow-run process and its
server), waits until every call or job the killed run had started has ended,
takes stock of the storage, then runs the same command again, in the same
Prefect home, to the end.

What is checked: the re-run exits 0 and reports every row succeeded; every row
has exactly one image and one sidecar under its id (no time-stamped copy), the
image decodes and matches the sidecar's sha256; no image without a sidecar, no
temporary ``.part`` object; the outputs stored before the kill were not
written again; the bill is exact, as below.

``/v1`` (the default): the calls in flight at the kill were answered and
billed by the emulator after their client had died, so their images were
lost: ``lost`` = billed once the kill settled - rows stored at the kill
(at most twice ``--max-concurrency``: the calls in flight, and answers received
but not yet stored by the other task runs the batch starts). The re-run pays for
exactly the rows not stored at the kill; total billed = rows + lost.

``--queue`` (Segmind's v2 queue, ``flows.batch --queue``): every job the
killed run submitted still runs and is billed. A row's pending record
(``_queue/{key}.json``) is written right after the queue accepts its request
and removed after its sidecar, so at the kill each submitted job is in one of
three places: its row stored (a sidecar; the record may still be there if
the kill fell between the sidecar and the record's removal), its row pending
(a record, no sidecar: the re-run polls that request, free), or nowhere (the
kill fell between the queue's answer and the end of the record's write, one
storage write, milliseconds to tens of them: the only way to pay twice).
So ``lost`` = jobs submitted - rows stored - rows pending (no sidecar) at
the kill; the re-run submits (and pays) exactly rows - stored - pending;
total billed = rows + lost; every pending row ends with the request id of its
record, every row's request id is distinct, and no pending record is left.

Prints the numbers and PASS or FAIL; exits 1 on failure; writes
``bench/results/crash_resume.json`` (``crash_resume_queue.json`` with
``--queue``). The pieces are functions that
``tests/flows/test_crash_resume.py`` reuses at CI size.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as ``python bench/crash_resume.py``
    sys.path.insert(0, str(REPO))

from bench.provenance import git_commit  # noqa: E402 - after the path fix above
from emulator import SegmindEmulator  # noqa: E402
from flows.common import TASK_RUNS_PER_CALL  # noqa: E402

API_KEY = "crash-resume-key-not-secret"
RESULTS = REPO / "bench" / "results" / "crash_resume.json"
RESULTS_QUEUE = REPO / "bench" / "results" / "crash_resume_queue.json"
BUCKET = "crash-resume"
SIDECAR_SUFFIX = ".json"
PENDING_DIR = "_queue"
IMAGE_SUFFIXES = (".png", ".jpg")
POLL_S = 0.01
"""Interval of every condition polled here (emulator stats, a process group)."""
QUIET_S = 0.5
"""How long the emulator's counters must stay still after a kill before they are read."""

_PILLOW_FORMATS = {".png": "PNG", ".jpg": "JPEG"}
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


# --- the rows -------------------------------------------------------------------------


def input_images(count: int) -> list[bytes]:
    """``count`` distinct small photos (PNG), made here: nothing is downloaded."""
    images = []
    for i in range(count):
        buffer = io.BytesIO()
        size = (480, 360) if i % 2 == 0 else (360, 480)
        Image.new("RGB", size, (40 + 50 * i % 200, 90 + 30 * i % 160, 200 - 20 * i % 180)).save(
            buffer, format="PNG"
        )
        images.append(buffer.getvalue())
    return images


def manifest_rows(
    count: int, images: Sequence[str], *, seed_base: int = 7000
) -> list[dict[str, Any]]:
    """``count`` rows over three endpoints and both output formats, one paid call each.

    Every seed is pinned, so a re-run can be served from what is stored.
    """
    rows: list[dict[str, Any]] = []
    for i in range(count):
        first, second = images[i % len(images)], images[(i + 1) % len(images)]
        row: dict[str, Any] = {"id": f"row-{i:04d}", "params": {"seed": seed_base + i}}
        kind = i % 4
        if kind in (0, 1):
            row.update(endpoint="p-image-edit", prompt="a poster", images=[first])
            row["params"]["aspect_ratio"] = "1:1"
        elif kind == 2:
            row.update(endpoint="flux-kontext-pro", prompt="on a marble counter", images=[first])
            row["params"].update(aspect_ratio="4:3", output_format="jpg")
        else:
            row.update(
                endpoint="multi-image-kontext-pro",
                prompt="the two side by side",
                images=[first, second],
            )
            row["params"]["aspect_ratio"] = "1:1"
        rows.append(row)
    return rows


def jsonl(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(dict(row)) + "\n" for row in rows).encode()


# --- storage, seen from outside the product ---------------------------------------------


class Objects(Protocol):
    """Everything under one output location, read with a client independent of the product."""

    def listing(self) -> dict[str, int]:
        """Every key under the location (relative to it) and its size."""
        ...

    def read(self, key: str) -> bytes:
        """The bytes under ``key``."""
        ...


@dataclass(frozen=True)
class S3Access:
    """An S3-compatible server and credentials it accepts."""

    endpoint_url: str
    access_key_id: str = "moto-access-key-id"
    secret_access_key: str = "moto-secret-access-key"  # noqa: S105 - a local test server
    region: str = "us-east-1"

    def client(self) -> Any:
        """An independent boto3 client."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )

    def env(self) -> dict[str, str]:
        """The standard AWS variables the command (and s3fs) read."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
        }


@dataclass
class S3Objects:
    """The objects under ``s3://bucket/prefix``, through boto3."""

    client: Any
    bucket: str
    prefix: str

    def listing(self) -> dict[str, int]:
        """Every key under the prefix (relative to it) and its size."""
        found: dict[str, int] = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/"
        )
        for page in pages:
            for item in page.get("Contents", []):
                found[item["Key"][len(self.prefix) + 1 :]] = int(item["Size"])
        return found

    def read(self, key: str) -> bytes:
        """The object under ``prefix/key``."""
        body = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")["Body"]
        data: bytes = body.read()
        return data


@dataclass
class LocalObjects:
    """The files under a local folder (hidden ones included)."""

    root: Path

    def listing(self) -> dict[str, int]:
        """Every file under the folder (relative to it) and its size."""
        if not self.root.exists():
            return {}
        return {
            path.relative_to(self.root).as_posix(): path.stat().st_size
            for path in self.root.rglob("*")
            if path.is_file()
        }

    def read(self, key: str) -> bytes:
        """The file ``key`` under the folder."""
        return (self.root / key).read_bytes()


@dataclass
class Inventory:
    """The outputs of a batch, sorted by what they are.

    Attributes:
        images: Output images of each row id (more than one is a duplicate).
        sidecars: Sidecars of each row id.
        pending: Queue mode's pending records of each row id (``_queue/{key}.json``).
        set_aside: Pending records set aside (``_queue/expired/``): failed or expired.
        orphans: Images with no sidecar beside them (a writer that did not finish).
        temporaries: Temporary or partial objects (``.part``).
        strays: Anything else in the outputs' day folders or under ``_queue/``.
        other: Keys outside them (Prefect's cache records, results manifests...).
    """

    images: dict[str, list[str]] = field(default_factory=dict)
    sidecars: dict[str, list[str]] = field(default_factory=dict)
    pending: dict[str, list[str]] = field(default_factory=dict)
    set_aside: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def stored(self) -> set[str]:
        """Row ids with a sidecar: done, as the product itself decides (`OutputStore.load`)."""
        return {row_id for row_id, keys in self.sidecars.items() if keys}

    def in_queue(self) -> set[str]:
        """Row ids with a pending record and no sidecar: a re-run polls their request."""
        return {row_id for row_id, keys in self.pending.items() if keys} - self.stored()

    def stored_with_record(self) -> set[str]:
        """Row ids with a sidecar whose pending record was not removed yet."""
        return {row_id for row_id, keys in self.pending.items() if keys} & self.stored()


def _row_id(name: str, row_ids: set[str]) -> str | None:
    """The row an output file name belongs to: ``{id}.png`` or ``{id}-{anything}.png``."""
    stem = name
    for suffix in IMAGE_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        return None
    if stem in row_ids:
        return stem
    for row_id in row_ids:  # a time-stamped copy of a row's image
        if stem.startswith(f"{row_id}-"):
            return row_id
    return None


def take_inventory(objects: Objects, row_ids: Sequence[str], flow: str = "batch") -> Inventory:
    """Sort every key under the location by what it is."""
    ids = set(row_ids)
    listing = objects.listing()
    inventory = Inventory()
    for key in sorted(listing):
        name = posixpath.basename(key)
        parts = key.split("/")
        if ".part" in name or name.startswith("."):  # ObjectStore: ".{name}.{uuid}.part"
            inventory.temporaries.append(key)
            continue
        if parts[0] == PENDING_DIR:
            _sort_pending(inventory, key, parts[1:], ids, flow)
            continue
        in_day = len(parts) == 3 and parts[0] == flow and _DAY.fullmatch(parts[1]) is not None
        if not in_day:
            inventory.other.append(key)
            continue
        if name.endswith(SIDECAR_SUFFIX) and name[: -len(SIDECAR_SUFFIX)].endswith(IMAGE_SUFFIXES):
            row_id = _row_id(name[: -len(SIDECAR_SUFFIX)], ids)
            target = inventory.sidecars
        else:
            row_id = _row_id(name, ids)
            target = inventory.images
            if row_id is not None and f"{key}{SIDECAR_SUFFIX}" not in listing:
                inventory.orphans.append(key)
        if row_id is None:
            inventory.strays.append(key)
        else:
            target.setdefault(row_id, []).append(key)
    return inventory


def _sort_pending(
    inventory: Inventory, key: str, parts: Sequence[str], ids: set[str], flow: str
) -> None:
    """File a key under ``_queue/``: ``{service}/{flow}/{id}.{ext}.json`` or ``expired/...``.

    Records made before they were keyed without the date are ``{flow}/{day}/{id}.{ext}.json``.
    """
    if parts and parts[0] == "expired":
        inventory.set_aside.append(key)
        return
    name = parts[-1] if parts else ""
    in_day = len(parts) == 3 and parts[0] == flow and _DAY.fullmatch(parts[1]) is not None
    of_service = len(parts) == 3 and parts[1] == flow
    row_id = (
        _row_id(name[: -len(SIDECAR_SUFFIX)], ids)
        if (in_day or of_service) and name.endswith(SIDECAR_SUFFIX)
        else None
    )
    if row_id is None:
        inventory.strays.append(key)
    else:
        inventory.pending.setdefault(row_id, []).append(key)


def request_ids(objects: Objects, keys: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The ``request_id`` in the first sidecar or pending record of each row."""
    return {
        row_id: str(json.loads(objects.read(found[0])).get("request_id"))
        for row_id, found in sorted(keys.items())
        if found
    }


def check_outputs(
    objects: Objects, row_ids: Sequence[str], *, expected_endpoints: Mapping[str, str]
) -> tuple[Inventory, list[str]]:
    """Every row exactly once, whole and matching its sidecar; returns the problems found."""
    inventory = take_inventory(objects, row_ids)
    problems: list[str] = []
    for kind in ("orphans", "temporaries", "strays"):
        found = getattr(inventory, kind)
        if found:
            problems.append(f"{len(found)} {kind}: {found[:5]}")
    for row_id in row_ids:
        images = inventory.images.get(row_id, [])
        sidecars = inventory.sidecars.get(row_id, [])
        if len(images) != 1 or len(sidecars) != 1:
            problems.append(
                f"{row_id}: {len(images)} image(s) {images}, {len(sidecars)} sidecar(s)"
            )
            continue
        key = images[0]
        if posixpath.basename(key) not in (f"{row_id}{suffix}" for suffix in IMAGE_SUFFIXES):
            problems.append(f"{row_id}: stored under {key}, not under its id")
        data = objects.read(key)
        sidecar = json.loads(objects.read(sidecars[0]))
        if hashlib.sha256(data).hexdigest() != sidecar["output"]["sha256"]:
            problems.append(f"{row_id}: {key} does not match its sidecar's sha256")
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                decoded = (image.format, image.size)
        except Exception as exc:  # a broken image is a finding, not a crash of the check
            problems.append(f"{row_id}: {key} does not decode: {exc}")
            continue
        suffix = posixpath.splitext(key)[1]
        wanted = (
            _PILLOW_FORMATS[suffix],
            (sidecar["output"]["width"], sidecar["output"]["height"]),
        )
        if decoded != wanted:
            problems.append(f"{row_id}: {key} is {decoded}, its sidecar says {wanted}")
        if sidecar["slug"] != expected_endpoints[row_id]:
            problems.append(
                f"{row_id}: made by {sidecar['slug']}, not {expected_endpoints[row_id]}"
            )
    return inventory, problems


def sidecar_digests(objects: Objects, inventory: Inventory) -> dict[str, str]:
    """sha256 of each stored row's sidecar: shows later whether it was written again."""
    return {
        row_id: hashlib.sha256(objects.read(keys[0])).hexdigest()
        for row_id, keys in sorted(inventory.sidecars.items())
        if keys
    }


# --- the command ----------------------------------------------------------------------------


def batch_env(
    home: Path,
    emulator_url: str,
    *,
    s3: S3Access | None = None,
    input_roots: Sequence[Path] = (),
    api_key: str = API_KEY,
    api_url: str | None = None,
) -> dict[str, str]:
    """The environment of ``python -m flows.batch``: this one without Prefect, Segmind or AWS.

    Without ``api_url``, no ``PREFECT_API_URL``: the command starts its own
    temporary Prefect server, whose database lives in ``home`` (and may take up
    to 120 s to start). With it, the command runs against that server (the
    tests' session server), and no server is started or killed with it. No
    shared concurrency limit either way (``SEGMIND_CONCURRENCY_LIMIT`` empty).
    Local input images may be read from ``input_roots`` (``SEGMIND_INPUT_ROOTS``).
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "SEGMIND_", "AWS_"))
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        SEGMIND_API_KEY=api_key,
        SEGMIND_BASE_URL=emulator_url,
        SEGMIND_CONCURRENCY_LIMIT="",
        # The temporary server gets 20 s to start by default; on a loaded 2-core
        # machine it has taken longer, and the command then fails before any row.
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    if input_roots:
        env["SEGMIND_INPUT_ROOTS"] = os.pathsep.join(str(root) for root in input_roots)
    if s3 is not None:
        env.update(s3.env())
    return env


def batch_command(
    manifest: str,
    output: str,
    *,
    max_concurrency: int,
    queue: bool = False,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """``python -m flows.batch MANIFEST --output OUTPUT ...`` (``--queue``: the v2 queue)."""
    return [
        sys.executable,
        "-m",
        "flows.batch",
        manifest,
        "--output",
        output,
        "--max-concurrency",
        str(max_concurrency),
        *(["--queue"] if queue else []),
        *extra_args,
    ]


def wait_for(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = POLL_S
) -> Any:
    """Poll ``condition`` until it is truthy; ``TimeoutError`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(interval)


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after the ")".
        fields = text[text.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@dataclass
class KillReport:
    """What the emulator and the process had done when the group was killed.

    Attributes:
        pid: The command's process id, which is also its process group id.
        after_s: Seconds from the start of the command to the kill.
        billed: Calls billed when the kill was sent.
        in_flight: Calls (v1) or jobs (v2) in flight then; the emulator still
            answers or runs them, and bills them.
        requests: Requests received then (v1 calls and v2 submissions).
        billed_settled: Billed once every call and job the killed run had started
            had ended.
        jobs_submitted: v2 jobs the emulator accepted from the killed run (its
            ``QUEUED`` counter, once settled): every submission, paid when it completes.
        jobs_failed: v2 jobs of the killed run that failed (not paid).
        exited_early: The command ended on its own before the condition held.
    """

    pid: int
    after_s: float
    billed: int
    in_flight: int
    requests: int
    billed_settled: int
    jobs_submitted: int = 0
    jobs_failed: int = 0
    exited_early: bool = False


@contextlib.contextmanager
def process_group(
    command: Sequence[str], env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in a new session (its own process group); kill the group on the way out."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            cwd=REPO,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            wait_for(lambda: not group_alive(process.pid), timeout=30, what="the group's end")


def jobs_unfinished(stats: Mapping[str, Any]) -> int:
    """v2 jobs accepted and not yet completed or failed."""
    jobs = stats.get("jobs", {})
    return int(jobs.get("QUEUED", 0)) - int(jobs.get("COMPLETED", 0)) - int(jobs.get("FAILED", 0))


def settled_stats(
    emulator: SegmindEmulator, *, quiet_s: float = QUIET_S, timeout: float = 60.0
) -> dict[str, Any]:
    """The emulator's counters once its calls and jobs have ended and stayed still a while.

    Settled: nothing in flight, no job unfinished, no counter moved for ``quiet_s``.
    The quiet period covers a request the killed process had fully sent before it
    died: the emulator may still be reading it, and then counts, runs and bills
    it. Polled; ``TimeoutError`` when it does not settle.
    """
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    quiet_since = time.monotonic()
    while True:
        stats = emulator.stats()
        idle = stats["in_flight"] == 0 and jobs_unfinished(stats) == 0
        if stats != last or not idle:
            last, quiet_since = stats, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return stats
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the emulator did not settle within {timeout} s: {stats}")
        time.sleep(POLL_S)


def run_and_kill(
    command: Sequence[str],
    env: Mapping[str, str],
    emulator: SegmindEmulator,
    *,
    kill_when_billed: int,
    log: Path,
    timeout: float = 300.0,
) -> KillReport:
    """Start the command, SIGKILL its process group once ``kill_when_billed`` calls are billed.

    Returns once no process of the group is left and the emulator has ended (and
    billed) every call and job that the killed run had started (`settled_stats`).
    """
    started = time.monotonic()
    with process_group(command, env, log) as process:
        wait_for(
            lambda: process.poll() is not None or emulator.stats()["billed"] >= kill_when_billed,
            timeout=timeout,
            what=f"{kill_when_billed} calls billed",
        )
        with contextlib.suppress(ProcessLookupError):  # it ended on its own: nothing to kill
            os.killpg(process.pid, signal.SIGKILL)
        exited_early = process.poll() is not None and process.returncode != -signal.SIGKILL
        at_kill = emulator.stats()
        after_s = time.monotonic() - started
    # The group is gone (``process_group`` waited for it): no new call can come.
    settled = settled_stats(emulator)
    return KillReport(
        pid=process.pid,
        after_s=round(after_s, 2),
        billed=at_kill["billed"],
        # v1 calls in flight, or v2 jobs not finished (those running among them).
        in_flight=max(at_kill["in_flight"], jobs_unfinished(at_kill)),
        requests=at_kill["requests"],
        billed_settled=settled["billed"],
        jobs_submitted=int(settled["jobs"].get("QUEUED", 0)),
        jobs_failed=int(settled["jobs"].get("FAILED", 0)),
        exited_early=exited_early,
    )


def run_to_end(
    command: Sequence[str], env: Mapping[str, str], *, log: Path, timeout: float = 300.0
) -> tuple[int, str, float]:
    """Run the command to its end; returns its exit code, output and duration."""
    started = time.monotonic()
    # On a timeout the group is killed on the way out; the exit code says so.
    with (
        process_group(command, env, log) as process,
        contextlib.suppress(subprocess.TimeoutExpired),
    ):
        process.wait(timeout=timeout)
    return process.returncode, log.read_text(errors="replace"), time.monotonic() - started


def results_manifest(output: str, objects: Objects) -> list[dict[str, Any]]:
    """The results manifest named by the command's last line, read from ``objects``."""
    lines = output.strip().splitlines()
    if not lines:
        return []
    url = lines[-1].strip()
    marker = "/batch/"
    if marker not in url:
        return []
    key = "batch/" + url.split(marker, 1)[1]
    return [json.loads(line) for line in objects.read(key).decode().splitlines() if line]


# --- one crash-and-resume ---------------------------------------------------------------


@dataclass
class Outcome:
    """Measured numbers of one crash and resume, and the problems found.

    Attributes:
        mode: ``v1`` or ``queue``.
        kill_at_billed: Calls billed that triggered the kill.
        kill: The emulator's counters at the kill.
        stored_at_kill: Rows with a sidecar once the killed run's last write landed.
        pending_at_kill: Queue mode: rows with a pending record and no sidecar then
            (the re-run polls their requests).
        stored_with_record_at_kill: Rows stored whose pending record was not
            removed yet (the kill fell between the two).
        orphans_at_kill: Images without a sidecar then (their writer was killed between).
        temporaries_at_kill: Temporary objects then (``.part``).
        lost: Calls paid (or to be paid) for the killed run whose output was neither
            stored nor resumable: v1, billed - stored; queue, submitted - stored - pending.
        rerun_billed: Calls the re-run paid.
        rerun_expected_billed: What it should have paid: rows - stored (- pending).
        rerun_submitted: Queue mode: jobs the re-run submitted.
        rerun_resumed: Queue mode: pending rows that ended with their record's request id.
        rerun_paid_rows: Rows with a cost in the re-run's results manifest (queue
            mode: resumed rows too, whose cost the killed run incurred).
        pending_after: Pending records left after the re-run.
        set_aside_after: Records set aside (``_queue/expired/``) after the re-run.
        total_billed: Calls billed by both runs.
    """

    rows: int
    storage: str
    mode: str
    latency_s: float
    max_concurrency: int
    extra_args: list[str]
    kill_at_billed: int
    kill: KillReport
    stored_at_kill: int
    pending_at_kill: int
    stored_with_record_at_kill: int
    orphans_at_kill: int
    temporaries_at_kill: int
    lost: int
    rerun_exit: int
    rerun_s: float
    rerun_billed: int
    rerun_expected_billed: int
    rerun_submitted: int
    rerun_resumed: int
    rerun_paid_rows: int
    pending_after: int
    set_aside_after: int
    total_billed: int
    problems: list[str]

    @property
    def passed(self) -> bool:
        """Whether no problem was found."""
        return not self.problems


def crash_and_resume(
    *,
    emulator: SegmindEmulator,
    objects: Objects,
    manifest: str,
    output: str,
    rows: Sequence[Mapping[str, Any]],
    env: Mapping[str, str],
    workdir: Path,
    max_concurrency: int,
    kill_at: float = 0.5,
    queue: bool = False,
    extra_args: Sequence[str] = (),
    storage: str = "s3",
    timeout: float = 300.0,
) -> Outcome:
    """Run the batch, kill it after ``kill_at`` of the rows are billed, run it again, check.

    The emulator must be fresh (its counters at zero) and the output location empty.
    """
    row_ids = [str(row["id"]) for row in rows]
    endpoints = {str(row["id"]): str(row["endpoint"]) for row in rows}
    command = batch_command(
        manifest, output, max_concurrency=max_concurrency, queue=queue, extra_args=extra_args
    )
    problems: list[str] = []
    kill_at_billed = max(1, round(len(rows) * kill_at))

    kill = run_and_kill(
        command,
        env,
        emulator,
        kill_when_billed=kill_at_billed,
        log=workdir / "killed-run.log",
        timeout=timeout,
    )
    # Every process of the run is gone and its calls and jobs have ended: what is
    # stored now is all the killed run left.
    at_kill = take_inventory(objects, row_ids)
    stored_at_kill = at_kill.stored()
    in_queue = at_kill.in_queue()
    records_at_kill = request_ids(objects, {row: at_kill.pending[row] for row in in_queue})
    digests_at_kill = sidecar_digests(objects, at_kill)
    if kill.exited_early:
        problems.append("the command ended before the kill: the kill was not mid-batch")
    if not 0 < len(stored_at_kill) < len(rows):
        problems.append(f"{len(stored_at_kill)} of {len(rows)} rows stored at the kill")
    if queue:
        lost = kill.jobs_submitted - len(stored_at_kill) - len(in_queue)
        if kill.billed_settled != kill.jobs_submitted or kill.jobs_failed:
            problems.append(f"jobs of the killed run not all billed: {kill}")
        if not in_queue:
            problems.append("no request was pending at the kill: nothing to resume")
        if at_kill.set_aside:
            problems.append(f"records set aside by the killed run: {at_kill.set_aside[:5]}")
    else:
        lost = kill.billed_settled - len(stored_at_kill)
        if in_queue or at_kill.pending or kill.jobs_submitted:
            problems.append("pending records or v2 jobs in a v1 run")
    # A call paid and not stored was in flight, or answered and being stored, at the
    # kill: at most max_concurrency in flight plus the answers of the other task runs
    # the batch starts (TASK_RUNS_PER_CALL per call). Queue mode: accepted, its record
    # not yet written, which happens while the call's permit is held.
    most_lost = max_concurrency if queue else TASK_RUNS_PER_CALL * max_concurrency
    if not 0 <= lost <= most_lost:
        problems.append(f"{lost} calls paid and not stored; at most {most_lost} possible")

    code, text, rerun_s = run_to_end(command, env, log=workdir / "rerun.log", timeout=timeout)
    if code != 0:
        problems.append(f"the re-run exited {code}: {text[-2000:]}")
    stats = emulator.stats()
    rerun_billed = stats["billed"] - kill.billed_settled
    rerun_submitted = int(stats["jobs"].get("QUEUED", 0)) - kill.jobs_submitted
    not_done = set(row_ids) - stored_at_kill
    expected = len(not_done) - len(in_queue)
    if rerun_billed != expected:
        problems.append(f"the re-run paid {rerun_billed} calls; expected {expected}")
    if queue and rerun_submitted != expected:
        problems.append(f"the re-run submitted {rerun_submitted} jobs; expected {expected}")
    if stats["billed"] != len(rows) + lost:
        problems.append(f"{stats['billed']} calls billed in all; expected {len(rows) + lost}")
    for marker in ("Traceback", "Error flushing", "| ERROR"):
        if marker in text:
            problems.append(f"the re-run's output has {marker!r}")

    results = results_manifest(text, objects)
    paid_rows = {str(r["id"]) for r in results if float(r.get("cost_usd") or 0) > 0}
    if code == 0:
        if [str(r["id"]) for r in results] != row_ids:
            problems.append("the results manifest does not list every row once, in order")
        failed = [r["id"] for r in results if r.get("status") != "succeeded"]
        if failed:
            problems.append(f"rows not succeeded in the re-run: {failed[:5]}")
        if paid_rows != not_done:
            problems.append(
                f"rows with a cost in the re-run: {sorted(paid_rows)[:5]}..., "
                f"not stored at the kill: {sorted(not_done)[:5]}..."
            )
        cached = {str(r["id"]) for r in results if r.get("cached")}
        if cached != stored_at_kill:
            problems.append(
                f"rows served from storage {sorted(cached)[:5]}... are not the rows stored "
                f"at the kill {sorted(stored_at_kill)[:5]}..."
            )

    final, output_problems = check_outputs(objects, row_ids, expected_endpoints=endpoints)
    problems.extend(output_problems)
    rewritten = [
        row_id
        for row_id, digest in sidecar_digests(objects, final).items()
        if row_id in digests_at_kill and digests_at_kill[row_id] != digest
    ]
    if rewritten:
        problems.append(f"outputs stored before the kill were written again: {rewritten[:5]}")
    final_ids = request_ids(objects, final.sidecars)
    if len(set(final_ids.values())) != len(final_ids) or "None" in final_ids.values():
        problems.append("two rows' sidecars name the same request id, or none")
    resumed = {row for row, rid in records_at_kill.items() if final_ids.get(row) == rid}
    if resumed != set(records_at_kill):
        problems.append(f"pending rows not resumed: {sorted(set(records_at_kill) - resumed)}")
    if final.pending:
        problems.append(f"pending records left after the re-run: {sorted(final.pending)[:5]}")
    if final.set_aside:
        problems.append(f"records set aside: {final.set_aside[:5]}")
    return Outcome(
        rows=len(rows),
        storage=storage,
        mode="queue" if queue else "v1",
        latency_s=emulator.config.latency_s,
        max_concurrency=max_concurrency,
        extra_args=list(extra_args),
        kill_at_billed=kill_at_billed,
        kill=kill,
        stored_at_kill=len(stored_at_kill),
        pending_at_kill=len(in_queue),
        stored_with_record_at_kill=len(at_kill.stored_with_record()),
        orphans_at_kill=len(at_kill.orphans),
        temporaries_at_kill=len(at_kill.temporaries),
        lost=lost,
        rerun_exit=code,
        rerun_s=round(rerun_s, 2),
        rerun_billed=rerun_billed,
        rerun_expected_billed=expected,
        rerun_submitted=rerun_submitted,
        rerun_resumed=len(resumed),
        rerun_paid_rows=len(paid_rows),
        pending_after=sum(len(keys) for keys in final.pending.values()),
        set_aside_after=len(final.set_aside),
        total_billed=stats["billed"],
        problems=problems,
    )


# --- the script ---------------------------------------------------------------------------


@contextlib.contextmanager
def moto_server() -> Iterator[S3Access]:
    """A moto S3 server on 127.0.0.1, on a free port."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Access(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


def prepare_s3(
    s3: S3Access, rows: int, photos: int
) -> tuple[str, str, list[dict[str, Any]], S3Objects]:
    """Bucket, input images, manifest; returns the manifest and output URLs, rows, outputs."""
    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    images = []
    for i, data in enumerate(input_images(photos)):
        key = f"inputs/photo-{i}.png"
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
        images.append(f"s3://{BUCKET}/{key}")
    manifest_rows_ = manifest_rows(rows, images)
    client.put_object(Bucket=BUCKET, Key="manifest.jsonl", Body=jsonl(manifest_rows_))
    output = f"s3://{BUCKET}/out"
    return f"s3://{BUCKET}/manifest.jsonl", output, manifest_rows_, S3Objects(client, BUCKET, "out")


def prepare_local(
    folder: Path, rows: int, photos: int
) -> tuple[str, str, list[dict[str, Any]], LocalObjects]:
    """Input images and manifest in ``folder``; outputs under ``folder/out``."""
    images = []
    for i, data in enumerate(input_images(photos)):
        path = folder / "inputs" / f"photo-{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        images.append(str(path))
    manifest_rows_ = manifest_rows(rows, images)
    manifest = folder / "manifest.jsonl"
    manifest.write_bytes(jsonl(manifest_rows_))
    output = folder / "out"
    return str(manifest), str(output), manifest_rows_, LocalObjects(output)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--photos", type=int, default=8, help="distinct input images")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per call")
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--kill-at", type=float, default=0.5, help="share of rows billed")
    parser.add_argument("--storage", choices=("s3", "local"), default="s3")
    parser.add_argument(
        "--queue",
        action="store_true",
        help="run the batch with --queue (v2): requests in flight at the kill are resumed",
    )
    parser.add_argument(
        "--results", type=Path, help=f"default {RESULTS} ({RESULTS_QUEUE.name} with --queue)"
    )
    parser.add_argument("batch_args", nargs="*", help="after --: more flows.batch options")
    args = parser.parse_args(argv)
    if not 0 < args.kill_at < 1:
        parser.error("--kill-at is a share of the rows, between 0 and 1")
    if args.results is None:
        args.results = RESULTS_QUEUE if args.queue else RESULTS
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crash-resume-")))
        emulator = stack.enter_context(SegmindEmulator(api_key=API_KEY, latency_s=args.latency))
        objects: Objects
        if args.storage == "s3":
            s3 = stack.enter_context(moto_server())
            manifest, output, rows, objects = prepare_s3(s3, args.rows, args.photos)
            env = batch_env(workdir / "prefect-home", emulator.url, s3=s3)
        else:
            manifest, output, rows, objects = prepare_local(workdir, args.rows, args.photos)
            env = batch_env(workdir / "prefect-home", emulator.url, input_roots=[workdir])
        outcome = crash_and_resume(
            emulator=emulator,
            objects=objects,
            manifest=manifest,
            output=output,
            rows=rows,
            env=env,
            workdir=workdir,
            max_concurrency=args.max_concurrency,
            kill_at=args.kill_at,
            queue=args.queue,
            extra_args=args.batch_args,
            storage=args.storage,
        )
    wall = time.monotonic() - started
    kill = outcome.kill
    print(
        f"{outcome.rows} rows ({args.storage}, {outcome.mode}), latency {args.latency} s, "
        f"{args.max_concurrency} in flight, batch args {args.batch_args or 'none'}"
    )
    print(
        f"killed after {kill.after_s:.1f} s: {kill.billed} billed, {kill.in_flight} in flight, "
        f"{kill.requests} requests; {outcome.stored_at_kill} rows stored "
        f"({outcome.orphans_at_kill} images without sidecar, "
        f"{outcome.temporaries_at_kill} temporary objects)"
    )
    if args.queue:
        print(
            f"queue at the kill: {kill.jobs_submitted} jobs submitted (all billed: "
            f"{kill.billed_settled}) = {outcome.stored_at_kill} rows stored + "
            f"{outcome.pending_at_kill} pending records + {outcome.lost} lost (accepted, no "
            f"record yet); {outcome.stored_with_record_at_kill} stored rows still had a record"
        )
        print(
            f"re-run: exit {outcome.rerun_exit} in {outcome.rerun_s:.1f} s, resumed "
            f"{outcome.rerun_resumed} pending requests unpaid, submitted and paid "
            f"{outcome.rerun_submitted} ({outcome.rerun_billed} billed; expected "
            f"{outcome.rerun_expected_billed}), {outcome.stored_at_kill} rows from storage; "
            f"{outcome.pending_after} pending records left"
        )
    else:
        answered_after = kill.billed_settled - kill.billed
        print(
            f"paid and lost: {outcome.lost} = {answered_after} in flight at the kill "
            f"(answered and billed to a dead client) + {outcome.lost - answered_after} "
            "answered before it but not stored whole"
        )
        print(
            f"re-run: exit {outcome.rerun_exit} in {outcome.rerun_s:.1f} s, paid "
            f"{outcome.rerun_billed} calls ({outcome.rerun_expected_billed} rows were not "
            f"done), {outcome.rows - outcome.rerun_paid_rows} rows from storage"
        )
    print(
        f"total billed {outcome.total_billed} = {outcome.rows} rows + "
        f"{outcome.total_billed - outcome.rows} lost; wall {wall:.1f} s"
    )
    for problem in outcome.problems:
        print(f"problem: {problem}")
    print("PASS" if outcome.passed else "FAIL")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    record = {
        **asdict(outcome),
        "passed": outcome.passed,
        "wall_s": round(wall, 2),
        "commit": git_commit(),
    }
    args.results.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
