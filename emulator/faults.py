"""Seeded fault injection: which generation request fails, and how."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from emulator.config import FaultKind, FaultRates, check_fault_rates

__all__ = ["FaultInjector", "FaultSettings"]


@dataclass(frozen=True)
class FaultSettings:
    """The fault part of the configuration, changeable while the emulator runs."""

    rates: FaultRates
    seed: int | None
    retry_after_s: int | None
    retry_after_rate: float


class FaultInjector:
    """Draws one outcome per generation request from the configured rates.

    With a seed, the sequence of outcomes is the same on every run: the n-th
    generation request the emulator receives always meets the same fault.
    Latency jitter is drawn from the same generator, so it repeats too.
    """

    def __init__(self, settings: FaultSettings) -> None:
        self._lock = threading.Lock()
        self._settings = settings
        self._rng = random.Random(settings.seed)  # noqa: S311 - test traffic, not crypto

    @property
    def settings(self) -> FaultSettings:
        """The settings in force."""
        with self._lock:
            return self._settings

    def configure(self, settings: FaultSettings) -> None:
        """Replace the settings and restart the seeded sequence."""
        check_fault_rates(settings.rates)
        with self._lock:
            self._settings = settings
            self._rng = random.Random(settings.seed)  # noqa: S311

    def restart(self) -> None:
        """Restart the seeded sequence with the current settings."""
        self.configure(self.settings)

    def draw(self) -> FaultKind | None:
        """The fault for the next generation request, or ``None`` to serve it normally."""
        with self._lock:
            roll = self._rng.random()
            threshold = 0.0
            for kind in FaultKind:
                threshold += self._settings.rates.get(kind, 0.0)
                if roll < threshold:
                    return kind
            return None

    def retry_after(self) -> int | None:
        """The ``Retry-After`` seconds for the next 429, or ``None`` to send none."""
        with self._lock:
            seconds = self._settings.retry_after_s
            if seconds is None:
                return None
            if self._rng.random() < self._settings.retry_after_rate:
                return seconds
            return None

    def jitter(self, upper: float) -> float:
        """A uniform draw in ``[0, upper]`` from the seeded sequence."""
        if upper <= 0:
            return 0.0
        with self._lock:
            return self._rng.uniform(0.0, upper)
