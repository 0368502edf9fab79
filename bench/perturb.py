"""How the embedded judge scores perturbed captions: TEM and AutoDQ of each kind of perturbation.

    python bench/perturb.py [--data ../shared/data/fec_bench/dev200.json] [--limit 50] [--json perturb.json]

For every reference caption the predictions are:

- ``self``: the caption itself (the ceiling);
- ``paraphrase``: the caption with facial actions reworded by synonyms ("looks forward" -> "gazes ahead");
- ``negated``: one event negated ("he blinks" -> "he does not blink");
- ``moved``: one event of an early sentence moved to the end of the caption;
- ``other_video``: another item's caption (a wrong answer that reads well);
- ``vague_mood``: "The man appears happy and friendly, and his mood is positive throughout."

A useful judge ranks ``self`` and ``paraphrase`` high, ``negated`` and ``moved`` a little lower, and
``other_video`` and ``vague_mood`` far lower. Prints a table and writes the numbers as JSON. The data
file may also come from the FACETRACK_BENCH_REFS environment variable; without it the benchmark is
skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_report  # noqa: E402

REFS_ENV = "FACETRACK_BENCH_REFS"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fec_bench" / "dev200.json"
VAGUE_MOOD = "The man appears happy and friendly, and his mood is positive throughout."

# Rewordings of facial actions, applied in order on whole words (the perturbation's own table, written
# independently of the embedded judge's lexicon so that the benchmark does not test a list against itself).
PARAPHRASES: list[tuple[str, str]] = [
    (r"looks forward", "gazes ahead"),
    (r"looking forward", "gazing ahead"),
    (r"looks straight ahead", "gazes directly forward"),
    (r"looking straight ahead", "gazing directly forward"),
    (r"(his|her) mouth opens slightly", r"\1 lips part a little"),
    (r"opens (his|her) mouth slightly", r"parts \1 lips a little"),
    (r"stops speaking", "falls silent"),
    (r"stops talking", "goes quiet"),
    (r"starts speaking", "begins to talk"),
    (r"closes (his|her) eyes", r"shuts \1 eyes"),
    (r"opens (his|her) eyes", r"lifts \1 eyelids"),
    (r"raises (his|her) eyebrows", r"lifts \1 brows"),
    (r"furrows (his|her) brows", r"knits \1 brows"),
    (r"furrows (his|her) eyebrows", r"draws \1 eyebrows together"),
    (r"the corners of (his|her) mouth turn upwards", r"the corners of \1 mouth curve up"),
    (r"the corners of (his|her) mouth turn downwards", r"the corners of \1 mouth curve down"),
    (r"the corners of (his|her) mouth lift", r"the corners of \1 mouth rise"),
    (r"tilts (his|her) head", r"cocks \1 head"),
    (r"lowers (his|her) head", r"bows \1 head"),
    (r"smiles", "beams"),
    (r"blinks", "blinks briefly"),
    (r"(his|her) eyes widen", r"\1 eyes open wide"),
    (r"narrows (his|her) eyes", r"squints \1 eyes"),
    (r"purses (his|her) lips", r"presses \1 lips together"),
]
_PARAPHRASES = [(re.compile(rf"\b{p}\b", re.IGNORECASE), r) for p, r in PARAPHRASES]

_VERB = re.compile(
    r"\b(?P<subj>he|she|(?:his|her) (?:eyes|eyebrows|brows|mouth|lips|head|smile))\s+"
    r"(?:slightly\s+)?(?P<verb>opens|closes|blinks|raises|lifts|lowers|smiles|frowns|turns|tilts|nods|looks|"
    r"speaks|talks|furrows|narrows|widens|widen|narrow|purses|presses|shakes|glances|rolls|open|close|"
    r"rise|rises|deepens|fades)\b",
    re.IGNORECASE,
)
_SENTENCES = re.compile(r"(?<=[.!?])\s+")
_TIME_START = re.compile(
    r"^(?:at the beginning|in the middle|towards? the end|as the video|at first|then)\b", re.I
)


def paraphrase(caption: str) -> str:
    """The caption with its facial actions reworded by :data:`PARAPHRASES`."""
    for pattern, repl in _PARAPHRASES:
        caption = pattern.sub(repl, caption)
    return caption


def _negate_verb(subj: str, verb: str) -> str:
    if subj.lower() in ("he", "she") or (verb.endswith("s") and not verb.endswith("ss")):
        base = verb[:-2] if re.search(r"(ches|shes|sses|xes)$", verb) else verb[:-1]
        if not verb.endswith("s"):
            base = verb
        return f"{subj} does not {base}"
    return f"{subj} do not {verb}"


def negate_one(caption: str, index: int) -> str:
    """The caption with one event negated: the ``index``-th (modulo the count) subject-verb match."""
    body_start = len(_SENTENCES.split(caption)[0])  # leave the opening summary sentence alone
    matches = [m for m in _VERB.finditer(caption) if m.start() >= body_start]
    if not matches:
        matches = list(_VERB.finditer(caption))
    if not matches:
        return f"{caption} He does not move his face."
    m = matches[index % len(matches)]
    return caption[: m.start()] + _negate_verb(m.group("subj"), m.group("verb")) + caption[m.end() :]


def move_one(caption: str) -> str:
    """The caption with one clause of its first timed sentence moved to the end of the caption."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", caption.strip()) if s.strip()]
    for k, sentence in enumerate(sentences[:-1]):
        if not _TIME_START.match(sentence):
            continue
        parts = [p.strip() for p in sentence.rstrip(".").split(",")]
        if len(parts) < 3:
            continue
        moved = re.sub(r"^(and|then|and then)\s+", "", parts[1])
        rest = [parts[0], *parts[2:]]
        sentences[k] = ", ".join(rest).replace(", and and ", ", and ") + "."
        last = sentences[-1].rstrip(".")
        sentences[-1] = f"{last}, and then {moved}."
        return " ".join(sentences)
    # no clause to move: move the first timed sentence to the end instead
    timed = [k for k, s in enumerate(sentences) if _TIME_START.match(s)]
    if len(timed) >= 2:
        k = timed[0]
        return " ".join([*sentences[:k], *sentences[k + 1 :], sentences[k]])
    return caption


PERTURBATIONS: dict[str, Callable[[int, str, list[dict[str, Any]]], str]] = {
    "self": lambda k, c, refs: c,
    "paraphrase": lambda k, c, refs: paraphrase(c),
    "negated": lambda k, c, refs: negate_one(c, k),
    "moved": lambda k, c, refs: move_one(c),
    "other_video": lambda k, c, refs: refs[(k + len(refs) // 2) % len(refs)]["caption"],
    "vague_mood": lambda k, c, refs: VAGUE_MOOD,
}


def score(refs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """TEM and AutoDQ of every perturbation with the embedded judge (defaults of both metrics)."""
    from evaluation import autodq, tem
    from evaluation.judges.embedded import EmbeddedJudge

    judge = EmbeddedJudge()
    judge.setup()
    out: dict[str, dict[str, Any]] = {}
    for name, make in PERTURBATIONS.items():
        t0 = time.perf_counter()
        tem_items, dq_items = [], []
        for k, ref in enumerate(refs):
            pred, caption, item_id = make(k, ref["caption"], refs), ref["caption"], str(ref["id"])
            tem_items.append(tem.judge_item(judge, item_id, pred, caption, tem.TemConfig()))
            dq_items.append(autodq.judge_item(judge, item_id, pred, caption, autodq.AutoDQConfig()))
        t_agg, d_agg = tem.aggregate(tem_items), autodq.aggregate(dq_items)
        out[name] = {
            "tem": t_agg["tem"],
            "tem_precision": t_agg["precision"],
            "tem_recall": t_agg["recall"],
            "tem_n_scored": t_agg["n_scored"],
            "tem_n_empty_pred": t_agg["n_empty_pred"],
            "autodq": d_agg["autodq"],
            "autodq_precision": d_agg["precision"],
            "autodq_recall": d_agg["recall"],
            "autodq_n_scored": d_agg["n_scored"],
            "seconds": time.perf_counter() - t0,
            "example": make(0, refs[0]["caption"], refs),
        }
    return out


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = os.environ.get(REFS_ENV) or str(DEFAULT_DATA)
    parser.add_argument("--data", default=default, help=f"reference captions (default {default})")
    parser.add_argument("--limit", type=int, default=50, help="use the first N references (default 50)")
    parser.add_argument("--json", default="perturb_bench.json", help="where to write the numbers")
    args = parser.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"skipped: no reference captions at {args.data} (pass --data or set {REFS_ENV})")
        write_report({"skipped": True, "reason": f"no file {args.data}"}, args.json)
        return 0
    refs = json.loads(Path(args.data).read_text())[: args.limit]
    results = score(refs)
    from evaluation.judges.embedded import EmbeddedJudge

    judge_name = EmbeddedJudge().name
    print(f"\nPerturbed captions, embedded judge ({judge_name}), {len(refs)} items")
    head = f"{'prediction':12} {'TEM':>6} {'P':>6} {'R':>6} {'scored':>6} {'AutoDQ':>6} {'P':>6} {'R':>6}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        print(
            f"{name:12} {_fmt(r['tem'])} {_fmt(r['tem_precision'])} {_fmt(r['tem_recall'])} "
            f"{r['tem_n_scored']:6d} {_fmt(r['autodq'])} {_fmt(r['autodq_precision'])} "
            f"{_fmt(r['autodq_recall'])}"
        )
    write_report(
        {
            "n_items": len(refs),
            "judge": judge_name,
            "perturbations": results,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
