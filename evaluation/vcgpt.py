"""The four VideoChatGPT scores (correctness, detail, context, temporal; 0-5), each judged per item.

The judge sees the benchmark question, the reference answer and the predicted caption, and scores one
criterion at a time; the corpus score of a criterion is the mean over the items it could score.

Scoring rules that follow Video-ChatGPT's quantitative evaluation scripts (mbzuai-oryx/Video-ChatGPT,
``quantitative_evaluation/evaluate_benchmark_{1_correctness,2_detailed_orientation,3_context,
4_temporal}.py``; VideoLLaMA2 copies them in ``videollama2/eval/eval_video_oqa_vcgpt_*.py``):
- the question is the one the model answered (there the benchmark item's ``Q``; here FEC-Bench's
  captioning instruction, from the prompt data);
- the judge's score is an integer: the answer is truncated with ``int()`` (3.9 counts 3), never rounded
  and never kept as a float;
- a failed judge call is asked again (the reference loops until every item is scored); here up to
  ``retries`` more times, after which the item is recorded as failed for that criterion, counted and
  listed by id;
- a criterion's score is the plain mean of the integer scores of its items.
Sampling is the judge's setting: Video-ChatGPT calls gpt-3.5-turbo with the API defaults (no
temperature, no max tokens); VideoLLaMA2's copies send temperature 0.7, top_p 0.95, max_tokens 800.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from evaluation.judges.base import VCGPT_CRITERIA, Judge, JudgeError

if TYPE_CHECKING:
    from evaluation.prompts import PromptSet


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


def default_question(prompts: PromptSet | str | None = None) -> str:
    """The benchmark question the captions answer, from the prompt set in use.

    Video-ChatGPT puts the question the model was asked in front of the judge; for FEC-Bench that is the
    benchmark's captioning instruction, the set's ``common.fec_question``.

    Args:
        prompts: the set (or where it is: a file or folder, as ``--prompts``); ``None`` is the shipped set.

    Raises:
        ValueError: the set has no ``fec_question``.
    """
    from evaluation.prompts import PromptSet, load_prompt_set

    chosen = prompts if isinstance(prompts, PromptSet) else load_prompt_set(prompts or None)
    if not chosen.fec_question:
        raise ValueError(
            f"prompt set {chosen.name} ({chosen.source}): common.fec_question is needed by vcgpt"
        )
    return chosen.fec_question


def judge_item(judge: Judge, item_id: str, prediction: str, reference: str, config: VcgptConfig) -> VcgptItem:
    """Score one item on the four criteria."""
    # The question of the run's prompt set: the pipeline puts it in ``config.question``; otherwise the set
    # of an LLM judge, else the shipped one.
    question = config.question or default_question(getattr(judge, "prompts", None))
    item = VcgptItem(id=item_id)
    inputs = {"question": question, "prediction": prediction, "reference": reference}
    for criterion in VCGPT_CRITERIA:
        for _attempt in range(config.retries + 1):  # Video-ChatGPT: `while True` until all are scored
            try:
                item.scores[criterion] = truncate_score(judge.ask(f"vcgpt_{criterion}", inputs)["score"])
                item.errors.pop(criterion, None)
                break
            except JudgeError as exc:
                item.scores[criterion] = None
                item.errors[criterion] = str(exc)
    return item


def truncate_score(value: Any) -> int:
    """The judge's score as Video-ChatGPT counts it: ``int()`` of the answer (truncation, 3.9 -> 3).

    The reference applies ``int()`` to what the judge wrote; a numeric string such as ``"4.5"`` is read
    as a number first (the reference would fail on it and ask again). Scores outside 0-5 are failures
    here (the reference keeps them).
    """
    try:
        score = int(float(value))
    except (TypeError, ValueError) as exc:
        raise JudgeError(f"score is not a number: {value!r}") from exc
    if not 0 <= score <= 5:
        raise JudgeError(f"score {score} is outside 0-5")
    return score


def aggregate(items: Iterable[VcgptItem]) -> dict[str, Any]:
    """Mean score per criterion, with the number of scored and failed items and the ids of failed ones.

    As Video-ChatGPT's ``score_sum / count`` over the integer scores; failed items (none in the
    reference, which asks until every item is scored) are left out of the mean and counted.
    """
    items = list(items)
    out: dict[str, Any] = {"n_items": len(items)}
    for criterion in VCGPT_CRITERIA:
        values = [it.scores.get(criterion) for it in items]
        scored = [float(v) for v in values if v is not None]
        out[criterion] = sum(scored) / len(scored) if scored else None
        out[f"n_scored_{criterion}"] = len(scored)
        failed = [it.id for it in items if it.scores.get(criterion) is None]
        out[f"failed_ids_{criterion}"] = failed
        out[f"n_failed_{criterion}"] = len(failed)
    return out
