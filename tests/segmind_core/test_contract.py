"""Unit tests of the endpoint contract: enums, defaults, prices, sizes and validation."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from segmind_core.contract import (
    ENDPOINTS,
    FLUX_OUTPUT_SIZES,
    FluxAspectRatio,
    FluxKontextMaxRequest,
    FluxKontextProRequest,
    ImageSize,
    InvalidRequestError,
    MultiImageKontextMaxRequest,
    MultiImageKontextProRequest,
    OutputFormat,
    PImageEditAspectRatio,
    PImageEditRequest,
    UnknownEndpointError,
    get_endpoint,
    snap_aspect_ratio,
    validate_request,
)
from tests.support import DOCUMENTED_SIZES

URL = "https://example.com/a.png"
URL_2 = "https://example.com/b.png"
DATA_URI = "data:image/png;base64,iVBORw0KGgo="

ALL_SLUGS = [
    "flux-kontext-pro",
    "flux-kontext-max",
    "multi-image-kontext-pro",
    "multi-image-kontext-max",
    "p-image-edit",
]
FLUX_SLUGS = ALL_SLUGS[:4]

FLUX_RATIOS = [
    "match_input_image",
    "1:1",
    "16:9",
    "9:16",
    "4:3",
    "3:4",
    "3:2",
    "2:3",
    "4:5",
    "5:4",
    "21:9",
    "9:21",
    "2:1",
    "1:2",
]
P_IMAGE_EDIT_RATIOS = FLUX_RATIOS[:8]


def minimal_body(slug: str) -> dict[str, Any]:
    """The smallest valid body for ``slug``."""
    if slug.startswith("flux-kontext"):
        return {"prompt": "make it blue"}
    if slug.startswith("multi-image"):
        return {"prompt": "merge them", "input_image_1": URL, "input_image_2": URL_2}
    return {"prompt": "make it blue", "image_urls": [URL]}


def invalid(slug: str, body: dict[str, Any]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        validate_request(slug, body)
    return info.value


# Enums -------------------------------------------------------------------


def test_flux_aspect_ratio_has_the_14_documented_values_in_order() -> None:
    assert [r.value for r in FluxAspectRatio] == FLUX_RATIOS
    assert len(FluxAspectRatio) == 14


def test_p_image_edit_aspect_ratio_has_the_8_documented_values_in_order() -> None:
    assert [r.value for r in PImageEditAspectRatio] == P_IMAGE_EDIT_RATIOS
    assert len(PImageEditAspectRatio) == 8


def test_output_format_values_and_mime_types() -> None:
    assert [f.value for f in OutputFormat] == ["jpg", "png"]
    assert OutputFormat.JPG.content_type == "image/jpeg"
    assert OutputFormat.PNG.content_type == "image/png"
    assert OutputFormat.JPG.pillow_format == "JPEG"
    assert OutputFormat.PNG.pillow_format == "PNG"


# Defaults ----------------------------------------------------------------


@pytest.mark.parametrize("model", [FluxKontextProRequest, FluxKontextMaxRequest])
def test_flux_kontext_defaults(model: type[FluxKontextProRequest]) -> None:
    request = model(prompt="x")
    assert request.input_image is None
    assert request.aspect_ratio is FluxAspectRatio.MATCH_INPUT_IMAGE
    assert request.output_format is OutputFormat.PNG
    assert request.safety_tolerance == 2
    assert request.seed is None
    assert request.requested_seed() is None
    assert request.input_images() == []
    assert request.image_format() is OutputFormat.PNG


def test_multi_image_kontext_pro_defaults() -> None:
    request = MultiImageKontextProRequest(prompt="x", input_image_1=URL, input_image_2=URL_2)
    assert request.aspect_ratio is FluxAspectRatio.MATCH_INPUT_IMAGE
    assert request.output_format is OutputFormat.PNG
    assert request.safety_tolerance == 2
    assert request.seed is None
    assert request.input_images() == [("input_image_1", URL), ("input_image_2", URL_2)]


def test_multi_image_kontext_max_defaults() -> None:
    request = MultiImageKontextMaxRequest(prompt="x", input_image_1=URL, input_image_2=URL_2)
    assert request.aspect_ratio is FluxAspectRatio.R_16_9
    assert request.output_format is OutputFormat.JPG
    assert request.safety_tolerance == 1
    assert request.seed == 42
    assert request.requested_seed() == 42
    assert request.image_format() is OutputFormat.JPG


def test_p_image_edit_defaults() -> None:
    request = PImageEditRequest(prompt="x", image_urls=[URL, URL_2])
    assert request.aspect_ratio is PImageEditAspectRatio.MATCH_INPUT_IMAGE
    assert request.disable_safety_checker is False
    assert request.seed == 42
    assert request.requested_seed() == 42
    assert request.image_format() is OutputFormat.PNG
    assert request.input_images() == [("image_urls[0]", URL), ("image_urls[1]", URL_2)]


def test_p_image_edit_seed_minus_one_means_random() -> None:
    request = PImageEditRequest(prompt="x", image_urls=[URL], seed=-1)
    assert request.requested_seed() is None


def test_p_image_edit_has_no_output_format_field() -> None:
    error = invalid("p-image-edit", {**minimal_body("p-image-edit"), "output_format": "png"})
    assert error.field == "output_format"


# Registry ----------------------------------------------------------------


def test_registry_holds_exactly_the_five_slugs() -> None:
    assert sorted(ENDPOINTS) == sorted(ALL_SLUGS)
    for slug, endpoint in ENDPOINTS.items():
        assert endpoint.slug == slug


@pytest.mark.parametrize(
    ("slug", "price", "model"),
    [
        ("flux-kontext-pro", "0.05", FluxKontextProRequest),
        ("flux-kontext-max", "0.10", FluxKontextMaxRequest),
        ("multi-image-kontext-pro", "0.05", MultiImageKontextProRequest),
        ("multi-image-kontext-max", "0.10", MultiImageKontextMaxRequest),
        ("p-image-edit", "0.01", PImageEditRequest),
    ],
)
def test_registry_price_and_model(slug: str, price: str, model: type[Any]) -> None:
    endpoint = get_endpoint(slug)
    assert endpoint.price_usd == Decimal(price)
    assert endpoint.request_model is model


def test_flux_output_sizes_are_the_documented_ones() -> None:
    assert {k: (v.width, v.height) for k, v in FLUX_OUTPUT_SIZES.items()} == DOCUMENTED_SIZES


@pytest.mark.parametrize("slug", ALL_SLUGS)
def test_every_fixed_ratio_maps_to_its_documented_size(slug: str) -> None:
    endpoint = get_endpoint(slug)
    ratios = FLUX_RATIOS if slug in FLUX_SLUGS else P_IMAGE_EDIT_RATIOS
    assert endpoint.fixed_ratios() == ratios[1:]
    for ratio in ratios[1:]:
        request = validate_request(slug, {**minimal_body(slug), "aspect_ratio": ratio})
        size = endpoint.output_size(request, ImageSize(300, 1000))
        assert (size.width, size.height) == DOCUMENTED_SIZES[ratio], ratio


def test_p_image_edit_sizes_cover_only_its_seven_ratios() -> None:
    sizes = get_endpoint("p-image-edit").sizes
    assert sorted(sizes) == sorted(P_IMAGE_EDIT_RATIOS[1:])
    assert "4:5" not in sizes


# Snapping ----------------------------------------------------------------

FLUX_FIXED = FLUX_RATIOS[1:]
P_FIXED = P_IMAGE_EDIT_RATIOS[1:]


@pytest.mark.parametrize(
    ("width", "height", "flux", "p_image_edit"),
    [
        pytest.param(1920, 1080, "16:9", "16:9", id="1920x1080"),
        pytest.param(1080, 1920, "9:16", "9:16", id="1080x1920-portrait"),
        pytest.param(1000, 1000, "1:1", "1:1", id="1000x1000"),
        pytest.param(3000, 1000, "21:9", "16:9", id="3000x1000-very-wide"),
        pytest.param(1000, 3000, "9:21", "9:16", id="1000x3000-very-tall"),
        pytest.param(640, 480, "4:3", "4:3", id="640x480"),
        pytest.param(480, 640, "3:4", "3:4", id="480x640-portrait"),
        pytest.param(1200, 800, "3:2", "3:2", id="1200x800"),
        pytest.param(800, 1200, "2:3", "2:3", id="800x1200-portrait"),
        pytest.param(800, 1000, "4:5", "3:4", id="800x1000-portrait-4:5"),
        pytest.param(1000, 800, "5:4", "4:3", id="1000x800-5:4"),
        pytest.param(2000, 1000, "2:1", "16:9", id="2000x1000"),
        pytest.param(1000, 2000, "1:2", "9:16", id="1000x2000-portrait"),
    ],
)
def test_snap_aspect_ratio(width: int, height: int, flux: str, p_image_edit: str) -> None:
    assert snap_aspect_ratio(width, height, FLUX_FIXED) == flux
    assert snap_aspect_ratio(width, height, P_FIXED) == p_image_edit


def test_snap_tie_goes_to_the_first_candidate() -> None:
    # 2:1 is exactly as far (log scale) from 1:1 as from 4:1.
    assert snap_aspect_ratio(2000, 1000, ["1:1", "4:1"]) == "1:1"
    assert snap_aspect_ratio(2000, 1000, ["4:1", "1:1"]) == "4:1"


@pytest.mark.parametrize(("width", "height"), [(0, 100), (100, 0), (-5, 10)])
def test_snap_rejects_non_positive_sizes(width: int, height: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        snap_aspect_ratio(width, height, FLUX_FIXED)


# output_size ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "first_input", "expected"),
    [
        pytest.param("flux-kontext-pro", None, (1024, 1024), id="flux-no-input-1:1"),
        pytest.param("flux-kontext-pro", (1920, 1080), (1392, 752), id="flux-16:9-input"),
        pytest.param("flux-kontext-max", (3000, 1000), (1568, 672), id="flux-max-wide-21:9"),
        pytest.param("multi-image-kontext-pro", (800, 1000), (944, 1104), id="multi-pro-4:5"),
        pytest.param("p-image-edit", (3000, 1000), (1392, 752), id="p-image-edit-wide-16:9"),
        pytest.param("p-image-edit", (800, 1000), (880, 1184), id="p-image-edit-4:5-to-3:4"),
        pytest.param("p-image-edit", None, (1024, 1024), id="p-image-edit-no-input-1:1"),
    ],
)
def test_output_size_for_match_input_image(
    slug: str, first_input: tuple[int, int] | None, expected: tuple[int, int]
) -> None:
    endpoint = get_endpoint(slug)
    request = validate_request(slug, minimal_body(slug))
    assert request.requested_aspect_ratio() == "match_input_image"
    size = endpoint.output_size(request, ImageSize(*first_input) if first_input else None)
    assert (size.width, size.height) == expected


def test_output_size_of_an_explicit_ratio_ignores_the_input() -> None:
    endpoint = get_endpoint("flux-kontext-pro")
    request = validate_request("flux-kontext-pro", {"prompt": "x", "aspect_ratio": "9:21"})
    assert endpoint.output_size(request, ImageSize(1920, 1080)) == ImageSize(672, 1568)
    assert endpoint.output_size(request, None) == ImageSize(672, 1568)


def test_multi_image_kontext_max_default_ratio_is_16_9_whatever_the_input() -> None:
    endpoint = get_endpoint("multi-image-kontext-max")
    request = validate_request("multi-image-kontext-max", minimal_body("multi-image-kontext-max"))
    assert endpoint.output_size(request, ImageSize(480, 640)) == ImageSize(1392, 752)


# Payloads ----------------------------------------------------------------


def test_to_payload_omits_none_and_carries_enum_values_as_strings() -> None:
    request = validate_request(
        "flux-kontext-pro", {"prompt": "x", "aspect_ratio": "21:9", "output_format": "jpg"}
    )
    payload = request.to_payload()
    assert payload == {
        "prompt": "x",
        "aspect_ratio": "21:9",
        "output_format": "jpg",
        "safety_tolerance": 2,
    }
    assert "seed" not in payload
    assert "input_image" not in payload
    assert type(payload["aspect_ratio"]) is str
    assert type(payload["output_format"]) is str


def test_to_payload_keeps_a_given_seed_and_round_trips() -> None:
    body = {"prompt": "x", "image_urls": [URL], "aspect_ratio": "3:2", "seed": 0}
    payload = validate_request("p-image-edit", body).to_payload()
    assert payload == {**body, "disable_safety_checker": False}
    assert validate_request("p-image-edit", payload).to_payload() == payload


def test_multi_image_kontext_max_payload_carries_its_defaults() -> None:
    payload = validate_request(
        "multi-image-kontext-max", minimal_body("multi-image-kontext-max")
    ).to_payload()
    assert payload["aspect_ratio"] == "16:9"
    assert payload["output_format"] == "jpg"
    assert payload["safety_tolerance"] == 1
    assert payload["seed"] == 42


# Errors ------------------------------------------------------------------


def test_invalid_request_error_names_the_first_field_and_every_problem() -> None:
    error = invalid(
        "flux-kontext-pro",
        {"prompt": "   ", "safety_tolerance": 9, "seed": "7", "aspect_ration": "1:1"},
    )
    assert error.field == "prompt"
    assert error.slug == "flux-kontext-pro"
    assert len(error.problems) == 4
    message = str(error)
    assert message.startswith("invalid request for flux-kontext-pro: ")
    for name in ("prompt", "safety_tolerance", "seed", "aspect_ration"):
        assert f"{name}: " in message
    assert "unknown field" in message


def test_invalid_request_error_field_when_only_a_later_field_is_wrong() -> None:
    error = invalid("flux-kontext-pro", {"prompt": "x", "safety_tolerance": 7})
    assert error.field == "safety_tolerance"
    assert error.problems == ["safety_tolerance: Input should be less than or equal to 6 (got 7)"]


def test_invalid_request_error_names_the_list_index_of_a_bad_image() -> None:
    error = invalid("p-image-edit", {"prompt": "x", "image_urls": [URL, "s3://b/k.png"]})
    assert error.field == "image_urls[1]"
    assert "image_urls[1]" in str(error)


def test_long_bad_values_are_shortened_in_the_message() -> None:
    error = invalid("flux-kontext-pro", {"prompt": "x", "input_image": "s3://" + "a" * 500})
    assert error.field == "input_image"
    assert "..." in error.problems[0]
    assert len(error.problems[0]) < 200


@pytest.mark.parametrize("slug", ALL_SLUGS)
def test_unknown_field_is_rejected(slug: str) -> None:
    error = invalid(slug, {**minimal_body(slug), "aspect_ration": "1:1"})
    assert error.field == "aspect_ration"
    assert error.problems == ["aspect_ration: unknown field for this endpoint"]


@pytest.mark.parametrize(
    ("slug", "field", "value"),
    [
        pytest.param("flux-kontext-pro", "seed", "7", id="seed-string"),
        pytest.param("flux-kontext-pro", "seed", True, id="seed-bool"),
        pytest.param("flux-kontext-pro", "seed", 7.5, id="seed-float"),
        pytest.param("flux-kontext-max", "safety_tolerance", "2", id="tolerance-string"),
        pytest.param("flux-kontext-max", "safety_tolerance", True, id="tolerance-bool"),
        pytest.param("multi-image-kontext-pro", "seed", "42", id="multi-seed-string"),
        pytest.param("p-image-edit", "seed", "42", id="p-seed-string"),
        pytest.param("p-image-edit", "seed", None, id="p-seed-null"),
        pytest.param("p-image-edit", "disable_safety_checker", "false", id="bool-string"),
        pytest.param("p-image-edit", "disable_safety_checker", 0, id="bool-int"),
        pytest.param("p-image-edit", "image_urls", URL, id="image-urls-not-a-list"),
        pytest.param("flux-kontext-pro", "prompt", 123, id="prompt-int"),
        pytest.param("flux-kontext-pro", "input_image", 5, id="input-image-int"),
        pytest.param("flux-kontext-pro", "aspect_ratio", 1, id="aspect-ratio-int"),
        pytest.param("flux-kontext-pro", "output_format", "jpeg", id="output-format-jpeg"),
    ],
)
def test_strict_types(slug: str, field: str, value: Any) -> None:
    error = invalid(slug, {**minimal_body(slug), field: value})
    assert error.field == field
    assert len(error.problems) == 1


def test_strict_types_accept_json_types() -> None:
    request = validate_request(
        "p-image-edit",
        {"prompt": "x", "image_urls": [URL], "seed": 7, "disable_safety_checker": True},
    )
    assert isinstance(request, PImageEditRequest)
    assert request.seed == 7
    assert request.disable_safety_checker is True


def test_unknown_endpoint_error_lists_known_slugs() -> None:
    with pytest.raises(UnknownEndpointError) as info:
        get_endpoint("flux-kontext-ultra")
    message = str(info.value)
    assert info.value.slug == "flux-kontext-ultra"
    assert "'flux-kontext-ultra'" in message
    assert message.endswith("known endpoints: " + ", ".join(sorted(ALL_SLUGS)))


def test_validate_request_with_unknown_slug_raises_unknown_endpoint() -> None:
    with pytest.raises(UnknownEndpointError, match="p-image-edit"):
        validate_request("nope", {"prompt": "x"})


@pytest.mark.parametrize("slug", ALL_SLUGS)
def test_missing_prompt_is_rejected(slug: str) -> None:
    body = minimal_body(slug)
    del body["prompt"]
    error = invalid(slug, body)
    assert error.field == "prompt"
    assert error.problems == ["prompt: Field required"]


@pytest.mark.parametrize("prompt", ["", " ", "\t\n  "])
@pytest.mark.parametrize("slug", ALL_SLUGS)
def test_blank_prompt_is_rejected(slug: str, prompt: str) -> None:
    error = invalid(slug, {**minimal_body(slug), "prompt": prompt})
    assert error.field == "prompt"
    assert "must not be empty" in error.problems[0]


@pytest.mark.parametrize(
    ("slug", "missing"),
    [
        ("multi-image-kontext-pro", "input_image_1"),
        ("multi-image-kontext-pro", "input_image_2"),
        ("multi-image-kontext-max", "input_image_1"),
        ("multi-image-kontext-max", "input_image_2"),
        ("p-image-edit", "image_urls"),
    ],
)
def test_missing_required_images_are_rejected(slug: str, missing: str) -> None:
    body = minimal_body(slug)
    del body[missing]
    error = invalid(slug, body)
    assert error.field == missing
    assert error.problems == [f"{missing}: Field required"]


# Bounds ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "field", "value", "ok"),
    [
        ("flux-kontext-pro", "safety_tolerance", 0, True),
        ("flux-kontext-pro", "safety_tolerance", 6, True),
        ("flux-kontext-pro", "safety_tolerance", -1, False),
        ("flux-kontext-pro", "safety_tolerance", 7, False),
        ("flux-kontext-max", "safety_tolerance", 6, True),
        ("flux-kontext-max", "safety_tolerance", 7, False),
        ("multi-image-kontext-pro", "safety_tolerance", 0, True),
        ("multi-image-kontext-pro", "safety_tolerance", 2, True),
        ("multi-image-kontext-pro", "safety_tolerance", -1, False),
        ("multi-image-kontext-pro", "safety_tolerance", 3, False),
        ("multi-image-kontext-max", "safety_tolerance", 0, True),
        ("multi-image-kontext-max", "safety_tolerance", 2, True),
        ("multi-image-kontext-max", "safety_tolerance", -1, False),
        ("multi-image-kontext-max", "safety_tolerance", 3, False),
        ("p-image-edit", "seed", -1, True),
        ("p-image-edit", "seed", 999_999_999_999_999, True),
        ("p-image-edit", "seed", -2, False),
        ("p-image-edit", "seed", 1_000_000_000_000_000, False),
    ],
    ids=lambda v: str(v),
)
def test_numeric_bounds(slug: str, field: str, value: int, ok: bool) -> None:
    body = {**minimal_body(slug), field: value}
    if ok:
        assert getattr(validate_request(slug, body), field) == value
    else:
        assert invalid(slug, body).field == field


@pytest.mark.parametrize(
    ("input_image", "tolerance", "effective"),
    [
        pytest.param(URL, 6, 2, id="input-6-capped-to-2"),
        pytest.param(URL, 3, 2, id="input-3-capped-to-2"),
        pytest.param(URL, 2, 2, id="input-2"),
        pytest.param(URL, 0, 0, id="input-0"),
        pytest.param(None, 6, 6, id="no-input-6"),
        pytest.param(None, 0, 0, id="no-input-0"),
    ],
)
@pytest.mark.parametrize("model", [FluxKontextProRequest, FluxKontextMaxRequest])
def test_effective_safety_tolerance(
    model: type[FluxKontextProRequest], input_image: str | None, tolerance: int, effective: int
) -> None:
    request = model(prompt="x", input_image=input_image, safety_tolerance=tolerance)
    assert request.safety_tolerance == tolerance
    assert request.effective_safety_tolerance() == effective


@pytest.mark.parametrize("count", [1, 5], ids=lambda n: f"{n}-urls")
def test_p_image_edit_accepts_one_to_five_images(count: int) -> None:
    urls = [f"https://example.com/{i}.png" for i in range(count)]
    request = validate_request("p-image-edit", {"prompt": "x", "image_urls": urls})
    assert len(request.input_images()) == count


@pytest.mark.parametrize("count", [0, 6], ids=lambda n: f"{n}-urls")
def test_p_image_edit_rejects_zero_or_six_images(count: int) -> None:
    urls = [f"https://example.com/{i}.png" for i in range(count)]
    error = invalid("p-image-edit", {"prompt": "x", "image_urls": urls})
    assert error.field == "image_urls"
    assert ("at least 1" if count == 0 else "at most 5") in error.problems[0]


@pytest.mark.parametrize("ratio", ["4:5", "5:4", "21:9", "9:21", "2:1", "1:2"])
def test_p_image_edit_rejects_flux_only_ratios(ratio: str) -> None:
    error = invalid("p-image-edit", {**minimal_body("p-image-edit"), "aspect_ratio": ratio})
    assert error.field == "aspect_ratio"
    flux = validate_request("flux-kontext-pro", {"prompt": "x", "aspect_ratio": ratio})
    assert flux.requested_aspect_ratio() == ratio


@pytest.mark.parametrize("slug", ALL_SLUGS)
@pytest.mark.parametrize("ratio", ["7:3", "1:1 ", "16/9", "MATCH_INPUT_IMAGE", ""])
def test_invalid_aspect_ratio_is_rejected(slug: str, ratio: str) -> None:
    error = invalid(slug, {**minimal_body(slug), "aspect_ratio": ratio})
    assert error.field == "aspect_ratio"


# Image references ------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        pytest.param("http://example.com/a.png", id="http"),
        pytest.param("https://example.com/a.png?x=1", id="https-query"),
        pytest.param("http://127.0.0.1:8080/a.jpg", id="http-ip-port"),
        pytest.param(DATA_URI, id="data-uri-png"),
        pytest.param("data:image/jpeg;base64,/9j/4AAQ", id="data-uri-jpeg"),
    ],
)
@pytest.mark.parametrize("slug", ALL_SLUGS)
def test_image_refs_accepted(slug: str, ref: str) -> None:
    body = minimal_body(slug)
    if slug.startswith("flux-kontext"):
        body["input_image"] = ref
    elif slug.startswith("multi-image"):
        body["input_image_2"] = ref
    else:
        body["image_urls"] = [URL, ref]
    request = validate_request(slug, body)
    assert request.input_images()[-1][1] == ref


@pytest.mark.parametrize(
    "ref",
    [
        pytest.param("s3://bucket/key.png", id="s3"),
        pytest.param("/tmp/a.png", id="local-path"),  # noqa: S108 - never touched
        pytest.param("a.png", id="relative-path"),
        pytest.param("file:///tmp/a.png", id="file-url"),
        pytest.param("ftp://x", id="ftp"),
        pytest.param("http://", id="http-no-host"),
        pytest.param("https:///a.png", id="https-no-host"),
        pytest.param("data:image/png;base64,", id="data-uri-empty"),
        pytest.param("data:image/png,iVBORw0KGgo=", id="data-uri-not-base64"),
        pytest.param("data:image/png;base64", id="data-uri-no-comma"),
        pytest.param("data:text/plain;base64,aGVsbG8=", id="data-uri-not-image"),
        pytest.param("", id="empty"),
    ],
)
@pytest.mark.parametrize("slug", ALL_SLUGS)
def test_image_refs_rejected(slug: str, ref: str) -> None:
    body = minimal_body(slug)
    if slug.startswith("flux-kontext"):
        body["input_image"], field = ref, "input_image"
    elif slug.startswith("multi-image"):
        body["input_image_1"], field = ref, "input_image_1"
    else:
        body["image_urls"], field = [ref], "image_urls[0]"
    error = invalid(slug, body)
    assert error.field == field
    assert len(error.problems) == 1
