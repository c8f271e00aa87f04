"""Checking a review request, and publishing chosen variations: no Prefect, no network."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from decimal import Decimal
from typing import Any

import pytest

from segmind_core.contract import OutputFormat
from segmind_core.generation import EditResult
from segmind_core.object_store import ObjectStore
from segmind_core.outputs import SIDECAR_SUFFIX, OutputStore
from segmind_core.publishing import (
    MAX_VARIATIONS,
    PublishedVariation,
    ReviewRequestError,
    chosen_variations,
    plan_review,
    publish_variation,
    published_folder,
    render_published_markdown,
    render_review_description,
    review_name,
    review_record,
)
from tests.support import image_bytes

PHOTO = "examples/photos/coffee.jpg"
OTHER = "s3://bucket/cat.png"


def problems_of(**request: Any) -> list[str]:
    arguments: dict[str, Any] = {
        "prompt": "make it a poster",
        "images": [PHOTO],
        "endpoint": "p-image-edit",
        "aspect_ratio": "match_input_image",
        "seeds": [1, 2, 3],
        **request,
    }
    with pytest.raises(ReviewRequestError) as raised:
        plan_review(**arguments)
    assert str(raised.value).endswith(". Nothing was paid")
    return raised.value.problems


# --- plan_review ------------------------------------------------------------------------


def test_one_row_per_seed_named_after_the_request_and_the_seed() -> None:
    plan = plan_review("make it a poster", [PHOTO], "p-image-edit", "1:1", [7, 3, 11])

    assert plan.count == 3
    assert re.fullmatch(r"review-[0-9a-f]{12}", plan.name)
    assert [row.id for row in plan.rows] == [f"{plan.name}-seed{seed}" for seed in (7, 3, 11)]
    assert plan.estimate_usd == Decimal("0.03")
    assert "3 variation(s) with p-image-edit at 0.01 USD each: at most 0.03 USD" in (
        plan.estimate_line()
    )
    calls = plan.calls()
    assert [call.params for call in calls] == [
        {"aspect_ratio": "1:1", "seed": seed, "prompt": "make it a poster"} for seed in (7, 3, 11)
    ]
    assert all(call.images == {"image_urls": [PHOTO]} for call in calls)
    assert all(call.slug == "p-image-edit" for call in calls)
    assert [call.job_id for call in calls] == [row.id for row in plan.rows]


def test_the_name_changes_with_the_request_but_not_with_the_seeds() -> None:
    base = ("make it a poster", [PHOTO], "p-image-edit", "1:1")
    name = review_name(*base)

    assert plan_review(*base, [1]).name == plan_review(*base, [5, 6]).name == name
    assert review_name("make it a postcard", [PHOTO], "p-image-edit", "1:1") != name
    assert review_name("make it a poster", [OTHER], "p-image-edit", "1:1") != name
    assert review_name("make it a poster", [PHOTO], "p-image-edit", "3:2") != name
    assert review_name("make it a poster", [PHOTO], "flux-kontext-pro", "1:1") != name


@pytest.mark.parametrize(
    ("endpoint", "images", "fields", "price"),
    [
        ("flux-kontext-pro", [], {}, "0.10"),
        ("flux-kontext-max", [PHOTO], {"input_image": PHOTO}, "0.20"),
        (
            "multi-image-kontext-pro",
            [PHOTO, OTHER],
            {"input_image_1": PHOTO, "input_image_2": OTHER},
            "0.10",
        ),
        (
            "multi-image-kontext-max",
            [PHOTO, OTHER],
            {"input_image_1": PHOTO, "input_image_2": OTHER},
            "0.20",
        ),
        ("p-image-edit", [PHOTO, OTHER, PHOTO], {"image_urls": [PHOTO, OTHER, PHOTO]}, "0.02"),
    ],
)
def test_every_endpoint_gets_its_image_fields_and_price(
    endpoint: str, images: list[str], fields: dict[str, Any], price: str
) -> None:
    plan = plan_review("an edit", images, endpoint, "16:9", [1, 2])

    assert [call.images for call in plan.calls()] == [fields, fields]
    assert plan.estimate_usd == Decimal(price)


@pytest.mark.parametrize(
    ("endpoint", "images", "problem"),
    [
        ("p-image-edit", [], "p-image-edit takes 1 to 5 image(s), got 0"),
        ("p-image-edit", [PHOTO] * 6, "p-image-edit takes 1 to 5 image(s), got 6"),
        ("multi-image-kontext-pro", [PHOTO], "multi-image-kontext-pro takes 2 image(s), got 1"),
        ("multi-image-kontext-max", [PHOTO] * 3, "multi-image-kontext-max takes 2 image(s), got 3"),
        ("flux-kontext-pro", [PHOTO, OTHER], "flux-kontext-pro takes 0 to 1 image(s), got 2"),
    ],
)
def test_the_image_count_is_the_endpoint_s(endpoint: str, images: list[str], problem: str) -> None:
    assert problems_of(endpoint=endpoint, images=images) == [problem]


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(images=[], aspect_ratio="21:9", seeds=[*range(8), 3, -5])

    assert problems == [
        "p-image-edit takes 1 to 5 image(s), got 0",
        "p-image-edit does not take aspect ratio 21:9; it takes match_input_image, 1:1, 16:9, "
        "9:16, 4:3, 3:4, 3:2, 2:3",
        f"give 1 to {MAX_VARIATIONS} seeds (one per variation), got 10",
        "seeds must be distinct (the same seed makes the same image): 3 repeated",
        "seeds must be whole numbers from 0 to 999999999999999, got -5",
    ]


def test_no_seed_and_an_unknown_endpoint_are_refused() -> None:
    assert problems_of(seeds=[]) == ["give 1 to 8 seeds (one per variation), got 0"]
    assert problems_of(endpoint="flux-dev", seeds=[1, 1]) == [
        "endpoint 'flux-dev' is not one of flux-kontext-pro, flux-kontext-max, "
        "multi-image-kontext-pro, multi-image-kontext-max, p-image-edit",
        "seeds must be distinct (the same seed makes the same image): 1 repeated",
    ]


def test_the_contract_s_objections_come_once_without_manifest_labels() -> None:
    assert problems_of(prompt=" ") == ["prompt is required"]
    problems = problems_of(prompt="x" * 10_001)
    assert len(problems) == 1
    assert problems[0].startswith("prompt: is 10001 characters long"), problems
    assert problems_of(images=[""]) == [
        "every image must be a URL, an s3:// URL or a local path (got an empty one)"
    ]


# --- the reviewer's answer ----------------------------------------------------------------


def test_chosen_numbers_are_sorted_once_and_the_others_set_apart() -> None:
    assert chosen_variations([3, 2, 2, 9, 0], 3) == ([2, 3], [0, 9])
    assert chosen_variations([], 3) == ([], [])


def test_the_published_folder_names_the_day_and_the_run() -> None:
    assert published_folder("2026-01-02", "Amber Pig", "1234567890ab") == (
        "published/2026-01-02/amber-pig-12345678"
    )
    assert published_folder("2026-01-02", "", "abcdef012345") == (
        "published/2026-01-02/local-abcdef01"
    )


def test_the_review_record_keeps_the_note_within_bounds() -> None:
    record = review_record("n" * 3000, "run-id", "amber-pig", 3)

    assert record["note"] == "n" * 2000
    assert (record["flow_run_id"], record["flow_run_name"], record["of_variations"]) == (
        "run-id",
        "amber-pig",
        3,
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", record["published_at"])


# --- publishing: a copy through the store ------------------------------------------------


@pytest.fixture
def outputs() -> OutputStore:
    return OutputStore(ObjectStore.from_url(f"memory://publishing-{uuid.uuid4().hex}"))


SOURCE = "review-variations/2026-01-02/review-0123456789ab-seed2.png"


def stored_variation(outputs: OutputStore) -> bytes:
    data = image_bytes((10, 120, 60), (48, 32))
    outputs.save(SOURCE, data, {"slug": "p-image-edit", "seed": 2, "flow_run_id": "maker"})
    return data


def test_a_variation_is_copied_with_its_sidecar_and_the_review(outputs: OutputStore) -> None:
    data = stored_variation(outputs)
    review = {"note": "the warm one", "flow_run_id": "reviewer"}

    published = publish_variation(outputs, 2, SOURCE, "published/2026-01-02/run-1", review)

    key = "published/2026-01-02/run-1/review-0123456789ab-seed2.png"
    sha256 = hashlib.sha256(data).hexdigest()
    assert published == PublishedVariation(
        variation=2,
        url=outputs.store.url(key),
        key=key,
        sha256=sha256,
        source_url=outputs.store.url(SOURCE),
    )
    assert outputs.store.read(key) == data
    sidecar = json.loads(outputs.store.read(key + SIDECAR_SUFFIX))
    assert sidecar["review"] == {"variation": 2, "note": "the warm one", "flow_run_id": "reviewer"}
    assert sidecar["published_from"] == {
        "key": SOURCE,
        "url": outputs.store.url(SOURCE),
        "sha256": sha256,
    }
    assert sidecar["output"]["key"] == key
    assert sidecar["output"]["sha256"] == sha256
    assert (sidecar["slug"], sidecar["seed"], sidecar["flow_run_id"]) == (
        "p-image-edit",
        2,
        "maker",
    )
    original = json.loads(outputs.store.read(SOURCE + SIDECAR_SUFFIX))
    assert "review" not in original
    assert original["output"]["key"] == SOURCE


def test_a_variation_without_its_sidecar_is_not_published(outputs: OutputStore) -> None:
    outputs.store.write(SOURCE, image_bytes())

    with pytest.raises(FileNotFoundError, match="variation 1: no sidecar"):
        publish_variation(outputs, 1, SOURCE, "published/x", {})
    assert not outputs.store.exists("published/x/review-0123456789ab-seed2.png")


def test_a_variation_whose_bytes_changed_is_not_published(outputs: OutputStore) -> None:
    stored_variation(outputs)
    outputs.store.write(SOURCE, image_bytes((1, 2, 3)))

    with pytest.raises(ValueError, match="does not match the sha256"):
        publish_variation(outputs, 2, SOURCE, "published/x", {})
    assert not outputs.store.exists("published/x/review-0123456789ab-seed2.png")


# --- Markdown -------------------------------------------------------------------------------


def edit_result(seed: int) -> EditResult:
    return EditResult(
        slug="p-image-edit",
        url=f"s3://bucket/review-variations/2026-01-02/review-0123456789ab-seed{seed}.png",
        key=f"review-variations/2026-01-02/review-0123456789ab-seed{seed}.png",
        sha256="0" * 64,
        format=OutputFormat.PNG,
        width=1024,
        height=1024,
        size_bytes=100,
        seed=seed,
        cost_usd=Decimal("0.01"),
        credits_remaining=None,
        latency_s=0.1,
        attempts=1,
        request_digest="d",
    )


def test_the_resume_form_lists_the_variations() -> None:
    text = render_review_description(
        [edit_result(7), edit_result(8)], timeout_s=86_400, gallery_key="segmind-outputs"
    )

    assert "(1 to 2)" in text
    assert "- Variation 1: seed 7, 1024x1024, `review-0123456789ab-seed7.png`" in text
    assert "- Variation 2: seed 8" in text
    assert "within 86400 s" in text
    assert "`segmind-outputs`" in text


def test_the_published_summary_says_what_went_where() -> None:
    item = PublishedVariation(
        variation=2,
        url="s3://b/published/x/a.png",
        key="published/x/a.png",
        sha256="0",
        source_url="s",
    )

    text = render_published_markdown(
        [item], count=3, refused=[9], note="**bold** <b>", link=lambda url: f"https://signed/{url}"
    )

    assert "- **Variation 2** published at `s3://b/published/x/a.png`" in text
    assert "![Variation 2](https://signed/s3://b/published/x/a.png)" in text
    assert "Not published: 9 (this review made variations 1 to 3)." in text
    assert r"Reviewer's note: \*\*bold\*\* \<b\>" in text


def test_the_summary_says_when_nothing_was_published() -> None:
    text = render_published_markdown([], count=3, refused=[], note="", link=lambda url: None)

    assert "Nothing was published: no variation of 3 was chosen." in text
    assert "note" not in text
