"""generate_and_store: a real client against the emulator, outputs on memory:// and moto S3."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from moto.server import ThreadedMotoServer

import segmind_core.images as images
from emulator import SegmindEmulator
from segmind_core.client import GeneratedImage, SegmindClient
from segmind_core.contract import SegmindRequest
from segmind_core.errors import OutputNotStoredError, TransientError
from segmind_core.generation import EditResult, generate_and_store
from segmind_core.images import InvalidInputImageError
from segmind_core.object_store import ObjectStore
from segmind_core.outputs import SIDECAR_SUFFIX, SPILL_DIR_ENV, OutputStore, StorageRetry
from segmind_core.request_spec import RequestSpec
from tests.conftest import EmulatorFactory, S3Server
from tests.support import data_uri, decode, file_server, image_bytes, serving

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
COFFEE = PHOTOS / "coffee.jpg"  # 600x400
CHELSEA = PHOTOS / "chelsea.jpg"  # 451x300
# A key the emulator accepts, recognisable anywhere it must not be.
KEY = "SG_generation_key_SECRET_0451"
DAY = date(2026, 3, 14)
FLOW = "generation-test"
SEED_BOUND = 2**31


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RecordingClient(SegmindClient):
    """A real client that also keeps every request it was asked to send."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[SegmindRequest] = []

    def generate(
        self, slug: str, params: Mapping[str, Any] | SegmindRequest, **options: Any
    ) -> GeneratedImage:
        assert isinstance(params, SegmindRequest)
        self.sent.append(params)
        return super().generate(slug, params, **options)


@dataclass
class Backend:
    """An output store and an independent view of what it holds."""

    kind: str
    outputs: OutputStore
    base_url: str
    s3: S3Server | None = None
    raw: dict[str, bytes] = field(default_factory=dict)

    @property
    def store(self) -> ObjectStore:
        return self.outputs.store

    def objects(self) -> dict[str, bytes]:
        """Every object under the base URL, by key, read without the product's code."""
        if self.s3 is not None:
            client = self.s3.client()
            prefix = self.base_url.removeprefix("s3://outputs/") + "/"
            listed = client.list_objects_v2(Bucket="outputs", Prefix=prefix).get("Contents", [])
            return {
                o["Key"].removeprefix(prefix): client.get_object(Bucket="outputs", Key=o["Key"])[
                    "Body"
                ].read()
                for o in listed
            }
        fs = self.store.fs
        root = "/" + self.store.root.lstrip("/")
        return {
            path.removeprefix(root + "/"): fs.cat_file(path)
            for path in fs.find(root)
            if not fs.isdir(path)
        }


def s3_output_store(s3: S3Server, base_url: str) -> OutputStore:
    return OutputStore(
        ObjectStore.from_url(
            base_url,
            key=s3.access_key_id,
            secret=s3.secret_access_key,
            endpoint_url=s3.endpoint_url,
            client_kwargs={"region_name": s3.region},
        )
    )


@pytest.fixture(params=["memory", "s3"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    name = uuid.uuid4().hex
    if request.param == "memory":
        base_url = f"memory://gen-{name}"
        outputs = OutputStore(ObjectStore.from_url(base_url))
        yield Backend("memory", outputs, base_url)
        root = "/" + outputs.store.root.lstrip("/")
        if outputs.store.fs.exists(root):
            outputs.store.fs.rm(root, recursive=True)
        return
    s3: S3Server = request.getfixturevalue("s3")
    base_url = f"s3://outputs/{name}"
    yield Backend("s3", s3_output_store(s3, base_url), base_url, s3=s3)


@pytest.fixture
def keyed_emulator(start_emulator: EmulatorFactory) -> SegmindEmulator:
    return start_emulator(api_key=KEY)


@pytest.fixture
def client(keyed_emulator: SegmindEmulator) -> Iterator[RecordingClient]:
    with RecordingClient(KEY, base_url=keyed_emulator.url) as client:
        yield client


def generate(
    client: SegmindClient, spec: RequestSpec, outputs: OutputStore, **kwargs: Any
) -> EditResult:
    return generate_and_store(client, spec, outputs, flow_name=FLOW, day=DAY, **kwargs)


def edit_spec(image: Any = COFFEE, seed: int | None = 7, prompt: str = "on a beach") -> RequestSpec:
    return RequestSpec("flux-kontext-pro", {"prompt": prompt, "seed": seed}, {"input_image": image})


def sidecar_of(backend: Backend, result: EditResult) -> tuple[str, dict[str, Any]]:
    text = backend.objects()[result.key + SIDECAR_SUFFIX].decode()
    return text, json.loads(text)


def billed(emulator: SegmindEmulator) -> int:
    count: int = emulator.stats()["billed"]
    return count


# Storing ------------------------------------------------------------------------------


def test_stores_the_image_and_a_sidecar_that_says_how_it_was_made(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator
) -> None:
    result = generate(client, edit_spec(str(COFFEE)), backend.outputs, run_ids={"flow_run_id": "f"})

    assert not result.reused
    assert result.seed == 7
    assert result.cost_usd == Decimal("0.05")
    assert result.key == f"{FLOW}/2026-03-14/{result.request_digest}.png"
    assert result.url == backend.store.url(result.key)
    objects = backend.objects()
    image = objects[result.key]
    assert sha256(image) == result.sha256
    loaded = backend.outputs.load(result.key)
    assert loaded is not None
    assert backend.outputs.read_verified(loaded) == image
    assert decode(image).size == (result.width, result.height) == (1248, 832)  # 3:2 input

    text, sidecar = sidecar_of(backend, result)
    coffee_sha = sha256(COFFEE.read_bytes())
    assert sidecar["slug"] == "flux-kontext-pro"
    assert sidecar["request_digest"] == result.request_digest
    assert sidecar["parameters"]["seed"] == 7
    assert sidecar["parameters"]["prompt"] == "on a beach"
    assert sidecar["seed"] == 7
    assert sidecar["inputs"] == {"input_image": str(COFFEE)}
    assert sidecar["input_identities"] == {"input_image": f"sha256:{coffee_sha}"}
    assert Decimal(sidecar["cost_usd"]) == Decimal("0.05")
    assert sidecar["flow_run_id"] == "f"
    assert sidecar["output"]["sha256"] == result.sha256
    assert sidecar["output"]["key"] == result.key
    assert KEY not in text
    assert "data:image" not in text
    assert "Signature" not in text
    assert billed(keyed_emulator) == 1


def test_bytes_and_data_uri_inputs_are_recorded_by_digest_never_inline(
    backend: Backend, client: RecordingClient
) -> None:
    first = image_bytes((20, 200, 20), (300, 300))
    second = image_bytes((20, 20, 200), (200, 100))
    second_uri = data_uri(second)
    spec = RequestSpec(
        "multi-image-kontext-pro",
        {"prompt": "side by side", "seed": 3},
        {"input_image_1": first, "input_image_2": second_uri},
    )

    result = generate(client, spec, backend.outputs)

    text, sidecar = sidecar_of(backend, result)
    assert sidecar["inputs"] == {
        "input_image_1": f"sha256:{sha256(first)}",
        "input_image_2": f"sha256:{sha256(second)}",
    }
    assert sidecar["input_identities"] == sidecar["inputs"]
    assert "data:" not in text
    assert "base64" not in text
    assert KEY not in text
    assert decode(backend.objects()[result.key]).size == (1024, 1024)  # 1:1 from input 1


def test_an_http_input_is_sent_and_recorded_as_its_url(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator
) -> None:
    files = {"/cup.jpg": (200, COFFEE.read_bytes(), "image/jpeg")}
    with file_server(files) as base:
        url = f"{base}/cup.jpg"
        result = generate(client, edit_spec(url), backend.outputs)

    assert client.sent[0].input_images() == [("input_image", url)]
    _, sidecar = sidecar_of(backend, result)
    assert sidecar["inputs"] == {"input_image": url}
    assert sidecar["input_identities"] == {"input_image": url}
    assert billed(keyed_emulator) == 1


def test_a_presigned_input_url_is_recorded_without_its_signature(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator
) -> None:
    query = "X-Amz-Signature=SIGNATURE-SECRET&X-Amz-Security-Token=TOKEN"
    files = {f"/cup.jpg?{query}": (200, COFFEE.read_bytes(), "image/jpeg")}
    with file_server(files) as base:
        url = f"{base}/cup.jpg?{query}"
        result = generate(client, edit_spec(url), backend.outputs)

    assert client.sent[0].input_images() == [("input_image", url)]  # sent as given
    text, sidecar = sidecar_of(backend, result)
    identity = sidecar["input_identities"]["input_image"]
    assert identity == f"{base}/cup.jpg"  # the signature is no part of the identity
    assert sidecar["inputs"] == {"input_image": f"{base}/cup.jpg?..."}
    assert "SIGNATURE-SECRET" not in text
    assert "TOKEN" not in text
    assert billed(keyed_emulator) == 1


# Reuse ------------------------------------------------------------------------------


def test_a_second_identical_pinned_call_reuses_the_stored_output(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator
) -> None:
    first = generate(client, edit_spec(), backend.outputs)
    objects_after_first = backend.objects()

    # The same content given another way (bytes instead of the path) is the same request.
    second = generate(client, edit_spec(COFFEE.read_bytes()), backend.outputs)

    assert not first.reused
    assert second.reused
    assert second.cost_usd == 0
    assert second.attempts == 0
    assert (second.url, second.key, second.sha256, second.seed, second.request_digest) == (
        first.url,
        first.key,
        first.sha256,
        first.seed,
        first.request_digest,
    )
    assert billed(keyed_emulator) == 1
    assert len(client.sent) == 1
    assert backend.objects() == objects_after_first


def test_a_different_pinned_request_is_not_reused(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator
) -> None:
    first = generate(client, edit_spec(seed=7), backend.outputs)
    other_seed = generate(client, edit_spec(seed=8), backend.outputs)
    other_prompt = generate(client, edit_spec(seed=7, prompt="in the snow"), backend.outputs)
    other_image = generate(client, edit_spec(CHELSEA, seed=7), backend.outputs)

    results = [first, other_seed, other_prompt, other_image]
    assert not any(r.reused for r in results)
    assert len({r.key for r in results}) == 4
    assert len({r.request_digest for r in results}) == 4
    assert billed(keyed_emulator) == 4


@pytest.mark.parametrize("seed", [None, -1])
def test_an_unpinned_seed_draws_a_new_one_and_keeps_what_was_paid_for(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator, seed: int | None
) -> None:
    first = generate(client, edit_spec(seed=seed), backend.outputs)
    second = generate(client, edit_spec(seed=seed), backend.outputs)

    assert not first.reused
    assert not second.reused
    assert 0 <= first.seed < SEED_BOUND
    assert 0 <= second.seed < SEED_BOUND
    assert first.seed != second.seed
    assert first.key != second.key
    assert first.request_digest != second.request_digest
    assert billed(keyed_emulator) == 2
    # The seed actually sent is the one recorded, in the request and in the sidecar.
    assert [r.seed for r in client.sent] == [first.seed, second.seed]
    objects = backend.objects()
    for result in (first, second):
        assert sha256(objects[result.key]) == result.sha256
        sidecar = json.loads(objects[result.key + SIDECAR_SUFFIX])
        assert sidecar["seed"] == result.seed
        assert sidecar["parameters"]["seed"] == result.seed
    # Asking again with the recorded seed is the same request: served from the store.
    again = generate(client, edit_spec(seed=first.seed), backend.outputs)
    assert again.reused
    assert again.key == first.key
    assert billed(keyed_emulator) == 2


def test_a_job_id_names_the_output_and_another_request_under_it_keeps_the_first(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator
) -> None:
    first = generate(client, edit_spec(seed=1), backend.outputs, job_id="Order #12")
    same = generate(client, edit_spec(seed=1), backend.outputs, job_id="Order #12")
    changed = generate(client, edit_spec(seed=2), backend.outputs, job_id="Order #12")

    assert first.key == f"{FLOW}/2026-03-14/order-12.png"
    assert same.reused
    assert not changed.reused
    # The image paid for first is kept; the new one is named by the job id and a time.
    assert re.fullmatch(rf"{FLOW}/2026-03-14/order-12-\d{{8}}t\d{{12}}z\.png", changed.key)
    assert changed.sha256 != first.sha256
    objects = backend.objects()
    assert sha256(objects[first.key]) == first.sha256
    assert sha256(objects[changed.key]) == changed.sha256
    assert billed(keyed_emulator) == 2
    _, sidecar = sidecar_of(backend, changed)
    assert sidecar["request_digest"] == changed.request_digest
    assert sidecar["job_id"] == "Order #12"
    assert sha256(backend.objects()[changed.key]) == changed.sha256


# S3: inputs by presigned URL ------------------------------------------------------------


def presigned_gets(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The signed GETs the moto server answered with 200, from its request log."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "werkzeug"
        and '"GET /' in record.getMessage()
        and "Signature=" in record.getMessage()
        and '" 200' in record.getMessage()
    ]


def test_on_s3_local_inputs_are_uploaded_and_sent_as_presigned_urls(
    s3: S3Server,
    client: RecordingClient,
    keyed_emulator: SegmindEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="werkzeug")
    prefix = uuid.uuid4().hex
    outputs = s3_output_store(s3, f"s3://outputs/{prefix}")
    png = image_bytes((90, 10, 160), (320, 240))
    path = tmp_path / "product.png"
    path.write_bytes(png)
    spec = RequestSpec(
        "multi-image-kontext-pro",
        {"prompt": "together", "seed": 4},
        {"input_image_1": path, "input_image_2": CHELSEA.read_bytes()},
    )

    result = generate(client, spec, outputs)

    png_key = f"{prefix}/inputs/{sha256(png)}.png"
    jpg_key = f"{prefix}/inputs/{sha256(CHELSEA.read_bytes())}.jpg"
    bucket = s3.client()
    keys = {o["Key"] for o in bucket.list_objects_v2(Bucket="outputs")["Contents"]}
    assert {png_key, jpg_key} <= keys
    assert bucket.get_object(Bucket="outputs", Key=png_key)["Body"].read() == png
    # What was sent: presigned URLs of those objects on the S3 server, no inline data.
    refs = dict(client.sent[0].input_images())
    assert refs["input_image_1"].startswith(f"{s3.endpoint_url}/outputs/{png_key}?")
    assert refs["input_image_2"].startswith(f"{s3.endpoint_url}/outputs/{jpg_key}?")
    for ref in refs.values():
        assert "Signature=" in ref
        assert s3.secret_access_key not in ref
    # The emulator fetched them from S3 with those URLs, and billed the call.
    assert billed(keyed_emulator) == 1
    fetched = presigned_gets(caplog)
    assert any(f"/outputs/{png_key}?" in line for line in fetched)
    assert any(f"/outputs/{jpg_key}?" in line for line in fetched)
    assert keyed_emulator.stats()["by_status"] == {"200": 1}
    text = bucket.get_object(Bucket="outputs", Key=f"{prefix}/{result.key}.json")["Body"].read()
    sidecar = json.loads(text)
    assert sidecar["inputs"] == {
        "input_image_1": str(path),
        "input_image_2": f"sha256:{sha256(CHELSEA.read_bytes())}",
    }
    for forbidden in (b"Signature", b"data:", KEY.encode(), s3.secret_access_key.encode()):
        assert forbidden not in text


def test_an_s3_input_in_the_same_bucket_is_presigned_directly(
    s3: S3Server,
    client: RecordingClient,
    keyed_emulator: SegmindEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="werkzeug")
    prefix = uuid.uuid4().hex
    outputs = s3_output_store(s3, f"s3://outputs/{prefix}")
    key = f"{prefix}/uploads/cup.jpg"  # under the output storage's prefix: readable
    s3.client().put_object(Bucket="outputs", Key=key, Body=COFFEE.read_bytes())

    result = generate(client, edit_spec(f"s3://outputs/{key}"), outputs)

    ref = dict(client.sent[0].input_images())["input_image"]
    assert ref.startswith(f"{s3.endpoint_url}/outputs/{key}?")
    assert "Signature=" in ref
    assert billed(keyed_emulator) == 1
    assert any(f"/outputs/{key}?" in line for line in presigned_gets(caplog))
    listed = s3.client().list_objects_v2(Bucket="outputs", Prefix=f"{prefix}/inputs/")
    assert listed.get("KeyCount", 0) == 0, "an object already in the bucket was copied"
    sidecar = json.loads(
        s3.client().get_object(Bucket="outputs", Key=f"{prefix}/{result.key}.json")["Body"].read()
    )
    assert sidecar["inputs"] == {"input_image": f"s3://outputs/{key}"}
    assert sidecar["input_identities"] == {"input_image": f"sha256:{sha256(COFFEE.read_bytes())}"}
    # The identity is the content: the same bytes from a path are the same request.
    again = generate(client, edit_spec(COFFEE), outputs)
    assert again.reused
    assert billed(keyed_emulator) == 1


def test_a_missing_s3_input_fails_before_any_request(
    s3: S3Server, client: RecordingClient, keyed_emulator: SegmindEmulator
) -> None:
    prefix = uuid.uuid4().hex
    outputs = s3_output_store(s3, f"s3://outputs/{prefix}")

    with pytest.raises(InvalidInputImageError, match="no such object"):
        generate(client, edit_spec(f"s3://outputs/{prefix}/uploads/missing.jpg"), outputs)

    assert keyed_emulator.stats()["requests"] == 0


# Bad inputs: refused before anything is sent ---------------------------------------------


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda tmp: b"not an image", "not a readable image"),
        (lambda tmp: image_bytes(fmt="BMP"), "BMP image"),
        (lambda tmp: b"", "empty"),
        (lambda tmp: image_bytes()[:200], "not a readable image"),
        (lambda tmp: str(tmp / "missing.png"), "no such file"),
        (lambda tmp: "data:image/png;base64,!!!", "not valid base64"),
    ],
    ids=["text-bytes", "bmp", "empty", "truncated", "missing-file", "bad-data-uri"],
)
def test_an_unusable_input_fails_before_any_request(
    backend: Backend,
    client: RecordingClient,
    keyed_emulator: SegmindEmulator,
    tmp_path: Path,
    make_input: Any,
    message: str,
) -> None:
    spec = RequestSpec(
        "multi-image-kontext-pro",
        {"prompt": "merge", "seed": 1},
        {"input_image_1": COFFEE, "input_image_2": make_input(tmp_path)},
    )

    with pytest.raises(InvalidInputImageError, match=message) as caught:
        generate(client, spec, backend.outputs)

    assert caught.value.field == "input_image_2"
    assert keyed_emulator.stats()["requests"] == 0
    assert client.sent == []
    # Nothing but (at most) the valid first input was written.
    assert all(key.startswith("inputs/") for key in backend.objects())


def test_an_oversized_input_fails_before_any_request(
    backend: Backend,
    client: RecordingClient,
    keyed_emulator: SegmindEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(images, "MAX_INPUT_BYTES", len(COFFEE.read_bytes()) - 1)

    with pytest.raises(InvalidInputImageError, match="the limit is"):
        generate(client, edit_spec(COFFEE), backend.outputs)

    assert keyed_emulator.stats()["requests"] == 0
    assert backend.objects() == {}


def test_an_input_with_too_many_pixels_fails_before_any_request(
    backend: Backend,
    client: RecordingClient,
    keyed_emulator: SegmindEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(images, "MAX_INPUT_PIXELS", 600 * 400 - 1)

    with pytest.raises(InvalidInputImageError, match="pixels"):
        generate(client, edit_spec(COFFEE), backend.outputs)

    assert keyed_emulator.stats()["requests"] == 0
    assert backend.objects() == {}


def test_an_oversized_s3_input_fails_before_any_request(
    s3: S3Server,
    client: RecordingClient,
    keyed_emulator: SegmindEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = uuid.uuid4().hex
    outputs = s3_output_store(s3, f"s3://outputs/{prefix}")
    key = f"{prefix}/uploads/cup.jpg"
    s3.client().put_object(Bucket="outputs", Key=key, Body=COFFEE.read_bytes())
    monkeypatch.setattr(images, "MAX_INPUT_BYTES", 1000)

    with pytest.raises(InvalidInputImageError, match="the limit is 1000"):
        generate(client, edit_spec(f"s3://outputs/{key}"), outputs)

    assert keyed_emulator.stats()["requests"] == 0


# Storage that fails after the call was paid --------------------------------------------


class FakeTime:
    """A clock that moves only when slept on: storage retries without waiting."""

    def __init__(self, on_sleep: Callable[[float], None] | None = None) -> None:
        self.now = 0.0
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(self.now)

    def retry(self) -> StorageRetry:
        return StorageRetry(sleep=self.sleep, clock=lambda: self.now)


@dataclass
class FailingStore(ObjectStore):
    """A store whose output writes (keys ending in ``matching``) fail ``failures`` more times.

    Inputs uploaded for presigning, before the call, go through.
    """

    failures: int = 0
    matching: str = ""

    def write(self, key: str, data: bytes) -> str:
        if key.startswith(f"{FLOW}/") and key.endswith(self.matching) and self.failures > 0:
            self.failures -= 1
            raise OSError("SlowDown: please reduce your request rate (simulated)")
        return super().write(key, data)


def failing(backend: Backend, clock: FakeTime, failures: int, matching: str = "") -> OutputStore:
    store = backend.store
    broken = FailingStore(
        store.fs, store.protocol, store.root, failures=failures, matching=matching
    )
    return OutputStore(broken, retry=clock.retry())


def spilled_files(spill_dir: Path) -> list[Path]:
    return sorted(p for p in spill_dir.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def spill_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Paid images storage refused go to a folder of the test's own."""
    folder = tmp_path / "spill"
    monkeypatch.setenv(SPILL_DIR_ENV, str(folder))
    return folder


def test_a_storage_outage_shorter_than_the_retry_budget_is_ridden_out(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator, spill_dir: Path
) -> None:
    """BUG: the first failed write raised OSError and the paid image was lost."""
    clock = FakeTime()

    result = generate(client, edit_spec(), failing(backend, clock, failures=4))

    assert not result.reused
    assert billed(keyed_emulator) == 1
    objects = backend.objects()
    assert sha256(objects[result.key]) == result.sha256
    assert json.loads(objects[result.key + SIDECAR_SUFFIX])["request_digest"] == (
        result.request_digest
    )
    assert 0 < clock.now < StorageRetry().max_elapsed_s, "waited, within the budget"
    assert spilled_files(spill_dir) == []


def test_storage_down_for_the_whole_budget_keeps_the_paid_image_and_the_next_run_stores_it(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator, spill_dir: Path
) -> None:
    """BUG: the paid image was lost with an OSError, and the re-run paid again."""
    clock = FakeTime()
    down = failing(backend, clock, failures=10**6, matching=SIDECAR_SUFFIX)

    with pytest.raises(OutputNotStoredError) as caught:
        generate(client, edit_spec(), down)

    error = caught.value
    assert isinstance(error, TransientError), "a task retry tries again"
    assert error.spill_path is not None
    kept = Path(error.spill_path)
    assert str(kept) in str(error)
    assert "without paying again" in str(error)
    assert kept.is_relative_to(spill_dir)
    assert decode(kept.read_bytes()).format == "PNG"
    assert clock.now >= StorageRetry().max_elapsed_s - StorageRetry().backoff_max_s
    assert billed(keyed_emulator) == 1
    assert KEY not in "".join(p.read_text(errors="replace") for p in spilled_files(spill_dir))
    kept_bytes = kept.read_bytes()

    result = generate(client, edit_spec(), backend.outputs)

    assert billed(keyed_emulator) == 1, "stored from the spill folder, not paid again"
    assert not result.reused
    assert result.cost_usd == Decimal("0.05"), "the cost of the call that paid for it"
    assert result.sha256 == sha256(kept_bytes)
    objects = backend.objects()
    assert sha256(objects[result.key]) == result.sha256
    sidecar = json.loads(objects[result.key + SIDECAR_SUFFIX])
    assert sidecar["request_digest"] == result.request_digest
    assert sidecar["service"] == client.service
    assert spilled_files(spill_dir) == [], "the kept copy goes once stored"
    assert generate(client, edit_spec(), backend.outputs).reused
    assert billed(keyed_emulator) == 1


def test_an_image_left_without_its_sidecar_by_a_killed_writer_is_made_again(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator
) -> None:
    first = generate(client, edit_spec(), backend.outputs)
    # As if the writer had been killed between the image and its sidecar.
    backend.store.fs.rm_file(backend.store.path(first.key + SIDECAR_SUFFIX))
    assert backend.outputs.load(first.key) is None

    result = generate(client, edit_spec(), backend.outputs)

    assert not result.reused
    assert result.key == first.key
    assert billed(keyed_emulator) == 2
    loaded = backend.outputs.load(first.key)
    assert loaded is not None
    assert sha256(backend.outputs.read_verified(loaded)) == result.sha256
    assert generate(client, edit_spec(), backend.outputs).reused
    assert billed(keyed_emulator) == 2


def stop_moto(server: ThreadedMotoServer) -> None:
    """Stop ``server`` and close its socket: connections are refused until a restart."""
    server.stop()
    if server._server is not None:
        server._server.server_close()


class OutageClient(RecordingClient):
    """A client after whose (paid) call S3 goes down."""

    on_paid: Callable[[], None] = staticmethod(lambda: None)

    def generate(
        self, slug: str, params: Mapping[str, Any] | SegmindRequest, **options: Any
    ) -> GeneratedImage:
        result = super().generate(slug, params, **options)
        self.on_paid()
        return result


def test_s3_unreachable_for_20_s_after_the_call_is_ridden_out_without_paying_twice(
    keyed_emulator: SegmindEmulator, spill_dir: Path
) -> None:
    """BUG: the first refused connection to S3 lost the paid image."""
    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)]
    servers[0].start()
    try:
        host, port = servers[0].get_host_and_port()
        s3 = S3Server(endpoint_url=f"http://{host}:{port}")
        s3.client().create_bucket(Bucket="outage")
        prefix = uuid.uuid4().hex

        def back_after_20_s(now: float) -> None:
            if now >= 20 and len(servers) == 1:  # the same server state, the same port
                servers.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
                servers[-1].start()

        clock = FakeTime(on_sleep=back_after_20_s)
        store = ObjectStore.from_url(
            f"s3://outage/{prefix}",
            key=s3.access_key_id,
            secret=s3.secret_access_key,
            endpoint_url=s3.endpoint_url,
            client_kwargs={"region_name": s3.region},
            config_kwargs={"retries": {"total_max_attempts": 1}},  # no waits of botocore's own
        )
        with OutageClient(KEY, base_url=keyed_emulator.url) as client:
            client.on_paid = lambda: stop_moto(servers[0])
            result = generate(client, edit_spec(), OutputStore(store, retry=clock.retry()))

        assert len(servers) == 2, "S3 was down, then back"
        bucket = s3.client()
        image = bucket.get_object(Bucket="outage", Key=f"{prefix}/{result.key}")["Body"].read()
        assert sha256(image) == result.sha256
        text = bucket.get_object(Bucket="outage", Key=f"{prefix}/{result.key}.json")["Body"]
        assert json.loads(text.read())["output"]["sha256"] == result.sha256
    finally:
        for server in servers:
            stop_moto(server)
    assert 20 <= clock.now < StorageRetry().max_elapsed_s
    assert billed(keyed_emulator) == 1
    assert spilled_files(spill_dir) == []


# Which service made an output ---------------------------------------------------------------


@pytest.mark.parametrize("job_id", [None, "cup-1"])
def test_an_output_of_another_service_is_neither_reused_nor_overwritten(
    backend: Backend, start_emulator: EmulatorFactory, job_id: str | None
) -> None:
    """BUG: a run against a second service root reused the first one's images, billed 0."""
    first_service, second_service = start_emulator(api_key=KEY), start_emulator(api_key=KEY)
    with SegmindClient(KEY, base_url=first_service.url) as first:
        made_first = generate(first, edit_spec(), backend.outputs, job_id=job_id)
    before = backend.objects()

    with SegmindClient(KEY, base_url=second_service.url) as second:
        made_second = generate(second, edit_spec(), backend.outputs, job_id=job_id)
        again_second = generate(second, edit_spec(), backend.outputs, job_id=job_id)
    with SegmindClient(KEY, base_url=first_service.url) as first:
        again_first = generate(first, edit_spec(), backend.outputs, job_id=job_id)

    assert not made_second.reused
    assert made_second.key != made_first.key
    assert billed(first_service) == billed(second_service) == 1, "each service billed once"
    assert again_second.reused
    assert again_second.key == made_second.key
    assert again_first.reused
    assert again_first.key == made_first.key
    after = backend.objects()
    for key, data in before.items():
        assert after[key] == data, f"{key} was overwritten"
    _, first_sidecar = sidecar_of(backend, made_first)
    _, second_sidecar = sidecar_of(backend, made_second)
    assert first_sidecar["service"] == first_service.url
    assert second_sidecar["service"] == second_service.url


# Trusting a sidecar only with its image -------------------------------------------------------


def delete(backend: Backend, key: str) -> None:
    """Remove one stored object, without the product's code."""
    if backend.s3 is not None:
        prefix = backend.base_url.removeprefix("s3://outputs/")
        backend.s3.client().delete_object(Bucket="outputs", Key=f"{prefix}/{key}")
    else:
        backend.store.fs.rm_file(backend.store.path(key))


def put(backend: Backend, key: str, data: bytes) -> None:
    """Store one object, without the product's code."""
    if backend.s3 is not None:
        prefix = backend.base_url.removeprefix("s3://outputs/")
        backend.s3.client().put_object(Bucket="outputs", Key=f"{prefix}/{key}", Body=data)
    else:
        backend.store.fs.pipe_file(backend.store.path(key), data)


def test_a_sidecar_whose_image_is_gone_is_made_again_and_paid_for(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator
) -> None:
    """BUG: the re-run reported reused=True for an image that did not exist."""
    first = generate(client, edit_spec(), backend.outputs)
    delete(backend, first.key)

    again = generate(client, edit_spec(), backend.outputs)

    assert not again.reused
    assert again.key == first.key
    assert billed(keyed_emulator) == 2
    assert sha256(backend.objects()[again.key]) == again.sha256
    assert generate(client, edit_spec(), backend.outputs).reused
    assert billed(keyed_emulator) == 2


def test_an_image_that_is_not_its_sidecars_size_is_neither_trusted_nor_overwritten(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator
) -> None:
    first = generate(client, edit_spec(), backend.outputs)
    other = image_bytes((1, 2, 3), (10, 10))
    put(backend, first.key, other)

    again = generate(client, edit_spec(), backend.outputs)
    third = generate(client, edit_spec(), backend.outputs)

    assert not again.reused
    assert again.key != first.key
    assert backend.objects()[first.key] == other, "left as found"
    assert third.reused
    assert third.key == again.key, "found again beside it"
    assert billed(keyed_emulator) == 2


def test_an_unreadable_sidecar_is_treated_as_absent_and_its_image_is_kept(
    backend: Backend, client: RecordingClient, keyed_emulator: SegmindEmulator
) -> None:
    """BUG (read): a corrupt sidecar raised on every run: the row failed forever."""
    first = generate(client, edit_spec(), backend.outputs)
    image = backend.objects()[first.key]
    put(backend, first.key + SIDECAR_SUFFIX, b'{"slug": "flux-kon')

    again = generate(client, edit_spec(), backend.outputs)
    third = generate(client, edit_spec(), backend.outputs)

    assert not again.reused
    assert again.key != first.key
    objects = backend.objects()
    assert objects[first.key] == image, "the paid image is never overwritten"
    assert objects[first.key + SIDECAR_SUFFIX] == b'{"slug": "flux-kon'
    assert third.reused
    assert third.key == again.key
    assert billed(keyed_emulator) == 2


# A complete 200 in a format that is not stored --------------------------------------------------


@contextmanager
def webp_proxy(upstream: str) -> Iterator[str]:
    """A proxy to ``upstream`` that re-encodes every 200 image answer as WEBP."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            answer = httpx.post(upstream + self.path, content=body, headers=headers, timeout=30)
            payload = answer.content
            if answer.status_code == 200:
                out = io.BytesIO()
                decode(payload).save(out, format="WEBP")
                payload = out.getvalue()
            self.send_response(answer.status_code)
            for name in ("content-type", "x-remaining-credits"):
                if name in answer.headers:
                    value = "image/webp" if name == "content-type" else answer.headers[name]
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as base_url:
        yield base_url


def test_a_webp_answer_is_paid_once_and_stored_converted(
    backend: Backend, keyed_emulator: SegmindEmulator
) -> None:
    """BUG: a complete WEBP 200 was retried as transient: 6 paid calls per attempt."""
    with webp_proxy(keyed_emulator.url) as url, SegmindClient(KEY, base_url=url) as client:
        result = generate(client, edit_spec(), backend.outputs)

    assert billed(keyed_emulator) == 1
    assert keyed_emulator.stats()["requests"] == 1
    image = backend.objects()[result.key]
    assert decode(image).format == "PNG"
    assert decode(image).size == (result.width, result.height) == (1248, 832)
    _, sidecar = sidecar_of(backend, result)
    assert sidecar["converted_from"] == "webp"
