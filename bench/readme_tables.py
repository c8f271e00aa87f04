"""The README's result rows for the fault soak and the crash runs, from their JSON.

``python -m bench.readme_tables`` prints the rows for the results in
``bench/results/``; ``tests/bench/test_readme_tables.py`` checks the README
shows exactly these, so the README never quotes numbers no file backs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SOAK = RESULTS / "fault_soak.json"
CRASH_V1 = RESULTS / "crash_resume.json"
CRASH_QUEUE = RESULTS / "crash_resume_queue.json"

SOAK_HEADER = (
    "| rows | succeeded | requests | billed | faults met | attempts per row | flow time | commit |"
)
CRASH_HEADER = (
    "| mode | killed after | stored at kill | in flight, resumed | paid and lost | "
    "re-run paid | billed in all | re-run time | commit |"
)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def soak_row(soak: dict[str, Any]) -> str:
    faults = soak["faults_injected"]
    met = (
        f"{faults.get('500', 0)} x 500, {faults.get('429', 0)} x 429 "
        f"({soak['429_with_retry_after']} with Retry-After), {faults.get('reset', 0)} resets, "
        f"{faults.get('truncate', 0)} truncated, {faults.get('timeout', 0)} unanswered"
    )
    attempts = ", ".join(f"{k}: {v}" for k, v in soak["attempts_per_row"].items())
    return (
        f"| {soak['rows']} | {soak['rows_succeeded']} | {soak['requests']} | "
        f"{soak['billed']} ({soak['spent_usd']:.2f} USD) | {met} | {attempts} | "
        f"{soak['flow_wall_s']:.0f} s | {soak['commit']} |"
    )


def crash_row(crash: dict[str, Any]) -> str:
    kill = crash["kill"]
    queue = crash["mode"] == "queue"
    orphans = crash["orphans_at_kill"]
    stored = f"{crash['stored_at_kill']}" + (
        f" (+{orphans} image{'s' if orphans != 1 else ''} without sidecar)" if orphans else ""
    )
    if queue:
        killed = f"{kill['after_s']:.1f} s, {kill['jobs_submitted']} submitted"
        resumed = f"{crash['rerun_resumed']} (free)"
        rerun = f"{crash['rerun_billed']} new (+{crash['rerun_resumed']} resumed)"
    else:
        killed = f"{kill['after_s']:.1f} s, {kill['billed']} billed"
        resumed = "none can be"
        rerun = f"{crash['rerun_billed']} (the {crash['rerun_expected_billed']} rows not done)"
    lost = crash["lost"]
    total = f"{crash['total_billed']}" + (f" = {crash['rows']} + {lost}" if lost else "")
    mode = "`--queue`" if queue else "`/v1` (default)"
    return (
        f"| {mode} | {killed} | {stored} | {resumed} | {lost} | {rerun} | {total} | "
        f"{crash['rerun_s']:.1f} s | {crash['commit']} |"
    )


def rows() -> list[str]:
    """Every README row, from the results on disk."""
    return [
        SOAK_HEADER,
        soak_row(load(SOAK)),
        CRASH_HEADER,
        crash_row(load(CRASH_V1)),
        crash_row(load(CRASH_QUEUE)),
    ]


if __name__ == "__main__":
    print("\n".join(rows()))
