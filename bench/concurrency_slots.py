"""Measure what the shared ``segmind`` limit costs: how long its slots sit idle.

Run: ``python bench/concurrency_slots.py [--slots 2] [--calls 16] [--latency 1.0]
[--submitted 8] [--processes 1] [--repeat 3]``. A temporary Prefect server (a
real one, in a subprocess) holds a global concurrency limit of ``--slots``.
``--processes`` processes (like workers) share ``--calls`` paid calls; each
process runs ``--submitted`` task runs at a time, each making one call that the
emulator answers after ``--latency`` seconds. With perfect hand-over the calls
take ``calls * latency / slots``; the rest is time a slot sat free while a
task was waiting. Three modes, ``--repeat`` times each: no limit; the limit
held through ``tasks.shared_slots.SharedSlots`` (what the tasks do); the limit
held through Prefect's ``concurrency()`` (what they did before). Prints numbers
only; the emulator's ``max_in_flight`` shows the bound held.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AbstractContextManager
from typing import IO, Any, cast

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))

import io

from PIL import Image
from prefect import flow, get_client
from prefect.concurrency.sync import concurrency
from prefect.settings import PREFECT_API_URL
from prefect.task_runners import ThreadPoolTaskRunner

import tasks.segmind_tasks
from blocks import ObjectStorage, SegmindCredentials
from emulator import SegmindEmulator
from flows.batch import _prefect_api
from tasks import edit_images_with_p_image_edit
from tasks.concurrency import ensure_concurrency_limit, segmind_call_slot

KEY = "bench-key"
LIMIT = "bench-slots"
MODES = ("no limit", "SharedSlots", "Prefect concurrency()")


@flow
def calls(
    photo: bytes, n: int, offset: int, credentials: SegmindCredentials, storage: ObjectStorage
) -> None:
    """``n`` paid calls, all submitted at once (the task runner bounds them)."""
    futures = [
        edit_images_with_p_image_edit.submit(
            "bench", [photo], seed=offset + i, credentials=credentials, storage=storage
        )
        for i in range(n)
    ]
    for future in futures:
        future.result()


def _prefect_slot(limit: str | None, rate_limit: str | None = None, **gate: Any) -> Any:
    """How the tasks held a slot before `SharedSlots`: Prefect's own context manager."""
    if not limit:
        return segmind_call_slot(limit, rate_limit, **gate)

    def slot() -> AbstractContextManager[None]:
        return concurrency(limit, occupy=1, strict=True)

    return slot


def run_calls(mode: str, emulator_url: str, n: int, submitted: int, folder: str) -> float:
    """One process's share: ``n`` calls in ``mode``; returns the wall time."""
    chosen: Any = _prefect_slot if mode == "Prefect concurrency()" else segmind_call_slot
    tasks.segmind_tasks.segmind_call_slot = chosen  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 140, 200)).save(buffer, format="JPEG")
    credentials = SegmindCredentials(
        api_key=KEY, base_url=emulator_url, concurrency_limit=None if mode == "no limit" else LIMIT
    )
    storage = ObjectStorage(base_url=f"{folder}/{uuid.uuid4().hex}")
    started = time.perf_counter()
    calls.with_options(task_runner=ThreadPoolTaskRunner(max_workers=submitted))(  # type: ignore[arg-type]
        buffer.getvalue(), n, uuid.uuid4().int % 10**9, credentials, storage
    )
    return time.perf_counter() - started


def child(args: argparse.Namespace) -> None:
    """A worker-like process: ready, then run on the parent's word."""
    print("ready", flush=True)
    sys.stdin.readline()
    wall = run_calls(args.mode, args.emulator_url, args.calls, args.submitted, args.folder)
    print(f"wall {wall}", flush=True)


def one_round(args: argparse.Namespace, mode: str, emulator_url: str, folder: str) -> float:
    if args.processes == 1:
        return run_calls(mode, emulator_url, args.calls, args.submitted, folder)
    share = args.calls // args.processes
    command = [sys.executable, __file__, "--child", "--mode", mode, "--emulator-url", emulator_url]
    command += ["--calls", str(share), "--submitted", str(args.submitted), "--folder", folder]
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    children = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(args.processes)
    ]
    for process in children:  # wait until each has imported Prefect and is ready
        while cast(IO[str], process.stdout).readline().strip() != "ready":
            pass
    started = time.perf_counter()
    for process in children:
        stdin = cast(IO[str], process.stdin)
        stdin.write("go\n")
        stdin.flush()
    for process in children:
        process.communicate(timeout=600)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--submitted", type=int, default=8)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--emulator-url", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    folder = tempfile.mkdtemp(prefix="bench-slots-")
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    with SegmindEmulator(api_key=KEY, latency_s=args.latency) as emu, _prefect_api():
        with get_client(sync_client=True) as client:
            ensure_concurrency_limit(client, args.slots, name=LIMIT)
        for attempt in range(1, args.repeat + 1):
            for mode in MODES:
                emu.reset()
                wall = one_round(args, mode, emu.url, folder)
                walls[mode].append(wall)
                print(
                    f"run {attempt} {mode:>22}: {wall:6.2f} s, "
                    f"max in flight {emu.stats()['max_in_flight']}",
                    flush=True,
                )
    print(
        f"{args.calls} calls of {args.latency} s; {args.processes} process(es), "
        f"{args.submitted} task runs at a time each; limit of {args.slots} slots"
    )
    for mode in MODES:
        width = args.processes * args.submitted if mode == "no limit" else args.slots
        ideal = args.calls * args.latency / width
        median = statistics.median(walls[mode])
        print(
            f"{mode:>22}: median {median:6.2f} s of {len(walls[mode])} "
            f"(min {min(walls[mode]):.2f}, max {max(walls[mode]):.2f}); ideal {ideal:5.2f} s; "
            f"slots busy {ideal / median:4.0%} of the time"
        )


if __name__ == "__main__":
    main()
