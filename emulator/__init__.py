"""A local, Segmind-compatible server for offline development and tests.

It speaks Segmind's v1 and v2 contract over real HTTP, validates with the same
models as the client (`segmind_core.contract`), bills at the price table and
can inject faults. No model runs: images are deterministic stand-ins built
from the inputs, the prompt and the seed.

Command line::

    python -m emulator --port 0 --api-key KEY

In-process::

    with SegmindEmulator(api_key="KEY") as emulator:
        print(emulator.url)
"""

from emulator.config import EmulatorConfig, FaultKind
from emulator.server import SegmindEmulator

__all__ = ["EmulatorConfig", "FaultKind", "SegmindEmulator"]
