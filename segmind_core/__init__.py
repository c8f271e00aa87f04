"""Prefect-free core: the Segmind endpoint contract, the client and its errors.

Nothing in this package imports Prefect, so it can be used and tested on its own.
"""

from segmind_core._version import __version__
from segmind_core.client import DEFAULT_BASE_URL, GeneratedImage, RetryPolicy, SegmindClient
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
from segmind_core.errors import (
    AuthenticationError,
    BadImageError,
    InsufficientCreditsError,
    NetworkError,
    PermanentError,
    RateLimitedError,
    RequestRejectedError,
    SegmindError,
    ServerError,
    TransientError,
    UnexpectedResponseError,
)
from segmind_core.images import ImageInput, InvalidInputImageError, to_image_ref

__all__ = [
    "DEFAULT_BASE_URL",
    "ENDPOINTS",
    "AuthenticationError",
    "BadImageError",
    "Endpoint",
    "FluxAspectRatio",
    "GeneratedImage",
    "ImageInput",
    "ImageSize",
    "InsufficientCreditsError",
    "InvalidInputImageError",
    "InvalidRequestError",
    "NetworkError",
    "OutputFormat",
    "PImageEditAspectRatio",
    "PermanentError",
    "RateLimitedError",
    "RequestRejectedError",
    "RetryPolicy",
    "SegmindClient",
    "SegmindError",
    "SegmindRequest",
    "ServerError",
    "TransientError",
    "UnexpectedResponseError",
    "UnknownEndpointError",
    "__version__",
    "get_endpoint",
    "to_image_ref",
    "validate_request",
]
