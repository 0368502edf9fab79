"""CIDEr (pycocoevalcap's CIDEr-D) and ROUGE-L of predictions against single references.

ROUGE-L comes from pycocoevalcap by default (the COCO caption toolkit's ROUGE-L, an F-measure weighted
towards recall with beta 1.2, the same toolkit as CIDEr) or from Google's rouge-score (plain F1,
``implementation="rouge-score"``).

CIDEr's document frequencies come from the references of the whole corpus, so a per-item CIDEr depends on
the set it was computed with; the corpus value is the mean of the per-item values as pycocoevalcap
reports it. Text is lower-cased and stripped of punctuation before scoring: by a small regular-expression
tokenizer by default, or by pycocoevalcap's PTB tokenizer (``tokenizer="ptb"``, which needs Java).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from typing import Literal

Tokenizer = Literal["simple", "ptb"]
RougeImpl = Literal["coco", "rouge-score"]

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
EVAL_INSTALL = "pip install 'facetrack[eval]'"


def tokenize(text: str) -> str:
    """Lower-case words and numbers joined by single spaces; punctuation dropped (``she's`` kept whole)."""
    return " ".join(_WORD.findall(text.lower().replace("’", "'")))


def require_ptb() -> None:
    """Check that the PTB tokenizer can run (pycocoevalcap installed, ``java`` on PATH).

    Raises:
        ImportError: pycocoevalcap is missing.
        ValueError: no ``java`` on PATH (one line, instead of the tokenizer's own traceback).
    """
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the PTB tokenizer needs pycocoevalcap: {EVAL_INSTALL}") from exc
    if shutil.which("java") is None:
        raise ValueError(
            "tokenizer=ptb runs Stanford's PTB tokenizer, which needs Java: no 'java' on PATH "
            "(install a Java runtime, or use tokenizer=simple)"
        )


def _tokenize_all(texts: Mapping[str, str], tokenizer: Tokenizer) -> dict[str, str]:
    if tokenizer == "simple":
        return {k: tokenize(v) for k, v in texts.items()}
    require_ptb()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = PTBTokenizer().tokenize({k: [{"caption": v}] for k, v in texts.items()})
    return {k: v[0] for k, v in out.items()}


def cider(
    predictions: Mapping[str, str], references: Mapping[str, str], tokenizer: Tokenizer = "simple"
) -> tuple[float | None, dict[str, float]]:
    """Corpus and per-item CIDEr-D over the ids present in both mappings.

    Returns:
        ``(corpus score, {id: item score})``; ``(None, {})`` when there is no common id.
    """
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError as exc:
        raise ImportError(f"CIDEr needs pycocoevalcap: {EVAL_INSTALL}") from exc
    ids = sorted(set(predictions) & set(references))
    if not ids:
        return None, {}
    preds = _tokenize_all({i: predictions[i] for i in ids}, tokenizer)
    refs = _tokenize_all({i: references[i] for i in ids}, tokenizer)
    score, per_item = Cider().compute_score({i: [refs[i]] for i in ids}, {i: [preds[i]] for i in ids})
    return float(score), {i: float(s) for i, s in zip(ids, per_item)}


def rouge_l(
    predictions: Mapping[str, str],
    references: Mapping[str, str],
    tokenizer: Tokenizer = "simple",
    implementation: RougeImpl = "coco",
) -> tuple[float | None, dict[str, float]]:
    """Mean and per-item ROUGE-L (longest common subsequence of tokens, no stemming)."""
    ids = sorted(set(predictions) & set(references))
    if not ids:
        return None, {}
    preds = _tokenize_all({i: predictions[i] for i in ids}, tokenizer)
    refs = _tokenize_all({i: references[i] for i in ids}, tokenizer)
    if implementation == "coco":
        try:
            from pycocoevalcap.rouge.rouge import Rouge
        except ImportError as exc:
            raise ImportError(f"ROUGE-L needs pycocoevalcap: {EVAL_INSTALL}") from exc
        scorer = Rouge()
        per_item = {}
        for i in ids:
            # pycocoevalcap's calc_score fails on an empty candidate; an empty caption scores 0.
            per_item[i] = float(scorer.calc_score([preds[i]], [refs[i]])) if preds[i] and refs[i] else 0.0
        return sum(per_item.values()) / len(per_item), per_item
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise ImportError(f"ROUGE-L needs rouge-score: {EVAL_INSTALL}") from exc
    # Text is already tokenized; rouge-score's own tokenizer only splits it again on non-alphanumerics.
    google = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    per_item = {i: float(google.score(refs[i], preds[i])["rougeL"].fmeasure) for i in ids}
    return sum(per_item.values()) / len(per_item), per_item
