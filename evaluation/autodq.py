"""AutoDQ (the event metric of Tarsier / DREAM-1K): events of each side checked against the other caption.

A judge extracts the key events of the reference and of the prediction; each reference event is checked
for entailment by the prediction (recall) and each predicted event for entailment by the reference
(precision). Only ``entailment`` counts as a hit; ``contradiction`` is counted and reported. Over a
corpus, AutoDQ is the F1 of the mean precision and the mean recall.

The scoring rules follow Tarsier's AutoDQ script (bytedance/tarsier,
``evaluation/metrics/evaluate_dream_gpt.py``); each is marked where it is applied:

- both captions are lower-cased before any judge sees them, and double quotes become single quotes for
  event extraction;
- at most 10 events per caption (the reference asks the judge for "at most 10"; here the list is also
  cut to its first ``max_events`` so that a judge that lists more is held to it);
- the judge labels each event ``entailment``, ``neutral`` or ``contradiction`` and gives a reason for
  each (asked for in the prompt, before the labels);
- only ``entailment`` is a hit, in both directions (neutral is not a hit for precision either);
- a side with no events scores 1.0 in its own direction and the other direction still counts;
- an unusable answer is asked again (the reference tries each stage up to 10 times); an item whose calls
  still fail is counted and listed. The reference then leaves it out of the means (``empty="exclude"``
  reproduces that); by default here it scores 0 (``empty="zero"``), so failures never raise the score.
- corpus precision and recall are the means over items, AutoDQ their F1 (the reference averages per
  sub-dataset, then over sub-datasets; FEC-Bench has one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from evaluation.judges.base import Judge, JudgeError
from evaluation.tem import EmptyPolicy, Status, ask_with_retries, f1, item_means, unscored_report


@dataclass
class AutoDQConfig:
    """How many events the judge extracts per caption, how captions are prepared, how failures count."""

    max_events: int = 10
    """Events per caption, at most (Tarsier: "extract at most 10 key events")."""
    lowercase: bool = True
    """Lower-case both captions first (Tarsier lower-cases prediction and reference)."""
    retries: int = 2
    """How many more times a failed judge call is asked before the item is recorded as failed."""
    empty: EmptyPolicy = "zero"
    """How items whose judge calls failed count: 0 (default) or left out of the means (Tarsier)."""

    def __post_init__(self) -> None:
        if self.max_events < 1:
            raise ValueError("max_events must be >= 1")
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")


@dataclass
class AutoDQItem:
    """AutoDQ of one item: events of each side and the entailment label of each."""

    id: str
    status: Status = "ok"
    pred_events: list[str] = field(default_factory=list)
    ref_events: list[str] = field(default_factory=list)
    pred_labels: list[str] = field(default_factory=list)
    """Label of each predicted event against the reference (precision side)."""
    ref_labels: list[str] = field(default_factory=list)
    """Label of each reference event against the prediction (recall side)."""
    precision: float | None = None
    recall: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_item(
    item_id: str,
    pred_events: Sequence[str],
    ref_events: Sequence[str],
    pred_labels: Sequence[str],
    ref_labels: Sequence[str],
) -> AutoDQItem:
    """AutoDQ of one item from the events and their entailment labels."""
    item = AutoDQItem(id=item_id, pred_events=list(pred_events), ref_events=list(ref_events))
    if len(pred_labels) != len(pred_events) or len(ref_labels) != len(ref_events):
        raise ValueError(f"{item_id}: one label per event is needed")
    item.pred_labels, item.ref_labels = list(pred_labels), list(ref_labels)
    # Tarsier (evaluate_dream_gpt.py, evaluate_one_sample): hits are "entailment" only, in both directions;
    # a side with no events scores 1.0 in its own direction and the other direction still counts, so
    # saying nothing is paid for in recall (and vice versa).
    item.precision = (
        sum(lab == "entailment" for lab in pred_labels) / len(pred_labels) if pred_labels else 1.0
    )
    item.recall = sum(lab == "entailment" for lab in ref_labels) / len(ref_labels) if ref_labels else 1.0
    return item


def _events(judge: Judge, caption: str, config: AutoDQConfig) -> list[str]:
    # Tarsier's extract_events: double quotes become single quotes in the caption the judge reads.
    inputs = {"caption": caption.replace('"', "'"), "max_events": config.max_events}
    events = ask_with_retries(judge, "dq_events", inputs, config.retries)["events"]
    # Tarsier asks for at most 10 events; the list is also cut, so a judge that lists more is held to it.
    return list(events)[: config.max_events]


def _labels(judge: Judge, caption: str, events: list[str], config: AutoDQConfig) -> list[str]:
    if not events:
        return []  # Tarsier still calls the judge here, but scores the side 1.0 whatever it answers
    error = ""
    for _attempt in range(config.retries + 1):
        try:
            labels = list(judge.ask("dq_entailment", {"caption": caption, "events": events})["labels"])
        except JudgeError as exc:
            error = str(exc)
            continue
        # Tarsier re-asks when the answer does not hold one label per event.
        if len(labels) == len(events):
            return labels
        error = f"dq_entailment: {len(labels)} labels for {len(events)} events"
    raise JudgeError(error)


def judge_item(
    judge: Judge, item_id: str, prediction: str, reference: str, config: AutoDQConfig
) -> AutoDQItem:
    """Run the AutoDQ stages for one item; a call that still fails after retries makes an ``error`` item."""
    if config.lowercase:  # Tarsier: response.lower(), prediction.lower() before every stage
        prediction, reference = prediction.lower(), reference.lower()
    try:
        pred_events = _events(judge, prediction, config)
        ref_events = _events(judge, reference, config)
        # Precision: predicted events against the reference; recall: reference events against the
        # prediction (Tarsier's evaluate_one_sample, called both ways).
        pred_labels = _labels(judge, reference, pred_events, config)
        ref_labels = _labels(judge, prediction, ref_events, config)
        return score_item(item_id, pred_events, ref_events, pred_labels, ref_labels)
    except JudgeError as exc:
        return AutoDQItem(id=item_id, status="error", error=str(exc))


def aggregate(items: Iterable[AutoDQItem], config: AutoDQConfig | None = None) -> dict[str, Any]:
    """Corpus AutoDQ: ``autodq`` (F1 of mean precision and mean recall), the means, counts and ids.

    As Tarsier's summary: the means over items, then their F1 (0 where both means are 0; the reference
    divides by zero there).
    """
    config = config or AutoDQConfig()
    items = list(items)
    means = item_means(items, config.empty, ("precision", "recall"))
    mean_p, mean_r = means["precision"], means["recall"]
    ok = [it for it in items if it.status == "ok"]
    return {
        "autodq": f1(mean_p, mean_r) if mean_p is not None and mean_r is not None else None,
        "precision": mean_p,
        "recall": mean_r,
        "n_items": len(items),
        "n_scored": means["n_scored"],
        **unscored_report(items),
        "empty_policy": config.empty,
        "n_contradictions": sum((it.pred_labels + it.ref_labels).count("contradiction") for it in ok),
    }
