"""Captions into ordered facial events: sentences, clauses, time markers dropped, appearance left out.

Captions of facial dynamics are written along time ("At the beginning ...", "then ...", "Towards the
end ..."); events are cut at sentence and clause boundaries (whole words only: ", without" is not
", with" + "out") in text order, the time markers are dropped, and only clauses about a facial part or a
facial action are kept (appearance such as hair or age is not an event).
"""

from __future__ import annotations

import re

from evaluation.judges.facial_words import (
    APPEARANCE,
    DIM_OF,
    DIRECTION_ONLY,
    NEGATORS,
    REGION_OF,
    lemma,
    words,
)

# Phrases that only place an event in time; removed from the start of a clause.
_TIME_MARKERS = [
    r"(?:at|in) the (?:very )?(?:beginning|start|outset|opening)(?: of the (?:video|clip))?",
    r"(?:at|in|during|towards?|near|by|around) the (?:very )?(?:middle|end|ending|close|conclusion|"
    r"(?:latter|later|last|final|second|first|early|earlier|middle) (?:part|half|stage|section|portion|"
    r"moments?|frames?|seconds?))(?: part| stage| section| portion)?(?: of the (?:video|clip))?",
    r"as the (?:video|clip|scene) (?:progresses|continues|goes on|proceeds|unfolds|plays|advances)",
    r"as time (?:passes|goes on|progresses)",
    r"(?:throughout|during|over) (?:the (?:entire |whole )?(?:video|clip|process|sequence|time))",
    r"(?:at first|first|initially|then|next|later|afterwards?|after that|after this|subsequently|finally|"
    r"eventually|meanwhile|at the same time|simultaneously|immediately|suddenly|gradually|soon|shortly after|"
    r"after|before|when|until|once|"
    r"in the end|at last|lastly|overall|also|and|but|while|whereas|as|so|still|again|once again)",
]
_TIME_RE = re.compile(r"^(?:(?:" + "|".join(_TIME_MARKERS) + r")\b[\s,]*)+", re.IGNORECASE)

_META_RE = re.compile(
    r"\b(?:video|clip|footage|scene)\b.*\b(?:shows?|showing|depicts?|captures?|presents?|records?|features?|"
    r"focus(?:es)? on)\b|\bin (?:this|the) (?:video|clip)\b",
    re.IGNORECASE,
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+|(?<=[.!?;])(?=[A-Z])")
_CLAUSE_SPLIT = re.compile(
    r",\s*(?:(?:and|then|while|but|as|with)\b)?\s*|\s+(?:and then|then|while|whereas|but)\s+", re.IGNORECASE
)
_AND_SPLIT = re.compile(r"\s+and\s+", re.IGNORECASE)


def is_facial_event(clause: str) -> bool:
    """True when a clause is about a facial action or state (not appearance, setting or a summary)."""
    toks = words(clause)
    if not toks:
        return False
    lemmas = [lemma(t) for t in toks]
    actions = [lem for lem in lemmas if lem in DIM_OF]
    motion = [lem for lem in actions if lem not in DIRECTION_ONLY]
    has_region = any(t in REGION_OF or lem in REGION_OF for t, lem in zip(toks, lemmas))
    if not motion and not (actions and has_region):
        return False
    if set(toks) & APPEARANCE and (not motion or not has_region):
        return False
    if "change" in lemmas or "unchanged" in toks:
        # "no obvious change in the expression": a statement that nothing happens, not an event.
        if "unchanged" in toks or set(toks) & NEGATORS or "same" in toks:
            return False
    return True


def _clean(clause: str) -> str:
    clause = clause.strip(" ,.;:!?\"'()-")
    previous = None
    while previous != clause:
        previous = clause
        clause = _TIME_RE.sub("", clause).strip(" ,.;:!?\"'()-")
    return clause


def _split_and(clause: str) -> list[str]:
    """Split on " and " only where both sides are events ("upper and lower teeth" stays whole)."""
    parts = _AND_SPLIT.split(clause)
    if len(parts) == 1:
        return parts
    out = [parts[0]]
    for part in parts[1:]:
        if is_facial_event(part) and is_facial_event(out[-1]) and _has_verb_like(part):
            out.append(part)
        else:
            out[-1] = f"{out[-1]} and {part}"
    return out


_WEAK_IN_SUMMARY = {"change", "show", "reveal", "remain", "stay", "keep", "hold", "focus", "tension"}


def _motion_lemmas(text: str) -> set[str]:
    return {lemma(t) for t in words(text) if lemma(t) in DIM_OF and lemma(t) not in DIRECTION_ONLY}


def _has_verb_like(text: str) -> bool:
    return any(lemma(t) in DIM_OF and lemma(t) not in DIRECTION_ONLY for t in words(text))


_DESCRIPTIVE_RE = re.compile(
    r"^(?:he|she|they|the person|(?:the|this|a) (?:young |old |middle-aged |elderly )?(?:man|woman|boy|girl|"
    r"person|lady|gentleman|male|female|child))\s+(?:has|have|is|are|appears|looks|seems|wears)\b",
    re.IGNORECASE,
)


def _is_descriptive(sentence: str) -> bool:
    """A sentence about what the person looks like ("He has short hair, thick eyebrows, ...")."""
    return bool(_DESCRIPTIVE_RE.match(sentence.strip())) and bool(set(words(sentence)) & APPEARANCE)


def segments(caption: str) -> list[str]:
    """The caption's sentences (its temporal segments, in order)."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(caption.strip()) if s and s.strip()]


def split_events(caption: str) -> list[str]:
    """The ordered facial events of a caption, as raw clauses (time markers removed)."""
    events: list[str] = []
    for sentence in segments(caption):
        if _is_descriptive(sentence):
            continue
        meta = bool(_META_RE.search(sentence))
        for clause in _CLAUSE_SPLIT.split(sentence):
            for part in _split_and(_clean(clause or "")):
                part = _clean(part)
                if not part or not is_facial_event(part) or _META_RE.search(part):
                    continue
                if meta and not (_motion_lemmas(part) - _WEAK_IN_SUMMARY):
                    continue
                events.append(part)
    return events


def is_dynamic(event: str) -> bool:
    """True for an action or change (AutoDQ's events), false for a facial state ("mouth slightly open").

    Captions describe faces in the present tense, so a motion word counts as a verb when it is an ``-s``
    or ``-ing`` form, or a base form right after its subject (a facial part or a pronoun, "his eyes
    widen"); participles and adjectives ("eyebrows relaxed", "mouth slightly open") are states.
    """
    toks = words(event)
    lemmas = [lemma(t) for t in toks]
    stative = {"is", "are", "was", "were", "remain", "stay", "keep", "hold"}
    if set(toks) & stative or set(lemmas) & stative:
        return False
    subjects = {"he", "she", "they", "it", "person", "man", "woman"}
    for k, (tok, lem) in enumerate(zip(toks, lemmas)):
        if lem not in DIM_OF or lem in DIRECTION_ONLY:
            continue
        if tok.endswith("ing") or (tok != lem and tok.endswith("s") and not tok.endswith("ss")):
            return True
        if tok == lem and (k == 0 or toks[k - 1] in REGION_OF or toks[k - 1] in subjects):
            return True
    return False
