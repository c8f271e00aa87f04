"""What our task adds to one call: the task against a bare httpx call, median ms.

Run by `bench.benchmark` as a child process against an emulator with no
latency: ``python -m bench.task_vs_httpx --image-url URL --calls 60 --output DIR``.
The key, the base URL and Prefect's API come from the environment. Both sides
send the same p-image-edit body (a 1 MP PNG answer) to the same emulator, one
call at a time, alternating so that drift hits both alike; every task call has
a new seed, so each is paid (no cache hit). The bare call only receives the
image; the task also checks the input, keys the cache, writes the image and its
sidecar, and starts and ends a task run (Prefect sends its state events in
the background).

Prints one JSON line: ``httpx_ms_median``, ``task_ms_median``,
``overhead_ms_median`` (the median of each pair's difference, task minus the
bare call before it), the p95s, and ``calls``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import httpx
from prefect import flow

from blocks import ObjectStorage, SegmindCredentials
from tasks import edit_images_with_p_image_edit

WARM_UP_CALLS = 3


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image-url", required=True)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    base_url = os.environ["SEGMIND_BASE_URL"]
    headers = {"x-api-key": os.environ["SEGMIND_API_KEY"]}
    credentials = SegmindCredentials()
    storage = ObjectStorage(base_url=args.output)

    @flow(name="bench-task-vs-httpx")
    def measure(calls: int) -> tuple[list[float], list[float]]:
        bare: list[float] = []
        ours: list[float] = []
        with httpx.Client(timeout=60.0) as client:
            for i in range(WARM_UP_CALLS + calls):
                body = {
                    "prompt": "bench",
                    "image_urls": [args.image_url],
                    "aspect_ratio": "1:1",
                    "seed": i,
                }
                t0 = time.perf_counter()
                response = client.post(f"{base_url}/v1/p-image-edit", json=body, headers=headers)
                response.raise_for_status()
                t1 = time.perf_counter()
                edit_images_with_p_image_edit(
                    "bench",
                    [args.image_url],
                    aspect_ratio="1:1",
                    seed=10**9 + i,
                    credentials=credentials,
                    storage=storage,
                )
                t2 = time.perf_counter()
                if i >= WARM_UP_CALLS:
                    bare.append(t1 - t0)
                    ours.append(t2 - t1)
        return bare, ours

    bare, ours = measure(args.calls)
    bare_ms = [s * 1000 for s in bare]
    ours_ms = [s * 1000 for s in ours]
    print(
        json.dumps(
            {
                "calls": len(bare),
                "httpx_ms_median": round(statistics.median(bare_ms), 2),
                "task_ms_median": round(statistics.median(ours_ms), 2),
                "overhead_ms_median": round(
                    statistics.median(t - b for t, b in zip(ours_ms, bare_ms, strict=True)), 2
                ),
                "httpx_ms_p95": round(_p95(bare_ms), 2),
                "task_ms_p95": round(_p95(ours_ms), 2),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
