"""Thumbnails: small upright JPEGs, and the links a browser opens them through."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, UnidentifiedImageError

from segmind_core.object_store import ObjectStore
from segmind_core.thumbnails import (
    THUMBNAIL_SIDE,
    key_in,
    make_thumbnail,
    preview,
    thumbnail_key,
)
from tests.conftest import S3Server
from tests.support import decode, image_bytes

ORIENTATION = 0x0112


def s3_store(s3: S3Server, base: str = "s3://outputs/prefix", **settings: Any) -> ObjectStore:
    return ObjectStore.from_url(
        base,
        key=s3.access_key_id,
        secret=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        client_kwargs={"region_name": s3.region},
        **settings,
    )


def fetch(url: str) -> httpx.Response:
    with httpx.Client(trust_env=False) as client:
        return client.get(url)


def from_data_uri(uri: str) -> bytes:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix), uri[:40]
    return base64.b64decode(uri.removeprefix(prefix), validate=True)


def assert_thumbnail(data: bytes, size: tuple[int, int]) -> None:
    image = decode(data)
    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert image.size == size


# --- make_thumbnail -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1248, 832), (320, 213)), ((832, 1248), (213, 320)), ((1024, 1024), (320, 320))],
)
def test_a_large_image_becomes_a_jpeg_whose_longest_side_is_320(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    thumbnail = make_thumbnail(image_bytes((10, 120, 200), size, "PNG"))

    assert_thumbnail(thumbnail, expected)
    assert max(decode(thumbnail).size) == THUMBNAIL_SIDE
    assert decode(thumbnail).getpixel((100, 100)) == pytest.approx((10, 120, 200), abs=4)


def test_a_jpeg_input_and_another_max_side() -> None:
    thumbnail = make_thumbnail(image_bytes(size=(4000, 3000), fmt="JPEG"), max_side=100)

    assert_thumbnail(thumbnail, (100, 75))


def test_a_small_image_keeps_its_size() -> None:
    assert_thumbnail(make_thumbnail(image_bytes(size=(120, 60))), (120, 60))


def test_the_thumbnail_is_turned_upright_as_exif_says() -> None:
    # Stored wide, left half red and right half blue; orientation 6 means "turn it a
    # quarter clockwise to show it": shown tall, red on top.
    stored = Image.new("RGB", (640, 320), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 320, 320))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif)

    thumbnail = decode(make_thumbnail(buffer.getvalue()))

    assert thumbnail.size == (160, 320)
    assert thumbnail.getpixel((80, 60)) == pytest.approx((255, 0, 0), abs=40)
    assert thumbnail.getpixel((80, 260)) == pytest.approx((0, 0, 255), abs=40)


def test_transparent_parts_are_white_not_black() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (400, 400), (0, 0, 0, 0)).save(buffer, "PNG")

    thumbnail = decode(make_thumbnail(buffer.getvalue()))

    assert thumbnail.mode == "RGB"
    assert thumbnail.getpixel((10, 10)) == pytest.approx((255, 255, 255), abs=2)


def test_bytes_that_are_not_an_image_raise() -> None:
    with pytest.raises(UnidentifiedImageError):
        make_thumbnail(b"not an image")


# --- where thumbnails go, and which URLs are in a store -------------------------------------------


def test_a_thumbnail_sits_under_thumbnails_at_its_images_key() -> None:
    assert (
        thumbnail_key("batch/2026-12-07/coffee.png")
        == "_thumbnails/batch/2026-12-07/coffee.png.jpg"
    )
    assert thumbnail_key("coffee.jpg") == "_thumbnails/coffee.jpg.jpg"


def test_key_in_finds_keys_under_the_base_url_only(
    s3: S3Server, tmp_path: Path, memory_url: str
) -> None:
    stores = [s3_store(s3), ObjectStore.from_url(str(tmp_path)), ObjectStore.from_url(memory_url)]
    for store in stores:
        url = store.url("batch/day/a.png")
        assert key_in(store, url) == "batch/day/a.png"
    s3_only = stores[0]
    assert key_in(s3_only, "s3://outputs/prefixed/a.png") is None
    assert key_in(s3_only, "s3://outputs/elsewhere/a.png") is None
    assert key_in(s3_only, "s3://outputs/prefix/") is None
    assert key_in(s3_only, str(tmp_path / "a.png")) is None
    assert key_in(stores[1], "s3://outputs/prefix/a.png") is None


# --- preview: S3 ----------------------------------------------------------------------------------


def test_on_s3_the_thumbnail_is_stored_apart_from_the_outputs_and_both_are_presigned(
    s3: S3Server,
) -> None:
    store = s3_store(s3, presign_expiry_s=900)
    original = image_bytes((30, 160, 60), (1248, 832), "PNG")
    url = store.write("batch/2026-12-07/coffee.png", original)
    before = datetime.now(UTC)

    shown = preview(store, url)

    # The thumbnail object exists, seen by an independent client.
    stored = s3.client().get_object(
        Bucket="outputs", Key="prefix/_thumbnails/batch/2026-12-07/coffee.png.jpg"
    )
    thumbnail = stored["Body"].read()
    assert_thumbnail(thumbnail, (320, 213))
    # Both links answer a browser, without credentials, from the moto endpoint.
    assert shown.thumbnail is not None
    assert shown.full is not None
    assert shown.thumbnail.startswith(
        f"{s3.endpoint_url}/outputs/prefix/_thumbnails/batch/2026-12-07/coffee.png.jpg?"
    )
    assert shown.full.startswith(f"{s3.endpoint_url}/outputs/prefix/batch/2026-12-07/coffee.png?")
    for link in (shown.thumbnail, shown.full):
        assert s3.secret_access_key not in link
    # A browser shows them rather than saving them: S3 answers with the image's type.
    answered = fetch(shown.thumbnail)
    assert (answered.content, answered.headers["content-type"]) == (thumbnail, "image/jpeg")
    full = fetch(shown.full)
    assert full.status_code == 200
    assert (full.content, full.headers["content-type"]) == (original, "image/png")
    # What the image is, and how long the links live.
    assert (shown.width, shown.height, shown.format) == (1248, 832, "PNG")
    assert shown.expires_in_s == 900
    assert shown.expires_at is not None
    assert before + timedelta(seconds=899) <= shown.expires_at
    assert shown.expires_at <= datetime.now(UTC) + timedelta(seconds=900)
    assert shown.problem is None


def test_on_s3_a_thumbnail_that_cannot_be_written_is_embedded(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = s3_store(s3)
    url = store.write("a.png", image_bytes(size=(640, 480)))

    def refuse(key: str, data: bytes) -> str:
        raise PermissionError("AccessDenied")

    monkeypatch.setattr(store, "write", refuse)
    shown = preview(store, url)

    assert shown.thumbnail is not None
    assert_thumbnail(from_data_uri(shown.thumbnail), (320, 240))
    assert shown.full is not None
    assert fetch(shown.full).status_code == 200
    assert not store.exists("_thumbnails/a.png.jpg")


def test_on_s3_an_image_that_cannot_be_read_gets_a_link_and_no_thumbnail(s3: S3Server) -> None:
    store = s3_store(s3)
    url = store.write("broken.png", b"not an image")

    shown = preview(store, url)

    assert shown.thumbnail is None
    assert shown.problem == "UnidentifiedImageError"
    assert shown.full is not None
    assert fetch(shown.full).content == b"not an image"
    assert not store.exists("_thumbnails/broken.png.jpg")


def test_on_s3_an_image_stored_elsewhere_gets_a_link_and_no_thumbnail(s3: S3Server) -> None:
    s3.client().put_object(Bucket="outputs", Key="elsewhere/b.png", Body=image_bytes())
    store = s3_store(s3)

    shown = preview(store, "s3://outputs/elsewhere/b.png")

    assert shown.thumbnail is None
    assert shown.problem == "stored outside this storage"
    assert shown.full is not None
    assert fetch(shown.full).content == image_bytes()
    listed = s3.client().list_objects_v2(Bucket="outputs").get("Contents", [])
    assert [item["Key"] for item in listed] == ["elsewhere/b.png"]


# --- preview: a local folder, memory --------------------------------------------------------------


def test_in_a_local_folder_the_thumbnail_is_embedded_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    store = ObjectStore.from_url(str(tmp_path))
    url = store.write("batch/2026-12-07/coffee.png", image_bytes(size=(832, 1248)))

    shown = preview(store, url)

    assert shown.thumbnail is not None
    assert_thumbnail(from_data_uri(shown.thumbnail), (213, 320))
    assert shown.full is None
    assert (shown.expires_at, shown.expires_in_s) == (None, None)
    assert (shown.width, shown.height, shown.format) == (832, 1248, "PNG")
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["batch/2026-12-07/coffee.png"]


def test_in_memory_the_thumbnail_is_embedded(memory_url: str) -> None:
    store = ObjectStore.from_url(memory_url)
    url = store.write("a.jpg", image_bytes(size=(400, 100), fmt="JPEG"))

    shown = preview(store, url)

    assert shown.thumbnail is not None
    assert_thumbnail(from_data_uri(shown.thumbnail), (320, 80))
    assert (shown.full, shown.format) == (None, "JPEG")


def test_locally_a_missing_or_foreign_image_gets_no_thumbnail_and_does_not_raise(
    tmp_path: Path,
) -> None:
    store = ObjectStore.from_url(str(tmp_path / "out"))

    missing = preview(store, store.url("gone.png"))
    foreign = preview(store, str(tmp_path / "elsewhere.png"))

    assert (missing.thumbnail, missing.full, missing.problem) == (None, None, "FileNotFoundError")
    assert (foreign.thumbnail, foreign.full) == (None, None)
    assert foreign.problem == "stored outside this storage"
