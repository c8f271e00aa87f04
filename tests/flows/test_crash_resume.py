"""Crash and resume: ``kill -9`` a batch command half-way, run it again, count what was paid.

The command runs as a user runs it (``python -m flows.batch``, in its own
process group that gets SIGKILL), against a loopback emulator that takes a
little time per call, so the kill lands while calls are in flight. Everything
is then judged from outside the product: the emulator's billing counters and an
independent look at the storage (boto3 on the moto server).

The expectations are derived from what was observed at the kill, so a re-run
that paid one call too many, or one too few, fails. The harness is
``bench/crash_resume.py`` (its full-size run is the benchmark, and
``--storage local`` runs the scenario into a local folder); the assertions are
spelled out here.

To stay fast, the command runs against the session's Prefect test server
(``PREFECT_API_URL`` in its environment) instead of starting a temporary
server of its own, twice per test; the SIGKILL then hits the flow-run process
alone. No shared concurrency limit is used (``SEGMIND_CONCURRENCY_LIMIT`` is
empty), so ``--max-concurrency`` is the only bound.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL

from bench.crash_resume import (
    API_KEY,
    Inventory,
    KillReport,
    LocalObjects,
    Objects,
    S3Access,
    S3Objects,
    batch_command,
    batch_env,
    check_outputs,
    group_alive,
    input_images,
    jsonl,
    manifest_rows,
    prepare_local,
    request_ids,
    results_manifest,
    run_and_kill,
    run_to_end,
    sidecar_digests,
    take_inventory,
)
from flows.common import TASK_RUNS_PER_CALL
from tests.conftest import EmulatorFactory, S3Server

ROWS = 12
MAX_CONCURRENCY = 4
KILL_WHEN_BILLED = 6
"""Past one round of MAX_CONCURRENCY calls: at least two rows are stored at the kill
(a row's call starts only once a row before it has been stored), and half are left."""
V1_LATENCY_S = 0.2
QUEUE_LATENCY_S = 0.5
"""Under the client's first 1 s wait between status polls: every job completes while
its client sleeps, and the job whose billing sets off the kill had its pending
record written 0.5 s before (a few milliseconds after the queue accepted it), and
the record stays until the next poll, 0.5 s after the kill. So a request is
always pending at the kill."""


@dataclass
class Crash:
    """What the tests saw: the kill, the storage then and after the re-run, the bill.

    ``records_at_kill``: the request id in each pending record at the kill, by row.
    """

    kill: KillReport
    at_kill: Inventory
    records_at_kill: dict[str, str]
    final: Inventory
    stats: dict[str, Any]


def s3_batch(s3: S3Server) -> tuple[str, str, list[dict[str, Any]], S3Objects, S3Access]:
    """Six input photos and a manifest of ROWS rows in the bucket; outputs go under out/."""
    client = s3.client()
    images = []
    for i, data in enumerate(input_images(6)):
        client.put_object(Bucket="outputs", Key=f"inputs/photo-{i}.png", Body=data)
        images.append(f"s3://outputs/inputs/photo-{i}.png")
    rows = manifest_rows(ROWS, images)
    client.put_object(Bucket="outputs", Key="manifest.jsonl", Body=jsonl(rows))
    access = S3Access(s3.endpoint_url, s3.access_key_id, s3.secret_access_key, s3.region)
    return (
        "s3://outputs/manifest.jsonl",
        "s3://outputs/out",
        rows,
        S3Objects(client, "outputs", "out"),
        access,
    )


def crash_then_resume(
    start_emulator: EmulatorFactory,
    tmp_path: Path,
    s3: S3Server | None,
    *,
    queue: bool,
) -> Crash:
    """Kill the batch once KILL_WHEN_BILLED calls are billed, re-run it, check every output.

    On S3 without ``s3``, in a local folder otherwise. The bill is checked by
    each test, from the numbers returned.
    """
    api_url = PREFECT_API_URL.value()
    assert api_url, "the session's Prefect server is not running"
    home = tmp_path / "prefect-home"
    objects: Objects
    if s3 is not None:
        manifest, output, rows, objects, access = s3_batch(s3)
    else:
        work = tmp_path / "work"
        manifest, output, rows, objects = prepare_local(work, ROWS, 6)
    emulator = start_emulator(api_key=API_KEY, latency_s=QUEUE_LATENCY_S if queue else V1_LATENCY_S)
    row_ids = [row["id"] for row in rows]
    if s3 is not None:
        env = batch_env(home, emulator.url, s3=access, api_url=api_url)
    else:
        env = batch_env(home, emulator.url, input_roots=[work], api_url=api_url)
    command = batch_command(manifest, output, max_concurrency=MAX_CONCURRENCY, queue=queue)

    kill = run_and_kill(
        command, env, emulator, kill_when_billed=KILL_WHEN_BILLED, log=tmp_path / "killed.log"
    )
    killed_log = (tmp_path / "killed.log").read_text(errors="replace")
    assert not kill.exited_early, killed_log[-3000:]
    assert not group_alive(kill.pid)
    # ``run_and_kill`` returned once every call and job the killed run had started
    # had ended (and was billed): what is stored now is all the killed run left.
    at_kill = take_inventory(objects, row_ids)
    stored = at_kill.stored()
    digests_at_kill = sidecar_digests(objects, at_kill)
    records_at_kill = request_ids(objects, at_kill.pending)
    # Mid-batch: some rows done, not all.
    assert KILL_WHEN_BILLED <= kill.billed < ROWS
    assert 2 <= len(stored) < ROWS, (kill, sorted(stored))
    if s3 is not None:
        assert at_kill.temporaries == []  # S3 writes are single PUTs: no partial object

    code, text, _ = run_to_end(command, env, log=tmp_path / "rerun.log")
    assert code == 0, text[-4000:]
    for marker in ("Traceback", "Error flushing", "| ERROR"):
        assert marker not in text, text[-4000:]
    stats = emulator.stats()
    not_done = set(row_ids) - stored
    results = results_manifest(text, objects)
    assert [row["id"] for row in results] == row_ids
    assert all(row["status"] == "succeeded" for row in results), results
    # The rows stored before the kill came from storage, free; every other row has
    # its call's cost (queue mode: also a resumed request, paid for once, by the
    # killed run's submission).
    assert {row["id"] for row in results if float(row["cost_usd"]) > 0} == not_done
    assert {row["id"] for row in results if row["cached"]} == stored

    # One whole image and one sidecar per row, under its id; nothing half-written.
    endpoints = {row["id"]: row["endpoint"] for row in rows}
    final, problems = check_outputs(objects, row_ids, expected_endpoints=endpoints)
    assert problems == [], problems
    assert final.stored() == set(row_ids)
    # What was stored before the kill was not written again.
    final_digests = sidecar_digests(objects, final)
    assert {row_id: final_digests[row_id] for row_id in digests_at_kill} == digests_at_kill
    # Every row's output came from its own request: no two share a request id.
    ids = request_ids(objects, final.sidecars)
    assert len(ids) == ROWS
    assert len(set(ids.values())) == ROWS, ids
    assert "None" not in ids.values()
    # No pending record is left, and none was set aside (nothing failed or expired).
    assert final.pending == {}
    assert final.set_aside == []
    assert final.strays == []
    assert final.temporaries == []  # a killed local writer's .part file was removed
    return Crash(kill, at_kill, records_at_kill, final, stats)


@pytest.mark.timeout(240)
def test_a_killed_batch_on_s3_resumes_paying_only_for_rows_not_stored(
    prefect_harness: None, start_emulator: EmulatorFactory, s3: S3Server, tmp_path: Path
) -> None:
    crash = crash_then_resume(start_emulator, tmp_path, s3, queue=False)
    kill, stored = crash.kill, crash.at_kill.stored()

    # /v1: the calls in flight at the kill were answered and billed after their
    # client died. Paid and never stored: those (at most MAX_CONCURRENCY), or calls
    # answered and being stored at the kill (the batch starts TASK_RUNS_PER_CALL
    # task runs per call it may have in flight, so at most that many in all).
    assert kill.billed_settled >= kill.billed + kill.in_flight
    assert kill.in_flight <= MAX_CONCURRENCY
    lost = kill.billed_settled - len(stored)
    assert 0 <= lost <= TASK_RUNS_PER_CALL * MAX_CONCURRENCY, (kill, sorted(stored))
    # The re-run paid for exactly the rows that had no stored output at the kill.
    assert crash.stats["billed"] - kill.billed_settled == ROWS - len(stored)
    assert crash.stats["billed"] == ROWS + lost
    # No queue anywhere.
    assert kill.jobs_submitted == 0
    assert crash.stats["jobs"] == {}
    assert crash.at_kill.pending == {}

    # The inputs and the manifest are untouched; the outputs are under out/ only.
    client = s3.client()
    inputs = client.list_objects_v2(Bucket="outputs", Prefix="inputs/")["Contents"]
    assert len(inputs) == 6
    outside = [
        item["Key"]
        for item in client.list_objects_v2(Bucket="outputs")["Contents"]
        if not item["Key"].startswith(("inputs/", "out/"))
    ]
    assert outside == ["manifest.jsonl"]


@pytest.mark.timeout(240)
def test_a_killed_batch_in_a_local_folder_resumes_with_nothing_half_written(
    prefect_harness: None, start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # Local writes go to a hidden .part file renamed into place: a kill leaves at
    # most a .part or an image without its sidecar, and the re-run cleans up both.
    crash = crash_then_resume(start_emulator, tmp_path, None, queue=False)
    kill, stored = crash.kill, crash.at_kill.stored()

    lost = kill.billed_settled - len(stored)
    assert 0 <= lost <= TASK_RUNS_PER_CALL * MAX_CONCURRENCY, (kill, sorted(stored))
    assert crash.stats["billed"] - kill.billed_settled == ROWS - len(stored)
    assert crash.stats["billed"] == ROWS + lost
    # Inputs and manifest untouched; nothing outside out/ but them.
    work = tmp_path / "work"
    assert sorted(p.name for p in (work / "inputs").iterdir()) == [
        f"photo-{i}.png" for i in range(6)
    ]
    assert sorted(p.name for p in work.iterdir()) == ["inputs", "manifest.jsonl", "out"]


@pytest.mark.timeout(240)
def test_a_killed_queue_batch_resumes_its_pending_requests_without_paying_again(
    prefect_harness: None, start_emulator: EmulatorFactory, s3: S3Server, tmp_path: Path
) -> None:
    crash = crash_then_resume(start_emulator, tmp_path, s3, queue=True)
    kill, at_kill = crash.kill, crash.at_kill
    objects = S3Objects(s3.client(), "outputs", "out")
    stored, pending = at_kill.stored(), at_kill.in_queue()

    # Every job the killed run submitted ran to the end and was billed, its client dead.
    assert kill.jobs_failed == 0
    assert kill.billed_settled == kill.jobs_submitted
    # The kill caught requests in the queue, each with its pending record.
    assert len(pending) >= 1, (kill, sorted(stored))
    assert all(len(keys) == 1 for keys in at_kill.pending.values()), at_kill.pending
    assert at_kill.set_aside == []
    # Each job submitted is a stored row, a pending row, or lost: accepted by the
    # queue, its record not yet written (the time of one storage write). A stored row
    # whose record was still there (the kill fell between the sidecar's write and
    # the record's removal) is counted once, as stored.
    lost = kill.jobs_submitted - len(stored) - len(pending)
    assert 0 <= lost <= MAX_CONCURRENCY - len(pending), (kill, sorted(stored), sorted(pending))

    # The re-run submitted, and paid for, only the rows neither stored nor pending...
    submitted = crash.stats["jobs"]["QUEUED"] - kill.jobs_submitted
    assert submitted == ROWS - len(stored) - len(pending)
    assert crash.stats["billed"] - kill.billed_settled == submitted
    assert crash.stats["jobs"]["COMPLETED"] == crash.stats["jobs"]["QUEUED"]
    # ... so in all each row was paid for once, plus the lost submissions.
    assert crash.stats["billed"] == ROWS + lost
    # Each pending row's output is its record's request, polled again, not a new one.
    final_ids = request_ids(objects, crash.final.sidecars)
    assert {row: final_ids[row] for row in pending} == {
        row: crash.records_at_kill[row] for row in pending
    }
    # Rows stored with their record still there were served from storage (above),
    # and their record removed (the final listing has no pending record).
    print(
        f"queue crash: {kill.jobs_submitted} submitted = {len(stored)} stored + "
        f"{len(pending)} pending + {lost} lost; "
        f"{len(at_kill.stored_with_record())} stored with record; re-run submitted {submitted}"
    )


def test_the_output_check_sees_duplicates_orphans_temporaries_and_broken_images(
    tmp_path: Path,
) -> None:
    # The oracle of the tests above, on a folder made by hand: each kind of damage
    # a crash could leave is reported, and a clean row is not.
    day = tmp_path / "batch" / "2026-11-21"
    day.mkdir(parents=True)
    good = input_images(1)[0]

    def store(name: str, data: bytes, *, sidecar: bool = True, slug: str = "p-image-edit") -> None:
        (day / name).write_bytes(data)
        if sidecar:
            digest = hashlib.sha256(data).hexdigest()
            meta = {"slug": slug, "output": {"sha256": digest, "width": 480, "height": 360}}
            (day / f"{name}.json").write_text(json.dumps(meta))

    store("row-0000.png", good)
    store("row-0001.png", good)
    store("row-0001-20261121T120000000000Z.png", good)  # a time-stamped second copy
    store("row-0002.png", good, sidecar=False)  # a writer killed between image and sidecar
    store("row-0003.png", good[: len(good) // 2])  # cut short; the sidecar has its digest
    store("row-0004.png", good)
    (day / ".row-0004.png.0123abcd.part").write_bytes(good[:10])  # a rename that never came
    store("row-0005.png", good, slug="flux-kontext-pro")
    ids = [f"row-{i:04d}" for i in range(7)]
    # Queue mode's pending records: one of a stored row (the kill fell between its
    # sidecar and the record's removal), one of a row in the queue, one set aside.
    queue = tmp_path / "_queue" / "batch" / "2026-11-21"
    queue.mkdir(parents=True)
    (queue / "row-0000.png.json").write_text(json.dumps({"request_id": "r-0"}))
    (queue / "row-0006.jpg.json").write_text(json.dumps({"request_id": "r-6"}))
    expired = tmp_path / "_queue" / "expired" / "batch" / "2026-11-21"
    expired.mkdir(parents=True)
    (expired / "row-0002.png.20261121T120000Z.json").write_text("{}")

    inventory, problems = check_outputs(
        LocalObjects(tmp_path), ids, expected_endpoints=dict.fromkeys(ids, "p-image-edit")
    )

    assert inventory.orphans == ["batch/2026-11-21/row-0002.png"]
    assert inventory.temporaries == ["batch/2026-11-21/.row-0004.png.0123abcd.part"]
    assert inventory.stored() == {"row-0000", "row-0001", "row-0003", "row-0004", "row-0005"}
    assert inventory.in_queue() == {"row-0006"}
    assert inventory.stored_with_record() == {"row-0000"}
    assert inventory.set_aside == [
        "_queue/expired/batch/2026-11-21/row-0002.png.20261121T120000Z.json"
    ]
    assert request_ids(LocalObjects(tmp_path), inventory.pending) == {
        "row-0000": "r-0",
        "row-0006": "r-6",
    }
    assert inventory.strays == []
    assert len(inventory.images["row-0001"]) == 2
    assert not [problem for problem in problems if problem.startswith("row-0000")], problems
    reported = "\n".join(problems)
    for expected in (
        "1 orphans",
        "1 temporaries",
        "row-0001: 2 image(s)",
        "row-0002: 1 image(s)",
        "row-0003: batch/2026-11-21/row-0003.png does not decode",
        "row-0005: made by flux-kontext-pro",
        "row-0006: 0 image(s)",
    ):
        assert expected in reported, reported
