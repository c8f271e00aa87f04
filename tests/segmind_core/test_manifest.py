"""Batch manifests: JSONL and CSV rows, every problem reported at once, local and S3."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from segmind_core.errors import PermanentError
from segmind_core.manifest import (
    REPLACE_BACKGROUND_THEN_MERGE,
    ManifestError,
    ManifestRow,
    parse_manifest,
    read_manifest,
)
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


def test_file_url_resolves_images_like_a_plain_path() -> None:
    rows = read_manifest((MANIFESTS / "catalogue.jsonl").as_uri())

    assert [[Path(i) for i in r.images] for r in rows] == EXPECTED_IMAGES


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
        (json.dumps(row(id="///")), "line 1 (///): id '///' has no letters or digits"),
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
    with pytest.raises(ManifestError, match="cannot read it"):
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
