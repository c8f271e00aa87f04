"""One place in object storage, addressed by keys: S3 (s3fs), a local folder, or memory.

A thin layer over fsspec that adds what this project needs everywhere:
keys relative to a base URL, writes that never leave a half-written object
under its final key, and presigned URLs for S3.
"""

from __future__ import annotations

import contextlib
import glob
import os
import posixpath
import re
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import fsspec
from fsspec.core import url_to_fs

__all__ = ["MAX_PRESIGN_EXPIRY_S", "STALE_PART_S", "ObjectStore"]

MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600
"""The longest a presigned S3 URL can live (SigV4's limit: 7 days)."""

_PART_SUFFIX = ".part"
STALE_PART_S = 10.0
"""Seconds since its last change after which a temporary file of a local write is a
killed writer's leftover: a live writer renames its own milliseconds after writing it.
Sooner when its writer (named in the file) is known to be dead."""
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


@dataclass
class ObjectStore:
    """Keys under one base URL of one fsspec filesystem.

    Attributes:
        fs: The filesystem.
        protocol: ``s3``, ``file``, ``memory``...
        root: The base path inside the filesystem (``bucket/prefix`` for S3).
        presign_expiry_s: Lifetime of presigned URLs.
    """

    fs: fsspec.AbstractFileSystem
    protocol: str
    root: str
    presign_expiry_s: int = 3600

    @classmethod
    def from_url(
        cls, base_url: str, *, presign_expiry_s: int = 3600, **storage_options: Any
    ) -> ObjectStore:
        """The store for ``base_url`` (``s3://bucket/prefix``, a local path, ``memory://x``).

        ``storage_options`` go to the filesystem (for s3fs: ``key``, ``secret``,
        ``endpoint_url``, ``client_kwargs``...). Instance caching is off, so
        listings never come from a stale cache after another client wrote.
        """
        fs, root = url_to_fs(base_url, skip_instance_cache=True, **storage_options)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return cls(
            fs=fs, protocol=protocol, root=root.rstrip("/"), presign_expiry_s=presign_expiry_s
        )

    def path(self, key: str) -> str:
        """The filesystem path of ``key``."""
        clean = posixpath.normpath("/" + key).lstrip("/")
        if clean in ("", "."):
            raise ValueError(f"invalid storage key {key!r}")
        return f"{self.root}/{clean}" if self.root else clean

    def url(self, key: str) -> str:
        """A URL for ``key`` that fsspec opens again (``s3://bucket/prefix/key``, a path...)."""
        path = self.path(key)
        if self.protocol == "file":
            return path
        return f"{self.protocol}://{path.lstrip('/')}"

    def write(self, key: str, data: bytes) -> str:
        """Write ``data`` under ``key`` so that no reader ever sees part of it; returns the URL.

        S3 and memory replace an object in one step. On a local disk the bytes go
        to a hidden temporary name first and are renamed into place; temporary
        files of the same key left by a writer that was killed are removed.
        """
        path = self.path(key)
        parent = posixpath.dirname(path)
        if self.protocol == "file":
            self.fs.makedirs(parent, exist_ok=True)
            name = posixpath.basename(path)
            # The writer is named (host, process), so a leftover of a dead one can go.
            writer = f"{_HOST}.{os.getpid()}"
            temporary = f"{parent}/.{name}.{uuid.uuid4().hex}.{writer}{_PART_SUFFIX}"
            self.fs.pipe_file(temporary, data)
            self.fs.mv(temporary, path)
            self._remove_stale_parts(parent, name)
        else:
            self.fs.pipe_file(path, data)
        return self.url(key)

    def _remove_stale_parts(self, parent: str, name: str) -> None:
        """Remove ``.{name}.*.part`` files of killed writers.

        A file is a leftover when its writer was a process of this host that is
        gone, or when it is older than `STALE_PART_S` (a writer elsewhere).
        """
        cutoff = time.time() - STALE_PART_S
        prefix = f"{parent}/.{name}."
        for leftover in glob.glob(f"{glob.escape(prefix)}*{_PART_SUFFIX}"):
            with contextlib.suppress(OSError):  # another process removed it first
                writer = leftover[len(prefix) : -len(_PART_SUFFIX)].split(".")[1:]
                if _dead_here(writer) or os.path.getmtime(leftover) < cutoff:
                    os.remove(leftover)

    def read(self, key: str) -> bytes:
        """The bytes under ``key``.

        Raises:
            FileNotFoundError: when there is none.
        """
        data: bytes = self.fs.cat_file(self.path(key))
        return data

    def size(self, key: str) -> int | None:
        """The length of the object under ``key``, asked of the storage now; ``None`` if absent."""
        path = self.path(key)
        self.fs.invalidate_cache(path)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            return None
        return int(info["size"])

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        return bool(self.fs.exists(self.path(key)))

    @property
    def can_presign(self) -> bool:
        """Whether `presigned_url` gives URLs (S3 only)."""
        return self.protocol in ("s3", "s3a")

    def presigned_url(self, key: str, *, content_type: str | None = None) -> str | None:
        """A time-limited HTTPS URL that reads ``key`` without credentials; ``None`` off S3.

        Objects are stored without a content type, so S3 answers with
        ``binary/octet-stream`` and a browser saves the file; ``content_type`` asks
        S3 to answer with that type instead (a browser then shows an image).
        """
        if not self.can_presign:
            return None
        extra = {} if content_type is None else {"ResponseContentType": content_type}
        url: str = self.fs.url(self.path(key), expires=self.presign_expiry_s, **extra)
        return url

    def presigned_url_for(self, url: str) -> str | None:
        """A presigned HTTPS URL for ``url`` (``s3://bucket/key``) on this store's filesystem.

        ``None`` off S3, or when ``url`` is on another filesystem.
        """
        if not self.can_presign or urlsplit(url).scheme.lower() != self.protocol:
            return None
        presigned: str = self.fs.url(url, expires=self.presign_expiry_s)
        return presigned


def _dead_here(writer: list[str]) -> bool:
    """Whether ``[host, pid]`` names a process of this host that no longer runs."""
    if len(writer) != 2 or writer[0] != _HOST or not writer[1].isdigit():
        return False
    try:
        os.kill(int(writer[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False
