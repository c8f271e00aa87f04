"""The request digest: the cache key and content address of a request."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from segmind_core.contract import FluxAspectRatio, OutputFormat, PImageEditAspectRatio
from segmind_core.request_spec import DIGEST_VERSION, RequestSpec, request_digest

SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64
PROMPT = "replace the background with a beach"


def flux(**params: Any) -> RequestSpec:
    """A flux-kontext-pro request with one input image."""
    return RequestSpec("flux-kontext-pro", {"prompt": PROMPT, **params}, {"input_image": "a.png"})


def digest_of(spec: RequestSpec, identity: str = SHA_A) -> str:
    return request_digest(spec, {name: identity for name in spec.images})


# Defaults ------------------------------------------------------------------------


def test_canonical_params_fill_every_default_and_leave_the_images_out() -> None:
    assert flux().canonical_params() == {
        "aspect_ratio": "match_input_image",
        "output_format": "png",
        "prompt": PROMPT,
        "safety_tolerance": 2,
    }


def test_canonical_params_are_plain_json_values_in_sorted_order() -> None:
    params = flux(aspect_ratio=FluxAspectRatio.R_16_9, seed=7).canonical_params()

    assert list(params) == sorted(params)
    assert params["aspect_ratio"] == "16:9"
    assert type(params["aspect_ratio"]) is str
    assert json.loads(json.dumps(params)) == params


def test_multi_image_max_documented_defaults_are_filled() -> None:
    spec = RequestSpec(
        "multi-image-kontext-max",
        {"prompt": PROMPT},
        {"input_image_1": "a.png", "input_image_2": "b.png"},
    )

    assert spec.canonical_params() == {
        "aspect_ratio": "16:9",
        "output_format": "jpg",
        "prompt": PROMPT,
        "safety_tolerance": 1,
        "seed": 42,
    }


@pytest.mark.parametrize(
    "explicit",
    [
        {"aspect_ratio": "match_input_image"},
        {"aspect_ratio": FluxAspectRatio.MATCH_INPUT_IMAGE},
        {"output_format": "png"},
        {"output_format": OutputFormat.PNG},
        {"safety_tolerance": 2},
        {"seed": None},
        {"aspect_ratio": None, "output_format": None, "safety_tolerance": None},
        {
            "aspect_ratio": "match_input_image",
            "output_format": "png",
            "safety_tolerance": 2,
            "seed": None,
        },
    ],
)
def test_an_omitted_default_and_the_explicit_default_are_the_same_request(
    explicit: dict[str, Any],
) -> None:
    assert flux(**explicit).canonical_params() == flux().canonical_params()
    assert digest_of(flux(**explicit)) == digest_of(flux())


def test_p_image_edit_explicit_default_seed_is_the_same_request() -> None:
    omitted = RequestSpec("p-image-edit", {"prompt": PROMPT}, {"image_urls": ["a.png"]})
    explicit = RequestSpec(
        "p-image-edit",
        {"prompt": PROMPT, "seed": 42, "disable_safety_checker": False},
        {"image_urls": ["a.png"]},
    )

    assert request_digest(omitted, {"image_urls": [SHA_A]}) == request_digest(
        explicit, {"image_urls": [SHA_A]}
    )


@pytest.mark.parametrize(
    ("as_enum", "as_text"),
    [
        ({"aspect_ratio": FluxAspectRatio.R_16_9}, {"aspect_ratio": "16:9"}),
        ({"aspect_ratio": FluxAspectRatio.R_1_2}, {"aspect_ratio": "1:2"}),
        ({"output_format": OutputFormat.JPG}, {"output_format": "jpg"}),
        (
            {"aspect_ratio": FluxAspectRatio.R_4_3, "output_format": OutputFormat.JPG},
            {"aspect_ratio": "4:3", "output_format": "jpg"},
        ),
    ],
)
def test_an_enum_and_its_string_are_the_same_request(
    as_enum: dict[str, Any], as_text: dict[str, Any]
) -> None:
    assert flux(**as_enum).canonical_params() == flux(**as_text).canonical_params()
    assert digest_of(flux(**as_enum)) == digest_of(flux(**as_text))
    # ...and not the default one.
    assert digest_of(flux(**as_enum)) != digest_of(flux())


def test_p_image_edit_enum_and_string_are_the_same_request() -> None:
    def spec(ratio: Any) -> RequestSpec:
        return RequestSpec(
            "p-image-edit", {"prompt": PROMPT, "aspect_ratio": ratio}, {"image_urls": ["a"]}
        )

    identities = {"image_urls": [SHA_A]}
    assert request_digest(spec(PImageEditAspectRatio.R_3_2), identities) == request_digest(
        spec("3:2"), identities
    )


def test_the_order_of_params_and_of_image_fields_does_not_matter() -> None:
    one = RequestSpec(
        "multi-image-kontext-pro",
        {"prompt": PROMPT, "seed": 3, "output_format": "jpg"},
        {"input_image_1": "a.png", "input_image_2": "b.png"},
    )
    other = RequestSpec(
        "multi-image-kontext-pro",
        {"output_format": "jpg", "seed": 3, "prompt": PROMPT},
        {"input_image_2": "b.png", "input_image_1": "a.png"},
    )

    assert request_digest(one, {"input_image_1": SHA_A, "input_image_2": SHA_B}) == request_digest(
        other, {"input_image_2": SHA_B, "input_image_1": SHA_A}
    )


# What changes the digest -----------------------------------------------------------


@pytest.mark.parametrize(
    "changed",
    [
        {"prompt": PROMPT + "!"},
        {"prompt": PROMPT.upper()},
        {"seed": 8},
        {"seed": 0},
        {"aspect_ratio": "1:1"},
        {"output_format": "jpg"},
        {"safety_tolerance": 1},
    ],
)
def test_a_different_parameter_is_a_different_request(changed: dict[str, Any]) -> None:
    base = flux(seed=7)
    other = flux(**{"seed": 7, **changed})
    assert digest_of(other) != digest_of(base)


def test_a_different_input_identity_is_a_different_request() -> None:
    spec = flux(seed=7)

    assert digest_of(spec, SHA_A) != digest_of(spec, SHA_B)
    assert digest_of(spec, "https://example.com/a.png") != digest_of(
        spec, "https://example.com/b.png"
    )
    assert digest_of(spec, "https://example.com/a.png") != digest_of(spec, SHA_A)


def test_a_different_slug_is_a_different_request() -> None:
    pro = RequestSpec("flux-kontext-pro", {"prompt": PROMPT, "seed": 7}, {"input_image": "a"})
    max_ = RequestSpec("flux-kontext-max", {"prompt": PROMPT, "seed": 7}, {"input_image": "a"})

    assert pro.canonical_params() == max_.canonical_params()
    assert request_digest(pro, {"input_image": SHA_A}) != request_digest(
        max_, {"input_image": SHA_A}
    )


def test_the_order_of_image_urls_matters() -> None:
    spec = RequestSpec("p-image-edit", {"prompt": PROMPT, "seed": 1}, {"image_urls": ["a", "b"]})

    assert request_digest(spec, {"image_urls": [SHA_A, SHA_B]}) != request_digest(
        spec, {"image_urls": [SHA_B, SHA_A]}
    )


def test_swapping_the_two_merge_inputs_is_a_different_request() -> None:
    spec = RequestSpec(
        "multi-image-kontext-pro",
        {"prompt": PROMPT, "seed": 1},
        {"input_image_1": "a", "input_image_2": "b"},
    )

    assert request_digest(spec, {"input_image_1": SHA_A, "input_image_2": SHA_B}) != (
        request_digest(spec, {"input_image_1": SHA_B, "input_image_2": SHA_A})
    )


def test_the_digest_is_a_hex_sha256() -> None:
    digest = digest_of(flux(seed=7))

    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert digest == digest.lower()


# Fixed seeds ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [None, -1])
def test_no_seed_and_minus_one_mean_a_drawn_seed(seed: int | None) -> None:
    assert flux(seed=seed).fixed_seed() is None


@pytest.mark.parametrize("seed", [0, 1, 7, 2**31 - 1])
def test_a_given_seed_is_fixed(seed: int) -> None:
    assert flux(seed=seed).fixed_seed() == seed


def test_endpoint_default_seeds_count_as_fixed() -> None:
    # p-image-edit and multi-image-kontext-max document a default seed of 42: a
    # request that leaves it out asks for seed 42, the same image every time.
    p_image = RequestSpec("p-image-edit", {"prompt": PROMPT}, {"image_urls": ["a"]})
    merge_max = RequestSpec(
        "multi-image-kontext-max",
        {"prompt": PROMPT},
        {"input_image_1": "a", "input_image_2": "b"},
    )
    merge_pro = RequestSpec(
        "multi-image-kontext-pro",
        {"prompt": PROMPT},
        {"input_image_1": "a", "input_image_2": "b"},
    )

    assert p_image.fixed_seed() == 42
    assert merge_max.fixed_seed() == 42
    assert merge_pro.fixed_seed() is None


def test_p_image_edit_minus_one_overrides_the_default_seed() -> None:
    spec = RequestSpec("p-image-edit", {"prompt": PROMPT, "seed": -1}, {"image_urls": ["a"]})

    assert spec.fixed_seed() is None
    assert spec.canonical_params()["seed"] == -1


# Nothing but the request ---------------------------------------------------------


def test_the_digest_is_the_sha256_of_exactly_slug_params_and_inputs() -> None:
    spec = RequestSpec(
        "multi-image-kontext-pro",
        {"prompt": PROMPT, "seed": 5, "aspect_ratio": FluxAspectRatio.R_3_2},
        {"input_image_1": "a.png", "input_image_2": "https://example.com/b.png"},
    )
    identities = {"input_image_2": "https://example.com/b.png", "input_image_1": SHA_A}
    # Rebuilt here from the documented canonical form, independently of the product.
    canonical = {
        "inputs": {"input_image_1": SHA_A, "input_image_2": "https://example.com/b.png"},
        "params": {
            "aspect_ratio": "3:2",
            "output_format": "png",
            "prompt": PROMPT,
            "safety_tolerance": 2,
            "seed": 5,
        },
        "slug": "multi-image-kontext-pro",
        "version": DIGEST_VERSION,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))

    assert request_digest(spec, identities) == hashlib.sha256(text.encode()).hexdigest()
    assert set(canonical) == {"inputs", "params", "slug", "version"}


def test_no_key_or_credential_reaches_the_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = flux(seed=7)
    before = digest_of(spec)

    secret = "SG_digest_key_SECRET_123"  # noqa: S105 - fake
    for name, value in {
        "SEGMIND_API_KEY": secret,
        "SEGMIND_BASE_URL": "http://127.0.0.1:1",
        "AWS_ACCESS_KEY_ID": "AKIA-digest-test",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:2",
    }.items():
        monkeypatch.setenv(name, value)

    assert digest_of(spec) == before
    canonical = json.dumps(
        {
            "version": DIGEST_VERSION,
            "slug": spec.slug,
            "params": spec.canonical_params(),
            "inputs": {"input_image": SHA_A},
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    assert hashlib.sha256(canonical.encode()).hexdigest() == before
    for forbidden in (secret, "api_key", "x-api-key", "AKIA", "127.0.0.1", "SECRET"):
        assert forbidden not in canonical


def test_the_image_as_given_is_not_part_of_the_digest() -> None:
    # Two different ways of giving the same content (a path, bytes) have one identity.
    by_path = RequestSpec("flux-kontext-pro", {"prompt": PROMPT, "seed": 1}, {"input_image": "x"})
    by_bytes = RequestSpec(
        "flux-kontext-pro", {"prompt": PROMPT, "seed": 1}, {"input_image": b"\x89PNG..."}
    )

    assert request_digest(by_path, {"input_image": SHA_A}) == request_digest(
        by_bytes, {"input_image": SHA_A}
    )


def test_digest_version_is_part_of_the_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    import segmind_core.request_spec as request_spec

    spec = flux(seed=7)
    before = digest_of(spec)
    monkeypatch.setattr(request_spec, "DIGEST_VERSION", DIGEST_VERSION + 1)

    assert digest_of(spec) != before
