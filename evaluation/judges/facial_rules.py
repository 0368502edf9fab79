"""Rules of the embedded judge: the features of a facial event, and when two events agree or conflict.

Each event is reduced to features: the facial regions it is about and a polarity per action *dimension*
(open/close, raise/lower, left/right, speak/stop speaking, happy/sad, ...), negation flipping it. Two
events about the same region with a dimension of opposite polarity are "opposite". The words come from
the lexicon data files (:mod:`evaluation.judges.lexicon`); synonymous wordings are rewritten to one
before features are taken (:func:`~evaluation.judges.facial_words.canonical`).

This module is the rules' front: it also re-exports the event splitting of
:mod:`evaluation.judges.facial_events` and the word helpers of :mod:`evaluation.judges.facial_words`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from evaluation.judges import lexicon
from evaluation.judges.facial_events import is_dynamic, is_facial_event, segments, split_events
from evaluation.judges.facial_words import (
    DIMENSIONS,
    NEGATORS,
    PLAIN_ACTIONS,
    POLARITY_OF,
    REGION_OF,
    REGIONS,
    canonical,
    lemma,
    normalise,
    words,
)

RULES_VERSION = "2"
DIRECTIONS = lexicon.load().directions
"""Dimensions that are directions: events with directions on different axes are unrelated."""
STRONG = lexicon.load().strong
"""Dimensions whose antonyms are opposite whatever the sentence model says."""

__all__ = [
    "DIMENSIONS",
    "NEGATORS",
    "PLAIN_ACTIONS",
    "REGIONS",
    "RULES_VERSION",
    "EventFeatures",
    "agree",
    "canonical",
    "conflict",
    "digest",
    "directions_differ",
    "features",
    "is_dynamic",
    "is_facial_event",
    "lemma",
    "normalise",
    "regions_compatible",
    "segments",
    "split_events",
    "strong_conflict",
    "words",
]


def digest() -> str:
    """A short hash of the lexicon data the rules use (part of the judge's cache version)."""
    return lexicon.digest()


@dataclass(frozen=True)
class EventFeatures:
    """What the rules know about one event."""

    regions: frozenset[str]
    polarity: dict[str, int] = field(hash=False, compare=False)
    negated: bool = False


@lru_cache(maxsize=65536)
def features(event: str) -> EventFeatures:
    """Regions and per-dimension polarity (negation applied) of one event, in its canonical wording."""
    toks = words(canonical(event))
    regions = set()
    polarity: dict[str, int] = {}
    negated = False
    for tok in toks:
        if tok in NEGATORS:
            negated = True
            continue
        lem = lemma(tok)
        region = REGION_OF.get(tok) or REGION_OF.get(lem)
        if region:
            regions.add(region)
        for dim, sign in POLARITY_OF.get(lem, ()):
            polarity.setdefault(dim, sign)
    if "corners" in toks and "mouth" not in regions:
        regions.add("mouth")
    decrease = lexicon.load().decrease
    if decrease and polarity.get(decrease) == -1:  # "his smile fades": no longer a smile
        polarity = {d: -s if d in STRONG else s for d, s in polarity.items()}
    if negated:
        polarity = {d: -s for d, s in polarity.items()}
    return EventFeatures(regions=frozenset(regions), polarity=polarity, negated=negated)


def conflict(a: EventFeatures, b: EventFeatures) -> bool:
    """Two events about compatible regions with some action dimension of opposite polarity."""
    if a.regions and b.regions and not (a.regions & b.regions):
        return False
    shared = set(a.polarity) & set(b.polarity)
    return any(a.polarity[d] == -b.polarity[d] for d in shared)


def directions_differ(a: EventFeatures, b: EventFeatures) -> bool:
    """Both events give a direction, but along different axes ("tilts right" and "tilts down")."""
    da = {d for d in DIRECTIONS if d in a.polarity}
    db = {d for d in DIRECTIONS if d in b.polarity}
    return bool(da and db and not (da & db))


def strong_conflict(a: EventFeatures, b: EventFeatures) -> bool:
    """A conflict on a dimension the lexicon calls strong (valence, speech): opposite without similarity."""
    if a.regions and b.regions and not (a.regions & b.regions):
        return False
    shared = (set(a.polarity) & set(b.polarity)) & STRONG
    return any(a.polarity[d] == -b.polarity[d] for d in shared)


def agree(a: EventFeatures, b: EventFeatures) -> bool:
    """Two events about compatible regions sharing an action dimension with the same polarity."""
    if a.regions and b.regions and not (a.regions & b.regions):
        return False
    shared = set(a.polarity) & set(b.polarity)
    return any(a.polarity[d] == b.polarity[d] for d in shared)


def regions_compatible(a: EventFeatures, b: EventFeatures) -> bool:
    """False only when both events name facial regions and none of them is shared."""
    return not (a.regions and b.regions) or bool(a.regions & b.regions)
