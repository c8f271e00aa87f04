"""The ObjectStorage block over moto S3: fields, AWS environment, secrecy, result storage."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from botocore.exceptions import EndpointConnectionError
from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.client.orchestration import get_client
from prefect.results import ResultRecord
from pydantic import SecretStr, ValidationError

from blocks import ObjectStorage
from segmind_core.object_store import ObjectStore
from tests.conftest import S3Server
from tests.support import without_flow_heartbeats

AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
)
# A closed loopback port: a block that wrongly used it would fail at once.
DEAD_ENDPOINT = "http://127.0.0.1:9"


@pytest.fixture
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AWS_* variables and no AWS config files: each test sets exactly what it needs."""
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def explicit_block(s3: S3Server, base_url: str = "s3://outputs/blk") -> ObjectStorage:
    return ObjectStorage(
        base_url=base_url,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
    )


def bucket_objects(s3: S3Server, prefix: str = "") -> dict[str, bytes]:
    """Every object in the bucket under ``prefix``, read by an independent client."""
    client = s3.client()
    listed = client.list_objects_v2(Bucket="outputs", Prefix=prefix)
    return {
        o["Key"]: client.get_object(Bucket="outputs", Key=o["Key"])["Body"].read()
        for o in listed.get("Contents", [])
    }


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# Explicit fields and the AWS environment --------------------------------------


def test_block_with_explicit_fields_reads_and_writes_s3(
    s3: S3Server, clean_aws_env: pytest.MonkeyPatch
) -> None:
    block = explicit_block(s3)

    url = block.write_path("a/b.txt", b"hello")

    assert url == "s3://outputs/blk/a/b.txt"
    assert bucket_objects(s3) == {"blk/a/b.txt": b"hello"}
    assert block.read_path("a/b.txt") == b"hello"


def test_explicit_fields_win_over_the_environment(
    s3: S3Server, clean_aws_env: pytest.MonkeyPatch
) -> None:
    clean_aws_env.setenv("AWS_ENDPOINT_URL_S3", DEAD_ENDPOINT)
    clean_aws_env.setenv("AWS_ENDPOINT_URL", DEAD_ENDPOINT)
    clean_aws_env.setenv("AWS_ACCESS_KEY_ID", "env-key")
    clean_aws_env.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    clean_aws_env.setenv("AWS_DEFAULT_REGION", "eu-west-3")

    block = explicit_block(s3)
    block.write_path("x.bin", b"explicit")

    assert bucket_objects(s3) == {"blk/x.bin": b"explicit"}


@pytest.mark.parametrize("endpoint_variable", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
def test_block_without_fields_uses_the_standard_aws_environment(
    s3: S3Server, clean_aws_env: pytest.MonkeyPatch, endpoint_variable: str
) -> None:
    clean_aws_env.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    clean_aws_env.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    clean_aws_env.setenv(endpoint_variable, s3.endpoint_url)
    clean_aws_env.setenv("AWS_DEFAULT_REGION", s3.region)

    block = ObjectStorage(base_url="s3://outputs/env")
    assert block.aws_access_key_id is None
    assert block.endpoint_url is None

    url = block.write_path("k/v.bin", b"from env")

    assert url == "s3://outputs/env/k/v.bin"
    assert bucket_objects(s3) == {"env/k/v.bin": b"from env"}
    assert block.read_path("k/v.bin") == b"from env"
    assert block.get_store().exists("k/v.bin")


def test_the_environment_endpoint_is_really_used(
    s3: S3Server, clean_aws_env: pytest.MonkeyPatch
) -> None:
    # The counterpart of the test above: with the variable pointing elsewhere, nothing lands.
    clean_aws_env.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    clean_aws_env.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    clean_aws_env.setenv("AWS_ENDPOINT_URL_S3", DEAD_ENDPOINT)
    clean_aws_env.setenv("AWS_DEFAULT_REGION", s3.region)
    clean_aws_env.setenv("AWS_MAX_ATTEMPTS", "1")

    block = ObjectStorage(base_url="s3://outputs/env")

    with pytest.raises(EndpointConnectionError, match=re.escape(DEAD_ENDPOINT)):
        block.write_path("k.bin", b"nowhere")
    assert bucket_objects(s3) == {}


def test_storage_options_off_s3_are_empty(tmp_path: Path, s3: S3Server) -> None:
    # Credentials set on a local block must not reach the local filesystem.
    block = ObjectStorage(
        base_url=str(tmp_path),
        aws_access_key_id="unused",
        aws_secret_access_key="unused",  # noqa: S106 - not a secret
        endpoint_url=s3.endpoint_url,
    )

    url = block.write_path("d/f.bin", b"local")

    assert url == str(tmp_path / "d" / "f.bin")
    assert (tmp_path / "d" / "f.bin").read_bytes() == b"local"
    assert block.get_store().protocol == "file"
    assert bucket_objects(s3) == {}


def test_memory_block() -> None:
    name = unique_name("memory-block")
    block = ObjectStorage(base_url=f"memory://{name}")
    try:
        url = block.write_path("a.bin", b"in memory")

        assert url == f"memory://{name}/a.bin"
        assert ObjectStorage(base_url=f"memory://{name}").read_path("a.bin") == b"in memory"
        assert block.get_store().presigned_url("a.bin") is None
    finally:
        block.get_store().fs.rm(f"/{name}", recursive=True)


# Paths, sync and async ---------------------------------------------------------


def test_read_path_of_a_missing_key_raises(s3: S3Server) -> None:
    with pytest.raises(FileNotFoundError):
        explicit_block(s3).read_path("missing.bin")


def test_write_path_keeps_keys_under_the_base_url(s3: S3Server) -> None:
    block = explicit_block(s3)

    block.write_path("../../elsewhere/x.bin", b"contained")

    assert bucket_objects(s3) == {"blk/elsewhere/x.bin": b"contained"}


def test_async_read_and_write_path(s3: S3Server) -> None:
    block = explicit_block(s3)

    async def main() -> tuple[str, bytes, bytes]:
        url = await block.awrite_path("async/one.bin", b"async bytes")
        block.write_path("async/two.bin", b"sync bytes")
        one = await block.aread_path("async/one.bin")
        two = await block.aread_path("async/two.bin")
        return url, one, two

    url, one, two = anyio.run(main)

    assert url == "s3://outputs/blk/async/one.bin"
    assert one == b"async bytes"
    assert two == b"sync bytes"
    assert block.read_path("async/one.bin") == b"async bytes"
    assert bucket_objects(s3, "blk/async/") == {
        "blk/async/one.bin": b"async bytes",
        "blk/async/two.bin": b"sync bytes",
    }


def test_async_read_of_a_missing_key_raises(s3: S3Server) -> None:
    block = explicit_block(s3)

    with pytest.raises(FileNotFoundError):
        anyio.run(block.aread_path, "missing.bin")


# The store -------------------------------------------------------------------


def test_get_store_is_built_once_per_block_instance(s3: S3Server) -> None:
    block = explicit_block(s3)
    other = explicit_block(s3)

    store = block.get_store()

    assert isinstance(store, ObjectStore)
    assert block.get_store() is store
    block.write_path("once.bin", b"1")
    assert block.get_store() is store
    assert other.get_store() is not store


def test_get_store_follows_the_fields(s3: S3Server) -> None:
    block = ObjectStorage(
        base_url="s3://outputs/some/prefix/",
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        presign_expiry_s=600,
    )

    store = block.get_store()

    assert store.protocol == "s3"
    assert store.root == "outputs/some/prefix"
    assert store.presign_expiry_s == 600
    store.write("p.bin", b"presign me")
    presigned = store.presigned_url("p.bin")
    assert presigned is not None
    assert presigned.startswith(f"{s3.endpoint_url}/outputs/some/prefix/p.bin?")
    assert s3.secret_access_key not in presigned


@pytest.mark.parametrize("expiry", [0, 59, 7 * 24 * 3600 + 1])
def test_presign_expiry_is_bounded(expiry: int) -> None:
    with pytest.raises(ValidationError):
        ObjectStorage(presign_expiry_s=expiry)


# Secrecy ---------------------------------------------------------------------


def test_secrets_are_hidden_from_repr_str_and_json(s3: S3Server) -> None:
    block = explicit_block(s3)
    block.write_path("x.bin", b"x")  # the store is built, and must not leak either

    assert isinstance(block.aws_secret_access_key, SecretStr)
    assert isinstance(block.aws_access_key_id, SecretStr)
    assert block.aws_secret_access_key.get_secret_value() == s3.secret_access_key
    for text in (
        repr(block),
        str(block),
        block.model_dump_json(),
        str(block.model_dump()),
    ):
        assert s3.secret_access_key not in text
        assert "SECRET" not in text
        assert s3.access_key_id not in text


@pytest.mark.usefixtures("prefect_harness")
def test_save_and_load_round_trip_the_secrets(s3: S3Server) -> None:
    name = unique_name("object-storage")
    explicit_block(s3).save(name)

    loaded = ObjectStorage.load(name)

    assert isinstance(loaded.aws_secret_access_key, SecretStr)
    assert loaded.aws_secret_access_key.get_secret_value() == s3.secret_access_key
    assert loaded.aws_access_key_id is not None
    assert loaded.aws_access_key_id.get_secret_value() == s3.access_key_id
    assert loaded.base_url == "s3://outputs/blk"
    assert loaded.endpoint_url == s3.endpoint_url
    assert loaded.region_name == s3.region
    for text in (repr(loaded), str(loaded), loaded.model_dump_json()):
        assert s3.secret_access_key not in text
    # The loaded block works: its secrets came back whole.
    loaded.write_path("after-load.bin", b"loaded")
    assert bucket_objects(s3) == {"blk/after-load.bin": b"loaded"}

    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(
            name, block_type_slug="segmind-object-storage", include_secrets=False
        )
    assert s3.secret_access_key not in str(document.data)
    assert s3.secret_access_key not in document.model_dump_json()
    assert s3.access_key_id not in str(document.data)
    assert document.data["base_url"] == "s3://outputs/blk"
    assert document.data["endpoint_url"] == s3.endpoint_url
    assert document.block_schema is not None
    secret_fields = document.block_schema.fields.get("secret_fields", [])
    assert "aws_secret_access_key" in secret_fields
    assert "aws_access_key_id" in secret_fields


# Prefect result storage --------------------------------------------------------

task_calls: list[str] = []


# Not Prefect's default policy, which adds the flow run id: a second run finds the first result.
@task(persist_result=True, cache_policy=INPUTS + TASK_SOURCE)
def remember(token: str) -> dict[str, Any]:
    task_calls.append(token)
    return {"token": token, "answer": 42, "calls": len(task_calls)}


def run_with_storage(storage: ObjectStorage, token: str) -> dict[str, Any]:
    stored_task = remember.with_options(result_storage=storage)

    @flow
    def flow_with_stored_task(token: str) -> dict[str, Any]:
        result: dict[str, Any] = stored_task(token)
        return result

    with without_flow_heartbeats():
        return flow_with_stored_task(token)


@pytest.mark.usefixtures("prefect_harness")
def test_block_as_result_storage(s3: S3Server) -> None:
    name = unique_name("result-storage")
    explicit_block(s3, "s3://outputs/results").save(name)
    storage = ObjectStorage.load(name)
    token = uuid.uuid4().hex
    task_calls.clear()

    first = run_with_storage(storage, token)

    assert first == {"token": token, "answer": 42, "calls": 1}
    stored = bucket_objects(s3)
    assert stored, "the task's result was not written to the bucket"
    assert all(key.startswith("results/") for key in stored)
    records = [ResultRecord.deserialize(data) for data in stored.values()]
    assert [record.result for record in records] == [first]
    for data in stored.values():
        assert s3.secret_access_key.encode() not in data
        assert b"SECRET" not in data

    # Run again: the result is read back from the bucket, the task body does not run.
    second = run_with_storage(ObjectStorage.load(name), token)

    assert second == first
    assert task_calls == [token]

    # Without the stored record, the task has to run again.
    client = s3.client()
    for key in stored:
        client.delete_object(Bucket="outputs", Key=key)
    third = run_with_storage(ObjectStorage.load(name), token)

    assert third == {"token": token, "answer": 42, "calls": 2}
    assert task_calls == [token, token]
    assert bucket_objects(s3), "the recomputed result was not written again"
