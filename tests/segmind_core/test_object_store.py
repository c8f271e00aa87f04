"""ObjectStore over a local folder, memory:// and S3 (moto on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import fsspec
import httpx
import pytest
from fsspec.core import url_to_fs

from segmind_core import object_store
from segmind_core.object_store import STALE_PART_S, ObjectStore
from tests.conftest import S3Server

ALL_BYTES = bytes(range(256)) * 4


def s3_options(s3: S3Server) -> dict[str, Any]:
    """The storage options s3fs needs for the moto server."""
    return {
        "key": s3.access_key_id,
        "secret": s3.secret_access_key,
        "endpoint_url": s3.endpoint_url,
        "client_kwargs": {"region_name": s3.region},
    }


@dataclass
class Backend:
    """A store plus what a test needs to check it from outside."""

    kind: str
    store: ObjectStore
    base_url: str
    options: dict[str, Any]
    s3: S3Server | None = None


@pytest.fixture(params=["local", "memory", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, memory_url: str) -> Backend:
    kind: str = request.param
    if kind == "local":
        base = str(tmp_path / "root")
        return Backend(kind, ObjectStore.from_url(base), base, {})
    if kind == "memory":
        return Backend(kind, ObjectStore.from_url(memory_url), memory_url, {})
    s3: S3Server = request.getfixturevalue("s3")
    options = s3_options(s3)
    base = "s3://outputs/prefix"
    return Backend(kind, ObjectStore.from_url(base, **options), base, options, s3)


def read_back(backend: Backend, url: str) -> bytes:
    """Open ``url`` with plain fsspec, as another program would."""
    with fsspec.open(url, "rb", **backend.options) as handle:
        data: bytes = handle.read()
    return data


# Round trip ------------------------------------------------------------------


def test_write_read_exists_round_trip(backend: Backend) -> None:
    store = backend.store

    assert not store.exists("a/b.png")
    url = store.write("a/b.png", ALL_BYTES)

    assert url == store.url("a/b.png")
    assert store.exists("a/b.png")
    assert store.read("a/b.png") == ALL_BYTES
    assert not store.exists("a/other.png")


def test_overwrite_replaces_the_content(backend: Backend) -> None:
    store = backend.store
    store.write("k.bin", b"first version, longer than the second")
    store.write("k.bin", b"second")

    assert store.read("k.bin") == b"second"


def test_reading_a_missing_key_raises_file_not_found(backend: Backend) -> None:
    with pytest.raises(FileNotFoundError):
        backend.store.read("missing/nothing.png")


def test_url_opens_again_with_fsspec(backend: Backend) -> None:
    url = backend.store.write("x/y/z.bin", ALL_BYTES)

    assert read_back(backend, url) == ALL_BYTES
    fs, path = url_to_fs(url, **backend.options)
    assert fs.cat_file(path) == ALL_BYTES


def test_separate_stores_on_the_same_url_see_each_others_writes(backend: Backend) -> None:
    backend.store.write("shared.bin", b"shared")

    other = ObjectStore.from_url(backend.base_url, **backend.options)

    assert other.exists("shared.bin")
    assert other.read("shared.bin") == b"shared"


# URL forms -------------------------------------------------------------------


def test_s3_url_form_and_what_landed_in_the_bucket(s3: S3Server) -> None:
    store = ObjectStore.from_url("s3://outputs/prefix", **s3_options(s3))

    url = store.write("a/b.png", b"png-bytes")

    assert url == "s3://outputs/prefix/a/b.png"
    assert store.url("a/b.png") == "s3://outputs/prefix/a/b.png"
    assert store.protocol == "s3"
    assert store.root == "outputs/prefix"
    obj = s3.client().get_object(Bucket="outputs", Key="prefix/a/b.png")
    assert obj["Body"].read() == b"png-bytes"


def test_s3_store_at_the_bucket_root(s3: S3Server) -> None:
    store = ObjectStore.from_url("s3://outputs/", **s3_options(s3))

    url = store.write("top.bin", b"top")

    assert url == "s3://outputs/top.bin"
    assert s3.client().get_object(Bucket="outputs", Key="top.bin")["Body"].read() == b"top"


def test_local_url_is_the_absolute_path(tmp_path: Path) -> None:
    store = ObjectStore.from_url(str(tmp_path / "root"))

    url = store.write("a/b.png", b"local")

    expected = tmp_path / "root" / "a" / "b.png"
    assert url == str(expected)
    assert os.path.isabs(url)
    assert expected.read_bytes() == b"local"


def test_local_base_url_with_a_trailing_slash(tmp_path: Path) -> None:
    store = ObjectStore.from_url(f"{tmp_path}/root/")

    assert store.url("k.bin") == str(tmp_path / "root" / "k.bin")


def test_memory_url_form(memory_url: str) -> None:
    store = ObjectStore.from_url(memory_url)

    url = store.write("a/b.png", b"mem")

    assert url == f"{memory_url}/a/b.png"
    assert url.startswith("memory://test-")
    assert fsspec.filesystem("memory").cat_file(urlsplit(url).netloc + "/a/b.png") == b"mem"


# Keys can't escape the root ----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a/b.png", "a/b.png"),
        ("/a/b.png", "a/b.png"),
        ("//a//b.png", "a/b.png"),
        ("a/./b/../c.png", "a/c.png"),
        ("../escape.png", "escape.png"),
        ("../../../etc/passwd", "etc/passwd"),
        ("a/../../..//b", "b"),
        ("/../x", "x"),
    ],
)
def test_path_normalises_keys_under_the_root(key: str, expected: str, memory_url: str) -> None:
    store = ObjectStore.from_url(memory_url)

    assert store.path(key) == f"{store.root}/{expected}"


@pytest.mark.parametrize("key", ["", ".", "/", "..", "../..", "a/..", "///"])
def test_keys_naming_nothing_are_rejected(key: str, backend: Backend) -> None:
    with pytest.raises(ValueError, match="invalid storage key"):
        backend.store.path(key)
    with pytest.raises(ValueError, match="invalid storage key"):
        backend.store.write(key, b"x")


def test_local_write_with_dot_dot_stays_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = ObjectStore.from_url(str(root))

    store.write("../../escape.bin", b"inside")

    assert (root / "escape.bin").read_bytes() == b"inside"
    assert not (tmp_path / "escape.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_s3_write_with_dot_dot_stays_under_the_prefix(s3: S3Server) -> None:
    store = ObjectStore.from_url("s3://outputs/prefix", **s3_options(s3))

    store.write("../../other-bucket/x.bin", b"inside")

    listed = s3.client().list_objects_v2(Bucket="outputs")
    assert [o["Key"] for o in listed["Contents"]] == ["prefix/other-bucket/x.bin"]


# Atomic local writes ---------------------------------------------------------


def test_local_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = ObjectStore.from_url(str(root))

    for i in range(5):
        store.write("dir/image.png", f"version {i}".encode())
    store.write("dir/other.png", b"other")

    everything = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert everything == ["dir", "dir/image.png", "dir/other.png"]
    assert store.read("dir/image.png") == b"version 4"


def test_concurrent_reader_sees_only_whole_old_or_new_content(tmp_path: Path) -> None:
    store = ObjectStore.from_url(str(tmp_path / "root"))
    old = b"O" * 2_000_000
    new = b"N" * 1_000_000
    store.write("big.bin", old)
    reader_started = threading.Event()
    writer_done = threading.Event()
    seen: set[str] = set()
    torn: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []

    def read_loop() -> None:
        try:
            for _ in range(100_000):  # bounded; stops once the writer is done
                data = store.read("big.bin")
                if data not in (old, new):
                    torn.append((len(data), data[:1] + data[-1:]))
                else:
                    seen.add("old" if data == old else "new")
                reader_started.set()
                if writer_done.is_set():
                    return
        except BaseException as error:
            errors.append(error)
            reader_started.set()

    reader = threading.Thread(target=read_loop)
    reader.start()
    assert reader_started.wait(timeout=10)
    try:
        for i in range(40):
            store.write("big.bin", new if i % 2 == 0 else old)
    finally:
        writer_done.set()
        reader.join(timeout=30)

    assert not reader.is_alive()
    assert errors == []
    assert torn == [], f"reader saw partial content: {torn[:3]}"
    assert seen, "the reader never completed a read"
    assert store.read("big.bin") == old
    assert not [p for p in (tmp_path / "root").iterdir() if p.name.endswith(".part")]


# Presigned URLs --------------------------------------------------------------


def test_presigned_url_is_none_off_s3(tmp_path: Path, memory_url: str) -> None:
    local = ObjectStore.from_url(str(tmp_path))
    memory = ObjectStore.from_url(memory_url)
    local.write("a.png", b"x")
    memory.write("a.png", b"x")

    assert local.presigned_url("a.png") is None
    assert memory.presigned_url("a.png") is None


def test_presigned_url_reads_without_credentials(s3: S3Server) -> None:
    store = ObjectStore.from_url("s3://outputs/prefix", **s3_options(s3))
    store.write("a/b.png", ALL_BYTES)

    url = store.presigned_url("a/b.png")

    assert url is not None
    parts = urlsplit(url)
    assert parts.scheme == "http"
    assert parts.hostname == "127.0.0.1"
    assert parts.port == urlsplit(s3.endpoint_url).port
    assert parts.path == "/outputs/prefix/a/b.png"
    # A bare client: no AWS credentials, no auth header, nothing but the URL.
    with httpx.Client(trust_env=False) as client:
        response = client.get(url)
    assert response.status_code == 200
    assert response.content == ALL_BYTES


def test_presigned_url_is_signed(s3: S3Server) -> None:
    store = ObjectStore.from_url("s3://outputs/prefix", **s3_options(s3))
    store.write("a/b.png", b"x")

    url = store.presigned_url("a/b.png")

    assert url is not None
    query = parse_qs(urlsplit(url).query)
    assert ("Signature" in query) or ("X-Amz-Signature" in query)


def test_presigned_url_never_contains_the_secret(s3: S3Server) -> None:
    store = ObjectStore.from_url("s3://outputs/prefix", **s3_options(s3))
    store.write("a/b.png", b"x")

    url = store.presigned_url("a/b.png")

    assert url is not None
    assert "SECRET" in s3.secret_access_key  # the check below can find it
    assert s3.secret_access_key not in url
    assert s3.secret_access_key not in unquote(url)
    assert "SECRET" not in unquote(url)


def test_presigned_url_lifetime_follows_presign_expiry_s(s3: S3Server) -> None:
    store = ObjectStore.from_url("s3://outputs/prefix", presign_expiry_s=120, **s3_options(s3))
    store.write("a/b.png", b"x")

    before = time.time()
    url = store.presigned_url("a/b.png")
    after = time.time()

    assert url is not None
    query = parse_qs(urlsplit(url).query)
    if "X-Amz-Expires" in query:
        assert int(query["X-Amz-Expires"][0]) == 120
    else:
        expires = int(query["Expires"][0])
        assert before + 120 - 2 <= expires <= after + 120 + 2


def test_presigned_url_for_an_s3_url_reads_without_credentials(s3: S3Server) -> None:
    store = ObjectStore.from_url("s3://outputs/prefix", **s3_options(s3))
    url = store.write("runs/a.png", ALL_BYTES)
    assert url == "s3://outputs/prefix/runs/a.png"

    presigned = store.presigned_url_for(url)

    assert presigned is not None
    parts = urlsplit(presigned)
    assert parts.scheme == "http"
    assert parts.hostname == "127.0.0.1"
    assert parts.port == urlsplit(s3.endpoint_url).port
    assert parts.path == "/outputs/prefix/runs/a.png"
    query = parse_qs(parts.query)
    assert ("Signature" in query) or ("X-Amz-Signature" in query)
    assert "SECRET" not in unquote(presigned)
    with httpx.Client(trust_env=False) as client:
        response = client.get(presigned)
    assert response.status_code == 200
    assert response.content == ALL_BYTES


def test_presigned_url_for_an_s3_url_outside_the_prefix(s3: S3Server) -> None:
    # Same filesystem, another prefix (e.g. an input uploaded by another flow).
    s3.client().put_object(Bucket="outputs", Key="elsewhere/b.png", Body=b"elsewhere")
    store = ObjectStore.from_url("s3://outputs/prefix", **s3_options(s3))

    presigned = store.presigned_url_for("s3://outputs/elsewhere/b.png")

    assert presigned is not None
    assert urlsplit(presigned).path == "/outputs/elsewhere/b.png"
    with httpx.Client(trust_env=False) as client:
        response = client.get(presigned)
    assert response.status_code == 200
    assert response.content == b"elsewhere"


def test_presigned_url_for_follows_presign_expiry_s(s3: S3Server) -> None:
    store = ObjectStore.from_url("s3://outputs/prefix", presign_expiry_s=90, **s3_options(s3))
    url = store.write("a.png", b"x")

    before = time.time()
    presigned = store.presigned_url_for(url)
    after = time.time()

    assert presigned is not None
    query = parse_qs(urlsplit(presigned).query)
    if "X-Amz-Expires" in query:
        assert int(query["X-Amz-Expires"][0]) == 90
    else:
        expires = int(query["Expires"][0])
        assert before + 90 - 2 <= expires <= after + 90 + 2


def test_presigned_url_for_a_url_on_another_filesystem_is_none(
    s3: S3Server, tmp_path: Path, memory_url: str
) -> None:
    store = ObjectStore.from_url("s3://outputs/prefix", **s3_options(s3))
    local = ObjectStore.from_url(str(tmp_path))
    memory = ObjectStore.from_url(memory_url)
    local_url = local.write("a.png", b"x")
    memory_url_of_a = memory.write("a.png", b"x")

    assert store.presigned_url_for(local_url) is None
    assert store.presigned_url_for(memory_url_of_a) is None
    assert store.presigned_url_for("https://127.0.0.1/a.png") is None


def test_presigned_url_for_is_none_off_s3(tmp_path: Path, memory_url: str) -> None:
    local = ObjectStore.from_url(str(tmp_path))
    memory = ObjectStore.from_url(memory_url)
    local_url = local.write("a.png", b"x")
    memory_url_of_a = memory.write("a.png", b"x")

    assert local.presigned_url_for(local_url) is None
    assert local.presigned_url_for(f"file://{local_url}") is None
    assert memory.presigned_url_for(memory_url_of_a) is None
    assert memory.presigned_url_for("s3://outputs/prefix/a.png") is None


def test_a_local_write_removes_at_once_a_leftover_whose_writer_here_is_gone(
    tmp_path: Path,
) -> None:
    # A batch killed and run again within seconds: the killed process's temporary
    # file names it, and it no longer runs.
    store = ObjectStore.from_url(str(tmp_path))
    folder = tmp_path / "batch"
    folder.mkdir()
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(ended.stdout)
    host = object_store._HOST
    dead = folder / f".row-1.png.0123abcd.{host}.{dead_pid}.part"
    live = folder / f".row-1.png.4567cdef.{host}.{os.getpid()}.part"  # renamed any moment
    elsewhere = folder / f".row-1.png.89abcdef.other-host.{dead_pid}.part"
    for leftover in (dead, live, elsewhere):
        leftover.write_bytes(b"half an image")

    store.write("batch/row-1.png", b"the whole image")

    assert (folder / "row-1.png").read_bytes() == b"the whole image"
    assert not dead.exists()
    assert live.exists()
    assert elsewhere.exists()  # another host's process: only once it is old


def test_a_local_write_removes_a_killed_writers_leftovers_of_that_key_only(
    tmp_path: Path,
) -> None:
    store = ObjectStore.from_url(str(tmp_path))
    folder = tmp_path / "batch"
    folder.mkdir()
    stale = folder / ".row-1.png.0123abcd.part"
    fresh = folder / ".row-1.png.4567cdef.part"  # a live writer's, renamed any moment
    other = folder / ".row-2.png.89abcdef.part"
    for leftover in (stale, fresh, other):
        leftover.write_bytes(b"half an image")
    old = time.time() - STALE_PART_S - 5
    os.utime(stale, (old, old))
    os.utime(other, (old, old))

    store.write("batch/row-1.png", b"the whole image")

    assert (folder / "row-1.png").read_bytes() == b"the whole image"
    assert not stale.exists()
    assert fresh.exists()
    assert other.exists()  # another key's: removed when that key is written
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [".row-1.png.4567cdef.part", ".row-2.png.89abcdef.part", "row-1.png"]
    )
