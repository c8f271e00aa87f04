"""Let a saved block be chosen for a flow parameter when the deployment enforces its schema.

The Prefect server checks a run's parameters against the deployment's schema,
where a block-typed parameter becomes ``oneOf: [the block's schema, {"$ref": ...}]``.
A block whose fields all have defaults and which allows extra keys (Prefect's
blocks do) accepts ``{"$ref": {"block_document_id": ...}}`` under *both*
branches, so ``oneOf`` fails: choosing a saved block in the UI's run form
answers 409 "is valid under each of". Our blocks' schemas therefore refuse an
object that has a ``$ref`` key; only the reference branch accepts it.

The refusal is ``propertyNames``, not ``not: {required: [$ref]}``: when a
deployment is created, Prefect strips every nested ``required`` from the schema
before checking its defaults, which turned that ``not`` into ``not: {}`` and
refused every block default (422 "should not be valid under {}").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect.blocks.core import schema_extra

if TYPE_CHECKING:
    from prefect.blocks.core import Block

__all__ = ["referenceable_block_schema"]


def referenceable_block_schema(schema: dict[str, Any], model: type[Block]) -> None:
    """Prefect's block schema, plus: an object with a ``$ref`` key is not this block."""
    schema_extra(schema, model)
    schema["propertyNames"] = {"not": {"const": "$ref"}}
