"""Deterministic stand-in images. No model runs here.

An output is a pure function of (slug, inputs, prompt, seed, aspect ratio,
format): the input images are cropped to fill the output (side by side when
there are several), so the result visibly comes from them; a tint, a few
translucent shapes and a caption drawn from a hash of everything else make it
change with the seed and the prompt.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from segmind_core.contract import ImageSize, OutputFormat

__all__ = ["render_image"]

_TINT_ALPHA = 0.22
_SHAPES = 7
_JPEG_QUALITY = 90


def _fingerprint(slug: str, prompt: str, seed: int, ratio: str, inputs: Sequence[bytes]) -> int:
    digest = hashlib.sha256()
    for part in (slug, prompt, str(seed), ratio):
        digest.update(part.encode())
        digest.update(b"\0")
    for data in inputs:
        digest.update(hashlib.sha256(data).digest())
    return int.from_bytes(digest.digest()[:8], "big")


def _background(size: ImageSize, rng: random.Random) -> Image.Image:
    """A two-colour gradient for text-to-image calls without any input."""
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    column = Image.new("RGB", (1, 256))
    for y in range(256):
        t = y / 255
        column.putpixel(
            (0, y), tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        )
    return column.resize((size.width, size.height), Image.Resampling.BILINEAR)


def _collage(size: ImageSize, inputs: Sequence[Image.Image]) -> Image.Image:
    """The inputs cropped to fill equal vertical strips of the output, left to right."""
    canvas = Image.new("RGB", (size.width, size.height))
    strips = len(inputs)
    for index, image in enumerate(inputs):
        left = size.width * index // strips
        right = size.width * (index + 1) // strips
        frame = ImageOps.fit(
            image.convert("RGB"), (right - left, size.height), Image.Resampling.BILINEAR
        )
        canvas.paste(frame, (left, 0))
    return canvas


def render_image(
    *,
    slug: str,
    prompt: str,
    seed: int,
    aspect_ratio: str,
    size: ImageSize,
    output_format: OutputFormat,
    inputs: Sequence[Image.Image],
    input_bytes: Sequence[bytes],
) -> bytes:
    """Render the stand-in output and encode it.

    Args:
        slug: Endpoint slug.
        prompt: The request's prompt, part of the caption.
        seed: The seed actually used.
        aspect_ratio: The requested ratio (``match_input_image`` included).
        size: Output size in pixels.
        output_format: ``png`` or ``jpg``.
        inputs: Decoded input images, first input first.
        input_bytes: The raw bytes of each input, for the fingerprint.

    Returns:
        The encoded image.
    """
    rng = random.Random(_fingerprint(slug, prompt, seed, aspect_ratio, input_bytes))  # noqa: S311
    base = _collage(size, inputs) if inputs else _background(size, rng)

    tint = Image.new("RGB", base.size, tuple(rng.randrange(256) for _ in range(3)))
    image = Image.blend(base, tint, _TINT_ALPHA).convert("RGBA")

    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    short_side = min(size.width, size.height)
    for _ in range(_SHAPES):
        radius = rng.randrange(short_side // 20, short_side // 6)
        x = rng.randrange(size.width)
        y = rng.randrange(size.height)
        colour = (*(rng.randrange(256) for _ in range(3)), 110)
        box = (x - radius, y - radius, x + radius, y + radius)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)

    font_size = max(12, short_side // 40)
    font = ImageFont.load_default(size=font_size)
    caption = f"{slug} | seed {seed} | {prompt}"
    if len(caption) > 120:
        caption = caption[:117] + "..."
    bar_height = font_size * 2
    draw.rectangle((0, size.height - bar_height, size.width, size.height), fill=(0, 0, 0, 160))
    draw.text(
        (font_size // 2, size.height - bar_height + font_size // 2),
        caption,
        fill=(255, 255, 255, 255),
        font=font,
    )

    result = Image.alpha_composite(image, overlay).convert("RGB")
    buffer = io.BytesIO()
    if output_format is OutputFormat.JPG:
        result.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    else:
        result.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
