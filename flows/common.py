"""What the flows share: where cache records go, and what a cached step cost."""

from __future__ import annotations

from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.utilities.annotations import NotSet

from blocks.object_storage import ObjectStorage
from segmind_core.generation import EditResult
from segmind_core.outputs import sanitise_key_part
from tasks.segmind_tasks import output_day

__all__ = ["paid_in_this_run", "record_storage", "run_file_key"]


def run_file_key(suffix: str) -> str:
    """The key of a file about this flow run: ``{flow}/{date}/runs/{run}{suffix}``."""
    flow = sanitise_key_part(str(flow_run.get_flow_name() or "adhoc"))
    run = sanitise_key_part(f"{flow_run.get_name() or 'local'}-{str(flow_run.get_id())[:8]}")
    return f"{flow}/{output_day():%Y-%m-%d}/runs/{run}{suffix}"


def record_storage(storage: ObjectStorage) -> ObjectStorage | type[NotSet]:
    """The ``result_storage`` for the endpoint tasks.

    Prefect keeps cache records only in a saved block; with an unsaved one the
    records stay in Prefect's local storage, and the output store's own lookup
    still avoids paying twice for the same output.
    """
    return storage if storage._block_document_id is not None else NotSet


def paid_in_this_run(state: State[EditResult]) -> EditResult:
    """The task's result; a result served from Prefect's cache cost this run nothing.

    A cache hit returns the record of the run that paid (its cost, ``reused``
    False); the task run's state name, ``Cached``, is what tells them apart.
    """
    result: EditResult = state.result()
    if state.name == "Cached":
        return result.model_copy(update={"reused": True})
    return result
