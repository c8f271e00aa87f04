"""``python -m flows.batch``, run as a real command against a loopback emulator.

Every run is a subprocess with its own Prefect home and no ``PREFECT_API_URL``,
so the command starts (and stops) its own temporary Prefect server, as it does
on a user's machine: about 10 s per run (the 300-row run takes 40-60 s), hence
few runs with many assertions. After a run, the server's SQLite database in that
home tells what it recorded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from emulator import SegmindEmulator
from segmind_core.outputs import SIDECAR_SUFFIX
from tests.support import API_KEY, DOCUMENTED_SIZES, decode

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "examples" / "photos"
CATALOGUE = REPO / "examples" / "manifests" / "catalogue.jsonl"
DAY = r"\d{4}-\d{2}-\d{2}"
PROGRESS = re.compile(r"\[(\d+)/(\d+)\] (\S+) (succeeded|failed|not_run) ")
# What each catalogue row makes: coffee.jpg is 600x400, so match_input_image is 3:2.
CATALOGUE_SIZES = {
    "coffee-marble": DOCUMENTED_SIZES["1:1"],
    "cat-and-coffee": DOCUMENTED_SIZES["3:2"],
    "astronaut-poster": DOCUMENTED_SIZES["2:3"],
    "coffee-scene": DOCUMENTED_SIZES["3:2"],
}
CATALOGUE_COSTS = {
    "coffee-marble": Decimal("0.05"),
    "cat-and-coffee": Decimal("0.05"),
    "astronaut-poster": Decimal("0.01"),
    "coffee-scene": Decimal("0.10"),
}


def command_env(home: Path, base_url: str | None, *, key: str | None = API_KEY) -> dict[str, str]:
    """The parent's environment without Prefect or Segmind settings, and Prefect home ``home``.

    No ``PREFECT_API_URL``: the command starts its own temporary server, whose
    database is ``home/prefect.db``. The input policy (``SEGMIND_INPUT_*``) is kept:
    the manifests and photos live in temporary folders.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "SEGMIND_")) or name.startswith("SEGMIND_INPUT_")
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    if key is not None:
        env["SEGMIND_API_KEY"] = key
    if base_url is not None:
        env["SEGMIND_BASE_URL"] = base_url
    return env


def run_command(
    env: dict[str, str], *args: str | Path, timeout: float = 120.0, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.batch", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(completed: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {completed.returncode}\n--- stdout ---\n{completed.stdout[-3000:]}"
        f"\n--- stderr ---\n{completed.stderr[-6000:]}"
    )


def assert_clean(completed: subprocess.CompletedProcess[str]) -> None:
    """No traceback, no lost task-run records, no error log line, in either stream."""
    both = completed.stdout + completed.stderr
    assert "Traceback" not in both, describe(completed)
    assert "Error flushing" not in both, describe(completed)
    assert "warning: the local Prefect server recorded" not in both, describe(completed)
    assert "| ERROR" not in both, describe(completed)


def results_manifest(
    completed: subprocess.CompletedProcess[str], output: Path
) -> tuple[Path, list[dict[str, Any]]]:
    """The results manifest named by the last stdout line, parsed line by line."""
    lines = completed.stdout.strip().splitlines()
    assert lines, describe(completed)
    path = Path(lines[-1])
    assert path.is_file(), describe(completed)
    relative = path.relative_to(output.resolve())
    assert re.fullmatch(rf"batch/{DAY}/runs/[a-z0-9._-]+-results\.jsonl", str(relative))
    text = path.read_text()
    assert text.endswith("\n")
    return path, [json.loads(line) for line in text.splitlines()]


def recorded_runs(home: Path, table: str) -> dict[str, int]:
    """Runs the temporary server recorded in ``home``'s database, counted by state type."""
    assert table in ("flow_run", "task_run")
    database = sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True)
    try:
        counted = database.execute(
            f"SELECT state_type, count(*) FROM {table} GROUP BY state_type"  # noqa: S608 - fixed names
        ).fetchall()
    finally:
        database.close()
    return {str(state): int(count) for state, count in counted}


def progress_lines(stderr: str) -> list[tuple[int, int, str, str]]:
    return [
        (int(done), int(total), row_id, status)
        for done, total, row_id, status in PROGRESS.findall(stderr)
    ]


def assert_output(
    row: dict[str, Any], output: Path, size: tuple[int, int], *, full_decode: bool = True
) -> None:
    """The row's image is under ``output``, named after the row, with a matching sidecar.

    ``full_decode=False`` reads only the PNG header for the size (the sha256 still
    covers every byte): decoding hundreds of 1-megapixel images takes seconds.
    """
    path = Path(row["output"])
    relative = path.relative_to(output.resolve())
    assert re.fullmatch(rf"batch/{DAY}/{re.escape(row['id'])}\.png", str(relative)), relative
    data = path.read_bytes()
    if full_decode:
        assert decode(data).size == size
    else:
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.size) == ("PNG", size)
    sidecar = json.loads(Path(f"{path}{SIDECAR_SUFFIX}").read_text())
    assert sidecar["output"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["seed"] == row["seed"]
    assert sidecar["flow_name"] == "batch"


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def p_image_edit_row(row_id: str, image: Path, seed: int) -> dict[str, Any]:
    return {
        "id": row_id,
        "endpoint": "p-image-edit",
        "prompt": "turn the photo into a vintage travel poster",
        "images": [str(image)],
        "params": {"aspect_ratio": "1:1", "seed": seed},
    }


@pytest.mark.timeout(180)
def test_the_catalogue_runs_and_the_last_line_is_the_results_manifest(
    emulator: SegmindEmulator, tmp_path: Path
) -> None:
    home, output = tmp_path / "prefect-home", tmp_path / "out"
    completed = run_command(
        command_env(home, emulator.url), CATALOGUE, "--output", output, "--max-concurrency", 4
    )

    assert completed.returncode == 0, describe(completed)
    assert_clean(completed)
    path, rows = results_manifest(completed, output)
    assert [row["id"] for row in rows] == list(CATALOGUE_SIZES)
    assert [row["line"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        assert row["status"] == "succeeded", row
        assert row["error"] is None
        assert row["cached"] is False
        assert Decimal(str(row["cost_usd"])) == CATALOGUE_COSTS[row["id"]]
        assert_output(row, output, CATALOGUE_SIZES[row["id"]])
    # The two-step row keeps its intermediate, beside the final image.
    scene = rows[3]
    assert Path(scene["intermediate"]).name == "coffee-scene-background.png"
    assert Path(scene["intermediate"]).is_file()

    # Progress: one line per row, counted 1 to 4, on stderr only; stdout is the URL alone.
    progress = progress_lines(completed.stderr)
    assert sorted(done for done, _, _, _ in progress) == [1, 2, 3, 4]
    assert {total for _, total, _, _ in progress} == {4}
    assert sorted(row_id for _, _, row_id, _ in progress) == sorted(CATALOGUE_SIZES)
    assert completed.stdout.strip().splitlines() == [str(path)]
    assert "Completed: 4 succeeded, 0 failed, 0 not run; paid 0.21 USD" in completed.stderr
    assert API_KEY not in completed.stdout + completed.stderr

    stats = emulator.stats()
    assert stats["billed"] == 5
    assert stats["spent_usd"] == pytest.approx(0.21)
    # The temporary server recorded the run and its five calls before it stopped.
    assert recorded_runs(home, "flow_run") == {"COMPLETED": 1}
    assert recorded_runs(home, "task_run") == {"COMPLETED": 5}

    # The next night, on a fresh machine (a new Prefect home), into the same output:
    # the cache records were kept beside the outputs, so nothing is paid again.
    again = run_command(
        command_env(tmp_path / "fresh-home", emulator.url), CATALOGUE, "--output", output
    )
    assert again.returncode == 0, describe(again)
    _, rows_again = results_manifest(again, output)
    assert [row["cached"] for row in rows_again] == [True, True, True, True]
    assert [row["cost_usd"] for row in rows_again] == [0, 0, 0, 0]
    assert [row["output"] for row in rows_again] == [row["output"] for row in rows]
    assert emulator.stats()["billed"] == 5


@pytest.mark.timeout(300)
def test_a_large_manifest_ends_cleanly_with_every_task_run_recorded(
    emulator: SegmindEmulator, tmp_path: Path
) -> None:
    # With a temporary server, hundreds of task runs used to end in "ERROR ...
    # task_run_recorder - Error flushing N events" at exit, with task runs left
    # Running or never recorded: the server was stopped while still recording them.
    # Without the command's wait, 300 rows at 32 in flight show it on 2 cores.
    photos = sorted(PHOTOS.glob("*.jpg"))
    count, in_flight = 300, 32
    manifest = write_manifest(
        tmp_path / "large.jsonl",
        [p_image_edit_row(f"row-{i:03d}", photos[i % len(photos)], 7400 + i) for i in range(count)],
    )
    home, output = tmp_path / "prefect-home", tmp_path / "out"
    completed = run_command(
        command_env(home, emulator.url),
        manifest,
        "--output",
        output,
        "--max-concurrency",
        in_flight,
        timeout=270,
    )

    assert completed.returncode == 0, describe(completed)
    assert_clean(completed)
    _, rows = results_manifest(completed, output)
    assert [row["id"] for row in rows] == [f"row-{i:03d}" for i in range(count)]
    assert all(row["status"] == "succeeded" for row in rows), [
        row for row in rows if row["status"] != "succeeded"
    ]
    for row in rows:
        assert_output(row, output, DOCUMENTED_SIZES["1:1"], full_decode=False)
    assert sorted(done for done, _, _, _ in progress_lines(completed.stderr)) == list(
        range(1, count + 1)
    )
    assert f"Completed: {count} succeeded, 0 failed, 0 not run" in completed.stderr

    stats = emulator.stats()
    assert stats["billed"] == count
    assert stats["spent_usd"] == pytest.approx(0.01 * count)
    assert 2 <= stats["max_in_flight"] <= in_flight
    assert recorded_runs(home, "flow_run") == {"COMPLETED": 1}
    assert recorded_runs(home, "task_run") == {"COMPLETED": count}


@pytest.mark.timeout(180)
def test_a_budget_below_the_estimate_refuses_before_any_call(
    emulator: SegmindEmulator, tmp_path: Path
) -> None:
    home, output = tmp_path / "prefect-home", tmp_path / "out"
    completed = run_command(
        command_env(home, emulator.url), CATALOGUE, "--output", output, "--max-cost-usd", 0.2
    )

    assert completed.returncode == 1, describe(completed)
    assert_clean(completed)
    stats = emulator.stats()
    assert stats["requests"] == 0
    assert stats["billed"] == 0
    _, rows = results_manifest(completed, output)
    assert [row["id"] for row in rows] == list(CATALOGUE_SIZES)
    for row in rows:
        assert row["status"] == "not_run", row
        assert row["output"] is None
        assert row["cost_usd"] == 0
        assert "max_cost_usd 0.20" in row["error"]
        assert "0.21" in row["error"]
    assert "Failed: 0 succeeded, 0 failed, 4 not run; paid 0.00 USD" in completed.stderr
    assert not list(output.glob("batch/*/*.png"))
    assert recorded_runs(home, "flow_run") == {"FAILED": 1}
    assert recorded_runs(home, "task_run") == {}


@pytest.mark.timeout(240)
def test_a_bad_row_fails_the_run_unless_allowed(emulator: SegmindEmulator, tmp_path: Path) -> None:
    missing = tmp_path / "missing-photo.jpg"
    manifest = write_manifest(
        tmp_path / "one-bad.jsonl",
        [
            p_image_edit_row("good-1", PHOTOS / "coffee.jpg", 7501),
            p_image_edit_row("bad", missing, 7502),
            p_image_edit_row("good-2", PHOTOS / "chelsea.jpg", 7503),
        ],
    )
    # Each run with its own Prefect home and output folder: two independent first runs.
    strict_home, strict_output = tmp_path / "strict-home", tmp_path / "strict"
    strict = run_command(
        command_env(strict_home, emulator.url), manifest, "--output", strict_output
    )
    lenient_home, lenient_output = tmp_path / "lenient-home", tmp_path / "lenient"
    lenient = run_command(
        command_env(lenient_home, emulator.url),
        manifest,
        "--output",
        lenient_output,
        "--max-failed-rows",
        1,
    )

    assert strict.returncode == 1, describe(strict)
    assert lenient.returncode == 0, describe(lenient)
    for completed, home, output in (
        (strict, strict_home, strict_output),
        (lenient, lenient_home, lenient_output),
    ):
        assert "Traceback" not in completed.stdout + completed.stderr, describe(completed)
        assert "Error flushing" not in completed.stderr, describe(completed)
        _, rows = results_manifest(completed, output)
        assert [(row["id"], row["status"]) for row in rows] == [
            ("good-1", "succeeded"),
            ("bad", "failed"),
            ("good-2", "succeeded"),
        ]
        bad = rows[1]
        assert "missing-photo.jpg" in bad["error"]
        assert bad["output"] is None
        assert bad["cost_usd"] == 0
        for row in (rows[0], rows[2]):
            assert_output(row, output, DOCUMENTED_SIZES["1:1"])
            assert row["cached"] is False
        assert sorted(done for done, _, _, _ in progress_lines(completed.stderr)) == [1, 2, 3]
        assert "2 succeeded, 1 failed, 0 not run" in completed.stderr
        # The bad row's task run failed at once (no retries), and was recorded as such.
        assert recorded_runs(home, "task_run") == {"COMPLETED": 2, "FAILED": 1}
    assert "Failed: 2 succeeded" in strict.stderr
    assert "Completed: 2 succeeded" in lenient.stderr
    assert recorded_runs(strict_home, "flow_run") == {"FAILED": 1}
    assert recorded_runs(lenient_home, "flow_run") == {"COMPLETED": 1}
    # Only the good rows were paid, in each run.
    stats = emulator.stats()
    assert stats["billed"] == 4
    assert stats["spent_usd"] == pytest.approx(0.04)


def test_without_an_api_key_nothing_starts(emulator: SegmindEmulator, tmp_path: Path) -> None:
    home, output = tmp_path / "prefect-home", tmp_path / "out"
    completed = run_command(
        command_env(home, emulator.url, key=None), CATALOGUE, "--output", output, timeout=60
    )

    assert completed.returncode == 2, describe(completed)
    assert completed.stdout == ""
    assert "SEGMIND_API_KEY" in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in completed.stderr
    # No Prefect server was started, no flow ran, nothing was called or written.
    assert "Starting temporary server" not in completed.stderr
    assert "Beginning flow run" not in completed.stderr
    assert not (home / "prefect.db").exists()
    assert emulator.stats()["requests"] == 0
    assert not output.exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--max-concurrency", "0"], "--max-concurrency: 0 is out of range: from 1 to 64"),
        (["--max-concurrency", "65"], "--max-concurrency: 65 is out of range"),
        (["--max-concurrency", "many"], "--max-concurrency: not a number: 'many'"),
        (["--max-cost-usd", "-0.5"], "--max-cost-usd: -0.5 is out of range: at least 0"),
        (["--max-failed-rows", "-1"], "--max-failed-rows: -1 is out of range"),
        (["--manifest-missing"], "cannot read it: FileNotFoundError"),
    ],
)
def test_bad_arguments_and_unreadable_manifests_are_refused_before_anything_starts(
    emulator: SegmindEmulator, tmp_path: Path, arguments: list[str], message: str
) -> None:
    home, output = tmp_path / "prefect-home", tmp_path / "out"
    manifest: Path | str = CATALOGUE
    if arguments == ["--manifest-missing"]:
        manifest, arguments = tmp_path / "missing.jsonl", []

    completed = run_command(
        command_env(home, emulator.url), manifest, "--output", output, *arguments, timeout=60
    )

    assert completed.returncode == 2, describe(completed)
    assert completed.stdout == ""
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr
    assert "Starting temporary server" not in completed.stderr
    assert not (home / "prefect.db").exists()
    assert emulator.stats()["requests"] == 0
    assert not output.exists()


def test_the_help_lists_the_options_without_a_warning(tmp_path: Path) -> None:
    completed = run_command(command_env(tmp_path / "prefect-home", None, key=None), "--help")

    assert completed.returncode == 0, describe(completed)
    for option in ("--output", "--max-concurrency", "--max-cost-usd", "--max-failed-rows"):
        assert option in completed.stdout
    assert "--refresh-cache" in completed.stdout
    # runpy warns when the package imports the module it is about to run as __main__
    # (flows/__init__.py imports flows.batch): the module then exists twice.
    assert "RuntimeWarning" not in completed.stderr, completed.stderr


def as_a_user_types_it(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the tests' input roots: what a person's shell has."""
    return {name: value for name, value in env.items() if name != "SEGMIND_INPUT_ROOTS"}


@pytest.mark.timeout(240)
def test_a_manifest_in_any_folder_runs_with_its_images_named_relative_to_it(
    emulator: SegmindEmulator, tmp_path: Path
) -> None:
    # ~/catalogue/manifest.jsonl, run from another folder, with no SEGMIND_INPUT_ROOTS:
    # the command's user names their own files, beside the manifest or near it.
    catalogue, photos, cwd = tmp_path / "catalogue", tmp_path / "photos", tmp_path / "cwd"
    for folder in (catalogue, photos, cwd):
        folder.mkdir()
    (catalogue / "coffee.jpg").write_bytes((PHOTOS / "coffee.jpg").read_bytes())
    (photos / "chelsea.jpg").write_bytes((PHOTOS / "chelsea.jpg").read_bytes())
    rows = [
        {**p_image_edit_row("beside", Path("coffee.jpg"), 7601), "images": ["coffee.jpg"]},
        {**p_image_edit_row("near", Path("x"), 7602), "images": ["../photos/chelsea.jpg"]},
    ]
    manifest = write_manifest(catalogue / "manifest.jsonl", rows)
    env = as_a_user_types_it(command_env(tmp_path / "home", emulator.url))
    output = tmp_path / "out"

    completed = run_command(env, manifest, "--output", output, cwd=cwd)

    assert completed.returncode == 0, describe(completed)
    assert_clean(completed)
    _, results = results_manifest(completed, output)
    assert [(r["id"], r["status"]) for r in results] == [
        ("beside", "succeeded"),
        ("near", "succeeded"),
    ]
    for result in results:
        assert_output(result, output, DOCUMENTED_SIZES["1:1"])
    assert emulator.stats()["billed"] == 2

    # Roots the user set still bound the command: they, and the manifest's folder.
    restricted = {**env, "SEGMIND_INPUT_ROOTS": str(cwd)}
    again = run_command(
        {**restricted, "PREFECT_HOME": str(tmp_path / "home-2")},
        manifest,
        "--output",
        output,
        cwd=cwd,
    )
    assert again.returncode == 1, describe(again)
    _, results = results_manifest(again, output)
    assert [(r["id"], r["status"]) for r in results] == [
        ("beside", "succeeded"),
        ("near", "failed"),
    ]
    assert "is outside the folders inputs may be read from" in results[1]["error"]
    assert emulator.stats()["billed"] == 2  # "beside" was served from its stored image


DEEP = "[" * 100_000


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "surrogate-id.jsonl",
            '{"id": "good", "endpoint": "p-image-edit", "prompt": "p", "images": ["a.jpg"]}\n'
            '{"id": "sku-\\ud800", "endpoint": "p-image-edit", "prompt": "p", '
            '"images": ["a.jpg"]}\n',
            "line 2: id, 'sku-\\ud800', is not valid text: it has a lone surrogate",
        ),
        (
            "surrogate-prompt.jsonl",
            '{"id": "good", "endpoint": "p-image-edit", "prompt": "p", "images": ["a.jpg"]}\n'
            '{"id": "bad", "endpoint": "p-image-edit", "prompt": "a \\udfff", '
            '"images": ["a.jpg"]}\n',
            "line 2 (bad): prompt, 'a \\udfff', is not valid text",
        ),
        ("deep.jsonl", f"{DEEP}\n", "line 1: not valid JSON (nested too deeply to read)"),
        (
            "long-seed.jsonl",
            '{"id": "good", "endpoint": "p-image-edit", "prompt": "p", "images": ["a.jpg"]}\n'
            '{"id": "s", "endpoint": "p-image-edit", "prompt": "p", "images": ["a.jpg"], '
            f'"params": {{"seed": {"9" * 5000}}}}}\n',
            "line 2: not valid JSON (Exceeds the limit (4300 digits) for integer string conversion",
        ),
        (
            "long-cell.csv",
            "id,endpoint,prompt,images\ngood,p-image-edit,p,a.jpg\n"
            f"long,p-image-edit,{'x' * 131_073},a.jpg\n",
            "line 3: a cell is longer than 131072 characters; the manifest cannot be read past it",
        ),
    ],
)
def test_bad_text_in_a_manifest_exits_2_with_its_line_and_bills_nothing(
    emulator: SegmindEmulator, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    (tmp_path / "a.jpg").write_bytes((PHOTOS / "coffee.jpg").read_bytes())
    manifest = tmp_path / name
    manifest.write_text(text, encoding="utf-8")
    home, output = tmp_path / "prefect-home", tmp_path / "out"

    completed = run_command(
        command_env(home, emulator.url), manifest, "--output", output, timeout=60
    )

    assert completed.returncode == 2, describe(completed)
    assert completed.stdout == ""
    assert expected in completed.stderr, describe(completed)
    assert "Traceback" not in completed.stderr
    assert "Starting temporary server" not in completed.stderr
    assert not (home / "prefect.db").exists()
    stats = emulator.stats()
    assert (stats["requests"], stats["billed"]) == (0, 0)
    assert not output.exists()


@pytest.mark.parametrize(
    ("manifest", "configured", "expected"),
    [
        ("s3://shared/batches/m.jsonl", {}, {"SEGMIND_INPUT_BUCKETS": "s3://shared/batches"}),
        (
            "s3://shared/m.jsonl",
            {"SEGMIND_INPUT_BUCKETS": "s3://a"},
            {"SEGMIND_INPUT_BUCKETS": "s3://a s3://shared"},
        ),
        ("/home/me/catalogue/m.jsonl", {}, {"SEGMIND_INPUT_ROOTS": "/"}),
        (
            "/home/me/catalogue/m.jsonl",
            {"SEGMIND_INPUT_ROOTS": "/srv"},
            {"SEGMIND_INPUT_ROOTS": f"/srv{os.pathsep}/home/me/catalogue"},
        ),
        ("https://example.com/m.jsonl", {}, {}),
    ],
)
def test_the_command_reads_what_its_manifest_names_and_restores_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    manifest: str,
    configured: dict[str, str],
    expected: dict[str, str],
) -> None:
    # The command's own widening of the input policy, while it runs (the flow's runs
    # from a deployment never pass here): checked in-process, then undone.
    from flows.batch import _users_own_files

    names = ("SEGMIND_INPUT_BUCKETS", "SEGMIND_INPUT_ROOTS")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    for name, value in configured.items():
        monkeypatch.setenv(name, value)

    with _users_own_files(manifest):
        during = {name: os.environ[name] for name in names if name in os.environ}

    assert during == {**configured, **expected}
    assert {name: os.environ[name] for name in names if name in os.environ} == configured
