"""The object storage block: where outputs (and Prefect results) are written."""

from __future__ import annotations

import os
from typing import Any

import anyio.to_thread
from prefect.filesystems import WritableFileSystem
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr

from blocks.reference_schema import referenceable_block_schema
from segmind_core.object_store import MAX_PRESIGN_EXPIRY_S, ObjectStore

__all__ = ["ObjectStorage"]


class ObjectStorage(WritableFileSystem):
    """Object storage over fsspec: S3 through s3fs, a local folder, or ``memory://``.

    Secrets are ``SecretStr`` fields (Prefect's RemoteFileSystem keeps its
    settings in clear text). Empty S3 fields fall back to the standard AWS
    environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``.
    The block also works as Prefect ``result_storage``: results are written
    under the same base URL.

    Example:
        Load saved storage and write an object:
        ```python
        from blocks import ObjectStorage

        storage = ObjectStorage.load("BLOCK_NAME")
        storage.write_path("hello.txt", b"hello")
        ```
    """

    # A saved block can be chosen in a run form: see blocks/reference_schema.py.
    model_config = ConfigDict(json_schema_extra=referenceable_block_schema)
    _block_type_name = "Segmind Object Storage"
    _block_type_slug = "segmind-object-storage"
    _documentation_url = "https://filesystem-spec.readthedocs.io/"  # type: ignore[assignment]
    _description = "Where generated images and Prefect results go: S3, a local folder or memory."

    base_url: str = Field(
        default="outputs",
        title="Base URL",
        description="Where objects go: s3://bucket/prefix, a local folder, or memory://name.",
    )
    aws_access_key_id: SecretStr | None = Field(
        default=None,
        title="AWS access key id",
        description="For s3:// URLs; empty means AWS_ACCESS_KEY_ID or the default AWS chain.",
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None,
        title="AWS secret access key",
        description="For s3:// URLs; empty means AWS_SECRET_ACCESS_KEY or the default chain.",
    )
    endpoint_url: str | None = Field(
        default=None,
        title="S3 endpoint URL",
        description="An S3-compatible server such as MinIO; empty means AWS_ENDPOINT_URL_S3.",
    )
    region_name: str | None = Field(
        default=None,
        title="Region",
        description="The bucket's region; empty means AWS_DEFAULT_REGION or the default.",
    )
    presign_expiry_s: int = Field(
        default=3600,
        ge=60,
        le=MAX_PRESIGN_EXPIRY_S,
        title="Presigned URL lifetime (s)",
        description="How long presigned URLs handed to Segmind stay valid.",
    )

    _store: ObjectStore | None = PrivateAttr(default=None)

    def _storage_options(self) -> dict[str, Any]:
        if not self.base_url.startswith(("s3://", "s3a://")):
            return {}
        options: dict[str, Any] = {}
        if self.aws_access_key_id is not None:
            options["key"] = self.aws_access_key_id.get_secret_value()
        if self.aws_secret_access_key is not None:
            options["secret"] = self.aws_secret_access_key.get_secret_value()
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.region_name:
            options["client_kwargs"] = {"region_name": self.region_name}
        return options

    def get_store(self) -> ObjectStore:
        """The Prefect-free store this block describes (secrets unwrapped only here).

        Made once per block instance: an s3fs client is not free to build.
        """
        if self._store is None:
            self._store = ObjectStore.from_url(
                self.base_url, presign_expiry_s=self.presign_expiry_s, **self._storage_options()
            )
        return self._store

    def location(self) -> str:
        """Where this block writes, as one string: filesystem, absolute root, S3 endpoint.

        Two blocks with the same location write to the same objects, whatever
        their credentials; never contains a secret.
        """
        store = self.get_store()
        where = f"{store.protocol}://{store.root}"
        if store.protocol in ("s3", "s3a"):
            endpoint = (
                self.endpoint_url
                or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL")
                or "aws"
            )
            where += f" at {endpoint}"
        return where

    def read_path(self, path: str, **_: Any) -> bytes:  # type: ignore[override]
        """The bytes under ``path`` (a key relative to ``base_url``)."""
        return self.get_store().read(path)

    def write_path(self, path: str, content: bytes, **_: Any) -> str:  # type: ignore[override]
        """Write ``content`` under ``path`` atomically; returns its URL."""
        return self.get_store().write(path, content)

    async def aread_path(self, path: str) -> bytes:
        """Async `read_path`, for Prefect's async result store."""
        return await anyio.to_thread.run_sync(self.read_path, path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        """Async `write_path`, for Prefect's async result store."""
        return await anyio.to_thread.run_sync(self.write_path, path, content)
