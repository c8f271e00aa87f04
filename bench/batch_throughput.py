"""Measure the batch flow: rows per second against concurrency, overhead, memory.

Run: ``python bench/batch_throughput.py [--rows 200] [--latency 0.5]
[--concurrency 1 8 32]``. An in-process emulator answers every call after
``--latency`` seconds (the real service takes 7 to 23 s); outputs go to a
temporary folder; Prefect runs on a temporary local server started the way
``python -m flows.batch`` starts it (so no shared limit, unless
``--shared-limit``: then every call holds a slot of ``segmind``, as on a
worker). Each row is a p-image-edit call with a
fresh seed, so every call is paid (nothing from the cache). Prints numbers only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
# The bench's photo lives in a temporary folder: let the input policy read it.
os.environ.setdefault("SEGMIND_INPUT_ROOTS", tempfile.gettempdir())

from PIL import Image

from emulator import SegmindEmulator

KEY = "bench-key"


def write_manifest(folder: Path, rows: int, seed_offset: int) -> Path:
    photo = folder / "photo.jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 140, 200)).save(buffer, format="JPEG")
    photo.write_bytes(buffer.getvalue())
    manifest = folder / f"manifest-{seed_offset}.jsonl"
    lines = [
        json.dumps(
            {
                "id": f"row-{i:05d}",
                "endpoint": "p-image-edit",
                "prompt": "bench",
                "images": [str(photo)],
                "params": {"seed": seed_offset + i},
            }
        )
        for i in range(rows)
    ]
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--shared-limit",
        action="store_true",
        help="hold a slot of the segmind global concurrency limit per call, as workers do",
    )
    args = parser.parse_args()

    started = time.perf_counter()
    from prefect import get_client

    from blocks import ObjectStorage, SegmindCredentials
    from flows.batch import BatchOutcome, _prefect_api, batch, wait_for_task_run_records
    from tasks.concurrency import ensure_concurrency_limit

    print(f"import prefect and the flows: {time.perf_counter() - started:.2f} s")
    folder = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    with SegmindEmulator(api_key=KEY, latency_s=args.latency) as emu:
        credentials = SegmindCredentials(api_key=KEY, base_url=emu.url)
        storage = ObjectStorage(base_url=str(folder / "outputs"))
        started = time.perf_counter()
        with _prefect_api():
            print(f"temporary Prefect server start: {time.perf_counter() - started:.2f} s")
            if args.shared_limit:  # as a worker on a real server would hold it
                os.environ.pop("SEGMIND_CONCURRENCY_LIMIT", None)
                with get_client(sync_client=True) as client:
                    ensure_concurrency_limit(client, max(args.concurrency))
            for concurrency in args.concurrency:
                manifest = write_manifest(folder, args.rows, uuid.uuid4().int % 10**12)
                emu.reset()
                t0 = time.perf_counter()
                state = batch(
                    manifest=str(manifest),
                    storage=storage,
                    credentials=credentials,
                    max_concurrency=concurrency,
                    return_state=True,
                )
                wall = time.perf_counter() - t0
                outcome = state.result()
                if not isinstance(outcome, BatchOutcome):
                    raise RuntimeError(f"the batch did not complete: {state.message}")
                t1 = time.perf_counter()
                flow_run_id = state.state_details.flow_run_id
                if flow_run_id is None:
                    raise RuntimeError("the flow run has no id")
                recorded = wait_for_task_run_records(flow_run_id, outcome.calls, 300)
                recording = time.perf_counter() - t1
                stats = emu.stats()
                ideal = args.rows * args.latency / concurrency
                print(
                    f"concurrency {concurrency:>2}: {args.rows} rows in {wall:6.2f} s "
                    f"({args.rows / wall:6.1f} rows/s; ideal at {args.latency} s latency "
                    f"{ideal:6.2f} s, overhead {(wall - ideal) / args.rows * 1000:5.1f} ms/row); "
                    f"max in flight {stats['max_in_flight']}, billed {stats['billed']}; "
                    f"server caught up on {recorded} task runs {recording:.2f} s later"
                )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
