"""A saved block can be chosen for a flow's block parameter when the schema is enforced.

The Prefect server validates a run's parameters against the deployment's
parameter schema with ``prefect.utilities.schema_tools.validation.validate``,
which rewrites each block definition into ``oneOf: [block, {"$ref": ...}]``.
These tests build the schema the way ``prefect deploy`` does and validate with
Prefect's own function, both as the server holds it and as the classic UI's
run form sends it to ``/ui/schemas/validate`` (after its key mapping), so they
fail if our blocks' schemas stop excluding ``$ref`` objects in a place both
keep. tests/ui/ does the same in a real browser.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import jsonschema
import pytest
from prefect import Flow
from prefect.blocks.core import Block
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import ValidationError, validate

from blocks import ObjectStorage, SegmindCredentials
from blocks.reference_schema import NOT_A_REFERENCE, referenceable_block_schema
from flows.batch import batch
from flows.edit_each_image_with_p_image_edit import edit_each_image_with_p_image_edit
from flows.edit_image import edit_image
from flows.merge_images import merge_images
from flows.replace_background_then_merge import replace_background_then_merge

BLOCK_DEFINITIONS = ("ObjectStorage", "SegmindCredentials")
# The keys the classic UI (Prefect 3.8) keeps of each property and definition when
# it posts a run form's schema for validation; what sits inside anyOf/allOf/items
# is passed as it is. Read from its bundle's schema mapper, checked in a browser.
UI_KEPT_KEYS = {
    "definitions", "position", "block_type_slug", "$ref", "anyOf", "allOf", "example",
    "default", "const", "description", "enum", "format", "items", "prefixItems",
    "properties", "required", "title", "type", "maxItems", "minItems",
}  # fmt: skip


@dataclass(frozen=True)
class FlowCase:
    """A flow with block parameters, and values for its required parameters."""

    flow: Flow[..., Any]
    required: dict[str, Any]


CASES = [
    FlowCase(edit_image, {"prompt": "make it a watercolour painting"}),
    FlowCase(
        merge_images,
        {
            "prompt": "the two subjects side by side",
            "image_1": "https://example.invalid/a.png",
            "image_2": "https://example.invalid/b.png",
        },
    ),
    FlowCase(
        edit_each_image_with_p_image_edit,
        {"prompt": "a vintage poster", "images": ["https://example.invalid/a.png"]},
    ),
    FlowCase(
        replace_background_then_merge,
        {
            "product_image": "https://example.invalid/cup.png",
            "second_image": "https://example.invalid/cat.png",
            "background_prompt": "on a marble counter",
            "merge_prompt": "the cat next to the cup",
        },
    ),
    FlowCase(batch, {"manifest": "examples/manifests/catalogue.jsonl"}),
]


def case_id(case: FlowCase) -> str:
    return case.flow.name


def deployment_schema(flow: Flow[..., Any]) -> dict[str, Any]:
    """The parameter schema ``prefect deploy`` sends for ``flow``."""
    schema: dict[str, Any] = parameter_schema(flow.fn).model_dump_for_openapi()
    return schema


def reference() -> dict[str, Any]:
    """What the UI's block picker sends for a saved block."""
    return {"$ref": {"block_document_id": str(uuid4())}}


def without_the_fix(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema as Prefect's own ``schema_extra`` alone would make it."""
    broken = copy.deepcopy(schema)
    for name in BLOCK_DEFINITIONS:
        del broken["definitions"][name]["allOf"]
    return broken


def as_the_ui_sends(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` after the classic UI's mapping: unknown keys of properties dropped."""
    mapped = {key: value for key, value in schema.items() if key in UI_KEPT_KEYS}
    for nested in ("properties", "definitions"):
        if nested in mapped:
            mapped[nested] = {name: as_the_ui_sends(part) for name, part in mapped[nested].items()}
    return mapped


SENT_BY = {"server": lambda schema: schema, "classic-ui": as_the_ui_sends}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_flow_schema_has_both_blocks_with_the_ref_exclusion(case: FlowCase) -> None:
    schema = deployment_schema(case.flow)

    definitions = schema["definitions"]
    for name in BLOCK_DEFINITIONS:
        assert definitions[name]["allOf"] == [NOT_A_REFERENCE]
        assert "block_type_slug" in definitions[name]
    assert set(case.required) == set(schema["required"])


@pytest.mark.parametrize("sent_by", SENT_BY)
@pytest.mark.parametrize("ignore_required", [False, True], ids=["full", "ignore-required"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_references_to_saved_blocks_validate_for_every_flow(
    case: FlowCase, ignore_required: bool, sent_by: str
) -> None:
    schema = SENT_BY[sent_by](deployment_schema(case.flow))
    parameters = {**case.required, "storage": reference(), "credentials": reference()}

    errors = validate(
        copy.deepcopy(parameters),
        schema,
        raise_on_error=True,
        preprocess=True,
        ignore_required=ignore_required,
    )

    assert errors == []


@pytest.mark.parametrize("sent_by", SENT_BY)
@pytest.mark.parametrize("ignore_required", [False, True], ids=["full", "ignore-required"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_without_the_exclusion_a_reference_is_valid_under_both_branches(
    case: FlowCase, ignore_required: bool, sent_by: str
) -> None:
    """The check above is real: Prefect's own block schema alone fails it."""
    schema = SENT_BY[sent_by](without_the_fix(deployment_schema(case.flow)))

    for parameter in ("storage", "credentials"):
        with pytest.raises(ValidationError, match="valid under each of") as failed:
            validate(
                {**case.required, parameter: reference()},
                schema,
                raise_on_error=True,
                preprocess=True,
                ignore_required=ignore_required,
            )
        assert repr(parameter) in str(failed.value)


@pytest.mark.parametrize("sent_by", SENT_BY)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_inline_block_values_and_none_still_validate(case: FlowCase, sent_by: str) -> None:
    schema = SENT_BY[sent_by](deployment_schema(case.flow))

    for storage, credentials in (
        ({"base_url": "s3://b/p"}, {"base_url": "http://127.0.0.1:9", "max_attempts": 1}),
        ({}, {}),
        (None, None),
    ):
        parameters = {**case.required, "storage": storage, "credentials": credentials}
        assert validate(parameters, schema, raise_on_error=True, preprocess=True) == []


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bad_inline_values_and_malformed_references_are_still_refused(case: FlowCase) -> None:
    schema = deployment_schema(case.flow)

    for storage in (
        {"presign_expiry_s": 5},  # below the block's minimum
        {"base_url": 7},  # not a string
        {"$ref": {}},  # a reference naming nothing
        {"$ref": 5, "base_url": "s3://b/p"},  # a reference of the wrong type
    ):
        with pytest.raises(ValidationError, match="storage"):
            validate({**case.required, "storage": storage}, schema, raise_on_error=True)


@pytest.mark.parametrize("block", [ObjectStorage, SegmindCredentials], ids=lambda b: b.__name__)
def test_the_block_schema_alone_refuses_a_reference_and_accepts_fields(
    block: type[Block],
) -> None:
    schema = block.model_json_schema()

    validator = jsonschema.Draft202012Validator(schema)
    assert not validator.is_valid(reference())
    assert validator.is_valid({})
    assert validator.is_valid({"base_url": "s3://b/p"})


def test_object_storage_schema_keeps_prefects_block_metadata_and_secret_fields() -> None:
    schema = ObjectStorage.model_json_schema()

    assert schema["block_type_slug"] == "segmind-object-storage"
    assert set(schema["secret_fields"]) == {"aws_access_key_id", "aws_secret_access_key"}
    assert schema["allOf"] == [NOT_A_REFERENCE]
    assert "block_schema_references" in schema
    # What register_type_and_schema sends to the server carries the same.
    fields = ObjectStorage._to_block_schema(block_type_id=uuid4()).fields
    assert fields["block_type_slug"] == "segmind-object-storage"
    assert set(fields["secret_fields"]) == {"aws_access_key_id", "aws_secret_access_key"}
    assert fields["allOf"] == [NOT_A_REFERENCE]


def test_credentials_schema_keeps_prefects_block_metadata_and_secret_fields() -> None:
    schema = SegmindCredentials.model_json_schema()

    assert schema["block_type_slug"] == "segmind-credentials"
    assert schema["secret_fields"] == ["api_key"]
    assert schema["allOf"] == [NOT_A_REFERENCE]


def test_referenceable_block_schema_adds_the_exclusion_to_prefects_schema_extra() -> None:
    schema: dict[str, Any] = {"properties": {}}

    referenceable_block_schema(schema, ObjectStorage)

    assert schema["block_type_slug"] == "segmind-object-storage"
    assert set(schema["secret_fields"]) == {"aws_access_key_id", "aws_secret_access_key"}
    assert schema["allOf"] == [NOT_A_REFERENCE]
