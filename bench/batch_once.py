"""Run the batch flow once in this process and print what it took as one JSON line.

Run by `bench.benchmark` as a child process, so that each run's peak RSS is
its own: ``python -m bench.batch_once MANIFEST --output DIR --max-concurrency C``.
Prefect's API, the key, the base URL and the shared limit come from the
environment (``PREFECT_API_URL``, ``SEGMIND_API_KEY``, ``SEGMIND_BASE_URL``,
``SEGMIND_CONCURRENCY_LIMIT``), as on a worker.

Printed keys: ``flow_s`` (the ``batch(...)`` call, start-up of this process
excluded), ``cpu_s`` (this process's CPU time in it), ``calls``, ``succeeded``,
``paid_usd``, ``rss_mb`` (this process's peak resident memory, ``ru_maxrss``),
``import_s``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time

_STARTED = time.perf_counter()

from blocks import ObjectStorage, SegmindCredentials  # noqa: E402 - timed import
from flows.batch import BatchOutcome, batch, wait_for_task_run_records  # noqa: E402
from tasks.concurrency import shared_slots  # noqa: E402

RECORDING_TIMEOUT_S = 300.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    imported = time.perf_counter() - _STARTED
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("manifest")
    parser.add_argument("--output", required=True)
    parser.add_argument("--max-concurrency", type=int, required=True)
    args = parser.parse_args()

    storage = ObjectStorage(base_url=args.output)
    credentials = SegmindCredentials()
    cpu_before = _cpu_s()
    started = time.perf_counter()
    state = batch(
        manifest=args.manifest,
        storage=storage,
        credentials=credentials,
        max_concurrency=args.max_concurrency,
        return_state=True,
    )
    flow_s = time.perf_counter() - started
    cpu_s = _cpu_s() - cpu_before
    outcome = state.result()
    if not isinstance(outcome, BatchOutcome):
        raise SystemExit(f"the batch did not complete: {state.message}")
    # Not timed: the server catches up on the last task runs before the next run starts.
    if state.state_details.flow_run_id is not None:
        wait_for_task_run_records(
            state.state_details.flow_run_id, outcome.calls, RECORDING_TIMEOUT_S
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_mb = peak / 1024 / (1024 if sys.platform == "darwin" else 1)
    limit = credentials.resolved_concurrency_limit()
    # What waiting for the shared limit's slots cost (requests refused, 503s retried...).
    slots = dataclasses.asdict(shared_slots(limit).counters) if limit else None
    print(
        json.dumps(
            {
                "flow_s": round(flow_s, 3),
                "cpu_s": round(cpu_s, 2),
                "import_s": round(imported, 3),
                "calls": outcome.calls,
                "succeeded": outcome.succeeded,
                "rows": outcome.rows,
                "paid_usd": float(outcome.paid_usd),
                "rss_mb": round(peak_mb, 1),
                "shared_slots": slots,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
