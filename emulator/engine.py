"""One generation, independent of HTTP: validate, hold credits, load inputs, render.

Both the v1 handler and the v2 job worker are built from these steps, so the
two APIs validate, bill and render identically.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from emulator.config import EmulatorConfig
from emulator.faults import FaultInjector
from emulator.inputs import InputError, InputFetcher
from emulator.render import render_image
from emulator.state import EmulatorState
from segmind_core.contract import (
    Endpoint,
    ImageSize,
    InvalidRequestError,
    OutputFormat,
    SegmindRequest,
)

__all__ = ["ApiError", "Engine", "Generation"]

_RANDOM_SEED_BOUND = 2**31


class ApiError(Exception):
    """An answer other than success: HTTP status and the ``{"error"}`` message."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


@dataclass(frozen=True)
class Generation:
    """A rendered output, before it is billed."""

    image: bytes
    output_format: OutputFormat
    seed: int
    size: ImageSize
    inference_time_s: float


class Engine:
    """The steps of a generation, shared by v1 and v2."""

    def __init__(
        self,
        config: EmulatorConfig,
        state: EmulatorState,
        faults: FaultInjector,
        stop: threading.Event,
    ) -> None:
        self._config = config
        self._state = state
        self._faults = faults
        self._stop = stop
        self._fetcher = InputFetcher(
            allow_remote=config.allow_remote_inputs, max_bytes=config.max_input_bytes
        )

    def validate(self, endpoint: Endpoint, payload: Mapping[str, Any]) -> SegmindRequest:
        """Check the body against the contract; 400 naming the field otherwise."""
        try:
            return endpoint.validate(payload)
        except InvalidRequestError as exc:
            raise ApiError(400, "; ".join(exc.problems)) from None

    def reserve(self, endpoint: Endpoint) -> None:
        """Hold the price of one generation; 406 when the credits left cannot cover it."""
        if not self._state.reserve(endpoint.price_usd):
            left = self._state.credits_remaining
            raise ApiError(
                406,
                f"Insufficient credits: {left:.2f} USD left, {endpoint.slug} costs "
                f"{endpoint.price_usd:.2f} USD per generation",
            )

    def release(self, endpoint: Endpoint) -> None:
        """Give back the held price of a generation that did not succeed."""
        self._state.release(endpoint.price_usd)

    def charge(self, endpoint: Endpoint) -> Decimal:
        """Bill a successful generation; returns the balance afterwards."""
        return self._state.charge(endpoint.slug, endpoint.price_usd)

    def produce(self, endpoint: Endpoint, request: SegmindRequest) -> Generation:
        """Load the inputs, render the output and answer once the configured latency is up.

        The latency is the whole time a generation takes, loading and rendering
        included (when they take longer, that is the time), so ``N`` calls on ``C``
        slots can take as little as ``ceil(N / C) x latency``, as on the service.

        Raises:
            ApiError: 400 for an unusable input; 503 when the emulator is stopping.
        """
        started = time.monotonic()
        latency = self._config.latency_s + self._faults.jitter(self._config.latency_jitter_s)
        try:
            loaded = [self._fetcher.load(field, ref) for field, ref in request.input_images()]
        except InputError as exc:
            raise ApiError(400, str(exc)) from None

        requested = request.requested_seed()
        seed = secrets.randbelow(_RANDOM_SEED_BOUND) if requested is None else requested
        first = ImageSize(loaded[0].image.width, loaded[0].image.height) if loaded else None
        size = endpoint.output_size(request, first)
        output_format = request.image_format()
        image = render_image(
            slug=endpoint.slug,
            prompt=request.prompt,
            seed=seed,
            aspect_ratio=request.requested_aspect_ratio(),
            size=size,
            output_format=output_format,
            inputs=[item.image for item in loaded],
            input_bytes=[item.data for item in loaded],
        )
        remaining = latency - (time.monotonic() - started)
        if remaining > 0 and self._stop.wait(remaining):
            raise ApiError(503, "the service is shutting down")
        return Generation(
            image=image,
            output_format=output_format,
            seed=seed,
            size=size,
            inference_time_s=time.monotonic() - started,
        )
