"""Rules of the embedded judge: split captions into ordered facial events, and tell contrary events apart.

Captions of facial dynamics are written along time ("At the beginning ...", "then ...", "Towards the
end ..."); events are cut at sentence and clause boundaries in text order, the time markers are dropped,
and only clauses about a facial part or a facial action are kept (appearance such as hair or age is not
an event). Each event is reduced to features: the facial regions it is about and a polarity per action
*dimension* (open/close, raise/lower, left/right, speak/stop speaking, ...), negation flipping it. Two
events about the same region with a dimension of opposite polarity are "opposite".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

RULES_VERSION = "1"

# Facial regions and the words that name them.
REGIONS: dict[str, tuple[str, ...]] = {
    "mouth": ("mouth", "lip", "lips", "teeth", "tooth", "jaw", "tongue", "smile", "grin", "corners"),
    "eyes": ("eye", "eyes", "eyelid", "eyelids", "gaze", "eyeball", "eyeballs", "pupil", "pupils", "lids"),
    "brows": ("eyebrow", "eyebrows", "brow", "brows", "forehead"),
    "head": ("head", "chin", "neck", "face"),
    "nose": ("nose", "nostril", "nostrils"),
    "cheeks": ("cheek", "cheeks"),
}
_REGION_OF = {w: r for r, words in REGIONS.items() for w in words}

# Action lemmas grouped into dimensions with a polarity (+1 / -1). A lemma without an antonym is a
# dimension of its own with polarity +1, so that negation ("does not blink") still flips it.
DIMENSIONS: dict[str, dict[str, int]] = {
    "open": {
        "open": 1,
        "part": 1,
        "gape": 1,
        "agape": 1,
        "ajar": 1,
        "close": -1,
        "shut": -1,
        "clench": -1,
        "seal": -1,
    },
    "vertical": {
        "raise": 1,
        "lift": 1,
        "rise": 1,
        "up": 1,
        "upward": 1,
        "upwards": 1,
        "upturn": 1,
        "arch": 1,
        "elevate": 1,
        "lower": -1,
        "drop": -1,
        "droop": -1,
        "down": -1,
        "downward": -1,
        "downwards": -1,
        "sag": -1,
        "fall": -1,
        "downturn": -1,
    },
    "size": {"widen": 1, "wide": 1, "enlarge": 1, "narrow": -1, "squint": -1},
    "tension": {
        "furrow": 1,
        "knit": 1,
        "tense": 1,
        "tighten": 1,
        "wrinkle": 1,
        "frown": 1,
        "scrunch": 1,
        "relax": -1,
        "loosen": -1,
        "smooth": -1,
        "soften": -1,
        "ease": -1,
    },
    "valence": {
        "smile": 1,
        "grin": 1,
        "laugh": 1,
        "beam": 1,
        "pout": -1,
        "scowl": -1,
        "grimace": -1,
        "cry": -1,
        "sob": -1,
    },
    "side": {"left": 1, "right": -1},
    "speech": {"speak": 1, "talk": 1, "say": 1, "sing": 1, "chat": 1, "converse": 1, "silent": -1},
    "intensity": {
        "deepen": 1,
        "increase": 1,
        "intensify": 1,
        "broaden": 1,
        "grow": 1,
        "strengthen": 1,
        "fade": -1,
        "disappear": -1,
        "vanish": -1,
        "diminish": -1,
        "weaken": -1,
        "subside": -1,
    },
    "visibility": {"reveal": 1, "show": 1, "expose": 1, "hide": -1, "cover": -1, "conceal": -1},
}
# Actions without an antonym: kept as events, one dimension each.
PLAIN_ACTIONS = (
    "blink",
    "nod",
    "shake",
    "tilt",
    "turn",
    "look",
    "stare",
    "glance",
    "gaze",
    "move",
    "roll",
    "shift",
    "purse",
    "press",
    "bite",
    "lick",
    "swallow",
    "sigh",
    "yawn",
    "breathe",
    "curl",
    "twitch",
    "sneer",
    "flare",
    "puff",
    "wink",
    "shrug",
    "lean",
    "bow",
    "focus",
    "glare",
    "peer",
    "pucker",
    "stretch",
    "pull",
    "remain",
    "stay",
    "keep",
    "hold",
    "return",
    "change",
    "react",
    "cough",
    "exhale",
    "inhale",
    "grit",
    "clamp",
    "quiver",
    "tremble",
    "flutter",
    "blush",
    "wipe",
    "touch",
    "scratch",
    "rub",
)
_DIM_OF: dict[str, tuple[str, int]] = {}
for _dim, _lemmas in DIMENSIONS.items():
    for _lemma, _sign in _lemmas.items():
        _DIM_OF.setdefault(_lemma, (_dim, _sign))
for _lemma in PLAIN_ACTIONS:
    _DIM_OF.setdefault(_lemma, (_lemma, 1))
# Pure direction words only make an event when a motion verb or a facial part goes with them.
_DIRECTION_ONLY = {"up", "upward", "upwards", "down", "downward", "downwards", "left", "right", "wide"}

_IRREGULAR = {
    "shut": "shut",
    "rose": "rise",
    "risen": "rise",
    "fell": "fall",
    "fallen": "fall",
    "shook": "shake",
    "shaken": "shake",
    "said": "say",
    "says": "say",
    "sang": "sing",
    "sung": "sing",
    "bit": "bite",
    "bitten": "bite",
    "held": "hold",
    "kept": "keep",
    "grew": "grow",
    "grown": "grow",
    "lay": "lie",
    "hid": "hide",
    "hidden": "hide",
    "teeth": "teeth",
    "raised": "raise",
    "closed": "close",
    "closes": "close",
    "closing": "close",
    "eyes": "eyes",
    "lips": "lips",
    "brows": "brows",
    "upturned": "upturn",
    "downturned": "downturn",
    "wider": "wide",
    "widely": "wide",
    "slightly": "slightly",
    "smiling": "smile",
    "frowning": "frown",
    "speaking": "speak",
    "talking": "talk",
    "singing": "sing",
    "opening": "open",
    "parted": "part",
    "lowered": "lower",
    "narrowed": "narrow",
    "squinting": "squint",
    "leaning": "lean",
    "tilted": "tilt",
    "furrowed": "furrow",
    "wrinkled": "wrinkle",
    "knitted": "knit",
    "relaxed": "relax",
    "tensed": "tense",
    "pursed": "purse",
    "pressed": "press",
    "curled": "curl",
    "lifted": "lift",
    "dropped": "drop",
    "drooped": "droop",
    "nodded": "nod",
    "nodding": "nod",
    "blinking": "blink",
    "blinked": "blink",
    "staring": "stare",
    "stared": "stare",
    "gazing": "gaze",
    "looking": "look",
    "looked": "look",
    "moving": "move",
    "moved": "move",
    "turning": "turn",
    "showing": "show",
    "shown": "show",
    "revealing": "reveal",
    "revealed": "reveal",
    "exposing": "expose",
    "exposed": "expose",
    "laughing": "laugh",
    "crying": "cry",
    "cried": "cry",
    "fading": "fade",
    "faded": "fade",
    "deepening": "deepen",
    "deepened": "deepen",
    "glancing": "glance",
    "rolled": "roll",
    "rolling": "roll",
    "biting": "bite",
    "licking": "lick",
    "licked": "lick",
    "sighing": "sigh",
    "yawning": "yawn",
    "breathing": "breathe",
    "twitching": "twitch",
    "widening": "widen",
    "widened": "widen",
    "raising": "raise",
    "lowering": "lower",
    "lifting": "lift",
    "dropping": "drop",
    "relaxing": "relax",
    "tightening": "tighten",
    "tightened": "tighten",
    "pouting": "pout",
    "grinning": "grin",
    "remaining": "remain",
    "remained": "remain",
    "staying": "stay",
    "stayed": "stay",
    "keeping": "keep",
    "holding": "hold",
    "returned": "return",
    "returning": "return",
    "disappeared": "disappear",
    "disappearing": "disappear",
    "appeared": "appear",
    "appearing": "appear",
    "increased": "increase",
    "increasing": "increase",
    "chatting": "chat",
    "chatted": "chat",
    "saying": "say",
    "shaking": "shake",
    "tilting": "tilt",
    "pulled": "pull",
    "pulling": "pull",
    "stretched": "stretch",
    "stretching": "stretch",
    "clenched": "clench",
    "clenching": "clench",
    "puckered": "pucker",
    "quivering": "quiver",
    "trembling": "tremble",
    "gaping": "gape",
    "shutting": "shut",
    "softened": "soften",
    "softening": "soften",
    "eased": "ease",
    "scowling": "scowl",
    "grimacing": "grimace",
    "sobbing": "sob",
    "squinted": "squint",
    "furrowing": "furrow",
    "frowned": "frown",
    "smiled": "smile",
    "spoke": "speak",
    "spoken": "speak",
    "talked": "talk",
    "opened": "open",
    "parting": "part",
    "turned": "turn",
    "arched": "arch",
    "arching": "arch",
    "sagging": "sag",
    "falling": "fall",
    "narrowing": "narrow",
    "focused": "focus",
    "focusing": "focus",
    "changing": "change",
    "changed": "change",
    "upward": "upward",
    "downward": "downward",
}

NEGATORS = {
    "not",
    "no",
    "never",
    "without",
    "n't",
    "nor",
    "neither",
    "cannot",
    "stop",
    "stops",
    "stopped",
    "stopping",
    "cease",
    "ceases",
    "ceased",
    "ends",
    "quit",
    "quits",
    "finishes",
    "finished",
}

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
_APPEARANCE = {
    "hair",
    "beard",
    "mustache",
    "moustache",
    "skin",
    "wearing",
    "wears",
    "dressed",
    "glasses",
    "headscarf",
    "bangs",
    "complexion",
    "shirt",
    "hat",
    "old",
    "aged",
    "age",
    "tall",
    "short-haired",
    "makeup",
    "earrings",
    "jacket",
    "suit",
    "collar",
    "background",
    "lighting",
    "camera",
}
_PRONOUNS = {
    "his": "the",
    "her": "the",
    "their": "the",
    "its": "the",
    "he": "the person",
    "she": "the person",
    "they": "the person",
    "him": "the person",
    "them": "the person",
    "himself": "the person",
    "herself": "the person",
}
_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?|n't")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+|(?<=[.!?;])(?=[A-Z])")
_CLAUSE_SPLIT = re.compile(
    r",\s*(?:(?:and|then|while|but|as|with)\b)?\s*|\s+(?:and then|then|while|whereas|but)\s+", re.IGNORECASE
)
_AND_SPLIT = re.compile(r"\s+and\s+", re.IGNORECASE)


def lemma(word: str) -> str:
    """A crude lemma of an English word, enough to look it up in the rules' vocabulary."""
    w = word.lower()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if w in _DIM_OF or w in _REGION_OF:
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
        if c in _DIM_OF or c in _REGION_OF:
            return c
    return w


_ADJECTIVE_USES = [
    # "lower lip" is a part, not the verb "lower"; "part of" is not the verb "part".
    (re.compile(r"\blower (?=lips?\b|teeth\b|eyelids?\b|lids?\b|jaw\b|face\b|half\b|part\b)"), "bottom "),
    (re.compile(r"\bparts? of\b"), "portion of"),
]


def words(text: str) -> list[str]:
    """Lower-case word tokens (``n't`` split off; adjective uses of action words rewritten)."""
    text = text.lower().replace("’", "'").replace("n't", " n't")
    for pattern, repl in _ADJECTIVE_USES:
        text = pattern.sub(repl, text)
    return _WORD_RE.findall(text)


@dataclass(frozen=True)
class EventFeatures:
    """What the rules know about one event."""

    regions: frozenset[str]
    polarity: dict[str, int] = field(hash=False, compare=False)
    negated: bool = False


@lru_cache(maxsize=65536)
def features(event: str) -> EventFeatures:
    """Regions, per-dimension polarity (negation applied) of one event text."""
    toks = words(event)
    regions = set()
    polarity: dict[str, int] = {}
    negated = False
    for tok in toks:
        if tok in NEGATORS:
            negated = True
            continue
        lem = lemma(tok)
        region = _REGION_OF.get(tok) or _REGION_OF.get(lem)
        if region:
            regions.add(region)
        dim = _DIM_OF.get(lem)
        if dim:
            polarity.setdefault(dim[0], dim[1])
    if "corners" in toks and "mouth" not in regions:
        regions.add("mouth")
    if negated:
        polarity = {d: -s for d, s in polarity.items()}
    return EventFeatures(regions=frozenset(regions), polarity=polarity, negated=negated)


def is_facial_event(clause: str) -> bool:
    """True when a clause is about a facial action or state (not appearance, setting or a summary)."""
    toks = words(clause)
    if not toks:
        return False
    lemmas = [lemma(t) for t in toks]
    actions = [lem for lem in lemmas if lem in _DIM_OF]
    motion = [lem for lem in actions if lem not in _DIRECTION_ONLY]
    has_region = any(t in _REGION_OF or lem in _REGION_OF for t, lem in zip(toks, lemmas))
    if not motion and not (actions and has_region):
        return False
    if set(toks) & _APPEARANCE and (not motion or not has_region):
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
    return {lemma(t) for t in words(text) if lemma(t) in _DIM_OF and lemma(t) not in _DIRECTION_ONLY}


def _has_verb_like(text: str) -> bool:
    return any(lemma(t) in _DIM_OF and lemma(t) not in _DIRECTION_ONLY for t in words(text))


_DESCRIPTIVE_RE = re.compile(
    r"^(?:he|she|they|the person|(?:the|this|a) (?:young |old |middle-aged |elderly )?(?:man|woman|boy|girl|"
    r"person|lady|gentleman|male|female|child))\s+(?:has|have|is|are|appears|looks|seems|wears)\b",
    re.IGNORECASE,
)


def _is_descriptive(sentence: str) -> bool:
    """A sentence about what the person looks like ("He has short hair, thick eyebrows, ...")."""
    return bool(_DESCRIPTIVE_RE.match(sentence.strip())) and bool(set(words(sentence)) & _APPEARANCE)


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


def normalise(event: str) -> str:
    """The event as the sentence model sees it: lower case, pronouns replaced by neutral words."""
    toks = event.lower().replace("’", "'").split()
    return " ".join(_PRONOUNS.get(t.strip(",.;:"), t) for t in toks)


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
        if lem not in _DIM_OF or lem in _DIRECTION_ONLY:
            continue
        if tok.endswith("ing") or (tok != lem and tok.endswith("s") and not tok.endswith("ss")):
            return True
        if tok == lem and (k == 0 or toks[k - 1] in _REGION_OF or toks[k - 1] in subjects):
            return True
    return False


def conflict(a: EventFeatures, b: EventFeatures) -> bool:
    """Two events about compatible regions with some action dimension of opposite polarity."""
    if a.regions and b.regions and not (a.regions & b.regions):
        return False
    shared = set(a.polarity) & set(b.polarity)
    return any(a.polarity[d] == -b.polarity[d] for d in shared)


DIRECTIONS = ("side", "vertical")


def directions_differ(a: EventFeatures, b: EventFeatures) -> bool:
    """Both events give a direction, but along different axes ("tilts right" and "tilts down")."""
    da = {d for d in DIRECTIONS if d in a.polarity}
    db = {d for d in DIRECTIONS if d in b.polarity}
    return bool(da and db and not (da & db))


def agree(a: EventFeatures, b: EventFeatures) -> bool:
    """Two events about compatible regions sharing an action dimension with the same polarity."""
    if a.regions and b.regions and not (a.regions & b.regions):
        return False
    shared = set(a.polarity) & set(b.polarity)
    return any(a.polarity[d] == b.polarity[d] for d in shared)


def regions_compatible(a: EventFeatures, b: EventFeatures) -> bool:
    """False only when both events name facial regions and none of them is shared."""
    return not (a.regions and b.regions) or bool(a.regions & b.regions)
