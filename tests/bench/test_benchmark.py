"""``python -m bench.benchmark`` end to end at a small size: the keys, the billing, the chart.

The numbers of a run this small say nothing about speed (the README's table
comes from the full size); what is checked is what must hold at any size:
every key is written, nothing is faster than the latency allows, no call went
over the emulator's cap, an identical re-run bills nothing and the re-run with
changed rows bills exactly those rows.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
N, LATENCY_S, CONCURRENCY = 12, 0.2, 4

REQUIRED_KEYS = {
    "n",
    "latency_s",
    "concurrency",
    "bound_s",
    "serial_s",
    "sdk_threadpool_s",
    "flow_s",
    "overhead_ms_median",
    "rss_mb_n100",
    "rss_mb_n1000",
    "first_run_billed",
    "rerun_billed",
    "rerun_10pct_billed",
}


@pytest.mark.timeout(900)
def test_the_benchmark_writes_its_results_chart_and_table(tmp_path: Path) -> None:
    results_path = tmp_path / "results" / "latest.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.benchmark",
            "--n",
            str(N),
            "--latency",
            str(LATENCY_S),
            "--concurrency",
            str(CONCURRENCY),
            "--rss-rows",
            "8",
            "16",
            "--overhead-calls",
            "4",
            "--results",
            str(results_path),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(results_path.read_text())

    assert set(results) >= REQUIRED_KEYS
    assert (results["n"], results["latency_s"], results["concurrency"]) == (N, LATENCY_S, 4)
    assert results["bound_s"] == pytest.approx(math.ceil(N / CONCURRENCY) * LATENCY_S)
    # Lower bounds set by the emulator's latency: none of the runs can beat them.
    assert results["serial_s"] >= N * LATENCY_S
    assert results["sdk_threadpool_s"] >= results["bound_s"]
    assert results["flow_s"] >= results["bound_s"]
    assert results["flow_shared_limit_s"] >= results["bound_s"]
    # Every variant made its N paid calls, and none went over the cap of C in flight.
    assert results["serial_billed"] == results["sdk_billed"] == N
    assert results["first_run_billed"] == results["flow_shared_limit_billed"] == N
    assert results["sdk_429"] == results["flow_429"] == results["serial_429"] == 0
    # The cache: an identical re-run pays nothing, a changed row pays once.
    assert results["rerun_billed"] == 0
    assert results["rerun_10pct_changed_rows"] == 2  # rows 0 and 10 of 12
    assert results["rerun_10pct_billed"] == 2
    assert results["first_run_usd"] == pytest.approx(0.01 * N)
    assert results["rerun_usd"] == 0
    assert results["rss_rows"] == [8, 16]
    assert 50 < results["rss_mb_n100"] < 4096
    assert results["overhead_calls"] == 4
    assert results["task_ms_median"] > 0
    assert results["httpx_ms_median"] > 0
    assert set(results["targets"])
    assert all(isinstance(v, bool) for v in results["targets"].values())

    with Image.open(results_path.with_suffix(".png")) as chart:
        assert (chart.format, chart.size) == ("PNG", (1500, 560))
    assert "| (c) batch flow, `max_concurrency` 4 |" in done.stdout
    assert "per-item overhead" in done.stdout
