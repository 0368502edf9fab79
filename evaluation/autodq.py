"""AutoDQ (the event metric of Tarsier / DREAM-1K): events of each side checked against the other caption.

A judge extracts the key events of the reference and of the prediction; each reference event is checked
for entailment by the prediction (recall) and each predicted event for entailment by the reference
(precision). Only ``entailment`` counts as a hit; ``contradiction`` is counted and reported. Over a
corpus, AutoDQ is the F1 of the mean precision and the mean recall.

An empty event list follows Tarsier's AutoDQ scripts: that side scores 1.0 in its own direction and the
other direction still counts. A failed judge call is counted and listed, and scored 0 (``empty="zero"``,
the default) or, only when asked, left out of the means (``empty="exclude"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from evaluation.judges.base import Judge, JudgeError
from evaluation.tem import EmptyPolicy, Status, f1, item_means, unscored_report


@dataclass
class AutoDQConfig:
    """How many events the judge extracts per caption, and how empty lists count."""

    max_events: int = 10
    empty: EmptyPolicy = "zero"

    def __post_init__(self) -> None:
        if self.max_events < 1:
            raise ValueError("max_events must be >= 1")


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
    # Follows Tarsier's AutoDQ scripts: a side with no events scores 1.0 in its own direction and the
    # other direction still counts, so saying nothing is paid for in recall (and vice versa).
    item.precision = (
        sum(lab == "entailment" for lab in pred_labels) / len(pred_labels) if pred_labels else 1.0
    )
    item.recall = sum(lab == "entailment" for lab in ref_labels) / len(ref_labels) if ref_labels else 1.0
    return item


def judge_item(
    judge: Judge, item_id: str, prediction: str, reference: str, config: AutoDQConfig
) -> AutoDQItem:
    """Run the AutoDQ stages for one item; a failed judge call becomes an ``error`` item."""
    try:
        pred_events = judge.ask("dq_events", {"caption": prediction, "max_events": config.max_events})
        ref_events = judge.ask("dq_events", {"caption": reference, "max_events": config.max_events})
        pred_events, ref_events = pred_events["events"], ref_events["events"]
        pred_labels: list[str] = []
        ref_labels: list[str] = []
        if pred_events:
            pred_labels = judge.ask("dq_entailment", {"caption": reference, "events": pred_events})["labels"]
        if ref_events:
            ref_labels = judge.ask("dq_entailment", {"caption": prediction, "events": ref_events})["labels"]
        return score_item(item_id, pred_events, ref_events, pred_labels, ref_labels)
    except JudgeError as exc:
        return AutoDQItem(id=item_id, status="error", error=str(exc))


def aggregate(items: Iterable[AutoDQItem], config: AutoDQConfig | None = None) -> dict[str, Any]:
    """Corpus AutoDQ: ``autodq`` (F1 of mean precision and mean recall), the means, counts and ids."""
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
