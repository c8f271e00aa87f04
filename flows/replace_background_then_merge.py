"""Replace a product photo's background, then merge it with a second image.

Step 1, flux-kontext-pro: the background of ``product_image`` is replaced as
``background_prompt`` says. Step 2, multi-image-kontext-pro: that result and
``second_image`` are merged as ``merge_prompt`` says. The inputs, the
intermediate and the final image are written to a new folder under
``output_dir`` with an ``index.html`` that shows them side by side.
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel

from blocks.segmind_credentials import SegmindCredentials
from segmind_core.contract import FluxAspectRatio, OutputFormat
from segmind_core.report import ReportImage, write_report_page
from tasks.segmind_tasks import (
    EditResult,
    edit_image_with_kontext_pro,
    merge_images_with_kontext_pro,
)

__all__ = ["ReplaceBackgroundThenMergeOutcome", "replace_background_then_merge"]


class ReplaceBackgroundThenMergeOutcome(BaseModel):
    """Where the run wrote its files, and what it cost.

    Attributes:
        folder: The run's output folder.
        page: The HTML page that shows inputs, intermediate and output.
        background_replaced: The intermediate image.
        merged: The final image.
        seeds: The seed of each step, to reproduce it.
        cost_usd: Total price of both generations.
    """

    folder: str
    page: str
    background_replaced: str
    merged: str
    seeds: dict[str, int]
    cost_usd: Decimal


def _caption(result: EditResult) -> str:
    return (
        f"{result.slug}, {result.width}x{result.height} {result.format.value}, seed {result.seed}, "
        f"{result.cost_usd:.2f} USD, {result.latency_s:.1f} s"
    )


def _copy_input(source: str, folder: Path, stem: str) -> str | None:
    """Copy a local input next to the outputs; remote inputs are linked, not copied."""
    path = Path(source).expanduser()
    if not path.is_file():
        return None
    target = folder / f"{stem}{path.suffix.lower()}"
    shutil.copyfile(path, target)
    return target.name


@task(name="write-run-outputs", cache_policy=NO_CACHE)
def write_run_outputs(
    output_dir: str,
    product_image: str,
    second_image: str,
    background: EditResult,
    merged: EditResult,
) -> ReplaceBackgroundThenMergeOutcome:
    """Write both generated images, copies of the inputs and ``index.html`` to a new folder."""
    run_name = re.sub(r"[^a-z0-9-]+", "-", str(flow_run.get_name() or "local").lower())
    run_id = str(flow_run.get_id() or "")[:8]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(output_dir).expanduser().resolve() / f"{stamp}-{run_name}-{run_id}".rstrip("-")
    folder.mkdir(parents=True, exist_ok=False)

    background_file = folder / f"background-replaced.{background.format.value}"
    background_file.write_bytes(background.image)
    merged_file = folder / f"merged.{merged.format.value}"
    merged_file.write_bytes(merged.image)

    panels = []
    for title, source, stem in (
        ("Input A (product)", product_image, "input-a"),
        ("Input B", second_image, "input-b"),
    ):
        name = _copy_input(source, folder, stem) or source
        panels.append(ReportImage(title, name, source))
    panels.append(ReportImage("Background replaced", background_file.name, _caption(background)))
    panels.append(ReportImage("Merged with input B", merged_file.name, _caption(merged)))
    page = write_report_page(folder / "index.html", "Replace background, then merge", panels)

    return ReplaceBackgroundThenMergeOutcome(
        folder=str(folder),
        page=str(page),
        background_replaced=str(background_file),
        merged=str(merged_file),
        seeds={"background": background.seed, "merge": merged.seed},
        cost_usd=background.cost_usd + merged.cost_usd,
    )


@flow(name="replace-background-then-merge")
def replace_background_then_merge(
    product_image: str,
    second_image: str,
    background_prompt: str,
    merge_prompt: str,
    aspect_ratio: FluxAspectRatio = FluxAspectRatio.MATCH_INPUT_IMAGE,
    output_format: OutputFormat = OutputFormat.PNG,
    seed: int | None = None,
    output_dir: str = "outputs",
    credentials: SegmindCredentials | None = None,
) -> ReplaceBackgroundThenMergeOutcome:
    """Replace the background of a product photo, then merge it with a second image.

    Args:
        product_image: The photo whose background is replaced: URL or local path.
        second_image: The image merged with the result: URL or local path.
        background_prompt: The new background, e.g. "on a marble counter at sunrise".
        merge_prompt: How to combine the two, e.g. "the cat sitting next to the cup".
        aspect_ratio: Ratio of both outputs; match_input_image follows the product photo.
        output_format: ``png`` or ``jpg`` for both outputs.
        seed: Fixes both steps; a seed is drawn and recorded per step when none is given.
        output_dir: Folder under which a new folder is made for this run.
        credentials: Segmind credentials block; none means SEGMIND_API_KEY and SEGMIND_BASE_URL.

    Returns:
        Where the images and the page were written, the seeds and the total cost.
    """
    logger = get_run_logger()
    background = edit_image_with_kontext_pro(
        prompt=background_prompt,
        image=product_image,
        aspect_ratio=aspect_ratio,
        output_format=output_format,
        seed=seed,
        credentials=credentials,
    )
    merged = merge_images_with_kontext_pro(
        prompt=merge_prompt,
        image_1=background.image,
        image_2=second_image,
        aspect_ratio=aspect_ratio,
        output_format=output_format,
        seed=seed,
        credentials=credentials,
    )
    outcome = write_run_outputs(output_dir, product_image, second_image, background, merged)
    logger.info("Wrote %s (%.2f USD in all)", outcome.page, outcome.cost_usd)
    return outcome
