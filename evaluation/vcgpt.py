"""The four VideoChatGPT scores (correctness, detail, context, temporal; 0-5), each judged per item.

The judge sees the benchmark question, the reference answer and the predicted caption, and scores one
criterion at a time; the corpus score of a criterion is the mean over the items it could score.

Scoring rules that follow Video-ChatGPT's quantitative evaluation scripts:
- the judge's score is an integer: the answer is truncated with ``int()`` (3.9 counts 3), never rounded
  and never kept as a float;
- a failed judge call is asked again (the reference loops until every item is scored); here up to
  ``retries`` more times, after which the item is recorded as failed for that criterion, counted and
  listed by id.
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
    retries: int = 2
    """How many more times a failed judge call is asked before the item is recorded as failed."""

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")


@dataclass
class VcgptItem:
    """The four scores of one item (``None`` where the judge failed, with the error)."""

    id: str
    scores: dict[str, int | None] = field(default_factory=dict)
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
        for _attempt in range(config.retries + 1):
            try:
                item.scores[criterion] = truncate_score(judge.ask(f"vcgpt_{criterion}", inputs)["score"])
                item.errors.pop(criterion, None)
                break
            except JudgeError as exc:
                item.scores[criterion] = None
                item.errors[criterion] = str(exc)
    return item


def truncate_score(value: Any) -> int:
    """The judge's score as Video-ChatGPT counts it: ``int()`` of the answer (truncation, 3.9 -> 3)."""
    try:
        score = int(float(value))
    except (TypeError, ValueError) as exc:
        raise JudgeError(f"score is not a number: {value!r}") from exc
    if not 0 <= score <= 5:
        raise JudgeError(f"score {score} is outside 0-5")
    return score


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
