"""Valid and invalid requests per slug, over real HTTP against the emulator's v1 API."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from emulator import SegmindEmulator
from tests.conftest import EmulatorFactory
from tests.support import API_KEY, DOCUMENTED_SIZES, decode, file_server, image_bytes, image_uri

# Small inputs keep requests fast; their shapes pick the match_input_image bucket.
COLORS = [(200, 40, 40), (40, 160, 60), (30, 60, 200), (220, 200, 40), (120, 40, 160)]


def small(width: int = 64, height: int = 48, index: int = 0, fmt: str = "PNG") -> str:
    """A data URI of a small solid image of the given shape."""
    return image_uri(COLORS[index % len(COLORS)], (width, height), fmt)


IMG_4_3 = small(64, 48, 0)
IMG_4_3_B = small(64, 48, 1)

SLUGS = [
    "flux-kontext-pro",
    "flux-kontext-max",
    "multi-image-kontext-pro",
    "multi-image-kontext-max",
    "p-image-edit",
]
FLUX_SLUGS = SLUGS[:4]
PRICES = {
    "flux-kontext-pro": "0.05",
    "flux-kontext-max": "0.10",
    "multi-image-kontext-pro": "0.05",
    "multi-image-kontext-max": "0.10",
    "p-image-edit": "0.01",
}
DEFAULT_FORMAT = {
    "flux-kontext-pro": "PNG",
    "flux-kontext-max": "PNG",
    "multi-image-kontext-pro": "PNG",
    "multi-image-kontext-max": "JPEG",
    "p-image-edit": "PNG",
}
CONTENT_TYPE = {"PNG": "image/png", "JPEG": "image/jpeg"}

SIZES = DOCUMENTED_SIZES
FLUX_RATIOS = list(SIZES)
P_IMAGE_EDIT_RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"]
FLUX_ONLY_RATIOS = [r for r in FLUX_RATIOS if r not in P_IMAGE_EDIT_RATIOS]


def body_for(slug: str, **fields: Any) -> dict[str, Any]:
    """A valid body for ``slug`` with small inputs, updated with ``fields``."""
    if slug.startswith("flux-kontext"):
        body: dict[str, Any] = {"prompt": "make it blue", "input_image": IMG_4_3}
    elif slug.startswith("multi-image"):
        body = {"prompt": "merge them", "input_image_1": IMG_4_3, "input_image_2": IMG_4_3_B}
    else:
        body = {"prompt": "make it blue", "image_urls": [IMG_4_3]}
    body.update(fields)
    return body


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[SegmindEmulator]:
    """One emulator for the whole module, with credits for every test in it."""
    with SegmindEmulator(api_key=API_KEY, credits_usd=Decimal("1000")) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def client(shared_emulator: SegmindEmulator) -> Iterator[httpx.Client]:
    """An httpx client for the shared emulator, sending the right key."""
    with httpx.Client(
        base_url=shared_emulator.url, headers={"x-api-key": API_KEY}, timeout=30.0
    ) as http:
        yield http


def post(client: httpx.Client, slug: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(f"/v1/{slug}", json=body)


def assert_image(response: httpx.Response, size: tuple[int, int], fmt: str) -> bytes:
    """The response is a 200 image of exactly ``size`` pixels in ``fmt``; returns the bytes."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE[fmt]
    image = decode(response.content)
    assert image.format == fmt
    assert image.size == size
    return response.content


def assert_error(response: httpx.Response, status: int, *mentions: str) -> str:
    """The response is a JSON ``{"error": str}`` with ``status``, mentioning each string."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert isinstance(payload, dict)
    assert set(payload) == {"error"}
    message = payload["error"]
    assert isinstance(message, str)
    assert message
    for text in mentions:
        assert text in message, f"{text!r} not in {message!r}"
    return message


def assert_bad_field(response: httpx.Response, field: str) -> None:
    """A 400 whose error names ``field`` as the offending field."""
    message = assert_error(response, 400, field)
    assert re.search(rf"(^|; ){re.escape(field)}(\[\d+\])?: ", message), message


# Every aspect ratio, size and format ---------------------------------------


RATIO_CASES = [
    pytest.param(slug, ratio, id=f"{slug}-{ratio}")
    for slug in SLUGS
    for ratio in (FLUX_RATIOS if slug in FLUX_SLUGS else P_IMAGE_EDIT_RATIOS)
]


@pytest.mark.parametrize(("slug", "ratio"), RATIO_CASES)
def test_every_aspect_ratio_gives_its_documented_size(
    client: httpx.Client, slug: str, ratio: str
) -> None:
    response = post(client, slug, body_for(slug, aspect_ratio=ratio))
    assert_image(response, SIZES[ratio], DEFAULT_FORMAT[slug])
    assert response.headers["x-cost"] == PRICES[slug]
    assert re.fullmatch(r"\d+\.\d\d", response.headers["x-remaining-credits"])


@pytest.mark.parametrize("fmt", ["jpg", "png"])
@pytest.mark.parametrize("slug", FLUX_SLUGS)
def test_output_format_chooses_jpeg_or_png(client: httpx.Client, slug: str, fmt: str) -> None:
    response = post(client, slug, body_for(slug, aspect_ratio="1:1", output_format=fmt))
    assert_image(response, SIZES["1:1"], "JPEG" if fmt == "jpg" else "PNG")


def test_p_image_edit_is_always_png_and_takes_no_output_format(client: httpx.Client) -> None:
    response = post(client, "p-image-edit", body_for("p-image-edit", aspect_ratio="16:9"))
    assert_image(response, SIZES["16:9"], "PNG")
    response = post(client, "p-image-edit", body_for("p-image-edit", output_format="jpg"))
    assert_bad_field(response, "output_format")


# match_input_image ------------------------------------------------------


MATCH_CASES = [
    pytest.param("flux-kontext-pro", {"input_image": small(64, 48)}, "4:3", id="flux-pro-64x48"),
    pytest.param("flux-kontext-pro", {"input_image": small(64, 36)}, "16:9", id="flux-pro-64x36"),
    pytest.param("flux-kontext-pro", {"input_image": small(48, 64)}, "3:4", id="flux-pro-48x64"),
    pytest.param(
        "flux-kontext-pro", {"input_image": small(96, 32)}, "21:9", id="flux-pro-96x32-wide"
    ),
    pytest.param("flux-kontext-pro", {"input_image": None}, "1:1", id="flux-pro-no-input"),
    pytest.param("flux-kontext-max", {"input_image": small(40, 50)}, "4:5", id="flux-max-40x50"),
    pytest.param(
        "flux-kontext-max", {"input_image": small(32, 96)}, "9:21", id="flux-max-32x96-tall"
    ),
    pytest.param(
        "flux-kontext-max",
        {"input_image": small(64, 64, fmt="JPEG")},
        "1:1",
        id="flux-max-64x64-jpeg-input",
    ),
    pytest.param(
        "multi-image-kontext-pro",
        {"input_image_1": small(64, 36, 0), "input_image_2": small(48, 64, 1)},
        "16:9",
        id="multi-pro-first-64x36",
    ),
    pytest.param(
        "multi-image-kontext-pro",
        {"input_image_1": small(48, 64, 0), "input_image_2": small(64, 36, 1)},
        "3:4",
        id="multi-pro-first-48x64",
    ),
    pytest.param(
        "multi-image-kontext-max",
        {
            "aspect_ratio": "match_input_image",
            "input_image_1": small(50, 40, 0),
            "input_image_2": small(32, 96, 1),
        },
        "5:4",
        id="multi-max-explicit-match-50x40",
    ),
    pytest.param(
        "p-image-edit", {"image_urls": [small(96, 32)]}, "16:9", id="p-image-edit-96x32-wide"
    ),
    pytest.param(
        "p-image-edit", {"image_urls": [small(64, 32)]}, "16:9", id="p-image-edit-64x32-2:1"
    ),
    pytest.param("p-image-edit", {"image_urls": [small(40, 50)]}, "3:4", id="p-image-edit-40x50"),
    pytest.param("p-image-edit", {"image_urls": [small(64, 64)]}, "1:1", id="p-image-edit-64x64"),
    pytest.param(
        "p-image-edit",
        {"image_urls": [small(32, 48, i) if i == 0 else small(96, 32, i) for i in range(5)]},
        "2:3",
        id="p-image-edit-five-inputs-first-32x48",
    ),
]


@pytest.mark.parametrize(("slug", "fields", "ratio"), MATCH_CASES)
def test_match_input_image_snaps_the_first_input(
    client: httpx.Client, slug: str, fields: dict[str, Any], ratio: str
) -> None:
    body = body_for(slug, **fields)
    body = {key: value for key, value in body.items() if value is not None}
    response = post(client, slug, body)
    assert_image(response, SIZES[ratio], DEFAULT_FORMAT[slug])


def test_multi_image_kontext_max_defaults_to_16_9_jpeg(client: httpx.Client) -> None:
    body = body_for(
        "multi-image-kontext-max", input_image_1=small(48, 64), input_image_2=small(40, 50, 1)
    )
    response = post(client, "multi-image-kontext-max", body)
    assert_image(response, SIZES["16:9"], "JPEG")
    assert response.headers["x-seed-value"] == "42"


def test_match_input_image_with_a_loopback_url_input(client: httpx.Client) -> None:
    files = {"/wide.png": (200, image_bytes(size=(64, 36)), "image/png")}
    with file_server(files) as base:
        response = post(
            client, "flux-kontext-pro", body_for("flux-kontext-pro", input_image=f"{base}/wide.png")
        )
    assert_image(response, SIZES["16:9"], "PNG")


# Numeric bounds -----------------------------------------------------------


BOUND_CASES = [
    pytest.param(slug, "safety_tolerance", value, status, id=f"{slug}-tolerance-{value}-{status}")
    for slug, low, high in [
        ("flux-kontext-pro", 0, 6),
        ("flux-kontext-max", 0, 6),
        ("multi-image-kontext-pro", 0, 2),
        ("multi-image-kontext-max", 0, 2),
    ]
    for value, status in [(low, 200), (high, 200), (low - 1, 400), (high + 1, 400)]
] + [
    pytest.param("p-image-edit", "seed", value, status, id=f"p-image-edit-seed-{value}-{status}")
    for value, status in [
        (-1, 200),
        (0, 200),
        (999_999_999_999_999, 200),
        (-2, 400),
        (1_000_000_000_000_000, 400),
    ]
]


@pytest.mark.parametrize(("slug", "field", "value", "status"), BOUND_CASES)
def test_numeric_bounds(
    client: httpx.Client, slug: str, field: str, value: int, status: int
) -> None:
    response = post(client, slug, body_for(slug, aspect_ratio="1:1", **{field: value}))
    if status == 200:
        assert_image(response, SIZES["1:1"], DEFAULT_FORMAT[slug])
    else:
        assert_bad_field(response, field)


def test_flux_tolerance_above_2_is_accepted_without_an_input(client: httpx.Client) -> None:
    body = {"prompt": "a red barn", "aspect_ratio": "1:1", "safety_tolerance": 6}
    assert_image(post(client, "flux-kontext-pro", body), SIZES["1:1"], "PNG")


def test_p_image_edit_seed_minus_one_draws_a_random_seed(client: httpx.Client) -> None:
    response = post(client, "p-image-edit", body_for("p-image-edit", seed=-1))
    assert response.status_code == 200, response.text
    seed = response.headers["x-seed-value"]
    assert re.fullmatch(r"\d+", seed), seed


def test_p_image_edit_largest_seed_is_echoed(client: httpx.Client) -> None:
    response = post(client, "p-image-edit", body_for("p-image-edit", seed=999_999_999_999_999))
    assert response.status_code == 200, response.text
    assert response.headers["x-seed-value"] == "999999999999999"


@pytest.mark.parametrize("count", [1, 5], ids=lambda n: f"{n}-images")
def test_p_image_edit_accepts_one_to_five_images(client: httpx.Client, count: int) -> None:
    urls = [small(64, 36, i) for i in range(count)]
    response = post(client, "p-image-edit", body_for("p-image-edit", image_urls=urls))
    assert_image(response, SIZES["16:9"], "PNG")


@pytest.mark.parametrize("count", [0, 6], ids=lambda n: f"{n}-images")
def test_p_image_edit_rejects_zero_or_six_images(client: httpx.Client, count: int) -> None:
    urls = [small(64, 36, i) for i in range(count)]
    response = post(client, "p-image-edit", body_for("p-image-edit", image_urls=urls))
    assert_bad_field(response, "image_urls")


# Missing fields, wrong types, unknown fields ---------------------------------


MISSING_CASES = [
    pytest.param(slug, field, id=f"{slug}-without-{field}")
    for slug, fields in [
        ("flux-kontext-pro", ["prompt"]),
        ("flux-kontext-max", ["prompt"]),
        ("multi-image-kontext-pro", ["prompt", "input_image_1", "input_image_2"]),
        ("multi-image-kontext-max", ["prompt", "input_image_1", "input_image_2"]),
        ("p-image-edit", ["prompt", "image_urls"]),
    ]
    for field in fields
]


@pytest.mark.parametrize(("slug", "field"), MISSING_CASES)
def test_missing_required_field(client: httpx.Client, slug: str, field: str) -> None:
    body = body_for(slug)
    del body[field]
    response = post(client, slug, body)
    message = assert_error(response, 400, field)
    assert f"{field}: Field required" in message


@pytest.mark.parametrize("slug", SLUGS)
def test_empty_object_names_every_required_field(client: httpx.Client, slug: str) -> None:
    required = {
        "flux-kontext-pro": ["prompt"],
        "flux-kontext-max": ["prompt"],
        "multi-image-kontext-pro": ["prompt", "input_image_1", "input_image_2"],
        "multi-image-kontext-max": ["prompt", "input_image_1", "input_image_2"],
        "p-image-edit": ["prompt", "image_urls"],
    }[slug]
    assert_error(post(client, slug, {}), 400, *required)


WRONG_TYPE_CASES = [
    pytest.param("flux-kontext-pro", "seed", "7", id="flux-pro-seed-string"),
    pytest.param("flux-kontext-pro", "seed", True, id="flux-pro-seed-bool"),
    pytest.param("flux-kontext-pro", "seed", 1.5, id="flux-pro-seed-float"),
    pytest.param("flux-kontext-max", "safety_tolerance", "2", id="flux-max-tolerance-string"),
    pytest.param("flux-kontext-max", "safety_tolerance", True, id="flux-max-tolerance-bool"),
    pytest.param("flux-kontext-pro", "prompt", 123, id="flux-pro-prompt-int"),
    pytest.param("flux-kontext-pro", "prompt", None, id="flux-pro-prompt-null"),
    pytest.param("flux-kontext-pro", "prompt", "   ", id="flux-pro-prompt-blank"),
    pytest.param("flux-kontext-pro", "input_image", 5, id="flux-pro-input-int"),
    pytest.param("flux-kontext-pro", "input_image", "s3://bucket/a.png", id="flux-pro-input-s3"),
    pytest.param("flux-kontext-pro", "input_image", "ftp://x", id="flux-pro-input-ftp"),
    pytest.param("flux-kontext-max", "input_image", "/tmp/a.png", id="flux-max-input-path"),  # noqa: S108
    pytest.param(
        "flux-kontext-max", "input_image", "data:image/png;base64,", id="flux-max-input-empty-data"
    ),
    pytest.param("flux-kontext-pro", "output_format", "jpeg", id="flux-pro-format-jpeg"),
    pytest.param("flux-kontext-pro", "aspect_ratio", 1, id="flux-pro-ratio-int"),
    pytest.param("multi-image-kontext-pro", "seed", "42", id="multi-pro-seed-string"),
    pytest.param("multi-image-kontext-pro", "input_image_2", ["x"], id="multi-pro-input-list"),
    pytest.param("multi-image-kontext-max", "safety_tolerance", 1.5, id="multi-max-tolerance-1.5"),
    pytest.param("multi-image-kontext-max", "input_image_1", None, id="multi-max-input-null"),
    pytest.param("p-image-edit", "seed", "42", id="p-image-edit-seed-string"),
    pytest.param("p-image-edit", "seed", None, id="p-image-edit-seed-null"),
    pytest.param("p-image-edit", "disable_safety_checker", "false", id="p-image-edit-bool-string"),
    pytest.param("p-image-edit", "disable_safety_checker", 0, id="p-image-edit-bool-int"),
    pytest.param("p-image-edit", "image_urls", IMG_4_3, id="p-image-edit-urls-not-list"),
    pytest.param("p-image-edit", "image_urls", [5], id="p-image-edit-urls-int-item"),
    pytest.param("p-image-edit", "image_urls", ["s3://b/k.png"], id="p-image-edit-urls-s3"),
]


@pytest.mark.parametrize(("slug", "field", "value"), WRONG_TYPE_CASES)
def test_wrong_type_or_value(client: httpx.Client, slug: str, field: str, value: Any) -> None:
    response = post(client, slug, body_for(slug, **{field: value}))
    assert_bad_field(response, field)


UNKNOWN_FIELD_CASES = [
    pytest.param(slug, "aspect_ration", id=f"{slug}-aspect_ration") for slug in SLUGS
] + [
    pytest.param("flux-kontext-pro", "image_urls", id="flux-pro-image_urls"),
    pytest.param("flux-kontext-max", "negative_prompt", id="flux-max-negative_prompt"),
    pytest.param("multi-image-kontext-pro", "input_image", id="multi-pro-input_image"),
    pytest.param("p-image-edit", "safety_tolerance", id="p-image-edit-safety_tolerance"),
]


@pytest.mark.parametrize(("slug", "field"), UNKNOWN_FIELD_CASES)
def test_unknown_field_is_rejected(client: httpx.Client, slug: str, field: str) -> None:
    response = post(client, slug, body_for(slug, **{field: "1:1"}))
    message = assert_error(response, 400, field)
    assert f"{field}: unknown field for this endpoint" in message


@pytest.mark.parametrize("slug", SLUGS)
def test_invalid_aspect_ratio_names_the_field(client: httpx.Client, slug: str) -> None:
    response = post(client, slug, body_for(slug, aspect_ratio="7:3"))
    message = assert_error(response, 400, "aspect_ratio")
    assert "7:3" in message


@pytest.mark.parametrize("ratio", FLUX_ONLY_RATIOS)
def test_p_image_edit_rejects_flux_only_ratios(client: httpx.Client, ratio: str) -> None:
    response = post(client, "p-image-edit", body_for("p-image-edit", aspect_ratio=ratio))
    assert_bad_field(response, "aspect_ratio")


def test_every_problem_is_named_and_the_first_comes_first(client: httpx.Client) -> None:
    body = {"prompt": "", "safety_tolerance": 9, "bogus": 1}
    message = assert_error(post(client, "flux-kontext-pro", body), 400)
    assert message.startswith("prompt: ")
    assert "safety_tolerance: " in message
    assert "bogus: unknown field for this endpoint" in message


# Routing, body and headers --------------------------------------------------------------


@pytest.mark.parametrize(
    "slug", ["flux-kontext-ultra", "FLUX-KONTEXT-PRO", "flux_kontext_pro", "seedream-4"]
)
def test_unknown_slug_is_404(client: httpx.Client, slug: str) -> None:
    response = post(client, slug, body_for("flux-kontext-pro"))
    assert_error(response, 404, slug)


@pytest.mark.parametrize(
    ("raw", "mention"),
    [
        pytest.param(b'{"prompt": "x",', "not valid JSON", id="truncated"),
        pytest.param(b"{'prompt': 'x'}", "not valid JSON", id="single-quotes"),
        pytest.param(b"", "not valid JSON", id="empty"),
        pytest.param(b"\xff\xfe\x00", "not valid JSON", id="not-utf8"),
        pytest.param(b'["prompt"]', "JSON object", id="array"),
        pytest.param(b'"prompt"', "JSON object", id="string"),
    ],
)
def test_invalid_json_body_is_400(client: httpx.Client, raw: bytes, mention: str) -> None:
    response = client.post(
        "/v1/flux-kontext-pro", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, mention)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"],
    ids=lambda ct: ct or "no-content-type",
)
def test_body_without_json_content_type_is_406(
    client: httpx.Client, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(
        "/v1/flux-kontext-pro", content=b'{"prompt": "a red barn"}', headers=headers
    )
    assert ("content-type" in response.request.headers) == (content_type is not None)
    assert_error(response, 406, "content type")


def test_json_content_type_with_charset_is_accepted(client: httpx.Client) -> None:
    response = client.post(
        "/v1/flux-kontext-pro",
        content=b'{"prompt": "a red barn", "aspect_ratio": "1:1"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert_image(response, SIZES["1:1"], "PNG")


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-api-key": "wrong-key"}],
    ids=["missing-key", "wrong-key"],
)
def test_bad_key_is_401(shared_emulator: SegmindEmulator, headers: dict[str, str]) -> None:
    response = httpx.post(
        f"{shared_emulator.url}/v1/flux-kontext-pro",
        json=body_for("flux-kontext-pro"),
        headers=headers,
        timeout=30.0,
    )
    assert_error(response, 401)
    assert "x-remaining-credits" not in response.headers


def test_validation_errors_are_not_billed(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(credits_usd=Decimal("1"))
    with httpx.Client(base_url=emulator.url, headers={"x-api-key": API_KEY}) as http:
        bad = post(http, "flux-kontext-max", body_for("flux-kontext-max", seed="7"))
        assert_bad_field(bad, "seed")
        assert bad.headers["x-remaining-credits"] == "1.00"
        good = post(http, "flux-kontext-max", body_for("flux-kontext-max", aspect_ratio="1:1"))
        assert good.status_code == 200, good.text
        assert good.headers["x-cost"] == "0.10"
        assert good.headers["x-remaining-credits"] == "0.90"
    assert emulator.stats()["billed"] == 1


# Determinism and seeds ----------------------------------------------------------


SEEDED = [
    pytest.param("flux-kontext-pro", 1234, id="flux-pro"),
    pytest.param("multi-image-kontext-max", 7, id="multi-max-jpeg"),
    pytest.param("p-image-edit", 999_999_999_999_999, id="p-image-edit-max-seed"),
]


@pytest.mark.parametrize(("slug", "seed"), SEEDED)
def test_same_seed_gives_identical_bytes(client: httpx.Client, slug: str, seed: int) -> None:
    body = body_for(slug, aspect_ratio="1:1", seed=seed)
    first = post(client, slug, body)
    second = post(client, slug, body)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-seed-value"] == second.headers["x-seed-value"] == str(seed)
    assert first.content == second.content


@pytest.mark.parametrize(("slug", "seed"), SEEDED)
def test_different_seed_gives_different_bytes(client: httpx.Client, slug: str, seed: int) -> None:
    first = post(client, slug, body_for(slug, aspect_ratio="1:1", seed=seed))
    other = post(client, slug, body_for(slug, aspect_ratio="1:1", seed=seed - 1))
    assert first.status_code == other.status_code == 200
    assert other.headers["x-seed-value"] == str(seed - 1)
    assert first.content != other.content


def test_output_does_not_depend_on_the_emulator_instance(
    client: httpx.Client, start_emulator: EmulatorFactory
) -> None:
    body = body_for("flux-kontext-pro", aspect_ratio="1:1", seed=99)
    other = start_emulator()
    with httpx.Client(base_url=other.url, headers={"x-api-key": API_KEY}) as http:
        fresh = post(http, "flux-kontext-pro", body)
    shared = post(client, "flux-kontext-pro", body)
    assert fresh.status_code == shared.status_code == 200
    assert fresh.content == shared.content


def test_without_seed_flux_still_reports_an_integer_seed(client: httpx.Client) -> None:
    body = {"prompt": "a red barn", "aspect_ratio": "1:1"}
    response = post(client, "flux-kontext-pro", body)
    assert response.status_code == 200, response.text
    seed = response.headers["x-seed-value"]
    assert re.fullmatch(r"\d+", seed), seed
    # The reported seed reproduces the image.
    again = post(client, "flux-kontext-pro", {**body, "seed": int(seed)})
    assert again.headers["x-seed-value"] == seed
    assert again.content == response.content


@pytest.mark.parametrize("slug", ["multi-image-kontext-max", "p-image-edit"])
def test_default_seed_42_is_reported(client: httpx.Client, slug: str) -> None:
    response = post(client, slug, body_for(slug, aspect_ratio="1:1"))
    assert response.status_code == 200, response.text
    assert response.headers["x-seed-value"] == "42"
    explicit = post(client, slug, body_for(slug, aspect_ratio="1:1", seed=42))
    assert explicit.content == response.content
