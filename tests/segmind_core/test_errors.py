"""The error tree: messages, the class hierarchy and pickling."""

from __future__ import annotations

import copy
import pickle
from decimal import Decimal

import pytest

from segmind_core.contract import InvalidRequestError, UnknownEndpointError
from segmind_core.errors import (
    AuthenticationError,
    BadImageError,
    InsufficientCreditsError,
    NetworkError,
    PermanentError,
    RateLimitedError,
    RequestRejectedError,
    SegmindError,
    ServerError,
    TransientError,
    UnexpectedResponseError,
)
from segmind_core.images import InvalidInputImageError

# Messages ---------------------------------------------------------------------


def test_str_prefixes_the_slug() -> None:
    error = ServerError("500 from Segmind", slug="p-image-edit")
    assert str(error) == "p-image-edit: 500 from Segmind"


def test_str_without_a_slug_is_the_message() -> None:
    assert str(ServerError("500 from Segmind")) == "500 from Segmind"


def test_str_does_not_repeat_a_slug_the_message_starts_with() -> None:
    error = ServerError("p-image-edit is down", slug="p-image-edit")
    assert str(error) == "p-image-edit is down"


def test_attempts_suffix_only_after_more_than_one() -> None:
    error = ServerError("500 from Segmind", slug="flux-kontext-pro")
    assert "attempts" not in str(error)
    error.attempts = 1
    assert str(error) == "flux-kontext-pro: 500 from Segmind"
    error.attempts = 4
    assert str(error) == "flux-kontext-pro: 500 from Segmind (after 4 attempts)"


def test_str_follows_later_changes_to_the_message() -> None:
    error = RateLimitedError("429 from Segmind", slug="p-image-edit", attempts=2)
    error.message += "; not retried"
    assert str(error) == "p-image-edit: 429 from Segmind; not retried (after 2 attempts)"


def test_fields_default_to_none_and_one_attempt() -> None:
    error = SegmindError("boom")
    assert (error.message, error.status, error.detail, error.slug, error.attempts) == (
        "boom",
        None,
        None,
        None,
        1,
    )
    assert error.args == ("boom",)
    assert RateLimitedError("x").retry_after_s is None
    assert InsufficientCreditsError("x").credits_remaining is None


# Hierarchy --------------------------------------------------------------------

HIERARCHY: list[tuple[type[Exception], type[Exception]]] = [
    (PermanentError, SegmindError),
    (TransientError, SegmindError),
    (AuthenticationError, PermanentError),
    (RequestRejectedError, PermanentError),
    (InsufficientCreditsError, PermanentError),
    (UnexpectedResponseError, PermanentError),
    (InvalidRequestError, PermanentError),
    (InvalidRequestError, ValueError),
    (UnknownEndpointError, PermanentError),
    (UnknownEndpointError, ValueError),
    (InvalidInputImageError, PermanentError),
    (InvalidInputImageError, ValueError),
    (RateLimitedError, TransientError),
    (ServerError, TransientError),
    (NetworkError, TransientError),
    (BadImageError, TransientError),
    (SegmindError, Exception),
]

PERMANENT = [
    AuthenticationError,
    RequestRejectedError,
    InsufficientCreditsError,
    UnexpectedResponseError,
    InvalidRequestError,
    UnknownEndpointError,
    InvalidInputImageError,
]
TRANSIENT = [RateLimitedError, ServerError, NetworkError, BadImageError]


@pytest.mark.parametrize(("cls", "base"), HIERARCHY, ids=lambda c: c.__name__)
def test_hierarchy(cls: type[Exception], base: type[Exception]) -> None:
    assert issubclass(cls, base)


@pytest.mark.parametrize("cls", PERMANENT, ids=lambda c: c.__name__)
def test_permanent_errors_are_not_transient(cls: type[Exception]) -> None:
    assert not issubclass(cls, TransientError)


@pytest.mark.parametrize("cls", TRANSIENT, ids=lambda c: c.__name__)
def test_transient_errors_are_not_permanent(cls: type[Exception]) -> None:
    assert not issubclass(cls, PermanentError)
    assert not issubclass(cls, ValueError)


def test_contract_errors_as_raised() -> None:
    invalid = InvalidRequestError("p-image-edit", [("image_urls", "too short"), (None, "bad")])
    assert isinstance(invalid, PermanentError)
    assert isinstance(invalid, ValueError)
    assert invalid.slug == "p-image-edit"
    assert invalid.field == "image_urls"
    assert invalid.problems == ["image_urls: too short", "bad"]
    unknown = UnknownEndpointError("flux-dev")
    assert isinstance(unknown, PermanentError)
    assert isinstance(unknown, ValueError)
    assert unknown.slug == "flux-dev"
    assert "p-image-edit" in str(unknown)


# Pickling ---------------------------------------------------------------------


def _roundtrip(error: Exception) -> Exception:
    return pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes


@pytest.mark.parametrize("cls", [SegmindError, PermanentError, TransientError, *TRANSIENT])
def test_every_field_survives_pickling(cls: type[SegmindError]) -> None:
    error = cls("it broke", status=502, detail="Bad Gateway", slug="flux-kontext-max", attempts=3)
    back = _roundtrip(error)
    assert type(back) is cls
    assert back.message == "it broke"
    assert back.status == 502
    assert back.detail == "Bad Gateway"
    assert back.slug == "flux-kontext-max"
    assert back.attempts == 3
    assert back.args == error.args
    assert str(back) == str(error) == "flux-kontext-max: it broke (after 3 attempts)"


@pytest.mark.parametrize(
    "cls", [AuthenticationError, RequestRejectedError, UnexpectedResponseError]
)
def test_permanent_errors_survive_pickling(cls: type[SegmindError]) -> None:
    error = cls("refused", status=418, detail="teapot", slug="p-image-edit")
    back = _roundtrip(error)
    assert type(back) is cls
    assert (back.status, back.detail, back.slug, back.attempts) == (
        418,
        "teapot",
        "p-image-edit",
        1,
    )
    assert str(back) == "p-image-edit: refused"


def test_rate_limited_keeps_retry_after() -> None:
    error = RateLimitedError("429 from Segmind", status=429, slug="p-image-edit", attempts=6)
    error.retry_after_s = 2.5
    back = _roundtrip(error)
    assert isinstance(back, RateLimitedError)
    assert back.retry_after_s == 2.5
    assert back.attempts == 6
    assert str(back) == str(error)


def test_insufficient_credits_keeps_the_balance() -> None:
    error = InsufficientCreditsError("406 from Segmind", status=406, slug="flux-kontext-pro")
    error.credits_remaining = Decimal("0.03")
    back = _roundtrip(error)
    assert isinstance(back, InsufficientCreditsError)
    assert back.credits_remaining == Decimal("0.03")
    assert isinstance(back.credits_remaining, Decimal)
    assert back.status == 406


def test_changed_message_survives_pickling() -> None:
    error = ServerError("500 from Segmind", status=500, slug="p-image-edit")
    error.message += "; not retried: waiting 9.0 s would pass the 5 s retry budget"
    error.attempts = 2
    back = _roundtrip(error)
    assert back.message == error.message
    assert str(back) == str(error)
    assert "retry budget" in str(back)


def test_invalid_request_survives_pickling() -> None:
    error = InvalidRequestError("p-image-edit", [("image_urls[0]", "must be a URL"), (None, "x")])
    back = _roundtrip(error)
    assert isinstance(back, InvalidRequestError)
    assert isinstance(back, ValueError)
    assert back.slug == "p-image-edit"
    assert back.field == "image_urls[0]"
    assert back.problems == error.problems
    assert str(back) == str(error)


def test_unknown_endpoint_survives_pickling() -> None:
    error = UnknownEndpointError("flux-dev")
    back = _roundtrip(error)
    assert isinstance(back, UnknownEndpointError)
    assert back.slug == "flux-dev"
    assert str(back) == str(error)


def test_invalid_input_image_survives_pickling() -> None:
    error = InvalidInputImageError("input_image_2", "no such file: /tmp/x.png")
    back = _roundtrip(error)
    assert isinstance(back, InvalidInputImageError)
    assert back.field == "input_image_2"
    assert str(back) == str(error) == "input_image_2: no such file: /tmp/x.png"


def test_copy_keeps_every_field() -> None:
    error = RateLimitedError("429", status=429, slug="p-image-edit", attempts=2)
    error.retry_after_s = 4.0
    duplicate = copy.copy(error)
    assert duplicate is not error
    assert (duplicate.retry_after_s, duplicate.attempts, str(duplicate)) == (
        4.0,
        2,
        str(error),
    )
