"""The official ``segmind`` SDK cannot tell the emulator from the service.

The emulator is started the way a user starts it, ``python -m emulator``, and
driven only through the SDK's public API: ``run_sync`` (v1) and ``run`` (v2
submit and poll).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import segmind
from PIL import Image

from segmind_core.contract import ENDPOINTS
from tests.support import API_KEY, image_uri

PORTRAIT = image_uri((30, 120, 220), (480, 640))  # 3:4
WIDE = image_uri((220, 160, 30), (960, 540), "JPEG")  # 16:9

# One request per slug with the size the documentation says it returns.
CASES: list[tuple[str, dict[str, Any], tuple[int, int], str]] = [
    (
        "flux-kontext-pro",
        {"prompt": "make it a photograph", "input_image": PORTRAIT, "seed": 1},
        (880, 1184),
        "PNG",
    ),
    (
        "flux-kontext-max",
        {"prompt": "make it a watercolour", "aspect_ratio": "21:9", "output_format": "jpg"},
        (1568, 672),
        "JPEG",
    ),
    (
        "multi-image-kontext-pro",
        {"prompt": "merge", "input_image_1": WIDE, "input_image_2": PORTRAIT, "seed": 7},
        (1392, 752),
        "PNG",
    ),
    (
        "multi-image-kontext-max",
        {"prompt": "put the dress on her", "input_image_1": PORTRAIT, "input_image_2": WIDE},
        (1392, 752),  # documented default 16:9
        "JPEG",
    ),
    (
        "p-image-edit",
        {"prompt": "lean on the logo", "image_urls": [WIDE, PORTRAIT], "aspect_ratio": "2:3"},
        (832, 1248),
        "PNG",
    ),
]


@pytest.fixture(scope="module")
def emulator_url() -> Iterator[str]:
    """An emulator started from the command line, as a user would."""
    process = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--port", "0", "--api-key", API_KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline().strip()
        prefix = "emulator listening on "
        assert first_line.startswith(prefix), first_line
        yield first_line.removeprefix(prefix)
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture
def client(emulator_url: str) -> segmind.SegmindClient:
    httpx.post(f"{emulator_url}/_emulator/reset").raise_for_status()
    return segmind.SegmindClient(api_key=API_KEY, base_url=emulator_url + "/v1")


def _stats(emulator_url: str) -> dict[str, Any]:
    return httpx.get(f"{emulator_url}/_emulator/stats").json()


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(("slug", "params", "size", "fmt"), CASES, ids=[c[0] for c in CASES])
def test_run_sync_returns_image_of_documented_size(
    client: segmind.SegmindClient,
    emulator_url: str,
    slug: str,
    params: dict[str, Any],
    size: tuple[int, int],
    fmt: str,
) -> None:
    response = client.run_sync(slug, **params)

    image = _open(response.content)
    assert (image.size, image.format) == (size, fmt)
    price = ENDPOINTS[slug].price_usd
    assert Decimal(response.headers["x-remaining-credits"]) == Decimal("100") - price
    stats = _stats(emulator_url)
    assert stats["billed"] == 1
    assert Decimal(str(stats["spent_usd"])) == price


@pytest.mark.parametrize(("slug", "params", "size", "fmt"), CASES, ids=[c[0] for c in CASES])
def test_run_v2_completes_with_downloadable_output(
    client: segmind.SegmindClient,
    emulator_url: str,
    slug: str,
    params: dict[str, Any],
    size: tuple[int, int],
    fmt: str,
) -> None:
    result = client.run(slug, **params)

    assert result["status"] == "COMPLETED"
    assert result["output"].startswith(emulator_url + "/")
    image = _open(httpx.get(result["output"]).content)
    assert (image.size, image.format) == (size, fmt)
    assert Decimal(str(result["metrics"]["cost"])) == ENDPOINTS[slug].price_usd


def test_submit_async_job_handle_reports_status(client: segmind.SegmindClient) -> None:
    job = client.submit_async("p-image-edit", prompt="x", image_urls=[WIDE], seed=3)

    result = job.wait(timeout=30, interval=0.05)

    assert job.status()["status"] == "COMPLETED"
    assert result["metrics"]["seed"] == 3


def test_wrong_key_is_a_401(emulator_url: str) -> None:
    wrong = segmind.SegmindClient(api_key="not-the-key", base_url=emulator_url + "/v1")

    with pytest.raises(segmind.SegmindError) as caught:
        wrong.run_sync("p-image-edit", prompt="x", image_urls=[WIDE])

    assert caught.value.status == 401
    assert caught.value.detail


def test_bad_aspect_ratio_is_a_400_naming_the_field(
    client: segmind.SegmindClient, emulator_url: str
) -> None:
    with pytest.raises(segmind.SegmindError) as caught:
        client.run_sync("flux-kontext-pro", prompt="x", aspect_ratio="7:3")

    assert caught.value.status == 400
    assert "aspect_ratio" in (caught.value.detail or "")
    assert _stats(emulator_url)["billed"] == 0


def test_v2_failed_job_raises_inference_failed(
    client: segmind.SegmindClient, emulator_url: str
) -> None:
    with pytest.raises(segmind.InferenceFailed) as caught:
        client.run("flux-kontext-pro", prompt="x", aspect_ratio="7:3")

    assert "aspect_ratio" in (caught.value.detail or "")
    assert caught.value.status_body["status"] == "FAILED"
    assert _stats(emulator_url)["billed"] == 0


def test_stats_count_billed_calls_and_spend_exactly(
    client: segmind.SegmindClient, emulator_url: str
) -> None:
    for slug, params, _, _ in CASES:
        client.run_sync(slug, **params)
    client.run("p-image-edit", **CASES[-1][1])
    with pytest.raises(segmind.SegmindError):
        client.run_sync("p-image-edit", prompt="x", image_urls=[])

    stats = _stats(emulator_url)

    expected = sum((e.price_usd for e in ENDPOINTS.values()), Decimal("0")) + Decimal("0.01")
    assert stats["billed"] == 6
    assert Decimal(str(stats["spent_usd"])) == expected
    assert Decimal(str(stats["credits_remaining"])) == Decimal("100") - expected
    assert stats["by_slug"]["p-image-edit"]["billed"] == 2
    assert stats["by_status"]["400"] == 1
