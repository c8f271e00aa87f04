"""Batch manifests: JSONL and CSV rows, every problem reported at once, local and S3."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from segmind_core.errors import PermanentError
from segmind_core.manifest import (
    REPLACE_BACKGROUND_THEN_MERGE,
    Manifest,
    ManifestError,
    ManifestRow,
    RejectedRow,
    check_manifest_text,
    check_rows,
    load_manifest,
    parse_manifest,
    read_manifest,
)
from segmind_core.object_store import ObjectStore
from tests.conftest import S3Server

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "examples" / "manifests"
PHOTOS = REPO / "examples" / "photos"

EXPECTED_IDS = ["coffee-marble", "cat-and-coffee", "astronaut-poster", "coffee-scene"]
EXPECTED_ENDPOINTS = [
    "flux-kontext-pro",
    "multi-image-kontext-pro",
    "p-image-edit",
    REPLACE_BACKGROUND_THEN_MERGE,
]
EXPECTED_PROMPTS = [
    "put the coffee cup on a white marble counter in soft morning light",
    "the cat from the second image sitting beside the coffee cup",
    "turn the photo into a vintage travel poster",
    "the cat sitting next to the cup",
]
EXPECTED_IMAGES = [
    [PHOTOS / "coffee.jpg"],
    [PHOTOS / "coffee.jpg", PHOTOS / "chelsea.jpg"],
    [PHOTOS / "astronaut.jpg"],
    [PHOTOS / "coffee.jpg", PHOTOS / "chelsea.jpg"],
]
EXPECTED_BACKGROUND = [None, None, None, "on a wooden cafe table by a rainy window"]
JSONL_PARAMS: list[dict[str, Any]] = [
    {"aspect_ratio": "1:1", "seed": 7},
    {"seed": 7},
    {"aspect_ratio": "2:3", "seed": 11},
    {"seed": 3},
]
CSV_PARAMS: list[dict[str, Any]] = [
    {"aspect_ratio": "1:1", "seed": 7, "output_format": "png", "safety_tolerance": 2},
    {"seed": 7, "output_format": "jpg"},
    {"aspect_ratio": "2:3", "seed": 11},
    {"seed": 3},
]


def row(**fields: Any) -> dict[str, Any]:
    """A valid flux-kontext-pro row with ``fields`` overriding (``None`` drops a field)."""
    base: dict[str, Any] = {"id": "r", "endpoint": "flux-kontext-pro", "prompt": "make it blue"}
    base.update(fields)
    return {name: value for name, value in base.items() if value is not None}


def jsonl(*rows: dict[str, Any] | str) -> str:
    """Rows as JSONL; strings are written as they are (blank or broken lines)."""
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"


def problems_of(text: str, fmt: str = "jsonl") -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, fmt=fmt)
    return caught.value.problems


def line_of(problem: str) -> int:
    match = re.match(r"line (\d+)\b", problem)
    assert match, f"problem does not start with 'line N': {problem!r}"
    return int(match.group(1))


def only_problem(text: str, fmt: str = "jsonl") -> str:
    problems = problems_of(text, fmt)
    assert len(problems) == 1, problems
    return problems[0]


# --- the example manifests ------------------------------------------------------------


@pytest.mark.parametrize("name", ["catalogue.jsonl", "catalogue.csv"])
def test_example_manifest_parses_to_four_rows(name: str) -> None:
    rows = read_manifest(str(MANIFESTS / name))

    assert [r.id for r in rows] == EXPECTED_IDS
    assert [r.endpoint for r in rows] == EXPECTED_ENDPOINTS
    assert [r.prompt for r in rows] == EXPECTED_PROMPTS
    assert [r.background_prompt for r in rows] == EXPECTED_BACKGROUND
    assert [[Path(i) for i in r.images] for r in rows] == EXPECTED_IMAGES
    for r in rows:
        for image in r.images:
            assert Path(image).is_absolute()
            assert Path(image).is_file(), image
    assert all(isinstance(r, ManifestRow) for r in rows)


def test_example_jsonl_rows_have_their_params_and_lines() -> None:
    rows = read_manifest(str(MANIFESTS / "catalogue.jsonl"))

    assert [r.params for r in rows] == JSONL_PARAMS
    assert [r.line for r in rows] == [1, 2, 3, 4]


def test_example_csv_cells_are_typed_and_empty_cells_omitted() -> None:
    rows = read_manifest(str(MANIFESTS / "catalogue.csv"))

    assert [r.params for r in rows] == CSV_PARAMS
    assert type(rows[0].params["seed"]) is int
    assert type(rows[0].params["safety_tolerance"]) is int
    assert rows[0].params["output_format"] == "png"
    assert isinstance(rows[0].params["output_format"], str)
    assert rows[0].params["aspect_ratio"] == "1:1"
    # The header is line 1, so the rows are lines 2 to 5.
    assert [r.line for r in rows] == [2, 3, 4, 5]


def test_example_manifests_agree_on_the_shared_params() -> None:
    from_jsonl = read_manifest(str(MANIFESTS / "catalogue.jsonl"))
    from_csv = read_manifest(str(MANIFESTS / "catalogue.csv"))

    for j, c in zip(from_jsonl, from_csv, strict=True):
        assert (j.id, j.endpoint, j.prompt, j.images) == (c.id, c.endpoint, c.prompt, c.images)
        assert j.params.items() <= c.params.items(), (j.params, c.params)


def test_a_file_url_is_refused_with_a_hint_to_give_the_path() -> None:
    with pytest.raises(ManifestError, match=r"file:// inputs are not accepted \(give a plain path"):
        read_manifest((MANIFESTS / "catalogue.jsonl").as_uri())


def test_relative_images_follow_the_manifest_folder(tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    manifest = folder / "m.jsonl"
    absolute = str(tmp_path / "elsewhere.png")
    manifest.write_text(
        jsonl(
            row(id="a", images=["pics/a.png"]),
            row(id="b", images=["https://cdn.example/b.png"]),
            row(id="c", images=["s3://bucket/c.png"]),
            row(id="d", images=[absolute]),
        ),
        encoding="utf-8",
    )

    rows = read_manifest(str(manifest))

    assert [r.images for r in rows] == [
        [str(folder.resolve() / "pics" / "a.png")],
        ["https://cdn.example/b.png"],
        ["s3://bucket/c.png"],
        [absolute],
    ]


def test_parse_manifest_without_a_base_folder_keeps_images_as_given() -> None:
    (parsed,) = parse_manifest(jsonl(row(images=["../photos/a.jpg"])), fmt="jsonl")

    assert parsed.images == ["../photos/a.jpg"]


def test_parse_manifest_rejects_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown manifest format 'yaml'") as caught:
        parse_manifest("{}", fmt="yaml")
    assert not isinstance(caught.value, ManifestError)


# --- JSONL --------------------------------------------------------------------------


def test_jsonl_blank_lines_are_skipped_and_lines_counted() -> None:
    text = "\n" + json.dumps(row(id="a")) + "\n   \n\n" + json.dumps(row(id="b")) + "\n\n"

    rows = parse_manifest(text, fmt="jsonl")

    assert [(r.id, r.line) for r in rows] == [("a", 2), ("b", 5)]


def test_jsonl_row_fields_are_kept() -> None:
    (parsed,) = parse_manifest(
        jsonl(
            row(
                id="sku-9",
                endpoint="p-image-edit",
                images=["https://a/1.png", "https://a/2.png"],
                params={"seed": -1, "disable_safety_checker": True, "aspect_ratio": "16:9"},
            )
        ),
        fmt="jsonl",
    )

    assert parsed == ManifestRow(
        id="sku-9",
        endpoint="p-image-edit",
        prompt="make it blue",
        images=["https://a/1.png", "https://a/2.png"],
        params={"seed": -1, "disable_safety_checker": True, "aspect_ratio": "16:9"},
        background_prompt=None,
        line=1,
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "line 1: not valid JSON"),
        ("[1, 2]", "line 1: must be a JSON object"),
        ('"just a string"', "line 1: must be a JSON object"),
        (json.dumps(row(seed=7)), "line 1 (r): unknown field(s) seed; put parameters in params"),
        (json.dumps(row(id=None)), "line 1: id is required"),
        (json.dumps(row(id="")), "id is required (a non-empty string)"),
        (json.dumps(row(id="   ")), "id is required (a non-empty string)"),
        (json.dumps(row(id=12)), "line 1: id is required"),
        (json.dumps(row(id="///")), "line 1 (///): id '///' looks like a path"),
        (json.dumps(row(prompt=None)), "line 1 (r): prompt is required"),
        (json.dumps(row(prompt="  ")), "line 1 (r): prompt is required"),
        (json.dumps(row(endpoint="flux-kontext-ultra")), "endpoint 'flux-kontext-ultra' is not"),
        (json.dumps(row(endpoint=None)), "line 1 (r): endpoint None is not one of"),
        (json.dumps(row(params=[1])), "line 1 (r): params must be an object"),
        (json.dumps(row(params="seed=7")), "line 1 (r): params must be an object"),
        (json.dumps(row(images="a.png")), "line 1 (r): images must be a list"),
        (json.dumps(row(images=["a.png", 3])), "line 1 (r): images must be a list"),
        (json.dumps(row(images=[""])), "line 1 (r): images must be a list"),
    ],
)
def test_jsonl_row_problem(line: str, expected: str) -> None:
    problem = only_problem(line + "\n")

    assert problem.startswith("line 1")
    assert expected in problem


def test_unknown_endpoint_problem_lists_the_known_ones() -> None:
    problem = only_problem(jsonl(row(endpoint="nope")))

    for known in (
        "flux-kontext-pro",
        "flux-kontext-max",
        "multi-image-kontext-pro",
        "multi-image-kontext-max",
        "p-image-edit",
        REPLACE_BACKGROUND_THEN_MERGE,
    ):
        assert known in problem


IMAGES = [f"https://cdn.example/{n}.png" for n in range(6)]


@pytest.mark.parametrize(
    ("endpoint", "count", "ok"),
    [
        ("flux-kontext-pro", 0, True),
        ("flux-kontext-pro", 1, True),
        ("flux-kontext-pro", 2, False),
        ("flux-kontext-max", 2, False),
        ("multi-image-kontext-pro", 1, False),
        ("multi-image-kontext-pro", 2, True),
        ("multi-image-kontext-pro", 3, False),
        ("multi-image-kontext-max", 0, False),
        ("p-image-edit", 0, False),
        ("p-image-edit", 1, True),
        ("p-image-edit", 5, True),
        ("p-image-edit", 6, False),
        (REPLACE_BACKGROUND_THEN_MERGE, 1, False),
        (REPLACE_BACKGROUND_THEN_MERGE, 2, True),
        (REPLACE_BACKGROUND_THEN_MERGE, 3, False),
    ],
)
def test_image_counts_per_endpoint(endpoint: str, count: int, ok: bool) -> None:
    extra = {"background_prompt": "a beach"} if endpoint == REPLACE_BACKGROUND_THEN_MERGE else {}
    text = jsonl(row(endpoint=endpoint, images=IMAGES[:count], **extra))

    if ok:
        (parsed,) = parse_manifest(text, fmt="jsonl")
        assert parsed.images == IMAGES[:count]
        return
    problems = problems_of(text)
    assert any(
        p.startswith("line 1 (r): ") and f"{endpoint} takes" in p and f"got {count}" in p
        for p in problems
    ), problems


@pytest.mark.parametrize(
    ("endpoint", "count", "wanted"),
    [
        ("flux-kontext-pro", 2, "takes 0 to 1 image(s), got 2"),
        ("multi-image-kontext-pro", 1, "takes 2 image(s), got 1"),
        ("p-image-edit", 0, "takes 1 to 5 image(s), got 0"),
        (REPLACE_BACKGROUND_THEN_MERGE, 3, "takes 2 image(s), got 3"),
    ],
)
def test_image_count_problem_says_what_is_wanted(endpoint: str, count: int, wanted: str) -> None:
    extra = {"background_prompt": "a beach"} if endpoint == REPLACE_BACKGROUND_THEN_MERGE else {}
    problems = problems_of(jsonl(row(endpoint=endpoint, images=IMAGES[:count], **extra)))

    assert f"line 1 (r): {endpoint} {wanted}" in problems


@pytest.mark.parametrize("background", [None, "", "   "])
def test_merge_needs_a_background_prompt(background: str | None) -> None:
    problem = only_problem(
        jsonl(
            row(
                endpoint=REPLACE_BACKGROUND_THEN_MERGE,
                images=IMAGES[:2],
                background_prompt=background,
            )
        )
    )

    assert problem == "line 1 (r): replace_background_then_merge needs background_prompt"


def test_background_prompt_only_for_the_merge() -> None:
    problem = only_problem(
        jsonl(row(endpoint="p-image-edit", images=IMAGES[:1], background_prompt="a beach"))
    )

    assert problem == ("line 1 (r): background_prompt is only for replace_background_then_merge")


def test_merge_row_keeps_its_background_prompt() -> None:
    (parsed,) = parse_manifest(
        jsonl(
            row(
                endpoint=REPLACE_BACKGROUND_THEN_MERGE,
                images=IMAGES[:2],
                background_prompt="a beach",
                params={"seed": 3, "aspect_ratio": "4:5"},
            )
        ),
        fmt="jsonl",
    )

    assert parsed.endpoint == REPLACE_BACKGROUND_THEN_MERGE
    assert parsed.background_prompt == "a beach"
    assert parsed.params == {"seed": 3, "aspect_ratio": "4:5"}


@pytest.mark.parametrize("field", ["input_image", "input_image_1", "input_image_2", "image_urls"])
def test_image_fields_inside_params_are_refused(field: str) -> None:
    problem = only_problem(jsonl(row(params={field: "https://cdn.example/a.png"})))

    assert problem == f"line 1 (r): give images in the images list, not as {field}"


@pytest.mark.parametrize(
    ("endpoint", "images", "params", "field", "shown"),
    [
        ("flux-kontext-pro", 0, {"aspect_ratio": "7:3"}, "aspect_ratio", "'7:3'"),
        ("p-image-edit", 1, {"aspect_ratio": "4:5"}, "aspect_ratio", "'4:5'"),
        ("multi-image-kontext-pro", 2, {"safety_tolerance": 3}, "safety_tolerance", "3"),
        ("flux-kontext-pro", 1, {"safety_tolerance": 7}, "safety_tolerance", "7"),
        ("flux-kontext-pro", 1, {"seed": "7"}, "seed", "'7'"),
        ("p-image-edit", 1, {"seed": -2}, "seed", "-2"),
        ("p-image-edit", 1, {"disable_safety_checker": "yes"}, "disable_safety_checker", "'yes'"),
        ("flux-kontext-pro", 0, {"output_format": "webp"}, "output_format", "'webp'"),
    ],
)
def test_contract_violations_name_the_field(
    endpoint: str, images: int, params: dict[str, Any], field: str, shown: str
) -> None:
    problem = only_problem(jsonl(row(endpoint=endpoint, images=IMAGES[:images], params=params)))

    assert problem.startswith(f"line 1 (r): {field}: ")
    assert problem.endswith(f"(got {shown})")


def test_unknown_param_is_named() -> None:
    problem = only_problem(jsonl(row(params={"aspect_ration": "1:1"})))

    assert problem == "line 1 (r): aspect_ration: unknown field for this endpoint"


def test_param_valid_elsewhere_is_unknown_for_this_endpoint() -> None:
    # disable_safety_checker belongs to p-image-edit only.
    problem = only_problem(jsonl(row(params={"disable_safety_checker": True})))

    assert problem == "line 1 (r): disable_safety_checker: unknown field for this endpoint"


def test_duplicate_ids_are_refused() -> None:
    problems = problems_of(jsonl(row(id="a"), row(id="b"), row(id="a")))

    assert problems == ["line 3 (a): id repeats line 1 (ids must be unique, also after sanitising)"]


def test_ids_equal_after_sanitising_are_duplicates() -> None:
    problems = problems_of(jsonl(row(id="SKU 1"), row(id="other"), row(id="sku-1")))

    assert problems == [
        "line 3 (sku-1): id repeats line 1 (ids must be unique, also after sanitising)"
    ]


def test_distinct_ids_pass() -> None:
    rows = parse_manifest(jsonl(row(id="SKU 1"), row(id="SKU 2"), row(id="sku_1")), fmt="jsonl")

    assert [r.id for r in rows] == ["SKU 1", "SKU 2", "sku_1"]


def test_every_problem_is_reported_at_once_sorted_by_line() -> None:
    lines: list[dict[str, Any] | str] = [
        row(id="ok-1"),  # 1
        row(id="a", params={"aspect_ratio": "7:3"}),  # 2
        "{broken",  # 3
        "",  # 4
        row(id="b", endpoint="p-image-edit", images=IMAGES[:1], params={"aspect_ratio": "4:5"}),
        row(
            id="c",
            endpoint="multi-image-kontext-pro",
            images=IMAGES[:2],
            params={"safety_tolerance": 3},
        ),  # 6
        row(id="d", params={"seed": "7"}),  # 7
        row(id="e", params={"aspect_ration": "1:1"}),  # 8
        "[1]",  # 9
        row(id="OK 1"),  # 10: same as ok-1 after sanitising
        row(id="f", endpoint="flux-kontext-ultra"),  # 11
        row(id="g", color="red"),  # 12
    ]

    with pytest.raises(ManifestError) as caught:
        parse_manifest(jsonl(*lines), fmt="jsonl", source="batch.jsonl")

    problems = caught.value.problems
    assert [line_of(p) for p in problems] == [2, 3, 5, 6, 7, 8, 9, 10, 11, 12]
    assert problems[0].startswith("line 2 (a): aspect_ratio: ")
    assert problems[1].startswith("line 3: not valid JSON")
    assert problems[2].startswith("line 5 (b): aspect_ratio: ")
    assert problems[3].startswith("line 6 (c): safety_tolerance: ")
    assert problems[4].startswith("line 7 (d): seed: ")
    assert problems[5] == "line 8 (e): aspect_ration: unknown field for this endpoint"
    assert problems[6] == "line 9: must be a JSON object"
    assert problems[7].startswith("line 10 (OK 1): id repeats line 1")
    assert problems[8].startswith("line 11 (f): endpoint 'flux-kontext-ultra'")
    assert problems[9].startswith("line 12 (g): unknown field(s) color")

    message = str(caught.value)
    assert message.startswith("manifest batch.jsonl has 10 problem(s):")
    for problem in problems:
        assert problem in message
    assert caught.value.source == "batch.jsonl"


def test_problems_sort_numerically_not_as_text() -> None:
    lines: list[dict[str, Any] | str] = [row(id=f"r{n}") for n in range(1, 12)]
    lines[1] = "{broken"  # line 2, found while reading
    lines[10] = row(id="r11", params={"seed": "x"})  # line 11, found while checking
    lines[8] = "nope"  # line 9, found while reading

    problems = problems_of(jsonl(*lines))

    assert [line_of(p) for p in problems] == [2, 9, 11]


def test_several_problems_of_one_row_are_all_listed() -> None:
    problems = problems_of(
        jsonl(
            row(id="", endpoint="nope", prompt="", params=[], images="x.png", extra=1),
        )
    )

    assert len(problems) == 6
    assert all(p.startswith("line 1") for p in problems)
    joined = "\n".join(problems)
    for part in (
        "unknown field(s) extra",
        "id is required",
        "endpoint 'nope'",
        "prompt is required",
        "images must be a list",
        "params must be an object",
    ):
        assert part in joined


def test_more_than_fifty_problems_are_counted_in_the_message() -> None:
    text = "\n".join("{broken" for _ in range(53)) + "\n"

    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, fmt="jsonl")

    assert len(caught.value.problems) == 53
    message = str(caught.value)
    assert "has 53 problem(s)" in message
    assert "line 50: not valid JSON" in message
    assert "line 51: not valid JSON" not in message
    assert "... and 3 more" in message


@pytest.mark.parametrize("text", ["", "\n", "  \n\n\t\n"])
def test_empty_jsonl_manifest_has_no_rows(text: str) -> None:
    assert problems_of(text) == ["no rows"]


def test_prompt_with_a_unicode_line_separator_stays_on_its_line() -> None:
    # JSONL separates records by "\n" only; JSON allows U+2028 unescaped in a string,
    # and json.dumps(ensure_ascii=False) writes it that way.
    text = "\n".join(
        json.dumps(r, ensure_ascii=False)
        for r in (row(id="a", prompt="first\u2028second"), row(id="b"))
    )

    rows = parse_manifest(text, fmt="jsonl")

    assert [(r.id, r.line) for r in rows] == [("a", 1), ("b", 2)]
    assert rows[0].prompt == "first\u2028second"


# --- CSV ------------------------------------------------------------------------------

CSV_HEADER = "id,endpoint,prompt,images,background_prompt,seed,aspect_ratio\n"


def test_csv_header_lacking_a_column_is_a_line_1_problem() -> None:
    text = "id,prompt,images\na,make it blue,https://a/1.png\nb,,\n"

    assert only_problem(text, "csv") == "line 1: the header lacks column(s) endpoint"


def test_csv_without_any_header() -> None:
    assert only_problem("", "csv") == "line 1: the header lacks column(s) id, endpoint, prompt"


def test_csv_with_only_a_header_has_no_rows() -> None:
    assert problems_of(CSV_HEADER, "csv") == ["no rows"]


def test_csv_images_split_on_pipe_and_extra_columns_become_params() -> None:
    text = (
        "id,endpoint,prompt,images,disable_safety_checker,seed,aspect_ratio\n"
        "a,p-image-edit,make it blue, https://a/1.png | https://a/2.png |https://a/3.png,"
        "true,-1,16:9\n"
    )

    (parsed,) = parse_manifest(text, fmt="csv")

    assert parsed.images == ["https://a/1.png", "https://a/2.png", "https://a/3.png"]
    assert parsed.params == {"disable_safety_checker": True, "seed": -1, "aspect_ratio": "16:9"}
    assert parsed.params["disable_safety_checker"] is True
    assert parsed.line == 2


def test_csv_without_images_column_gives_no_images() -> None:
    (parsed,) = parse_manifest("id,endpoint,prompt,seed\na,flux-kontext-pro,x,5\n", fmt="csv")

    assert parsed.images == []
    assert parsed.params == {"seed": 5}


def test_csv_row_with_every_cell_empty_is_skipped() -> None:
    text = (
        CSV_HEADER
        + "a,flux-kontext-pro,make it blue,,,1,\n"
        + ",,,,,,\n"
        + " , ,  ,,,,\n"
        + "\n"
        + "b,flux-kontext-pro,make it red,,,2,\n"
    )

    rows = parse_manifest(text, fmt="csv")

    assert [(r.id, r.line, r.params) for r in rows] == [
        ("a", 2, {"seed": 1}),
        ("b", 6, {"seed": 2}),
    ]


def test_csv_problems_name_the_csv_line() -> None:
    text = (
        CSV_HEADER  # 1
        + "a,flux-kontext-pro,ok,,,1,\n"  # 2
        + ",,,,,,\n"  # 3 (skipped)
        + "b,flux-kontext-pro,x,,,,7:3\n"  # 4
        + "\n"  # 5 (skipped)
        + 'c,p-image-edit,"multi\nline prompt",https://a/1.png,,,4:5\n'  # 6-7
        + "d,multi-image-kontext-pro,x,https://a/1.png,,,\n"  # 8
        + 'A,flux-kontext-pro,x,,,"7",\n'  # 9: same id as a; "7" is typed to 7
        + "e,flux-kontext-pro,x,,a beach,,\n"  # 10
    )

    problems = problems_of(text, "csv")

    # Row c spans lines 6-7 (a quoted newline); either of its lines names it, and the
    # rows after it keep their own line numbers.
    assert [line_of(p) for p in problems][:1] == [4]
    assert line_of(problems[1]) in (6, 7)
    assert [line_of(p) for p in problems][2:] == [8, 9, 10]
    assert problems[0].startswith("line 4 (b): aspect_ratio: ")
    assert re.match(r"line [67] \(c\): aspect_ratio: ", problems[1])
    assert problems[2] == "line 8 (d): multi-image-kontext-pro takes 2 image(s), got 1"
    assert problems[3].startswith("line 9 (A): id repeats line 2")
    assert problems[4] == (
        "line 10 (e): background_prompt is only for replace_background_then_merge"
    )


def test_csv_cells_are_typed_as_json_numbers_and_booleans() -> None:
    text = (
        "id,endpoint,prompt,images,seed,safety_tolerance,output_format\n"
        "a,flux-kontext-pro,x,,7,0,png\n"
    )

    (parsed,) = parse_manifest(text, fmt="csv")

    assert parsed.params == {"seed": 7, "safety_tolerance": 0, "output_format": "png"}
    assert type(parsed.params["seed"]) is int


def test_csv_typed_cell_of_the_wrong_type_is_a_problem() -> None:
    text = "id,endpoint,prompt,seed\na,flux-kontext-pro,x,1.5\n"

    problem = only_problem(text, "csv")

    assert problem.startswith("line 2 (a): seed: ")
    assert problem.endswith("(got 1.5)")


def test_csv_merge_row() -> None:
    text = (
        CSV_HEADER + "m,replace_background_then_merge,merge them,https://a/1.png|https://a/2.png,"
        "a beach,4,\n"
    )

    (parsed,) = parse_manifest(text, fmt="csv")

    assert parsed.background_prompt == "a beach"
    assert parsed.images == ["https://a/1.png", "https://a/2.png"]
    assert parsed.params == {"seed": 4}


def test_csv_relative_images_follow_the_manifest_folder(tmp_path: Path) -> None:
    manifest = tmp_path / "m.CSV"
    manifest.write_text(
        "id,endpoint,prompt,images\na,flux-kontext-pro,x,pics/a.png\n", encoding="utf-8"
    )

    (parsed,) = read_manifest(str(manifest))

    assert parsed.images == [str(tmp_path.resolve() / "pics" / "a.png")]
    assert parsed.line == 2


# --- replace_background_then_merge checks both contracts --------------------------------


def merge_row(**params: Any) -> str:
    return jsonl(
        row(
            endpoint=REPLACE_BACKGROUND_THEN_MERGE,
            images=IMAGES[:2],
            background_prompt="a beach",
            params=params,
        )
    )


def test_safety_tolerance_fine_for_flux_but_not_for_the_merge() -> None:
    # 5 is within flux-kontext-pro's 0..6 ...
    (flux,) = parse_manifest(
        jsonl(row(params={"safety_tolerance": 5}, images=IMAGES[:1])), fmt="jsonl"
    )
    assert flux.params == {"safety_tolerance": 5}

    # ... but multi-image-kontext-pro allows at most 2.
    problems = problems_of(merge_row(safety_tolerance=5))

    assert len(problems) == 1
    assert problems[0].startswith("line 1 (r): safety_tolerance: ")
    assert problems[0].endswith("(got 5)")


def test_merge_params_valid_for_both_pass() -> None:
    (parsed,) = parse_manifest(
        merge_row(safety_tolerance=2, aspect_ratio="21:9", output_format="jpg", seed=9),
        fmt="jsonl",
    )

    assert parsed.params == {
        "safety_tolerance": 2,
        "aspect_ratio": "21:9",
        "output_format": "jpg",
        "seed": 9,
    }


def test_merge_params_outside_both_contracts_are_problems() -> None:
    problems = problems_of(merge_row(aspect_ratio="7:3"))

    assert problems
    assert all(p.startswith("line 1 (r): aspect_ratio: ") for p in problems)


def test_merge_refuses_params_of_another_endpoint() -> None:
    problems = problems_of(merge_row(disable_safety_checker=True))

    assert problems
    assert all(
        p == "line 1 (r): disable_safety_checker: unknown field for this endpoint" for p in problems
    )


# --- reading from S3 and failing to read ------------------------------------------------


def storage_options(s3: S3Server) -> dict[str, Any]:
    return {
        "key": s3.access_key_id,
        "secret": s3.secret_access_key,
        "endpoint_url": s3.endpoint_url,
        "client_kwargs": {"region_name": s3.region},
    }


@pytest.fixture
def outputs_bucket_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Manifests read without an output store: the bucket must be allowed by name."""
    monkeypatch.setenv("SEGMIND_INPUT_BUCKETS", "s3://outputs")


def test_an_s3_manifest_outside_the_allowed_buckets_is_refused_before_reading(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's credentials may reach buckets the person triggering a run may not.
    s3.client().put_object(Bucket="outputs", Key="hr/salaries.jsonl", Body=jsonl(row()).encode())
    store = ObjectStore.from_url("s3://results/runs", **storage_options(s3))
    monkeypatch.setenv("SEGMIND_INPUT_BUCKETS", "s3://outputs/public")

    for location in ("s3://outputs/hr/salaries.jsonl", "s3://results/../outputs/x.jsonl"):
        with pytest.raises(ManifestError) as caught:
            load_manifest(location, store=store)
        (problem,) = caught.value.problems
        assert problem.startswith(f"refused: {location} ")
    with pytest.raises(ManifestError, match="outside the storage inputs may be read from"):
        load_manifest("s3://outputs/hr/salaries.jsonl", store=store)

    monkeypatch.setenv("SEGMIND_INPUT_BUCKETS", "s3://outputs/hr")
    assert len(load_manifest("s3://outputs/hr/salaries.jsonl", store=store).rows) == 1


@pytest.mark.usefixtures("outputs_bucket_allowed")
def test_read_manifest_from_s3_keeps_relative_images(s3: S3Server) -> None:
    body = (MANIFESTS / "catalogue.jsonl").read_bytes()
    s3.client().put_object(Bucket="outputs", Key="batches/catalogue.jsonl", Body=body)

    rows = read_manifest("s3://outputs/batches/catalogue.jsonl", **storage_options(s3))

    assert [r.id for r in rows] == EXPECTED_IDS
    assert [r.endpoint for r in rows] == EXPECTED_ENDPOINTS
    assert [r.params for r in rows] == JSONL_PARAMS
    assert [r.images for r in rows] == [
        ["../photos/coffee.jpg"],
        ["../photos/coffee.jpg", "../photos/chelsea.jpg"],
        ["../photos/astronaut.jpg"],
        ["../photos/coffee.jpg", "../photos/chelsea.jpg"],
    ]


@pytest.mark.usefixtures("outputs_bucket_allowed")
def test_read_csv_manifest_from_s3(s3: S3Server) -> None:
    body = (MANIFESTS / "catalogue.csv").read_bytes()
    s3.client().put_object(Bucket="outputs", Key="catalogue.csv", Body=body)

    rows = read_manifest("s3://outputs/catalogue.csv", **storage_options(s3))

    assert [r.params for r in rows] == CSV_PARAMS
    assert rows[1].images == ["../photos/coffee.jpg", "../photos/chelsea.jpg"]


def test_bad_manifest_on_s3_names_its_url(s3: S3Server) -> None:
    s3.client().put_object(
        Bucket="outputs", Key="bad.jsonl", Body=jsonl(row(id="///")).encode("utf-8")
    )

    with pytest.raises(ManifestError) as caught:
        read_manifest("s3://outputs/bad.jsonl", **storage_options(s3))

    assert caught.value.source == "s3://outputs/bad.jsonl"
    assert str(caught.value).startswith("manifest s3://outputs/bad.jsonl has 1 problem(s)")


@pytest.mark.usefixtures("outputs_bucket_allowed")
def test_missing_s3_manifest_cannot_be_read(s3: S3Server) -> None:
    with pytest.raises(ManifestError) as caught:
        read_manifest("s3://outputs/missing.jsonl", **storage_options(s3))

    (problem,) = caught.value.problems
    assert problem.startswith("cannot read it: ")
    assert "cannot read it" in str(caught.value)


def test_missing_local_manifest_cannot_be_read(tmp_path: Path) -> None:
    location = str(tmp_path / "nope.jsonl")

    with pytest.raises(ManifestError) as caught:
        read_manifest(location)

    (problem,) = caught.value.problems
    assert problem.startswith("cannot read it: FileNotFoundError: ")
    assert caught.value.source == location
    assert location in str(caught.value)


def test_unknown_protocol_cannot_be_read() -> None:
    with pytest.raises(ManifestError, match="refused: nosuchprotocol:// inputs are not accepted"):
        read_manifest("nosuchprotocol://bucket/m.jsonl")


def test_manifest_that_is_not_utf8_cannot_be_read(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"id": "\xff\xfe"}\n')

    with pytest.raises(ManifestError) as caught:
        read_manifest(str(manifest))

    (problem,) = caught.value.problems
    assert problem.startswith("cannot read it: UnicodeDecodeError")


# --- the error type --------------------------------------------------------------------


def test_manifest_error_is_permanent_and_a_value_error() -> None:
    error = ManifestError("m.jsonl", ["line 2 (a): x", "line 3: y"])

    assert isinstance(error, PermanentError)
    assert isinstance(error, ValueError)
    assert error.problems == ["line 2 (a): x", "line 3: y"]
    assert str(error) == "manifest m.jsonl has 2 problem(s):\n  line 2 (a): x\n  line 3: y"


def test_parse_errors_can_be_caught_as_value_error() -> None:
    with pytest.raises(ValueError, match="no rows"):
        parse_manifest("", fmt="jsonl")


def test_csv_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    manifest = tmp_path / "bom.csv"
    manifest.write_bytes(
        "\ufeffid,endpoint,prompt,images\nsku-1,p-image-edit,make it blue,https://127.0.0.1/a.png\n".encode()
    )

    rows = read_manifest(str(manifest))

    assert [row.id for row in rows] == ["sku-1"]


# --- the tolerant API: good rows kept, bad rows set aside --------------------------------


def test_load_manifest_keeps_the_good_rows_and_sets_the_bad_ones_aside(tmp_path: Path) -> None:
    manifest_path = tmp_path / "m.jsonl"
    manifest_path.write_text(
        jsonl(
            row(id="a", images=["pics/a.png"]),  # 1
            "{broken",  # 2
            row(id="b", params={"aspect_ratio": "7:3"}),  # 3
            "",  # 4
            row(id="c", endpoint="p-image-edit", images=IMAGES[:1]),  # 5
            row(id="A"),  # 6: the same id as line 1 after sanitising
            row(id="d", endpoint=12),  # 7
        ),
        encoding="utf-8",
    )

    manifest = load_manifest(str(manifest_path))

    assert isinstance(manifest, Manifest)
    assert manifest.source == str(manifest_path)
    assert [(r.id, r.line) for r in manifest.rows] == [("a", 1), ("c", 5)]
    assert all(isinstance(r, ManifestRow) for r in manifest.rows)
    assert manifest.rows[0].images == [str(tmp_path.resolve() / "pics" / "a.png")]
    assert all(isinstance(r, RejectedRow) for r in manifest.rejected)
    assert [(r.line, r.id, r.endpoint) for r in manifest.rejected] == [
        (2, None, None),
        (3, "b", "flux-kontext-pro"),
        (6, "A", "flux-kontext-pro"),
        (7, "d", None),  # an endpoint that is not text is not kept
    ]
    assert len(manifest.rejected[0].problems) == 1
    assert manifest.rejected[0].problems[0].startswith("line 2: not valid JSON")
    assert manifest.rejected[1].problems[0].startswith("line 3 (b): aspect_ratio: ")
    assert manifest.rejected[2].problems == (
        "line 6 (A): id repeats line 1 (ids must be unique, also after sanitising)",
    )
    assert manifest.rejected[3].problems[0].startswith("line 7 (d): endpoint 12 is not one of")
    assert manifest.problems() == [p for r in manifest.rejected for p in r.problems]
    assert [line_of(p) for p in manifest.problems()] == [2, 3, 6, 7]


def test_raise_for_problems_refuses_what_load_manifest_set_aside(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(jsonl(row(id="a"), row(id="b", prompt=""), "[1]"), encoding="utf-8")
    good = tmp_path / "good.jsonl"
    good.write_text(jsonl(row(id="a"), row(id="b")), encoding="utf-8")

    manifest = load_manifest(str(bad))
    with pytest.raises(ManifestError) as caught:
        manifest.raise_for_problems()
    clean = load_manifest(str(good))

    assert [r.id for r in manifest.rows] == ["a"]
    assert caught.value.problems == manifest.problems()
    assert caught.value.problems == [
        "line 2 (b): prompt is required",
        "line 3: must be a JSON object",
    ]
    assert caught.value.source == str(bad)
    assert clean.rejected == []
    assert clean.problems() == []
    assert clean.raise_for_problems() == clean.rows
    assert [r.id for r in clean.rows] == ["a", "b"]
    assert read_manifest(str(good)) == clean.rows


def test_a_rejected_row_keeps_every_problem_and_its_reason_joins_them() -> None:
    manifest = check_rows(
        [row(id="x", endpoint="p-image-edit", params={"aspect_ratio": "4:5", "seed": "7"})]
    )

    assert manifest.rows == []
    (rejected,) = manifest.rejected
    assert rejected.line == 1
    assert rejected.id == "x"
    assert rejected.endpoint == "p-image-edit"
    assert len(rejected.problems) == 3
    assert all(p.startswith("line 1 (x): ") for p in rejected.problems)
    joined = "\n".join(rejected.problems)
    assert "p-image-edit takes 1 to 5 image(s), got 0" in joined
    assert "aspect_ratio: " in joined
    assert "seed: " in joined
    assert rejected.reason == "; ".join(rejected.problems)


@pytest.mark.parametrize(("raw_id", "kept"), [("sku 1", "sku 1"), ("   ", None), (12, None)])
def test_a_rejected_row_keeps_its_id_only_when_it_is_usable(raw_id: Any, kept: str | None) -> None:
    manifest = check_rows([row(id=raw_id, endpoint="nope")])

    (rejected,) = manifest.rejected
    assert rejected.id == kept
    assert rejected.endpoint == "nope"


def test_a_manifest_of_only_bad_rows_is_not_a_whole_file_problem(tmp_path: Path) -> None:
    jsonl_path = tmp_path / "bad.jsonl"
    jsonl_path.write_text(jsonl("{broken", row(id="a", prompt="")), encoding="utf-8")
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("id,endpoint,prompt\na,nope,x\nb,flux-kontext-pro,\n", encoding="utf-8")

    from_jsonl = load_manifest(str(jsonl_path))
    from_csv = load_manifest(str(csv_path))

    assert from_jsonl.rows == []
    assert [r.line for r in from_jsonl.rejected] == [1, 2]
    assert from_csv.rows == []
    assert [(r.line, r.id) for r in from_csv.rejected] == [(2, "a"), (3, "b")]


# --- whole-file problems still raise ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("empty.jsonl", "", ["no rows"]),
        ("blank.jsonl", "\n  \n\n", ["no rows"]),
        ("header-only.csv", "id,endpoint,prompt,images\n", ["no rows"]),
        ("empty.csv", "", ["line 1: the header lacks column(s) id, endpoint, prompt"]),
        (
            "no-id.csv",
            "endpoint,prompt\nflux-kontext-pro,x\n",
            ["line 1: the header lacks column(s) id"],
        ),
        (
            "no-prompt.csv",
            "id,endpoint\na,flux-kontext-pro\n",
            ["line 1: the header lacks column(s) prompt"],
        ),
        ("no-endpoint.csv", "id,prompt\na,x\n", ["line 1: the header lacks column(s) endpoint"]),
    ],
)
def test_load_manifest_raises_for_whole_file_problems(
    tmp_path: Path, name: str, text: str, expected: list[str]
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ManifestError) as caught:
        load_manifest(str(path))

    assert caught.value.problems == expected
    assert caught.value.source == str(path)


def test_load_manifest_raises_when_the_file_cannot_be_read(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.jsonl")
    not_utf8 = tmp_path / "latin1.jsonl"
    not_utf8.write_bytes(b'{"id": "caf\xe9"}\n')

    with pytest.raises(ManifestError) as missing_error:
        load_manifest(missing)
    with pytest.raises(ManifestError) as decode_error:
        load_manifest(str(not_utf8))

    (problem,) = missing_error.value.problems
    assert problem.startswith("cannot read it: FileNotFoundError: ")
    assert missing_error.value.source == missing
    (problem,) = decode_error.value.problems
    assert problem.startswith("cannot read it: UnicodeDecodeError")


def test_a_default_endpoint_does_not_excuse_a_header_without_id_or_prompt() -> None:
    with pytest.raises(ManifestError) as no_id:
        check_manifest_text(
            "prompt,images\nx,https://a/1.png\n", fmt="csv", default_endpoint="flux-kontext-pro"
        )
    with pytest.raises(ManifestError) as no_prompt:
        check_manifest_text("id,seed\na,1\n", fmt="csv", default_endpoint="flux-kontext-pro")

    assert no_id.value.problems == ["line 1: the header lacks column(s) id"]
    assert no_prompt.value.problems == ["line 1: the header lacks column(s) prompt"]


# --- check_manifest_text and check_rows ------------------------------------------------------


def test_check_manifest_text_sets_bad_jsonl_rows_aside(tmp_path: Path) -> None:
    text = jsonl(row(id="a", images=["pics/a.png"]), row(id="b", params=[1]), row(id="c"))

    manifest = check_manifest_text(text, fmt="jsonl", base_folder=tmp_path)
    named = check_manifest_text(text, fmt="jsonl", source="upload.jsonl")

    assert manifest.source == "<text>"
    assert named.source == "upload.jsonl"
    assert [(r.id, r.line) for r in manifest.rows] == [("a", 1), ("c", 3)]
    assert manifest.rows[0].images == [str(tmp_path / "pics" / "a.png")]
    assert named.rows[0].images == ["pics/a.png"]
    assert [(r.line, r.id) for r in manifest.rejected] == [(2, "b")]
    assert manifest.rejected[0].problems == ("line 2 (b): params must be an object",)


def test_check_manifest_text_sets_bad_csv_rows_aside() -> None:
    text = (
        CSV_HEADER
        + "a,flux-kontext-pro,ok,,,1,\n"  # 2
        + "b,flux-kontext-pro,x,,,,7:3\n"  # 3
        + "c,p-image-edit,x,https://a/1.png|https://a/2.png,,,16:9\n"  # 4
        + "d,multi-image-kontext-pro,x,https://a/1.png,,,\n"  # 5
    )

    manifest = check_manifest_text(text, fmt="csv")

    assert [(r.id, r.line) for r in manifest.rows] == [("a", 2), ("c", 4)]
    assert manifest.rows[1].params == {"aspect_ratio": "16:9"}
    assert [(r.line, r.id, r.endpoint) for r in manifest.rejected] == [
        (3, "b", "flux-kontext-pro"),
        (5, "d", "multi-image-kontext-pro"),
    ]
    assert manifest.rejected[1].problems == (
        "line 5 (d): multi-image-kontext-pro takes 2 image(s), got 1",
    )


def test_check_manifest_text_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown manifest format 'xml'") as caught:
        check_manifest_text("<rows/>", fmt="xml")
    assert not isinstance(caught.value, ManifestError)


def test_check_rows_numbers_rows_from_one_and_keeps_images_as_given() -> None:
    raw = [
        row(id="a", images=["pics/a.png"], params={"seed": 4}),
        row(id="b", prompt=""),
        row(id="A"),
        row(id="c", endpoint="p-image-edit", images=IMAGES[:2]),
    ]

    manifest = check_rows(raw)
    named = check_rows(raw, source="api request")

    assert manifest.source == "<rows>"
    assert named.source == "api request"
    assert [(r.id, r.line) for r in manifest.rows] == [("a", 1), ("c", 4)]
    assert manifest.rows[0].images == ["pics/a.png"]
    assert manifest.rows[0].params == {"seed": 4}
    assert manifest.rows[1].images == IMAGES[:2]
    assert manifest.problems() == [
        "line 2 (b): prompt is required",
        "line 3 (A): id repeats line 1 (ids must be unique, also after sanitising)",
    ]


def test_check_rows_matches_what_the_same_jsonl_gives() -> None:
    raw = [
        row(id="a"),
        row(id="b", params={"aspect_ratio": "7:3"}),
        row(
            id="m",
            endpoint=REPLACE_BACKGROUND_THEN_MERGE,
            images=IMAGES[:2],
            background_prompt="a beach",
            params={"seed": 2},
        ),
    ]

    from_rows = check_rows(raw)
    from_text = check_manifest_text(jsonl(*raw), fmt="jsonl")

    assert from_rows.rows == from_text.rows
    assert from_rows.rejected == from_text.rejected


# --- defaults ----------------------------------------------------------------------------------


def test_a_default_applies_only_where_the_endpoint_has_the_field() -> None:
    manifest = check_rows(
        [
            row(id="flux", images=IMAGES[:1]),
            row(id="pedit", endpoint="p-image-edit", images=IMAGES[:1]),
            row(id="multi", endpoint="multi-image-kontext-max", images=IMAGES[:2]),
            row(
                id="merge",
                endpoint=REPLACE_BACKGROUND_THEN_MERGE,
                images=IMAGES[:2],
                background_prompt="a beach",
            ),
        ],
        defaults={"output_format": "jpg", "disable_safety_checker": True, "seed": 9},
    )

    assert manifest.rejected == []
    assert {r.id: r.params for r in manifest.rows} == {
        "flux": {"output_format": "jpg", "seed": 9},
        "pedit": {"disable_safety_checker": True, "seed": 9},
        "multi": {"output_format": "jpg", "seed": 9},
        "merge": {"output_format": "jpg", "seed": 9},
    }


def test_a_rows_own_values_win_over_the_defaults() -> None:
    manifest = check_rows(
        [
            row(id="own", params={"aspect_ratio": "16:9", "seed": -1}),
            row(id="none", params={}),
        ],
        defaults={"aspect_ratio": "1:1", "seed": 9},
    )

    assert {r.id: r.params for r in manifest.rows} == {
        "own": {"aspect_ratio": "16:9", "seed": -1},
        "none": {"aspect_ratio": "1:1", "seed": 9},
    }


def test_a_default_of_none_is_no_default() -> None:
    (parsed,) = check_rows([row()], defaults={"seed": None, "aspect_ratio": None}).rows

    assert parsed.params == {}


def test_a_default_the_endpoint_refuses_rejects_the_row() -> None:
    # 4:5 is a FLUX ratio but not a p-image-edit one.
    manifest = check_rows(
        [
            row(id="flux", images=IMAGES[:1]),
            row(id="pedit", endpoint="p-image-edit", images=IMAGES[:1]),
            row(
                id="pedit-own",
                endpoint="p-image-edit",
                images=IMAGES[:1],
                params={"aspect_ratio": "1:1"},
            ),
        ],
        defaults={"aspect_ratio": "4:5"},
    )

    assert {r.id: r.params for r in manifest.rows} == {
        "flux": {"aspect_ratio": "4:5"},
        "pedit-own": {"aspect_ratio": "1:1"},
    }
    (rejected,) = manifest.rejected
    assert (rejected.line, rejected.id, rejected.endpoint) == (2, "pedit", "p-image-edit")
    (problem,) = rejected.problems
    assert problem.startswith("line 2 (pedit): aspect_ratio: ")
    assert problem.endswith("(got '4:5')")


def test_a_default_within_one_step_but_not_the_other_rejects_a_merge_row() -> None:
    # safety_tolerance 5 is fine for flux-kontext-pro; multi-image-kontext-pro allows 0..2.
    manifest = check_rows(
        [
            row(id="flux", images=IMAGES[:1]),
            row(id="multi", endpoint="multi-image-kontext-pro", images=IMAGES[:2]),
            row(
                id="merge",
                endpoint=REPLACE_BACKGROUND_THEN_MERGE,
                images=IMAGES[:2],
                background_prompt="a beach",
            ),
            row(id="pedit", endpoint="p-image-edit", images=IMAGES[:1]),
        ],
        defaults={"safety_tolerance": 5},
    )

    assert {r.id: r.params for r in manifest.rows} == {
        "flux": {"safety_tolerance": 5},
        "pedit": {},
    }
    assert [(r.id, r.endpoint) for r in manifest.rejected] == [
        ("multi", "multi-image-kontext-pro"),
        ("merge", REPLACE_BACKGROUND_THEN_MERGE),
    ]
    for rejected in manifest.rejected:
        assert rejected.problems
        assert all(f"({rejected.id}): safety_tolerance: " in p for p in rejected.problems)
        assert all(p.endswith("(got 5)") for p in rejected.problems)


def test_defaults_fill_empty_csv_cells(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "id,endpoint,prompt,seed,aspect_ratio\n"
        "a,flux-kontext-pro,x,,\n"
        "b,flux-kontext-pro,y,3,16:9\n",
        encoding="utf-8",
    )

    manifest = load_manifest(str(path), defaults={"seed": 11, "aspect_ratio": "2:3"})

    assert manifest.rejected == []
    assert [(r.id, r.params) for r in manifest.rows] == [
        ("a", {"seed": 11, "aspect_ratio": "2:3"}),
        ("b", {"seed": 3, "aspect_ratio": "16:9"}),
    ]


# --- default_endpoint -------------------------------------------------------------------------


def test_a_default_endpoint_fills_rows_that_name_none() -> None:
    raw = [
        row(id="a", endpoint=None),
        row(id="b", endpoint=""),
        row(id="c", endpoint="p-image-edit", images=IMAGES[:1]),
        row(id="d", endpoint=None, images=IMAGES[:2]),
    ]

    manifest = check_rows(raw, default_endpoint="flux-kontext-pro")
    without = check_rows(raw)

    assert [(r.id, r.endpoint) for r in manifest.rows] == [
        ("a", "flux-kontext-pro"),
        ("b", "flux-kontext-pro"),
        ("c", "p-image-edit"),
    ]
    (rejected,) = manifest.rejected
    assert (rejected.id, rejected.endpoint) == ("d", "flux-kontext-pro")
    assert rejected.problems == ("line 4 (d): flux-kontext-pro takes 0 to 1 image(s), got 2",)
    assert "endpoint" not in raw[0]  # the caller's rows are left as they were
    assert [r.id for r in without.rows] == ["c"]
    assert without.problems()[0].startswith("line 1 (a): endpoint None is not one of")


def test_a_default_endpoint_chooses_which_defaults_apply() -> None:
    manifest = check_rows(
        [row(id="a", endpoint=None, images=IMAGES[:1])],
        default_endpoint="p-image-edit",
        defaults={"disable_safety_checker": True, "output_format": "jpg"},
    )

    (parsed,) = manifest.rows
    assert parsed.endpoint == "p-image-edit"
    assert parsed.params == {"disable_safety_checker": True}


def test_a_default_endpoint_can_be_the_two_step_flow() -> None:
    manifest = check_rows(
        [row(id="m", endpoint=None, images=IMAGES[:2], background_prompt="a beach")],
        default_endpoint=REPLACE_BACKGROUND_THEN_MERGE,
    )

    (parsed,) = manifest.rows
    assert parsed.endpoint == REPLACE_BACKGROUND_THEN_MERGE
    assert parsed.background_prompt == "a beach"


def test_csv_without_an_endpoint_column_needs_a_default_endpoint() -> None:
    text = (
        "id,prompt,images,seed\n"
        "a,make it blue,https://a/1.png,3\n"
        "b,make it red,https://a/1.png|https://a/2.png,\n"
        "c,,https://a/1.png,\n"
    )

    manifest = check_manifest_text(text, fmt="csv", default_endpoint="p-image-edit")
    with pytest.raises(ManifestError) as caught:
        check_manifest_text(text, fmt="csv")

    assert [(r.id, r.line, r.endpoint, r.params) for r in manifest.rows] == [
        ("a", 2, "p-image-edit", {"seed": 3}),
        ("b", 3, "p-image-edit", {}),
    ]
    assert manifest.rows[1].images == ["https://a/1.png", "https://a/2.png"]
    assert [(r.line, r.id, r.endpoint) for r in manifest.rejected] == [(4, "c", "p-image-edit")]
    assert caught.value.problems == ["line 1: the header lacks column(s) endpoint"]


def test_csv_with_an_endpoint_column_uses_the_default_for_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "id,endpoint,prompt,images\n"
        "a,,x,https://a/1.png\n"
        "b,multi-image-kontext-pro,y,https://a/1.png|https://a/2.png\n",
        encoding="utf-8",
    )

    manifest = load_manifest(str(path), default_endpoint="flux-kontext-max")

    assert [(r.id, r.endpoint) for r in manifest.rows] == [
        ("a", "flux-kontext-max"),
        ("b", "multi-image-kontext-pro"),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_unknown_default_endpoint_is_refused(fmt: str) -> None:
    with pytest.raises(ValueError, match="default endpoint 'flux-kontext-ultra' is not one of"):
        check_manifest_text(jsonl(row()), fmt=fmt, default_endpoint="flux-kontext-ultra")


# --- reading through an ObjectStore -----------------------------------------------------------


@pytest.fixture
def memory_store() -> Iterator[ObjectStore]:
    """A memory:// store private to this test (the memory filesystem is process-global)."""
    name = f"manifests-{uuid.uuid4().hex}"
    yield ObjectStore.from_url(f"memory://{name}")
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


def test_load_manifest_reads_through_a_store_of_the_same_protocol(
    memory_store: ObjectStore,
) -> None:
    url = memory_store.write(
        "batches/m.jsonl",
        jsonl(row(id="a", images=["pics/a.png"]), "{broken", row(id="b", endpoint=None)).encode(),
    )
    assert url.startswith("memory://")

    manifest = load_manifest(
        url, store=memory_store, default_endpoint="flux-kontext-pro", defaults={"seed": 4}
    )

    assert manifest.source == url
    assert [(r.id, r.line, r.endpoint) for r in manifest.rows] == [
        ("a", 1, "flux-kontext-pro"),
        ("b", 3, "flux-kontext-pro"),
    ]
    assert manifest.rows[0].images == ["pics/a.png"]  # not a local manifest: kept as given
    assert [r.params for r in manifest.rows] == [{"seed": 4}, {"seed": 4}]
    assert [r.line for r in manifest.rejected] == [2]


def test_a_csv_manifest_with_a_byte_order_mark_through_a_store(memory_store: ObjectStore) -> None:
    url = memory_store.write(
        "m.csv", "\ufeffid,endpoint,prompt,seed\na,flux-kontext-pro,x,5\n".encode()
    )

    manifest = load_manifest(url, store=memory_store)

    assert [(r.id, r.line, r.params) for r in manifest.rows] == [("a", 2, {"seed": 5})]


def test_a_missing_manifest_in_a_store_cannot_be_read(memory_store: ObjectStore) -> None:
    url = memory_store.url("missing.jsonl")

    with pytest.raises(ManifestError) as caught:
        load_manifest(url, store=memory_store)

    (problem,) = caught.value.problems
    assert problem.startswith("cannot read it: FileNotFoundError")
    assert caught.value.source == url


def test_whole_file_problems_through_a_store_still_raise(memory_store: ObjectStore) -> None:
    empty = memory_store.write("empty.jsonl", b"\n\n")
    headless = memory_store.write("headless.csv", b"prompt\nx\n")

    with pytest.raises(ManifestError) as no_rows:
        load_manifest(empty, store=memory_store)
    with pytest.raises(ManifestError) as no_header:
        load_manifest(headless, store=memory_store)

    assert no_rows.value.problems == ["no rows"]
    assert no_header.value.problems == ["line 1: the header lacks column(s) id, endpoint"]


def test_a_store_of_another_protocol_is_not_used(memory_store: ObjectStore, tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(jsonl(row(id="a", images=["pics/a.png"])), encoding="utf-8")

    manifest = load_manifest(str(path), store=memory_store)

    (parsed,) = manifest.rows
    assert parsed.images == [str(tmp_path.resolve() / "pics" / "a.png")]


def test_load_manifest_from_s3_through_the_store_needs_no_storage_options(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Nothing outside the store can reach S3 here: no credentials in the environment,
    # and an endpoint on loopback where nothing listens.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    store = ObjectStore.from_url("s3://outputs/batches", **storage_options(s3))
    url = store.write("catalogue.jsonl", (MANIFESTS / "catalogue.jsonl").read_bytes())
    assert url == "s3://outputs/batches/catalogue.jsonl"

    manifest = load_manifest(url, store=store, defaults={"output_format": "jpg"})

    assert [r.id for r in manifest.rows] == EXPECTED_IDS
    assert manifest.rejected == []
    assert manifest.source == url
    assert manifest.rows[0].params == {"aspect_ratio": "1:1", "seed": 7, "output_format": "jpg"}
    assert manifest.rows[2].params == {"aspect_ratio": "2:3", "seed": 11}  # p-image-edit


@pytest.mark.usefixtures("outputs_bucket_allowed")
def test_an_s3_manifest_without_credentials_cannot_be_read(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # "The file cannot be read" is a ManifestError, whatever the filesystem's reason;
    # the environment has no credentials and points nowhere but at a closed loopback port.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    s3.client().put_object(Bucket="outputs", Key="m.jsonl", Body=jsonl(row()).encode())
    local = ObjectStore.from_url(str(tmp_path / "outputs"))

    with pytest.raises(ManifestError) as caught:
        load_manifest("s3://outputs/m.jsonl", store=local)

    (problem,) = caught.value.problems
    assert problem.startswith("cannot read it: ")


def test_an_id_that_names_another_rows_intermediate_is_rejected() -> None:
    text = "\n".join(
        json.dumps(row)
        for row in (
            {
                "id": "scene",
                "endpoint": "replace_background_then_merge",
                "prompt": "merge",
                "background_prompt": "a beach",
                "images": ["https://example.com/a.png", "https://example.com/b.png"],
            },
            {
                "id": "Scene-Background",
                "endpoint": "flux-kontext-pro",
                "prompt": "edit",
                "images": ["https://example.com/c.png"],
            },
        )
    )

    manifest = check_manifest_text(text, fmt="jsonl")

    assert [row.id for row in manifest.rows] == ["scene"]
    (rejected,) = manifest.rejected
    assert rejected.line == 2
    assert "id scene-background names the intermediate image of line 1" in rejected.reason


# --- text no output name, log or results line can hold; reads that would not end --------------

SURROGATE = "\ud800"


def escaped_jsonl(*rows: dict[str, Any]) -> str:
    """Rows as JSONL with non-ASCII as escapes: a lone surrogate is written as ``\\ud800``."""
    return "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"id": f"sku-{SURROGATE}"}, "line 2: id, 'sku-\\ud800', is not valid text"),
        ({"prompt": f"a {SURROGATE}"}, "line 2 (r): prompt, 'a \\ud800', is not valid text"),
        ({"images": [f"a{SURROGATE}.png"]}, "line 2 (r): images[0], 'a\\ud800.png', is not valid"),
        ({"params": {"aspect_ratio": SURROGATE}}, "line 2 (r): params.aspect_ratio, '\\ud800', is"),
        ({"params": {SURROGATE: 1}}, "line 2 (r): a field name in params, '\\ud800', is not valid"),
        ({"endpoint": f"p{SURROGATE}"}, "line 2 (r): endpoint, 'p\\ud800', is not valid text"),
    ],
)
def test_a_lone_surrogate_anywhere_in_a_row_is_a_problem_of_its_line(
    bad: dict[str, Any], expected: str
) -> None:
    # JSON can spell a lone surrogate ("\ud800"); no file name, log line or results
    # manifest (UTF-8) can hold one, so the row is refused before anything is paid.
    text = escaped_jsonl(row(id="good"), row(**bad))

    manifest = check_manifest_text(text, fmt="jsonl")

    assert [r.id for r in manifest.rows] == ["good"]
    (rejected,) = manifest.rejected
    assert rejected.line == 2
    assert rejected.reason.startswith(expected), rejected.reason
    assert "lone surrogate" in rejected.reason
    # Everything kept about the rejected row can be written as UTF-8.
    rejected.reason.encode("utf-8")
    assert rejected.id in (None, "r")
    assert rejected.endpoint in (None, "flux-kontext-pro")


def test_a_background_prompt_is_checked_like_a_prompt() -> None:
    merge = {
        "id": "scene",
        "endpoint": REPLACE_BACKGROUND_THEN_MERGE,
        "prompt": "merge",
        "images": ["https://example.com/a.png", "https://example.com/b.png"],
    }
    text = escaped_jsonl(
        {**merge, "id": "nul", "background_prompt": "a\x00beach"},
        {**merge, "id": "long", "background_prompt": "b" * 10_001},
    )

    manifest = check_manifest_text(text, fmt="jsonl")

    assert manifest.rows == []
    nul, long = (r.reason for r in manifest.rejected)
    assert nul == (
        "line 1 (nul): background_prompt: must not contain a NUL character (got 'a\\x00beach')"
    )
    assert long.startswith(
        "line 2 (long): background_prompt: is 10001 characters long; the limit is 10000"
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[" * 100_000, "line 2: not valid JSON (nested too deeply to read)"),
        (
            '{"id": "s", "endpoint": "flux-kontext-pro", "prompt": "p", "params": {"seed": '
            + "9" * 5000
            + "}}",
            "line 2: not valid JSON (Exceeds the limit (4300 digits) for integer string "
            "conversion)",
        ),
        (
            json.dumps(row(id="deep", params={"seed": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]})),
            "line 2 (deep): params.seed[0][0][0][0][0][0][0][0][0][0][0][0][0][0]",
        ),
    ],
    ids=["100k-brackets", "5000-digit-seed", "nested-20-deep"],
)
def test_json_that_python_cannot_read_or_nests_too_deep_is_a_problem_of_its_line(
    line: str, expected: str
) -> None:
    manifest = check_manifest_text(jsonl(row(id="good"), line), fmt="jsonl")

    assert [r.id for r in manifest.rows] == ["good"]
    (rejected,) = manifest.rejected
    assert rejected.line == 2
    assert rejected.reason.startswith(expected), rejected.reason


def test_a_5000_digit_csv_cell_is_text_the_contract_refuses() -> None:
    text = (
        f"id,endpoint,prompt,seed\ngood,flux-kontext-pro,p,7\nbig,flux-kontext-pro,p,{'9' * 5000}\n"
    )

    manifest = check_manifest_text(text, fmt="csv")

    assert [r.id for r in manifest.rows] == ["good"]
    (rejected,) = manifest.rejected
    assert rejected.reason.startswith("line 3 (big): seed: Input should be a valid integer")


def test_a_csv_cell_over_the_csv_readers_limit_refuses_the_manifest_with_its_line() -> None:
    text = f"id,endpoint,prompt\ngood,flux-kontext-pro,p\nlong,flux-kontext-pro,{'x' * 131_073}\n"

    with pytest.raises(ManifestError) as caught:
        check_manifest_text(text, fmt="csv", source="long.csv")

    assert caught.value.problems == [
        "line 3: a cell is longer than 131072 characters; the manifest cannot be read past it"
    ]


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    """A manifest size limit of 1000 bytes, so that tests need no large files."""
    import segmind_core.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", 1000)
    return 1000


def over_the_cap(cap: int) -> bytes:
    body = jsonl(*(row(id=f"r{n}") for n in range(40))).encode()
    assert len(body) > cap
    return body


def test_a_local_manifest_over_the_size_limit_is_refused(small_cap: int, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(over_the_cap(small_cap))
    fits = tmp_path / "fits.jsonl"
    fits.write_bytes(over_the_cap(small_cap)[:small_cap].rsplit(b"\n", 1)[0] + b"\n")

    with pytest.raises(ManifestError) as caught:
        load_manifest(str(path))

    assert caught.value.problems == [
        "it is larger than 0 MiB (1000 bytes), the most a manifest may be; split it"
    ]
    assert load_manifest(str(fits)).rows


def test_a_manifest_in_a_store_over_the_size_limit_is_refused(
    small_cap: int, memory_store: ObjectStore
) -> None:
    url = memory_store.write("big.jsonl", over_the_cap(small_cap))

    with pytest.raises(ManifestError, match=r"larger than .* \(1000 bytes\)"):
        load_manifest(url, store=memory_store)


@pytest.mark.usefixtures("outputs_bucket_allowed")
def test_an_s3_manifest_over_the_size_limit_is_refused(small_cap: int, s3: S3Server) -> None:
    s3.client().put_object(Bucket="outputs", Key="big.jsonl", Body=over_the_cap(small_cap))

    with pytest.raises(ManifestError, match=r"larger than .* \(1000 bytes\)"):
        load_manifest("s3://outputs/big.jsonl", **storage_options(s3))


def test_an_s3a_manifest_is_read_through_the_store(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ambient settings point at a closed loopback port with made-up credentials: the
    # store's own (moto's) must be used, as for s3://.
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ambient-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = ObjectStore.from_url("s3://outputs/batches", **storage_options(s3))
    store.write("catalogue.jsonl", (MANIFESTS / "catalogue.jsonl").read_bytes())

    manifest = load_manifest("s3a://outputs/batches/catalogue.jsonl", store=store)

    assert [r.id for r in manifest.rows] == EXPECTED_IDS
