"""The stand-in renderer: outputs come visibly from the inputs and are deterministic."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image, ImageStat

from emulator.render import render_image
from segmind_core.contract import ImageSize, OutputFormat
from tests.support import decode, image_bytes

RED = (230, 20, 20)
GREEN = (20, 200, 20)
BLUE = (20, 20, 230)
SIZE = ImageSize(320, 240)


def render(
    colours: list[tuple[int, int, int]],
    *,
    slug: str = "flux-kontext-pro",
    prompt: str = "make it pop",
    seed: int = 7,
    aspect_ratio: str = "4:3",
    size: ImageSize = SIZE,
    output_format: OutputFormat = OutputFormat.PNG,
    input_size: tuple[int, int] = (64, 48),
) -> bytes:
    data = [image_bytes(colour, input_size) for colour in colours]
    return render_image(
        slug=slug,
        prompt=prompt,
        seed=seed,
        aspect_ratio=aspect_ratio,
        size=size,
        output_format=output_format,
        inputs=[decode(item) for item in data],
        input_bytes=data,
    )


def caption_height(size: ImageSize) -> int:
    """Height of the caption bar the renderer draws at the bottom."""
    return 2 * max(12, min(size.width, size.height) // 40)


def mean_rgb(image: Image.Image, box: tuple[int, int, int, int]) -> list[float]:
    mean: list[float] = ImageStat.Stat(image.convert("RGB").crop(box)).mean
    return mean


def assert_dominant(mean: list[float], channel: int) -> None:
    others = [value for index, value in enumerate(mean) if index != channel]
    assert mean[channel] > 2 * max(others), mean
    assert mean[channel] - max(others) > 80, mean


@pytest.mark.parametrize(("colour", "channel"), [(RED, 0), (GREEN, 1), (BLUE, 2)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_output_follows_the_input_colour(
    colour: tuple[int, int, int], channel: int, seed: int
) -> None:
    image = decode(render([colour], seed=seed))
    body = (0, 0, SIZE.width, SIZE.height - caption_height(SIZE))
    assert_dominant(mean_rgb(image, body), channel)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_inputs_sit_side_by_side(seed: int) -> None:
    image = decode(render([RED, BLUE], seed=seed))
    bottom = SIZE.height - caption_height(SIZE)
    half = SIZE.width // 2
    margin = SIZE.width // 20

    assert_dominant(mean_rgb(image, (0, 0, half - margin, bottom)), 0)
    assert_dominant(mean_rgb(image, (half + margin, 0, SIZE.width, bottom)), 2)


def test_five_inputs_make_five_strips() -> None:
    colours = [RED, GREEN, BLUE, RED, GREEN]
    image = decode(render(colours, size=ImageSize(500, 240)))
    bottom = 240 - caption_height(ImageSize(500, 240))
    for index, colour in enumerate(colours):
        box = (index * 100 + 15, 0, index * 100 + 85, bottom)
        assert_dominant(mean_rgb(image, box), colour.index(max(colour)))


def test_same_arguments_give_identical_bytes() -> None:
    assert render([RED], seed=5) == render([RED], seed=5)
    assert render([RED, BLUE], output_format=OutputFormat.JPG) == render(
        [RED, BLUE], output_format=OutputFormat.JPG
    )
    assert render([]) == render([])


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 8},
        {"prompt": "make it calm"},
        {"slug": "flux-kontext-max"},
        {"aspect_ratio": "match_input_image"},
        {"input_size": (64, 49)},
    ],
    ids=["seed", "prompt", "slug", "aspect-ratio", "input-bytes"],
)
def test_any_change_gives_different_bytes(change: dict[str, Any]) -> None:
    assert render([RED], **change) != render([RED])


@pytest.mark.parametrize(
    ("size", "output_format", "pillow_format"),
    [
        (ImageSize(320, 240), OutputFormat.PNG, "PNG"),
        (ImageSize(240, 320), OutputFormat.JPG, "JPEG"),
        (ImageSize(1392, 752), OutputFormat.JPG, "JPEG"),
        (ImageSize(1024, 1024), OutputFormat.PNG, "PNG"),
        (ImageSize(97, 61), OutputFormat.PNG, "PNG"),
    ],
)
def test_exact_size_and_format(
    size: ImageSize, output_format: OutputFormat, pillow_format: str
) -> None:
    image = decode(render([RED], size=size, output_format=output_format))
    assert image.format == pillow_format
    assert image.size == (size.width, size.height)
    assert image.mode == "RGB"


def test_text_to_image_without_inputs() -> None:
    image = decode(render([], size=ImageSize(200, 300), seed=3))
    assert image.size == (200, 300)
    other = decode(render([], size=ImageSize(200, 300), seed=4))
    assert image.tobytes() != other.tobytes()


def test_input_is_cropped_to_fill_not_stretched() -> None:
    """A wide input with a red left third and a blue rest fills a square output by cropping."""
    wide = Image.new("RGB", (300, 100), BLUE)
    wide.paste(Image.new("RGB", (100, 100), RED), (0, 0))
    size = ImageSize(200, 200)
    encoded = render_image(
        slug="p-image-edit",
        prompt="crop",
        seed=1,
        aspect_ratio="1:1",
        size=size,
        output_format=OutputFormat.PNG,
        inputs=[wide],
        input_bytes=[wide.tobytes()],
    )
    image = decode(encoded)
    bottom = 200 - caption_height(size)
    # The centre crop (x 100..200 of the input) is all blue: no red strip survives.
    assert_dominant(mean_rgb(image, (0, 0, 40, bottom)), 2)
