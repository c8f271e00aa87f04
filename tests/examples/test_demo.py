"""The offline demo runs to the end as a user would start it (CI also runs it directly)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def test_demo_runs_offline_and_writes_the_page(tmp_path: Path) -> None:
    env = demo_environment()
    assert "PREFECT_HOME" not in env
    assert "PREFECT_API_URL" not in env
    assert "SEGMIND_API_KEY" not in env

    completed = subprocess.run(
        [sys.executable, "examples/demo.py", "--output-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "Traceback" not in output
    assert "ERROR" not in output

    lines = completed.stdout.strip().splitlines()
    assert lines[0].startswith("Segmind API: http://127.0.0.1:")
    assert "the bundled emulator" in lines[0]
    assert lines[-2].startswith("Outputs: ")
    folder = Path(lines[-2].removeprefix("Outputs: "))
    assert lines[-1].startswith(f"Open {folder / 'index.html'} in a browser")

    assert folder.is_dir()
    assert folder.parent == tmp_path.resolve()
    assert (folder / "index.html").is_file()
    merged = folder / "merged.png"
    assert merged.is_file()
    with Image.open(merged) as image:
        assert image.size == (1248, 832)
    assert list(tmp_path.iterdir()) == [folder]
    assert "seed 7" in (folder / "index.html").read_text()
