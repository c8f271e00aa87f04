"""Measure the emulator: render cost, v1 throughput under concurrency, v2 round trip.

Run: ``python bench/emulator_throughput.py [--requests 200] [--clients 8]``.
Prints numbers only; nothing is asserted. Talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

from emulator import SegmindEmulator
from emulator.render import render_image
from segmind_core.contract import FLUX_OUTPUT_SIZES, OutputFormat

KEY = "bench-key"


def _input_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (1024, 768), (180, 90, 40)).save(buffer, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def bench_render(repeats: int) -> None:
    source = Image.new("RGB", (1024, 768), (180, 90, 40))
    for fmt in OutputFormat:
        timings = []
        for seed in range(repeats):
            started = time.perf_counter()
            render_image(
                slug="flux-kontext-pro",
                prompt="bench",
                seed=seed,
                aspect_ratio="1:1",
                size=FLUX_OUTPUT_SIZES["1:1"],
                output_format=fmt,
                inputs=[source],
                input_bytes=[b"x"],
            )
            timings.append(time.perf_counter() - started)
        print(
            f"render 1024x1024 {fmt.value}: median {statistics.median(timings) * 1000:.1f} ms, "
            f"max {max(timings) * 1000:.1f} ms over {repeats}"
        )


def bench_v1(requests: int, clients: int) -> None:
    body = {"prompt": "bench", "input_image": _input_uri(), "aspect_ratio": "1:1", "seed": 1}
    with (
        SegmindEmulator(api_key=KEY, credits_usd=1_000_000) as emu,
        httpx.Client(
            base_url=emu.url,
            headers={"x-api-key": KEY},
            limits=httpx.Limits(max_connections=clients),
            timeout=60,
        ) as client,
    ):
        latencies: list[float] = []

        def call(_: int) -> None:
            started = time.perf_counter()
            client.post("/v1/flux-kontext-pro", json=body).raise_for_status()
            latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(call, range(requests)))
        elapsed = time.perf_counter() - started
        stats = emu.stats()
    latencies.sort()
    print(
        f"v1 flux-kontext-pro 1024x1024 png, {clients} clients: {requests / elapsed:.1f} req/s, "
        f"p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
        f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:.0f} ms, billed {stats['billed']}"
    )


def bench_v2(requests: int) -> None:
    body = {"prompt": "bench", "image_urls": [_input_uri()], "aspect_ratio": "1:1"}
    with (
        SegmindEmulator(api_key=KEY) as emu,
        httpx.Client(base_url=emu.url, headers={"x-api-key": KEY}, timeout=60) as client,
    ):
        timings = []
        for _ in range(requests):
            started = time.perf_counter()
            submitted = client.post("/v2/p-image-edit", json=body).json()
            while client.get(submitted["status_url"]).json()["status"] != "COMPLETED":
                pass  # busy-poll on purpose: this measures the round trip, not a poll cadence
            output = client.get(submitted["response_url"]).json()["output"]
            client.get(output).raise_for_status()
            timings.append(time.perf_counter() - started)
    print(
        f"v2 p-image-edit submit+poll+result+download: median "
        f"{statistics.median(timings) * 1000:.0f} ms over {requests}"
    )


def bench_start_stop(repeats: int) -> None:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        with SegmindEmulator(api_key=KEY) as emu:
            httpx.get(f"{emu.url}/_emulator/health").raise_for_status()
        timings.append(time.perf_counter() - started)
    print(f"in-process start+first answer+stop: median {statistics.median(timings) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    bench_start_stop(10)
    bench_render(10)
    bench_v1(args.requests, 1)
    bench_v1(args.requests, args.clients)
    bench_v2(max(10, args.requests // 10))


if __name__ == "__main__":
    main()
