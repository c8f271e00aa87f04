"""Crash and resume: kill -9 a batch half-way, run it again, and check what was paid and stored.

Run: ``python bench/crash_resume.py [--rows 100] [--latency 0.5] [--max-concurrency 4]
[--kill-at 0.5] [--storage s3|local] [--in-flight-resumed] [-- EXTRA BATCH ARGS]``.

An in-process emulator answers every call after ``--latency`` seconds; a moto
S3 server on 127.0.0.1 holds the input images, the manifest and the outputs
(``--storage local``: a temporary folder instead). The script runs
``python -m flows.batch MANIFEST --output URL`` as a user would, in its own
process group, with no ``PREFECT_API_URL`` (so the command starts its own
temporary Prefect server). Once the emulator has billed ``--kill-at`` of the
rows, it sends SIGKILL to the whole group (the flow-run process and its
server), then runs the same command again, in the same Prefect home, to the
end.

What is checked: the re-run exits 0 and reports every row succeeded; every row
has exactly one image and one sidecar under its id (no time-stamped copy), the
image decodes and matches the sidecar's sha256; no image without a sidecar, no
temporary ``.part`` object; the outputs stored before the kill were not
written again; the re-run paid exactly for the rows that had no sidecar when
the killed run's last write had landed, and nothing else.

The calls in flight at the kill were answered and billed by the emulator after
their client had died, so their images were lost: the script measures them
(``lost_in_flight``), and total billed = rows + lost_in_flight. With
``--in-flight-resumed`` (for a mode that keeps the request ids of submitted
jobs, e.g. Segmind's v2 queue, passed on after ``--``), nothing may be lost:
total billed = rows.

Prints the numbers and PASS or FAIL; exits 1 on failure; writes
``bench/results/crash_resume.json``. The pieces are functions that
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

from emulator import SegmindEmulator  # noqa: E402 - after the path fix above

API_KEY = "crash-resume-key-not-secret"
RESULTS = REPO / "bench" / "results" / "crash_resume.json"
BUCKET = "crash-resume"
SIDECAR_SUFFIX = ".json"
IMAGE_SUFFIXES = (".png", ".jpg")
POLL_S = 0.01
"""Interval of every condition polled here (emulator stats, a process group)."""

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
        orphans: Images with no sidecar beside them (a writer that did not finish).
        temporaries: Temporary or partial objects (``.part``).
        strays: Anything else in the outputs' day folders.
        other: Keys outside them (Prefect's cache records, results manifests...).
    """

    images: dict[str, list[str]] = field(default_factory=dict)
    sidecars: dict[str, list[str]] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def stored(self) -> set[str]:
        """Row ids with a sidecar: done, as the product itself decides (`OutputStore.load`)."""
        return {row_id for row_id, keys in self.sidecars.items() if keys}


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
) -> dict[str, str]:
    """The environment of ``python -m flows.batch``: this one without Prefect, Segmind or AWS.

    No ``PREFECT_API_URL``: the command starts its own temporary Prefect server,
    whose database lives in ``home`` (and may take up to 120 s to start). No
    shared concurrency limit. Local input images may be read from
    ``input_roots`` (``SEGMIND_INPUT_ROOTS``).
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
    if input_roots:
        env["SEGMIND_INPUT_ROOTS"] = os.pathsep.join(str(root) for root in input_roots)
    if s3 is not None:
        env.update(s3.env())
    return env


def batch_command(
    manifest: str, output: str, *, max_concurrency: int, extra_args: Sequence[str] = ()
) -> list[str]:
    """``python -m flows.batch MANIFEST --output OUTPUT ...``; ``extra_args`` pick a mode."""
    return [
        sys.executable,
        "-m",
        "flows.batch",
        manifest,
        "--output",
        output,
        "--max-concurrency",
        str(max_concurrency),
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
        in_flight: Calls in flight then (the emulator still answers and bills them).
        requests: Requests received then.
        billed_settled: Billed once every call in flight had ended.
        exited_early: The command ended on its own before the condition held.
    """

    pid: int
    after_s: float
    billed: int
    in_flight: int
    requests: int
    billed_settled: int
    exited_early: bool = False


@contextlib.contextmanager
def process_group(
    command: Sequence[str], env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in a new session (its own process group); kill the group on the way out."""
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
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

    Returns once no process of the group is left and the emulator has ended every
    call that was in flight (and billed those it answered).
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
        # Read after the kill: no call can start any more, and every call started is
        # counted in ``billed`` or ``in_flight``.
        at_kill = emulator.stats()
        after_s = time.monotonic() - started
    settled = wait_for(
        lambda: (stats := emulator.stats())["in_flight"] == 0 and stats,
        timeout=60,
        what="the calls in flight at the kill to end",
    )
    return KillReport(
        pid=process.pid,
        after_s=round(after_s, 2),
        billed=at_kill["billed"],
        in_flight=at_kill["in_flight"],
        requests=at_kill["requests"],
        billed_settled=settled["billed"],
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
        kill_at_billed: Calls billed that triggered the kill.
        kill: The emulator's counters at the kill.
        stored_at_kill: Rows with a sidecar once the killed run's last write landed.
        orphans_at_kill: Images without a sidecar then (their writer was killed between).
        temporaries_at_kill: Temporary objects then (``.part``).
        lost_in_flight: Calls paid by the killed run whose output was not stored:
            in flight at the kill, or answered and not yet stored whole.
        rerun_billed: Calls the re-run paid.
        rerun_expected_billed: What it should have paid: the rows not stored at the
            kill (less ``lost_in_flight`` when in-flight calls are resumed).
        rerun_paid_rows: Rows with a cost in the re-run's results manifest.
        total_billed: Calls billed by both runs.
    """

    rows: int
    storage: str
    latency_s: float
    max_concurrency: int
    extra_args: list[str]
    kill_at_billed: int
    kill: KillReport
    stored_at_kill: int
    orphans_at_kill: int
    temporaries_at_kill: int
    lost_in_flight: int
    rerun_exit: int
    rerun_s: float
    rerun_billed: int
    rerun_expected_billed: int
    rerun_paid_rows: int
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
    extra_args: Sequence[str] = (),
    in_flight_resumed: bool = False,
    storage: str = "s3",
    timeout: float = 300.0,
) -> Outcome:
    """Run the batch, kill it after ``kill_at`` of the rows are billed, run it again, check.

    The emulator must be fresh (its counters at zero) and the output location empty.
    """
    row_ids = [str(row["id"]) for row in rows]
    endpoints = {str(row["id"]): str(row["endpoint"]) for row in rows}
    command = batch_command(
        manifest, output, max_concurrency=max_concurrency, extra_args=extra_args
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
    # Every process of the run is gone and its calls have ended: what is stored now
    # is all the killed run left.
    at_kill = take_inventory(objects, row_ids)
    stored_at_kill = at_kill.stored()
    digests_at_kill = sidecar_digests(objects, at_kill)
    if kill.exited_early:
        problems.append("the command ended before the kill: the kill was not mid-batch")
    if not 0 < len(stored_at_kill) < len(rows):
        problems.append(f"{len(stored_at_kill)} of {len(rows)} rows stored at the kill")
    lost = kill.billed_settled - len(stored_at_kill)
    # A call paid and not stored was in flight, or answered and being stored, at the kill.
    if not 0 <= lost <= max_concurrency:
        problems.append(f"{lost} calls paid and not stored; at most {max_concurrency} possible")

    code, text, rerun_s = run_to_end(command, env, log=workdir / "rerun.log", timeout=timeout)
    if code != 0:
        problems.append(f"the re-run exited {code}: {text[-2000:]}")
    stats = emulator.stats()
    rerun_billed = stats["billed"] - kill.billed_settled
    not_done = len(rows) - len(stored_at_kill)
    expected = not_done - (lost if in_flight_resumed else 0)
    if rerun_billed != expected:
        problems.append(f"the re-run paid {rerun_billed} calls; {expected} rows were not done")
    total_expected = len(rows) + (0 if in_flight_resumed else lost)
    if stats["billed"] != total_expected:
        problems.append(f"{stats['billed']} calls billed in all; expected {total_expected}")
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
        not_stored = set(row_ids) - stored_at_kill
        if paid_rows - not_stored:
            problems.append(
                f"the re-run paid again for stored rows: {sorted(paid_rows - not_stored)[:5]}"
            )
        if not in_flight_resumed and paid_rows != not_stored:
            problems.append(f"the re-run did not pay for {sorted(not_stored - paid_rows)[:5]}")
        cached = {str(r["id"]) for r in results if r.get("cached")}
        if not stored_at_kill <= cached:
            problems.append(
                f"stored rows not served from storage: {sorted(stored_at_kill - cached)[:5]}"
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
    return Outcome(
        rows=len(rows),
        storage=storage,
        latency_s=emulator.config.latency_s,
        max_concurrency=max_concurrency,
        extra_args=list(extra_args),
        kill_at_billed=kill_at_billed,
        kill=kill,
        stored_at_kill=len(stored_at_kill),
        orphans_at_kill=len(at_kill.orphans),
        temporaries_at_kill=len(at_kill.temporaries),
        lost_in_flight=lost,
        rerun_exit=code,
        rerun_s=round(rerun_s, 2),
        rerun_billed=rerun_billed,
        rerun_expected_billed=expected,
        rerun_paid_rows=len(paid_rows),
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
        "--in-flight-resumed",
        action="store_true",
        help="expect the calls in flight at the kill to be resumed, not paid again",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("batch_args", nargs="*", help="after --: more flows.batch options")
    args = parser.parse_args(argv)
    if not 0 < args.kill_at < 1:
        parser.error("--kill-at is a share of the rows, between 0 and 1")
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
            extra_args=args.batch_args,
            in_flight_resumed=args.in_flight_resumed,
            storage=args.storage,
        )
    wall = time.monotonic() - started
    kill = outcome.kill
    print(
        f"{outcome.rows} rows ({args.storage}), latency {args.latency} s, "
        f"{args.max_concurrency} in flight, batch args {args.batch_args or 'none'}"
    )
    print(
        f"killed after {kill.after_s:.1f} s: {kill.billed} billed, {kill.in_flight} in flight, "
        f"{kill.requests} requests; {outcome.stored_at_kill} rows stored "
        f"({outcome.orphans_at_kill} images without sidecar, "
        f"{outcome.temporaries_at_kill} temporary objects)"
    )
    answered_after = kill.billed_settled - kill.billed
    print(
        f"paid and lost: {outcome.lost_in_flight} = {answered_after} in flight at the kill "
        f"(answered and billed to a dead client) + {outcome.lost_in_flight - answered_after} "
        "answered before it but not stored whole"
    )
    print(
        f"re-run: exit {outcome.rerun_exit} in {outcome.rerun_s:.1f} s, paid "
        f"{outcome.rerun_billed} calls ({outcome.rerun_expected_billed} rows were not done), "
        f"{outcome.rows - outcome.rerun_paid_rows} rows from storage"
    )
    print(
        f"total billed {outcome.total_billed} = {outcome.rows} rows + "
        f"{outcome.total_billed - outcome.rows} lost; wall {wall:.1f} s"
    )
    for problem in outcome.problems:
        print(f"problem: {problem}")
    print("PASS" if outcome.passed else "FAIL")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    record = {**asdict(outcome), "passed": outcome.passed, "wall_s": round(wall, 2)}
    args.results.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
