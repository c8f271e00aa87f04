"""Batch manifests: one row per image to make, as JSONL or CSV, checked before any call.

JSONL, one object per line::

    {"id": "sku-123", "endpoint": "multi-image-kontext-pro", "prompt": "...",
     "images": ["s3://bucket/a.png", "https://..."], "params": {"aspect_ratio": "1:1", "seed": 7}}

CSV, with a header: ``id``, ``endpoint``, ``prompt``, ``images`` (separated by
``|``), ``background_prompt`` when needed; every other non-empty column is a
parameter (``aspect_ratio``, ``seed``, ``output_format``, ``safety_tolerance``...),
typed by the contract models (``7`` is a number, ``true`` a boolean).

``endpoint`` is a slug or ``replace_background_then_merge``, which also needs
``background_prompt`` and exactly two images (the product photo, then the one
to merge). ``id`` is required and unique: outputs are stored under it. Blank
lines are skipped. Relative local image paths are taken relative to a local
manifest's folder.

Every row is checked against its endpoint's contract (with the images still
unresolved) before anything is paid, and every problem is reported with its
line number: also text that is not Unicode (a lone surrogate, as a JSON
escape of U+D800 without its pair, which no output name, log or results
manifest can hold), values nested more than `MAX_NESTING` levels deep,
numbers too long to read, and CSV cells over the CSV reader's 131072
characters. A manifest is read up to `MAX_MANIFEST_BYTES`, wherever it is.
`load_manifest` keeps the good rows and sets the bad ones aside
(`RejectedRow`), which is what a batch that must not sink on a few bad rows
wants; `read_manifest` refuses the whole manifest on any problem.

Defaults (``defaults``, ``default_endpoint``) fill what a row leaves out: a
default parameter applies only to endpoints that have that parameter, and a
value the endpoint refuses makes a problem of the row like any other.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec
from pydantic import BaseModel, ConfigDict, Field

from segmind_core.contract import ENDPOINTS, InvalidRequestError, get_endpoint
from segmind_core.errors import PermanentError
from segmind_core.fetch import (
    FetchRefusedError,
    InputPolicy,
    TooLargeError,
    display_url,
    fetch_http,
    same_store_scheme,
)
from segmind_core.object_store import ObjectStore
from segmind_core.outputs import sanitise_key_part

__all__ = [
    "BACKGROUND_SUFFIX",
    "BATCH_ENDPOINTS",
    "IMAGE_COUNTS",
    "MAX_MANIFEST_BYTES",
    "MAX_NESTING",
    "REPLACE_BACKGROUND_THEN_MERGE",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "RejectedRow",
    "check_manifest_text",
    "check_rows",
    "load_manifest",
    "output_names",
    "parse_manifest",
    "read_manifest",
]

REPLACE_BACKGROUND_THEN_MERGE = "replace_background_then_merge"
BACKGROUND_SUFFIX = "-background"
"""Added to a replace_background_then_merge row's id to name its intermediate image."""
_FIXED_COLUMNS = ("id", "endpoint", "prompt", "images", "background_prompt")
_ROW_FIELDS = frozenset({*_FIXED_COLUMNS, "params"})
_IMAGE_SEPARATOR = "|"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""Largest manifest read, from anywhere: about 200,000 rows. Split a larger one."""
MAX_NESTING = 16
"""Deepest a row's values may nest (a row is 1, its params 2...)."""
_PATH_LIKE_ID = re.compile(r"[/\\]|^\s*\.+\s*$")
# Stands in for images while parameters are checked; never sent anywhere.
_PLACEHOLDER_IMAGE = "https://placeholder.invalid/image.png"
IMAGE_COUNTS = {
    "flux-kontext-pro": (0, 1),
    "flux-kontext-max": (0, 1),
    "multi-image-kontext-pro": (2, 2),
    "multi-image-kontext-max": (2, 2),
    "p-image-edit": (1, 5),
    REPLACE_BACKGROUND_THEN_MERGE: (2, 2),
}
"""How many images each endpoint (and the two-step flow) takes: (at least, at most)."""
BATCH_ENDPOINTS = tuple(IMAGE_COUNTS)
"""What a row's ``endpoint`` may be: the five slugs and the two-step flow."""


class ManifestError(PermanentError, ValueError):
    """A manifest with problems; ``problems`` lists each as ``"line N (id): what"``."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"manifest {source} has {len(self.problems)} problem(s):\n  {shown}{more}")


class ManifestRow(BaseModel):
    """One checked row.

    Attributes:
        id: The row's id; outputs are stored under it.
        endpoint: A slug, or ``replace_background_then_merge``.
        prompt: The edit (for replace_background_then_merge: the merge).
        images: Input images as given (relative local paths made absolute).
        params: The other parameters, typed.
        background_prompt: The new background (replace_background_then_merge only).
        line: Where the row is in the manifest (1-based; the header is line 1 in CSV).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    endpoint: str
    prompt: str
    images: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    background_prompt: str | None = None
    line: int


@dataclass(frozen=True)
class RejectedRow:
    """A row that cannot run, and why.

    Attributes:
        line: Where the row is in the manifest.
        id: Its id, when it has a usable one.
        problems: Each problem as ``"line N (id): what"``.
        endpoint: Its endpoint as given, when it is text.
    """

    line: int
    id: str | None
    problems: tuple[str, ...]
    endpoint: str | None = None

    @property
    def reason(self) -> str:
        """The problems on one line."""
        return "; ".join(self.problems)


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: the rows that can run and those that cannot.

    Attributes:
        source: Where it was read from.
        rows: The good rows, in manifest order.
        rejected: The bad rows, by line.
    """

    source: str
    rows: list[ManifestRow]
    rejected: list[RejectedRow] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every problem of every rejected row, by line."""
        return [problem for row in self.rejected for problem in row.problems]

    def raise_for_problems(self) -> list[ManifestRow]:
        """The rows, or `ManifestError` when any row was rejected."""
        if self.rejected:
            raise ManifestError(self.source, self.problems())
        return self.rows


def read_manifest(
    location: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    default_endpoint: str | None = None,
    **storage_options: Any,
) -> list[ManifestRow]:
    """Read and check the manifest at a local path or any fsspec URL; any problem refuses it.

    Raises:
        ManifestError: listing every problem, or saying the file cannot be read.
    """
    return load_manifest(
        location, defaults=defaults, default_endpoint=default_endpoint, **storage_options
    ).raise_for_problems()


def load_manifest(
    location: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    default_endpoint: str | None = None,
    store: ObjectStore | None = None,
    policy: InputPolicy | None = None,
    **storage_options: Any,
) -> Manifest:
    """Read and check the manifest at a local path or any fsspec URL, setting bad rows aside.

    The format follows the extension: ``.csv`` is CSV, anything else JSONL.

    Args:
        location: A local path or fsspec URL.
        defaults: Parameters for rows that leave them out (only where the endpoint has them).
        default_endpoint: The endpoint of rows that name none.
        store: A URL on the same filesystem as this store (``s3://``) is read
            through it, with its credentials.
        policy: Where a manifest may be read from (`segmind_core.fetch.InputPolicy`,
            the same rules as input images; from the environment by default).
        storage_options: Passed to fsspec otherwise.

    Raises:
        ManifestError: the file cannot be read, has no rows or (CSV) lacks required columns.
    """
    policy = policy if policy is not None else InputPolicy.from_env()
    try:
        data = _read_bounded(location, store, policy, storage_options)
    except FetchRefusedError as exc:
        raise ManifestError(display_url(location), [f"refused: {exc}"]) from None
    except ManifestError:
        raise
    except Exception as exc:  # OSError, ValueError, botocore's NoCredentialsError...
        raise ManifestError(
            display_url(location), [f"cannot read it: {type(exc).__name__}: {exc}"]
        ) from None
    try:
        # utf-8-sig: spreadsheets often save CSV with a byte-order mark.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            display_url(location),
            [
                f"cannot read it: UnicodeDecodeError: line {line} is not UTF-8 text "
                f"(byte {exc.start + 1})"
            ],
        ) from None
    fmt = "csv" if location.lower().endswith(".csv") else "jsonl"
    return check_manifest_text(
        text,
        fmt=fmt,
        source=location,
        base_folder=_local_folder(location),
        defaults=defaults,
        default_endpoint=default_endpoint,
    )


def _read_bounded(
    location: str, store: ObjectStore | None, policy: InputPolicy, storage_options: Any
) -> bytes:
    """The manifest's bytes, read within ``policy`` and at most `MAX_MANIFEST_BYTES`.

    Raises:
        FetchRefusedError: the policy refuses it.
        ManifestError: it is larger than the limit.
        Exception: whatever reading it raised.
    """
    scheme = policy.check_scheme(location, store.protocol if store is not None else None)
    if scheme == "data":
        raise FetchRefusedError("a manifest cannot be a data: URI")
    if scheme in ("http", "https"):
        try:
            return fetch_http(location, replace(policy, max_bytes=MAX_MANIFEST_BYTES))
        except TooLargeError:
            raise _too_large(location) from None
    if not scheme:
        opened: Any = open(policy.check_local_path(location), "rb")  # noqa: SIM115 - closed below
    elif store is not None and same_store_scheme(scheme, store.protocol):
        policy.check_store_url(location, store.protocol, store.root)
        parts = urlsplit(location)
        opened = store.fs.open(f"{store.protocol}://{parts.netloc}{parts.path}", "rb")
    else:
        policy.check_store_url(location, None, None)
        opened = fsspec.open(location, "rb", **storage_options).open()
    with opened as handle:
        data: bytes = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise _too_large(location)
    return data


def _too_large(location: str) -> ManifestError:
    return ManifestError(
        display_url(location),
        [
            f"it is larger than {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB "
            f"({MAX_MANIFEST_BYTES} bytes), the most a manifest may be; split it"
        ],
    )


def _local_folder(location: str) -> Path | None:
    scheme = urlsplit(location).scheme.lower()
    if scheme in ("", "file") or len(scheme) == 1:
        return Path(location.removeprefix("file://")).expanduser().resolve().parent
    return None


def parse_manifest(
    text: str, *, fmt: str, source: str = "<text>", base_folder: Path | None = None
) -> list[ManifestRow]:
    """Parse and check manifest ``text`` (``fmt`` is ``"jsonl"`` or ``"csv"``).

    Raises:
        ManifestError: listing every problem of every row.
    """
    return check_manifest_text(
        text, fmt=fmt, source=source, base_folder=base_folder
    ).raise_for_problems()


def check_manifest_text(
    text: str,
    *,
    fmt: str,
    source: str = "<text>",
    base_folder: Path | None = None,
    defaults: Mapping[str, Any] | None = None,
    default_endpoint: str | None = None,
) -> Manifest:
    """Parse and check manifest ``text``, setting bad rows aside (see `load_manifest`).

    Raises:
        ManifestError: no rows at all, or (CSV) the header lacks required columns.
    """
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"unknown manifest format {fmt!r}; use jsonl or csv")
    _check_default_endpoint(default_endpoint)
    try:
        raw_rows, unreadable = (
            _jsonl_rows(text) if fmt == "jsonl" else _csv_rows(text, default_endpoint is not None)
        )
    except _UnreadableError as exc:
        raise ManifestError(source, [exc.problem]) from None
    if not raw_rows and not unreadable:
        raise ManifestError(source, ["no rows"])
    if fmt == "csv" and not raw_rows and unreadable and unreadable[0].line == 1:
        raise ManifestError(source, list(unreadable[0].problems))
    checked = _check_rows(raw_rows, base_folder, defaults or {}, default_endpoint)
    rejected = sorted([*unreadable, *checked.rejected], key=lambda row: row.line)
    return Manifest(source, checked.rows, rejected)


def check_rows(
    rows: Sequence[Mapping[str, Any]],
    *,
    source: str = "<rows>",
    defaults: Mapping[str, Any] | None = None,
    default_endpoint: str | None = None,
) -> Manifest:
    """Check rows given as mappings (the JSONL shape); row N is "line N"."""
    _check_default_endpoint(default_endpoint)
    numbered = [(number, dict(row)) for number, row in enumerate(rows, start=1)]
    checked = _check_rows(numbered, None, defaults or {}, default_endpoint)
    return Manifest(source, checked.rows, checked.rejected)


def _check_rows(
    raw_rows: Sequence[tuple[int, dict[str, Any]]],
    base_folder: Path | None,
    defaults: Mapping[str, Any],
    default_endpoint: str | None,
) -> Manifest:
    rows: list[ManifestRow] = []
    rejected: list[RejectedRow] = []
    seen: dict[str, tuple[int, bool]] = {}  # output name: (line, whether it is that row's id)
    for line, raw in raw_rows:
        if default_endpoint is not None and raw.get("endpoint") in (None, ""):
            raw = {**raw, "endpoint": default_endpoint}
        row_problems, row = _check_row(line, raw, base_folder, defaults)
        if row is None:
            raw_id = _text_or_none(raw.get("id"))
            usable_id = raw_id if raw_id is not None and raw_id.strip() else None
            endpoint = _text_or_none(raw.get("endpoint"))
            rejected.append(RejectedRow(line, usable_id, tuple(row_problems), endpoint))
            continue
        names = [sanitise_key_part(name) for name in output_names(row)]
        problem = _name_clash(line, row.id, names, seen)
        if problem is not None:
            rejected.append(RejectedRow(line, row.id, (problem,), row.endpoint))
            continue
        seen.update({name: (line, index == 0) for index, name in enumerate(names)})
        rows.append(row)
    return Manifest("", rows, rejected)


def _check_default_endpoint(default_endpoint: str | None) -> None:
    if default_endpoint is not None and default_endpoint not in IMAGE_COUNTS:
        raise ValueError(f"default endpoint {default_endpoint!r} is not one of {_known()}")


def _name_clash(
    line: int, row_id: str, names: list[str], seen: Mapping[str, tuple[int, bool]]
) -> str | None:
    """Why the row's output names clash with an earlier row's, or ``None``."""
    label = f"line {line} ({row_id})"
    for index, name in enumerate(names):
        if name not in seen:
            continue
        other, is_id = seen[name]
        if index == 0 and is_id:
            return f"{label}: id repeats line {other} (ids must be unique, also after sanitising)"
        if index == 0:
            return f"{label}: id {name} names the intermediate image of line {other}"
        return f"{label}: its intermediate image would be {name}, the id of line {other}"
    return None


def output_names(row: ManifestRow) -> list[str]:
    """The names the row's outputs are stored under: its id, and the intermediate's."""
    if row.endpoint == REPLACE_BACKGROUND_THEN_MERGE:
        return [row.id, f"{row.id}{BACKGROUND_SUFFIX}"]
    return [row.id]


def _known() -> str:
    return ", ".join([*sorted(ENDPOINTS), REPLACE_BACKGROUND_THEN_MERGE])


class _UnreadableError(Exception):
    """A manifest that cannot be read past one of its lines."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


def _is_text(value: str) -> bool:
    """Whether ``value`` is Unicode text: no lone surrogate (a JSON escape without its pair)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and _is_text(value) else None


def _shown(value: str) -> str:
    """``value`` for a message: quoted, escaped (surrogates too), at most 60 characters."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:56] + "...'"


def _json_value(line: str) -> tuple[Any, str | None]:
    """The JSON value of one line, or why it is not one."""
    try:
        return json.loads(line), None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg})"
    except RecursionError:
        return None, "not valid JSON (nested too deeply to read)"
    except ValueError as exc:  # an integer longer than Python reads (4300 digits)
        return None, f"not valid JSON ({str(exc).split(':', 1)[0]})"


def _jsonl_rows(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[RejectedRow]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[RejectedRow] = []
    # Only "\n" ends a record: str.splitlines() would also split on U+2028 and other
    # separators that JSON allows inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        value, problem = _json_value(line)
        if problem is not None:
            problems.append(RejectedRow(number, None, (f"line {number}: {problem}",)))
            continue
        if not isinstance(value, dict):
            problems.append(RejectedRow(number, None, (f"line {number}: must be a JSON object",)))
            continue
        rows.append((number, value))
    return rows, problems


def _csv_value(text: str) -> Any:
    """A CSV cell as the JSON value it spells (7, 1.5, true), else the text itself."""
    value, problem = _json_value(text)
    return value if problem is None and isinstance(value, int | float | bool) else text


def _csv_rows(
    text: str, endpoint_optional: bool
) -> tuple[list[tuple[int, dict[str, Any]]], list[RejectedRow]]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = reader.fieldnames or []
        required = ("id", "prompt") if endpoint_optional else ("id", "endpoint", "prompt")
        missing = [name for name in required if name not in header]
        if missing:
            problem = f"line 1: the header lacks column(s) {', '.join(missing)}"
            return [], [RejectedRow(1, None, (problem,))]
        return _csv_records(reader), []
    except csv.Error as exc:
        # The reader cannot go on past it: the whole manifest is refused.
        line = reader.line_num + 1  # the lines read whole, then the one it failed in
        what = (
            f"a cell is longer than {csv.field_size_limit()} characters"
            if "field larger than field limit" in str(exc)
            else f"not valid CSV ({exc})"
        )
        raise _UnreadableError(
            f"line {line}: {what}; the manifest cannot be read past it"
        ) from None


def _csv_records(reader: csv.DictReader[str]) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a CSV manifest (each with the line it ends on) as JSONL-shaped mappings."""
    rows: list[tuple[int, dict[str, Any]]] = []
    for record in reader:
        line = reader.line_num
        if not any((value or "").strip() for value in record.values() if isinstance(value, str)):
            continue
        row: dict[str, Any] = {"params": {}}
        for name, value in record.items():
            cell = (value or "").strip() if isinstance(value, str) else ""
            if name is None or not cell:
                continue
            if name == "images":
                row["images"] = [part.strip() for part in cell.split(_IMAGE_SEPARATOR)]
            elif name in _FIXED_COLUMNS:
                row[name] = cell
            else:
                row["params"][name] = _csv_value(cell)
        rows.append((line, row))
    return rows


def _absolute(image: str, base_folder: Path | None) -> str:
    if base_folder is None or urlsplit(image).scheme.lower() not in ("",):
        return image
    path = Path(image).expanduser()
    return str(path if path.is_absolute() else (base_folder / path).resolve())


def _text_problems(label: str, raw: Mapping[str, Any]) -> list[str]:
    """What in the row no output name, log or results line can hold, by place.

    Text with a lone surrogate, and values nested more than `MAX_NESTING` levels deep.
    """
    problems: list[str] = []
    pending: list[tuple[Any, str, int]] = [(raw, "", 1)]
    while pending:
        value, where, depth = pending.pop()
        place = where or "the row"
        if depth > MAX_NESTING:
            problems.append(f"{label}: {place} nests more than {MAX_NESTING} levels deep")
        elif isinstance(value, Mapping):
            inner: list[tuple[Any, str, int]] = []
            for name, item in value.items():
                if isinstance(name, str) and not _is_text(name):
                    problems.append(
                        f"{label}: a field name in {place}, {_shown(name)}, {_NOT_TEXT}"
                    )
                else:
                    inner.append((item, f"{where}.{name}" if where else str(name), depth + 1))
            pending.extend(reversed(inner))
        elif isinstance(value, list):
            items = [(item, f"{place}[{index}]", depth + 1) for index, item in enumerate(value)]
            pending.extend(reversed(items))
        elif isinstance(value, str) and not _is_text(value):
            problems.append(f"{label}: {place}, {_shown(value)}, {_NOT_TEXT}")
    return problems


_NOT_TEXT = "is not valid text: it has a lone surrogate (a \\ud800-\\udfff escape without its pair)"


def _check_row(
    line: int, raw: dict[str, Any], base_folder: Path | None, defaults: Mapping[str, Any]
) -> tuple[list[str], ManifestRow | None]:
    shown_id = _text_or_none(raw.get("id"))
    label = f"line {line}" + (f" ({shown_id})" if shown_id is not None else "")
    problems: list[str] = _text_problems(label, raw)
    if problems:
        return problems, None
    unknown = sorted(
        set(raw) - {"id", "endpoint", "prompt", "images", "params", "background_prompt"}
    )
    if unknown:
        problems.append(f"{label}: unknown field(s) {', '.join(unknown)}; put parameters in params")
    row_id = raw.get("id")
    if not isinstance(row_id, str) or not row_id.strip():
        problems.append(f"{label}: id is required (a non-empty string)")
    elif _PATH_LIKE_ID.search(row_id):
        problems.append(
            f"{label}: id {row_id!r} looks like a path (/, \\ or only dots); ids name outputs "
            "inside the output folder and must not"
        )
    else:
        try:
            sanitise_key_part(row_id)
        except ValueError:
            problems.append(f"{label}: id {row_id!r} has no letters or digits to name an output")
    endpoint = raw.get("endpoint")
    if endpoint not in IMAGE_COUNTS:
        problems.append(f"{label}: endpoint {endpoint!r} is not one of {_known()}")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(f"{label}: prompt is required")
    images = raw.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        problems.append(f"{label}: images must be a list of URLs or paths")
        images = []
    params = raw.get("params", {})
    if not isinstance(params, dict):
        problems.append(f"{label}: params must be an object")
        params = {}
    background_prompt = raw.get("background_prompt")
    if problems or not (
        isinstance(endpoint, str) and isinstance(prompt, str) and isinstance(row_id, str)
    ):
        return problems, None

    params = _with_defaults(endpoint, params, defaults)
    low, high = IMAGE_COUNTS[endpoint]
    if not low <= len(images) <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        problems.append(f"{label}: {endpoint} takes {wanted} image(s), got {len(images)}")
    if endpoint == REPLACE_BACKGROUND_THEN_MERGE:
        if not isinstance(background_prompt, str) or not background_prompt.strip():
            problems.append(f"{label}: replace_background_then_merge needs background_prompt")
        else:
            # The first step's prompt: checked like any prompt (length, NUL...).
            problems.extend(
                problem.replace(": prompt:", ": background_prompt:", 1)
                for problem in _contract_problems(
                    label, "flux-kontext-pro", background_prompt, {}, 0
                )
            )
        problems.extend(_contract_problems(label, "flux-kontext-pro", "x", params, 1))
        problems.extend(_contract_problems(label, "multi-image-kontext-pro", prompt, params, 2))
    else:
        if background_prompt is not None:
            problems.append(f"{label}: background_prompt is only for replace_background_then_merge")
        problems.extend(_contract_problems(label, endpoint, prompt, params, len(images)))
    if problems:
        return problems, None
    return [], ManifestRow(
        id=row_id,
        endpoint=endpoint,
        prompt=prompt,
        images=[_absolute(image, base_folder) for image in images],
        params=params,
        background_prompt=background_prompt,
        line=line,
    )


def _with_defaults(
    endpoint: str, params: dict[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``params`` with the defaults its endpoint has a field for (the row's own values win)."""
    slug = "flux-kontext-pro" if endpoint == REPLACE_BACKGROUND_THEN_MERGE else endpoint
    fields = get_endpoint(slug).request_model.model_fields
    merged = {
        name: value
        for name, value in defaults.items()
        if value is not None and name in fields and name not in params
    }
    return {**merged, **params}


def _contract_problems(
    label: str, slug: str, prompt: str, params: dict[str, Any], image_count: int
) -> list[str]:
    """The contract's objections to ``params`` (images stand in as placeholders)."""
    request_model = get_endpoint(slug).request_model
    image_fields = {"input_image", "input_image_1", "input_image_2", "image_urls"}
    misplaced = sorted(image_fields & set(params))
    if misplaced:
        return [f"{label}: give images in the images list, not as {', '.join(misplaced)}"]
    body: dict[str, Any] = {**params, "prompt": prompt}
    fields = request_model.model_fields
    if "image_urls" in fields:
        body["image_urls"] = [_PLACEHOLDER_IMAGE] * max(1, image_count)
    elif "input_image_1" in fields:
        body["input_image_1"] = body["input_image_2"] = _PLACEHOLDER_IMAGE
    elif image_count:
        body["input_image"] = _PLACEHOLDER_IMAGE
    try:
        get_endpoint(slug).validate(body)
    except InvalidRequestError as exc:
        return [f"{label}: {problem}" for problem in exc.problems]
    return []
