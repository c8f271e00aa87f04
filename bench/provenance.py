"""Where a benchmark's numbers come from: the commit they were measured at."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = "bench/results"


def git_commit() -> str | None:
    """The short commit of the checkout; None outside a git checkout.

    ``-dirty`` is added when tracked files outside ``bench/results`` differ from
    the commit (the results being written do not count).
    """
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".", f":!{RESULTS}")
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if changed else commit


def _git(*arguments: str) -> str:
    done = subprocess.run(["git", *arguments], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.strip()
