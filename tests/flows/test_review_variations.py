"""The review-variations flow, end to end: a real Prefect API, the emulator, a pause.

A pause needs a server the test can talk to while the flow waits: the session's
Prefect test server (a subprocess). Each paused run is created on it, executed
by Prefect's flow engine in a thread of this process (with this context, so the
same server and settings), and resumed through the API once the server says it
is Paused: the test polls the run's state, it never sleeps a guessed time.

Seeds are 96xx, pinned by no other test: Prefect's cache records last the whole
session and are keyed by the request, seed included.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.exceptions import NotPausedError, ParameterTypeError
from prefect.flow_engine import run_flow_sync
from prefect.flow_runs import resume_flow_run
from prefect.input.actions import read_flow_run_input
from prefect.input.run_input import keyset_from_paused_state
from prefect.states import Cancelling, Failed
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from blocks import ObjectStorage
from emulator import SegmindEmulator
from flows.review_variations import (
    NOT_REVIEWED,
    PUBLISHED_KEY,
    ReviewEndpoint,
    ReviewOutcome,
    resume_poll_s,
    review_form,
    review_variations,
)
from segmind_core.contract import FluxAspectRatio
from segmind_core.outputs import SIDECAR_SUFFIX
from segmind_core.publishing import ReviewRequestError
from tasks.artifacts import OUTPUTS_KEY
from tests.conftest import S3Server
from tests.flows.outputs import DAY, flow_run_artifacts
from tests.support import API_KEY, decode, wait_until

pytestmark = pytest.mark.usefixtures("prefect_harness")

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
COFFEE = str(PHOTOS / "coffee.jpg")
CHELSEA = str(PHOTOS / "chelsea.jpg")
FLOW = "review-variations"
PAUSE_DEADLINE_S = 90.0
"""The longest a test waits for a run to pause or to end (far above what they take)."""


# --- running a flow that pauses ---------------------------------------------------------


class ReviewRun:
    """A run of the flow on the test server, executed in a thread here."""

    started: ClassVar[list[ReviewRun]] = []
    """Every run made, so that one a failed test left paused is answered (see `pool`)."""

    def __init__(self, pool: ThreadPoolExecutor, parameters: dict[str, Any]) -> None:
        with get_client(sync_client=True) as client:
            self.flow_run = client.create_flow_run(review_variations, parameters={})
        self.id: UUID = self.flow_run.id
        context = contextvars.copy_context()  # the test server's URL and settings
        self.future: Future[Any] = pool.submit(
            context.run,
            run_flow_sync,
            review_variations,
            flow_run=self.flow_run,
            parameters=parameters,
            return_type="state",
        )
        ReviewRun.started.append(self)

    def server_state(self) -> State[Any]:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(self.id).state
        assert state is not None
        return state

    def wait_until_paused(self) -> None:
        """Return once the server has the run Paused (fail if it ended instead)."""
        wait_until(
            lambda: self.future.done() or self.server_state().is_paused(),
            timeout=PAUSE_DEADLINE_S,
            interval=0.1,
            what="the run pausing for review",
        )
        assert not self.future.done(), self.future.result()

    def resume(self, publish: list[int], note: str = "") -> None:
        # The form's choices are text ("2"), as the UI's multiple choice sends them.
        resume_flow_run(self.id, run_input={"publish": [str(n) for n in publish], "note": note})

    def final_state(self) -> State[Any]:
        state = self.future.result(timeout=PAUSE_DEADLINE_S)
        assert isinstance(state, State)
        return state


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """Threads for the runs; a run a failed test left waiting is answered "publish nothing".

    Without that, the pool's shutdown would wait for the run's whole review timeout.
    """
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="review-run") as executor:
        yield executor
        while ReviewRun.started:
            run = ReviewRun.started.pop()
            if not run.future.done():
                with contextlib.suppress(Exception):
                    resume_flow_run(run.id, run_input={"publish": [], "note": ""})


def parameters(storage: ObjectStorage, **arguments: Any) -> dict[str, Any]:
    """The flow's parameters: a cheap p-image-edit of the coffee photo unless told."""
    return {
        "prompt": "review flow test: make it a vintage travel poster",
        "images": [COFFEE],
        "endpoint": ReviewEndpoint.P_IMAGE_EDIT,
        "review_timeout_s": 60,
        "storage": storage,
        **arguments,
    }


def outcome_of(state: State[Any]) -> ReviewOutcome:
    outcome = state.result()
    assert isinstance(outcome, ReviewOutcome), outcome
    return outcome


def link_lifetimes(markdown: str) -> list[float]:
    """Seconds from now until each presigned link in ``markdown`` expires (``&amp;Expires=``)."""
    ends = [int(found) for found in re.findall(r"[?&;]Expires=(\d+)", markdown)]
    return [end - time.time() for end in ends]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def published_files(base: Path) -> list[Path]:
    folder = base / "published"
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def artifact_markdown(state: State[Any], key: str) -> str:
    artifacts = flow_run_artifacts(state, key)
    assert len(artifacts) == 1, artifacts
    data: str = artifacts[0].data
    return data


# --- the review, end to end ---------------------------------------------------------------


def test_choosing_variation_2_publishes_exactly_it_then_the_same_seeds_cost_nothing(
    segmind_env: SegmindEmulator, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    base = tmp_path / "out"
    storage = ObjectStorage(base_url=str(base))
    first = ReviewRun(pool, parameters(storage, seeds=[9601, 9602, 9603]))
    first.wait_until_paused()
    assert segmind_env.stats()["billed"] == 3  # made before the pause, shown in the gallery
    gallery = artifact_markdown(first.server_state(), OUTPUTS_KEY)
    assert all(f"Variation {n} (seed 960{n})" in gallery for n in (1, 2, 3)), gallery

    # The form on the run's page offers exactly the three variations, and lists them.
    keyset = keyset_from_paused_state(first.server_state())
    schema = read_flow_run_input(keyset["schema"], flow_run_id=first.id)
    assert schema["properties"]["publish"]["items"] == {"type": "string", "enum": ["1", "2", "3"]}
    description = read_flow_run_input(keyset["description"], flow_run_id=first.id)
    assert "- Variation 2: seed 9602, " in description, description

    # A number the run did not make is refused by the server: the run stays paused.
    with pytest.raises(RuntimeError, match="Cannot resume"):
        first.resume([4])
    assert first.server_state().is_paused()
    first.resume([2], note="the warm one, for the spring newsletter")
    state = first.final_state()

    assert (state.type, state.name) == (StateType.COMPLETED, "Completed"), state
    outcome = outcome_of(state)
    assert [result.seed for result in outcome.variations] == [9601, 9602, 9603]
    assert len({result.sha256 for result in outcome.variations}) == 3
    assert (outcome.chosen, outcome.refused, outcome.reviewed) == ([2], [], True)
    assert outcome.paid_usd == Decimal("0.03")
    chosen = outcome.variations[1]
    assert re.fullmatch(rf"{FLOW}/{DAY}/[^/]+", chosen.key), chosen.key
    assert re.fullmatch(r"review-[0-9a-f]{12}-seed9602\.png", Path(chosen.key).name)

    # Exactly variation 2's bytes, and its sidecar with the review, under published/.
    image, sidecar_path = published_files(base)
    assert sidecar_path == Path(f"{image}{SIDECAR_SUFFIX}")
    assert outcome.published_urls == [str(image)]
    run_part = rf"[a-z0-9._-]+-{str(first.id)[:8]}"
    relative = image.relative_to(base.resolve())
    assert re.fullmatch(
        rf"published/{DAY}/{run_part}/{re.escape(Path(chosen.key).name)}", str(relative)
    )
    assert sha256_of(image) == chosen.sha256 == sha256_of(Path(chosen.url))
    assert decode(image.read_bytes()).size == (chosen.width, chosen.height)
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["review"]["note"] == "the warm one, for the spring newsletter"
    assert sidecar["review"]["variation"] == 2
    assert sidecar["review"]["flow_run_id"] == str(first.id)
    assert sidecar["published_from"] == {
        "key": chosen.key,
        "url": chosen.url,
        "sha256": chosen.sha256,
    }
    assert sidecar["output"]["sha256"] == chosen.sha256
    assert sidecar["output"]["key"] == str(relative)
    assert (sidecar["seed"], sidecar["slug"]) == (9602, "p-image-edit")
    assert API_KEY not in sidecar_path.read_text()
    summary = artifact_markdown(state, PUBLISHED_KEY)
    assert "Variation 2" in summary, summary
    assert str(image) in summary, summary
    assert segmind_env.stats()["billed"] == 3

    # The same seeds again: every variation from the cache, nothing paid. None chosen.
    second = ReviewRun(pool, parameters(storage, seeds=[9601, 9602, 9603]))
    second.wait_until_paused()
    second.resume([])
    again = outcome_of(second.final_state())
    assert segmind_env.stats()["billed"] == 3
    assert again.paid_usd == 0
    assert all(result.reused for result in again.variations)
    assert [r.sha256 for r in again.variations] == [r.sha256 for r in outcome.variations]
    assert (again.chosen, again.published_urls, again.reviewed) == ([], [], True)
    assert published_files(base) == [image, sidecar_path]  # nothing more published
    assert "Nothing was published" in artifact_markdown(second.final_state(), PUBLISHED_KEY)


def test_merging_into_s3_and_publishing_both_variations(
    segmind_env: SegmindEmulator, pool: ThreadPoolExecutor, s3: S3Server
) -> None:
    storage = ObjectStorage(
        base_url="s3://outputs/review",
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
    )
    run = ReviewRun(
        pool,
        parameters(
            storage,
            prompt="review flow test: the cat sitting beside the cup",
            images=[COFFEE, CHELSEA],
            endpoint=ReviewEndpoint.MULTI_IMAGE_KONTEXT_PRO,
            aspect_ratio=FluxAspectRatio.R_21_9,
            seeds=[9611, 9612],
            review_timeout_s=2 * 3600,
        ),
    )
    run.wait_until_paused()
    # The gallery's links live as long as the review may wait, not the storage's hour.
    gallery = artifact_markdown(run.server_state(), OUTPUTS_KEY)
    lifetimes = link_lifetimes(gallery)
    assert len(lifetimes) >= 4, gallery  # 2 thumbnails, 2 full size
    assert all(7100 < lifetime <= 7200 for lifetime in lifetimes), lifetimes
    run.resume([2, 1, 2], note="both")
    outcome = outcome_of(run.final_state())

    assert outcome.chosen == [1, 2]
    assert outcome.paid_usd == Decimal("0.10")
    assert segmind_env.stats()["billed"] == 2
    client = s3.client()
    listed = client.list_objects_v2(Bucket="outputs", Prefix="review/published/")
    keys = sorted(entry["Key"] for entry in listed.get("Contents", []))
    assert len(keys) == 4, keys
    for item, variation in zip(outcome.published, outcome.variations, strict=True):
        key = urlsplit(item.url).path.lstrip("/")
        assert {key, f"{key}{SIDECAR_SUFFIX}"} <= set(keys)
        data = client.get_object(Bucket="outputs", Key=key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == variation.sha256
        assert decode(data).size == (1568, 672)  # 21:9
        sidecar = json.loads(
            client.get_object(Bucket="outputs", Key=f"{key}{SIDECAR_SUFFIX}")["Body"].read()
        )
        assert sidecar["review"]["variation"] == item.variation
        assert sidecar["review"]["note"] == "both"
        assert sidecar["published_from"]["url"] == variation.url


def start_unanswered_review(
    pool: ThreadPoolExecutor, base: Path, seed: int, timeout_s: int = 5
) -> ReviewRun:
    """A text-to-image review of one variation that nobody will answer."""
    run = ReviewRun(
        pool,
        parameters(
            ObjectStorage(base_url=str(base)),
            prompt="review flow test: a paper boat on a pond",
            images=[],
            endpoint=ReviewEndpoint.FLUX_KONTEXT_PRO,
            seeds=[seed],
            review_timeout_s=timeout_s,
        ),
    )
    run.wait_until_paused()
    return run


@pytest.mark.parametrize("server_failed_it_first", [False, True], ids=["paused", "failed"])
def test_nobody_choosing_in_time_ends_not_reviewed_with_nothing_published(
    server_failed_it_first: bool,
    segmind_env: SegmindEmulator,
    pool: ThreadPoolExecutor,
    tmp_path: Path,
) -> None:
    base = tmp_path / "out"
    run = start_unanswered_review(pool, base, 9621 + server_failed_it_first)
    if server_failed_it_first:
        # What the server's pause-expiry service does once the pause is over.
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(
                run.id, Failed(message="The flow was paused and never resumed."), force=True
            )
    state = run.final_state()

    message = "No variation was chosen within 5 s; nothing was published"
    assert (state.type, state.name) == (StateType.COMPLETED, NOT_REVIEWED), state
    assert (state.message or "").startswith(message), state.message
    on_server = run.server_state()
    assert (on_server.type, on_server.name) == (StateType.COMPLETED, NOT_REVIEWED)
    assert on_server.message == state.message
    outcome = outcome_of(state)
    assert (outcome.chosen, outcome.published_urls, outcome.reviewed) == ([], [], False)
    assert outcome.paid_usd == Decimal("0.05")
    assert published_files(base) == []
    assert segmind_env.stats()["billed"] == 1
    # It is too late to choose now.
    with pytest.raises(NotPausedError):
        run.resume([1])


def test_a_run_cancelled_while_it_waits_stays_cancelled(
    segmind_env: SegmindEmulator, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    base = tmp_path / "out"
    run = start_unanswered_review(pool, base, 9623)
    with get_client(sync_client=True) as client:  # the UI's Cancel button
        client.set_flow_run_state(run.id, Cancelling(message="not needed after all"))
    wait_until(lambda: run.server_state().is_cancelled(), what="the run being cancelled")
    state = run.final_state()

    assert state.type is StateType.CANCELLED, state
    assert run.server_state().type is StateType.CANCELLED
    assert "nothing was published" in (state.message or "")
    assert published_files(base) == []
    assert segmind_env.stats()["billed"] == 1


# --- refused before anything is paid ------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (
            {"endpoint": ReviewEndpoint.P_IMAGE_EDIT, "images": []},
            "p-image-edit takes 1 to 5 image(s), got 0",
        ),
        (
            {"endpoint": ReviewEndpoint.MULTI_IMAGE_KONTEXT_MAX, "images": [COFFEE]},
            "multi-image-kontext-max takes 2 image(s), got 1",
        ),
        (
            {"endpoint": ReviewEndpoint.FLUX_KONTEXT_PRO, "images": [COFFEE, CHELSEA]},
            "flux-kontext-pro takes 0 to 1 image(s), got 2",
        ),
        (
            {"endpoint": ReviewEndpoint.P_IMAGE_EDIT, "aspect_ratio": FluxAspectRatio.R_21_9},
            "p-image-edit does not take aspect ratio 21:9; it takes match_input_image, 1:1,",
        ),
        ({"seeds": [9631, 9632, 9631]}, "seeds must be distinct"),
        ({"prompt": "   "}, "prompt is required"),
    ],
    ids=["p-image-edit-0", "multi-1", "kontext-2", "p-image-edit-21:9", "duplicates", "prompt"],
)
def test_bad_input_is_refused_before_any_call(
    arguments: dict[str, Any], problem: str, segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    base = tmp_path / "out"
    state = review_variations(
        **parameters(ObjectStorage(base_url=str(base)), **arguments), return_state=True
    )

    assert state.is_failed(), state
    with pytest.raises(ReviewRequestError) as raised:
        state.result()
    assert problem in str(raised.value)
    assert str(raised.value).endswith("Nothing was paid")
    assert segmind_env.stats()["requests"] == 0
    assert not base.exists()


def test_an_input_that_cannot_be_read_fails_every_variation_unpaid_and_nothing_waits(
    segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-photo.jpg")
    state = review_variations(
        **parameters(
            ObjectStorage(base_url=str(tmp_path / "out")), images=[missing], seeds=[9651, 9652]
        ),
        return_state=True,
    )

    assert state.is_failed(), state
    assert (state.message or "").startswith(
        "2 of 2 variation(s) failed, so nothing was put up for review: variation 1 (seed 9651): "
    ), state.message
    assert "variation 2 (seed 9652): " in (state.message or "")
    assert "Paid 0.00 USD" in (state.message or "")
    assert segmind_env.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("seeds", "problem"),
    [
        (list(range(9641, 9650)), "at most 8 items"),
        ([], "at least 1 item"),
        ([-1], "greater than or equal to 0"),
    ],
    ids=["9 seeds", "no seed", "negative"],
)
def test_seeds_outside_the_form_s_bounds_are_refused_before_the_run_starts(
    seeds: list[int], problem: str, segmind_env: SegmindEmulator, tmp_path: Path
) -> None:
    state = review_variations(
        **parameters(ObjectStorage(base_url=str(tmp_path)), seeds=seeds), return_state=True
    )

    assert state.is_failed(), state
    with pytest.raises(ParameterTypeError, match=problem):
        state.result()
    assert segmind_env.stats()["requests"] == 0


# --- the forms ----------------------------------------------------------------------------


def test_the_run_form_has_bounds_choices_and_descriptions() -> None:
    schema = parameter_schema(review_variations.fn).model_dump_for_openapi()
    properties = schema["properties"]
    assert schema["required"] == ["prompt"]
    endpoints = schema["definitions"]["ReviewEndpoint"]["enum"]
    assert endpoints == [
        "flux-kontext-pro",
        "flux-kontext-max",
        "multi-image-kontext-pro",
        "multi-image-kontext-max",
        "p-image-edit",
    ]
    seeds = properties["seeds"]
    assert (seeds["minItems"], seeds["maxItems"], seeds["default"]) == (1, 8, [1, 2, 3])
    assert (seeds["items"]["minimum"], seeds["items"]["maximum"]) == (0, 999_999_999_999_999)
    timeout = properties["review_timeout_s"]
    assert (timeout["minimum"], timeout["maximum"], timeout["default"]) == (5, 604_800, 86_400)
    assert properties["images"]["anyOf"][0]["maxItems"] == 5
    assert all(properties[name].get("description") for name in properties)


def test_the_review_form_offers_exactly_the_variations_made() -> None:
    form = review_form(3, "**Choose**")
    publish = form.model_json_schema()["properties"]["publish"]
    assert publish["items"] == {"type": "string", "enum": ["1", "2", "3"]}
    assert "none selected publishes nothing" in publish["description"]
    assert "publish" not in form.model_json_schema().get("required", [])
    assert (form().publish, form().note) == ([], "")
    assert form(publish=["3", "1"]).publish == ["3", "1"]
    with pytest.raises(ValidationError):
        form(publish=["4"])
    # One variation is still a choice, not a free number.
    assert review_form(1, "x").model_json_schema()["properties"]["publish"]["items"] == {
        "type": "string",
        "enum": ["1"],
    }


def test_a_long_wait_polls_every_10_s_and_a_short_one_every_second() -> None:
    assert [resume_poll_s(s) for s in (5, 60, 300, 86_400)] == [1, 1, 5, 10]
