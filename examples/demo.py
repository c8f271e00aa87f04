"""The offline demo: replace a photo's background, then merge it with a second photo.

Run it with ``bash scripts/demo`` (which installs what is missing first), or,
inside the project's virtualenv, ``python examples/demo.py``.

By default it starts the Segmind emulator in-process, so it needs no key, no
network and costs nothing. ``--real-api`` uses ``SEGMIND_API_KEY`` (and
``SEGMIND_BASE_URL``, if set) instead: two real generations, about 0.10 USD.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emulator import SegmindEmulator

PHOTOS = Path(__file__).resolve().parent / "photos"
EMULATOR_PORT = 18767


@contextlib.contextmanager
def _segmind_environment(real_api: bool) -> Iterator[str]:
    """Point ``SEGMIND_*`` at an in-process emulator, or check the real API is configured."""
    if real_api:
        if not os.environ.get("SEGMIND_API_KEY"):
            raise SystemExit("--real-api needs SEGMIND_API_KEY in the environment")
        yield os.environ.get("SEGMIND_BASE_URL", "https://api.segmind.com")
        return
    key = secrets.token_urlsafe(16)  # a throwaway key for this run only
    with _demo_emulator(key) as emulator:
        os.environ["SEGMIND_API_KEY"] = key
        os.environ["SEGMIND_BASE_URL"] = emulator.url
        yield f"{emulator.url} (the bundled emulator: no model runs, images are stand-ins)"


@contextlib.contextmanager
def _demo_emulator(key: str) -> Iterator[SegmindEmulator]:
    """The emulator on `EMULATOR_PORT`, else on any free port.

    Stored images and cache records name the service that made them (its URL),
    so the same port on every run is what lets a second demo find the first
    one's images and pay nothing.
    """
    from emulator import SegmindEmulator

    settings = {"api_key": key, "latency_s": 0.3, "latency_jitter_s": 0.3}
    try:
        emulator = SegmindEmulator(port=EMULATOR_PORT, **settings).start()
    except OSError:
        print(f"Port {EMULATOR_PORT} is taken: this run will not reuse earlier runs' images")
        emulator = SegmindEmulator(**settings).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="outputs", help="where outputs go (./outputs)")
    parser.add_argument("--seed", type=int, default=7, help="seed for both steps (7)")
    parser.add_argument(
        "--real-api", action="store_true", help="call the real Segmind API (costs about 0.10 USD)"
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The temporary server can take longer than Prefect's 20 s to start on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        # Prefect runs a temporary local server; keep its database out of ~/.prefect.
        # Registered before Prefect starts, so it runs after Prefect stops its server.
        home = tempfile.mkdtemp(prefix="segmind-demo-")
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        os.environ["PREFECT_HOME"] = home
    # Inputs are read only under allowed folders (segmind_core/fetch.py): the demo's photos.
    if not os.environ.get("SEGMIND_INPUT_ROOTS"):
        os.environ["SEGMIND_INPUT_ROOTS"] = str(PHOTOS)
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(_segmind_environment(args.real_api))
        print(f"Segmind API: {target}", flush=True)

        from blocks import ObjectStorage
        from flows.replace_background_then_merge import replace_background_then_merge

        storage = ObjectStorage(base_url=str(Path(args.output_dir).resolve()))
        storage.save("demo-outputs", overwrite=True)  # cache records need a saved block
        outcome = replace_background_then_merge(
            product_image=str(PHOTOS / "coffee.jpg"),
            second_image=str(PHOTOS / "chelsea.jpg"),
            background_prompt="put the coffee cup on a white marble counter in soft morning light",
            merge_prompt="the cat from the second image sitting beside the coffee cup",
            seed=args.seed,
            storage=storage,
        )
    print(f"Background replaced: {outcome.background_replaced.url}")
    print(f"Merged:              {outcome.merged.url}")
    print(f"Paid: {outcome.cost_usd:.2f} USD (the same seed again is served from the cache)")
    print(f"Open {outcome.page} in a browser to see inputs, intermediate and result side by side.")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
