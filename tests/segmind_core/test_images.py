"""Input images: URLs pass through, local images become checked data URIs."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFile

import segmind_core.images as images
from segmind_core.contract import validate_request
from segmind_core.errors import PermanentError
from segmind_core.images import InvalidInputImageError, to_image_ref
from segmind_core.object_store import ObjectStore
from tests.conftest import S3Server
from tests.support import decode, file_server, image_bytes

FORMATS = [
    ("JPEG", "jpg", "image/jpeg"),
    ("PNG", "png", "image/png"),
    ("GIF", "gif", "image/gif"),
    ("WEBP", "webp", "image/webp"),
]


def split_data_uri(uri: str) -> tuple[str, bytes]:
    """(MIME type, decoded bytes) of a ``data:<mime>;base64,<data>`` URI."""
    assert uri.startswith("data:")
    header, sep, payload = uri.partition(",")
    assert sep == ","
    assert header.endswith(";base64")
    return header.removeprefix("data:").removesuffix(";base64"), base64.b64decode(
        payload, validate=True
    )


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# Pass-through ------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "http://127.0.0.1:8000/cat.png",
        "https://example.com/images/cat.png?sig=abc&x=1",
        "HTTPS://EXAMPLE.COM/CAT.PNG",
        "data:image/png;base64,iVBORw0KGgo=",
    ],
)
def test_urls_and_data_uris_pass_through_unchanged(ref: str) -> None:
    assert to_image_ref(ref, field="input_image") == ref


# Local files -------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "suffix", "mime"), FORMATS)
@pytest.mark.parametrize("as_path", [False, True], ids=["str", "Path"])
def test_local_file_becomes_a_data_uri(
    tmp_path: Path, fmt: str, suffix: str, mime: str, as_path: bool
) -> None:
    data = image_bytes((10, 120, 200), (40, 30), fmt)
    path = write(tmp_path / f"input.{suffix}", data)
    ref = to_image_ref(path if as_path else str(path), field="input_image")
    got_mime, got = split_data_uri(ref)
    assert got_mime == mime
    assert got == data
    assert decode(got).format == fmt


def test_mime_comes_from_the_content_not_the_name(tmp_path: Path) -> None:
    data = image_bytes(fmt="JPEG")
    path = write(tmp_path / "really-a-jpeg.png", data)
    assert split_data_uri(to_image_ref(str(path), field="input_image"))[0] == "image/jpeg"


def test_home_directory_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    data = image_bytes(fmt="PNG")
    write(tmp_path / "cat.png", data)
    assert split_data_uri(to_image_ref("~/cat.png", field="input_image")) == ("image/png", data)


def test_the_result_passes_the_contract(tmp_path: Path) -> None:
    path = write(tmp_path / "a.webp", image_bytes(fmt="WEBP"))
    ref = to_image_ref(path, field="image_urls[0]")
    request = validate_request("p-image-edit", {"prompt": "x", "image_urls": [ref]})
    assert request.input_images() == [("image_urls[0]", ref)]


# Bytes and PIL images ------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "suffix", "mime"), FORMATS)
def test_bytes_become_a_data_uri(fmt: str, suffix: str, mime: str) -> None:
    data = image_bytes((1, 2, 3), (20, 10), fmt)
    assert split_data_uri(to_image_ref(data, field="input_image")) == (mime, data)


def test_bytearray_is_accepted() -> None:
    data = image_bytes()
    assert split_data_uri(to_image_ref(bytearray(data), field="x")) == ("image/png", data)


def test_new_rgb_image_is_sent_as_png() -> None:
    image = Image.new("RGB", (30, 20), (200, 10, 10))
    mime, data = split_data_uri(to_image_ref(image, field="input_image"))
    assert mime == "image/png"
    back = decode(data)
    assert back.format == "PNG"
    assert back.size == (30, 20)
    assert back.getpixel((0, 0)) == (200, 10, 10)


def test_rgba_image_keeps_its_alpha() -> None:
    image = Image.new("RGBA", (8, 8), (10, 20, 30, 40))
    mime, data = split_data_uri(to_image_ref(image, field="input_image"))
    assert mime == "image/png"
    back = decode(data)
    assert back.mode == "RGBA"
    assert back.getpixel((3, 3)) == (10, 20, 30, 40)


def test_image_opened_from_a_jpeg_stays_jpeg() -> None:
    opened = Image.open(io.BytesIO(image_bytes((90, 90, 90), (33, 22), "JPEG")))
    assert opened.format == "JPEG"
    mime, data = split_data_uri(to_image_ref(opened, field="input_image"))
    assert mime == "image/jpeg"
    back = decode(data)
    assert back.format == "JPEG"
    assert back.size == (33, 22)


def test_grayscale_jpeg_image_is_sent_as_rgb_jpeg() -> None:
    buffer = io.BytesIO()
    Image.new("L", (12, 12), 128).save(buffer, format="JPEG")
    opened = Image.open(io.BytesIO(buffer.getvalue()))
    assert opened.mode == "L"
    mime, data = split_data_uri(to_image_ref(opened, field="input_image"))
    assert mime == "image/jpeg"
    assert decode(data).mode == "RGB"


def test_image_opened_from_a_gif_is_sent_as_png() -> None:
    opened = Image.open(io.BytesIO(image_bytes(fmt="GIF")))
    mime, data = split_data_uri(to_image_ref(opened, field="input_image"))
    assert mime == "image/png"
    assert decode(data).format == "PNG"


# Refusals, all before anything is sent ---------------------------------------------


def test_missing_file_names_the_field_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "cat.png"
    with pytest.raises(InvalidInputImageError) as caught:
        to_image_ref(str(missing), field="input_image_2")
    error = caught.value
    assert error.field == "input_image_2"
    assert str(error).startswith("input_image_2: no such file")
    assert str(missing) in str(error)
    assert isinstance(error, PermanentError)
    assert isinstance(error, ValueError)


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputImageError, match="no such file"):
        to_image_ref(tmp_path, field="input_image")


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.png", b"just some text, not pixels\n")
    with pytest.raises(InvalidInputImageError) as caught:
        to_image_ref(path, field="image_urls[1]")
    assert caught.value.field == "image_urls[1]"
    assert "not a readable image (JPEG, PNG, GIF or WEBP)" in str(caught.value)
    assert str(path) in str(caught.value)


def test_bmp_file_is_refused_with_its_format(tmp_path: Path) -> None:
    path = write(tmp_path / "old.bmp", image_bytes(size=(8, 8), fmt="BMP"))
    with pytest.raises(InvalidInputImageError, match=r"is a BMP image; the endpoints take JPEG"):
        to_image_ref(path, field="input_image")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.png", b"")
    with pytest.raises(InvalidInputImageError, match=r"input_image: file .*empty\.png is empty"):
        to_image_ref(path, field="input_image")


def test_empty_bytes_are_refused() -> None:
    with pytest.raises(InvalidInputImageError, match="the image bytes is empty"):
        to_image_ref(b"", field="input_image")


def test_truncated_image_is_refused() -> None:
    data = image_bytes(size=(64, 48))
    with pytest.raises(InvalidInputImageError, match="not a readable image"):
        to_image_ref(data[: len(data) // 2], field="input_image")


def _noise(size: tuple[int, int] = (240, 160)) -> Image.Image:
    return Image.effect_noise(size, 60).convert("RGB")


def _encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _animated_gif() -> bytes:
    frames = [_noise((120, 80)).convert("P") for _ in range(3)]
    return _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _cuts(data: bytes) -> list[int]:
    """Lengths to cut ``data`` to: every 97th byte, and the last few bytes one by one."""
    return sorted({*range(16, len(data) - 2, 97), *range(len(data) - 8, len(data) - 1)})


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("progressive-jpeg", _encoded(_noise(), "JPEG", progressive=True)),
        ("baseline-jpeg", _encoded(_noise(), "JPEG")),
        ("animated-gif", _animated_gif()),
    ],
)
def test_an_image_cut_anywhere_is_refused_and_whole_is_accepted(name: str, data: bytes) -> None:
    mime = "image/gif" if name.endswith("gif") else "image/jpeg"
    assert to_image_ref(data, field="input_image").startswith(f"data:{mime};base64,")
    for length in _cuts(data):
        with pytest.raises(InvalidInputImageError, match="or is truncated"):
            to_image_ref(data[:length], field="input_image")


def test_a_progressive_jpeg_is_checked_from_its_markers_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pillow decodes a progressive JPEG with a buffer of every coefficient (hundreds
    # of MiB at 64 MP, draft mode or not): its pixels are never decoded here.
    decoded: list[object] = []

    def load(self: ImageFile.ImageFile) -> Any:
        decoded.append(self.size)
        raise RuntimeError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    data = _encoded(_noise(), "JPEG", progressive=True)

    assert to_image_ref(data, field="input_image").startswith("data:image/jpeg;base64,")
    with pytest.raises(InvalidInputImageError, match="or is truncated"):
        to_image_ref(data[:-100], field="input_image")
    assert decoded == []


@pytest.mark.parametrize("progressive", [True, False])
def test_a_jpeg_with_bytes_after_its_end_is_accepted(progressive: bool) -> None:
    # A motion photo carries its video after the picture; such bytes may hold
    # anything, markers included.
    data = _encoded(_noise(), "JPEG", progressive=progressive)
    trailer = b"\x00ftypmp42" + b"\xff\xda\x00\x08" * 50 + bytes(range(256)) * 40

    assert to_image_ref(data + trailer, field="input_image").startswith("data:image/jpeg;")


def test_a_jpeg_with_more_pictures_mpo_is_a_jpeg() -> None:
    # Phone photos carry a depth or gain map as a second picture: Pillow reads MPO.
    data = _encoded(_noise(), "MPO", save_all=True, append_images=[_noise()])
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.format == "MPO"

    assert to_image_ref(data, field="input_image").startswith("data:image/jpeg;base64,")
    with pytest.raises(InvalidInputImageError, match="or is truncated"):
        to_image_ref(data[: len(data) // 4], field="input_image")


def test_oversized_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = image_bytes(size=(64, 48))
    monkeypatch.setattr(images, "MAX_INPUT_BYTES", len(data) - 1)
    path = write(tmp_path / "big.png", data)
    with pytest.raises(InvalidInputImageError) as caught:
        to_image_ref(path, field="input_image")
    assert f"is {len(data)} bytes; the limit is {len(data) - 1}" in str(caught.value)


def test_file_at_the_limit_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = image_bytes(size=(64, 48))
    monkeypatch.setattr(images, "MAX_INPUT_BYTES", len(data))
    path = write(tmp_path / "ok.png", data)
    assert split_data_uri(to_image_ref(path, field="input_image"))[1] == data


def test_oversized_bytes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_INPUT_BYTES", 100)
    with pytest.raises(InvalidInputImageError, match="the limit is 100"):
        to_image_ref(image_bytes(size=(64, 48)), field="input_image")


def test_oversized_pil_image_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_INPUT_BYTES", 100)
    image = Image.linear_gradient("L").convert("RGB")  # 256x256, far above 100 bytes as PNG
    with pytest.raises(InvalidInputImageError):
        to_image_ref(image, field="input_image")


def test_too_many_pixels_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_INPUT_PIXELS", 64 * 48 - 1)
    expected = f"is 64x48 = {64 * 48} pixels, more than the {64 * 48 - 1} allowed"
    with pytest.raises(InvalidInputImageError, match=expected):
        to_image_ref(image_bytes(size=(64, 48)), field="input_image")


@pytest.mark.parametrize(
    "ref",
    ["gs://bucket/x.png", "ftp://host/x.png", "gopher://host/x.png", "file:///etc/hosts"],
)
def test_schemes_outside_the_policy_are_refused(ref: str) -> None:
    scheme = ref.split(":", 1)[0]
    with pytest.raises(InvalidInputImageError) as caught:
        to_image_ref(ref, field="input_image")
    assert caught.value.field == "input_image"
    assert f"{scheme}:// inputs are not accepted" in str(caught.value)
    assert "use http(s), s3, or a file under" in str(caught.value)


def s3_store(s3: S3Server, base_url: str = "s3://outputs/runs") -> ObjectStore:
    """A store on the moto server, with its credentials and endpoint given explicitly."""
    return ObjectStore.from_url(
        base_url,
        key=s3.access_key_id,
        secret=s3.secret_access_key,
        client_kwargs={"endpoint_url": s3.endpoint_url, "region_name": s3.region},
    )


def test_an_s3_input_outside_the_allowed_buckets_is_refused_before_reading(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's credentials reach a bucket the person who triggers a run may not read.
    client = s3.client()
    client.create_bucket(Bucket="hr-private")
    client.put_object(Bucket="hr-private", Key="badge.png", Body=image_bytes(size=(32, 24)))
    client.put_object(Bucket="outputs", Key="runs/inputs/cup.png", Body=image_bytes(size=(32, 24)))
    store = s3_store(s3)
    monkeypatch.delenv("SEGMIND_INPUT_BUCKETS", raising=False)

    with pytest.raises(InvalidInputImageError) as refused:
        images.read_image_input("s3://hr-private/badge.png", field="image_urls[0]", store=store)
    assert str(refused.value).startswith(
        "image_urls[0]: s3://hr-private/badge.png is outside the storage inputs may be read "
        "from (the output storage's location, s3://outputs/runs; none in SEGMIND_INPUT_BUCKETS)"
    )
    # The output storage's own location is readable; a configured bucket too.
    assert images.read_image_input("s3://outputs/runs/inputs/cup.png", field="f", store=store)
    monkeypatch.setenv("SEGMIND_INPUT_BUCKETS", "s3://hr-private")
    assert images.read_image_input("s3://hr-private/badge.png", field="f", store=store)


def test_the_output_bucket_beyond_the_storage_prefix_is_not_an_input(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Storage s3://outputs/segmind shares its bucket with another team's files.
    client = s3.client()
    client.put_object(Bucket="outputs", Key="finance/scan.png", Body=image_bytes(size=(32, 24)))
    client.put_object(Bucket="outputs", Key="segmind/in.png", Body=image_bytes(size=(32, 24)))
    store = s3_store(s3, "s3://outputs/segmind")
    monkeypatch.delenv("SEGMIND_INPUT_BUCKETS", raising=False)

    for url in ("s3://outputs/finance/scan.png", "s3a://outputs/finance/scan.png"):
        with pytest.raises(InvalidInputImageError) as refused:
            images.resolve_image(url, field="input_image", store=store)
        assert str(refused.value).startswith(
            f"input_image: {url} is outside the storage inputs may be read from (the output "
            "storage's location, s3://outputs/segmind; none in SEGMIND_INPUT_BUCKETS)"
        )
    assert images.read_image_input("s3://outputs/segmind/in.png", field="f", store=store)


def test_an_s3a_input_is_read_with_the_stores_credentials_and_endpoint(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ambient AWS settings point nowhere useful (a closed loopback port, no
    # credentials): an s3a:// input must be read through the store, as s3:// is.
    closed = "http://127.0.0.1:9"
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.setenv(name, closed)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ambient-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    data = image_bytes((200, 40, 40), (32, 24))
    s3.client().put_object(Bucket="outputs", Key="runs/photos/a.png", Body=data)
    store = s3_store(s3)

    assert (
        images.read_image_input("s3a://outputs/runs/photos/a.png", field="f", store=store) == data
    )
    resolved = images.resolve_image("s3a://outputs/runs/photos/a.png", field="f", store=store)
    assert resolved.identity == images.image_identity(
        "s3://outputs/runs/photos/a.png", field="f", store=store
    )
    assert resolved.ref.startswith(s3.endpoint_url)  # presigned on the store's endpoint


# EXIF orientation: inputs are sent upright ------------------------------------------------

ORIENTATION = 0x0112
RED, BLUE = (255, 0, 0), (0, 0, 255)


def turned_photo(fmt: str = "JPEG", orientation: int = 6) -> bytes:
    """A 40x30 picture stored landscape whose EXIF says how to show it.

    Blue, with a red square at the stored top-left corner. Orientation 6 (what a
    phone held upright writes) means "turn 90 degrees clockwise to show": shown,
    it is 30x40 with the red square at the top-right.
    """
    image = Image.new("RGB", (40, 30), BLUE)
    image.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def near(pixel: Any, color: tuple[int, int, int]) -> bool:
    return all(abs(int(a) - b) < 40 for a, b in zip(pixel[:3], color, strict=True))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_photo_turned_by_its_exif_is_sent_upright(tmp_path: Path, fmt: str) -> None:
    # A portrait phone photo is stored landscape with "rotate 90" in its EXIF: the
    # service must see the portrait picture (match_input_image follows its shape).
    path = write(tmp_path / f"portrait.{fmt.lower()}", turned_photo(fmt))

    mime, sent = split_data_uri(to_image_ref(str(path), field="input_image"))

    upright = decode(sent)
    assert (upright.format, upright.size) == (fmt, (30, 40))
    assert mime == f"image/{fmt.lower()}"
    assert upright.getexif().get(ORIENTATION, 1) == 1  # nothing left to turn it again
    rgb = upright.convert("RGB")
    assert near(rgb.getpixel((25, 5)), RED)  # the red square is now top-right
    assert near(rgb.getpixel((5, 5)), BLUE)
    assert near(rgb.getpixel((5, 35)), BLUE)


def test_the_identity_of_a_turned_photo_is_the_digest_of_what_is_sent(tmp_path: Path) -> None:
    path = write(tmp_path / "portrait.jpg", turned_photo())

    resolved = images.resolve_image(str(path), field="input_image")

    _, sent = split_data_uri(resolved.ref)
    assert resolved.identity == "sha256:" + hashlib.sha256(sent).hexdigest()
    assert images.image_identity(str(path), field="input_image") == resolved.identity
    assert images.read_image_input(str(path), field="input_image") == sent
    # The same picture as bytes is the same input.
    assert images.image_identity(path.read_bytes(), field="f") == resolved.identity


@pytest.mark.parametrize("orientation", [None, 1])
def test_an_upright_photo_is_sent_byte_for_byte(tmp_path: Path, orientation: int | None) -> None:
    data = (
        image_bytes(size=(40, 30), fmt="JPEG")
        if orientation is None
        else turned_photo(orientation=1)
    )
    path = write(tmp_path / "upright.jpg", data)
    assert split_data_uri(to_image_ref(str(path), field="input_image"))[1] == data


def test_a_turned_photo_at_a_url_is_sent_upright_instead_of_its_url() -> None:
    turned, upright = turned_photo(), image_bytes(size=(40, 30), fmt="JPEG")
    files = {
        "/turned.jpg": (200, turned, "image/jpeg"),
        "/upright.jpg": (200, upright, "image/jpeg"),
    }
    with file_server(files) as base:
        sent_as_is = images.resolve_image(f"{base}/upright.jpg", field="input_image")
        turned_url = f"{base}/turned.jpg"
        resolved = images.resolve_image(turned_url, field="input_image")

    assert sent_as_is.ref == f"{base}/upright.jpg"
    _, sent = split_data_uri(resolved.ref)
    assert decode(sent).size == (30, 40)
    assert resolved.identity == turned_url  # the identity of a URL input is still its URL
    assert resolved.source == turned_url


def test_a_turned_photo_in_the_bucket_is_uploaded_upright_not_presigned_as_is(
    s3: S3Server,
) -> None:
    s3.client().put_object(Bucket="outputs", Key="runs/photos/portrait.jpg", Body=turned_photo())
    store = s3_store(s3)

    resolved = images.resolve_image("s3://outputs/runs/photos/portrait.jpg", field="f", store=store)

    digest = resolved.identity.removeprefix("sha256:")
    assert f"/outputs/runs/inputs/{digest}.jpg?" in resolved.ref
    sent = s3.client().get_object(Bucket="outputs", Key=f"runs/inputs/{digest}.jpg")["Body"].read()
    assert hashlib.sha256(sent).hexdigest() == digest
    assert decode(sent).size == (30, 40)


# Presigned URLs: the same object signed again is the same input ---------------------------

SIGV4 = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261207%2Fus-east-1%2Fs3"
    "&X-Amz-Date=20261207T101010Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Security-Token=tok&X-Amz-Signature=abc123"
)


@pytest.mark.parametrize(
    ("url", "identity"),
    [
        (f"https://b.s3.amazonaws.com/a.png?{SIGV4}", "https://b.s3.amazonaws.com/a.png"),
        (
            f"https://b.s3.amazonaws.com/a.png?versionId=7&{SIGV4}&response-content-type=image%2Fpng",
            "https://b.s3.amazonaws.com/a.png?versionId=7&response-content-type=image%2Fpng",
        ),
        (
            "https://storage.googleapis.com/b/a.png?X-Goog-Algorithm=GOOG4-RSA-SHA256"
            "&X-Goog-Credential=x&X-Goog-Date=20261207T101010Z&X-Goog-Expires=900"
            "&X-Goog-SignedHeaders=host&X-Goog-Signature=ff00",
            "https://storage.googleapis.com/b/a.png",
        ),
        (
            "https://b.s3.amazonaws.com/a.png?AWSAccessKeyId=AKIA&Expires=1765100000"
            "&Signature=abc%3D&x-amz-security-token=tok",
            "https://b.s3.amazonaws.com/a.png",
        ),
        (
            "https://d111.cloudfront.net/a.png?Expires=1765100000&Signature=abc&Key-Pair-Id=K2",
            "https://d111.cloudfront.net/a.png",
        ),
        (
            "https://acct.blob.core.windows.net/c/a.png?sv=2022-11-02&ss=b&srt=o&sp=r"
            "&se=2026-12-08T00:00:00Z&st=2026-12-07T00:00:00Z&spr=https&sig=abc%3D",
            "https://acct.blob.core.windows.net/c/a.png",
        ),
        # No signature: every parameter is part of what is fetched.
        (
            "https://example.com/a.png?size=2&expires=1",
            "https://example.com/a.png?size=2&expires=1",
        ),
        ("https://example.com/a.png?X-Amz-Date=1", "https://example.com/a.png?X-Amz-Date=1"),
        ("https://example.com/a.png?sig=1&w=2", "https://example.com/a.png?sig=1&w=2"),
        ("https://example.com/a.png", "https://example.com/a.png"),
    ],
)
def test_the_identity_of_a_presigned_url_leaves_its_signature_out(url: str, identity: str) -> None:
    assert images.remote_identity(url) == identity
    assert images.image_identity(url, field="f") == identity


def test_an_object_presigned_twice_is_one_input(s3: S3Server) -> None:
    # Real presigned URLs of the moto server: signed at different times for different
    # lifetimes, they differ, yet name one object, so one cache key.
    s3.client().put_object(Bucket="outputs", Key="runs/photos/cup.png", Body=image_bytes())
    first = s3_store(s3).presigned_url("photos/cup.png")
    second = ObjectStore.from_url(
        "s3://outputs/runs",
        presign_expiry_s=600,
        key=s3.access_key_id,
        secret=s3.secret_access_key,
        client_kwargs={"endpoint_url": s3.endpoint_url, "region_name": s3.region},
    ).presigned_url("photos/cup.png")
    assert first is not None
    assert second is not None
    assert first != second

    resolved = [images.resolve_image(url, field="input_image") for url in (first, second)]

    assert [r.ref for r in resolved] == [first, second]  # each is sent as given
    assert (
        resolved[0].identity
        == resolved[1].identity
        == f"{s3.endpoint_url}/outputs/runs/photos/cup.png"
    )
