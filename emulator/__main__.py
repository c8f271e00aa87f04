"""Command line: ``python -m emulator --port 0 --api-key KEY [options]``.

The first line on stdout is ``emulator listening on http://HOST:PORT``; the
server then runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from pydantic import ValidationError

from emulator.config import EmulatorConfig, FaultKind, parse_fault_spec
from emulator.server import SegmindEmulator

__all__ = ["main"]


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _fault(text: str) -> tuple[FaultKind, float]:
    try:
        return parse_fault_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m emulator",
        description="A local Segmind-compatible server. No model runs: outputs are "
        "deterministic stand-in images.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SEGMIND_EMULATOR_API_KEY"),
        help="the key to accept in x-api-key (default: $SEGMIND_EMULATOR_API_KEY)",
    )
    parser.add_argument("--credits", type=_decimal, default=Decimal("100"), help="balance in USD")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per generation")
    parser.add_argument(
        "--latency-jitter", type=float, default=0.0, help="up to this many extra seconds"
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=None, help="generations in flight; more get 429"
    )
    parser.add_argument("--rpm", type=int, default=None, help="generation requests per minute")
    parser.add_argument(
        "--retry-after", type=int, default=None, help="add Retry-After: S to 429 answers"
    )
    parser.add_argument(
        "--retry-after-rate",
        type=float,
        default=1.0,
        help="share of 429 answers that carry Retry-After (default 1)",
    )
    parser.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="CODE=RATE",
        help="inject a fault (429, 500, 502, 503, 504, reset, truncate, timeout); repeatable",
    )
    parser.add_argument("--fault-seed", type=int, default=None, help="seed for repeatable faults")
    parser.add_argument(
        "--timeout-hold",
        type=float,
        default=300.0,
        help="longest a 'timeout' fault holds a connection unanswered (seconds)",
    )
    parser.add_argument(
        "--result-ttl", type=float, default=3600.0, help="seconds v2 results stay available"
    )
    parser.add_argument(
        "--allow-remote-inputs",
        action="store_true",
        help="fetch input URLs on hosts other than loopback",
    )
    parser.add_argument(
        "--bill-cut-answers",
        action="store_true",
        help="bill a generation whose answer a 'truncate' fault cut short, as the service would",
    )
    parser.add_argument(
        "--queue-read-faults",
        action="store_true",
        help="draw faults for v2 status polls, result reads and output downloads too",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until interrupted; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("--api-key is required (or set SEGMIND_EMULATOR_API_KEY)")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    faults: dict[FaultKind, float] = {}
    for kind, rate in args.fault:
        faults[kind] = rate
    try:
        config = EmulatorConfig(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            credits_usd=args.credits,
            latency_s=args.latency,
            latency_jitter_s=args.latency_jitter,
            max_concurrency=args.max_concurrency,
            rpm=args.rpm,
            retry_after_s=args.retry_after,
            retry_after_rate=args.retry_after_rate,
            faults=faults,
            fault_seed=args.fault_seed,
            timeout_hold_s=args.timeout_hold,
            result_ttl_s=args.result_ttl,
            allow_remote_inputs=args.allow_remote_inputs,
            bill_cut_answers=args.bill_cut_answers,
            queue_read_faults=args.queue_read_faults,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        parser.error(problems)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    emulator = SegmindEmulator(config).start()
    try:
        print(f"emulator listening on {emulator.url}", flush=True)
        stop.wait()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
