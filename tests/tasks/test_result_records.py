"""The cache records of the endpoint tasks, read as JSON only (tasks/result_records.py).

The tasks' behaviour with real storage, a planted record and a deleted output
is in test_caching.py; these check the reader and the serializer on their own.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultRecord, ResultRecordMetadata, ResultStore
from prefect.serializers import PickleSerializer

from segmind_core.contract import OutputFormat
from tasks import EditResult
from tasks.result_records import (
    SERIALIZER_TYPE,
    EditResultSerializer,
    RecordedTaskError,
    RefusedRecordError,
    SegmindResultStore,
    load_record,
)

RESULT = EditResult(
    slug="flux-kontext-pro",
    url="memory://records/a.png",
    key="a.png",
    sha256="0" * 64,
    format=OutputFormat.PNG,
    width=8,
    height=8,
    size_bytes=100,
    seed=5,
    cost_usd=Decimal("0.05"),
    credits_remaining=Decimal("9.95"),
    latency_s=1.5,
    attempts=1,
    request_digest="d" * 64,
)


class TouchOnUnpickle:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


def own_record(result: Any = RESULT) -> bytes:
    record = ResultRecord(
        metadata=ResultRecordMetadata(serializer=EditResultSerializer(), storage_key="k"),
        result=result,
    )
    return record.serialize()


def test_a_record_is_json_whose_result_is_the_edit_result_as_json() -> None:
    document = json.loads(own_record())

    assert document["metadata"]["serializer"] == {"type": SERIALIZER_TYPE}
    assert EditResult.model_validate_json(document["result"]) == RESULT
    assert load_record(own_record()).result == RESULT


def test_a_pickle_record_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    planted = ResultRecord(
        metadata=ResultRecordMetadata(serializer=PickleSerializer()),
        result=TouchOnUnpickle(marker),
    ).serialize()

    with pytest.raises(RefusedRecordError, match="'pickle', not 'segmind-edit-result'"):
        load_record(planted)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80\x04not json", "not a JSON cache record"),
        (b'{"metadata": {}, "result": "{}"}', "serializer is 'None'"),
        (
            json.dumps({"metadata": {"serializer": {"type": "json"}}, "result": "1"}).encode(),
            "'json'",
        ),
        (
            own_record().replace(
                b'"type":"segmind-edit-result"', b'"type":"segmind-edit-result","x":1'
            ),
            "'segmind-edit-result', not",
        ),
    ],
)
def test_other_records_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(RefusedRecordError, match=reason):
        load_record(data)


def test_a_record_of_another_shape_is_refused() -> None:
    document = json.loads(own_record())
    document["result"] = json.dumps({"url": "memory://x.png"})

    with pytest.raises(RefusedRecordError, match="metadata or result is not valid"):
        load_record(json.dumps(document).encode())


def test_a_failed_run_s_error_is_kept_as_text_and_read_back_as_text() -> None:
    serializer = EditResultSerializer()

    blob = serializer.dumps(ValueError("bad seed"))
    loaded = serializer.loads(blob)

    assert json.loads(blob) == {"error": "ValueError", "message": "bad seed"}
    assert isinstance(loaded, RecordedTaskError)
    assert str(loaded) == "ValueError: bad seed"
    with pytest.raises(TypeError, match="EditResult, not dict"):
        serializer.dumps({"url": "x"})


def test_the_store_serves_what_exists_checked_and_reads_the_storage_once(tmp_path: Path) -> None:
    storage = LocalFileSystem(basepath=str(tmp_path))
    storage.write_path("k", own_record(), _sync=True)  # type: ignore[call-arg]
    checked: list[EditResult] = []
    store = SegmindResultStore.guarding(
        ResultStore(result_storage=storage), lambda result: checked.append(result) is None
    )

    assert store.exists("k")
    (tmp_path / "k").write_bytes(b"swapped after the check")
    record = store.read("k")

    assert record.result == RESULT
    assert checked == [RESULT]
    assert not store.exists("k")  # the swapped record is refused
    with pytest.raises(RefusedRecordError):
        store.read("k")


def test_the_store_does_not_serve_an_output_that_is_gone(tmp_path: Path) -> None:
    storage = LocalFileSystem(basepath=str(tmp_path))
    storage.write_path("k", own_record(), _sync=True)  # type: ignore[call-arg]

    assert not SegmindResultStore.guarding(
        ResultStore(result_storage=storage), lambda _: False
    ).exists("k")
