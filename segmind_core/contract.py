"""The Segmind endpoint contract: request models, enums, prices and output sizes.

One registry, `ENDPOINTS`, maps each slug to its request model, its price per
generation and the output sizes it produces. The emulator validates requests
with these models and so does the client, so what one accepts the other does.

Sources: `shared/DESIGN.md` section 3 and Segmind's API pages for each slug.
Where the pages disagree (multi-image-kontext-max's sample sends ``1:1`` while
its parameter table says the default is ``16:9``) the parameter table wins.

Two choices here are stricter than the published pages and are deliberate:

- Unknown fields are rejected. A typo such as ``aspect_ration`` would
  otherwise be ignored by the service and silently produce the default, after
  the money was spent.
- Numbers and booleans must have JSON's own types (``"7"`` is not a seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from segmind_core.errors import PermanentError

__all__ = [
    "ENDPOINTS",
    "FLUX_OUTPUT_SIZES",
    "Endpoint",
    "FluxAspectRatio",
    "FluxKontextMaxRequest",
    "FluxKontextProRequest",
    "ImageSize",
    "InvalidRequestError",
    "MultiImageKontextMaxRequest",
    "MultiImageKontextProRequest",
    "OutputFormat",
    "PImageEditAspectRatio",
    "PImageEditRequest",
    "SegmindRequest",
    "UnknownEndpointError",
    "get_endpoint",
    "snap_aspect_ratio",
    "validate_request",
]


class FluxAspectRatio(StrEnum):
    """The 14 aspect ratios every FLUX.1 Kontext endpoint accepts."""

    MATCH_INPUT_IMAGE = "match_input_image"
    R_1_1 = "1:1"
    R_16_9 = "16:9"
    R_9_16 = "9:16"
    R_4_3 = "4:3"
    R_3_4 = "3:4"
    R_3_2 = "3:2"
    R_2_3 = "2:3"
    R_4_5 = "4:5"
    R_5_4 = "5:4"
    R_21_9 = "21:9"
    R_9_21 = "9:21"
    R_2_1 = "2:1"
    R_1_2 = "1:2"


class PImageEditAspectRatio(StrEnum):
    """The 8 aspect ratios p-image-edit accepts (the first 8 FLUX values)."""

    MATCH_INPUT_IMAGE = "match_input_image"
    R_1_1 = "1:1"
    R_16_9 = "16:9"
    R_9_16 = "9:16"
    R_4_3 = "4:3"
    R_3_4 = "3:4"
    R_3_2 = "3:2"
    R_2_3 = "2:3"


class OutputFormat(StrEnum):
    """Image formats an endpoint can return."""

    JPG = "jpg"
    PNG = "png"

    @property
    def content_type(self) -> str:
        """The MIME type of an image in this format."""
        return "image/jpeg" if self is OutputFormat.JPG else "image/png"

    @property
    def pillow_format(self) -> str:
        """The name Pillow uses for this format."""
        return "JPEG" if self is OutputFormat.JPG else "PNG"


@dataclass(frozen=True)
class ImageSize:
    """Width and height of an image in pixels."""

    width: int
    height: int


# About one megapixel per bucket, as FLUX.1 Kontext produces them.
FLUX_OUTPUT_SIZES: Mapping[str, ImageSize] = {
    "1:1": ImageSize(1024, 1024),
    "16:9": ImageSize(1392, 752),
    "9:16": ImageSize(752, 1392),
    "4:3": ImageSize(1184, 880),
    "3:4": ImageSize(880, 1184),
    "3:2": ImageSize(1248, 832),
    "2:3": ImageSize(832, 1248),
    "4:5": ImageSize(944, 1104),
    "5:4": ImageSize(1104, 944),
    "21:9": ImageSize(1568, 672),
    "9:21": ImageSize(672, 1568),
    "2:1": ImageSize(1456, 720),
    "1:2": ImageSize(720, 1456),
}

_DATA_URI_PREFIX = "data:image/"
_MAX_ERROR_VALUE_CHARS = 60


class InvalidRequestError(PermanentError, ValueError):
    """A request body that does not satisfy an endpoint's contract (nothing was sent).

    Attributes:
        slug: The endpoint the body was meant for.
        field: The first offending field (dotted path), or ``None``.
        problems: One ``"field: what is wrong"`` line per problem.
    """

    def __init__(self, slug: str, problems: Sequence[tuple[str | None, str]]) -> None:
        self.field = problems[0][0] if problems else None
        self.problems = [f"{loc}: {msg}" if loc else msg for loc, msg in problems]
        super().__init__(f"invalid request for {slug}: " + "; ".join(self.problems), slug=slug)


class UnknownEndpointError(PermanentError, ValueError):
    """A slug that is not in the registry."""

    def __init__(self, slug: str) -> None:
        known = ", ".join(sorted(ENDPOINTS))
        super().__init__(f"unknown Segmind endpoint {slug!r}; known endpoints: {known}", slug=slug)


def _check_image_ref(value: str) -> str:
    """Accept an http(s) URL or a base64 image data URI, as the endpoints take them."""
    if value.startswith(_DATA_URI_PREFIX):
        header, sep, data = value.partition(",")
        if not sep or not header.endswith(";base64") or not data:
            raise ValueError("a data URI must look like data:image/<type>;base64,<data>")
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL or a data:image/...;base64 URI")
    return value


MAX_PROMPT_CHARS = 10_000
"""Longest prompt sent. Segmind documents no limit; the models read far less than this
(FLUX's text encoder takes 512 tokens), so a longer one is a mistake, refused unpaid."""


def _check_prompt(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(f"is {len(value)} characters long; the limit is {MAX_PROMPT_CHARS}")
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    if not value.isascii() and any("\ud800" <= char <= "\udfff" for char in value):
        raise ValueError("is not valid text: it has a lone surrogate (U+D800 to U+DFFF)")
    return value


ImageRef = Annotated[StrictStr, AfterValidator(_check_image_ref)]
SEED_LIMIT = 999_999_999_999_999
FluxSeed = Annotated[StrictInt, Field(ge=-1, le=SEED_LIMIT)]
"""FLUX seeds: Segmind documents no range; p-image-edit's is used. -1 means "draw one"
(the client draws it, so -1 itself is never sent); other negative seeds are refused."""
Prompt = Annotated[StrictStr, AfterValidator(_check_prompt)]


class SegmindRequest(BaseModel):
    """Fields and behaviour every endpoint's request model shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Prompt = Field(description="What to change or create.")

    def requested_seed(self) -> int | None:
        """The seed the caller fixed, or ``None`` when the service should draw one."""
        seed: int | None = getattr(self, "seed", None)
        return None if seed is None or seed == -1 else seed

    def input_images(self) -> list[tuple[str, str]]:
        """Each input image as ``(field path, URL or data URI)``, first input first."""
        raise NotImplementedError

    def image_format(self) -> OutputFormat:
        """The format of the image the endpoint will return."""
        fmt: OutputFormat = getattr(self, "output_format", OutputFormat.PNG)
        return fmt

    def requested_aspect_ratio(self) -> str:
        """The ``aspect_ratio`` value as a plain string."""
        ratio: StrEnum = getattr(self, "aspect_ratio")  # noqa: B009 - every model has one
        return ratio.value

    def to_payload(self) -> dict[str, Any]:
        """The JSON body to send: every field, ``None`` values left out."""
        return self.model_dump(mode="json", exclude_none=True)


class FluxKontextProRequest(SegmindRequest):
    """Body of ``POST /v1/flux-kontext-pro``: edit one image, or make one from text.

    ``safety_tolerance`` accepts 0..6, but the model applies at most 2 when an
    input image is given (see `effective_safety_tolerance`).
    """

    input_image: ImageRef | None = Field(default=None, description="Image to edit.")
    aspect_ratio: FluxAspectRatio = FluxAspectRatio.MATCH_INPUT_IMAGE
    output_format: OutputFormat = OutputFormat.PNG
    safety_tolerance: Annotated[StrictInt, Field(ge=0, le=6)] = 2
    seed: FluxSeed | None = None

    max_tolerance_with_input: ClassVar[int] = 2

    def input_images(self) -> list[tuple[str, str]]:
        """The optional ``input_image``."""
        return [("input_image", self.input_image)] if self.input_image else []

    def effective_safety_tolerance(self) -> int:
        """The tolerance the model applies: capped at 2 when an input image is given."""
        if self.input_image:
            return min(self.safety_tolerance, self.max_tolerance_with_input)
        return self.safety_tolerance


class FluxKontextMaxRequest(FluxKontextProRequest):
    """Body of ``POST /v1/flux-kontext-max``: the same shape as flux-kontext-pro."""


class MultiImageKontextProRequest(SegmindRequest):
    """Body of ``POST /v1/multi-image-kontext-pro``: merge two images."""

    input_image_1: ImageRef = Field(description="First image; it sets match_input_image.")
    input_image_2: ImageRef = Field(description="Second image.")
    aspect_ratio: FluxAspectRatio = FluxAspectRatio.MATCH_INPUT_IMAGE
    output_format: OutputFormat = OutputFormat.PNG
    safety_tolerance: Annotated[StrictInt, Field(ge=0, le=2)] = 2
    seed: FluxSeed | None = None

    def input_images(self) -> list[tuple[str, str]]:
        """Both input images, ``input_image_1`` first."""
        return [("input_image_1", self.input_image_1), ("input_image_2", self.input_image_2)]


class MultiImageKontextMaxRequest(MultiImageKontextProRequest):
    """Body of ``POST /v1/multi-image-kontext-max``: merge two images, higher quality.

    Its documented defaults differ from the pro endpoint's: 16:9, jpg,
    tolerance 1 and seed 42.
    """

    aspect_ratio: FluxAspectRatio = FluxAspectRatio.R_16_9
    output_format: OutputFormat = OutputFormat.JPG
    safety_tolerance: Annotated[StrictInt, Field(ge=0, le=2)] = 1
    seed: FluxSeed | None = 42


class PImageEditRequest(SegmindRequest):
    """Body of ``POST /v1/p-image-edit``: edit or combine 1 to 5 images. Always PNG.

    A seed of -1 asks the service for a random one.
    """

    image_urls: Annotated[list[ImageRef], Field(min_length=1, max_length=5)]
    aspect_ratio: PImageEditAspectRatio = PImageEditAspectRatio.MATCH_INPUT_IMAGE
    disable_safety_checker: StrictBool = False
    seed: Annotated[StrictInt, Field(ge=-1, le=SEED_LIMIT)] = 42

    def input_images(self) -> list[tuple[str, str]]:
        """Every entry of ``image_urls``, in order."""
        return [(f"image_urls[{i}]", url) for i, url in enumerate(self.image_urls)]


def snap_aspect_ratio(width: int, height: int, ratios: Sequence[str]) -> str:
    """The ratio among ``ratios`` nearest to ``width:height`` (on a log scale).

    Args:
        width: Width of the input image in pixels.
        height: Height of the input image in pixels.
        ratios: Candidate ``"W:H"`` ratios; on a tie the first one wins.

    Returns:
        The nearest ratio, e.g. ``snap_aspect_ratio(1920, 1080, ["1:1", "16:9"]) == "16:9"``.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = (int(part) for part in ratio.split(":"))
        return abs(math.log(w / h) - target)

    return min(ratios, key=distance)


@dataclass(frozen=True)
class Endpoint:
    """One Segmind slug: its request model, price and output sizes."""

    slug: str
    request_model: type[SegmindRequest]
    price_usd: Decimal
    aspect_ratios: type[StrEnum]
    sizes: Mapping[str, ImageSize]

    def fixed_ratios(self) -> list[str]:
        """The allowed ratios other than ``match_input_image``, in enum order."""
        return [r.value for r in self.aspect_ratios if r.value != "match_input_image"]

    def output_size(self, request: SegmindRequest, first_input: ImageSize | None) -> ImageSize:
        """The size of the image this endpoint returns for ``request``.

        Args:
            request: A validated request for this endpoint.
            first_input: Size of the first input image, if there is one.

        Returns:
            The bucket for the requested ratio; for ``match_input_image`` the
            first input's ratio snapped to the nearest bucket (1:1 without input).
        """
        ratio = request.requested_aspect_ratio()
        if ratio == "match_input_image":
            if first_input is None:
                ratio = "1:1"
            else:
                ratio = snap_aspect_ratio(
                    first_input.width, first_input.height, self.fixed_ratios()
                )
        return self.sizes[ratio]

    def validate(self, payload: Mapping[str, Any]) -> SegmindRequest:
        """Validate a JSON body for this endpoint.

        Raises:
            InvalidRequestError: naming each offending field.
        """
        try:
            return self.request_model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidRequestError(self.slug, _describe(exc)) from None


def _describe(exc: ValidationError) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    for error in exc.errors(include_url=False):
        loc = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
        ).lstrip(".")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] not in ("missing", "extra_forbidden"):
            shown = repr(error.get("input"))
            if len(shown) > _MAX_ERROR_VALUE_CHARS:
                shown = shown[: _MAX_ERROR_VALUE_CHARS - 3] + "..."
            message = f"{message} (got {shown})"
        if error["type"] == "extra_forbidden":
            message = "unknown field for this endpoint"
        problems.append((loc or None, message))
    return problems


ENDPOINTS: Mapping[str, Endpoint] = {
    endpoint.slug: endpoint
    for endpoint in (
        Endpoint(
            "flux-kontext-pro",
            FluxKontextProRequest,
            Decimal("0.05"),
            FluxAspectRatio,
            FLUX_OUTPUT_SIZES,
        ),
        Endpoint(
            "flux-kontext-max",
            FluxKontextMaxRequest,
            Decimal("0.10"),
            FluxAspectRatio,
            FLUX_OUTPUT_SIZES,
        ),
        Endpoint(
            "multi-image-kontext-pro",
            MultiImageKontextProRequest,
            Decimal("0.05"),
            FluxAspectRatio,
            FLUX_OUTPUT_SIZES,
        ),
        Endpoint(
            "multi-image-kontext-max",
            MultiImageKontextMaxRequest,
            Decimal("0.10"),
            FluxAspectRatio,
            FLUX_OUTPUT_SIZES,
        ),
        Endpoint(
            "p-image-edit",
            PImageEditRequest,
            Decimal("0.01"),
            PImageEditAspectRatio,
            {r.value: FLUX_OUTPUT_SIZES[r.value] for r in list(PImageEditAspectRatio)[1:]},
        ),
    )
}


def get_endpoint(slug: str) -> Endpoint:
    """The registry entry for ``slug``.

    Raises:
        UnknownEndpointError: when the slug is not one this project knows.
    """
    try:
        return ENDPOINTS[slug]
    except KeyError:
        raise UnknownEndpointError(slug) from None


def validate_request(slug: str, payload: Mapping[str, Any]) -> SegmindRequest:
    """Validate a JSON body for ``slug``.

    Example:
        >>> validate_request("p-image-edit", {"prompt": "x", "image_urls": ["https://a/b.png"]}).seed
        42

    Raises:
        UnknownEndpointError: for a slug not in the registry.
        InvalidRequestError: naming each offending field.
    """
    return get_endpoint(slug).validate(payload)
