"""Fault soak: a batch against an emulator that fails often, checked object by object.

Run: ``python bench/fault_soak.py [--rows 300] [--max-concurrency 8] [--latency 0.05]
[--fault-seed 10]``. An in-process emulator injects the issue's faults on generation
requests (10 % 500, 5 % 429 of which about half carry ``Retry-After``, 2 % reset
connections, 2 % truncated 200 bodies, 1 % unanswered requests); a moto S3 server
on 127.0.0.1 holds the generated input images, the manifest and the outputs;
Prefect runs on a temporary local server started the way ``python -m
flows.batch`` starts it. The credentials make the client's read timeout short
(``--read-timeout``, 4 s), so a ``timeout`` fault costs seconds, not minutes, yet
well above the slowest real answer (0.7 s here, 2.1 s on a loaded machine: printed
as the slowest first-try call); an answer paid for but read after the timeout
would be paid again by the retry. They also allow enough attempts for the fault rates.

After the run, an independent boto3 client checks that every row has exactly one
image and one sidecar, that each image decodes and matches its sidecar's sha256,
and the emulator's counters that billed calls equal rows (no generation paid
twice). Prints the numbers, a PASS or FAIL line, and the numbers as JSON as the
last line (also written to ``--results``, default ``bench/results/fault_soak.json``).
Exits 1 on FAIL.

``tests/flows/test_fault_soak.py`` runs the same checks on a small batch in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-soak-prefect-"))

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as ``python bench/fault_soak.py``
    sys.path.insert(0, str(REPO))

from bench.provenance import git_commit  # noqa: E402 - after the path fix above
from emulator import SegmindEmulator  # noqa: E402
from segmind_core.contract import get_endpoint  # noqa: E402
from segmind_core.outputs import SIDECAR_SUFFIX  # noqa: E402

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

    from blocks import ObjectStorage

KEY = "bench-soak-key"
BUCKET = "outputs"
FLOW = "batch"
RESULTS = Path(__file__).resolve().parent / "results" / "fault_soak.json"

# The issue's mix: 10 % 500, 5 % 429, 2 % reset, 2 % truncate, 1 % timeout.
ISSUE_FAULTS: dict[str, float] = {
    "500": 0.10,
    "429": 0.05,
    "reset": 0.02,
    "truncate": 0.02,
    "timeout": 0.01,
}

# Small plain sources keep the run quick: outputs are about 1 Mpx whatever the input.
_SOURCES: dict[str, tuple[tuple[int, int, int], tuple[int, int], str]] = {
    "red.jpg": ((200, 40, 40), (160, 120), "JPEG"),
    "green.png": ((40, 160, 60), (120, 160), "PNG"),
    "blue.jpg": ((40, 60, 200), (128, 128), "JPEG"),
    "amber.png": ((230, 160, 30), (200, 100), "PNG"),
}


# --- inputs and manifest -----------------------------------------------------------------


def source_images() -> dict[str, bytes]:
    """A few small generated input images, by file name (no downloads)."""
    images: dict[str, bytes] = {}
    for name, (colour, size, fmt) in _SOURCES.items():
        buffer = io.BytesIO()
        image = Image.new("RGB", size, colour)
        # A darker band makes each source more than one flat colour.
        image.paste(tuple(c // 2 for c in colour), (0, 0, size[0], size[1] // 3))
        image.save(buffer, format=fmt)
        images[name] = buffer.getvalue()
    return images


@dataclass(frozen=True)
class SoakRow:
    """One manifest row of the soak and what it must produce."""

    id: str
    endpoint: str
    prompt: str
    images: tuple[str, ...]
    params: Mapping[str, Any]

    @property
    def ext(self) -> str:
        """The output's file extension: jpg when asked for, else png."""
        return "jpg" if self.params.get("output_format") == "jpg" else "png"

    @property
    def seed(self) -> int:
        """The row's pinned seed."""
        return int(self.params["seed"])

    @property
    def price_usd(self) -> Decimal:
        """List price of the row's one call."""
        return get_endpoint(self.endpoint).price_usd

    def manifest_line(self) -> str:
        """The row as one JSONL line."""
        row = {
            "id": self.id,
            "endpoint": self.endpoint,
            "prompt": self.prompt,
            "images": list(self.images),
            "params": dict(self.params),
        }
        return json.dumps(row) + "\n"


def soak_rows(sources: Sequence[str], count: int, *, seed_base: int, tag: str) -> list[SoakRow]:
    """``count`` rows mixing p-image-edit, flux-kontext-pro and multi-image-kontext-pro.

    Every row pins its own seed (``seed_base + n``) and names ``tag`` in its prompt.
    Half are p-image-edit ($0.01), a quarter flux-kontext-pro (png and jpg, two
    ratios), a quarter multi-image-kontext-pro (two inputs).
    """
    rows: list[SoakRow] = []
    for n in range(1, count + 1):
        first, second = sources[n % len(sources)], sources[(n + 1) % len(sources)]
        seed = seed_base + n
        prompt = f"{tag}: soak row {n}"
        kind = n % 4
        images: tuple[str, ...]
        if kind in (0, 1):
            endpoint, images = "p-image-edit", (first,)
            params: dict[str, Any] = {"seed": seed}
        elif kind == 2:
            endpoint, images = "flux-kontext-pro", (first,)
            params = {
                "seed": seed,
                "output_format": "jpg" if n % 8 == 2 else "png",
                "aspect_ratio": "1:1" if n % 8 == 2 else "match_input_image",
            }
        else:
            endpoint, images = "multi-image-kontext-pro", (first, second)
            params = {"seed": seed, "output_format": "png"}
        rows.append(SoakRow(f"soak-{n:04d}", endpoint, prompt, images, params))
    return rows


def manifest_text(rows: Sequence[SoakRow]) -> str:
    """The rows as a JSONL manifest."""
    return "".join(row.manifest_line() for row in rows)


# --- S3 ----------------------------------------------------------------------------------


def s3_put(client: Any, key: str, data: bytes, bucket: str = BUCKET) -> str:
    """Put ``data`` at ``key``; returns its ``s3://`` URL."""
    client.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def s3_keys(client: Any, prefix: str, bucket: str = BUCKET) -> list[str]:
    """Every key under ``prefix``, through every listing page."""
    keys: list[str] = []
    token: dict[str, str] = {}
    while True:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix, **token)
        keys.extend(entry["Key"] for entry in listed.get("Contents", []))
        if not listed.get("IsTruncated"):
            return keys
        token = {"ContinuationToken": listed["NextContinuationToken"]}


def s3_get(client: Any, key: str, bucket: str = BUCKET) -> bytes:
    """The bytes at ``key``."""
    data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def put_soak_inputs(
    client: Any, prefix: str, count: int, *, seed_base: int, tag: str
) -> tuple[str, list[SoakRow]]:
    """Upload the sources and the manifest under ``prefix``; the manifest's URL and rows."""
    sources = [
        s3_put(client, f"{prefix}/sources/{name}", data) for name, data in source_images().items()
    ]
    rows = soak_rows(sources, count, seed_base=seed_base, tag=tag)
    manifest = s3_put(client, f"{prefix}/manifests/soak.jsonl", manifest_text(rows).encode())
    return manifest, rows


# --- Retry-After tally -------------------------------------------------------------------


class RetryAfterTally:
    """Counts the emulator's 429 answers with and without ``Retry-After``.

    Wraps the in-process emulator's fault injector: each 429 asks it once whether
    to send the header. Instrumentation only; the answers are unchanged.
    """

    def __init__(self, emulator: SegmindEmulator) -> None:
        self._decide: Callable[[], int | None] = emulator.faults.retry_after
        self._lock = threading.Lock()
        self.with_header = 0
        self.without_header = 0
        emulator.faults.retry_after = self  # type: ignore[method-assign]

    def __call__(self) -> int | None:
        """The injector's decision for this 429, counted."""
        seconds = self._decide()
        with self._lock:
            if seconds is None:
                self.without_header += 1
            else:
                self.with_header += 1
        return seconds


# --- checks ------------------------------------------------------------------------------


@dataclass
class SoakCheck:
    """What the independent checks found; ``problems`` empty means the soak passed."""

    problems: list[str] = field(default_factory=list)
    images_checked: int = 0
    attempts: Counter[int] = field(default_factory=Counter)
    max_first_try_latency_s: float = 0.0
    max_latency_s: float = 0.0

    def fail(self, problem: str) -> None:
        """Record one problem."""
        self.problems.append(problem)


def check_outputs(client: Any, prefix: str, rows: Sequence[SoakRow], results_url: str) -> SoakCheck:
    """Check, with an independent S3 client, what the batch stored under ``prefix``.

    Every row has exactly one image and one sidecar, and nothing else is there
    besides the results manifest; each image decodes, matches its sidecar's
    sha256, size and byte count, and was made by the row's endpoint with its
    seed; the results manifest says every row succeeded, paid once.
    """
    check = SoakCheck()
    runs_marker = f"/{FLOW}/"
    if runs_marker not in results_url or "/runs/" not in results_url:
        check.fail(f"unexpected results manifest URL {results_url}")
        return check
    day = results_url.split(runs_marker, 1)[1].split("/", 1)[0]
    folder = f"{prefix}/{FLOW}/{day}/"
    results_key = results_url.removeprefix(f"s3://{BUCKET}/")
    keys = s3_keys(client, f"{prefix}/{FLOW}/")
    expected = {f"{folder}{row.id}.{row.ext}": row for row in rows}
    wanted = set(expected) | {f"{key}{SIDECAR_SUFFIX}" for key in expected} | {results_key}
    if len(keys) != len(set(keys)):
        check.fail("the listing repeats keys")
    missing, extra = sorted(wanted - set(keys)), sorted(set(keys) - wanted)
    if missing:
        check.fail(f"{len(missing)} expected object(s) missing, e.g. {missing[:3]}")
    if extra:
        check.fail(f"{len(extra)} unexpected object(s), e.g. {extra[:3]}")

    for key, row in sorted(expected.items()):
        if key in missing or f"{key}{SIDECAR_SUFFIX}" in missing:
            continue
        _check_image(check, client, key, row)

    results = [json.loads(line) for line in s3_get(client, results_key).decode().splitlines()]
    if [r.get("id") for r in results] != [row.id for row in rows]:
        check.fail("the results manifest does not list every row once, in order")
    for result, row in zip(results, rows, strict=False):
        wanted_result = {
            "status": "succeeded",
            "output": f"s3://{BUCKET}/{folder}{row.id}.{row.ext}",
            "cached": False,
            "error": None,
        }
        got = {name: result.get(name) for name in wanted_result}
        if got != wanted_result:
            check.fail(f"{row.id}: result {got}, expected {wanted_result}")
        if Decimal(str(result.get("cost_usd"))) != row.price_usd:
            check.fail(f"{row.id}: cost {result.get('cost_usd')}, expected {row.price_usd}")
    return check


def _check_image(check: SoakCheck, client: Any, key: str, row: SoakRow) -> None:
    data = s3_get(client, key)
    sidecar = json.loads(s3_get(client, f"{key}{SIDECAR_SUFFIX}"))
    output = sidecar.get("output", {})
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size, fmt = image.size, image.format
    except (OSError, SyntaxError, ValueError) as exc:
        check.fail(f"{key} does not decode: {exc}")
        return
    check.images_checked += 1
    if hashlib.sha256(data).hexdigest() != output.get("sha256"):
        check.fail(f"{key}: sha256 differs from its sidecar's")
    if (output.get("width"), output.get("height"), output.get("bytes")) != (*size, len(data)):
        check.fail(f"{key}: {size}, {len(data)} bytes; the sidecar says {output}")
    if fmt != {"png": "PNG", "jpg": "JPEG"}[row.ext]:
        check.fail(f"{key} is {fmt}")
    made_by = (sidecar.get("slug"), sidecar.get("seed"), sidecar.get("job_id"))
    if made_by != (row.endpoint, row.seed, row.id):
        check.fail(f"{key}: made by {made_by}, expected {(row.endpoint, row.seed, row.id)}")
    attempts, latency = int(sidecar.get("attempts", 0)), float(sidecar.get("latency_s", 0.0))
    check.attempts[attempts] += 1
    check.max_latency_s = max(check.max_latency_s, latency)
    if attempts == 1:
        check.max_first_try_latency_s = max(check.max_first_try_latency_s, latency)


def check_billing(
    stats: Mapping[str, Any], rows: Sequence[SoakRow], faults: Mapping[str, float]
) -> list[str]:
    """Problems in the emulator's counters: billed must equal rows, every fault injected.

    ``faults`` are the configured rates: each kind with a rate above 0 must have
    been injected at least once, or the soak did not test it.
    """
    problems: list[str] = []
    by_status: dict[str, int] = dict(stats["by_status"])
    injected: dict[str, int] = dict(stats["faults_injected"])
    if stats["billed"] != len(rows):
        problems.append(f"billed {stats['billed']} calls for {len(rows)} rows")
    if by_status.get("200", 0) != len(rows):
        problems.append(f"{by_status.get('200', 0)} complete 200 answers for {len(rows)} rows")
    spent = Decimal(str(stats["spent_usd"])).quantize(Decimal("0.01"))
    expected = sum((row.price_usd for row in rows), Decimal("0"))
    if spent != expected:
        problems.append(f"spent {spent} USD, expected {expected}")
    per_slug = Counter(row.endpoint for row in rows)
    billed_per_slug = {slug: s["billed"] for slug, s in stats["by_slug"].items() if s["billed"]}
    if billed_per_slug != dict(per_slug):
        problems.append(f"billed per endpoint {billed_per_slug}, expected {dict(per_slug)}")
    if sum(by_status.values()) != stats["requests"]:
        problems.append(f"answers {by_status} do not add up to {stats['requests']} requests")
    if stats["requests"] != len(rows) + sum(injected.values()):
        problems.append(
            f"{stats['requests']} requests for {len(rows)} rows and "
            f"{sum(injected.values())} injected faults"
        )
    for kind, rate in faults.items():
        if rate > 0 and injected.get(kind, 0) == 0:
            problems.append(f"no {kind} fault was injected (rate {rate})")
    if stats["in_flight"] != 0:
        problems.append(f"{stats['in_flight']} request(s) still in flight")
    return problems


# --- the run -----------------------------------------------------------------------------


def run_flow(
    manifest: str, storage: ObjectStorage, credentials: Any, max_concurrency: int
) -> tuple[State[Any], Any, float]:
    """Run the batch flow as ``python -m flows.batch`` does; its state, outcome and wall time.

    A temporary Prefect server (the command's own) when ``PREFECT_API_URL`` is
    unset; the storage block is saved, so Prefect's cache records go beside the
    outputs; the command waits for the server to record every task run.
    """
    from flows.batch import BatchOutcome, _prefect_api, batch, wait_for_task_run_records

    with _prefect_api() as temporary:
        storage.save(f"fault-soak-{uuid.uuid4().hex[:8]}", overwrite=True)
        started = time.perf_counter()
        state: State[Any] = batch(
            manifest=manifest,
            storage=storage,
            credentials=credentials,
            max_concurrency=max_concurrency,
            return_state=True,
        )
        wall = time.perf_counter() - started
        outcome = state.result(raise_on_failure=False)
        flow_run_id = state.state_details.flow_run_id
        if temporary and flow_run_id is not None:
            expected = outcome.calls if isinstance(outcome, BatchOutcome) else None
            wait_for_task_run_records(flow_run_id, expected, 120.0)
    return state, outcome, wall


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fault soak: a batch against a failing emulator, checked object by object."
    )
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05, help="emulator latency, s")
    parser.add_argument("--latency-jitter", type=float, default=0.0)
    parser.add_argument("--fault-seed", type=int, default=10)
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds")
    parser.add_argument(
        "--retry-after-rate", type=float, default=0.5, help="share of 429s with Retry-After"
    )
    parser.add_argument("--read-timeout", type=float, default=4.0, help="client read timeout, s")
    parser.add_argument("--max-attempts", type=int, default=10, help="HTTP attempts per call")
    parser.add_argument("--backoff-initial", type=float, default=0.2)
    parser.add_argument("--backoff-max", type=float, default=2.0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; returns 0 on PASS, 1 on FAIL."""
    args = _arguments(argv)
    begun = time.perf_counter()
    from moto.server import ThreadedMotoServer

    from blocks import ObjectStorage, SegmindCredentials
    from flows.batch import BatchOutcome

    import_s = time.perf_counter() - begun
    # moto logs every S3 request through werkzeug (about ten a row).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3_server.start()
    host, port = s3_server.get_host_and_port()
    endpoint_url = f"http://{host}:{port}"
    access = {"aws_access_key_id": "soak-access-key", "aws_secret_access_key": "soak-secret"}
    emulator = SegmindEmulator(
        api_key=KEY,
        latency_s=args.latency,
        latency_jitter_s=args.latency_jitter,
        faults=ISSUE_FAULTS,
        fault_seed=args.fault_seed,
        retry_after_s=args.retry_after,
        retry_after_rate=args.retry_after_rate,
        timeout_hold_s=args.read_timeout + 2.0,
    ).start()
    tally = RetryAfterTally(emulator)
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1", **access)
        client.create_bucket(Bucket=BUCKET)
        prefix = f"soak-{uuid.uuid4().hex[:8]}"
        manifest, rows = put_soak_inputs(
            client, prefix, args.rows, seed_base=900_000_000, tag=prefix
        )
        storage = ObjectStorage(
            base_url=f"s3://{BUCKET}/{prefix}",
            endpoint_url=endpoint_url,
            region_name="us-east-1",
            **access,
        )
        # As the command: the key and server from the environment, never a flow
        # parameter (the environment's key goes only to the environment's server).
        os.environ["SEGMIND_API_KEY"] = KEY
        os.environ["SEGMIND_BASE_URL"] = emulator.url
        credentials = SegmindCredentials(
            base_url=emulator.url,
            read_timeout_s=args.read_timeout,
            connect_timeout_s=args.read_timeout,
            max_attempts=args.max_attempts,
            backoff_initial_s=args.backoff_initial,
            backoff_max_s=args.backoff_max,
        )
        state, outcome, wall = run_flow(manifest, storage, credentials, args.max_concurrency)
        stats = emulator.stats()
        problems: list[str] = []
        succeeded = 0
        if isinstance(outcome, BatchOutcome):
            succeeded = outcome.succeeded
            check = check_outputs(client, prefix, rows, outcome.results_url)
            problems.extend(check.problems)
            if Decimal(str(outcome.paid_usd)) != Decimal(str(stats["spent_usd"])).quantize(
                Decimal("0.01")
            ):
                problems.append(f"the flow paid {outcome.paid_usd}, the emulator billed more")
        else:
            check = SoakCheck()
            problems.append(f"the flow ended {state.name}: {state.message or outcome}")
        if not state.is_completed():
            problems.append(f"the flow run is {state.name}: {state.message}")
        problems.extend(check_billing(stats, rows, ISSUE_FAULTS))
        if tally.with_header == 0 or tally.without_header == 0:
            problems.append(
                f"429s with Retry-After: {tally.with_header}, without: {tally.without_header}; "
                "both kinds are wanted"
            )
    finally:
        emulator.stop()
        s3_server.stop()

    numbers = {
        "rows": args.rows,
        "rows_succeeded": succeeded,
        "images_checked": check.images_checked,
        "max_concurrency": args.max_concurrency,
        "latency_s": args.latency,
        "fault_rates": ISSUE_FAULTS,
        "fault_seed": args.fault_seed,
        "read_timeout_s": args.read_timeout,
        "max_attempts": args.max_attempts,
        "flow_wall_s": round(wall, 2),
        "total_wall_s": round(time.perf_counter() - begun, 2),
        "import_s": round(import_s, 2),
        "requests": stats["requests"],
        "billed": stats["billed"],
        "spent_usd": stats["spent_usd"],
        "retries": stats["requests"] - stats["billed"],
        "faults_injected": stats["faults_injected"],
        "by_status": stats["by_status"],
        "429_with_retry_after": tally.with_header,
        "429_without_retry_after": tally.without_header,
        "max_in_flight": stats["max_in_flight"],
        "attempts_per_row": {str(k): v for k, v in sorted(check.attempts.items())},
        "max_row_latency_s": round(check.max_latency_s, 3),
        "max_first_try_latency_s": round(check.max_first_try_latency_s, 3),
        "problems": problems,
        "result": "PASS" if not problems else "FAIL",
        "commit": git_commit(),
    }
    print(f"rows {args.rows}, succeeded {succeeded}, images checked {check.images_checked}")
    print(f"flow wall time {wall:.1f} s (script {numbers['total_wall_s']} s)")
    print(
        f"requests {stats['requests']}, billed {stats['billed']} "
        f"({stats['spent_usd']:.2f} USD), retries {numbers['retries']}"
    )
    print(f"faults injected {stats['faults_injected']}")
    print(f"429 with Retry-After {tally.with_header}, without {tally.without_header}")
    print(f"attempts per row {numbers['attempts_per_row']}")
    print(
        f"slowest row {numbers['max_row_latency_s']} s (retries included), slowest "
        f"first-try call {numbers['max_first_try_latency_s']} s; read timeout {args.read_timeout} s"
    )
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{numbers['result']}: fault soak, {args.rows} rows")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(numbers, indent=2) + "\n")
    print(json.dumps(numbers), flush=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
