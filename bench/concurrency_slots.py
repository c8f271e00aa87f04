"""Measure what the shared ``segmind`` limit costs: how long its slots sit idle.

Run: ``python bench/concurrency_slots.py [--slots 2] [--calls 16] [--latency 1.0]
[--submitted 8]``. A temporary Prefect server (a real one, in a subprocess) holds
a global concurrency limit of ``--slots``; ``--submitted`` task runs at a time
(more than the slots) each make one paid call that the emulator answers after
``--latency`` seconds. With perfect hand-over the calls take
``calls * latency / slots``; the rest is time a slot sat free while a task was
waiting (the server answers 423 with a Retry-After and the client sleeps it).
Prints numbers only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))

import io

from PIL import Image
from prefect import flow, get_client
from prefect.task_runners import ThreadPoolTaskRunner

from blocks import ObjectStorage, SegmindCredentials
from emulator import SegmindEmulator
from flows.batch import _prefect_api
from tasks import edit_images_with_p_image_edit
from tasks.concurrency import ensure_concurrency_limit

KEY = "bench-key"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--submitted", type=int, default=8)
    args = parser.parse_args()

    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 140, 200)).save(buffer, format="JPEG")
    photo = buffer.getvalue()
    folder = tempfile.mkdtemp(prefix="bench-slots-")

    with SegmindEmulator(api_key=KEY, latency_s=args.latency) as emu, _prefect_api():
        with get_client(sync_client=True) as client:
            ensure_concurrency_limit(client, args.slots, name="bench-slots")
        results: dict[str, float] = {}
        for label, limit in (("no limit", None), (f"limit of {args.slots}", "bench-slots")):
            credentials = SegmindCredentials(api_key=KEY, base_url=emu.url, concurrency_limit=limit)
            storage = ObjectStorage(base_url=f"{folder}/{uuid.uuid4().hex}")
            offset = uuid.uuid4().int % 10**9

            emu.reset()
            started = time.perf_counter()
            calls.with_options(
                task_runner=ThreadPoolTaskRunner(max_workers=args.submitted)  # type: ignore[arg-type]
            )(photo, args.calls, offset, credentials, storage)
            wall = time.perf_counter() - started
            stats = emu.stats()
            results[label] = wall
            width = args.submitted if limit is None else min(args.slots, args.submitted)
            ideal = args.calls * args.latency / width
            busy = args.calls * args.latency / (width * wall)
            print(
                f"{label:>12}: {args.calls} calls of {args.latency} s, {args.submitted} submitted "
                f"at a time: {wall:6.2f} s (ideal {ideal:5.2f} s); max in flight "
                f"{stats['max_in_flight']}; slots busy {busy:4.0%} of the time"
            )


if __name__ == "__main__":
    main()
