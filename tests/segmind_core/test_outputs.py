"""OutputStore: images with JSON sidecars, on S3 (moto on loopback) and a local folder."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from segmind_core.contract import OutputFormat
from segmind_core.object_store import ObjectStore
from segmind_core.outputs import (
    SIDECAR_SUFFIX,
    SPILL_DIR_ENV,
    OutputStore,
    StorageRetry,
    StoredImage,
    default_spill_dir,
    output_key,
    queue_key,
    sanitise_key_part,
    service_tag,
)
from tests.conftest import S3Server
from tests.support import decode, image_bytes

PREFIX = "prefix"
METADATA: dict[str, Any] = {
    "flow": "replace-background",
    "slug": "p-image-edit",
    "request": {"prompt": "make it blue", "seed": 5},
    "cost_usd": 0.05,
    "tags": ["a", "b"],
}


def s3_store(s3: S3Server) -> ObjectStore:
    return ObjectStore.from_url(
        f"s3://outputs/{PREFIX}",
        key=s3.access_key_id,
        secret=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        client_kwargs={"region_name": s3.region},
    )


def s3_object(s3: S3Server, key: str) -> bytes:
    """What the bucket holds under ``prefix/key``, read by an independent client."""
    body: bytes = s3.client().get_object(Bucket="outputs", Key=f"{PREFIX}/{key}")["Body"].read()
    return body


def s3_keys(s3: S3Server) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket="outputs")
    return sorted(o["Key"] for o in listed.get("Contents", []))


# Round trips -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pil_format", "output_format"), [("PNG", OutputFormat.PNG), ("JPEG", OutputFormat.JPG)]
)
def test_save_then_load_on_s3(s3: S3Server, pil_format: str, output_format: OutputFormat) -> None:
    outputs = OutputStore(s3_store(s3))
    image = image_bytes((10, 120, 200), (64, 48), pil_format)
    key = output_key("replace background", date(2026, 3, 4), "job 1", output_format)

    saved = outputs.save(key, image, METADATA)
    loaded = outputs.load(key)

    assert loaded is not None
    assert loaded == saved
    assert loaded.key == key == f"replace-background/2026-03-04/job-1.{output_format.value}"
    assert loaded.url == f"s3://outputs/{PREFIX}/{key}"
    assert loaded.format is output_format
    assert (loaded.width, loaded.height) == (64, 48)
    assert loaded.size_bytes == len(image)
    assert loaded.sha256 == hashlib.sha256(image).hexdigest()
    assert s3_object(s3, key) == image
    assert outputs.read_verified(loaded) == image
    assert decode(outputs.read_verified(loaded)).format == pil_format
    assert s3_keys(s3) == [f"{PREFIX}/{key}", f"{PREFIX}/{key}{SIDECAR_SUFFIX}"]


@pytest.mark.parametrize(
    ("pil_format", "output_format"), [("PNG", OutputFormat.PNG), ("JPEG", OutputFormat.JPG)]
)
def test_save_then_load_on_a_local_folder(
    tmp_path: Path, pil_format: str, output_format: OutputFormat
) -> None:
    outputs = OutputStore(ObjectStore.from_url(str(tmp_path / "out")))
    image = image_bytes((200, 200, 10), (33, 17), pil_format)
    key = output_key("flow", date(2026, 12, 31), "abc123", output_format)

    saved = outputs.save(key, image, METADATA)
    loaded = OutputStore(ObjectStore.from_url(str(tmp_path / "out"))).load(key)

    assert loaded == saved
    assert loaded is not None
    image_path = tmp_path / "out" / "flow" / "2026-12-31" / f"abc123.{output_format.value}"
    assert loaded.url == str(image_path)
    assert image_path.read_bytes() == image
    sidecar = json.loads(Path(f"{image_path}{SIDECAR_SUFFIX}").read_text())
    assert sidecar == loaded.metadata
    assert (loaded.width, loaded.height, loaded.format) == (33, 17, output_format)
    assert outputs.read_verified(loaded) == image


def test_sidecar_contents_on_s3(s3: S3Server) -> None:
    outputs = OutputStore(s3_store(s3))
    image = image_bytes((1, 2, 3), (40, 30), "PNG")
    key = "flow/2026-01-02/job.png"

    before = datetime.now(UTC)
    saved = outputs.save(key, image, METADATA)
    after = datetime.now(UTC)

    sidecar = json.loads(s3_object(s3, key + ".json"))
    stored_image = s3_object(s3, key)
    for name, value in METADATA.items():
        assert sidecar[name] == value
    assert sidecar["output"] == {
        "key": key,
        "url": f"s3://outputs/{PREFIX}/{key}",
        "sha256": hashlib.sha256(stored_image).hexdigest(),
        "format": "png",
        "width": 40,
        "height": 30,
        "bytes": len(stored_image),
    }
    assert stored_image == image
    stored_at = datetime.fromisoformat(sidecar["stored_at"])
    assert stored_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= stored_at <= after
    assert set(sidecar) == {*METADATA, "output", "stored_at"}
    assert saved.metadata == sidecar


def test_metadata_is_not_mutated_and_unusual_values_are_stringified(tmp_path: Path) -> None:
    outputs = OutputStore(ObjectStore.from_url(str(tmp_path)))
    metadata = {"when": date(2026, 1, 2), "path": Path("/x/y")}
    original = dict(metadata)

    saved = outputs.save("k.png", image_bytes(size=(8, 8)), metadata)

    assert metadata == original
    assert "output" not in metadata
    loaded = outputs.load("k.png")
    assert loaded is not None
    assert loaded.metadata["when"] == "2026-01-02"
    assert loaded.metadata["path"] == "/x/y"
    assert saved.sha256 == loaded.sha256


def test_saving_again_replaces_image_and_sidecar(s3: S3Server) -> None:
    outputs = OutputStore(s3_store(s3))
    first = image_bytes((255, 0, 0), (10, 10))
    second = image_bytes((0, 255, 0), (20, 12))

    outputs.save("k.png", first, {"n": 1})
    outputs.save("k.png", second, {"n": 2})
    loaded = outputs.load("k.png")

    assert loaded is not None
    assert loaded.metadata["n"] == 2
    assert (loaded.width, loaded.height) == (20, 12)
    assert outputs.read_verified(loaded) == second == s3_object(s3, "k.png")


# Visibility protocol: image first, sidecar last ----------------------------------


def test_load_is_none_when_nothing_is_stored(s3: S3Server) -> None:
    assert OutputStore(s3_store(s3)).load("flow/2026-01-02/none.png") is None


def test_image_without_sidecar_is_absent(s3: S3Server) -> None:
    # A writer that died between its two writes: the image landed, the sidecar did not.
    key = "flow/2026-01-02/orphan.png"
    s3.client().put_object(Bucket="outputs", Key=f"{PREFIX}/{key}", Body=image_bytes())
    store = s3_store(s3)

    assert store.exists(key)
    assert OutputStore(store).load(key) is None


def test_image_is_written_before_the_sidecar(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    store = s3_store(s3)
    key = "flow/2026-01-02/ordered.png"
    events: list[tuple[str, list[str]]] = []
    real_write: Callable[[str, bytes], str] = store.write

    def spy(written_key: str, data: bytes) -> str:
        events.append((written_key, s3_keys(s3)))  # what the bucket held just before
        return real_write(written_key, data)

    monkeypatch.setattr(store, "write", spy)

    OutputStore(store).save(key, image_bytes(), {})

    assert [written for written, _ in events] == [key, key + SIDECAR_SUFFIX]
    assert events[0][1] == []
    assert events[1][1] == [f"{PREFIX}/{key}"]


class SidecarFailsStore(ObjectStore):
    """A store whose write of any sidecar fails, as if the writer died just then."""

    def write(self, key: str, data: bytes) -> str:
        if key.endswith(SIDECAR_SUFFIX):
            raise OSError("the writer died before the sidecar")
        return super().write(key, data)


def test_failed_sidecar_write_leaves_the_image_absent(s3: S3Server) -> None:
    plain = s3_store(s3)
    failing = SidecarFailsStore(plain.fs, plain.protocol, plain.root)
    key = "flow/2026-01-02/half.png"
    image = image_bytes()

    with pytest.raises(OSError, match="before the sidecar"):
        OutputStore(failing, retry=FakeClock().retry()).save(key, image, {"x": 1})

    assert s3_keys(s3) == [f"{PREFIX}/{key}"]
    assert s3_object(s3, key) == image
    assert OutputStore(s3_store(s3)).load(key) is None


# Retries ---------------------------------------------------------------------


class FakeClock:
    """Time that passes only when slept: retries without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def retry(self, **kwargs: float) -> StorageRetry:
        return StorageRetry(sleep=self.sleep, clock=lambda: self.now, **kwargs)


class FlakyStore(ObjectStore):
    """A store whose next ``failures`` writes fail; every write attempt is counted."""

    failures = 0
    attempts = 0

    def write(self, key: str, data: bytes) -> str:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise OSError("SlowDown (simulated)")
        return super().write(key, data)


def flaky(s3: S3Server, failures: int) -> FlakyStore:
    plain = s3_store(s3)
    store = FlakyStore(plain.fs, plain.protocol, plain.root)
    store.failures = failures
    return store


def test_writes_failing_a_few_times_are_retried_with_growing_waits(s3: S3Server) -> None:
    """BUG: one failed write (an S3 SlowDown) raised at once."""
    store, clock = flaky(s3, failures=4), FakeClock()
    key = "flow/2026-01-02/flaky.png"

    saved = OutputStore(store, retry=clock.retry()).save(key, image_bytes(), METADATA)

    assert store.attempts == 6, "4 failures, then the image and its sidecar"
    assert s3_object(s3, key) == image_bytes()
    assert json.loads(s3_object(s3, key + SIDECAR_SUFFIX))["output"]["sha256"] == saved.sha256
    assert len(clock.waits) == 4
    assert clock.waits[-1] > clock.waits[0]
    assert all(wait <= StorageRetry().backoff_max_s for wait in clock.waits)


def test_writes_are_given_up_once_the_budget_is_spent(s3: S3Server) -> None:
    store, clock = flaky(s3, failures=10**6), FakeClock()

    with pytest.raises(OSError, match="SlowDown"):
        OutputStore(store, retry=clock.retry(max_elapsed_s=20)).save("k/x.png", image_bytes(), {})

    assert 20 - StorageRetry().backoff_max_s <= clock.now <= 20
    assert store.attempts == len(clock.waits) + 1
    assert s3_keys(s3) == []


# What a key holds ------------------------------------------------------------


def test_probe_tells_what_a_key_holds(s3: S3Server) -> None:
    outputs = OutputStore(s3_store(s3))
    key = "flow/2026-01-02/probed.png"
    bucket = s3.client()

    empty = outputs.probe(key)
    assert (empty.writable, empty.intact, empty.has_sidecar) == (True, False, False)

    saved = outputs.save(key, image_bytes(), {"service": "http://a"})
    whole = outputs.probe(key)
    assert (whole.writable, whole.intact) == (False, True)
    assert whole.made_by("http://a")
    assert not whole.made_by("http://b")
    assert whole.image_size == saved.size_bytes

    bucket.put_object(Bucket="outputs", Key=f"{PREFIX}/{key}", Body=b"other bytes")
    altered = outputs.probe(key)
    assert (altered.writable, altered.intact) == (False, False)

    bucket.delete_object(Bucket="outputs", Key=f"{PREFIX}/{key}")
    gone = outputs.probe(key)
    assert (gone.writable, gone.intact, gone.image_size) == (True, False, None)

    bucket.put_object(Bucket="outputs", Key=f"{PREFIX}/{key}", Body=image_bytes())
    bucket.put_object(Bucket="outputs", Key=f"{PREFIX}/{key}.json", Body=b"{not json")
    unreadable = outputs.probe(key)
    assert unreadable.stored is None
    assert (unreadable.writable, unreadable.intact, unreadable.has_sidecar) == (False, False, True)


def test_an_unreadable_sidecar_loads_as_absent(tmp_path: Path) -> None:
    """BUG (read): an unreadable sidecar raised, so its row failed on every run."""
    outputs = OutputStore(ObjectStore.from_url(str(tmp_path)))
    outputs.save("f/d/cut.png", image_bytes(), {})
    (tmp_path / "f/d/cut.png.json").write_text('{"output": {"key"')
    (tmp_path / "f/d/odd.png.json").write_text('["a list"]')

    assert outputs.load("f/d/cut.png") is None
    assert outputs.load("f/d/odd.png") is None


# Paid images kept locally when storage refuses them ------------------------------


def test_a_spilled_image_is_found_again_checked_and_dropped(tmp_path: Path) -> None:
    outputs = OutputStore(ObjectStore.from_url("memory://unused"), spill_dir=tmp_path)
    image = image_bytes((1, 2, 3))

    path = outputs.spill("http://127.0.0.1:81", "abc", image, METADATA, "OSError: down")

    assert path.read_bytes() == image
    assert path.suffix == ".png"
    assert path.parent == tmp_path / "127.0.0.1-81"
    found = outputs.spilled("http://127.0.0.1:81", "abc")
    assert found is not None
    assert found[:2] == (image, METADATA)
    assert outputs.spilled("http://127.0.0.1:82", "abc") is None, "another service's"
    assert outputs.spilled("http://127.0.0.1:81", "abd") is None

    path.write_bytes(image_bytes((1, 2, 4)))
    assert outputs.spilled("http://127.0.0.1:81", "abc") is None, "altered"

    outputs.drop_spilled("http://127.0.0.1:81", "abc")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_the_spill_folder_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SPILL_DIR_ENV, str(tmp_path / "kept"))
    assert default_spill_dir() == tmp_path / "kept"
    assert OutputStore(ObjectStore.from_url("memory://x")).spill_dir == tmp_path / "kept"
    monkeypatch.delenv(SPILL_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_spill_dir() == tmp_path / "cache" / "segmind-prefect" / "unstored"


def test_queue_keys_hold_no_date_and_name_the_service() -> None:
    key = queue_key("Nightly Run", "Order #12", OutputFormat.PNG, "https://api.segmind.com")
    assert key == "api.segmind.com/nightly-run/order-12.png"
    assert service_tag("http://127.0.0.1:8123") == "127.0.0.1-8123"


# Verification ----------------------------------------------------------------


def test_read_verified_rejects_an_altered_object(s3: S3Server) -> None:
    outputs = OutputStore(s3_store(s3))
    key = "flow/2026-01-02/tamper.png"
    saved = outputs.save(key, image_bytes((9, 9, 9)), {})
    assert outputs.read_verified(saved) == image_bytes((9, 9, 9))

    s3.client().put_object(Bucket="outputs", Key=f"{PREFIX}/{key}", Body=image_bytes((9, 9, 10)))
    loaded = outputs.load(key)

    assert loaded is not None
    with pytest.raises(ValueError, match="sha256"):
        outputs.read_verified(loaded)
    with pytest.raises(ValueError, match=re.escape(saved.url)):
        outputs.read_verified(saved)


def test_read_verified_of_a_deleted_image_raises_file_not_found(s3: S3Server) -> None:
    outputs = OutputStore(s3_store(s3))
    key = "flow/2026-01-02/gone.png"
    saved = outputs.save(key, image_bytes(), {})
    s3.client().delete_object(Bucket="outputs", Key=f"{PREFIX}/{key}")

    with pytest.raises(FileNotFoundError):
        outputs.read_verified(saved)


# Only PNG and JPEG -----------------------------------------------------------


@pytest.mark.parametrize("pil_format", ["GIF", "WEBP", "BMP"])
def test_save_refuses_other_image_formats(s3: S3Server, pil_format: str) -> None:
    outputs = OutputStore(s3_store(s3))

    with pytest.raises(ValueError, match="only PNG and JPEG"):
        outputs.save("flow/2026-01-02/x.png", image_bytes(fmt=pil_format), {})

    assert s3_keys(s3) == []


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"<html>error</html>"])
def test_save_refuses_bytes_that_are_no_image_with_value_error(tmp_path: Path, data: bytes) -> None:
    # Documented: "Raises: ValueError: when image is not a PNG or JPEG."
    outputs = OutputStore(ObjectStore.from_url(str(tmp_path)))

    with pytest.raises(ValueError):  # noqa: PT011 - the documented type is the point
        outputs.save("x.png", data, {})

    assert list(tmp_path.iterdir()) == []


# Keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("job-1", "job-1"),
        ("Hello World", "hello-world"),
        ("UPPER_case.V2", "upper_case.v2"),
        ("a/b\\c", "a-b-c"),
        ("  padded  ", "padded"),
        ("a -- b", "a-b"),
        ("naïve café", "na-ve-caf"),
        ("日本語 job", "job"),
        ("../../etc/passwd", "etc-passwd"),
        ("..hidden", "hidden"),
        ("x" * 120, "x" * 120),
        ("sha256:0123abcd", "sha256-0123abcd"),
    ],
)
def test_sanitise_key_part(text: str, expected: str) -> None:
    assert sanitise_key_part(text) == expected


def test_a_long_part_keeps_its_start_and_ends_with_a_digest_of_the_whole() -> None:
    long_id = "sku-" + "x" * 130
    digest = hashlib.sha256(long_id.encode()).hexdigest()[:16]

    assert sanitise_key_part(long_id) == f"{long_id[:103]}-{digest}"
    # What follows the cut still tells names apart: an intermediate, a time stamp.
    names = {sanitise_key_part(long_id + suffix) for suffix in ("", "-background", "-t1", "-t2")}
    assert len(names) == 4
    assert all(len(name) == 120 for name in names)


@pytest.mark.parametrize("text", ["", "   ", "..", "../..", "///", "日本語", "-_.", "\n\t"])
def test_sanitise_key_part_rejects_what_leaves_nothing(text: str) -> None:
    with pytest.raises(ValueError, match="nothing usable"):
        sanitise_key_part(text)


@pytest.mark.parametrize(
    "text", ["Hello World", "../..x/..", "ÄÖÜ-1", "a" * 500, "-a-", "a..b", "Ω/ω/1"]
)
def test_sanitised_parts_are_safe(text: str) -> None:
    part = sanitise_key_part(text)

    assert re.fullmatch(r"[a-z0-9._-]{1,120}", part)
    assert part not in (".", "..")
    assert "/" not in part
    assert part[0] not in ".-_"
    assert part[-1] not in ".-_"
    assert sanitise_key_part(part) == part


@pytest.mark.parametrize(
    ("flow", "day", "name", "fmt", "expected"),
    [
        ("flow", date(2026, 1, 2), "job", OutputFormat.PNG, "flow/2026-01-02/job.png"),
        ("flow", date(2026, 1, 2), "job", OutputFormat.JPG, "flow/2026-01-02/job.jpg"),
        (
            "Replace Background",
            date(2026, 11, 30),
            "Job 42",
            OutputFormat.PNG,
            "replace-background/2026-11-30/job-42.png",
        ),
        ("a/b", date(2026, 1, 2), "../../evil", OutputFormat.PNG, "a-b/2026-01-02/evil.png"),
        (
            "F",
            date(2026, 7, 8),
            "N" * 300,
            OutputFormat.JPG,
            f"f/2026-07-08/{'n' * 103}-{hashlib.sha256(b'n' * 300).hexdigest()[:16]}.jpg",
        ),
    ],
)
def test_output_key(flow: str, day: date, name: str, fmt: OutputFormat, expected: str) -> None:
    key = output_key(flow, day, name, fmt)

    assert key == expected
    assert len(key.split("/")) == 3


@pytest.mark.parametrize(("flow", "name"), [("", "job"), ("flow", ""), ("flow", "..")])
def test_output_key_rejects_empty_parts(flow: str, name: str) -> None:
    with pytest.raises(ValueError, match="nothing usable"):
        output_key(flow, date(2026, 1, 2), name, OutputFormat.PNG)


def test_output_key_stays_under_the_store_root(tmp_path: Path) -> None:
    root = tmp_path / "out"
    outputs = OutputStore(ObjectStore.from_url(str(root)))
    key = output_key("../../up", date(2026, 1, 2), "../../x", OutputFormat.PNG)

    saved = outputs.save(key, image_bytes(size=(4, 4)), {})

    assert isinstance(saved, StoredImage)
    assert saved.url == str(root / "up" / "2026-01-02" / "x.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
