"""Let a saved block be chosen for a flow parameter, in the UI's run form and on the server.

Prefect validates a run's parameters against the deployment's schema, where
a block-typed parameter becomes ``oneOf: [the block's schema, {"$ref": ...}]``.
A block whose fields all have defaults and which allows extra keys (Prefect's
blocks do) accepts ``{"$ref": {"block_document_id": ...}}`` under *both*
branches, so ``oneOf`` fails: choosing a saved block answered "is valid under
each of" (409 from the server) or, in the UI's run form, "is not valid under
any of the given schemas". Our blocks' schemas therefore refuse an object that
has a ``$ref`` key; only the reference branch accepts it.

Where the refusal sits is what makes it work in both places:

- The UI's run form does not send the deployment's schema as stored: it maps
  every property and definition to a fixed set of keys (``type``,
  ``properties``, ``anyOf``, ``allOf``, ``enum``, ``required``...) and drops
  the rest (``propertyNames``, ``additionalProperties``, a property's own
  ``minimum``/``maximum``), but passes what is inside ``anyOf`` and ``allOf``
  untouched. So the refusal is inside ``allOf``
  (``tests/blocks/test_reference_schema.py`` applies the same mapping).
- When a deployment's defaults are checked, Prefect strips every nested
  ``required``: ``not: {required: [$ref]}`` became ``not: {}`` and refused
  every block default. ``propertyNames`` has no ``required`` to strip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect.blocks.core import schema_extra

if TYPE_CHECKING:
    from prefect.blocks.core import Block

__all__ = ["NOT_A_REFERENCE", "referenceable_block_schema"]

NOT_A_REFERENCE: dict[str, Any] = {"propertyNames": {"not": {"const": "$ref"}}}
"""The rule an object with a ``$ref`` key breaks: it is a reference, not the block."""


def referenceable_block_schema(schema: dict[str, Any], model: type[Block]) -> None:
    """Prefect's block schema, plus: an object with a ``$ref`` key is not this block."""
    schema_extra(schema, model)
    schema["allOf"] = [NOT_A_REFERENCE]
