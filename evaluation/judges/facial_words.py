"""Words of the embedded judge: tokens, crude lemmas, and the canonical wording of synonymous phrases.

The tables come from the lexicon data files (:mod:`evaluation.judges.lexicon`). :func:`canonical`
rewrites the synonymous wordings the lexicon lists ("gazes ahead", "looks straight forward" -> "look
forward"; "his lips part a little" -> "his mouth open slightly") so that the rules and the sentence model
compare paraphrases as one wording.
"""

from __future__ import annotations

import re
from functools import lru_cache

from evaluation.judges import lexicon

LEXICON = lexicon.load()
REGIONS = LEXICON.regions
DIMENSIONS = LEXICON.dimensions
PLAIN_ACTIONS = LEXICON.plain
NEGATORS = LEXICON.negators
DIRECTION_ONLY = LEXICON.direction_only
APPEARANCE = LEXICON.appearance

REGION_OF = {w: r for r, ws in REGIONS.items() for w in ws}
DIM_OF: dict[str, tuple[str, int]] = {}
"""Action lemma -> its first (dimension, polarity): the words that make a clause an event."""
for _dim, _lemmas in DIMENSIONS.items():
    for _lemma, _sign in _lemmas.items():
        DIM_OF.setdefault(_lemma, (_dim, _sign))
for _lemma in PLAIN_ACTIONS:
    DIM_OF.setdefault(_lemma, (_lemma, 1))
POLARITY_OF: dict[str, list[tuple[str, int]]] = {lem: [dim] for lem, dim in DIM_OF.items()}
"""Lemma -> every (dimension, polarity) it gives an event: actions, their further dimensions, emotions."""
for _lemma, _dims in LEXICON.also.items():
    POLARITY_OF.setdefault(_lemma, []).extend(_dims.items())
for _dim, _words in LEXICON.emotions.items():
    for _word, _sign in _words.items():
        POLARITY_OF.setdefault(_word, []).append((_dim, _sign))

_PHRASE_WORDS = {
    w for table in (LEXICON.degree, LEXICON.phrases) for vs in table.values() for v in vs for w in v.split()
}
_VOCABULARY = set(DIM_OF) | set(REGION_OF) | set(POLARITY_OF) | _PHRASE_WORDS

_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?|n't")
_ADJECTIVE_USES = [
    # "lower lip" is a part, not the verb "lower"; "part of" is not the verb "part".
    (re.compile(r"\blower (?=lips?\b|teeth\b|eyelids?\b|lids?\b|jaw\b|face\b|half\b|part\b)"), "bottom "),
    (re.compile(r"\bparts? of\b"), "portion of"),
]


def lemma(word: str) -> str:
    """A crude lemma of an English word, enough to look it up in the lexicon."""
    w = word.lower()
    if w in LEXICON.forms:
        return LEXICON.forms[w]
    if w in _VOCABULARY:
        return w
    candidates = []
    if w.endswith("ies"):
        candidates.append(w[:-3] + "y")
    if w.endswith("ing"):
        stem = w[:-3]
        candidates += [stem, stem + "e", stem[:-1] if len(stem) > 2 and stem[-1] == stem[-2] else stem]
    if w.endswith("ed"):
        stem = w[:-2]
        candidates += [stem, w[:-1], stem[:-1] if len(stem) > 2 and stem[-1] == stem[-2] else stem]
    if w.endswith("es"):
        candidates.append(w[:-2])
    if w.endswith("s") and not w.endswith("ss"):
        candidates.append(w[:-1])
    for c in candidates:
        if c in _VOCABULARY:
            return c
    return w


def words(text: str) -> list[str]:
    """Lower-case word tokens (``n't`` split off; adjective uses of action words rewritten)."""
    text = text.lower().replace("’", "'").replace("n't", " n't")
    for pattern, repl in _ADJECTIVE_USES:
        text = pattern.sub(repl, text)
    return _WORD_RE.findall(text)


def _keys(token: str) -> set[str]:
    keys = {token, lemma(token)}
    if token.endswith("s") and not token.endswith("ss"):
        keys.add(token[:-1])
    return keys


def _table(groups: dict[str, tuple[str, ...]]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(variant words, canonical words), longest variant first (ties in file order)."""
    rows = [(tuple(v.split()), tuple(c.split())) for c, vs in groups.items() for v in vs]
    return sorted(rows, key=lambda row: -len(row[0]))


_PASSES = (_table(LEXICON.degree), _table(LEXICON.phrases))


_FILLERS = frozenset({"his", "her", "their", "its", "the", "a", "an", "both"})
"""Words a variant may skip between two of its words ("raises his eyebrows" is "raise eyebrow")."""


def _match(variant: tuple[str, ...], keys: list[set[str]], tokens: list[str], i: int) -> int:
    """The number of tokens from ``i`` that ``variant`` covers, or 0 when it does not match there."""
    j = i
    for k, word in enumerate(variant):
        while k > 0 and j < len(tokens) and word not in keys[j] and tokens[j] in _FILLERS:
            j += 1
        if j >= len(tokens) or word not in keys[j]:
            return 0
        j += 1
    return j - i


def _rewrite(tokens: list[str], table: list[tuple[tuple[str, ...], tuple[str, ...]]]) -> list[str]:
    keys = [_keys(t) for t in tokens]
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for variant, canonical_words in table:
            n = _match(variant, keys, tokens, i)
            if n:
                out.extend(canonical_words)
                i += n
                break
        else:
            out.append(tokens[i])
            i += 1
    return out


@lru_cache(maxsize=65536)
def canonical(event: str) -> str:
    """The event with the lexicon's synonymous wordings rewritten to their canonical one.

    An event without any listed wording comes back unchanged; otherwise as its lower-case words.
    """
    tokens = words(event)
    rewritten = tokens
    for table in _PASSES:
        rewritten = _rewrite(rewritten, table)
    return event if rewritten == tokens else " ".join(rewritten)


def normalise(event: str) -> str:
    """The event as the sentence model sees it: canonical wording, lower case, neutral for pronouns."""
    toks = canonical(event).lower().replace("’", "'").split()
    return " ".join(LEXICON.pronouns.get(t.strip(",.;:"), t) for t in toks)
