"""The embedded judge's lexicon as data: facial regions, actions, word forms and synonymous wordings.

The YAML files next to this module hold the words; :func:`load` reads them once into look-up tables and
:func:`digest` hashes their bytes, so the judge's cache version changes whenever a word list does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

LEXICON_DIR = Path(__file__).resolve().parent
FILES = ("regions.yaml", "actions.yaml", "words.yaml", "synonyms.yaml")


@dataclass(frozen=True)
class Lexicon:
    """The word tables of the embedded judge's rules."""

    regions: dict[str, tuple[str, ...]]
    """Facial region -> the words that name it."""
    dimensions: dict[str, dict[str, int]]
    """Action dimension -> lemma -> polarity (+1 / -1)."""
    plain: tuple[str, ...]
    """Actions without an antonym (each its own dimension)."""
    direction_only: frozenset[str]
    directions: tuple[str, ...]
    """Dimensions that are directions (events with directions on different axes are unrelated)."""
    strong: frozenset[str]
    """Dimensions whose antonyms make two events opposite whatever their similarity."""
    decrease: str
    """The dimension whose -1 turns the strong dimensions of the same event around."""
    also: dict[str, dict[str, int]]
    """Lemma -> further dimensions it sits on, with their polarity."""
    emotions: dict[str, dict[str, int]]
    """Dimension -> word -> polarity, for words that give a polarity but do not make an event."""
    forms: dict[str, str]
    """Word form -> lemma, for forms the stemmer cannot undo (and words it must keep)."""
    negators: frozenset[str]
    appearance: frozenset[str]
    pronouns: dict[str, str]
    degree: dict[str, tuple[str, ...]]
    """Canonical degree word -> its variants (applied before the phrases)."""
    phrases: dict[str, tuple[str, ...]]
    """Canonical wording -> its variants."""


def _read(name: str, folder: Path) -> dict[str, Any]:
    data = yaml.safe_load((folder / name).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"lexicon file {name} must hold a mapping")
    return data


def _polarity_table(table: Any, where: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for key, entries in (table or {}).items():
        if not isinstance(entries, dict) or any(v not in (1, -1) for v in entries.values()):
            raise ValueError(f"lexicon {where}.{key}: a mapping of word -> 1 or -1 is expected")
        out[str(key)] = {str(w): int(v) for w, v in entries.items()}
    return out


def _groups(table: Any, where: str) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for canonical, variants in (table or {}).items():
        if not isinstance(variants, list) or not all(isinstance(v, str) and v.strip() for v in variants):
            raise ValueError(f"lexicon {where}.{canonical}: a list of wordings is expected")
        out[str(canonical)] = tuple(" ".join(v.lower().split()) for v in variants)
    return out


@cache
def load(folder: str | None = None) -> Lexicon:
    """The lexicon in ``folder`` (default: the files shipped with facetrack).

    Raises:
        ValueError: a file does not have the expected shape (the message names the entry).
    """
    path = Path(folder) if folder else LEXICON_DIR
    regions = _read("regions.yaml", path)["regions"]
    actions = _read("actions.yaml", path)
    words = _read("words.yaml", path)
    synonyms = _read("synonyms.yaml", path)
    forms = {str(k): str(k) for k in words.get("keep", [])}
    for lemma, variants in (words.get("forms") or {}).items():
        forms.update({str(v): str(lemma) for v in variants})
    return Lexicon(
        regions={str(r): tuple(str(w) for w in ws) for r, ws in regions.items()},
        dimensions=_polarity_table(actions["dimensions"], "dimensions"),
        plain=tuple(str(a) for a in actions.get("plain", [])),
        direction_only=frozenset(str(w) for w in actions.get("direction_only", [])),
        directions=tuple(str(d) for d in actions.get("directions", [])),
        strong=frozenset(str(d) for d in actions.get("strong", [])),
        decrease=str(actions.get("decrease", "")),
        also=_polarity_table(actions.get("also"), "also"),
        emotions=_polarity_table(actions.get("emotions"), "emotions"),
        forms=forms,
        negators=frozenset(str(w) for w in words.get("negators", [])),
        appearance=frozenset(str(w) for w in words.get("appearance", [])),
        pronouns={str(k): str(v) for k, v in (words.get("pronouns") or {}).items()},
        degree=_groups(synonyms.get("degree"), "degree"),
        phrases=_groups(synonyms.get("phrases"), "phrases"),
    )


@cache
def digest(folder: str | None = None) -> str:
    """A short hash of the lexicon files' bytes."""
    path = Path(folder) if folder else LEXICON_DIR
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode() + b"\0" + (path / name).read_bytes() + b"\0")
    return h.hexdigest()[:10]
