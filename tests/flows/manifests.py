"""Building batch manifests (JSONL and CSV) for the batch flow's tests."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
COFFEE = PHOTOS / "coffee.jpg"
CHELSEA = PHOTOS / "chelsea.jpg"
ASTRONAUT = PHOTOS / "astronaut.jpg"


def row(
    row_id: str | None,
    endpoint: str | None,
    prompt: str | None,
    images: Sequence[str] = (),
    background_prompt: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    """One manifest row in the JSONL shape; ``None`` leaves a field out."""
    built: dict[str, Any] = {}
    if row_id is not None:
        built["id"] = row_id
    if endpoint is not None:
        built["endpoint"] = endpoint
    if prompt is not None:
        built["prompt"] = prompt
    built["images"] = list(images)
    if background_prompt is not None:
        built["background_prompt"] = background_prompt
    if params:
        built["params"] = params
    return built


def jsonl(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as JSONL: one object per line, line N is row N."""
    return "".join(json.dumps(dict(r)) + "\n" for r in rows)


CSV_COLUMNS = (
    "id",
    "endpoint",
    "prompt",
    "images",
    "background_prompt",
    "aspect_ratio",
    "seed",
    "output_format",
    "safety_tolerance",
)


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV with a header (line 1): row N is line N + 1, images joined by ``|``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        record: dict[str, Any] = {name: r.get(name, "") for name in CSV_COLUMNS[:5]}
        record["images"] = "|".join(r.get("images", []))
        for name, value in dict(r.get("params", {})).items():
            if name not in CSV_COLUMNS:
                raise ValueError(f"no CSV column for {name}")
            record[name] = value
        writer.writerow(record)
    return buffer.getvalue()


def write(path: Path, text: str) -> str:
    """Write ``text`` to ``path``; returns the path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)
