"""What the flows share: running rows, where cache records go, and what a cached step cost."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from decimal import Decimal
from pathlib import Path
from typing import Any

from prefect import Task, get_client, get_run_logger
from prefect.blocks.core import Block
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.utilities.annotations import NotSet

from blocks.object_storage import ObjectStorage
from blocks.segmind_credentials import SegmindCredentials
from segmind_core.batch import BatchCall, BatchReport, RowResult, own_output, run_batch
from segmind_core.generation import EditResult
from segmind_core.manifest import ManifestRow, RejectedRow
from segmind_core.outputs import OutputStore, sanitise_key_part
from tasks.artifacts import publish_outputs
from tasks.concurrency import flow_run_call_limit
from tasks.segmind_tasks import output_day, run_segmind_endpoint

__all__ = [
    "MAX_CONCURRENCY",
    "RECORDS_FOLDER",
    "SEED_MAX",
    "TASK_RUNNER_THREADS",
    "TASK_RUNS_PER_CALL",
    "InlineBlockError",
    "endpoint_caller",
    "paid_in_this_run",
    "record_storage",
    "refuse_inline_blocks",
    "run_endpoint_task",
    "run_file_key",
    "run_rows",
]

MAX_CONCURRENCY = 64
"""The most calls a run may have in flight."""
TASK_RUNS_PER_CALL = 2
"""Task runs a flow keeps started per call it may have in flight (see `run_rows`)."""
TASK_RUNNER_THREADS = TASK_RUNS_PER_CALL * MAX_CONCURRENCY
"""Threads of the flows' task runners: enough for every task run `run_rows` starts."""
SEED_MAX = 999_999_999_999_999
"""The largest seed the flows' forms accept (p-image-edit's bound, the tightest)."""


class InlineBlockError(ValueError):
    """A deployment's run was given a block's fields instead of a saved block."""


def refuse_inline_blocks(**blocks: Block | None) -> None:
    """In a deployment's run, refuse blocks given inline: only saved, named blocks are used.

    A deployment's parameters come from whoever triggers a run (the UI form, the
    API). A block given inline brings its own fields to the worker: credentials that
    name another server (the worker's ``SEGMIND_API_KEY`` would go there, or the
    worker would post to any internal address), storage that names any folder (then
    readable as input) or any S3 endpoint (signed with the worker's AWS credentials).
    A saved block is what the workspace's operators wrote. Runs outside a deployment
    (a script, ``python -m flows.batch``, a test) are the operator's own and may pass
    unsaved blocks. Raises before anything is read, written or paid for.

    Raises:
        InlineBlockError: naming each parameter given inline.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.deployment_id is None:
        return
    inline = sorted(
        name
        for name, block in blocks.items()
        if block is not None
        and (
            block._block_document_id is None
            # Saved without a name through the API: as good as inline.
            or block._is_anonymous
            or not block._block_document_name
        )
    )
    if inline:
        _mask_stored_parameters(context.flow_run, {name: blocks[name] for name in inline})
        raise InlineBlockError(
            f"{', '.join(inline)}: a deployment's run takes saved, named blocks only (pick "
            "one in the run form, or pass {'$ref': {'block_document_id': ...}}); fields given "
            "inline could send the worker's key or credentials elsewhere. Nothing was run"
        )


def _mask_stored_parameters(run: FlowRun, inline: dict[str, Block | None]) -> None:
    """Store the run's inline blocks with their secrets masked, in place of what was typed.

    The server stored the parameters as given when the run was created: a key
    typed into the form's inline fields would stay readable in the run's
    parameters. Best effort: a failure is logged, and the run is refused anyway.
    """
    masked = dict(run.parameters)
    for name, block in inline.items():
        if block is not None:
            masked[name] = block.model_dump(mode="json", exclude_unset=True)  # SecretStr: ***
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run.id, parameters=masked)
    except Exception as exc:  # refusing the run matters more
        get_run_logger().warning(
            "could not mask the inline %s in this run's stored parameters (%s)",
            ", ".join(inline),
            type(exc).__name__,
        )


def run_file_key(suffix: str) -> str:
    """The key of a file about this flow run: ``{flow}/{date}/runs/{run}{suffix}``."""
    flow = sanitise_key_part(str(flow_run.get_flow_name() or "adhoc"))
    run = sanitise_key_part(f"{flow_run.get_name() or 'local'}-{str(flow_run.get_id())[:8]}")
    return f"{flow}/{output_day():%Y-%m-%d}/runs/{run}{suffix}"


RECORDS_FOLDER = ".prefect-records"


def record_storage(storage: ObjectStorage) -> ObjectStorage | Path | type[NotSet]:
    """Where the endpoint tasks keep Prefect's cache records for ``storage``.

    - A saved block: in the block itself, beside the outputs, where every
      process and worker finds them.
    - An unsaved local folder: in its ``.prefect-records`` subfolder, so the
      records go with the outputs (delete the folder and both are gone; a
      record never names an image that is not there).
    - Other unsaved storage: Prefect's local storage (Prefect needs a saved
      block to keep records anywhere else); the cache key then names the
      storage's location (`tasks.caching`).
    """
    if storage._block_document_id is not None:
        return storage
    store = storage.get_store()
    if store.protocol in ("file", "local"):
        return Path(store.root) / RECORDS_FOLDER
    return NotSet


def paid_in_this_run(state: State[EditResult]) -> EditResult:
    """The task's result; a result served from Prefect's cache cost this run nothing.

    A cache hit returns the record of the run that paid (its cost, ``reused``
    False); the task run's state name, ``Cached``, is what tells them apart.
    """
    result: EditResult = state.result()
    if state.name == "Cached":
        return result.model_copy(update={"reused": True})
    return result


def endpoint_caller(
    storage: ObjectStorage, credentials: SegmindCredentials | None, *, refresh_cache: bool
) -> Callable[[BatchCall], Future[EditResult]]:
    """A ``call`` for `segmind_core.batch.run_batch`: each call is a submitted task run.

    The future's result is the call's `EditResult` (``reused`` when it cost
    this run nothing), always the job's own image: one served from another
    job's (two rows with the same request) is copied under the job's id
    (`segmind_core.batch.own_output`). Its exception is the task run's.
    """
    endpoint_task = run_segmind_endpoint.with_options(
        result_storage=record_storage(storage),
        refresh_cache=refresh_cache,
        task_run_name="{slug}: {job_id}",
    )
    outputs = OutputStore(storage.get_store())
    flow_name = str(flow_run.get_flow_name() or "adhoc")
    day = output_day()
    flow_run_id = flow_run.get_id()

    def own(result: EditResult, job_id: str, task_run_id: object) -> EditResult:
        if not result.reused:  # paid by this very call, so stored under its job id
            return result
        run_ids = {"flow_run_id": flow_run_id, "task_run_id": str(task_run_id)}
        return own_output(
            outputs, result, job_id=job_id, flow_name=flow_name, day=day, run_ids=run_ids
        )

    def call(planned: BatchCall) -> Future[EditResult]:
        future: Future[EditResult] = Future()
        submitted = endpoint_task.submit(
            slug=planned.slug,
            params=planned.params,
            images=planned.images,
            credentials=credentials,
            storage=storage,
            job_id=planned.job_id,
        )
        submitted.add_done_callback(
            lambda done: _settle(
                future, done, lambda result: own(result, planned.job_id, done.task_run_id)
            )
        )
        return future

    return call


def _settle(
    target: Future[EditResult],
    submitted: PrefectFuture[EditResult],
    finish: Callable[[EditResult], EditResult],
) -> None:
    """Hand a finished task run's result, passed through ``finish``, or its exception on."""
    try:
        # wait() takes the final state from the finished run itself; without it,
        # ``state`` asks the server, which may not have recorded the end yet.
        submitted.wait()
        target.set_result(finish(paid_in_this_run(submitted.state)))
    except Exception as exc:  # the call's failure, reported by the caller
        target.set_exception(exc)


def run_endpoint_task(
    task: Task[..., EditResult],
    title: str,
    *,
    storage: ObjectStorage,
    refresh_cache: bool,
    **arguments: Any,
) -> EditResult:
    """Run one endpoint task into ``storage`` and show its output in an artifact.

    Returns its result, ``reused`` when it cost this run nothing.
    """
    state = task.with_options(result_storage=record_storage(storage), refresh_cache=refresh_cache)(
        storage=storage, return_state=True, **arguments
    )
    result = paid_in_this_run(state)
    publish_outputs(title, [(str(arguments.get("prompt", "")), result)], store=storage.get_store())
    get_run_logger().info("Output: %s", result.url)
    return result


def run_rows(
    rows: Sequence[ManifestRow],
    call: Callable[[BatchCall], Future[EditResult]],
    *,
    max_concurrency: int,
    rejected: Sequence[RejectedRow] = (),
    max_cost_usd: Decimal | None = None,
    on_result: Callable[[RowResult], None] | None = None,
) -> BatchReport:
    """`run_batch` with at most ``max_concurrency`` calls in flight in this flow run.

    Twice as many task runs are started: each does its own work (inputs, cache,
    storing the output, its states) while other task runs' calls are in flight,
    and takes a call permit (`tasks.concurrency.flow_run_call_limit`) only around
    its HTTP attempts, so no call slot waits for that work. Outside a flow run
    (no limit to hold) it starts only ``max_concurrency``.
    """
    with flow_run_call_limit(max_concurrency) as limit:
        started_at_once = max_concurrency if limit is None else TASK_RUNS_PER_CALL * max_concurrency
        return run_batch(
            rows,
            call,
            rejected=rejected,
            max_concurrency=started_at_once,
            max_cost_usd=max_cost_usd,
            on_result=on_result,
        )
