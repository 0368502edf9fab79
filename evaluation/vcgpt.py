"""The four VideoChatGPT scores (correctness, detail, context, temporal; 0-5), each judged per item.

The judge sees the benchmark question, the reference answer and the predicted caption, and scores one
criterion at a time; the corpus score of a criterion is the mean over the items it could score. Failed
judge calls are counted and listed by id per criterion.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from evaluation.judges.base import VCGPT_CRITERIA, Judge, JudgeError


@dataclass
class VcgptConfig:
    """The question the captions answer; empty means the benchmark question shipped with the prompts."""

    question: str = ""


@dataclass
class VcgptItem:
    """The four scores of one item (``None`` where the judge failed, with the error)."""

    id: str
    scores: dict[str, float | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_question() -> str:
    """The benchmark question the captions answer, from the versioned prompt data."""
    from evaluation.prompts import load_common

    return str(load_common()["fec_question"])


def judge_item(judge: Judge, item_id: str, prediction: str, reference: str, config: VcgptConfig) -> VcgptItem:
    """Score one item on the four criteria."""
    question = config.question or default_question()
    item = VcgptItem(id=item_id)
    inputs = {"question": question, "prediction": prediction, "reference": reference}
    for criterion in VCGPT_CRITERIA:
        try:
            item.scores[criterion] = judge.ask(f"vcgpt_{criterion}", inputs)["score"]
        except JudgeError as exc:
            item.scores[criterion] = None
            item.errors[criterion] = str(exc)
    return item


def aggregate(items: Iterable[VcgptItem]) -> dict[str, Any]:
    """Mean score per criterion, with the number of scored items and the ids of failed ones."""
    items = list(items)
    out: dict[str, Any] = {"n_items": len(items)}
    for criterion in VCGPT_CRITERIA:
        values = [it.scores.get(criterion) for it in items]
        scored = [float(v) for v in values if v is not None]
        out[criterion] = sum(scored) / len(scored) if scored else None
        out[f"n_scored_{criterion}"] = len(scored)
        failed = [it.id for it in items if it.scores.get(criterion) is None]
        out[f"failed_ids_{criterion}"] = failed
    return out
