"""The Prefect tasks, run in flows under a Prefect test server against the emulator over HTTP.

Every task stores its image (and a JSON sidecar) in an `ObjectStorage` block
and returns a reference. Each test passes its own storage (a folder under
``tmp_path`` or a private ``memory://`` base), never the default ``./outputs``.

Tasks with a pinned seed are cached by request for the whole test session, so
every test that counts billing makes requests no other test makes: its own
seed, prompt or inputs, or no seed at all (a drawn seed is never cached).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pytest
from PIL import Image
from prefect import Task, flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import State, TaskRun
from prefect.logging.handlers import APILogHandler, PrefectConsoleHandler
from prefect.settings import get_current_settings
from prefect.states import Completed, Failed

from blocks import ObjectStorage, SegmindCredentials
from emulator import SegmindEmulator
from segmind_core.contract import InvalidRequestError, OutputFormat
from segmind_core.errors import (
    AuthenticationError,
    InsufficientCreditsError,
    NetworkError,
    PermanentError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    TransientError,
)
from segmind_core.images import InvalidInputImageError
from segmind_core.outputs import SIDECAR_SUFFIX
from tasks import (
    TASK_RETRIES,
    EditResult,
    edit_image_with_kontext_max,
    edit_image_with_kontext_pro,
    edit_images_with_p_image_edit,
    merge_images_with_kontext_max,
    merge_images_with_kontext_pro,
    retry_transient_errors,
    run_segmind_endpoint,
)
from tests.conftest import EmulatorFactory, S3Server
from tests.support import API_KEY, data_uri, decode, emulator_stats, file_server, image_bytes

pytestmark = pytest.mark.usefixtures("prefect_harness")

T = TypeVar("T")

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
COFFEE = PHOTOS / "coffee.jpg"  # 600x400: 3:2
CHELSEA = PHOTOS / "chelsea.jpg"  # 451x300: 3:2
ASTRONAUT = PHOTOS / "astronaut.jpg"  # 512x512: 1:1
SECRET_KEY = "SG_feedc0ffee1234_SECRET"  # noqa: S105 - fake, recognisable on purpose
SEED_BOUND = 2**31
TEST_FLOW = "segmind-task-test"
# ``{flow}/{YYYY-MM-DD}/{request digest}.{png|jpg}`` when no job id is given.
DIGEST_KEY = re.compile(rf"{TEST_FLOW}/\d{{4}}-\d{{2}}-\d{{2}}/([0-9a-f]{{64}})\.(png|jpg)")

# Every per-slug task, with Prefect's retry pause removed so a test never waits 10 s.
FAST = {
    t.name: t.with_options(retry_delay_seconds=0)
    for t in (
        edit_image_with_kontext_pro,
        edit_image_with_kontext_max,
        merge_images_with_kontext_pro,
        merge_images_with_kontext_max,
        edit_images_with_p_image_edit,
        run_segmind_endpoint,
    )
}
edit_pro = FAST["edit-image-with-kontext-pro"]
edit_max = FAST["edit-image-with-kontext-max"]
merge_pro = FAST["merge-images-with-kontext-pro"]
merge_max = FAST["merge-images-with-kontext-max"]
p_image_edit = FAST["edit-images-with-p-image-edit"]
run_endpoint = FAST["run-segmind-endpoint"]


def in_flow(call: Callable[[], T]) -> T:
    """Run ``call`` (which calls tasks) inside a fresh flow; the flow raises what a task raised."""

    @flow(name=TEST_FLOW)
    def wrapper() -> T:
        return call()

    return wrapper()


def flow_state(call: Callable[[], Any]) -> State[Any]:
    """Run ``call`` inside a fresh flow and return the flow's final state."""

    @flow(name=TEST_FLOW)
    def wrapper() -> Any:
        return call()

    state: State[Any] = wrapper(return_state=True)
    return state


def task_runs_of(state: State[Any]) -> list[TaskRun]:
    """The task runs the server recorded for the flow run that ended in ``state``."""
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def raised_by(state: State[Any]) -> BaseException:
    """The exception a failed flow state carries."""
    assert state.is_failed(), state
    try:
        state.result()
    except BaseException as error:
        return error
    raise AssertionError(f"{state!r} raised nothing")


def fast_credentials(emulator: SegmindEmulator, **fields: Any) -> SegmindCredentials:
    """Credentials for ``emulator`` with millisecond backoffs."""
    settings: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": emulator.url,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
    }
    settings.update(fields)
    return SegmindCredentials(**settings)


@pytest.fixture
def storage(tmp_path: Path) -> ObjectStorage:
    """A storage block on a folder of this test's own (created on the first write)."""
    return ObjectStorage(base_url=str(tmp_path / "store"))


def stored_image(storage: ObjectStorage, result: EditResult) -> bytes:
    """The image bytes ``result`` refers to, read back through the storage."""
    return storage.get_store().read(result.key)


def sidecar_text(storage: ObjectStorage, result: EditResult) -> str:
    """The JSON sidecar stored beside the image, as text."""
    return storage.get_store().read(result.key + SIDECAR_SUFFIX).decode()


def stored_files(storage: ObjectStorage) -> list[Path]:
    """Every file under a local storage block's base folder."""
    return sorted(p for p in Path(storage.base_url).rglob("*") if p.is_file())


def result_text(result: EditResult) -> str:
    """Every field of ``result`` as text."""
    return repr(result) + str(result) + result.model_dump_json()


def assert_result(
    result: EditResult,
    storage: ObjectStorage,
    *,
    slug: str,
    size: tuple[int, int],
    fmt: OutputFormat,
    seed: int | None,
    key: str = API_KEY,
) -> None:
    """The result refers to a stored image that ``slug`` made, and the key is nowhere in it."""
    assert isinstance(result, EditResult)
    assert result.slug == slug
    assert (result.width, result.height) == size
    assert result.format is fmt
    if seed is None:
        assert 0 <= result.seed < SEED_BOUND
    else:
        assert result.seed == seed
    assert result.attempts >= 1
    assert result.reused is False

    # The reference: a content-addressed key under the test flow, and its URL.
    match = DIGEST_KEY.fullmatch(result.key)
    assert match is not None, result.key
    assert match.groups() == (result.request_digest, fmt.value)
    assert result.url == storage.get_store().url(result.key)

    # The stored bytes are the image the result describes.
    data = stored_image(storage, result)
    image = decode(data)
    assert image.size == size
    assert image.format == fmt.pillow_format
    assert hashlib.sha256(data).hexdigest() == result.sha256
    assert len(data) == result.size_bytes

    # The sidecar says how it was made, and agrees with the bytes.
    raw_sidecar = sidecar_text(storage, result)
    sidecar = json.loads(raw_sidecar)
    assert sidecar["output"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["output"]["key"] == result.key
    assert sidecar["output"]["url"] == result.url
    assert (sidecar["output"]["width"], sidecar["output"]["height"]) == size
    assert sidecar["slug"] == slug
    assert sidecar["request_digest"] == result.request_digest
    assert sidecar["seed"] == result.seed
    assert sidecar["parameters"]["seed"] == result.seed
    assert sidecar["attempts"] == result.attempts
    assert Decimal(sidecar["cost_usd"]) == result.cost_usd
    assert sidecar["request_id"]
    assert sidecar["flow_run_id"]
    assert sidecar["task_run_id"]

    for text in (result_text(result), raw_sidecar):
        assert key not in text


@pytest.fixture
def served_photos() -> Iterator[str]:
    """The sample photos over HTTP on 127.0.0.1."""
    files = {
        f"/{path.name}": (200, path.read_bytes(), "image/jpeg")
        for path in (COFFEE, CHELSEA, ASTRONAUT)
    }
    with file_server(files) as base_url:
        yield base_url


# Success for each task and each kind of image input -------------------------


def test_edit_image_with_kontext_pro_from_a_local_path(
    emulator: SegmindEmulator, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)

    result = in_flow(
        lambda: edit_pro(
            "on a beach", image=COFFEE, seed=11, credentials=credentials, storage=storage
        )
    )

    assert_result(
        result, storage, slug="flux-kontext-pro", size=(1248, 832), fmt=OutputFormat.PNG, seed=11
    )
    assert result.cost_usd == Decimal("0.05")
    assert result.attempts == 1
    # Exactly the image and its sidecar, at the URL the result names.
    image_path = Path(result.url)
    assert stored_files(storage) == sorted([image_path, Path(f"{image_path}{SIDECAR_SUFFIX}")])
    sidecar = json.loads(sidecar_text(storage, result))
    assert sidecar["inputs"] == {"input_image": str(COFFEE)}
    assert sidecar["input_identities"] == {
        "input_image": "sha256:" + hashlib.sha256(COFFEE.read_bytes()).hexdigest()
    }
    assert sidecar["parameters"]["prompt"] == "on a beach"
    assert sidecar["flow_name"] == TEST_FLOW
    stats = emulator_stats(emulator.url)
    assert stats["billed"] == 1
    assert stats["by_slug"]["flux-kontext-pro"]["billed"] == 1


def test_edit_image_with_kontext_pro_without_an_image_makes_one_from_text(
    emulator: SegmindEmulator, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)

    result = in_flow(
        lambda: edit_pro("a red cube", seed=3, credentials=credentials, storage=storage)
    )

    assert_result(
        result, storage, slug="flux-kontext-pro", size=(1024, 1024), fmt=OutputFormat.PNG, seed=3
    )
    assert json.loads(sidecar_text(storage, result))["inputs"] == {}


def test_edit_image_with_kontext_max_from_bytes_as_jpg(
    emulator: SegmindEmulator, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)
    data = image_bytes(size=(640, 480))  # 4:3

    result = in_flow(
        lambda: edit_max(
            "studio light",
            image=data,
            output_format="jpg",
            seed=12,
            credentials=credentials,
            storage=storage,
        )
    )

    assert_result(
        result, storage, slug="flux-kontext-max", size=(1184, 880), fmt=OutputFormat.JPG, seed=12
    )
    assert result.cost_usd == Decimal("0.10")
    assert result.url.endswith(".jpg")
    # Bytes given inline are named by their digest in the sidecar, never copied into it.
    sidecar = json.loads(sidecar_text(storage, result))
    assert sidecar["inputs"] == {"input_image": "sha256:" + hashlib.sha256(data).hexdigest()}


def test_merge_images_with_kontext_pro_from_a_pil_image_and_a_data_uri(
    emulator: SegmindEmulator, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)
    portrait = Image.new("RGB", (480, 640), (10, 120, 10))  # 3:4, sets match_input_image
    second = data_uri(image_bytes((0, 0, 200), (100, 100)))

    result = in_flow(
        lambda: merge_pro(
            "side by side", portrait, second, seed=13, credentials=credentials, storage=storage
        )
    )

    assert_result(
        result,
        storage,
        slug="multi-image-kontext-pro",
        size=(880, 1184),
        fmt=OutputFormat.PNG,
        seed=13,
    )
    raw_sidecar = sidecar_text(storage, result)
    assert set(json.loads(raw_sidecar)["inputs"]) == {"input_image_1", "input_image_2"}
    assert "base64" not in raw_sidecar


def test_merge_images_with_kontext_max_from_an_http_url_and_a_path(
    emulator: SegmindEmulator, served_photos: str, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)

    result = in_flow(
        lambda: merge_max(
            "the cat next to the cup",
            f"{served_photos}/coffee.jpg",
            CHELSEA,
            seed=14,
            credentials=credentials,
            storage=storage,
        )
    )

    # The endpoint's documented defaults: 16:9 and jpg.
    assert_result(
        result,
        storage,
        slug="multi-image-kontext-max",
        size=(1392, 752),
        fmt=OutputFormat.JPG,
        seed=14,
    )
    sidecar = json.loads(sidecar_text(storage, result))
    # An http(s) input is identified by its URL; a path by its content.
    assert sidecar["input_identities"]["input_image_1"] == f"{served_photos}/coffee.jpg"
    assert sidecar["input_identities"]["input_image_2"].startswith("sha256:")


def test_edit_images_with_p_image_edit_takes_every_kind_of_input(
    emulator: SegmindEmulator, served_photos: str, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)
    images: list[Any] = [
        ASTRONAUT,  # a Path
        str(COFFEE),  # a path as text
        image_bytes(size=(64, 48)),
        Image.open(CHELSEA),
        f"{served_photos}/chelsea.jpg",
    ]

    result = in_flow(
        lambda: p_image_edit(
            "combine them", images, seed=15, credentials=credentials, storage=storage
        )
    )

    # match_input_image follows the first input, the square astronaut.
    assert_result(
        result, storage, slug="p-image-edit", size=(1024, 1024), fmt=OutputFormat.PNG, seed=15
    )
    assert result.cost_usd == Decimal("0.01")
    assert len(json.loads(sidecar_text(storage, result))["inputs"]["image_urls"]) == 5


def test_edit_images_with_p_image_edit_takes_a_data_uri_and_an_aspect_ratio(
    emulator: SegmindEmulator, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)
    uri = data_uri(image_bytes(size=(64, 64)))

    result = in_flow(
        lambda: p_image_edit(
            "wider", [uri], aspect_ratio="16:9", seed=5, credentials=credentials, storage=storage
        )
    )

    assert_result(
        result, storage, slug="p-image-edit", size=(1392, 752), fmt=OutputFormat.PNG, seed=5
    )


def test_run_segmind_endpoint_with_a_list_of_image_urls(
    emulator: SegmindEmulator, served_photos: str, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)

    result = in_flow(
        lambda: run_endpoint(
            "p-image-edit",
            {"prompt": "the cat holding the cup", "seed": 16},
            images={"image_urls": [CHELSEA, f"{served_photos}/coffee.jpg"]},
            credentials=credentials,
            storage=storage,
        )
    )

    assert_result(
        result, storage, slug="p-image-edit", size=(1248, 832), fmt=OutputFormat.PNG, seed=16
    )
    assert emulator_stats(emulator.url)["by_slug"]["p-image-edit"]["billed"] == 1


def test_run_segmind_endpoint_with_a_single_image_field(
    emulator: SegmindEmulator, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)

    result = in_flow(
        lambda: run_endpoint(
            "flux-kontext-pro",
            {"prompt": "snow", "aspect_ratio": "1:1", "output_format": "jpg", "seed": 17},
            images={"input_image": COFFEE},
            credentials=credentials,
            storage=storage,
        )
    )

    assert_result(
        result, storage, slug="flux-kontext-pro", size=(1024, 1024), fmt=OutputFormat.JPG, seed=17
    )


def test_run_segmind_endpoint_rejects_bad_params_before_any_request(
    emulator: SegmindEmulator, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)

    with pytest.raises(InvalidRequestError, match="aspect_ratio"):
        in_flow(
            lambda: run_endpoint(
                "flux-kontext-pro",
                {"prompt": "snow", "aspect_ratio": "7:3"},
                credentials=credentials,
                storage=storage,
            )
        )
    assert emulator_stats(emulator.url)["requests"] == 0
    assert stored_files(storage) == []


def test_tasks_use_the_environment_without_credentials(
    segmind_env: SegmindEmulator, storage: ObjectStorage
) -> None:
    result = in_flow(
        lambda: p_image_edit("blue", [image_bytes(size=(64, 48))], seed=2, storage=storage)
    )

    assert_result(
        result, storage, slug="p-image-edit", size=(1184, 880), fmt=OutputFormat.PNG, seed=2
    )
    assert emulator_stats(segmind_env.url)["billed"] == 1


def test_a_memory_storage_holds_the_image_and_its_sidecar(emulator: SegmindEmulator) -> None:
    credentials = fast_credentials(emulator)
    base = f"memory://task-test-{uuid.uuid4().hex}"
    storage = ObjectStorage(base_url=base)

    result = in_flow(
        lambda: p_image_edit(
            "in memory", [image_bytes(size=(64, 48))], credentials=credentials, storage=storage
        )
    )

    assert_result(
        result, storage, slug="p-image-edit", size=(1184, 880), fmt=OutputFormat.PNG, seed=None
    )
    assert result.url == f"{base}/{result.key}"
    # Another block on the same base URL reads the same object.
    again = ObjectStorage(base_url=base)
    assert again.read_path(result.key) == stored_image(storage, result)


def test_a_job_id_names_the_output(emulator: SegmindEmulator, storage: ObjectStorage) -> None:
    credentials = fast_credentials(emulator)

    result = in_flow(
        lambda: p_image_edit(
            "named",
            [image_bytes(size=(64, 48))],
            seed=18,
            credentials=credentials,
            storage=storage,
            job_id="Spring Catalogue/Item 7",
        )
    )

    # Sanitised: lower case, no slash, so it stays one name in the dated folder.
    assert re.fullmatch(
        rf"{TEST_FLOW}/\d{{4}}-\d{{2}}-\d{{2}}/spring-catalogue-item-7\.png", result.key
    )
    assert decode(stored_image(storage, result)).size == (1184, 880)
    sidecar = json.loads(sidecar_text(storage, result))
    assert sidecar["job_id"] == "Spring Catalogue/Item 7"
    assert sidecar["request_digest"] == result.request_digest
    assert sidecar["output"]["sha256"] == hashlib.sha256(stored_image(storage, result)).hexdigest()


def test_a_task_on_s3_storage_stores_there_and_sends_inputs_as_presigned_urls(
    emulator: SegmindEmulator, s3: S3Server
) -> None:
    credentials = fast_credentials(emulator)
    storage = ObjectStorage(
        base_url="s3://outputs/task-test",
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
    )
    data = image_bytes((30, 60, 90), (64, 48))

    result = in_flow(
        lambda: edit_pro("on s3", image=data, credentials=credentials, storage=storage)
    )

    assert result.url == f"s3://outputs/task-test/{result.key}"
    assert DIGEST_KEY.fullmatch(result.key) is not None
    client = s3.client()
    stored = client.get_object(Bucket="outputs", Key=f"task-test/{result.key}")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == result.sha256
    assert decode(stored).size == (result.width, result.height) == (1184, 880)
    sidecar = json.loads(
        client.get_object(Bucket="outputs", Key=f"task-test/{result.key}{SIDECAR_SUFFIX}")[
            "Body"
        ].read()
    )
    assert sidecar["output"]["sha256"] == result.sha256
    # The input went up beside the outputs, and the emulator fetched it by presigned URL.
    digest = hashlib.sha256(data).hexdigest()
    uploaded = client.get_object(Bucket="outputs", Key=f"task-test/inputs/{digest}.png")
    assert uploaded["Body"].read() == data
    assert sidecar["inputs"] == {"input_image": f"sha256:{digest}"}
    assert s3.secret_access_key not in json.dumps(sidecar) + result_text(result)
    assert emulator_stats(emulator.url)["billed"] == 1


SEEDLESS_CALLS: dict[str, Callable[[SegmindCredentials, ObjectStorage], EditResult]] = {
    "flux-kontext-pro": lambda c, s: edit_pro(
        "x", image=image_bytes(size=(64, 48)), credentials=c, storage=s
    ),
    "flux-kontext-max": lambda c, s: edit_max(
        "x", image=image_bytes(size=(64, 48)), credentials=c, storage=s
    ),
    "multi-image-kontext-pro": lambda c, s: merge_pro(
        "x", image_bytes(size=(64, 48)), image_bytes(size=(48, 64)), credentials=c, storage=s
    ),
    "multi-image-kontext-max": lambda c, s: merge_max(
        "x", image_bytes(size=(64, 48)), image_bytes(size=(48, 64)), credentials=c, storage=s
    ),
    "p-image-edit": lambda c, s: p_image_edit(
        "x", [image_bytes(size=(64, 48))], credentials=c, storage=s
    ),
}


@pytest.mark.parametrize("slug", list(SEEDLESS_CALLS))
def test_without_a_seed_a_seed_is_drawn_and_recorded(
    slug: str, emulator: SegmindEmulator, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)
    call = SEEDLESS_CALLS[slug]

    first, second = in_flow(lambda: (call(credentials, storage), call(credentials, storage)))

    assert first.slug == second.slug == slug
    assert 0 <= first.seed < SEED_BOUND
    assert 0 <= second.seed < SEED_BOUND
    # Drawn afresh for each call (the endpoints' own fixed defaults, 42, would repeat):
    # a new variation, paid for and stored under its own key, never served from a cache.
    assert first.seed != second.seed
    assert first.request_digest != second.request_digest
    assert first.key != second.key
    assert not first.reused
    assert not second.reused
    assert stored_image(storage, first) != stored_image(storage, second)
    assert first.sha256 != second.sha256
    for result in (first, second):
        sidecar = json.loads(sidecar_text(storage, result))
        assert sidecar["seed"] == sidecar["parameters"]["seed"] == result.seed
        assert API_KEY not in result_text(result) + sidecar_text(storage, result)
    assert emulator_stats(emulator.url)["billed"] == 2


def test_a_recorded_seed_reproduces_the_image(emulator: SegmindEmulator, tmp_path: Path) -> None:
    credentials = fast_credentials(emulator)
    data = image_bytes((1, 2, 3), size=(64, 48))
    here = ObjectStorage(base_url=str(tmp_path / "here"))
    elsewhere = ObjectStorage(base_url=str(tmp_path / "elsewhere"))

    def three_calls() -> tuple[EditResult, EditResult, EditResult]:
        drawn = edit_pro("recorded", image=data, credentials=credentials, storage=here)
        # The same request where its output is already stored: found there, not paid.
        found = edit_pro(
            "recorded", image=data, seed=drawn.seed, credentials=credentials, storage=here
        )
        # Generated again, and paid, in another storage (the cache bypassed).
        reproduced = edit_pro.with_options(refresh_cache=True)(
            "recorded", image=data, seed=drawn.seed, credentials=credentials, storage=elsewhere
        )
        return drawn, found, reproduced

    drawn, found, reproduced = in_flow(three_calls)

    assert not drawn.reused
    assert found.reused
    assert found.url == drawn.url
    assert found.sha256 == drawn.sha256
    assert found.seed == drawn.seed
    assert found.request_digest == drawn.request_digest
    assert found.cost_usd == 0
    assert found.attempts == 0

    assert reproduced.seed == drawn.seed
    assert reproduced.request_digest == drawn.request_digest
    assert not reproduced.reused
    assert reproduced.cost_usd == Decimal("0.05")
    assert reproduced.url == elsewhere.get_store().url(reproduced.key)
    assert stored_image(elsewhere, reproduced) == stored_image(here, drawn)
    assert reproduced.sha256 == drawn.sha256
    assert emulator_stats(emulator.url)["billed"] == 2


# The acceptance check -------------------------------------------------


def test_twenty_calls_of_each_task_all_succeed_under_injected_faults(
    start_emulator: EmulatorFactory, storage: ObjectStorage
) -> None:
    emulator = start_emulator(faults={"500": 0.3, "429": 0.2}, fault_seed=1)
    credentials = fast_credentials(emulator)
    small = image_bytes(size=(64, 48))
    # No seed: each call draws its own, so none is served from a cache and all are paid.
    calls: list[tuple[str, Callable[[], EditResult]]] = [
        (
            "flux-kontext-pro",
            lambda: edit_pro("x", image=small, credentials=credentials, storage=storage),
        ),
        (
            "flux-kontext-max",
            lambda: edit_max("x", image=small, credentials=credentials, storage=storage),
        ),
        (
            "multi-image-kontext-pro",
            lambda: merge_pro("x", small, small, credentials=credentials, storage=storage),
        ),
        (
            "multi-image-kontext-max",
            lambda: merge_max("x", small, small, credentials=credentials, storage=storage),
        ),
        (
            "p-image-edit",
            lambda: p_image_edit("x", [small], credentials=credentials, storage=storage),
        ),
    ]

    def hundred_calls() -> list[EditResult]:
        return [call() for _ in range(20) for _, call in calls]

    results = in_flow(hundred_calls)

    assert len(results) == 100
    assert [r.slug for r in results] == [slug for _ in range(20) for slug, _ in calls]
    assert all(isinstance(r, EditResult) for r in results)
    assert not any(r.reused for r in results)
    assert sum(r.cost_usd for r in results) == 20 * Decimal("0.31")
    # A hundred outputs, each stored with its sidecar under its own key.
    assert len({r.key for r in results}) == 100
    store = storage.get_store()
    assert all(store.exists(r.key) and store.exists(r.key + SIDECAR_SUFFIX) for r in results)
    assert len(stored_files(storage)) == 200
    stats = emulator_stats(emulator.url)
    assert stats["billed"] == 100
    assert {slug: s["billed"] for slug, s in stats["by_slug"].items()} == {
        slug: 20 for slug, _ in calls
    }
    assert stats["by_status"]["200"] == 100
    assert stats["by_status"].get("429", 0) > 0
    assert stats["by_status"].get("500", 0) > 0
    assert stats["requests"] == 100 + stats["by_status"]["429"] + stats["by_status"]["500"]
    # Each result counts the HTTP attempts of its own (last) task run.
    assert 100 < sum(r.attempts for r in results) <= stats["requests"]


# Retry-After ----------------------------------------------------------------


def _seed_whose_first_draw_is_a_429(rate: float) -> int:
    """A fault seed whose first request meets a 429 and whose second succeeds.

    With ``retry_after_s`` set, each 429 draws once more for its Retry-After
    header, so the second request uses the third number of the sequence.
    """
    for seed in range(1000):
        rng = random.Random(seed)
        first, _retry_after, second = rng.random(), rng.random(), rng.random()
        if first < rate <= second:
            return seed
    raise AssertionError("no suitable seed")


def test_a_429_with_retry_after_is_waited_for(
    start_emulator: EmulatorFactory, storage: ObjectStorage
) -> None:
    seed = _seed_whose_first_draw_is_a_429(0.5)
    emulator = start_emulator(faults={"429": 0.5}, fault_seed=seed, retry_after_s=1)
    # Backoff alone would wait 10 ms: only honouring Retry-After makes it a second.
    credentials = fast_credentials(emulator)

    started = time.monotonic()
    result = in_flow(
        lambda: p_image_edit(
            "x", [image_bytes(size=(64, 48))], seed=1, credentials=credentials, storage=storage
        )
    )
    elapsed = time.monotonic() - started

    assert result.attempts == 2
    assert elapsed >= 1.0
    assert result.latency_s >= 1.0
    assert json.loads(sidecar_text(storage, result))["attempts"] == 2
    stats = emulator_stats(emulator.url)
    assert stats["by_status"] == {"200": 1, "429": 1}
    assert stats["billed"] == 1


# Permanent errors fail on the first attempt -------------------------------------


def test_wrong_key_fails_at_once_naming_the_block(
    emulator: SegmindEmulator, storage: ObjectStorage
) -> None:
    name = f"segmind-wrong-{uuid.uuid4().hex[:8]}"
    fast_credentials(emulator, api_key="not-the-key").save(name)
    credentials = SegmindCredentials.load(name)

    state = flow_state(
        lambda: p_image_edit(
            "x", [image_bytes(size=(64, 48))], credentials=credentials, storage=storage
        )
    )

    error = raised_by(state)
    assert isinstance(error, AuthenticationError)
    assert error.status == 401
    message = str(error)
    assert "401" in message
    assert "rejected" in message
    assert f"block '{name}'" in message
    assert "not-the-key" not in message
    assert emulator_stats(emulator.url)["requests"] == 1
    (task_run,) = task_runs_of(state)
    assert task_run.run_count == 1
    assert stored_files(storage) == []
    assert task_run.state is not None
    assert task_run.state.is_failed()


def test_an_unreachable_input_url_fails_at_once_before_any_call(
    emulator: SegmindEmulator, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)

    state = flow_state(
        lambda: p_image_edit(
            "x", ["http://127.0.0.1:1/x.png"], credentials=credentials, storage=storage
        )
    )

    error = raised_by(state)
    assert isinstance(error, InvalidInputImageError)
    assert "image_urls[0]" in str(error)
    assert "the URL is unreachable" in str(error)
    stats = emulator_stats(emulator.url)
    assert stats["requests"] == 0
    assert stats["billed"] == 0
    (task_run,) = task_runs_of(state)
    assert task_run.run_count == 1
    assert stored_files(storage) == []


def test_out_of_credits_fails_at_once_with_the_balance(
    start_emulator: EmulatorFactory, storage: ObjectStorage
) -> None:
    emulator = start_emulator(credits_usd=0.03)
    credentials = fast_credentials(emulator)

    state = flow_state(
        lambda: edit_pro(
            "x", image=image_bytes(size=(64, 48)), credentials=credentials, storage=storage
        )
    )

    error = raised_by(state)
    assert isinstance(error, InsufficientCreditsError)
    assert error.status == 406
    message = str(error)
    assert "406" in message
    assert "0.03 USD left" in message
    assert "0.05 USD" in message
    stats = emulator_stats(emulator.url)
    assert stats["requests"] == 1
    assert stats["billed"] == 0
    (task_run,) = task_runs_of(state)
    assert task_run.run_count == 1
    assert stored_files(storage) == []


def test_a_text_file_fails_before_any_request(
    emulator: SegmindEmulator, tmp_path: Path, storage: ObjectStorage
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    credentials = fast_credentials(emulator)

    state = flow_state(lambda: edit_pro("x", image=notes, credentials=credentials, storage=storage))

    error = raised_by(state)
    assert isinstance(error, InvalidInputImageError)
    assert "input_image" in str(error)
    assert "not a readable image" in str(error)
    assert emulator_stats(emulator.url)["requests"] == 0
    (task_run,) = task_runs_of(state)
    assert task_run.run_count == 1
    assert stored_files(storage) == []


def test_a_missing_file_fails_before_any_request(
    emulator: SegmindEmulator, tmp_path: Path, storage: ObjectStorage
) -> None:
    missing = tmp_path / "nowhere.png"
    credentials = fast_credentials(emulator)

    state = flow_state(
        lambda: merge_pro("x", COFFEE, missing, credentials=credentials, storage=storage)
    )

    error = raised_by(state)
    assert isinstance(error, InvalidInputImageError)
    assert "input_image_2" in str(error)
    assert "no such file" in str(error)
    assert str(missing) in str(error)
    assert emulator_stats(emulator.url)["requests"] == 0
    (task_run,) = task_runs_of(state)
    assert task_run.run_count == 1
    assert stored_files(storage) == []


# Transient errors: the client's budget, then Prefect's outer retries --------------


def test_transient_errors_beyond_the_client_budget_are_retried_by_prefect(
    start_emulator: EmulatorFactory, storage: ObjectStorage
) -> None:
    emulator = start_emulator(faults={"500": 1.0})
    credentials = fast_credentials(emulator, max_attempts=2)
    assert TASK_RETRIES == 2

    state = flow_state(
        lambda: p_image_edit(
            "x", [image_bytes(size=(64, 48))], credentials=credentials, storage=storage
        )
    )

    error = raised_by(state)
    assert isinstance(error, ServerError)
    assert error.status == 500
    assert error.attempts == 2
    assert "500" in str(error)
    stats = emulator_stats(emulator.url)
    # inner attempts * (outer retries + 1): the documented bound, reached exactly.
    assert stats["requests"] == 2 * (TASK_RETRIES + 1) == 6
    assert stats["by_status"] == {"500": 6}
    assert stats["billed"] == 0
    (task_run,) = task_runs_of(state)
    assert task_run.run_count == TASK_RETRIES + 1
    assert stored_files(storage) == []


def test_tasks_are_configured_with_the_documented_retries() -> None:
    for task in (
        edit_image_with_kontext_pro,
        edit_image_with_kontext_max,
        merge_images_with_kontext_pro,
        merge_images_with_kontext_max,
        edit_images_with_p_image_edit,
        run_segmind_endpoint,
    ):
        assert task.retries == TASK_RETRIES == 2
        assert task.retry_delay_seconds == 10.0
        assert task.retry_condition_fn is retry_transient_errors


def _task_run() -> TaskRun:
    return TaskRun(task_key="k", dynamic_key="0", flow_run_id=None)


@pytest.mark.parametrize(
    "error",
    [
        ServerError("500 from Segmind", status=500),
        RateLimitedError("429 from Segmind", status=429),
        NetworkError("the connection to Segmind failed"),
        TransientError("later"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_retry_condition_retries_transient_errors(error: TransientError) -> None:
    task: Task[..., Any] = edit_image_with_kontext_pro
    assert retry_transient_errors(task, _task_run(), Failed(data=error)) is True


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError("401", status=401),
        RequestRejectedError("400", status=400),
        InsufficientCreditsError("406", status=406),
        InvalidInputImageError("input_image", "no such file: x"),
        PermanentError("no"),
        ValueError("something else"),
        RuntimeError("something else"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_retry_condition_does_not_retry_other_errors(error: Exception) -> None:
    task: Task[..., Any] = edit_image_with_kontext_pro
    assert retry_transient_errors(task, _task_run(), Failed(data=error)) is False


def test_retry_condition_does_not_retry_a_completed_state() -> None:
    task: Task[..., Any] = edit_image_with_kontext_pro
    assert retry_transient_errors(task, _task_run(), Completed(data=1)) is False


# The key never leaks ------------------------------------------------------------


def _server_logs(flow_run_id: UUID) -> list[str]:
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [log.message for log in logs]


@pytest.fixture
def prefect_console() -> Iterator[io.StringIO]:
    """What Prefect's console handler prints, tracebacks included, as text.

    Prefect's own console handler keeps the stream it was configured with, so
    ``capsys`` does not see its output: a second one writes here.
    """
    console = io.StringIO()
    handler = PrefectConsoleHandler(stream=console)
    handler.setFormatter(logging.Formatter("%(levelname)s | %(name)s - %(message)s"))
    logger = logging.getLogger("prefect")
    logger.addHandler(handler)
    try:
        yield console
    finally:
        logger.removeHandler(handler)


def test_the_key_appears_in_no_log_error_result_parameter_state_or_stored_file(
    start_emulator: EmulatorFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    prefect_console: io.StringIO,
    storage: ObjectStorage,
) -> None:
    caplog.set_level(logging.DEBUG)
    # 0.03 USD: one p-image-edit (0.01) succeeds, then flux-kontext-pro (0.05) gets a 406.
    poor = start_emulator(api_key=SECRET_KEY, credits_usd=0.03)
    storm = start_emulator(api_key=SECRET_KEY, faults={"500": 1.0})
    monkeypatch.setenv("SEGMIND_API_KEY", SECRET_KEY)
    monkeypatch.setenv("SEGMIND_BASE_URL", poor.url)
    small = image_bytes(size=(64, 48))

    @flow(name="secret-check-succeeds")
    def succeeds(prompt: str) -> EditResult:
        return p_image_edit(prompt, [small], seed=4, storage=storage)

    @flow(name="secret-check-out-of-credits")
    def out_of_credits(prompt: str) -> EditResult:
        return edit_pro(prompt, image=small, storage=storage)

    @flow(name="secret-check-server-storm")
    def server_storm(prompt: str, credentials: SegmindCredentials) -> EditResult:
        return p_image_edit(prompt, [small], credentials=credentials, storage=storage)

    @flow(name="secret-check-explicit-block")
    def explicit_block(prompt: str, credentials: SegmindCredentials) -> EditResult:
        return p_image_edit(prompt, [small], seed=9, credentials=credentials, storage=storage)

    # The environment's key goes only to SEGMIND_BASE_URL: this block brings its own.
    storm_credentials = SegmindCredentials(
        api_key=SECRET_KEY,
        base_url=storm.url,
        max_attempts=2,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
    )
    # The key given in a block that is itself a flow parameter (as the flows allow).
    explicit_credentials = SegmindCredentials(api_key=SECRET_KEY, base_url=poor.url)
    states = {
        "succeeds": succeeds("blue", return_state=True),
        "out_of_credits": out_of_credits("snow", return_state=True),
        "server_storm": server_storm("rain", storm_credentials, return_state=True),
        "explicit_block": explicit_block("green", explicit_credentials, return_state=True),
    }

    assert states["succeeds"].is_completed()
    assert states["explicit_block"].is_completed()
    assert states["out_of_credits"].is_failed()
    assert states["server_storm"].is_failed()
    assert emulator_stats(storm.url)["requests"] == 2 * (TASK_RETRIES + 1)

    texts: dict[str, str] = {}
    results: list[EditResult] = []
    for name in ("succeeds", "explicit_block"):
        result = states[name].result()
        assert isinstance(result, EditResult)
        results.append(result)
        texts[f"{name} result"] = result_text(result)
    for name in ("out_of_credits", "server_storm"):
        error = raised_by(states[name])
        assert isinstance(error, InsufficientCreditsError | ServerError)
        texts[f"{name} error"] = (
            repr(error) + str(error) + "".join(traceback.format_exception(error))
        )

    with get_client(sync_client=True) as client:
        for name, state in states.items():
            flow_run_id = state.state_details.flow_run_id
            assert flow_run_id is not None
            flow_run = client.read_flow_run(flow_run_id)
            texts[f"{name} parameters"] = str(flow_run.parameters)
            texts[f"{name} flow state"] = f"{flow_run.state!r} {flow_run.state_name}"
            assert flow_run.state is not None
            texts[f"{name} flow state message"] = str(flow_run.state.message)
            texts[f"{name} local state message"] = str(state.message)
            for task_run in task_runs_of(state):
                assert task_run.state is not None
                texts[f"{name} task state {task_run.id}"] = f"{task_run.state!r}"
                texts[f"{name} task state message {task_run.id}"] = str(task_run.state.message)
                texts[f"{name} task inputs {task_run.id}"] = str(task_run.task_inputs)
            texts[f"{name} server logs"] = "\n".join(_server_logs(flow_run_id))
    # The failure was logged with its cause, so the checks below look at real content.
    assert "406" in texts["out_of_credits server logs"]
    assert "retry 1 of 1" in texts["server_storm server logs"]
    assert "rain" in texts["server_storm parameters"]

    # What was written to disk: the two images with their sidecars, and the
    # persisted task results (the cache records of the two seeded calls).
    files = stored_files(storage)
    assert sorted(p.name for p in files) == sorted(
        name for r in results for name in (Path(r.url).name, Path(r.url).name + SIDECAR_SUFFIX)
    )
    records = Path(get_current_settings().results.local_storage_path)
    for result in results:
        # Unsaved storage: the record's key also names the storage's location.
        assert len(list(records.glob(f"segmind-{result.request_digest}-*"))) == 1
    for path in [*files, *(p for p in records.rglob("*") if p.is_file())]:
        texts[f"file {path}"] = path.read_bytes().decode(errors="replace")

    captured = capsys.readouterr()
    texts["caplog"] = caplog.text + "\n".join(
        record.getMessage() + str(record.exc_info) for record in caplog.records
    )
    texts["stdout"] = captured.out
    texts["stderr"] = captured.err
    texts["console"] = prefect_console.getvalue()
    assert "406" in texts["caplog"]
    assert "Traceback" in texts["console"]
    assert "retry 1 of 1" in texts["console"]

    leaks = [name for name, text in texts.items() if SECRET_KEY in text or "feedc0ffee" in text]
    assert leaks == []


def test_result_records_the_balance_and_is_a_reference_not_the_image(
    emulator: SegmindEmulator, storage: ObjectStorage
) -> None:
    credentials = fast_credentials(emulator)

    result = in_flow(
        lambda: p_image_edit(
            "x", [image_bytes(size=(64, 48))], seed=8, credentials=credentials, storage=storage
        )
    )

    # No bytes anywhere in the result: a short reference to a much larger stored image.
    assert not any(isinstance(value, bytes) for value in result.model_dump().values())
    assert len(result.model_dump_json()) < 1000 < result.size_bytes
    assert len(stored_image(storage, result)) == result.size_bytes
    assert result.credits_remaining is not None
    assert float(result.credits_remaining) == pytest.approx(100 - 0.01)
    assert (
        Decimal(json.loads(sidecar_text(storage, result))["credits_remaining"])
        == result.credits_remaining
    )
    assert emulator_stats(emulator.url)["credits_remaining"] == pytest.approx(100 - 0.01)
