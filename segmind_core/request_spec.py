"""A request before its images are resolved, and the digest that identifies it.

The digest is the cache key and the content-addressed name of the output: the
same slug, the same parameters (defaults filled in, so leaving a default out
and spelling it out are the same request) and the same inputs (by content, or
by URL for http(s) inputs) give the same digest. The API key, the client and
the storage are never part of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from segmind_core.contract import get_endpoint
from segmind_core.images import ImageInput

__all__ = ["RequestSpec", "request_digest"]

DIGEST_VERSION = 1  # bump when the canonical form changes, so old cache entries miss


@dataclass(frozen=True)
class RequestSpec:
    """A Segmind request with its images still as the caller gave them.

    Attributes:
        slug: Endpoint slug.
        params: Every field but the images (``None`` values mean "not given").
        images: Image fields: one input, or a list for ``image_urls``.
    """

    slug: str
    params: Mapping[str, Any]
    images: Mapping[str, ImageInput | Sequence[ImageInput]] = field(default_factory=dict)

    def canonical_params(self) -> dict[str, Any]:
        """The parameters with the endpoint's defaults filled in, as JSON values."""
        model = get_endpoint(self.slug).request_model
        merged: dict[str, Any] = {
            name: info.default
            for name, info in model.model_fields.items()
            if name not in self.images and not info.is_required()
        }
        merged.update({k: v for k, v in self.params.items() if v is not None})
        return {
            name: value.value if isinstance(value, Enum) else value
            for name, value in sorted(merged.items())
            if value is not None
        }

    def fixed_seed(self) -> int | None:
        """The seed this request pins, or ``None`` when the seed is to be drawn.

        A drawn seed makes a new variation each time, so such a request is never
        served from a cache.
        """
        seed = self.canonical_params().get("seed")
        return None if seed is None or seed == -1 else int(seed)


def request_digest(spec: RequestSpec, identities: Mapping[str, str | Sequence[str]]) -> str:
    """The hex sha256 of the canonical request.

    Args:
        spec: The request.
        identities: For each image field, the identity of its input (or list of them).
    """
    canonical = {
        "version": DIGEST_VERSION,
        "slug": spec.slug,
        "params": spec.canonical_params(),
        "inputs": {name: identities[name] for name in sorted(identities)},
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
