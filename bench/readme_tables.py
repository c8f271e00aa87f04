"""The README's result rows for the fault soak, crash and infrastructure-fault runs.

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
INFRASTRUCTURE = RESULTS / "infrastructure_faults.json"

SOAK_HEADER = (
    "| rows | succeeded | requests | billed | faults met | attempts per row | flow time | commit |"
)
CRASH_HEADER = (
    "| mode | killed after | stored at kill | in flight, resumed | paid and lost | "
    "re-run paid | billed in all | re-run time | commit |"
)

INFRASTRUCTURE_HEADER = (
    "| fault | began at | stored | with a reason | billed | the run ended | commit |"
)
_FAULT_NAMES = {  # each formatted with the fault's duration in seconds
    "server-restart": "Prefect server stopped, started again on its port and database "
    "(back after {:.1f} s)",
    "flow-run-kill": "flow-run process killed with SIGKILL; a new run of the deployment "
    "{:.1f} s later",
    "s3-outage": "S3 refusing every connection for {:.0f} s",
    "segmind-503": "Segmind answering 503 to everything for {:.0f} s",
}


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


def fault_row(fault: dict[str, Any], commit: str) -> str:
    """One row of the infrastructure-faults table."""
    name = _FAULT_NAMES[fault["fault"]].format(fault["fault_s"])
    stored, billed, lost = fault["stored"], fault["billed"], fault["may_lose"]
    if lost:
        bill = f"{billed} = {stored} + {lost} lost by the kill"
    elif billed > stored:
        bill = f"{billed}: **{billed - stored} paid images lost**"
    else:
        bill = f"{billed}"
    if fault["injected"].get("503"):
        bill += f" ({fault['injected']['503']} answers 503, none billed)"
    state = fault["state"].split("/")[0].capitalize()
    ended = f"{state}, {fault['wall_s']:.1f} s"
    if fault["message"]:
        ended += f': "{fault["message"].split("; results:")[0]}"'
    if fault["crashed"]:
        ended = f"killed run {fault['crashed'].split(':')[0]}; new run {ended}"
    return (
        f"| {name} | {fault['injected_at_billed']} billed | {stored}/{fault['rows']} | "
        f"{fault['with_reason']} | {bill} | {ended} | {commit} |"
    )


def rows() -> list[str]:
    """Every README row, from the results on disk."""
    return [
        SOAK_HEADER,
        soak_row(load(SOAK)),
        CRASH_HEADER,
        crash_row(load(CRASH_V1)),
        crash_row(load(CRASH_QUEUE)),
        INFRASTRUCTURE_HEADER,
        *(fault_row(f, load(INFRASTRUCTURE)["commit"]) for f in load(INFRASTRUCTURE)["faults"]),
    ]


if __name__ == "__main__":
    print("\n".join(rows()))
