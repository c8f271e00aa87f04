"""Throughput against the physical limit, per-item overhead, memory and cost, in one run.

Run: ``python -m bench.benchmark`` (about 7 minutes at the defaults: N=200,
L=1 s, C=8). Everything runs on loopback: two emulators started the way users
start them (``python -m emulator``), one with latency L and at most C
generations in flight (more answer 429), one with no latency; a file server
for the input photo; a temporary Prefect server that every flow run reports to,
as on a worker. Measured:

1. N p-image-edit edits (1024x1024 PNG answers) as (a) the API pages' serial
   ``requests.post`` loop, (b) the official ``segmind`` SDK's ``run_sync`` in a
   pool of C threads, (c) our batch flow with ``max_concurrency`` C (and, as
   a worker runs it, holding slots of a shared limit of C); each as a ratio to
   the bound ceil(N/C) x L. Every call sends the same body and saves the image.
2. Per-item overhead: our task against a bare httpx call, no latency (`bench.task_vs_httpx`).
3. Peak RSS of the batch flow process at two batch sizes (`bench.batch_once`).
4. Billed calls and USD, from the emulator's counters, for the first run, an
   identical re-run and a re-run with every tenth row's prompt changed.

Writes ``bench/results/latest.json`` and ``latest.png`` (or ``--results``), and
prints the README's table and whether each target was met.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.chart import draw_chart
from bench.provenance import git_commit

KEY = "bench-key"
SLUG = "p-image-edit"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO / "bench" / "results" / "latest.json"
SERVER_START_TIMEOUT_S = 120.0
CHANGED_EVERY = 10  # the 10% re-run changes the prompt of every tenth row


# --- processes on loopback -------------------------------------------------------------


def _first_line(process: subprocess.Popen[str], what: str) -> str:
    """The server's first stdout line (its address), waiting at most `SERVER_START_TIMEOUT_S`."""
    line = ""
    if process.stdout is not None:
        ready, _, _ = select.select([process.stdout], [], [], SERVER_START_TIMEOUT_S)
        line = process.stdout.readline().strip() if ready else ""
    if not line:
        process.kill()
        raise RuntimeError(f"{what} did not start (exit code {process.wait()})")
    return line


@contextmanager
def _process(argv: list[str], env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[str]]:
    """A server process; its first stdout line is read, its log (stderr) goes to a file.

    An unread stderr pipe would fill up with request logs and block the server.
    """
    with log.open("w") as log_file:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=log_file, text=True, env=dict(env)
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def emulator(
    env: Mapping[str, str], log: Path, *, latency_s: float, max_concurrency: int
) -> Iterator[str]:
    """``python -m emulator`` on a free loopback port; yields its URL."""
    argv = [
        sys.executable,
        "-m",
        "emulator",
        "--port",
        "0",
        "--api-key",
        KEY,
        "--credits",
        "100000",
        "--latency",
        str(latency_s),
        "--max-concurrency",
        str(max_concurrency),
    ]
    with _process(argv, {**env, "PYTHONUNBUFFERED": "1"}, log) as process:
        yield _first_line(process, "the emulator").removeprefix("emulator listening on ")


@contextmanager
def file_server(folder: Path, env: Mapping[str, str], log: Path) -> Iterator[str]:
    """``python -m http.server`` for ``folder`` on a free loopback port; yields its URL."""
    argv = [
        sys.executable,
        "-u",
        "-m",
        "http.server",
        "0",
        "--bind",
        "127.0.0.1",
        "--directory",
        str(folder),
    ]
    with _process(argv, env, log) as process:
        port = _first_line(process, "the file server").split(" port ")[1].split()[0]
        yield f"http://127.0.0.1:{port}"


@contextmanager
def prefect_server(env: dict[str, str]) -> Iterator[str]:
    """A temporary Prefect server (as ``python -m flows.batch`` starts one); yields its API URL."""
    os.environ.update(env)  # PREFECT_HOME before Prefect reads its settings
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=int(SERVER_START_TIMEOUT_S))
    try:
        yield server.api_url
    finally:
        server.stop()


def emulator_stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{url}/_emulator/stats", timeout=30).json()
    return stats


def emulator_reset(url: str) -> None:
    httpx.post(f"{url}/_emulator/reset", timeout=30).raise_for_status()


# --- the three ways to run N edits -----------------------------------------------------


def request_body(
    image_url: str, index: int, prompt: str = "a poster of the photo"
) -> dict[str, Any]:
    """The body every variant sends for row ``index``: a 1024x1024 PNG answer."""
    return {"prompt": prompt, "image_urls": [image_url], "aspect_ratio": "1:1", "seed": index}


def run_serial(emulator_url: str, image_url: str, n: int, folder: Path) -> float:
    """The API pages' pattern: ``requests.post`` in a loop, each image saved."""
    import requests

    folder.mkdir(parents=True)
    started = time.perf_counter()
    for i in range(n):
        response = requests.post(
            f"{emulator_url}/v1/{SLUG}",
            json=request_body(image_url, i),
            headers={"x-api-key": KEY},
            timeout=120,
        )
        response.raise_for_status()
        (folder / f"{i}.png").write_bytes(response.content)
    return time.perf_counter() - started


def run_sdk_threadpool(emulator_url: str, image_url: str, n: int, c: int, folder: Path) -> float:
    """The official SDK's ``run_sync`` in a pool of ``c`` threads, each image saved."""
    import segmind

    folder.mkdir(parents=True)
    client = segmind.SegmindClient(api_key=KEY, base_url=f"{emulator_url}/v1")

    def one(i: int) -> None:
        response = client.run_sync(SLUG, **request_body(image_url, i))
        (folder / f"{i}.png").write_bytes(response.content)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=c) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - started


def write_manifest(
    path: Path, image_url: str, n: int, *, seed_offset: int = 0, changed_every: int | None = None
) -> int:
    """A JSONL manifest of ``n`` rows; returns how many rows have a changed prompt."""
    lines, changed = [], 0
    for i in range(n):
        prompt = "a poster of the photo"
        if changed_every and i % changed_every == 0:
            prompt, changed = "a poster of the photo, at night", changed + 1
        body = request_body(image_url, seed_offset + i, prompt)
        lines.append(
            json.dumps(
                {
                    "id": f"row-{i:05d}",
                    "endpoint": SLUG,
                    "prompt": body["prompt"],
                    "images": body["image_urls"],
                    "params": {"aspect_ratio": body["aspect_ratio"], "seed": body["seed"]},
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return changed


def run_child(module: str, *args: str, env: Mapping[str, str]) -> dict[str, Any]:
    """``python -m module args`` in a process of its own; returns the JSON line it printed last."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=dict(env),
        cwd=REPO,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed:\n{done.stderr[-4000:]}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def run_batch_child(env: Mapping[str, str], manifest: Path, output: Path, c: int) -> dict[str, Any]:
    """`bench.batch_once`: the batch flow once, in a process of its own."""
    return run_child(
        "bench.batch_once",
        str(manifest),
        "--output",
        str(output),
        "--max-concurrency",
        str(c),
        env=env,
    )


def billed(emulator_url: str) -> tuple[int, float, int]:
    """Billed calls, USD spent and 429 answers since the last reset."""
    stats = emulator_stats(emulator_url)
    return int(stats["billed"]), float(stats["spent_usd"]), int(stats["by_status"].get("429", 0))


# --- the run -----------------------------------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=200, help="edits per timed run (200)")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per call, L (1)")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight, C (8)")
    parser.add_argument(
        "--rss-rows",
        type=int,
        nargs=2,
        default=[100, 1000],
        help="the two batch sizes whose peak RSS is compared (100 1000)",
    )
    parser.add_argument("--overhead-calls", type=int, default=60, help="calls per side (60)")
    parser.add_argument(
        "--no-shared-limit",
        action="store_true",
        help="skip the batch run that holds slots of a shared limit",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        help="JSON to write; the chart goes beside it as .png",
    )
    return parser.parse_args(argv)


def _photo(folder: Path) -> None:
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 140, 200)).save(buffer, format="JPEG")
    (folder / "photo.jpg").write_bytes(buffer.getvalue())


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    n, latency, c = args.n, args.latency, args.concurrency
    # Only what is set below: a user's SEGMIND_QUEUE, SEGMIND_RATE_LIMIT or Prefect
    # settings would silently change what is measured.
    for key in [k for k in os.environ if k.startswith(("PREFECT_", "SEGMIND_"))]:
        del os.environ[key]
    base_env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "SEGMIND_API_KEY": KEY,
        # The photo comes from the loopback file server, the manifests from ``work``.
        "SEGMIND_INPUT_ALLOW_NETWORKS": "127.0.0.1/32",
        "SEGMIND_INPUT_ROOTS": str(work),
        # Calls hold no slot of a shared limit: max_concurrency is the bound (as in
        # ``python -m flows.batch`` on a temporary server).
        "SEGMIND_CONCURRENCY_LIMIT": "",
        "PYTHONPATH": str(REPO),
    }
    _photo(work / "www")
    results: dict[str, Any] = {
        "n": n,
        "latency_s": latency,
        "concurrency": c,
        "bound_s": math.ceil(n / c) * latency,
    }
    with ExitStack() as stack:
        www = stack.enter_context(file_server(work / "www", base_env, work / "www.log"))
        image_url = f"{www}/photo.jpg"
        slow = stack.enter_context(
            emulator(base_env, work / "emulator.log", latency_s=latency, max_concurrency=c)
        )
        fast = stack.enter_context(
            emulator(base_env, work / "emulator-l0.log", latency_s=0.0, max_concurrency=c)
        )
        api_url = stack.enter_context(prefect_server(base_env))
        env = {**base_env, "PREFECT_API_URL": api_url}
        print(
            f"servers up: emulator {slow} (L={latency} s, C={c}), {fast} (L=0), Prefect {api_url}"
        )

        emulator_reset(slow)
        results["serial_s"] = run_serial(slow, image_url, n, work / "serial")
        results["serial_billed"], _, results["serial_429"] = billed(slow)
        print(f"(a) serial requests.post: {results['serial_s']:.2f} s")

        emulator_reset(slow)
        results["sdk_threadpool_s"] = run_sdk_threadpool(slow, image_url, n, c, work / "sdk")
        results["sdk_billed"], _, results["sdk_429"] = billed(slow)
        print(f"(b) segmind SDK, {c} threads: {results['sdk_threadpool_s']:.2f} s")

        slow_env = {**env, "SEGMIND_BASE_URL": slow}
        # Not timed: the first flow run on a new server also registers the flow and its
        # blocks (about 0.6 s), once per server, as the SDK's import is once per process.
        warm_up = work / "manifest-warm-up.jsonl"
        write_manifest(warm_up, image_url, 1, seed_offset=3 * 10**6)
        warmed = run_batch_child(slow_env, warm_up, work / "warm-up-out", c)
        results["rss_mb_n1"] = warmed["rss_mb"]
        manifest = work / "manifest.jsonl"
        write_manifest(manifest, image_url, n)
        emulator_reset(slow)
        first = run_batch_child(slow_env, manifest, work / "flow-out", c)
        results["flow_s"] = first["flow_s"]
        results["flow_cpu_s"] = first["cpu_s"]
        results["first_run_billed"], results["first_run_usd"], results["flow_429"] = billed(slow)
        print(
            f"(c) batch flow, max_concurrency {c}: {first['flow_s']:.2f} s, "
            f"billed {results['first_run_billed']}"
        )

        emulator_reset(slow)
        again = run_batch_child(slow_env, manifest, work / "flow-out", c)
        results["rerun_s"] = again["flow_s"]
        results["rerun_billed"], results["rerun_usd"], _ = billed(slow)
        print(f"    identical re-run: {again['flow_s']:.2f} s, billed {results['rerun_billed']}")

        changed_manifest = work / "manifest-10pct.jsonl"
        changed = write_manifest(changed_manifest, image_url, n, changed_every=CHANGED_EVERY)
        emulator_reset(slow)
        tenth = run_batch_child(slow_env, changed_manifest, work / "flow-out", c)
        results["rerun_10pct_changed_rows"] = changed
        results["rerun_10pct_s"] = tenth["flow_s"]
        results["rerun_10pct_billed"], results["rerun_10pct_usd"], _ = billed(slow)
        print(
            f"    re-run with {changed} rows changed: {tenth['flow_s']:.2f} s, "
            f"billed {results['rerun_10pct_billed']}"
        )

        if not args.no_shared_limit:
            from prefect import get_client
            from prefect.settings import PREFECT_API_URL, temporary_settings

            from tasks.concurrency import ensure_concurrency_limit

            with (
                temporary_settings({PREFECT_API_URL: api_url}),
                get_client(sync_client=True) as client,
            ):
                ensure_concurrency_limit(client, c)
            shared_manifest = work / "manifest-shared.jsonl"
            write_manifest(shared_manifest, image_url, n, seed_offset=10**6)
            emulator_reset(slow)
            shared = run_batch_child(
                {**slow_env, "SEGMIND_CONCURRENCY_LIMIT": "segmind"},
                shared_manifest,
                work / "flow-shared-out",
                c,
            )
            results["flow_shared_limit_s"] = shared["flow_s"]
            results["flow_shared_limit_slots"] = shared["shared_slots"]
            results["flow_shared_limit_billed"], _, _ = billed(slow)
            print(
                f"(c') batch flow holding slots of a shared limit of {c}: {shared['flow_s']:.2f} s"
            )

        fast_env = {**env, "SEGMIND_BASE_URL": fast}
        measured = run_child(
            "bench.task_vs_httpx",
            "--image-url",
            image_url,
            "--calls",
            str(args.overhead_calls),
            "--output",
            str(work / "overhead-out"),
            env=fast_env,
        )
        results.update({k: v for k, v in measured.items() if k != "calls"})
        results["overhead_calls"] = measured["calls"]
        print(
            f"per-item overhead: task {measured['task_ms_median']:.1f} ms, bare httpx "
            f"{measured['httpx_ms_median']:.1f} ms (medians)"
        )

        results["rss_rows"] = list(args.rss_rows)
        for label, rows in zip(("rss_mb_n100", "rss_mb_n1000"), args.rss_rows, strict=True):
            rss_manifest = work / f"manifest-rss-{rows}.jsonl"
            write_manifest(rss_manifest, image_url, rows, seed_offset=2 * 10**6)
            emulator_reset(fast)
            run = run_batch_child(fast_env, rss_manifest, work / f"rss-out-{rows}", c)
            if run["succeeded"] != rows:
                raise RuntimeError(f"the {rows}-row batch had {rows - run['succeeded']} failures")
            results[label] = run["rss_mb"]
            results[f"{label}_flow_s"] = run["flow_s"]
            print(f"peak RSS of the batch flow, {rows} rows: {run['rss_mb']:.0f} MB")
    return results


def targets(r: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """The issue's targets, each with whether the run met it."""
    return [
        (
            f"flow within 1.15x the bound ({r['flow_s'] / r['bound_s']:.3f}x)",
            r["flow_s"] <= 1.15 * r["bound_s"],
        ),
        (
            f"flow within 5% of the SDK thread pool ({r['flow_s'] / r['sdk_threadpool_s']:.3f}x)",
            r["flow_s"] <= 1.05 * r["sdk_threadpool_s"],
        ),
        (
            f"overhead at most 30 ms per item ({r['overhead_ms_median']:.1f} ms)",
            r["overhead_ms_median"] <= 30.0,
        ),
        (
            f"RSS of the larger batch at most 1.2x ({r['rss_mb_n1000'] / r['rss_mb_n100']:.3f}x)",
            r["rss_mb_n1000"] <= 1.2 * r["rss_mb_n100"],
        ),
        (f"an identical re-run bills 0 ({r['rerun_billed']})", r["rerun_billed"] == 0),
        (
            f"the 10% re-run bills the changed rows only ({r['rerun_10pct_billed']} of "
            f"{r['rerun_10pct_changed_rows']})",
            r["rerun_10pct_billed"] == r["rerun_10pct_changed_rows"],
        ),
    ]


def table(r: Mapping[str, Any]) -> str:
    """The README's table, in Markdown."""
    bound = r["bound_s"]
    rows = [
        ("bound ceil(N/C) x L", f"{bound:.1f} s", "1.00"),
        (
            "(a) serial `requests.post` loop",
            f"{r['serial_s']:.1f} s",
            f"{r['serial_s'] / bound:.2f}",
        ),
        (
            f"(b) `segmind` SDK `run_sync`, {r['concurrency']} threads",
            f"{r['sdk_threadpool_s']:.1f} s",
            f"{r['sdk_threadpool_s'] / bound:.2f}",
        ),
        (
            f"(c) batch flow, `max_concurrency` {r['concurrency']}",
            f"{r['flow_s']:.1f} s",
            f"{r['flow_s'] / bound:.2f}",
        ),
    ]
    if r.get("flow_shared_limit_s") is not None:
        rows.append(
            (
                "(c) holding slots of a shared limit, as on a worker",
                f"{r['flow_shared_limit_s']:.1f} s",
                f"{r['flow_shared_limit_s'] / bound:.2f}",
            )
        )
    lines = [
        f"N={r['n']} p-image-edit edits, L={r['latency_s']:g} s, C={r['concurrency']}:",
        "",
        "| run | wall time | / bound |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "| measure | value |",
        "|---|---|",
        "| per-item overhead of the task over bare httpx (median, L=0) | "
        f"{r['overhead_ms_median']:.1f} ms "
        f"({r['task_ms_median']:.1f} vs {r['httpx_ms_median']:.1f} ms) |",
        f"| peak RSS of the batch flow, N={r['rss_rows'][0]} / N={r['rss_rows'][1]} | "
        f"{r['rss_mb_n100']:.0f} / {r['rss_mb_n1000']:.0f} MB "
        f"({r['rss_mb_n1000'] / r['rss_mb_n100']:.2f}x) |",
        f"| billed: first run / identical re-run / {r['rerun_10pct_changed_rows']} rows changed | "
        f"{r['first_run_billed']} / {r['rerun_billed']} / {r['rerun_10pct_billed']} calls "
        f"({r['first_run_usd']:.2f} / {r['rerun_usd']:.2f} / {r['rerun_10pct_usd']:.2f} USD) |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    # Stopped with SIGTERM, still stop the servers it started (the ``finally`` blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    started = time.perf_counter()
    try:
        results = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    results["commit"] = git_commit()
    results["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["benchmark_s"] = round(time.perf_counter() - started, 1)
    results["bound_ratios"] = {
        key: round(results[key] / results["bound_s"], 3)
        for key in ("serial_s", "sdk_threadpool_s", "flow_s", "flow_shared_limit_s")
        if results.get(key) is not None
    }
    results["flow_over_sdk"] = round(results["flow_s"] / results["sdk_threadpool_s"], 3)
    met = targets(results)
    results["targets"] = {text: ok for text, ok in met}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    chart = args.results.with_suffix(".png")
    draw_chart(results, chart)
    print()
    print(table(results))
    print()
    for text, ok in met:
        print(f"{'met   ' if ok else 'MISSED'} {text}")
    print(f"\nwrote {args.results} and {chart} ({results['benchmark_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
