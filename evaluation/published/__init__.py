"""Published benchmark results (data files with their source) to compare a run against."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

PUBLISHED_DIR = Path(__file__).resolve().parent
COLUMNS = ("Correctness", "Detail", "Context", "Temporal", "CIDEr", "ROUGE-L", "AutoDQ", "TEM")


@cache
def load_published(name: str = "fec_bench") -> dict[str, Any]:
    """The published rows of ``<name>.json``: ``source``, ``url``, ``note`` and ``rows``.

    A row maps ``model`` and any of :data:`COLUMNS` to a number or a ``[low, high]`` range.
    """
    path = PUBLISHED_DIR / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for row in data["rows"]:
        for key, value in row.items():
            if key != "model" and key not in COLUMNS:
                raise ValueError(f"{path.name}: unknown column {key!r} for {row.get('model')}")
            if isinstance(value, list) and (len(value) != 2 or value[0] > value[1]):
                raise ValueError(f"{path.name}: {row.get('model')} {key}: a range is [low, high]")
    return data


def midpoint(value: float | list[float] | None) -> float | None:
    """A number for plotting: the value itself, or the middle of a ``[low, high]`` range."""
    if isinstance(value, list):
        return (value[0] + value[1]) / 2
    return value
