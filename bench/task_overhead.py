"""Measure what Prefect and storage add per image: paid calls, cache hits, fixed start-up.

Run: ``python bench/task_overhead.py [--images 40]``. Uses an in-process
emulator with no latency and a ``memory://`` store, so the numbers are the
project's own overhead, not Segmind's generation time. Prints numbers only.
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

from emulator import SegmindEmulator

KEY = "bench-key"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()

    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 140, 200)).save(buffer, format="JPEG")
    photo = buffer.getvalue()

    started = time.perf_counter()
    from prefect import flow

    from blocks import ObjectStorage, SegmindCredentials
    from tasks import edit_images_with_p_image_edit

    print(f"import prefect and the tasks: {time.perf_counter() - started:.2f} s")

    with SegmindEmulator(api_key=KEY) as emu:
        credentials = SegmindCredentials(api_key=KEY, base_url=emu.url)
        storage = ObjectStorage(base_url=f"memory://bench-{uuid.uuid4().hex}")

        @flow
        def run(n: int, offset: int) -> list[float]:
            timings = []
            for i in range(n):
                t0 = time.perf_counter()
                edit_images_with_p_image_edit(
                    "bench", [photo], seed=offset + i, credentials=credentials, storage=storage
                )
                timings.append(time.perf_counter() - t0)
            return timings

        t0 = time.perf_counter()
        run(1, 10_000)
        print(f"first flow run (server start + 1 image): {time.perf_counter() - t0:.2f} s")

        paid = run(args.images, 0)
        cached = run(args.images, 0)
        billed = emu.stats()["billed"]

    def summary(values: list[float]) -> str:
        values = sorted(values)
        return (
            f"median {values[len(values) // 2] * 1000:.0f} ms, "
            f"p95 {values[int(len(values) * 0.95)] * 1000:.0f} ms"
        )

    print(f"paid task call, 640x480 input -> 1184x880 png: {summary(paid)} over {len(paid)}")
    print(f"same call again (served from the cache, nothing paid): {summary(cached)}")
    print(f"billed: {billed} (expected {args.images + 1})")


if __name__ == "__main__":
    main()
