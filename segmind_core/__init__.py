"""Prefect-free core: the Segmind endpoint contract (and, later, client and storage).

Nothing in this package imports Prefect, so it can be used and tested on its own.
"""

from segmind_core.contract import (
    ENDPOINTS,
    Endpoint,
    FluxAspectRatio,
    ImageSize,
    InvalidRequestError,
    OutputFormat,
    PImageEditAspectRatio,
    SegmindRequest,
    UnknownEndpointError,
    get_endpoint,
    validate_request,
)

__version__ = "0.1.0"

__all__ = [
    "ENDPOINTS",
    "Endpoint",
    "FluxAspectRatio",
    "ImageSize",
    "InvalidRequestError",
    "OutputFormat",
    "PImageEditAspectRatio",
    "SegmindRequest",
    "UnknownEndpointError",
    "__version__",
    "get_endpoint",
    "validate_request",
]
