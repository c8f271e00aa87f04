"""Make one edit in a few variations, let a person choose, and publish the chosen ones.

The run makes K variations (one per seed) with any endpoint, shows them in a
gallery artifact, then pauses with Prefect's own input form: the reviewer
presses Resume on the run's page, picks the variation numbers to publish (or
none) and may leave a note. The chosen images are copied, with their sidecars,
under ``published/`` in the same storage; nothing is paid again. Nobody
answering within ``review_timeout_s`` ends the run ``NotReviewed`` (a Completed
state) with nothing published.

The Prefect-free part (checks, names, copies, Markdown) is `segmind_core.publishing`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import Future
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, cast
from uuid import UUID

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, Running
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, WithJsonSchema, create_model

from blocks.object_storage import ObjectStorage
from blocks.segmind_credentials import SegmindCredentials
from flows.common import (
    SEED_MAX,
    TASK_RUNS_PER_CALL,
    endpoint_caller,
    refuse_inline_blocks,
    run_rows,
)
from segmind_core.batch import BatchCall, RowStatus
from segmind_core.contract import FluxAspectRatio
from segmind_core.generation import EditResult
from segmind_core.object_store import MAX_PRESIGN_EXPIRY_S, ObjectStore
from segmind_core.outputs import OutputStore
from segmind_core.publishing import (
    MAX_VARIATIONS,
    PublishedVariation,
    ReviewPlan,
    chosen_variations,
    plan_review,
    publish_variation,
    published_folder,
    render_published_markdown,
    render_review_description,
    review_record,
)
from tasks.artifacts import OUTPUTS_KEY, publish_outputs
from tasks.segmind_tasks import output_day

__all__ = [
    "PAUSE_KEY",
    "PUBLISHED_KEY",
    "ReviewDecision",
    "ReviewEndpoint",
    "ReviewOutcome",
    "review_form",
    "review_variations",
]

DAY_S = 86_400
PAUSE_KEY = "choose-variations"
PUBLISHED_KEY = "review-published"
NOT_REVIEWED = "NotReviewed"
"""The name of the (Completed) state a run ends in when nobody chose in time."""
_PUBLISH_TITLE = "Variations to publish"
_PUBLISH_HELP = "The variations to publish, e.g. 2; none selected publishes nothing."


class ReviewEndpoint(StrEnum):
    """The endpoint that makes the variations, and its list price per image."""

    FLUX_KONTEXT_PRO = "flux-kontext-pro"
    FLUX_KONTEXT_MAX = "flux-kontext-max"
    MULTI_IMAGE_KONTEXT_PRO = "multi-image-kontext-pro"
    MULTI_IMAGE_KONTEXT_MAX = "multi-image-kontext-max"
    P_IMAGE_EDIT = "p-image-edit"


class ReviewDecision(RunInput):
    """The reviewer's answer: which variations to publish (maybe none), and a note.

    Each run asks with `review_form`, which narrows ``publish`` to the numbers that
    run made (the form shows them as a multiple choice; the server refuses others).

    Attributes:
        publish: The numbers of the variations to publish; empty publishes nothing.
        note: Kept in each published image's sidecar, e.g. why this one.
    """

    publish: list[str] = Field(
        default_factory=list, title=_PUBLISH_TITLE, description=_PUBLISH_HELP
    )
    note: str = Field(
        default="",
        max_length=2000,
        title="Note",
        description="Kept with each published image (in its sidecar), e.g. why this one.",
    )


def _store_for_the_review(storage: ObjectStorage, review_timeout_s: int) -> ObjectStore:
    """The storage, its presigned links living as long as the review may wait (up to 7 days).

    The gallery is what the reviewer looks at before choosing, maybe hours later:
    links that expired after the storage's usual hour would show broken images.
    """
    store = storage.get_store()
    lifetime = min(max(store.presign_expiry_s, review_timeout_s), MAX_PRESIGN_EXPIRY_S)
    return dataclasses.replace(store, presign_expiry_s=lifetime)


def review_form(count: int, description: str) -> type[ReviewDecision]:
    """`ReviewDecision` whose ``publish`` takes only 1 to ``count``, with ``description`` above.

    The Prefect UI renders a list of an enumeration as a multiple choice, and the
    server checks a resume's input against this schema, so a number the run did not
    make is refused at resume (the run stays paused).
    """
    # Text, not integers: the UI's multiple choice offers only string options (an
    # integer enum showed an empty list). An explicit enum: pydantic writes a
    # one-value Literal as "const", which the form would show as free text.
    choices = [str(number) for number in range(1, count + 1)]
    numbers: Any = Annotated[
        cast(Any, Literal)[tuple(choices)],
        WithJsonSchema({"type": "string", "enum": choices}),
    ]
    form = create_model(
        "ReviewDecision",
        __base__=ReviewDecision,
        publish=(
            list[numbers],
            Field(default_factory=list, title=_PUBLISH_TITLE, description=_PUBLISH_HELP),
        ),
    )
    form._description = description  # shown above the form (Markdown)
    return form


class ReviewOutcome(BaseModel):
    """The variations, the reviewer's choice, where the chosen ones went, and the money.

    Attributes:
        variations: Variation ``n`` is ``variations[n - 1]``: URL, seed, cost.
        chosen: The variation numbers published, ascending; empty when none was
            chosen (or nobody answered in time).
        refused: Numbers the reviewer gave that this run did not make (not published).
        published: The copies under ``published/``, in the order of ``chosen``.
        published_urls: Their URLs.
        note: The reviewer's note.
        reviewed: Whether a person answered before the timeout.
        paid_usd: What this run paid (the variations not served from the cache).
    """

    variations: list[EditResult]
    chosen: list[int] = Field(default_factory=list)
    refused: list[int] = Field(default_factory=list)
    published: list[PublishedVariation] = Field(default_factory=list)
    published_urls: list[str] = Field(default_factory=list)
    note: str = ""
    reviewed: bool = False
    paid_usd: Decimal


Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


@flow(
    name="review-variations",
    task_runner=ThreadPoolTaskRunner(max_workers=TASK_RUNS_PER_CALL * MAX_VARIATIONS),  # type: ignore[arg-type]
)
def review_variations(
    prompt: str,
    images: Annotated[list[str] | None, Field(max_length=5)] = None,
    endpoint: ReviewEndpoint = ReviewEndpoint.FLUX_KONTEXT_PRO,
    aspect_ratio: FluxAspectRatio = FluxAspectRatio.MATCH_INPUT_IMAGE,
    seeds: Annotated[tuple[Seed, ...], Field(min_length=1, max_length=MAX_VARIATIONS)] = (1, 2, 3),
    review_timeout_s: Annotated[int, Field(ge=5, le=MAX_PRESIGN_EXPIRY_S)] = DAY_S,
    storage: ObjectStorage | None = None,
    credentials: SegmindCredentials | None = None,
    refresh_cache: bool = False,
) -> ReviewOutcome | State[Any]:
    """Make one edit in a few variations, wait for a person to choose, publish the chosen.

    Args:
        prompt: The edit, e.g. "put the cup on a marble counter in morning light".
        images: JPEG, PNG, GIF or WEBP images as https URLs, s3:// URLs or paths on the
            worker, e.g. ["examples/photos/coffee.jpg"]: 0 or 1 for flux-kontext-pro/max
            (none makes an image from text), exactly 2 for multi-image-kontext-pro/max,
            1 to 5 for p-image-edit.
        endpoint: flux-kontext-pro ($0.05 per image), flux-kontext-max ($0.10),
            multi-image-kontext-pro ($0.05), multi-image-kontext-max ($0.10) or
            p-image-edit ($0.01).
        aspect_ratio: Output ratio; match_input_image follows the first image.
            p-image-edit takes only match_input_image, 1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3.
        seeds: One variation per seed, 1 to 8 distinct seeds; the same seeds again
            cost nothing (cached).
        review_timeout_s: How long the run waits for a person to choose, in seconds (5 s
            to 7 days; 1 day by default); then it ends with nothing published.
        storage: Where images, sidecars, cache records and published copies go; empty
            means ./outputs.
        credentials: Segmind credentials block; empty means SEGMIND_API_KEY and SEGMIND_BASE_URL.
        refresh_cache: Generate again even when a cached result exists (pays again).

    Returns:
        The variations, the choice and the published copies; a Completed state named
        NotReviewed when nobody chose in time, a Failed state when a variation failed.
    """
    refuse_inline_blocks(storage=storage, credentials=credentials)
    storage = storage if storage is not None else ObjectStorage()
    plan = plan_review(prompt, images or [], endpoint.value, aspect_ratio.value, list(seeds))
    get_run_logger().info("Estimate: %s", plan.estimate_line())
    made = _make_variations(plan, storage, credentials, refresh_cache=refresh_cache)
    if isinstance(made, State):
        return made
    outcome = ReviewOutcome(variations=made[0], paid_usd=made[1])
    labelled = [
        (f"Variation {number} (seed {result.seed})", result)
        for number, result in enumerate(outcome.variations, start=1)
    ]
    title = f"Variations to review: {prompt if len(prompt) <= 80 else prompt[:77] + '...'}"
    publish_outputs(title, labelled, store=_store_for_the_review(storage, review_timeout_s))
    decision = _wait_for_choice(outcome.variations, review_timeout_s)
    if decision is None:
        return _not_reviewed(outcome, review_timeout_s)
    return _publish_chosen(outcome, decision, storage)


def _make_variations(
    plan: ReviewPlan,
    storage: ObjectStorage,
    credentials: SegmindCredentials | None,
    *,
    refresh_cache: bool,
) -> tuple[list[EditResult], Decimal] | State[Any]:
    """Every variation (at once: K is at most 8) and what they cost; Failed if any failed."""
    call = endpoint_caller(storage, credentials, refresh_cache=refresh_cache)
    futures: dict[str, Future[EditResult]] = {}

    def start(planned: BatchCall) -> Future[EditResult]:
        futures[planned.row_id] = call(planned)
        return futures[planned.row_id]

    report = run_rows(plan.rows, start, max_concurrency=plan.count)
    ended = {result.id: result for result in report.results}
    failed = [
        f"variation {number} (seed {row.params['seed']}): {ended[row.id].error}"
        for number, row in enumerate(plan.rows, start=1)
        if ended[row.id].status is not RowStatus.SUCCEEDED
    ]
    if failed:
        return Failed(
            message=(
                f"{len(failed)} of {plan.count} variation(s) failed, so nothing was put up for "
                f"review: {'; '.join(failed)}. Paid {report.paid_usd:.2f} USD; the variations "
                "made are stored and cached, so a run with the same seeds pays only for the "
                "missing ones"
            )
        )
    return [futures[row.id].result() for row in plan.rows], report.paid_usd


def _wait_for_choice(variations: Sequence[EditResult], timeout_s: int) -> ReviewDecision | None:
    """Pause until a person answers the form; ``None`` when nobody did within ``timeout_s``."""
    form = review_form(
        len(variations),
        render_review_description(variations, timeout_s=timeout_s, gallery_key=OUTPUTS_KEY),
    )
    ui_url = flow_run.get_flow_run_ui_url()
    get_run_logger().info(
        "Waiting up to %d s for a reviewer: open this flow run in the Prefect UI%s, look at "
        "the %r artifact, press Resume and pick the variation number(s) to publish (none "
        "publishes nothing). From Python: prefect.flow_runs.resume_flow_run(UUID(%r), "
        "run_input={'publish': ['1'], 'note': '...'})",
        timeout_s,
        f" ({ui_url})" if ui_url else "",
        OUTPUTS_KEY,
        flow_run.get_id(),
    )
    try:
        return pause_flow_run(
            wait_for_input=form,
            timeout=timeout_s,
            poll_interval=resume_poll_s(timeout_s),
            key=PAUSE_KEY,
        )
    except FlowPauseTimeout:
        return None


def resume_poll_s(timeout_s: int) -> int:
    """How often a paused run asks whether it was resumed: 1 to 10 s, a 60th of the wait."""
    return max(1, min(10, timeout_s // 60))


def _not_reviewed(outcome: ReviewOutcome, timeout_s: int) -> State[Any]:
    """End a run nobody answered in time: nothing published, a state that says so.

    Completed, named NotReviewed, with the outcome (what the variations cost) as its
    result; Cancelled when someone cancelled the run while it waited.
    """
    current = _leave_expired_pause()
    if current is not None and (current.is_cancelling() or current.is_cancelled()):
        cancelled = "The review was cancelled while it waited; nothing was published"
        get_run_logger().warning(cancelled)
        return Cancelled(message=cancelled, data=outcome)
    message = (
        f"No variation was chosen within {timeout_s} s; nothing was published. The "
        f"{len(outcome.variations)} variation(s) stay stored (paid in this run: "
        f"{outcome.paid_usd:.2f} USD); a run with the same seeds shows them again at no cost"
    )
    get_run_logger().warning(message)
    return Completed(name=NOT_REVIEWED, message=message, data=outcome)


def _leave_expired_pause() -> State[Any] | None:
    """The run's state on the server; a run still Paused is first forced to Running.

    Prefect refuses to move a run out of an expired pause to any state but Failed
    ("The flow was paused and never resumed"), which its server's pause-expiry
    service may also have set by now (a Failed run may then end as the flow says).
    Forced out of the pause, the run ends in the state the flow returns.
    """
    run_id = flow_run.get_id()
    if run_id is None:
        return None
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(UUID(run_id)).state
        if current is not None and current.is_paused():
            client.set_flow_run_state(
                run_id, Running(message="The review timed out; ending the run"), force=True
            )
    return current


def _publish_chosen(
    outcome: ReviewOutcome, decision: ReviewDecision, storage: ObjectStorage
) -> ReviewOutcome:
    """Copy the chosen variations under ``published/`` and say what went where."""
    logger = get_run_logger()
    count = len(outcome.variations)
    chosen, refused = chosen_variations(decision.publish, count)
    if refused:
        logger.error(
            "Variation(s) %s do not exist (this run made 1 to %d); not published",
            ", ".join(str(n) for n in refused),
            count,
        )
    store = storage.get_store()
    run_id, run_name = flow_run.get_id(), flow_run.get_name()
    folder = published_folder(f"{output_day():%Y-%m-%d}", str(run_name or ""), str(run_id or ""))
    review = review_record(decision.note, run_id, run_name, count)
    published = [
        publish_variation(OutputStore(store), n, outcome.variations[n - 1].key, folder, review)
        for n in chosen
    ]
    for item in published:
        logger.info("Published variation %d at %s", item.variation, item.url)
    if not published:
        logger.info("Nothing published: no variation of %d was chosen", count)
    _publish_summary(published, count=count, refused=refused, note=decision.note, storage=storage)
    return outcome.model_copy(
        update={
            "chosen": chosen,
            "refused": refused,
            "published": published,
            "published_urls": [item.url for item in published],
            "note": decision.note,
            "reviewed": True,
        }
    )


def _publish_summary(
    published: Sequence[PublishedVariation],
    *,
    count: int,
    refused: Sequence[int],
    note: str,
    storage: ObjectStorage,
) -> None:
    """The Markdown artifact saying what was published where (best effort)."""
    store = storage.get_store()
    try:
        create_markdown_artifact(
            render_published_markdown(
                published, count=count, refused=refused, note=note, link=store.presigned_url_for
            ),
            key=PUBLISHED_KEY,
            description="The variations the reviewer chose, and where they were copied.",
        )
    except Exception as exc:  # the copies are made; an artifact is for people
        get_run_logger().warning("Could not publish the summary artifact: %s", exc)
