"""Benchmark records in and scoring items out: FEC-Bench style ``[{"id", "video", "caption"}]`` files.

References and predictions are read from a local path or ``s3://`` URI as a JSON list or JSON lines
(also the caption job's output rows, where a failed video has ``error`` set and no caption). Pairing them
by id lists what cannot be scored: references without a prediction, predictions that failed, prediction
ids the benchmark does not have, and ids given twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """A benchmark or prediction file cannot be read as records."""


@dataclass(slots=True)
class Item:
    """One benchmark item to score."""

    id: str
    prediction: str
    reference: str
    video: str = ""


@dataclass
class Pairing:
    """Items that can be scored, and everything that cannot, by id."""

    items: list[Item] = field(default_factory=list)
    missing_ids: list[str] = field(default_factory=list)
    """References with no prediction row at all."""
    failed_ids: list[str] = field(default_factory=list)
    """References whose prediction row has an error or no caption text."""
    extra_ids: list[str] = field(default_factory=list)
    """Prediction ids that are not in the references (ignored)."""
    duplicate_ids: list[str] = field(default_factory=list)
    """Ids found more than once in either file (the first row is used)."""
    references: dict[str, str] = field(default_factory=dict)
    """Every reference caption by id (also those that cannot be scored)."""
    n_references: int = 0
    n_predictions: int = 0

    def counts(self) -> dict[str, Any]:
        return {
            "references": self.n_references,
            "predictions": self.n_predictions,
            "paired": len(self.items),
            "missing": len(self.missing_ids),
            "failed": len(self.failed_ids),
            "extra": len(self.extra_ids),
            "duplicates": len(self.duplicate_ids),
            "missing_ids": self.missing_ids,
            "failed_ids": self.failed_ids,
            "extra_ids": self.extra_ids,
            "duplicate_ids": self.duplicate_ids,
        }


def parse_records(text: str, source: str = "<text>") -> list[dict[str, Any]]:
    """Records from a JSON list (or a mapping with a list under ``items``/``data``) or JSON lines."""
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError:  # JSON lines
        from facetrack.manifest import json_lines

        data = []
        for n, value in json_lines(text):
            if isinstance(value, ValueError):
                raise DataError(f"{source}: line {n}: {value}") from None
            data.append(value)
    if isinstance(data, Mapping):
        for key in ("items", "data", "annotations"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            data = [data]
    if not isinstance(data, list):
        raise DataError(f"{source}: expected a JSON list of records")
    for i, row in enumerate(data):
        if not isinstance(row, Mapping):
            raise DataError(f"{source}: record {i} is not a JSON object")
        if "id" not in row:
            raise DataError(f"{source}: record {i} has no 'id'")
    return [dict(row) for row in data]


def load_records(uri: str) -> list[dict[str, Any]]:
    """Records from a local path or ``s3://`` URI (see :func:`parse_records`)."""
    from facetrack import storage

    return parse_records(storage.read_text(uri), source=str(uri))


def _caption(row: Mapping[str, Any]) -> str | None:
    for key in ("caption", "prediction", "pred", "answer"):
        value = row.get(key)
        if isinstance(value, str):
            return value
    return None


def pair(predictions: Iterable[Mapping[str, Any]], references: Iterable[Mapping[str, Any]]) -> Pairing:
    """Match prediction rows to reference rows by id (ids compared as strings).

    Raises:
        DataError: a reference has no caption text.
    """
    out = Pairing()
    refs: dict[str, Mapping[str, Any]] = {}
    duplicates: list[str] = []
    for row in references:
        rid = str(row["id"])
        out.n_references += 1
        if rid in refs:
            duplicates.append(rid)
            continue
        if _caption(row) is None:
            raise DataError(f"reference {rid!r} has no caption")
        refs[rid] = row
        out.references[rid] = str(_caption(row))
    preds: dict[str, Mapping[str, Any]] = {}
    for row in predictions:
        pid = str(row["id"])
        out.n_predictions += 1
        if pid in preds:
            duplicates.append(pid)
            continue
        preds[pid] = row
    for rid, ref in refs.items():
        pred = preds.get(rid)
        if pred is None:
            out.missing_ids.append(rid)
            continue
        text = _caption(pred)
        if pred.get("error") or text is None:
            out.failed_ids.append(rid)
            continue
        video = str(ref.get("video") or "")
        out.items.append(Item(id=rid, prediction=text, reference=str(_caption(ref)), video=video))
    out.extra_ids = [pid for pid in preds if pid not in refs]
    out.duplicate_ids = list(dict.fromkeys(duplicates))
    return out
