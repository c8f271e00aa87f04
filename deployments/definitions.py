"""One definition per deployment, shared by ``prefect.yaml`` and the ``serve`` path.

`prefect.yaml` at the repository root is what ``prefect deploy --all`` reads;
`DEPLOYMENTS` says the same in Python for ``python -m deployments.serve``, and
a test keeps the two identical. Only the batch runs on a schedule; the others
run on demand, from the Prefect UI's form or the API.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import Flow

__all__ = ["DEPLOYMENTS", "NIGHTLY_CRON", "NIGHTLY_TIMEZONE", "WORK_POOL", "DeploymentDefinition"]

REPO = Path(__file__).resolve().parents[1]
WORK_POOL = "segmind-process"
NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TIMEZONE = "Europe/London"
PHOTOS = "examples/photos"  # the shipped example photos, relative to the checkout workers run in


@dataclass(frozen=True)
class DeploymentDefinition:
    """A deployment of one flow.

    Attributes:
        name: Deployment name (unique; the UI shows ``flow-name/name``).
        entrypoint: ``path/to/file.py:function``, relative to the repository root.
        description: What it is for, shown in the UI.
        parameters: Default parameters (the UI form starts from them).
        cron: Cron schedule, or ``None`` to run on demand only.
        timezone: IANA time zone of the cron schedule.
        tags: Tags for filtering in the UI.
    """

    name: str
    entrypoint: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    timezone: str | None = None
    tags: tuple[str, ...] = ("segmind",)

    def load_flow(self) -> Flow[..., Any]:
        """Import the flow the entrypoint names."""
        path, function = self.entrypoint.split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        loaded = getattr(module, function)
        if not isinstance(loaded, Flow):
            raise TypeError(f"{self.entrypoint} is not a Prefect flow")
        return loaded


DEPLOYMENTS: tuple[DeploymentDefinition, ...] = (
    DeploymentDefinition(
        name="nightly-catalogue",
        entrypoint="flows/batch.py:batch",
        description=(
            "Nightly catalogue batch: every row of the manifest, a bad row failing alone, "
            "with a results manifest, progress, cost and a budget."
        ),
        parameters={
            "manifest": "examples/manifests/catalogue.jsonl",
            "max_concurrency": 4,
            "max_cost_usd": 5.0,
            "max_failed_rows": 0,
        },
        cron=NIGHTLY_CRON,
        timezone=NIGHTLY_TIMEZONE,
        tags=("segmind", "batch", "nightly"),
    ),
    DeploymentDefinition(
        name="on-demand",
        entrypoint="flows/edit_image.py:edit_image",
        description="Edit one image (or make one from text) with FLUX.1 Kontext Pro or Max.",
        parameters={
            "prompt": "make it a watercolour painting",
            "image": f"{PHOTOS}/coffee.jpg",
            "model": "pro",
            "seed": 7,
        },
    ),
    DeploymentDefinition(
        name="on-demand",
        entrypoint="flows/merge_images.py:merge_images",
        description="Merge two images into one with multi-image FLUX.1 Kontext Pro or Max.",
        parameters={
            "prompt": "the two subjects side by side in one scene",
            "image_1": f"{PHOTOS}/coffee.jpg",
            "image_2": f"{PHOTOS}/chelsea.jpg",
            "model": "pro",
            "seed": 7,
        },
    ),
    DeploymentDefinition(
        name="on-demand",
        entrypoint="flows/edit_each_image_with_p_image_edit.py:edit_each_image_with_p_image_edit",
        description="Apply one p-image-edit prompt to every image of a list, $0.01 each.",
        parameters={
            "prompt": "turn the photo into a vintage travel poster",
            "images": [f"{PHOTOS}/astronaut.jpg", f"{PHOTOS}/chelsea.jpg"],
            "seed": 7,
            "max_concurrency": 4,
        },
    ),
    DeploymentDefinition(
        name="on-demand",
        entrypoint="flows/replace_background_then_merge.py:replace_background_then_merge",
        description=(
            "Replace a product photo's background, then merge it with a second image; "
            "shows inputs, intermediate and result side by side."
        ),
        parameters={
            "product_image": f"{PHOTOS}/coffee.jpg",
            "second_image": f"{PHOTOS}/chelsea.jpg",
            "background_prompt": "on a white marble counter in soft morning light",
            "merge_prompt": "the cat sitting next to the cup",
            "seed": 7,
        },
    ),
    DeploymentDefinition(
        name="on-demand",
        entrypoint="flows/review_variations.py:review_variations",
        description=(
            "Make one edit in several variations, wait for a person to pick the ones to "
            "publish (the run's Resume button), then copy them under published/."
        ),
        parameters={
            "prompt": "put the coffee cup on a white marble counter",
            "images": [f"{PHOTOS}/coffee.jpg"],
            "endpoint": "flux-kontext-pro",
            "seeds": [1, 2, 3],
        },
        tags=("segmind", "review"),
    ),
)
"""Every deployment; ``prefect.yaml`` lists the same, in the same order."""
