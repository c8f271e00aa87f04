"""Caching of the endpoint tasks: records on S3 (moto) beside the outputs, keyed by the request.

Every test uses a saved `ObjectStorage` block on its own prefix of the bucket as
both the output storage and the Prefect result storage (some also an unsaved
local folder, whose records the flows keep in ``.prefect-records``), and an
emulator on 127.0.0.1 whose counters say what was paid.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from PIL import Image
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import State
from prefect.logging.handlers import APILogHandler
from prefect.results import ResultRecord, ResultRecordMetadata
from prefect.serializers import JSONSerializer, PickleSerializer
from pydantic import BaseModel, model_validator

import segmind_core.images as images
from blocks import ObjectStorage, SegmindCredentials
from emulator import SegmindEmulator
from flows.common import record_storage
from flows.replace_background_then_merge import replace_background_then_merge
from segmind_core.images import InvalidInputImageError
from segmind_core.outputs import SIDECAR_SUFFIX
from segmind_core.thumbnails import THUMBNAILS_FOLDER
from tasks import EditResult, edit_image_with_kontext_pro
from tasks.caching import credentials_service_tag, storage_location_tag
from tasks.result_records import SERIALIZER_TYPE
from tests.conftest import EmulatorFactory, S3Server
from tests.support import file_server, image_bytes, wait_until

pytestmark = pytest.mark.usefixtures("prefect_harness")

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "examples" / "photos"
COFFEE = PHOTOS / "coffee.jpg"
CHELSEA = PHOTOS / "chelsea.jpg"
KEY = "SG_caching_key_SECRET_7781"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# The task as the flows use it, with Prefect's retry pause removed: a retry that
# should not happen shows up at once instead of costing 10 s.
edit = edit_image_with_kontext_pro.with_options(retry_delay_seconds=0)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def block_for(s3: S3Server, base_url: str) -> ObjectStorage:
    return ObjectStorage(
        base_url=base_url,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
    )


@pytest.fixture
def prefix() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def block(s3: S3Server, prefix: str) -> ObjectStorage:
    """A saved block on ``s3://outputs/<prefix>``, loaded back as a flow would."""
    name = unique("caching")
    block_for(s3, f"s3://outputs/{prefix}").save(name)
    loaded = ObjectStorage.load(name)
    assert loaded._block_document_id is not None
    return loaded


@pytest.fixture
def keyed_emulator(start_emulator: EmulatorFactory) -> SegmindEmulator:
    return start_emulator(api_key=KEY)


@pytest.fixture
def credentials(keyed_emulator: SegmindEmulator) -> SegmindCredentials:
    return SegmindCredentials(
        api_key=KEY, base_url=keyed_emulator.url, backoff_initial_s=0.01, backoff_max_s=0.05
    )


def billed(emulator: SegmindEmulator) -> int:
    count: int = emulator.stats()["billed"]
    return count


def run_in_flow(body: Callable[[], T]) -> T:
    @flow(name="caching-test")
    def wrapper() -> T:
        return body()

    return wrapper()


def run_edit(
    block: ObjectStorage,
    credentials: SegmindCredentials,
    *,
    task: Any = None,
    image: Any = COFFEE,
    seed: int | None = 5,
    prompt: str = "on a beach",
    records: Any = None,
) -> State[EditResult]:
    """One edit into ``block`` in its own flow run; returns the task's final state.

    The records go to ``records`` when given, else into ``block``.
    """
    chosen = (task or edit).with_options(result_storage=block if records is None else records)

    def body() -> State[EditResult]:
        state: State[EditResult] = chosen(
            prompt,
            image=image,
            seed=seed,
            credentials=credentials,
            storage=block,
            return_state=True,
        )
        return state

    return run_in_flow(lambda: {"state": body()})["state"]


def bucket_objects(s3: S3Server, prefix: str = "") -> dict[str, bytes]:
    """Every object in the bucket under ``prefix``, read by an independent client."""
    client = s3.client()
    objects: dict[str, bytes] = {}
    token: dict[str, str] = {}
    while True:
        listed = client.list_objects_v2(Bucket="outputs", Prefix=prefix, **token)
        for entry in listed.get("Contents", []):
            key = entry["Key"]
            objects[key] = client.get_object(Bucket="outputs", Key=key)["Body"].read()
        if not listed.get("IsTruncated"):
            return objects
        token = {"ContinuationToken": listed["NextContinuationToken"]}


def record_key(result: EditResult, credentials: SegmindCredentials) -> str:
    """The cache key of ``result``'s request made through ``credentials``."""
    return f"segmind-{result.request_digest}-{credentials_service_tag(credentials)}"


def cache_record(
    block: ObjectStorage, result: EditResult, credentials: SegmindCredentials
) -> ResultRecord[Any]:
    record: ResultRecord[Any] = ResultRecord.deserialize(
        block.read_path(record_key(result, credentials))
    )
    return record


# Check A: a second process is served from the records on S3 ------------------------------

FLOW_SCRIPT = textwrap.dedent(
    """
    import json
    import os

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from blocks import ObjectStorage
    from flows.replace_background_then_merge import replace_background_then_merge

    block = ObjectStorage(
        base_url=os.environ["TEST_S3_BASE_URL"],
        aws_access_key_id=os.environ["TEST_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["TEST_S3_SECRET_ACCESS_KEY"],
        endpoint_url=os.environ["TEST_S3_ENDPOINT_URL"],
        region_name=os.environ["TEST_S3_REGION"],
    )
    block.save(os.environ["TEST_BLOCK_NAME"])
    storage = ObjectStorage.load(os.environ["TEST_BLOCK_NAME"])
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        outcome = replace_background_then_merge(
            product_image=os.environ["TEST_PRODUCT_IMAGE"],
            second_image=os.environ["TEST_SECOND_IMAGE"],
            background_prompt="on a marble counter at sunrise",
            merge_prompt="the cat sitting next to the cup",
            seed=7,
            storage=storage,
        )
    print("OUTCOME " + json.dumps({
        "background": outcome.background_replaced.url,
        "merged": outcome.merged.url,
        "reused": [outcome.background_replaced.reused, outcome.merged.reused],
        "cost_usd": str(outcome.cost_usd),
        "seeds": outcome.seeds,
    }))
    """
)


def run_flow_in_new_process(
    script: Path, s3: S3Server, emulator: SegmindEmulator, base_url: str, home: Path
) -> tuple[dict[str, Any], str]:
    """Run the flow in a fresh interpreter with its own ephemeral Prefect; (outcome, output)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        SEGMIND_API_KEY=KEY,
        SEGMIND_BASE_URL=emulator.url,
        TEST_S3_BASE_URL=base_url,
        TEST_S3_ACCESS_KEY_ID=s3.access_key_id,
        TEST_S3_SECRET_ACCESS_KEY=s3.secret_access_key,
        TEST_S3_ENDPOINT_URL=s3.endpoint_url,
        TEST_S3_REGION=s3.region,
        TEST_BLOCK_NAME="outputs",
        TEST_PRODUCT_IMAGE=str(COFFEE),
        TEST_SECOND_IMAGE=str(CHELSEA),
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    completed = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("OUTCOME ")]
    assert len(lines) == 1, output[-4000:]
    outcome: dict[str, Any] = json.loads(lines[0].removeprefix("OUTCOME "))
    return outcome, output


def test_check_a_the_same_flow_in_a_second_process_pays_nothing_and_returns_the_same_urls(
    s3: S3Server, keyed_emulator: SegmindEmulator, tmp_path: Path, prefix: str
) -> None:
    script = tmp_path / "run_flow.py"
    script.write_text(FLOW_SCRIPT)
    base_url = f"s3://outputs/{prefix}"
    homes = [tmp_path / "home-1", tmp_path / "home-2"]
    for home in homes:
        home.mkdir()

    first, first_output = run_flow_in_new_process(script, s3, keyed_emulator, base_url, homes[0])

    assert billed(keyed_emulator) == 2
    assert first["reused"] == [False, False]
    assert first["cost_usd"] == "0.10"
    assert first["seeds"] == {"background": 7, "merge": 7}

    second, second_output = run_flow_in_new_process(script, s3, keyed_emulator, base_url, homes[1])

    stats = keyed_emulator.stats()
    assert stats["billed"] == 2
    assert stats["requests"] == 2, "the second process called the service"
    assert (second["background"], second["merged"]) == (first["background"], first["merged"])
    assert second["reused"] == [True, True]
    assert second["cost_usd"] == "0.00"
    # Served by Prefect from the records, not by the task body finding the outputs.
    assert first_output.count("Finished in state Cached") == 0
    assert second_output.count("Finished in state Cached") == 2, second_output[-4000:]
    assert "already stored at" not in second_output
    # Each process had its own Prefect database: the records it found were on S3.
    assert all((home / "prefect.db").exists() for home in homes)
    for output in (first_output, second_output):
        assert s3.secret_access_key not in output
        assert KEY not in output

    objects = bucket_objects(s3, f"{prefix}/")
    keys = {key.removeprefix(f"{prefix}/") for key in objects}
    for url in (first["background"], first["merged"]):
        assert url.startswith(f"{base_url}/")
        key = url.removeprefix(f"{base_url}/")
        assert key in keys
        assert key + SIDECAR_SUFFIX in keys

    sidecars = 0
    for key, data in objects.items():
        if not key.lower().endswith(IMAGE_SUFFIXES):
            continue
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert image.format in ("PNG", "JPEG"), key
        relative = key.removeprefix(f"{prefix}/")
        if relative.startswith(f"{THUMBNAILS_FOLDER}/"):  # the artifacts' thumbnail of an image
            image = relative.removeprefix(f"{THUMBNAILS_FOLDER}/").removesuffix(".jpg")
            assert f"{prefix}/{image}" in objects, key
            continue
        sidecar_data = objects.get(key + SIDECAR_SUFFIX)
        if sidecar_data is None:
            # Only copies of the inputs go without a sidecar.
            assert relative.startswith("inputs/") or "/runs/" in relative, key
            assert data in (COFFEE.read_bytes(), CHELSEA.read_bytes()), key
            continue
        sidecar = json.loads(sidecar_data)
        sidecars += 1
        assert sidecar["output"]["sha256"] == hashlib.sha256(data).hexdigest(), key
        assert sidecar["output"]["bytes"] == len(data)
        assert sidecar["output"]["url"] == f"s3://outputs/{key}"
        assert sidecar["seed"] == 7
    assert sidecars == 2
    # Every sidecar has its image.
    for key in objects:
        if key.endswith(SIDECAR_SUFFIX):
            assert key.removesuffix(SIDECAR_SUFFIX) in objects
    # The records the second process was served from are beside the outputs.
    records = [k for k in keys if k.startswith("segmind-")]
    assert len(records) == 2


# Check B: concurrent identical requests are paid once --------------------------------------


def test_check_b_ten_identical_concurrent_requests_are_paid_once(
    s3: S3Server, start_emulator: EmulatorFactory, block: ObjectStorage
) -> None:
    emulator = start_emulator(api_key=KEY, latency_s=0.3)
    credentials = SegmindCredentials(api_key=KEY, base_url=emulator.url)
    task = edit.with_options(result_storage=block)

    def body() -> list[tuple[str, EditResult]]:
        futures = [
            task.submit("on a beach", image=COFFEE, seed=11, credentials=credentials, storage=block)
            for _ in range(10)
        ]
        results = [future.result() for future in futures]
        return [
            (future.state.name or "", result)
            for future, result in zip(futures, results, strict=True)
        ]

    outcomes = run_in_flow(body)

    assert len(outcomes) == 10
    stats = emulator.stats()
    assert stats["billed"] == 1
    assert stats["requests"] == 1
    assert len({result.url for _, result in outcomes}) == 1
    assert len({result.sha256 for _, result in outcomes}) == 1
    names = sorted(name for name, _ in outcomes)
    assert names.count("Cached") == 9, names
    assert names.count("Completed") == 1, names


# What is and is not served from the cache ------------------------------------------------------


def test_a_pinned_request_in_a_second_flow_run_is_served_from_the_cache(
    block: ObjectStorage, credentials: SegmindCredentials, keyed_emulator: SegmindEmulator
) -> None:
    first = run_edit(block, credentials)
    second = run_edit(block, credentials)

    assert first.name == "Completed"
    assert second.name == "Cached"
    assert second.result().url == first.result().url
    assert billed(keyed_emulator) == 1
    record = cache_record(block, first.result(), credentials)
    assert record.result == first.result()


def test_unseeded_requests_are_never_served_from_the_cache(
    block: ObjectStorage,
    credentials: SegmindCredentials,
    keyed_emulator: SegmindEmulator,
    s3: S3Server,
) -> None:
    first = run_edit(block, credentials, seed=None)
    second = run_edit(block, credentials, seed=None)

    assert first.name == second.name == "Completed"
    one, two = first.result(), second.result()
    assert one.url != two.url
    assert one.seed != two.seed
    assert not one.reused
    assert not two.reused
    assert billed(keyed_emulator) == 2
    assert not [k for k in bucket_objects(s3) if "/segmind-" in k], "an unseeded run was recorded"


def test_refresh_cache_pays_again(
    block: ObjectStorage, credentials: SegmindCredentials, keyed_emulator: SegmindEmulator
) -> None:
    # The flow documents refresh_cache as "Generate again even when a cached result
    # exists (pays again)".
    first = run_edit(block, credentials)
    refreshed = run_edit(block, credentials, task=edit.with_options(refresh_cache=True))

    assert first.name == "Completed"
    assert refreshed.name == "Completed"
    result = refreshed.result()
    assert (billed(keyed_emulator), result.reused, result.cost_usd) == (2, False, Decimal("0.05"))


def test_an_expired_cache_entry_is_recomputed(
    block: ObjectStorage, credentials: SegmindCredentials, keyed_emulator: SegmindEmulator
) -> None:
    expiring = edit.with_options(cache_expiration=timedelta(seconds=1), result_storage=block)
    kwargs: dict[str, Any] = {
        "image": COFFEE,
        "seed": 5,
        "credentials": credentials,
        "storage": block,
        "return_state": True,
    }

    def body() -> dict[str, Any]:
        first = expiring("on a beach", **kwargs)
        fresh = expiring("on a beach", **kwargs)
        expiration = cache_record(block, first.result(), credentials).metadata.expiration
        assert expiration is not None
        wait_until(lambda: datetime.now(UTC) > expiration, timeout=5, what="the entry to expire")
        expired = expiring("on a beach", **kwargs)
        return {"states": (first, fresh, expired), "expiration": expiration}

    outcome = run_in_flow(body)
    first, fresh, expired = outcome["states"]

    assert first.name == "Completed"
    assert fresh.name == "Cached"
    assert expired.name == "Completed", "an expired entry was served"
    assert expired.result().url == first.result().url
    # The task ran again and wrote a new record with a new expiration.
    renewed = cache_record(block, first.result(), credentials).metadata.expiration
    assert renewed is not None
    assert renewed > outcome["expiration"]


def test_an_http_input_is_identified_by_its_url_not_its_content(
    block: ObjectStorage, credentials: SegmindCredentials, keyed_emulator: SegmindEmulator
) -> None:
    # Documented: the service fetches http(s) inputs, this project never sees them,
    # so the URL is the identity. New content under the same URL is still a hit.
    files: dict[str, tuple[int, bytes, str]] = {
        "/product.png": (200, image_bytes((200, 0, 0), (300, 200)), "image/png")
    }
    with file_server(files) as base:
        url = f"{base}/product.png"
        first = run_edit(block, credentials, image=url)
        files["/product.png"] = (200, image_bytes((0, 0, 200), (200, 300)), "image/png")
        second = run_edit(block, credentials, image=url)

    assert first.name == "Completed"
    assert second.name == "Cached"
    assert second.result().url == first.result().url
    assert billed(keyed_emulator) == 1


def test_a_local_file_is_identified_by_its_content(
    block: ObjectStorage,
    credentials: SegmindCredentials,
    keyed_emulator: SegmindEmulator,
    tmp_path: Path,
) -> None:
    path = tmp_path / "product.png"
    path.write_bytes(image_bytes((200, 0, 0), (300, 200)))
    first = run_edit(block, credentials, image=path)
    same = run_edit(block, credentials, image=str(path))
    path.write_bytes(image_bytes((0, 0, 200), (300, 200)))
    changed = run_edit(block, credentials, image=path)

    assert first.name == "Completed"
    assert same.name == "Cached"
    assert changed.name == "Completed"
    assert changed.result().url != first.result().url
    assert changed.result().request_digest != first.result().request_digest
    assert billed(keyed_emulator) == 2


# Check C: bad inputs fail at once, before anything is sent ------------------------------------


@pytest.mark.parametrize("kind", ["not-an-image", "bmp", "oversized"])
def test_check_c_a_bad_input_fails_the_task_before_any_request(
    block: ObjectStorage,
    credentials: SegmindCredentials,
    keyed_emulator: SegmindEmulator,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    data = {
        "not-an-image": b"not an image",
        "bmp": image_bytes(fmt="BMP"),
        "oversized": COFFEE.read_bytes(),
    }[kind]
    if kind == "oversized":
        monkeypatch.setattr(images, "MAX_INPUT_BYTES", len(data) - 1)
    task = edit.with_options(result_storage=block)

    def body() -> dict[str, State[EditResult]]:
        state: State[EditResult] = task(
            "on a beach",
            image=data,
            seed=5,
            credentials=credentials,
            storage=block,
            return_state=True,
        )
        return {"state": state}

    state = run_in_flow(body)["state"]

    assert state.is_failed()
    with pytest.raises(InvalidInputImageError):
        state.result()
    assert keyed_emulator.stats()["requests"] == 0
    task_run_id = state.state_details.task_run_id
    assert task_run_id is not None

    def recorded_final() -> Any:
        # The server records task-run states from events, a moment after the flow returns.
        with get_client(sync_client=True) as client:
            run = client.read_task_run(task_run_id)
        return run if run.state is not None and run.state.is_final() else None

    task_run = wait_until(recorded_final, timeout=30, what="the task run's final state")
    assert task_run.run_count == 1, "the task was retried"
    assert task_run.state.is_failed()


# Check D: the storage secret appears nowhere ---------------------------------------------------


def test_check_d_the_storage_secret_is_in_no_repr_log_object_state_or_result(
    s3: S3Server,
    keyed_emulator: SegmindEmulator,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SEGMIND_API_KEY", KEY)
    monkeypatch.setenv("SEGMIND_BASE_URL", keyed_emulator.url)
    secret = s3.secret_access_key
    name = unique("secret-check")
    block_for(s3, f"s3://outputs/{prefix}").save(name)
    block = ObjectStorage.load(name)
    assert block.aws_secret_access_key is not None
    assert block.aws_secret_access_key.get_secret_value() == secret  # the secret is in use

    state = replace_background_then_merge(
        product_image=str(COFFEE),
        second_image=str(CHELSEA),
        background_prompt="on a marble counter",
        merge_prompt="the cat next to the cup",
        seed=3,
        storage=block,
        return_state=True,
    )

    assert state.is_completed()
    outcome = state.result()
    assert billed(keyed_emulator) == 2

    haystacks: dict[str, str] = {}
    # The block, after use.
    haystacks["block repr"] = repr(block)
    haystacks["block str"] = str(block)
    haystacks["block json"] = block.model_dump_json()
    # Every log record this process produced, at every level.
    haystacks["captured logs"] = "\n".join(
        f"{record.name} {record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    # The logs the Prefect server keeps for the flow run and its tasks.
    APILogHandler().flush()
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None

    def server_logs() -> list[Any]:
        with get_client(sync_client=True) as client:
            logs: list[Any] = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        return logs if any("Page:" in log.message for log in logs) else []

    logs = wait_until(server_logs, timeout=15, what="the flow run's logs to reach the server")
    haystacks["server logs"] = "\n".join(log.model_dump_json() for log in logs)
    # The flow run, its parameters, its task runs and their states.
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        own_task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert len(own_task_runs) == 3
    haystacks["flow run"] = flow_run.model_dump_json()
    # The block parameter is recorded, with its secrets masked.
    masked = flow_run.parameters["storage"]["aws_secret_access_key"]
    assert set(masked) == {"*"}
    haystacks["task runs"] = "\n".join(t.model_dump_json() for t in own_task_runs)
    haystacks["flow state"] = repr(state) + state.model_dump_json()
    haystacks["flow result"] = outcome.model_dump_json() + repr(outcome)
    # Every object in the bucket: images, sidecars, cache records, the page.
    objects = bucket_objects(s3)
    assert any(key.endswith(SIDECAR_SUFFIX) for key in objects)
    assert any("/segmind-" in key for key in objects)
    assert any(key.endswith(".html") for key in objects)
    for key, data in objects.items():
        assert secret.encode() not in data, key
        assert KEY.encode() not in data, key
        if "/segmind-" in key:
            record = ResultRecord.deserialize(data)
            haystacks[f"record {key}"] = repr(record.result) + record.model_dump_json()
    sidecar_texts = [data.decode() for key, data in objects.items() if key.endswith(".json")]
    assert len(sidecar_texts) == 2

    assert "Page:" in haystacks["captured logs"]
    assert "s3://" in haystacks["server logs"]
    for where, text in haystacks.items():
        assert secret not in text, where
        assert "SECRET" not in text, where
    for text in sidecar_texts:
        assert secret not in text
        assert "SECRET" not in text


# Records are JSON of the EditResult, and nothing in a record is run ---------------------------


class Tripwire(BaseModel):
    """Creates the file ``marker`` when validated: what Prefect's JSON decoder would build."""

    marker: str

    @model_validator(mode="after")
    def touch(self) -> Tripwire:
        Path(self.marker).touch()
        return self


class TouchOnUnpickle:
    """Creates the file ``marker`` when unpickled: a planted record's payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


def planted_record(serializer: str, marker: Path) -> bytes:
    """A record as Prefect itself writes one, whose result creates ``marker`` when read."""
    record: ResultRecord[Any]
    if serializer == "pickle":
        record = ResultRecord(
            metadata=ResultRecordMetadata(serializer=PickleSerializer()),
            result=TouchOnUnpickle(marker),
        )
    else:
        record = ResultRecord(
            metadata=ResultRecordMetadata(serializer=JSONSerializer()),
            result=Tripwire.model_construct(marker=str(marker)),
        )
    data = record.serialize()
    # The payload is live: Prefect's own reader runs it.
    ResultRecord.deserialize(data)
    assert marker.exists()
    marker.unlink()
    return data


def test_a_record_is_json_of_the_edit_result(
    block: ObjectStorage, credentials: SegmindCredentials, keyed_emulator: SegmindEmulator
) -> None:
    result = run_edit(block, credentials).result()

    document = json.loads(block.read_path(record_key(result, credentials)))
    assert document["metadata"]["serializer"] == {"type": SERIALIZER_TYPE}
    assert EditResult.model_validate_json(document["result"]) == result


@pytest.mark.parametrize(
    ("where", "serializer"),
    [("saved block", "pickle"), ("saved block", "json"), ("local folder", "pickle")],
)
def test_a_planted_record_runs_nothing_and_the_task_returns_its_stored_output(
    s3: S3Server,
    keyed_emulator: SegmindEmulator,
    credentials: SegmindCredentials,
    prefix: str,
    tmp_path: Path,
    where: str,
    serializer: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "the-record-ran-code"
    storage: ObjectStorage
    if where == "saved block":
        name = unique("planted")
        block_for(s3, f"s3://outputs/{prefix}").save(name)
        storage = ObjectStorage.load(name)
    else:  # unsaved: the flows keep its records in its .prefect-records folder
        storage = ObjectStorage(base_url=str(tmp_path / "outputs"))
    records = record_storage(storage)
    first = run_edit(storage, credentials, records=records).result()
    key = record_key(first, credentials)
    if where == "saved block":
        read, write = (lambda: storage.read_path(key)), (lambda d: storage.write_path(key, d))
    else:
        assert isinstance(records, Path)
        key += f"-{storage_location_tag(storage)}"  # unsaved storage: the key names it
        read, write = (records / key).read_bytes, (records / key).write_bytes
    assert json.loads(read())["result"]  # the record the next run looks up is there

    write(planted_record(serializer, marker))
    again = run_edit(storage, credentials, records=records)

    assert not marker.exists(), "reading the cache record ran its code"
    assert again.name == "Completed"  # a miss: the task ran and found its stored output
    result = again.result()
    assert (result.url, result.sha256, result.reused) == (first.url, first.sha256, True)
    assert billed(keyed_emulator) == 1
    refusals = [
        r.getMessage() for r in caplog.records if "ignored (its serializer" in r.getMessage()
    ]
    assert refusals == [
        f"Cache record {key} ignored (its serializer is '{serializer}',"
        f" not '{SERIALIZER_TYPE}'); the task runs instead."
    ]
    # The planted record was replaced by the task's own.
    document = json.loads(read())
    assert document["metadata"]["serializer"] == {"type": SERIALIZER_TYPE}
    assert EditResult.model_validate_json(document["result"]) == result


def delete_objects(s3: S3Server, prefix: str, *keys: str) -> None:
    client = s3.client()
    for key in keys:
        client.delete_object(Bucket="outputs", Key=f"{prefix}/{key}")


@pytest.mark.parametrize("deleted", ["image and sidecar", "sidecar"])
def test_a_record_of_a_deleted_output_is_not_served_and_the_output_is_paid_for_again(
    block: ObjectStorage,
    credentials: SegmindCredentials,
    keyed_emulator: SegmindEmulator,
    s3: S3Server,
    prefix: str,
    deleted: str,
) -> None:
    first = run_edit(block, credentials).result()
    keys = {"image and sidecar": [first.key, first.key + SIDECAR_SUFFIX]}
    delete_objects(s3, prefix, *keys.get(deleted, [first.key + SIDECAR_SUFFIX]))

    again = run_edit(block, credentials)

    assert again.name == "Completed", "a record of a deleted output was served"
    result = again.result()
    assert (billed(keyed_emulator), result.reused, result.cost_usd) == (2, False, Decimal("0.05"))
    assert result.url == first.url
    objects = bucket_objects(s3, f"{prefix}/")
    image = objects[f"{prefix}/{result.key}"]
    assert hashlib.sha256(image).hexdigest() == result.sha256
    assert json.loads(objects[f"{prefix}/{result.key}{SIDECAR_SUFFIX}"])["seed"] == 5
    assert cache_record(block, result, credentials).result == result


def test_a_record_whose_image_was_deleted_is_not_served(
    block: ObjectStorage,
    credentials: SegmindCredentials,
    keyed_emulator: SegmindEmulator,
    s3: S3Server,
    prefix: str,
) -> None:
    first = run_edit(block, credentials).result()
    delete_objects(s3, prefix, first.key)

    again = run_edit(block, credentials)

    assert again.name == "Completed", "a record of a deleted image was served"
    # The sidecar left behind is not trusted either: the image is made and paid again.
    result = again.result()
    assert (billed(keyed_emulator), result.reused, result.url) == (2, False, first.url)
    image = bucket_objects(s3, f"{prefix}/")[f"{prefix}/{result.key}"]
    assert hashlib.sha256(image).hexdigest() == result.sha256


def test_a_record_made_by_another_service_is_not_served(
    block: ObjectStorage,
    credentials: SegmindCredentials,
    keyed_emulator: SegmindEmulator,
    start_emulator: EmulatorFactory,
    s3: S3Server,
    prefix: str,
) -> None:
    other_emulator = start_emulator(api_key=KEY)
    other = credentials.model_copy(update={"base_url": other_emulator.url})

    first = run_edit(block, credentials).result()
    second = run_edit(block, other)
    again = [run_edit(block, c) for c in (credentials, other)]

    assert second.name == "Completed", "another service's record was served"
    made = second.result()
    assert (billed(keyed_emulator), billed(other_emulator)) == (1, 1)
    assert (made.reused, made.cost_usd) == (False, Decimal("0.05"))
    assert made.url != first.url
    assert [state.name for state in again] == ["Cached", "Cached"]
    assert [state.result().url for state in again] == [first.url, made.url]
    objects = bucket_objects(s3, f"{prefix}/")
    for result in (first, made):
        assert hashlib.sha256(objects[f"{prefix}/{result.key}"]).hexdigest() == result.sha256


def test_a_local_folder_record_of_a_deleted_output_is_not_served(
    credentials: SegmindCredentials, keyed_emulator: SegmindEmulator, tmp_path: Path
) -> None:
    storage = ObjectStorage(base_url=str(tmp_path / "outputs"))
    records = record_storage(storage)  # its .prefect-records folder, as the flows use it
    first = run_edit(storage, credentials, records=records).result()
    for key in (first.key, first.key + SIDECAR_SUFFIX):
        (tmp_path / "outputs" / key).unlink()

    again = run_edit(storage, credentials, records=records)

    assert again.name == "Completed", "a record of a deleted output was served"
    result = again.result()
    assert (billed(keyed_emulator), result.reused, result.url) == (2, False, first.url)
    assert hashlib.sha256(Path(result.url).read_bytes()).hexdigest() == result.sha256
