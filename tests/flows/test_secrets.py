"""No secret leaks: canary keys and an S3 secret, searched for everywhere a run leaves text.

Recognisable canaries stand in for the secrets: the Segmind API key the
emulators accept, a wrong key they answer 401 to, a key with a line break and
a space inside that the client refuses before any call, and the S3 secret
access key of a storage block pointed at moto (which accepts any secret). The
blocks are saved to the Prefect test server and loaded by name, as a run form
would, and passed to the flows as parameters:

- a batch on S3 whose rows succeed (through injected 500s and dropped
  connections, retried), are rejected by the manifest check, fail in their
  task (a missing input), fail with a 406 from the emulator, and are left unrun;
- edit-image twice with the same request (the second served from the cache
  records in S3), once through the v2 queue, once with the wrong key and once
  with the broken key.

The module fixture runs them once and gathers every trace they leave; each test
then scans one kind of trace for the canaries: plain, URL-quoted, JSON-escaped,
any random part alone, and base64 (standard and URL-safe, at any byte
alignment, across line breaks, and decoded). Each scan also checks that its
corpus holds what the runs must have left there (flow run ids, error texts, an
output URL), so a scan of nothing cannot pass.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus
from uuid import UUID

import httpx
import pytest
from prefect import get_client
from prefect._internal.result_records import ResultRecord
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import State
from prefect.events.schemas.events import ReceivedEvent
from prefect.events.worker import EventsWorker
from prefect.exceptions import MissingResult
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_HOME, PREFECT_SERVER_DATABASE_CONNECTION_URL

from blocks import ObjectStorage, SegmindCredentials
from emulator import SegmindEmulator
from flows.batch import BatchOutcome, batch
from flows.edit_image import edit_image
from segmind_core.generation import EditResult
from tests.conftest import S3Server
from tests.flows.manifests import COFFEE, jsonl, row
from tests.support import image_bytes, wait_until, without_flow_heartbeats

BUCKET = "outputs"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


# --- the canaries and the scanner ------------------------------------------------------


@dataclass(frozen=True)
class Canary:
    """A secret value to search for, and the forms it could leak in."""

    name: str
    value: str

    def fragments(self) -> list[str]:
        """The random parts of the value: a leak of any one of them is a leak."""
        return re.findall(r"[0-9a-f]{16,}", self.value)

    def needles(self) -> dict[str, bytes]:
        """Forms searched for as they are."""
        found = {
            "plain": self.value.encode(),
            "URL-quoted": quote(self.value, safe="").encode(),
            "URL-quoted with +": quote_plus(self.value).encode(),
            "JSON-escaped": json.dumps(self.value)[1:-1].encode(),
        }
        for n, fragment in enumerate(self.fragments()):
            found[f"random part {n}"] = fragment.encode()
        return found

    def base64_needles(self) -> dict[str, bytes]:
        """Base64 forms, searched for in text with its line breaks taken out.

        In the base64 of a longer text the value sits at one of three byte
        alignments; for each, the characters that depend on the value alone
        are a needle, whatever comes before or after it.
        """
        found: dict[str, bytes] = {}
        texts = {"value": self.value} | {
            f"random part {n}": fragment for n, fragment in enumerate(self.fragments())
        }
        for name, text in texts.items():
            data = text.encode()
            for offset in range(3):
                encoded = base64.b64encode(b"\0" * offset + data)
                start = -(-offset * 8 // 6)  # the first character free of the bytes before
                end = (offset + len(data)) * 8 // 6  # past the last one free of those after
                core = encoded[start:end]
                found[f"base64 of the {name} at +{offset}"] = core
                found[f"URL-safe base64 of the {name} at +{offset}"] = core.translate(
                    bytes.maketrans(b"+/", b"-_")
                )
        return found


_LINE_BREAKS = (b"\\r", b"\\n", b"\r", b"\n")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{24,}={0,2}|[A-Za-z0-9_-]{24,}={0,2}")


def _squashed(blob: bytes) -> bytes:
    """``blob`` without line breaks, raw or JSON-escaped (base64 output wraps lines)."""
    for separator in _LINE_BREAKS:
        blob = blob.replace(separator, b"")
    return blob


def _base64_decoded(blob: bytes) -> bytes:
    """What every long base64 run in ``blob`` decodes to (pickled results, tokens...)."""
    decoded: list[bytes] = []
    for match in _BASE64_RUN.finditer(_squashed(blob)):
        run = match.group().rstrip(b"=")
        run = run[: len(run) - len(run) % 4]
        altchars = b"-_" if b"-" in run or b"_" in run else None
        try:
            decoded.append(base64.b64decode(run, altchars=altchars))
        except (binascii.Error, ValueError):
            continue
    return b"\n".join(decoded)


def find_leaks(corpus: Mapping[str, bytes], canaries: Iterable[Canary]) -> list[str]:
    """Every place where a canary appears in ``corpus`` (names included), in any known form."""
    checks = [(canary, canary.needles(), canary.base64_needles()) for canary in canaries]
    leaks: list[str] = []
    for where, content in corpus.items():
        blob = f"{where}\n".encode() + content
        views = {"": blob, ", base64-decoded": _base64_decoded(blob)}
        squashed = _squashed(blob)
        for canary, needles, base64_needles in checks:
            for view, text in views.items():
                leaks.extend(
                    f"{canary.name} ({form}) in {where}{view}"
                    for form, needle in needles.items()
                    if needle in text
                )
            leaks.extend(
                f"{canary.name} ({form}) in {where}"
                for form, needle in base64_needles.items()
                if needle in squashed
            )
    return leaks


def _hex() -> str:
    return secrets.token_hex(16)


API_KEY = Canary("the API key", f"sk-CANARY-segmind+{_hex()}")
WRONG_KEY = Canary("the wrong API key", f"sk-CANARY-wrong+{_hex()}")
BROKEN_KEY = Canary("the API key with a line break", f"sk-CANARY-broken-{_hex()}\r\n {_hex()}")
S3_SECRET = Canary("the S3 secret access key", f"CANARY/s3+secret/{_hex()}")
CANARIES = (API_KEY, WRONG_KEY, BROKEN_KEY, S3_SECRET)


def assert_no_canary(
    corpus: Mapping[str, bytes], *markers: str, canaries: Iterable[Canary] = CANARIES
) -> None:
    """``corpus`` holds every marker (so it is what the runs left) and no canary."""
    assert corpus, "nothing to scan"
    leaks = find_leaks(corpus, canaries)
    assert leaks == [], "secrets leaked:\n" + "\n".join(leaks)
    everything = b"\n".join(f"{where}\n".encode() + blob for where, blob in corpus.items())
    everything += _base64_decoded(everything)
    missing = [marker for marker in markers if marker.encode() not in everything]
    assert missing == [], f"the corpus lacks what the runs must have left in it: {missing}"


# --- every log record, at DEBUG ---------------------------------------------------------


class _Collector(logging.Handler):
    """Keeps the text of every record: message, arguments, extras, traceback."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.by_logger: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception as exc:  # a broken format is text to scan too
            message = f"{record.msg!r} % {record.args!r} ({exc!r})"
        parts = [record.levelname, message]
        if record.exc_info and record.exc_info[1] is not None:
            parts.extend(traceback.format_exception(record.exc_info[1]))
        parts.extend(text for text in (record.exc_text, record.stack_info) if text)
        extras = {k: v for k, v in vars(record).items() if k not in self._STANDARD}
        if extras:
            parts.append(repr(extras))
        self.by_logger.setdefault(record.name, []).append(" ".join(parts))


@contextmanager
def every_log_record() -> Iterator[_Collector]:
    """Every logger at DEBUG into one collector, the ones that do not propagate included."""
    collector = _Collector()
    known = [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    noisy = ("prefect", "httpx", "httpcore", "botocore", "aiobotocore", "s3fs", "fsspec")
    levels = {logger: logger.level for logger in known if logger.level != logging.NOTSET}
    levels |= {logger: logger.level for logger in map(logging.getLogger, noisy)}
    levels[logging.root] = logging.root.level
    isolated = [logger for logger in known if not logger.propagate]
    # The other handlers (the console, pytest's report) keep to INFO and up: formatting
    # thousands of DEBUG records for them costs seconds and shows nothing new.
    others = {
        handler: handler.level
        for logger in [logging.root, *isolated]
        for handler in logger.handlers
    }
    for handler, level in others.items():
        handler.setLevel(max(level, logging.INFO))
    for logger in levels:
        logger.setLevel(logging.DEBUG)
    for logger in [logging.root, *isolated]:
        logger.addHandler(collector)
    try:
        yield collector
    finally:
        for logger in [logging.root, *isolated]:
            logger.removeHandler(collector)
        for logger, level in levels.items():
            logger.setLevel(level)
        for handler, level in others.items():
            handler.setLevel(level)


# --- the runs --------------------------------------------------------------------------


@dataclass
class Evidence:
    """Everything the runs left, by kind, and what must be in it."""

    runs: dict[str, UUID] = field(default_factory=dict)
    python_logs: dict[str, bytes] = field(default_factory=dict)
    server_logs: dict[str, bytes] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    results: dict[str, bytes] = field(default_factory=dict)
    exceptions: dict[str, bytes] = field(default_factory=dict)
    parameters: dict[str, bytes] = field(default_factory=dict)
    objects: dict[str, bytes] = field(default_factory=dict)
    events: dict[str, bytes] = field(default_factory=dict)
    prefect_files: dict[str, bytes] = field(default_factory=dict)
    emulator_urls: list[str] = field(default_factory=list)
    output_url: str = ""
    task_runs: int = 0
    block_names: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def evidence(prefect_harness: None, s3_server: S3Server) -> Iterator[Evidence]:
    """Run the flows with the canary secrets once; gather every trace they leave."""
    httpx.post(f"{s3_server.endpoint_url}/moto-api/reset").raise_for_status()
    s3_server.client().create_bucket(Bucket=BUCKET)
    found = Evidence()
    # Pays for two calls, then answers 406; 500s and dropped connections on the way
    # (the fault sequence is seeded, and the batch makes one call at a time).
    paying = SegmindEmulator(
        api_key=API_KEY.value,
        credits_usd=Decimal("0.02"),
        faults={"500": 0.25, "reset": 0.25},
        fault_seed=20_240_601,
    ).start()
    generous = SegmindEmulator(api_key=API_KEY.value).start()
    try:
        found.emulator_urls = [paying.url, generous.url]
        with every_log_record() as logs, without_flow_heartbeats():
            _run_flows(found, s3_server, paying, generous)
        found.python_logs = {
            f"log records of {name}": "\n".join(texts).encode()
            for name, texts in logs.by_logger.items()
        }
        _read_back(found, s3_server)
        # Last, once the server has recorded every log, event and state.
        found.prefect_files = {str(path): path.read_bytes() for path in _database_files()}
        home = Path(str(PREFECT_HOME.value()))
        for path in sorted(home.rglob("*")):
            if path.is_file():
                found.prefect_files[str(path)] = path.read_bytes()
        yield found
    finally:
        paying.stop()
        generous.stop()


def _put(s3: S3Server, key: str, data: bytes) -> str:
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def _run_flows(
    found: Evidence, s3: S3Server, paying: SegmindEmulator, generous: SegmindEmulator
) -> None:
    prefix = f"secrets-{uuid.uuid4().hex[:8]}"
    blocks: dict[str, ObjectStorage | SegmindCredentials] = {
        "storage": ObjectStorage(
            base_url=f"s3://{BUCKET}/{prefix}/out",
            aws_access_key_id="canary-test-access-key-id",
            aws_secret_access_key=S3_SECRET.value,
            endpoint_url=s3.endpoint_url,
            region_name=s3.region,
        ),
        "paying": SegmindCredentials(
            api_key=API_KEY.value,
            base_url=paying.url,
            max_attempts=12,
            backoff_initial_s=0.01,
            backoff_max_s=0.02,
        ),
        "right": SegmindCredentials(api_key=API_KEY.value, base_url=generous.url),
        "queued": SegmindCredentials(api_key=API_KEY.value, base_url=generous.url, queue=True),
        "wrong": SegmindCredentials(api_key=WRONG_KEY.value, base_url=generous.url),
        "broken": SegmindCredentials(api_key=BROKEN_KEY.value, base_url=generous.url),
    }
    names = {kind: f"secrets-{kind}-{uuid.uuid4().hex[:8]}" for kind in blocks}
    for kind, block in blocks.items():
        block.save(names[kind])
    found.block_names = list(names.values())

    def storage() -> ObjectStorage:
        loaded = ObjectStorage.load(names["storage"])
        assert isinstance(loaded, ObjectStorage)
        return loaded

    def credentials(kind: str) -> SegmindCredentials:
        loaded = SegmindCredentials.load(names[kind])
        assert isinstance(loaded, SegmindCredentials)
        return loaded

    # Inputs and the manifest under the storage's own prefix: the rest of the bucket is no input.
    sources = f"{prefix}/out/sources"
    coffee = _put(s3, f"{sources}/coffee.jpg", COFFEE.read_bytes())
    small = _put(s3, f"{sources}/red.jpg", image_bytes((200, 40, 40), (160, 120), "JPEG"))
    missing = f"s3://{BUCKET}/{sources}/no-such-photo.jpg"
    rows = [
        row("ok-1", "p-image-edit", "secrets test: row 1", [small], seed=880_001),
        row("ok-2", "p-image-edit", "secrets test: row 2", [coffee], seed=880_002),
        row("missing", "p-image-edit", "secrets test: row 3", [missing], seed=880_003),
        row("bad", "p-image-edit", "secrets test: row 4", [small], aspect_ratio="7:3"),
        row("no-credit", "p-image-edit", "secrets test: row 5", [small], seed=880_005),
        row("unrun", "p-image-edit", "secrets test: row 6", [small], seed=880_006),
    ]
    manifest = _put(s3, f"{prefix}/out/manifests/secrets.jsonl", jsonl(rows).encode())

    states: dict[str, State[Any]] = {}
    states["batch"] = batch(
        manifest=manifest,
        storage=storage(),
        credentials=credentials("paying"),
        max_concurrency=1,
        return_state=True,
    )
    edit = {"prompt": "secrets test: on a marble counter", "image": coffee}
    for label, kind, seed in [
        ("edit", "right", 880_201),
        ("edit again", "right", 880_201),
        ("edit through the queue", "queued", 880_202),
        ("edit with the wrong key", "wrong", 880_203),
        ("edit with the broken key", "broken", 880_204),
    ]:
        states[label] = edit_image(
            **edit,
            seed=seed,
            storage=storage(),
            credentials=credentials(kind),
            return_state=True,
        )

    # Each run took the path it is here for.
    outcome = states["batch"].result(raise_on_failure=False)
    assert isinstance(outcome, BatchOutcome), outcome
    assert states["batch"].is_failed()
    assert (outcome.succeeded, outcome.failed, outcome.not_run) == (2, 3, 1), outcome
    assert "406" in str(outcome.stopped), outcome
    assert "500" in paying.stats()["by_status"], paying.stats()  # retried on the way
    first, again, queued = (
        states[label].result() for label in ("edit", "edit again", "edit through the queue")
    )
    assert isinstance(first, EditResult)
    assert isinstance(queued, EditResult)
    assert isinstance(again, EditResult)
    assert again.reused  # served from the cache record in S3
    assert (again.url, again.sha256) == (first.url, first.sha256)
    found.output_url = first.url
    assert states["edit with the wrong key"].is_failed()
    assert states["edit with the broken key"].is_failed()
    stats = generous.stats()
    assert stats["jobs"].get("COMPLETED") == 1, stats  # the queued edit went through /v2
    assert stats["by_status"].get("401") == 1, stats  # the wrong key; the broken one never sent

    for label, state in states.items():
        assert state.state_details.flow_run_id is not None
        found.runs[label] = state.state_details.flow_run_id
        text, exception = _state_texts(state)
        found.results[f"flow run '{label}'"] = text.encode()
        if exception:
            found.exceptions[f"flow run '{label}'"] = exception.encode()
    found.task_runs = outcome.calls + 5  # one per batch call, one per edit


def _described(value: Any) -> str:
    """Every text form of a value: repr, str, JSON, traceback."""
    parts = [repr(value), str(value)]
    if isinstance(value, BaseException):
        parts.extend(traceback.format_exception(value))
    dump = getattr(value, "model_dump_json", None)
    if callable(dump):
        parts.append(dump())
    return "\n".join(parts)


def _state_texts(state: State[Any]) -> tuple[str, str]:
    """(The state, its message and its result; the exception's text or "") of a final state."""
    dumped = state.model_dump_json(fallback=repr)  # in-process data may be an exception
    try:
        result = state.result(raise_on_failure=False)
    except MissingResult as missing:  # read back from the server: nothing persisted
        return f"{state!r}\n{state.message}\n{dumped}\n{missing}", ""
    text = "\n".join([repr(state), str(state.message), dumped, _described(result)])
    return text, _described(result) if isinstance(result, BaseException) else ""


def _pages(read: Callable[..., list[Any]], size: int = 200) -> list[Any]:
    items: list[Any] = []
    while True:
        page = read(limit=size, offset=len(items))
        items.extend(page)
        if len(page) < size:
            return items


def _read_events(client: Any, run_ids: Iterable[UUID]) -> list[ReceivedEvent]:
    """The events about the flow runs or related to them (their task runs, artifacts...)."""
    events: list[ReceivedEvent] = []
    resources = [f"prefect.flow-run.{run_id}" for run_id in run_ids]
    response = client.request(
        "POST", "/events/filter", json={"filter": {"any_resource": {"id": resources}}}
    )
    while True:
        page = response.json()
        events.extend(ReceivedEvent.model_validate(event) for event in page["events"])
        if not page.get("next_page"):
            return events
        response = client._client.get(page["next_page"])


def _read_back(found: Evidence, s3: S3Server) -> None:
    """Wait until the server has recorded the runs, then read back what it keeps."""
    run_ids = set(found.runs.values())
    runs = FlowRunFilter(id=FlowRunFilterId(any_=list(run_ids)))
    of_the_runs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(run_ids)))
    APILogHandler().flush()
    EventsWorker.drain_all()
    with get_client(sync_client=True) as client:

        def task_runs_final() -> list[Any]:
            task_runs: list[Any] = client.read_task_runs(flow_run_filter=runs)
            final = [run for run in task_runs if run.state and run.state.type.value in FINAL]
            return final if len(final) == found.task_runs else []

        task_runs = wait_until(task_runs_final, timeout=30, what="the task runs' final states")

        def logs_recorded() -> list[Any]:
            logs = _pages(lambda **page: client.read_logs(of_the_runs, **page))
            ended = {
                log.task_run_id or log.flow_run_id for log in logs if "Finished in" in log.message
            }
            return logs if ended >= run_ids | {run.id for run in task_runs} else []

        logs = wait_until(logs_recorded, timeout=30, what="every run's last log on the server")
        found.server_logs = {f"log {log.id}": log.model_dump_json().encode() for log in logs}

        def events_recorded() -> list[ReceivedEvent]:
            events = _read_events(client, run_ids)
            ended = {
                UUID(event.resource.id.rsplit(".", 1)[1])
                for event in events
                if event.event.startswith("prefect.flow-run.")
                and event.event.rsplit(".", 1)[1].upper() in FINAL
            }
            return events if ended >= run_ids else []

        events = wait_until(events_recorded, timeout=30, what="every flow run's last event")
        found.events = {f"event {e.event} {e.id}": e.model_dump_json().encode() for e in events}

        artifacts = _pages(lambda **page: client.read_artifacts(flow_run_filter=runs, **page))
        for artifact in artifacts:
            found.artifacts[f"artifact {artifact.key} {artifact.id}"] = "\n".join(
                [str(artifact.data), str(artifact.description), artifact.model_dump_json()]
            ).encode()

        for label, flow_run_id in found.runs.items():
            flow_run = client.read_flow_run(flow_run_id)
            found.parameters[f"flow run '{label}'"] = json.dumps(flow_run.parameters).encode()
            assert flow_run.state is not None
            text, _ = _state_texts(flow_run.state)
            found.results[f"flow run '{label}' as recorded"] = (
                flow_run.model_dump_json() + "\n" + text
            ).encode()

    # Each persisted result is loaded through its storage block, as Prefect does.
    with ThreadPoolExecutor(max_workers=len(task_runs)) as pool:
        loaded = list(pool.map(lambda run: _state_texts(run.state), task_runs))
    for task_run, (text, exception) in zip(task_runs, loaded, strict=True):
        where = f"task run '{task_run.name}' {task_run.id}"
        found.parameters[where] = json.dumps(
            {
                name: [ref.model_dump(mode="json") for ref in refs]
                for name, refs in task_run.task_inputs.items()
            }
        ).encode()
        found.results[where] = f"{task_run.model_dump_json()}\n{text}".encode()
        if exception:
            found.exceptions[where] = exception.encode()

    client_s3 = s3.client()
    for page in client_s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for entry in page.get("Contents", []):
            data = client_s3.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read()
            found.objects[f"s3 object {entry['Key']}"] = data
            if entry["Key"].endswith((".png", ".jpg", ".jsonl")):
                continue
            try:
                record: ResultRecord[Any] = ResultRecord.deserialize(data)
            except ValueError:  # a sidecar or a manifest, not a Prefect result record
                continue
            found.objects[f"s3 object {entry['Key']}, loaded"] = _described(record.result).encode()


def _database_files() -> list[Path]:
    """The test server's SQLite database, with its write-ahead log and shared memory."""
    url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    assert url.startswith("sqlite+aiosqlite:///"), url
    database = Path(url.removeprefix("sqlite+aiosqlite:///"))
    assert database.is_file(), database
    candidates = [database, *(Path(f"{database}{end}") for end in ("-wal", "-shm", "-journal"))]
    return [path for path in candidates if path.exists()]


# --- the scans -------------------------------------------------------------------------


def test_the_scanner_finds_a_canary_planted_in_every_form_it_knows() -> None:
    canary = Canary("a planted key", f"sk-CANARY-planted+{_hex()}/{_hex()}")
    value = canary.value.encode()
    # Each planted text, and what the scanner must report for it.
    planted: dict[str, tuple[bytes, list[str]]] = {
        "plain": (b"x-api-key: " + value, ["(plain) in plain"]),
        "URL-quoted": (
            f"https://h.invalid/?key={quote(canary.value, safe='')}".encode(),
            ["(URL-quoted) in URL-quoted"],
        ),
        "JSON-escaped": (
            json.dumps({"key": canary.value + "\n"}).encode(),
            ["(JSON-escaped) in JSON-escaped"],
        ),
        "one random part": (
            b"...a key ending " + canary.fragments()[1].encode(),
            ["(random part 1) in one random part"],
        ),
    }
    for offset in range(3):
        # As Prefect stores a pickled result: base64 wrapped every 76 characters, in JSON.
        wrapped = base64.encodebytes(b"p" * (offset + 40) + value + b"q" * 90).decode()
        planted[f"wrapped base64 at +{offset}"] = (
            json.dumps({"result": wrapped}).encode(),
            [
                f"(base64 of the value at +{(offset + 1) % 3}) in wrapped base64 at +{offset}",
                f"(plain) in wrapped base64 at +{offset}, base64-decoded",
            ],
        )
        planted[f"URL-safe base64 at +{offset}"] = (
            base64.urlsafe_b64encode(b"u" * offset + value),
            [f"(URL-safe base64 of the value at +{offset}) in URL-safe base64 at +{offset}"],
        )
    for where, (blob, reports) in planted.items():
        found = "\n".join(find_leaks({where: blob}, [canary]))
        missed = [report for report in reports if f"a planted key {report}" not in found]
        assert missed == [], f"the scanner missed the canary in {where}: {found}"
    corpus = {where: blob for where, (blob, _) in planted.items()}
    with pytest.raises(AssertionError, match=r"a planted key \(plain\) in plain"):
        assert_no_canary(corpus, "x-api-key", canaries=[canary])
    # Names are scanned too (an object key, a logger's name).
    assert find_leaks({f"s3 object {canary.value}": b""}, [canary])
    # Nothing is found where the canary is not, and a corpus without its markers fails.
    other = Canary("another key", f"sk-CANARY-other+{_hex()}")
    assert find_leaks(corpus, [other]) == []
    with pytest.raises(AssertionError, match="lacks what the runs must have left"):
        assert_no_canary({"a log": b"nothing to see"}, "401 from Segmind")


def test_python_log_records_at_debug(evidence: Evidence) -> None:
    assert_no_canary(
        evidence.python_logs,
        "401 from Segmind",
        "406 from Segmind",
        "500 from Segmind",
        "the connection to Segmind failed",
        "contains a space, a control character",
        "log records of httpx",
        "log records of botocore",
        "log records of prefect.task_runs",
        *evidence.emulator_urls,
    )


def test_logs_on_the_prefect_server(evidence: Evidence) -> None:
    assert_no_canary(
        evidence.server_logs,
        "401 from Segmind",
        "406 from Segmind",
        "of 11 in",
        "contains a space, a control character",
        *map(str, evidence.runs.values()),
    )


def test_artifacts(evidence: Evidence) -> None:
    assert_no_canary(evidence.artifacts, evidence.output_url, "ok-2", "406 from Segmind")


def test_flow_and_task_run_results(evidence: Evidence) -> None:
    assert_no_canary(
        evidence.results,
        evidence.output_url,
        '"name":"Cached"',
        "401 from Segmind",
        "3 of 6 rows failed",
        *map(str, evidence.runs.values()),
    )


def test_exception_texts_and_tracebacks(evidence: Evidence) -> None:
    assert_no_canary(
        evidence.exceptions,
        "Traceback (most recent call last)",
        "AuthenticationError",
        "401 from Segmind",
        "406 from Segmind",
        "contains a space, a control character",
        "no such object",
    )


def test_flow_run_parameters_as_the_server_keeps_them(evidence: Evidence) -> None:
    # The blocks went in as parameters: their secrets masked, their settings there.
    assert_no_canary(
        evidence.parameters,
        '"api_key": "**********"',
        '"aws_secret_access_key": "**********"',
        '"manifest": "s3://',
        *evidence.emulator_urls,
    )


def test_every_object_in_the_bucket(evidence: Evidence) -> None:
    assert_no_canary(
        evidence.objects,
        evidence.output_url,
        '"flow_run_id"',  # sidecars
        "-results.jsonl",  # the results manifest
        "406 from Segmind",  # its error column
        "s3 object secrets-",  # cache records and persisted failures, loaded:
        "EditResult",
        "AuthenticationError",
    )


def test_events_on_the_prefect_server(evidence: Evidence) -> None:
    assert_no_canary(evidence.events, "prefect.task-run.Failed", *map(str, evidence.runs.values()))


def test_the_prefect_database_and_local_files(evidence: Evidence) -> None:
    database = [where for where in evidence.prefect_files if where.endswith(".db")]
    assert len(database) == 1, list(evidence.prefect_files)
    # The database holds the runs, their logs and the saved (encrypted) blocks.
    assert_no_canary(
        evidence.prefect_files,
        "SQLite format 3",
        "401 from Segmind",
        "406 from Segmind",
        *map(str, evidence.runs.values()),
        *evidence.block_names,
    )
