"""The offline demo runs to the end as a user would start it (CI also runs it directly)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
FLOW = "replace-background-then-merge"


def demo_environment() -> dict[str, str]:
    """The test process's environment without its Prefect and Segmind settings.

    The demo must make its own temporary Prefect home and server and start its
    own emulator, as it does on a fresh machine.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "SEGMIND_"))
    }
    env["DO_NOT_TRACK"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_demo(output_dir: Path) -> dict[str, str]:
    """Run the demo into ``output_dir``; returns its summary lines by their label."""
    env = demo_environment()
    assert "PREFECT_HOME" not in env
    assert "PREFECT_API_URL" not in env
    assert "SEGMIND_API_KEY" not in env

    completed = subprocess.run(
        [sys.executable, "examples/demo.py", "--output-dir", str(output_dir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "Traceback" not in output, output
    assert "ERROR" not in output, output

    lines = completed.stdout.strip().splitlines()
    assert lines[0].startswith("Segmind API: http://127.0.0.1:")
    assert "the bundled emulator" in lines[0]
    summary = {}
    for label in ("Background replaced:", "Merged:", "Paid:"):
        (line,) = [line for line in lines if line.startswith(label)]
        summary[label] = line.removeprefix(label).strip()
    assert lines[-1].startswith("Open ")
    assert lines[-1].endswith(" in a browser to see inputs, intermediate and result side by side.")
    summary["Open"] = lines[-1].removeprefix("Open ").split(" in a browser")[0]
    return summary


@pytest.mark.timeout(300)
def test_demo_runs_offline_and_a_second_run_is_served_from_the_cache(tmp_path: Path) -> None:
    output_dir = tmp_path / "outputs"

    first = run_demo(output_dir)

    assert first["Paid:"].startswith("0.10 USD")
    merged = Path(first["Merged:"])
    background = Path(first["Background replaced:"])
    page = Path(first["Open"])
    folder = merged.parent
    assert folder.parent.parent == output_dir.resolve()
    assert folder.parent.name == FLOW
    assert background.parent == folder
    assert page.parent == folder / "runs"
    assert page.suffix == ".html"
    with Image.open(merged) as image:
        assert image.size == (1248, 832)
        assert image.format == "PNG"
    sidecar = json.loads(Path(f"{merged}.json").read_text())
    assert sidecar["output"]["sha256"] == hashlib.sha256(merged.read_bytes()).hexdigest()
    assert sidecar["seed"] == 7
    assert "seed 7" in page.read_text()

    second = run_demo(output_dir)

    # A new process, emulator (on the same port: the same service) and Prefect server:
    # the records in the output folder (through the saved storage block) serve both
    # steps, so nothing is paid.
    assert second["Paid:"].startswith("0.00 USD")
    assert second["Merged:"] == first["Merged:"]
    assert second["Background replaced:"] == first["Background replaced:"]
    second_page = Path(second["Open"])
    assert second_page != page
    assert second_page.parent == page.parent
    assert "from cache, 0.00 USD" in second_page.read_text()
    # Still the one merged image of the first run, untouched.
    assert sorted(p.name for p in folder.glob("*.png")) == sorted({merged.name, background.name})
    assert hashlib.sha256(merged.read_bytes()).hexdigest() == sidecar["output"]["sha256"]
