"""``python -m emulator``: the first stdout line, option errors, and a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.support import API_KEY

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def test_prints_url_first_serves_and_stops_on_sigterm() -> None:
    process = _start(
        "--port", "0", "--api-key", API_KEY, "--credits", "0.5", "--fault", "500=0", "--rpm", "100"
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("emulator listening on http://127.0.0.1:")
        url = line.removeprefix("emulator listening on ")

        stats = httpx.get(f"{url}/_emulator/stats").json()
        assert stats["credits_remaining"] == 0.5
        faults = httpx.get(f"{url}/_emulator/faults").json()
        assert faults["faults"] == {"500": 0.0}
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=15)
    assert code == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_emulator/stats")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "0"], "--api-key is required"),
        (["--api-key", "k", "--fault", "418=0.1"], "unknown fault '418'"),
        (["--api-key", "k", "--fault", "500=1.5"], "between 0 and 1"),
        (["--api-key", "k", "--fault", "500=0.7", "--fault", "502=0.7"], "add up to 1.4"),
        (["--api-key", "k", "--max-concurrency", "0"], "max_concurrency"),
    ],
    ids=["no-key", "unknown-fault", "rate-above-1", "rates-sum-above-1", "zero-concurrency"],
)
def test_bad_options_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "emulator", *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in ENV.items() if k != "SEGMIND_EMULATOR_API_KEY"},
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_api_key_from_environment() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env={**ENV, "SEGMIND_EMULATOR_API_KEY": "from-env"},
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip().removeprefix("emulator listening on ")
        wrong = httpx.post(f"{url}/v1/p-image-edit", headers={"x-api-key": "other"}, json={})
        right = httpx.post(f"{url}/v1/p-image-edit", headers={"x-api-key": "from-env"}, json={})
        assert (wrong.status_code, right.status_code) == (401, 400)
    finally:
        process.terminate()
        process.wait(timeout=15)
