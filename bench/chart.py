"""Draw the benchmark's results as one PNG with Pillow: three bar panels.

1. Wall time of N edits as a multiple of the bound ceil(N/C) x L (dashed line at 1).
2. Peak RSS of the batch flow at the two batch sizes.
3. Billed calls: first run, identical re-run, re-run with 10% of rows changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 1500, 560
PANEL_TOP, PANEL_BOTTOM = 110, 470
COLOURS = [(96, 125, 139), (255, 152, 0), (33, 150, 243), (76, 175, 80)]
INK = (33, 33, 33)
GRID = (200, 200, 200)

Bar = tuple[str, float, str]  # label under the bar, height, text above it


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _panel(
    draw: ImageDraw.ImageDraw,
    left: int,
    right: int,
    title: str,
    bars: Sequence[Bar],
    *,
    reference: tuple[float, str] | None = None,
) -> None:
    top, bottom = PANEL_TOP, PANEL_BOTTOM
    draw.text(((left + right) // 2, 70), title, fill=INK, font=_font(19), anchor="mm")
    draw.line((left, bottom, right, bottom), fill=INK, width=2)
    tallest = max([height for _, height, _ in bars] + ([reference[0]] if reference else []))
    scale = (bottom - top) / (tallest * 1.12 or 1.0)
    slot = (right - left) / len(bars)
    for index, (label, height, text) in enumerate(bars):
        x0 = int(left + slot * index + slot * 0.18)
        x1 = int(left + slot * (index + 1) - slot * 0.18)
        y = int(bottom - height * scale)
        draw.rectangle((x0, y, x1, bottom), fill=COLOURS[index % len(COLOURS)])
        middle = (x0 + x1) // 2
        draw.text((middle, y - 6), text, fill=INK, font=_font(16), anchor="md")
        for line, caption in enumerate(label.split("\n")):
            draw.text(
                (middle, bottom + 14 + 19 * line), caption, fill=INK, font=_font(15), anchor="mt"
            )
    if reference is not None:
        value, caption = reference
        y = int(bottom - value * scale)
        for x in range(left, right, 14):
            draw.line((x, y, min(x + 7, right), y), fill=(211, 47, 47), width=2)
        draw.text((right, y - 4), caption, fill=(211, 47, 47), font=_font(14), anchor="rd")


def draw_chart(results: Mapping[str, Any], path: Path) -> None:
    """Write the chart of ``results`` (the keys of ``latest.json``) to ``path``."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    heading = (
        f"N={results['n']} edits, latency {results['latency_s']:g} s, "
        f"{results['concurrency']} in flight: bound ceil(N/C) x L = {results['bound_s']:g} s"
    )
    draw.text((WIDTH // 2, 26), heading, fill=INK, font=_font(22), anchor="mm")
    bound = float(results["bound_s"])
    timed = [
        ("serial\nrequests.post", float(results["serial_s"])),
        (f"segmind SDK\n{results['concurrency']} threads", float(results["sdk_threadpool_s"])),
        ("batch flow", float(results["flow_s"])),
    ]
    if results.get("flow_shared_limit_s") is not None:
        timed.append(("batch flow\nshared limit", float(results["flow_shared_limit_s"])))
    _panel(
        draw,
        60,
        700,
        "wall time / bound",
        [(label, s / bound, f"{s / bound:.2f}x ({s:.1f} s)") for label, s in timed],
        reference=(1.0, "bound"),
    )
    _panel(
        draw,
        780,
        1090,
        "peak RSS of the batch flow (MB)",
        [
            (
                f"N={results['rss_rows'][0]}",
                float(results["rss_mb_n100"]),
                f"{results['rss_mb_n100']:.0f}",
            ),
            (
                f"N={results['rss_rows'][1]}",
                float(results["rss_mb_n1000"]),
                f"{results['rss_mb_n1000']:.0f}",
            ),
        ],
    )
    _panel(
        draw,
        1160,
        1460,
        "billed calls",
        [
            ("first run", float(results["first_run_billed"]), str(results["first_run_billed"])),
            ("same again", float(results["rerun_billed"]), str(results["rerun_billed"])),
            (
                f"{results['rerun_10pct_changed_rows']} rows\nchanged",
                float(results["rerun_10pct_billed"]),
                str(results["rerun_10pct_billed"]),
            ),
        ],
    )
    footer = (
        f"per-item overhead of the task over a bare httpx call: "
        f"{results['overhead_ms_median']:.1f} ms (median)"
    )
    draw.text((WIDTH // 2, HEIGHT - 22), footer, fill=INK, font=_font(17), anchor="mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
