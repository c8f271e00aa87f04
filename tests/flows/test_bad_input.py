"""Bad input, given the way users give it, refused with a specific message before any payment.

One catalogue, `CASES`: each case is one kind of bad input, given as a flow
parameter (edit-image, merge-images, edit-each-image-with-p-image-edit, batch)
or as a manifest row or file for the batch flow. For each, the run fails (or
the row ends ``failed`` in the results manifest, read back from storage) with
a message that names the field or row and what is wrong, and the emulator
received no generation request and billed nothing for it.

To keep the number of Prefect flow runs small, the cases are run three ways:

- ``row-*``: every bad row sits in ONE batch manifest beside two good rows; the
  batch runs once, and each case checks its own line of the results manifest.
  The emulator then received and billed exactly the two good rows.
- ``image-*``: every bad image sits in ONE ``images`` list of the p-image-edit
  flow beside one good image; the flow runs once, each case checks its result.
- ``flow-*``: one flow run each (bad parameters, unreadable manifests), against
  a fresh emulator that must end with ``requests == billed == 0``.

Only 127.0.0.1 is used: a loopback file server for URL inputs (the tests' input
policy allows 127.0.0.1, see ``tests/conftest.py``) and a closed loopback port
for the unreachable URL.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prefect import Flow
from prefect.client.schemas.objects import State

from blocks import ObjectStorage, SegmindCredentials
from emulator import SegmindEmulator
from flows.batch import BatchOutcome, batch
from flows.common import SEED_MAX
from flows.edit_each_image_with_p_image_edit import (
    PImageEditOutcome,
    edit_each_image_with_p_image_edit,
)
from flows.edit_image import edit_image
from flows.merge_images import merge_images
from segmind_core.contract import MAX_PROMPT_CHARS
from segmind_core.fetch import ALLOW_NETWORKS_ENV, INPUT_ROOTS_ENV
from tests.flows.manifests import row
from tests.support import API_KEY, emulator_stats, file_server, image_bytes

pytestmark = pytest.mark.usefixtures("prefect_harness")

PROMPT = "bad-input test: put the cup on a marble counter"
SEED = 8_470_000  # no other test pins seeds here: nothing is served from another's cache
HTML = b"<!doctype html><html><body><h1>Not an image</h1></body></html>"
HUGE_PROMPT_CHARS = 20_000
assert HUGE_PROMPT_CHARS > MAX_PROMPT_CHARS


# --- the inputs the cases use ------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """Files and URLs the cases refer to (fields are usable in expected phrases)."""

    folder: str
    good: str
    not_image: str
    truncated: str
    bomb: str
    empty: str
    bmp: str
    escaping: str
    server: str
    photo_url: str
    unreachable_url: str
    not_found_url: str
    html_url: str
    manifest_url: str


def closed_loopback_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, read, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def decompression_bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels, about 50 KB on disk.

    Built directly (header, one IDAT of zlib-compressed zero rows, end): Pillow
    would take seconds to encode it, this takes a fraction of one.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    compressor = zlib.compressobj(9)
    blank_row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the packed pixels
    pixels = b"".join(compressor.compress(blank_row) for _ in range(height))
    pixels += compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def escaping_path(folder: Path) -> str:
    """A path under ``folder`` whose ``..`` parts climb out of it to /etc/hosts."""
    return str(folder) + "/.." * len(folder.parts) + "/etc/hosts"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inputs]:
    """Bad and good input files under a temporary folder, and a loopback file server."""
    folder = tmp_path_factory.mktemp("bad-input")
    good_png = image_bytes((30, 120, 200), (640, 480))
    files = {
        "good.png": good_png,
        "notes.txt": b"shopping list: milk, eggs, coffee\n",
        "truncated.png": good_png[: len(good_png) // 2],
        "bomb.png": decompression_bomb_png(),
        "empty.png": b"",
        "scan.bmp": image_bytes((90, 90, 90), (64, 48), fmt="BMP"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    served = {
        "/photo.png": (200, good_png, "image/png"),
        "/page.png": (200, HTML, "text/html"),
        "/manifest.jsonl": (
            200,
            json.dumps(row("m-1", "p-image-edit", PROMPT, ["/x.png"], seed=SEED)).encode(),
            "application/x-ndjson",
        ),
    }
    with file_server(served) as server:
        yield Inputs(
            folder=str(folder),
            good=str(folder / "good.png"),
            not_image=str(folder / "notes.txt"),
            truncated=str(folder / "truncated.png"),
            bomb=str(folder / "bomb.png"),
            empty=str(folder / "empty.png"),
            bmp=str(folder / "scan.bmp"),
            escaping=escaping_path(folder),
            server=server,
            photo_url=f"{server}/photo.png",
            unreachable_url=f"http://127.0.0.1:{closed_loopback_port()}/x.png",
            not_found_url=f"{server}/missing.png",
            html_url=f"{server}/page.png",
            manifest_url=f"{server}/manifest.jsonl",
        )


# --- the catalogue -----------------------------------------------------------------------


class Via(StrEnum):
    """How a case's bad input reaches the product."""

    ROW = "row"  # a line of the shared batch manifest
    IMAGE = "image"  # an entry of the shared p-image-edit flow's images list
    FLOW = "flow"  # its own flow run


@dataclass(frozen=True)
class FlowRun:
    """What a ``flow-*`` case gets to start its run with."""

    inputs: Inputs
    folder: Path
    emulator: SegmindEmulator
    monkeypatch: pytest.MonkeyPatch

    def storage(self) -> ObjectStorage:
        return ObjectStorage(base_url=str(self.folder / "out"))

    def manifest(self, name: str, text: str) -> str:
        path = self.folder / name
        path.write_text(text, encoding="utf-8")
        return str(path)


class AnyOf(tuple[str, ...]):
    """An expected phrase with alternatives: the message must contain one of them."""

    def __new__(cls, *phrases: str) -> AnyOf:
        return super().__new__(cls, phrases)


Phrase = str | AnyOf


@dataclass(frozen=True)
class Case:
    """One kind of bad input.

    Attributes:
        name: The test id.
        via: How the input is given.
        expected: Phrases the error must contain; ``{field}`` names an `Inputs` field,
            ``{line}`` the case's manifest line (``row-*`` cases).
        line: The manifest line (``row-*``): a JSON object or raw text.
        image: The image given (``image-*``).
        run: Starts the run (``flow-*``) and returns its final state.
    """

    name: str
    via: Via
    expected: tuple[Phrase, ...]
    line: Callable[[Inputs], dict[str, Any] | str] | None = None
    image: Callable[[Inputs], str] | None = None
    run: Callable[[FlowRun], State[Any]] | None = None

    @property
    def id(self) -> str:
        return f"{self.via}-{self.name}"


def row_case(name: str, line: Callable[[Inputs], dict[str, Any] | str], *expected: Phrase) -> Case:
    return Case(name, Via.ROW, expected, line=line)


def image_case(name: str, image: Callable[[Inputs], str], *expected: Phrase) -> Case:
    return Case(name, Via.IMAGE, expected, image=image)


def flow_case(name: str, run: Callable[[FlowRun], State[Any]], *expected: Phrase) -> Case:
    return Case(name, Via.FLOW, expected, run=run)


def start(flow: Flow[..., Any], **arguments: Any) -> State[Any]:
    """Run ``flow`` and return its final state (a parameter error is a Failed state too)."""
    state: Any = flow(return_state=True, **arguments)  # typed None: Any matches NoReturn
    assert isinstance(state, State), state
    return state


def edit(run: FlowRun, **arguments: Any) -> State[Any]:
    """The edit-image flow with a good image and prompt unless ``arguments`` say otherwise."""
    arguments.setdefault("prompt", PROMPT)
    arguments.setdefault("image", run.inputs.good)
    arguments.setdefault("seed", SEED)
    return start(edit_image, storage=run.storage(), **arguments)


def merge(run: FlowRun, **arguments: Any) -> State[Any]:
    """The merge-images flow with two good images unless ``arguments`` say otherwise."""
    arguments.setdefault("prompt", PROMPT)
    arguments.setdefault("image_1", run.inputs.good)
    arguments.setdefault("image_2", run.inputs.photo_url)
    arguments.setdefault("seed", SEED)
    return start(merge_images, storage=run.storage(), **arguments)


def each(run: FlowRun, **arguments: Any) -> State[Any]:
    """The p-image-edit flow on one good image unless ``arguments`` say otherwise."""
    arguments.setdefault("prompt", PROMPT)
    arguments.setdefault("images", [run.inputs.good])
    arguments.setdefault("seed", SEED)
    return start(edit_each_image_with_p_image_edit, storage=run.storage(), **arguments)


def run_batch(run: FlowRun, manifest: str, **arguments: Any) -> State[Any]:
    """The batch flow on ``manifest`` (a path, or a URL)."""
    return start(batch, manifest=manifest, storage=run.storage(), **arguments)


def one_good_row(run: FlowRun, name: str = "one.jsonl") -> str:
    line = row("one", "p-image-edit", PROMPT, [run.inputs.good], seed=SEED)
    return run.manifest(name, json.dumps(line) + "\n")


def p_row(row_id: str, images: list[str], **params: Any) -> dict[str, Any]:
    return row(row_id, "p-image-edit", PROMPT, images, **{"seed": SEED, **params})


def flux_row(row_id: str, images: list[str], **params: Any) -> dict[str, Any]:
    return row(row_id, "flux-kontext-pro", PROMPT, images, **{"seed": SEED, **params})


def merge_row(row_id: str, images: list[str], **params: Any) -> dict[str, Any]:
    return row(row_id, "multi-image-kontext-pro", PROMPT, images, **{"seed": SEED, **params})


def file_url_outside_the_roots(run: FlowRun) -> State[Any]:
    """A file:// URL to a good image in a folder that is not one of the input roots."""
    run.monkeypatch.setenv(INPUT_ROOTS_ENV, str(run.folder / "the-only-root"))
    return edit(run, image="file://" + run.inputs.good)


def manifest_from_loopback_without_allow_list(run: FlowRun) -> State[Any]:
    """A manifest URL on 127.0.0.1 under the default policy (no network allowed)."""
    run.monkeypatch.setenv(ALLOW_NETWORKS_ENV, "")
    return run_batch(run, run.inputs.manifest_url)


NOT_AN_IMAGE = "is not a readable image (JPEG, PNG, GIF or WEBP), or is truncated"
BOMB = "looks like a decompression bomb (refused before decoding)"
OUTSIDE = "is outside the folders inputs may be read from"
UNREACHABLE = "cannot fetch {unreachable_url} (ConnectError): the URL is unreachable"
SCHEME = "inputs are not accepted"
INVALID_PARAMETERS = "Validation of flow parameters failed"

# Seeds of their own: a paid request is never served from another run's cache record.
GOOD_ROWS = [
    p_row("good-1", ["{good}"], seed=SEED + 1),
    flux_row("good-2", ["{good}"], aspect_ratio="1:1", seed=SEED + 2),
]
GOOD_IMAGE_SEED = SEED + 3

CASES: list[Case] = [
    # --- manifest rows: checked before anything runs -----------------------------------
    # A lone surrogate (JSON "\\ud800" without its pair) can name no file, log line or
    # results manifest: once, such an id was paid for and then sank the results manifest.
    row_case(
        "id-with-a-lone-surrogate",
        lambda i: p_row("sku-\ud800", [i.good]),
        "line {line}: id, 'sku-\\ud800', is not valid text: it has a lone surrogate",
    ),
    row_case(
        "prompt-with-a-lone-surrogate",
        lambda i: {**p_row("surrogate-prompt", [i.good]), "prompt": "a cup \udfff"},
        "line {line} (surrogate-prompt): prompt, 'a cup \\udfff', is not valid text",
    ),
    row_case(
        "json-line-of-100k-brackets",
        lambda i: "[" * 100_000,
        "line {line}: not valid JSON (nested too deeply to read)",
    ),
    row_case(
        "seed-of-5000-digits",
        lambda i: json.dumps(p_row("long-seed", [i.good])).replace(str(SEED), "9" * 5000),
        "line {line}: not valid JSON (Exceeds the limit (4300 digits) for integer string",
    ),
    row_case(
        "params-nested-too-deep",
        lambda i: p_row("deep", [i.good], seed=json.loads("[" * 18 + str(SEED) + "]" * 18)),
        "line {line} (deep): params.seed[0]",
        "nests more than 16 levels deep",
    ),
    row_case(
        "wrong-aspect-ratio",
        lambda i: flux_row("bad-ratio", [i.good], aspect_ratio="7:3"),
        "line {line} (bad-ratio): aspect_ratio: Input should be 'match_input_image'",
        "(got '7:3')",
    ),
    row_case(
        "aspect-ratio-p-image-edit-lacks",
        lambda i: p_row("wide-p", [i.good], aspect_ratio="21:9"),
        "line {line} (wide-p): aspect_ratio: Input should be",
        "(got '21:9')",
    ),
    row_case(
        "wrong-output-format",
        lambda i: flux_row("gif-out", [i.good], output_format="gif"),
        "line {line} (gif-out): output_format: Input should be 'jpg' or 'png' (got 'gif')",
    ),
    row_case(
        "safety-tolerance-7",
        lambda i: flux_row("tolerance-7", [i.good], safety_tolerance=7),
        "line {line} (tolerance-7): safety_tolerance: Input should be less than or equal to 6",
    ),
    row_case(
        "safety-tolerance-minus-1",
        lambda i: flux_row("tolerance-minus-1", [i.good], safety_tolerance=-1),
        "line {line} (tolerance-minus-1): safety_tolerance: "
        "Input should be greater than or equal to 0",
    ),
    row_case(
        "merge-safety-tolerance-3",
        lambda i: merge_row("merge-tolerance-3", [i.good, i.photo_url], safety_tolerance=3),
        "line {line} (merge-tolerance-3): safety_tolerance: "
        "Input should be less than or equal to 2 (got 3)",
    ),
    row_case(
        "seed-out-of-range",
        lambda i: p_row("seed-too-big", [i.good], seed=SEED_MAX + 1),
        "line {line} (seed-too-big): seed: Input should be less than or equal to "
        f"{SEED_MAX} (got {SEED_MAX + 1})",
    ),
    row_case(
        "seed-not-an-int",
        lambda i: p_row("seed-text", [i.good], seed="7"),
        "line {line} (seed-text): seed: Input should be a valid integer (got '7')",
    ),
    row_case(
        "seed-a-fraction",
        lambda i: flux_row("seed-fraction", [i.good], seed=1.5),
        "line {line} (seed-fraction): seed: Input should be a valid integer (got 1.5)",
    ),
    row_case(
        "p-image-edit-0-images",
        lambda i: p_row("no-images", []),
        "line {line} (no-images): p-image-edit takes 1 to 5 image(s), got 0",
    ),
    row_case(
        "p-image-edit-6-images",
        lambda i: p_row("six-images", [i.good] * 6),
        "line {line} (six-images): p-image-edit takes 1 to 5 image(s), got 6",
    ),
    row_case(
        "merge-1-image",
        lambda i: merge_row("merge-one", [i.good]),
        "line {line} (merge-one): multi-image-kontext-pro takes 2 image(s), got 1",
    ),
    row_case(
        "flux-2-images",
        lambda i: flux_row("flux-two", [i.good, i.good]),
        "line {line} (flux-two): flux-kontext-pro takes 0 to 1 image(s), got 2",
    ),
    row_case(
        "id-path-traversal",
        lambda i: p_row("../../etc/passwd", [i.good]),
        "line {line} (../../etc/passwd): id '../../etc/passwd' looks like a path",
    ),
    row_case(
        "id-with-slash",
        lambda i: p_row("a/b", [i.good]),
        "line {line} (a/b): id 'a/b' looks like a path",
    ),
    row_case(
        "id-only-dots",
        lambda i: p_row("..", [i.good]),
        "line {line} (..): id '..' looks like a path",
    ),
    row_case(
        "id-missing",
        lambda i: row(None, "p-image-edit", PROMPT, [i.good], seed=SEED),
        "line {line}: id is required (a non-empty string)",
    ),
    row_case(
        "id-wrong-type",
        lambda i: {**p_row("x", [i.good]), "id": 1234},
        "line {line}: id is required (a non-empty string)",
    ),
    row_case(
        "not-json",
        lambda i: '{"id": "broken", "endpoint": "p-image-edit", "prompt": ',
        "line {line}: not valid JSON",
    ),
    row_case(
        "json-array",
        lambda i: json.dumps(["array-row", "p-image-edit", PROMPT, [i.good]]),
        "line {line}: must be a JSON object",
    ),
    row_case(
        "duplicate-id",
        lambda i: p_row("good-1", [i.photo_url]),
        "line {line} (good-1): id repeats line 1 (ids must be unique",
    ),
    row_case(
        "empty-prompt",
        lambda i: {**p_row("prompt-empty", [i.good]), "prompt": ""},
        "line {line} (prompt-empty): prompt is required",
    ),
    row_case(
        "whitespace-prompt",
        lambda i: {**p_row("prompt-blank", [i.good]), "prompt": " \t "},
        "line {line} (prompt-blank): prompt is required",
    ),
    row_case(
        "prompt-not-text",
        lambda i: {**p_row("prompt-number", [i.good]), "prompt": 42},
        "line {line} (prompt-number): prompt is required",
    ),
    row_case(
        "huge-prompt",
        lambda i: {**p_row("prompt-huge", [i.good]), "prompt": "x" * HUGE_PROMPT_CHARS},
        f"line {{line}} (prompt-huge): prompt: is {HUGE_PROMPT_CHARS} characters long; "
        f"the limit is {MAX_PROMPT_CHARS}",
    ),
    row_case(
        "nul-in-prompt",
        lambda i: {**p_row("prompt-nul", [i.good]), "prompt": "a cup\x00on a table"},
        "line {line} (prompt-nul): prompt: must not contain a NUL character",
    ),
    row_case(
        "unknown-endpoint",
        lambda i: row("ultra", "flux-kontext-ultra", PROMPT, [i.good], seed=SEED),
        "line {line} (ultra): endpoint 'flux-kontext-ultra' is not one of",
    ),
    row_case(
        "unknown-row-field",
        lambda i: {**p_row("stray-field", [i.good]), "negative_prompt": "blur"},
        "line {line} (stray-field): unknown field(s) negative_prompt; put parameters in params",
    ),
    row_case(
        "unknown-param",
        lambda i: flux_row("typo-param", [i.good], aspect_ration="1:1"),
        "line {line} (typo-param): aspect_ration: unknown field for this endpoint",
    ),
    row_case(
        "images-not-a-list",
        lambda i: {**p_row("images-text", []), "images": i.good},
        "line {line} (images-text): images must be a list of URLs or paths",
    ),
    row_case(
        "params-not-an-object",
        lambda i: {**p_row("params-list", [i.good]), "params": [SEED]},
        "line {line} (params-list): params must be an object",
    ),
    row_case(
        "image-inside-params",
        lambda i: flux_row("image-param", [], input_image=i.photo_url),
        "line {line} (image-param): give images in the images list, not as input_image",
    ),
    row_case(
        "two-step-without-background-prompt",
        lambda i: row("no-background", "replace_background_then_merge", PROMPT, [i.good, i.good]),
        "line {line} (no-background): replace_background_then_merge needs background_prompt",
    ),
    # --- manifest rows: images checked by the task, before its call ---------------------
    row_case(
        "unreachable-url",
        lambda i: flux_row("url-closed-port", [i.unreachable_url]),
        "input_image: " + UNREACHABLE,
    ),
    row_case(
        "url-404",
        lambda i: p_row("url-404", [i.not_found_url]),
        "image_urls[0]: {not_found_url} answered 404",
    ),
    row_case(
        "url-serving-html",
        lambda i: merge_row("url-html", [i.good, i.html_url]),
        "input_image_2: {html_url} " + NOT_AN_IMAGE,
    ),
    row_case(
        "local-non-image",
        lambda i: flux_row("local-text", [i.not_image]),
        "input_image: file {not_image} " + NOT_AN_IMAGE,
    ),
    row_case(
        "truncated-png",
        lambda i: p_row("truncated", [i.good, i.truncated]),
        "image_urls[1]: file {truncated} " + NOT_AN_IMAGE,
    ),
    row_case(
        "decompression-bomb",
        lambda i: flux_row("bomb", [i.bomb]),
        "input_image: file {bomb} has more pixels than the 64000000 allowed",
        BOMB,
    ),
    row_case(
        "zero-byte-file",
        lambda i: p_row("empty-file", [i.empty]),
        "image_urls[0]: file {empty} is empty",
    ),
    row_case(
        "missing-file",
        lambda i: flux_row("missing-file", [i.folder + "/lost-photo.png"]),
        "input_image: no such file: {folder}/lost-photo.png",
    ),
    row_case(
        "file-url",
        lambda i: flux_row("file-url", ["file:///etc/hosts"]),
        "input_image: file:// " + SCHEME + " (give a plain path instead)",
    ),
    row_case(
        "ftp-url",
        lambda i: p_row("ftp-url", ["ftp://127.0.0.1/x.png"]),
        "image_urls[0]: ftp:// " + SCHEME,
    ),
    row_case(
        "gopher-url",
        lambda i: merge_row("gopher-url", [i.good, "gopher://127.0.0.1/x.png"]),
        "input_image_2: gopher:// " + SCHEME,
    ),
    row_case(
        "url-read-differently-by-other-parsers",
        lambda i: p_row("backslash", ["http://127.0.0.1\\@10.0.0.1/x.png"]),
        "image_urls[0]: http://10.0.0.1/x.png contains a backslash: not accepted",
    ),
    row_case(
        "url-with-user-info",
        lambda i: flux_row("user-info", ["https://user:secret@10.0.0.1/x.png"]),
        "input_image: https://10.0.0.1/x.png has user info (user@host): not accepted",
    ),
    row_case(
        "path-outside-roots",
        lambda i: flux_row("etc-hosts", ["/etc/hosts"]),
        "input_image: /etc/hosts " + OUTSIDE,
    ),
    row_case(
        "relative-path-escaping-roots",
        lambda i: p_row("dot-dot", ["../" * len(Path(i.folder).parts) + "etc/hosts"]),
        "image_urls[0]: /etc/hosts " + OUTSIDE,
    ),
    row_case(
        "data-uri-not-an-image",
        lambda i: flux_row("data-uri", ["data:image/png;base64,aGVsbG8gd29ybGQ="]),
        "input_image: the data URI " + NOT_AN_IMAGE,
    ),
    # --- images given to the p-image-edit flow -------------------------------------------
    image_case("unreachable-url", lambda i: i.unreachable_url, "image_urls[0]: " + UNREACHABLE),
    image_case("url-404", lambda i: i.not_found_url, "image_urls[0]: {not_found_url} answered 404"),
    image_case(
        "url-serving-html", lambda i: i.html_url, "image_urls[0]: {html_url} " + NOT_AN_IMAGE
    ),
    image_case(
        "local-non-image", lambda i: i.not_image, "image_urls[0]: file {not_image} " + NOT_AN_IMAGE
    ),
    image_case(
        "truncated-png", lambda i: i.truncated, "image_urls[0]: file {truncated} " + NOT_AN_IMAGE
    ),
    image_case("decompression-bomb", lambda i: i.bomb, "image_urls[0]: file {bomb}", BOMB),
    image_case("zero-byte-file", lambda i: i.empty, "image_urls[0]: file {empty} is empty"),
    image_case(
        "unsupported-format",
        lambda i: i.bmp,
        "image_urls[0]: file {bmp} is a BMP image; the endpoints take JPEG, PNG, GIF or WEBP",
    ),
    image_case("file-url", lambda i: "file:///etc/hosts", "image_urls[0]: file:// " + SCHEME),
    image_case("ftp-url", lambda i: "ftp://127.0.0.1/x.png", "image_urls[0]: ftp:// " + SCHEME),
    image_case(
        "gopher-url", lambda i: "gopher://127.0.0.1/x.png", "image_urls[0]: gopher:// " + SCHEME
    ),
    image_case("path-outside-roots", lambda i: "/etc/hosts", "image_urls[0]: /etc/hosts", OUTSIDE),
    image_case("path-escaping-roots", lambda i: i.escaping, "image_urls[0]: {escaping} " + OUTSIDE),
    # --- flow parameters, one run each ---------------------------------------------------
    # Prefect's messages name the field and the allowed values (not the value given).
    flow_case(
        "edit-image-wrong-aspect-ratio",
        lambda r: edit(r, aspect_ratio="7:3"),
        INVALID_PARAMETERS,
        "aspect_ratio: Input should be 'match_input_image', '1:1'",
    ),
    flow_case(
        "edit-image-wrong-output-format",
        lambda r: edit(r, output_format="gif"),
        INVALID_PARAMETERS,
        "output_format: Input should be 'jpg' or 'png'",
    ),
    flow_case(
        "edit-image-wrong-model",
        lambda r: edit(r, model="ultra"),
        INVALID_PARAMETERS,
        "model: Input should be 'pro' or 'max'",
    ),
    flow_case(
        "edit-image-safety-tolerance-7",
        lambda r: edit(r, safety_tolerance=7),
        INVALID_PARAMETERS,
        "safety_tolerance: Input should be less than or equal to 6",
    ),
    flow_case(
        "edit-image-safety-tolerance-minus-1",
        lambda r: edit(r, safety_tolerance=-1),
        INVALID_PARAMETERS,
        "safety_tolerance: Input should be greater than or equal to 0",
    ),
    flow_case(
        "merge-safety-tolerance-3",
        lambda r: merge(r, safety_tolerance=3),
        INVALID_PARAMETERS,
        "safety_tolerance: Input should be less than or equal to 2",
    ),
    flow_case(
        "edit-image-seed-out-of-range",
        lambda r: edit(r, seed=SEED_MAX + 1),
        INVALID_PARAMETERS,
        f"seed: Input should be less than or equal to {SEED_MAX}",
    ),
    flow_case(
        "edit-image-seed-negative",
        lambda r: edit(r, seed=-5),
        INVALID_PARAMETERS,
        "seed: Input should be greater than or equal to 0",
    ),
    flow_case(
        "edit-image-seed-not-an-int",
        lambda r: edit(r, seed="seven"),
        INVALID_PARAMETERS,
        "seed",
        "Input should be a valid integer",
    ),
    flow_case(
        "p-image-edit-0-images",
        lambda r: each(r, images=[]),
        INVALID_PARAMETERS,
        "images: List should have at least 1 item",
    ),
    flow_case(
        "p-image-edit-6-images",
        lambda r: each(r, reference_images=[r.inputs.good] * 5),
        INVALID_PARAMETERS,
        "reference_images",
        "List should have at most 4 items",
    ),
    flow_case(
        "p-image-edit-wrong-aspect-ratio",
        lambda r: each(r, aspect_ratio="21:9"),
        INVALID_PARAMETERS,
        "aspect_ratio: Input should be 'match_input_image', '1:1', '16:9', '9:16', '4:3', "
        "'3:4', '3:2' or '2:3'",
    ),
    flow_case(
        "merge-1-image",
        lambda r: merge(r, image_2=""),
        "image_2",
        AnyOf("empty", "required", "no image", "missing"),
    ),
    flow_case(
        "edit-image-missing-file",
        lambda r: edit(r, image=r.inputs.folder + "/lost-photo.png"),
        "input_image: no such file: {folder}/lost-photo.png",
    ),
    flow_case(
        "edit-image-unreachable-url",
        lambda r: edit(r, image=r.inputs.unreachable_url),
        "input_image: " + UNREACHABLE,
    ),
    flow_case(
        "edit-image-file-url-to-an-image-outside-the-roots",
        file_url_outside_the_roots,
        "input_image: file:// " + SCHEME,
    ),
    flow_case(
        "edit-image-path-outside-roots",
        lambda r: edit(r, image="/etc/hosts"),
        "input_image: /etc/hosts " + OUTSIDE,
    ),
    flow_case(
        "merge-decompression-bomb",
        lambda r: merge(r, image_1=r.inputs.bomb),
        "input_image_1: file {bomb}",
        BOMB,
    ),
    flow_case(
        "merge-zero-byte-file",
        lambda r: merge(r, image_2=r.inputs.empty),
        "input_image_2: file {empty} is empty",
    ),
    flow_case(
        "edit-image-empty-prompt",
        lambda r: edit(r, prompt=""),
        "prompt: must not be empty",
    ),
    flow_case(
        "edit-image-whitespace-prompt",
        lambda r: edit(r, prompt="   \n"),
        "prompt: must not be empty",
    ),
    flow_case(
        "merge-huge-prompt",
        lambda r: merge(r, prompt="y" * HUGE_PROMPT_CHARS),
        f"prompt: is {HUGE_PROMPT_CHARS} characters long; the limit is {MAX_PROMPT_CHARS}",
    ),
    flow_case(
        "p-image-edit-nul-in-prompt",
        lambda r: each(r, prompt="a cup\x00on a table"),
        "prompt: must not contain a NUL character",
    ),
    flow_case(
        "edit-image-api-key-wrong-type",
        lambda r: edit(r, credentials={"api_key": 12345, "base_url": r.emulator.url}),
        INVALID_PARAMETERS,
        "credentials.api_key",
        "Input should be a valid string",
    ),
    flow_case(
        "batch-negative-max-cost",
        lambda r: run_batch(r, one_good_row(r), max_cost_usd=-1.0),
        INVALID_PARAMETERS,
        "max_cost_usd: Input should be greater than or equal to 0",
    ),
    flow_case(
        "batch-max-concurrency-0",
        lambda r: run_batch(r, one_good_row(r), max_concurrency=0),
        INVALID_PARAMETERS,
        "max_concurrency: Input should be greater than or equal to 1",
    ),
    flow_case(
        "batch-default-safety-tolerance-7",
        lambda r: run_batch(r, one_good_row(r), defaults={"safety_tolerance": 7}),
        INVALID_PARAMETERS,
        "defaults.safety_tolerance: Input should be less than or equal to 6",
    ),
    flow_case(
        "batch-manifest-does-not-exist",
        lambda r: run_batch(r, r.inputs.folder + "/no-such-manifest.jsonl"),
        "manifest {folder}/no-such-manifest.jsonl has 1 problem(s)",
        "cannot read it: FileNotFoundError",
    ),
    flow_case(
        "batch-manifest-as-file-url",
        lambda r: run_batch(r, "file://" + one_good_row(r, "by-file-url.jsonl")),
        "file:// inputs are not accepted (give a plain path instead)",
    ),
    flow_case(
        "batch-manifest-outside-roots",
        lambda r: run_batch(r, "/etc/hosts"),
        "manifest /etc/hosts has 1 problem(s)",
        "refused: /etc/hosts " + OUTSIDE,
    ),
    flow_case(
        "batch-manifest-from-private-address",
        manifest_from_loopback_without_allow_list,
        "manifest {manifest_url} has 1 problem(s)",
        "refused: 127.0.0.1 is a loopback address; inputs are fetched from public addresses only",
    ),
    flow_case(
        "batch-csv-missing-header-column",
        lambda r: run_batch(
            r,
            r.manifest(
                "no-prompt-column.csv",
                f"id,endpoint,images,seed\nc-1,p-image-edit,{r.inputs.good},{SEED}\n",
            ),
        ),
        "line 1: the header lacks column(s) prompt",
    ),
    flow_case(
        "batch-csv-row-with-a-bad-cell",
        lambda r: run_batch(
            r,
            r.manifest(
                "bad-cell.csv",
                "id,endpoint,prompt,images,seed\n"
                f"csv-seed,p-image-edit,{PROMPT},{r.inputs.good},seven\n",
            ),
        ),
        "1 of 1 rows failed",
        "line 2 (csv-seed): seed: Input should be a valid integer (got 'seven')",
    ),
    flow_case(
        "batch-empty-manifest",
        lambda r: run_batch(r, r.manifest("empty.jsonl", "\n\n")),
        "has 1 problem(s)",
        "no rows",
    ),
    flow_case(
        "batch-flux-row-seed-outside-the-flows-range",
        lambda r: run_batch(
            r,
            r.manifest(
                "flux-seed.jsonl",
                json.dumps(flux_row("flux-seed", [r.inputs.good], seed=-5)) + "\n",
            ),
        ),
        "line 1 (flux-seed): seed",
    ),
    flow_case(
        "batch-csv-cell-over-131072-characters",
        lambda r: run_batch(
            r,
            r.manifest(
                "long-cell.csv",
                "id,endpoint,prompt,images,seed\n"
                f"c-1,p-image-edit,{PROMPT},{r.inputs.good},{SEED}\n"
                f"c-2,p-image-edit,{'x' * 131_073},{r.inputs.good},{SEED}\n",
            ),
        ),
        "line 3: a cell is longer than 131072 characters; the manifest cannot be read past it",
    ),
]


# --- the shared runs ---------------------------------------------------------------------


def fill(template: Any, inputs: Inputs) -> Any:
    """``template`` with ``{field}`` placeholders in its strings replaced by `Inputs` fields."""
    if isinstance(template, str):
        return template.format(**asdict(inputs))
    if isinstance(template, list):
        return [fill(item, inputs) for item in template]
    if isinstance(template, dict):
        return {key: fill(value, inputs) for key, value in template.items()}
    return template


@dataclass(frozen=True)
class SharedRun:
    """A flow run shared by several cases: its state, results and what the emulator saw."""

    state: State[Any]
    results: dict[str, dict[str, Any]]  # by case name
    lines: dict[str, int]  # by case name
    good: list[dict[str, Any]]
    all_results: list[dict[str, Any]]
    stats: dict[str, Any]


def read_results(url: str) -> list[dict[str, Any]]:
    """The results manifest, read back from the (local) storage it was written to."""
    return [json.loads(line) for line in Path(url).read_text().splitlines()]


@pytest.fixture(scope="module")
def catalogue_batch(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    """Every ``row-*`` case in one manifest after two good rows; the batch run once."""
    folder = tmp_path_factory.mktemp("catalogue-batch")
    lines: list[str] = [json.dumps(fill(good, inputs)) for good in GOOD_ROWS]
    where: dict[str, int] = {}
    for case in CASES:
        if case.via is Via.ROW:
            assert case.line is not None
            line = case.line(inputs)
            lines.append(line if isinstance(line, str) else json.dumps(line))
            where[case.name] = len(lines)
    manifest = folder / "catalogue.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    emulator = SegmindEmulator(api_key=API_KEY).start()
    try:
        state: State[Any] = batch(
            manifest=str(manifest),
            storage=ObjectStorage(base_url=str(folder / "out")),
            credentials=SegmindCredentials(api_key=API_KEY, base_url=emulator.url),
            max_concurrency=8,
            return_state=True,
        )
        stats = emulator_stats(emulator.url)
    finally:
        emulator.stop()
    outcome = state.result(raise_on_failure=False)
    assert isinstance(outcome, BatchOutcome), (state, outcome)
    return _shared_run(state, outcome.results_url, where, len(GOOD_ROWS), stats)


def _shared_run(
    state: State[Any], results_url: str, where: dict[str, int], good: int, stats: dict[str, Any]
) -> SharedRun:
    """A shared run's results by case name; lines 1..``good`` are the good inputs."""
    results = read_results(results_url)
    by_line = {result["line"]: result for result in results}
    return SharedRun(
        state=state,
        results={name: by_line[line] for name, line in where.items() if line in by_line},
        lines=where,
        good=[by_line[n] for n in range(1, good + 1)],
        all_results=results,
        stats=stats,
    )


@pytest.fixture(scope="module")
def catalogue_images(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    """Every ``image-*`` case in one images list after a good image; the flow run once."""
    emulator = SegmindEmulator(api_key=API_KEY).start()
    try:
        folder = tmp_path_factory.mktemp("catalogue-images")
        images = [inputs.good]
        where: dict[str, int] = {}
        for case in CASES:
            if case.via is Via.IMAGE:
                assert case.image is not None
                images.append(case.image(inputs))
                where[case.name] = len(images)
        credentials = SegmindCredentials(api_key=API_KEY, base_url=emulator.url)

        state: State[Any] = edit_each_image_with_p_image_edit(
            prompt=PROMPT,
            images=images,
            seed=GOOD_IMAGE_SEED,
            max_concurrency=8,
            storage=ObjectStorage(base_url=str(folder / "out")),
            credentials=credentials,
            return_state=True,
        )

        stats = emulator_stats(emulator.url)
    finally:
        emulator.stop()
    outcome = state.result(raise_on_failure=False)
    assert isinstance(outcome, PImageEditOutcome), (state, outcome)
    return _shared_run(state, outcome.results_url, where, 1, stats)


# --- the tests ---------------------------------------------------------------------------


def test_the_catalogue_has_at_least_30_kinds_of_bad_input() -> None:
    assert len({case.id for case in CASES}) == len(CASES)
    assert len({case.name for case in CASES}) >= 30
    assert len(CASES) >= 30


def failure_text(state: State[Any]) -> str:
    """The run's message, and the errors of its results manifest when it wrote one."""
    text = state.message or ""
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BatchOutcome | PImageEditOutcome):
        errors = [r["error"] for r in read_results(outcome.results_url) if r["error"]]
        text = "\n".join([text, *errors])
    return text


def assert_refused(message: str | None, case: Case, inputs: Inputs, line: int | None) -> None:
    assert message, f"{case.id}: no error message"
    for phrase in case.expected:
        options = phrase if isinstance(phrase, AnyOf) else (phrase,)
        wanted = [option.format(**asdict(inputs), line=line) for option in options]
        assert any(option in message for option in wanted), (
            f"{case.id}: {' or '.join(map(repr, wanted))} is not in the error:\n{message}"
        )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_before_any_billed_call(
    case: Case, inputs: Inputs, request: pytest.FixtureRequest
) -> None:
    if case.via is Via.FLOW:
        assert case.run is not None
        emulator: SegmindEmulator = request.getfixturevalue("segmind_env")
        folder: Path = request.getfixturevalue("tmp_path")
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")

        state = case.run(FlowRun(inputs, folder, emulator, monkeypatch))

        stats = emulator_stats(emulator.url)
        billed = f"the emulator billed {stats['billed']} of {stats['requests']} request(s)"
        assert state.is_failed(), f"{case.id}: the run ended {state.type}; {billed}"
        assert_refused(failure_text(state), case, inputs, line=None)
        assert (stats["requests"], stats["billed"]) == (0, 0), f"{case.id}: {billed}"
        out = folder / "out"
        stored = [p for p in out.rglob("*") if p.suffix in (".png", ".jpg")] if out.exists() else []
        assert stored == [], case.id
        return

    shared: SharedRun = request.getfixturevalue(
        "catalogue_batch" if case.via is Via.ROW else "catalogue_images"
    )
    line = shared.lines[case.name]
    assert case.name in shared.results, f"{case.id}: line {line} has no result"
    result = shared.results[case.name]
    assert result["status"] == "failed", (case.id, result)
    assert (result["output"], result["cost_usd"], result["intermediate"]) == (None, 0, None)
    assert_refused(result["error"], case, inputs, line=line)
    # Each good row or image was one request, and nothing else reached the emulator:
    # so no bad one was sent (requests) and none was paid for (billed).
    good = len(shared.good)
    assert (shared.stats["requests"], shared.stats["billed"]) == (good, good), shared.stats


def test_the_catalogue_batch_pays_for_exactly_its_good_rows(
    catalogue_batch: SharedRun, inputs: Inputs
) -> None:
    run = catalogue_batch
    assert [r["status"] for r in run.good] == ["succeeded", "succeeded"], run.good
    assert [r["id"] for r in run.good] == ["good-1", "good-2"]
    assert {slug: s["billed"] for slug, s in run.stats["by_slug"].items() if s["billed"]} == {
        "p-image-edit": 1,
        "flux-kontext-pro": 1,
    }
    assert run.stats["billed"] == len(GOOD_ROWS)
    assert run.stats["by_status"] == {"200": len(GOOD_ROWS)}, run.stats["by_status"]
    # One results line per manifest line, and the run is Failed, naming the counts.
    bad = len(run.lines)
    assert len(run.all_results) == len(GOOD_ROWS) + bad
    assert run.state.is_failed(), run.state
    assert run.state.message is not None
    assert f"{bad} of {len(GOOD_ROWS) + bad} rows failed, 0 not run" in run.state.message


def test_the_catalogue_images_run_pays_for_exactly_its_good_image(
    catalogue_images: SharedRun,
) -> None:
    run = catalogue_images
    assert run.good[0]["status"] == "succeeded", run.good
    assert run.stats["billed"] == 1
    assert run.stats["by_status"] == {"200": 1}, run.stats["by_status"]
    bad = len(run.lines)
    assert len(run.all_results) == 1 + bad
    assert run.state.is_failed(), run.state
    assert run.state.message is not None
    assert f"{bad} of {1 + bad} image(s) failed" in run.state.message


def test_the_bomb_is_a_real_20000_by_20000_png(
    inputs: Inputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own guard, off to look
    with Image.open(io.BytesIO(Path(inputs.bomb).read_bytes())) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (20_000, 20_000), "1")
    assert Path(inputs.bomb).stat().st_size < 100_000
