"""Reviewing variations of one edit, then publishing the chosen ones: the Prefect-free part.

The review flow (`flows.review_variations`) makes one edit in K variations, one
per seed, waits for a person to choose, and copies the chosen images under
``published/``. This module holds what does not need Prefect:

- `plan_review` checks the request (endpoint, image count, aspect ratio, seeds)
  before anything is paid and turns it into one checked row per variation,
  named ``review-{digest}-seed{seed}``: the digest names the request without its
  seed, so the same request with the same seed always lands under the same name
  (and is served from the cache, at no cost).
- `chosen_variations` sorts a reviewer's answer into the numbers that exist and
  those that do not.
- `publish_variation` copies a stored variation and its sidecar to
  ``published/...`` through the object store, its bytes checked against the
  sidecar's sha256, with the review (variation, note, flow run) added to the copy's
  sidecar. Nothing is generated, so nothing is paid.
- `render_review_description` and `render_published_markdown` are the Markdown
  shown above the resume form and in the published artifact.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict

from segmind_core import manifest
from segmind_core.batch import BatchCall, first_call
from segmind_core.contract import SEED_LIMIT, get_endpoint
from segmind_core.errors import PermanentError
from segmind_core.generation import EditResult
from segmind_core.manifest import ManifestRow, check_rows
from segmind_core.outputs import SIDECAR_SUFFIX, OutputStore, sanitise_key_part

__all__ = [
    "IMAGE_COUNTS",
    "MAX_VARIATIONS",
    "PUBLISHED_PREFIX",
    "PublishedVariation",
    "ReviewPlan",
    "ReviewRequestError",
    "chosen_variations",
    "plan_review",
    "publish_variation",
    "published_folder",
    "render_published_markdown",
    "render_review_description",
    "review_name",
    "review_record",
]

MAX_VARIATIONS = 8
"""The most variations one review makes (one per seed)."""
PUBLISHED_PREFIX = "published"
"""Where chosen variations are copied, under the storage's base URL."""
IMAGE_COUNTS: Mapping[str, tuple[int, int]] = {
    endpoint: counts
    for endpoint, counts in manifest.IMAGE_COUNTS.items()
    if endpoint != manifest.REPLACE_BACKGROUND_THEN_MERGE
}
"""The endpoints a review can use (each single endpoint), and how many images each takes."""
_DIGEST_CHARS = 12
_MAX_NOTE_CHARS = 2000


class ReviewRequestError(PermanentError, ValueError):
    """A review request that cannot run; ``problems`` lists each (nothing was paid)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "cannot make the variations: " + "; ".join(self.problems) + ". Nothing was paid"
        )


@dataclass(frozen=True)
class ReviewPlan:
    """A checked review request: one row (one paid call at most) per variation.

    Attributes:
        endpoint: The endpoint's slug.
        name: ``review-{digest}``: names the request without its seed.
        rows: One checked row per seed, in the order of the seeds; variation
            ``n`` is ``rows[n - 1]``.
        price_usd: The endpoint's list price per image.
    """

    endpoint: str
    name: str
    rows: tuple[ManifestRow, ...]
    price_usd: Decimal

    @property
    def count(self) -> int:
        """How many variations: K."""
        return len(self.rows)

    @property
    def estimate_usd(self) -> Decimal:
        """K times the list price: what the variations cost if none is cached (an upper bound)."""
        return self.price_usd * self.count

    def calls(self) -> list[BatchCall]:
        """The call of each variation, in order."""
        return [first_call(row) for row in self.rows]

    def estimate_line(self) -> str:
        """The estimate as one log line."""
        return (
            f"{self.count} variation(s) with {self.endpoint} at {self.price_usd:.2f} USD each: "
            f"at most {self.estimate_usd:.2f} USD (a variation already made with the same "
            "request and seed is served from the cache and costs nothing)"
        )


def review_name(prompt: str, images: Sequence[str], endpoint: str, aspect_ratio: str) -> str:
    """``review-{digest}``, the digest of the request without its seed (12 hex digits)."""
    request = json.dumps([endpoint, prompt, list(images), aspect_ratio], ensure_ascii=True)
    return f"review-{hashlib.sha256(request.encode()).hexdigest()[:_DIGEST_CHARS]}"


def plan_review(
    prompt: str,
    images: Sequence[str],
    endpoint: str,
    aspect_ratio: str,
    seeds: Sequence[int],
) -> ReviewPlan:
    """Check a review request before anything is paid, and plan one call per seed.

    Args:
        prompt: The edit.
        images: URLs, ``s3://`` URLs or local paths; how many depends on the
            endpoint (`IMAGE_COUNTS`).
        endpoint: One of the `IMAGE_COUNTS` slugs.
        aspect_ratio: A ratio the endpoint takes, or ``match_input_image``.
        seeds: 1 to `MAX_VARIATIONS` distinct seeds, one per variation.

    Raises:
        ReviewRequestError: listing every problem found.
    """
    problems = _request_problems(images, endpoint, aspect_ratio) + _seed_problems(seeds)
    if problems:
        raise ReviewRequestError(problems)
    name = review_name(prompt, images, endpoint, aspect_ratio)
    checked = check_rows(
        [
            {
                "id": f"{name}-seed{seed}",
                "endpoint": endpoint,
                "prompt": prompt,
                "images": list(images),
                "params": {"aspect_ratio": aspect_ratio, "seed": seed},
            }
            for seed in seeds
        ],
        source="review",
    )
    if checked.rejected:
        raise ReviewRequestError(_without_labels(checked.problems()))
    return ReviewPlan(endpoint, name, tuple(checked.rows), get_endpoint(endpoint).price_usd)


def _request_problems(images: Sequence[str], endpoint: str, aspect_ratio: str) -> list[str]:
    if endpoint not in IMAGE_COUNTS:
        return [f"endpoint {endpoint!r} is not one of {', '.join(IMAGE_COUNTS)}"]
    problems: list[str] = []
    low, high = IMAGE_COUNTS[endpoint]
    if not low <= len(images) <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        problems.append(f"{endpoint} takes {wanted} image(s), got {len(images)}")
    if any(not isinstance(image, str) or not image.strip() for image in images):
        problems.append(
            "every image must be a URL, an s3:// URL or a local path (got an empty one)"
        )
    ratios = [ratio.value for ratio in get_endpoint(endpoint).aspect_ratios]
    if aspect_ratio not in ratios:
        problems.append(
            f"{endpoint} does not take aspect ratio {aspect_ratio}; it takes {', '.join(ratios)}"
        )
    return problems


def _seed_problems(seeds: Sequence[int]) -> list[str]:
    problems: list[str] = []
    if not 1 <= len(seeds) <= MAX_VARIATIONS:
        problems.append(f"give 1 to {MAX_VARIATIONS} seeds (one per variation), got {len(seeds)}")
    repeated = sorted(seed for seed, times in Counter(seeds).items() if times > 1)
    if repeated:
        shown = ", ".join(str(seed) for seed in repeated)
        problems.append(
            f"seeds must be distinct (the same seed makes the same image): {shown} repeated"
        )
    outside = [seed for seed in seeds if isinstance(seed, bool) or not 0 <= seed <= SEED_LIMIT]
    if outside:
        shown = ", ".join(str(seed) for seed in outside)
        problems.append(f"seeds must be whole numbers from 0 to {SEED_LIMIT}, got {shown}")
    return problems


def _without_labels(problems: Iterable[str]) -> list[str]:
    """The manifest checker's problems without their ``line N (id): `` labels, each once."""
    unique: list[str] = []
    for problem in problems:
        text = re.sub(r"^line \d+( \([^)]*\))?: ", "", problem)
        if text not in unique:
            unique.append(text)
    return unique


def chosen_variations(publish: Iterable[int | str], count: int) -> tuple[list[int], list[int]]:
    """A reviewer's numbers, sorted and each once: those from 1 to ``count``, and the others."""
    numbers = sorted({int(number) for number in publish})
    return [n for n in numbers if 1 <= n <= count], [n for n in numbers if not 1 <= n <= count]


def published_folder(day: str, run_name: str, run_id: str) -> str:
    """``published/{day}/{run name}-{first 8 characters of the run id}``, sanitised."""
    run = sanitise_key_part(f"{run_name or 'local'}-{run_id[:8]}")
    return f"{PUBLISHED_PREFIX}/{sanitise_key_part(day)}/{run}"


class PublishedVariation(BaseModel):
    """A variation copied under ``published/``.

    Attributes:
        variation: Its number in the review (1 to K).
        url: Where the copy is.
        key: The copy's key under the storage's base URL; its sidecar is ``key + ".json"``.
        sha256: Digest of the image (the same as the original's).
        source_url: The original it was copied from.
    """

    model_config = ConfigDict(frozen=True)

    variation: int
    url: str
    key: str
    sha256: str
    source_url: str


def publish_variation(
    outputs: OutputStore,
    variation: int,
    source_key: str,
    folder: str,
    review: Mapping[str, Any],
) -> PublishedVariation:
    """Copy the image under ``source_key`` and its sidecar to ``folder``: no call, no cost.

    The copy keeps the original's file name; its sidecar is the original's, with
    ``output`` describing the copy, ``published_from`` naming the original and
    ``review`` set to ``{"variation": ..., **review}``. The image is written first,
    its sidecar last (`OutputStore.save`).

    Raises:
        FileNotFoundError: when the original or its sidecar is missing.
        ValueError: when the original's bytes do not match its sidecar's sha256.
    """
    source = outputs.load(source_key)
    if source is None:
        raise FileNotFoundError(f"variation {variation}: no sidecar for {source_key}")
    data = outputs.read_verified(source)
    metadata = {
        name: value
        for name, value in source.metadata.items()
        if name not in ("output", "stored_at", "published_from", "review")
    }
    metadata["published_from"] = {"key": source.key, "url": source.url, "sha256": source.sha256}
    metadata["review"] = {"variation": variation, **review}
    key = f"{folder}/{posixpath.basename(source.key)}"
    copied = outputs.save(key, data, metadata)
    return PublishedVariation(
        variation=variation,
        url=copied.url,
        key=copied.key,
        sha256=copied.sha256,
        source_url=source.url,
    )


def review_record(
    note: str, flow_run_id: str | None, flow_run_name: str | None, count: int
) -> dict[str, Any]:
    """The ``review`` entry of a published sidecar (without the variation number)."""
    return {
        "note": note[:_MAX_NOTE_CHARS],
        "of_variations": count,
        "flow_run_id": flow_run_id,
        "flow_run_name": flow_run_name,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def render_review_description(
    variations: Sequence[EditResult], *, timeout_s: int, gallery_key: str
) -> str:
    """The Markdown shown above the resume form: the variations and how to choose."""
    lines = [
        f"**Choose the variation(s) to publish** (1 to {len(variations)}), or none. "
        f"The images are in this run's `{gallery_key}` artifact.",
        "",
    ]
    lines += [
        f"- Variation {number}: seed {result.seed}, {result.width}x{result.height}, "
        f"`{posixpath.basename(result.key)}`"
        for number, result in enumerate(variations, start=1)
    ]
    lines += [
        "",
        f"Nothing is published if nobody answers within {timeout_s} s. "
        "Publishing copies the chosen image(s); nothing is paid again.",
    ]
    return "\n".join(lines) + "\n"


def render_published_markdown(
    published: Sequence[PublishedVariation],
    *,
    count: int,
    refused: Sequence[int],
    note: str,
    link: Callable[[str], str | None],
) -> str:
    """What was published where: each copy (an image through ``link`` when it gives one)."""
    lines = ["# Published variations", ""]
    if not published:
        lines.append(f"Nothing was published: no variation of {count} was chosen.")
    for item in published:
        lines.append(f"- **Variation {item.variation}** published at `{item.url}`")
        href = link(item.url)
        if href is not None:
            lines.append(f"\n  ![Variation {item.variation}]({href})")
    if refused:
        shown = ", ".join(str(n) for n in refused)
        lines += ["", f"Not published: {shown} (this review made variations 1 to {count})."]
    if note.strip():
        lines += ["", f"Reviewer's note: {_escape(note)}"]
    lines += ["", f"Each copy's sidecar (`{SIDECAR_SUFFIX}`) records the review and the original."]
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    """``text`` safe inside Markdown: control characters flattened, specials escaped."""
    flat = re.sub(r"[\x00-\x1f\x7f]+", " ", text)
    return re.sub(r"([\\`*_\[\]<>|#!])", r"\\\1", flat)
