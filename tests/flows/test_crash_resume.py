"""Crash and resume: ``kill -9`` a batch command half-way, run it again, count what was paid.

The command runs as a user runs it (``python -m flows.batch``, its own temporary
Prefect server, both in one process group that gets SIGKILL), against a
loopback emulator that takes a little time per call, so the kill lands while
calls are in flight. Everything is then judged from outside the product: the
emulator's billing counters and an independent look at the storage (boto3 on
the moto server, the file system for a local folder).

The expectations are derived from what was observed at the kill, so a re-run
that paid one call too many, or one too few, fails. The harness is
``bench/crash_resume.py`` (its full-size run is the benchmark); the assertions
are spelled out here. The two crash tests start the command twice each
(10-25 s a start, mostly Prefect's); the last test checks the output check itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from bench.crash_resume import (
    API_KEY,
    Inventory,
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
    results_manifest,
    run_and_kill,
    run_to_end,
    sidecar_digests,
    take_inventory,
)
from tests.conftest import EmulatorFactory, S3Server

ROWS = 24
MAX_CONCURRENCY = 4
LATENCY_S = 0.25


def crash_then_resume(
    start_emulator: EmulatorFactory,
    tmp_path: Path,
    *,
    manifest: str,
    output: str,
    rows: list[dict[str, Any]],
    objects: Objects,
    s3: S3Access | None,
) -> Inventory:
    """Kill the batch once half its rows are billed, check the kill, re-run it, check the bill.

    Returns what the storage held at the kill, for the storage-specific checks.
    """
    emulator = start_emulator(api_key=API_KEY, latency_s=LATENCY_S)
    row_ids = [row["id"] for row in rows]
    env = batch_env(tmp_path / "prefect-home", emulator.url, s3=s3, input_roots=[tmp_path])
    command = batch_command(manifest, output, max_concurrency=MAX_CONCURRENCY)

    kill = run_and_kill(
        command, env, emulator, kill_when_billed=ROWS // 2, log=tmp_path / "killed.log"
    )
    killed_log = (tmp_path / "killed.log").read_text(errors="replace")
    assert not kill.exited_early, killed_log[-3000:]
    # Every process of the group is gone: the flow-run process and its Prefect server.
    assert not group_alive(kill.pid)
    at_kill = take_inventory(objects, row_ids)
    stored = at_kill.stored()
    digests_at_kill = sidecar_digests(objects, at_kill)
    # Mid-batch: some rows done, not all; the calls in flight were answered and
    # billed by the emulator after their client died.
    assert ROWS // 2 <= kill.billed < ROWS
    assert 0 < len(stored) < ROWS, (kill, at_kill)
    assert kill.billed_settled >= kill.billed + kill.in_flight
    lost = kill.billed_settled - len(stored)
    # Paid and never stored: the calls in flight, or answered and being stored, at
    # the kill. The batch has at most MAX_CONCURRENCY of those at any time.
    assert 0 <= lost <= MAX_CONCURRENCY, (kill, sorted(stored))

    code, text, _ = run_to_end(command, env, log=tmp_path / "rerun.log")
    assert code == 0, text[-4000:]
    for marker in ("Traceback", "Error flushing", "| ERROR"):
        assert marker not in text, text[-4000:]
    stats = emulator.stats()
    not_done = set(row_ids) - stored
    # The re-run paid for exactly the rows that had no stored output at the kill...
    assert stats["billed"] - kill.billed_settled == len(not_done), (kill, sorted(stored))
    assert stats["billed"] == ROWS + lost
    results = results_manifest(text, objects)
    assert [row["id"] for row in results] == row_ids
    assert all(row["status"] == "succeeded" for row in results), results
    # ... and for no other: every row stored before the kill came from storage, free.
    paid = {row["id"] for row in results if float(row["cost_usd"]) > 0}
    assert paid == not_done
    assert {row["id"] for row in results if row["cached"]} == stored

    # One whole image and one sidecar per row, under its id; nothing half-written.
    endpoints = {row["id"]: row["endpoint"] for row in rows}
    final, problems = check_outputs(objects, row_ids, expected_endpoints=endpoints)
    assert problems == [], problems
    assert final.stored() == set(row_ids)
    # What was stored before the kill was not written again.
    final_digests = sidecar_digests(objects, final)
    assert {row_id: final_digests[row_id] for row_id in digests_at_kill} == digests_at_kill
    return at_kill


@pytest.mark.timeout(480)
def test_a_killed_batch_on_s3_resumes_paying_only_for_rows_not_stored(
    start_emulator: EmulatorFactory, s3: S3Server, tmp_path: Path
) -> None:
    client = s3.client()
    images = []
    for i, data in enumerate(input_images(6)):
        client.put_object(Bucket="outputs", Key=f"inputs/photo-{i}.png", Body=data)
        images.append(f"s3://outputs/inputs/photo-{i}.png")
    rows = manifest_rows(ROWS, images)
    client.put_object(Bucket="outputs", Key="manifest.jsonl", Body=jsonl(rows))
    objects = S3Objects(client, "outputs", "out")

    at_kill = crash_then_resume(
        start_emulator,
        tmp_path,
        manifest="s3://outputs/manifest.jsonl",
        output="s3://outputs/out",
        rows=rows,
        objects=objects,
        s3=S3Access(s3.endpoint_url, s3.access_key_id, s3.secret_access_key, s3.region),
    )

    # S3 writes are single PUTs: the kill left no partial object to clean up.
    assert at_kill.temporaries == []
    # The inputs and the manifest are untouched; the outputs are under out/ only.
    inputs = client.list_objects_v2(Bucket="outputs", Prefix="inputs/")["Contents"]
    assert len(inputs) == 6
    outside = [
        item["Key"]
        for item in client.list_objects_v2(Bucket="outputs")["Contents"]
        if not item["Key"].startswith(("inputs/", "out/"))
    ]
    assert outside == ["manifest.jsonl"]


@pytest.mark.timeout(480)
def test_a_killed_batch_into_a_local_folder_resumes_and_leaves_no_temporary_file(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    images = []
    for i, data in enumerate(input_images(6)):
        path = tmp_path / "inputs" / f"photo-{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        images.append(str(path))
    rows = manifest_rows(ROWS, images)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes(jsonl(rows))
    output = tmp_path / "out"

    at_kill = crash_then_resume(
        start_emulator,
        tmp_path,
        manifest=str(manifest),
        output=str(output),
        rows=rows,
        objects=LocalObjects(output),
        s3=None,
    )

    # A local write goes to a hidden temporary name first, then is renamed: after the
    # re-run no temporary file and no image without its sidecar is left anywhere
    # under the output folder (outputs, cache records, results manifests).
    leftovers = [path for path in output.rglob("*") if path.is_file() and ".part" in path.name]
    assert leftovers == [], (leftovers, at_kill.temporaries)
    images_without_sidecar = [
        path
        for path in output.rglob("*")
        if path.suffix in (".png", ".jpg") and not Path(f"{path}.json").is_file()
    ]
    assert images_without_sidecar == []
    # Every image's sidecar names it and its digest.
    sidecars = sorted(output.glob("batch/*/row-*.json"))
    assert len(sidecars) == ROWS
    for sidecar_path in sidecars:
        sidecar = json.loads(sidecar_path.read_text())
        image = Path(sidecar["output"]["url"])
        assert image == sidecar_path.with_suffix("")
        assert hashlib.sha256(image.read_bytes()).hexdigest() == sidecar["output"]["sha256"]


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

    inventory, problems = check_outputs(
        LocalObjects(tmp_path), ids, expected_endpoints=dict.fromkeys(ids, "p-image-edit")
    )

    assert inventory.orphans == ["batch/2026-11-21/row-0002.png"]
    assert inventory.temporaries == ["batch/2026-11-21/.row-0004.png.0123abcd.part"]
    assert inventory.stored() == {"row-0000", "row-0001", "row-0003", "row-0004", "row-0005"}
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
