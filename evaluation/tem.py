"""TEM (Temporal Event Matching): ordered facial events, pairwise relations, LCS -> precision/recall/F1.

For one item a judge extracts the ordered list of atomic facial events (actions and facial states) from
the prediction and from the reference, then labels every (predicted, reference) event pair ``same``,
``opposite`` or ``unrelated``. The longest common subsequence with ``same`` as equality gives ``L``;
``P = L / |pred events|`` and ``R = L / |ref events|``. Over a corpus, TEM is the F1 of the mean P and
the mean R; the mean per-item F1 is reported next to it.

``opposite`` pairs never match. With ``opposite="unrelated"`` (the default) they count like unrelated
pairs and are only reported; with ``opposite="penalize"`` each predicted event that contradicts a
reference event (and is not part of the LCS) takes ``opposite_penalty`` off ``L`` for precision, and each
contradicted reference event likewise for recall (clipped at 0).

An item whose event list is empty, or whose judge call failed, is never silently scored: it is counted
and listed by id, and scored 0 (``empty="zero"``, the default: TEM never rewards saying nothing) or,
only when asked, left out of the means (``empty="exclude"``; the report then says how many). A failed
judge call is asked again up to ``retries`` more times before the item is recorded as failed.

TEM has no reference script; its rules follow the paper that defines it ("Facial Dynamics in Video",
arXiv 2501.07978): ordered atomic events from both captions, a same/opposite/unrelated relation per
event pair, LCS over "same" pairs, P = L/|pred|, R = L/|ref|, F1. The empty, failed and opposite-pair
policies are this project's, chosen so that nothing can score better by saying less.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from evaluation.judges.base import Judge, JudgeError
from evaluation.lcs import lcs_align

OppositePolicy = Literal["unrelated", "penalize"]
EmptyPolicy = Literal["exclude", "zero"]
Status = Literal["ok", "empty_pred", "empty_ref", "error", "missing"]


@dataclass
class TemConfig:
    """How TEM counts contradictions and empty event lists."""

    opposite: OppositePolicy = "unrelated"
    opposite_penalty: float = 1.0
    empty: EmptyPolicy = "zero"
    retries: int = 2
    """How many more times a failed judge call is asked before the item is recorded as failed."""

    def __post_init__(self) -> None:
        if self.opposite_penalty < 0:
            raise ValueError("opposite_penalty must be >= 0")
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")


@dataclass
class TemItem:
    """TEM of one item: the events, the relation matrix, the LCS pairs and the scores."""

    id: str
    status: Status = "ok"
    pred_events: list[str] = field(default_factory=list)
    ref_events: list[str] = field(default_factory=list)
    relations: list[list[str]] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    lcs: int = 0
    n_opposite_pairs: int = 0
    n_pred_contradicting: int = 0
    n_ref_contradicted: int = 0
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["pairs"] = [list(p) for p in self.pairs]
        return out


def f1(p: float, r: float) -> float:
    """Harmonic mean of ``p`` and ``r`` (0 when both are 0)."""
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def item_means(items: Sequence[Any], empty: EmptyPolicy, fields: Sequence[str]) -> dict[str, Any]:
    """Means of ``fields`` over the scored items, plus ``n_scored``.

    Items with status ``ok`` count with their values. The others (empty event list, failed judge call)
    count as 0 when ``empty="zero"`` and are left out otherwise; ``missing`` items (no prediction) exist
    only when missing predictions are to score zero, so they always count as 0.
    """
    values: dict[str, list[float]] = {name: [] for name in fields}
    for item in items:
        scored = item.status == "ok"
        if not scored and not (empty == "zero" or item.status == "missing"):
            continue
        for name in fields:
            values[name].append(float(getattr(item, name) or 0.0) if scored else 0.0)
    out: dict[str, Any] = {name: sum(v) / len(v) if v else None for name, v in values.items()}
    out["n_scored"] = len(values[fields[0]])
    return out


def unscored_report(items: Sequence[Any]) -> dict[str, Any]:
    """Counts and ids of the items that were not scored normally, by reason."""
    ids: dict[str, list[str]] = {"empty_pred": [], "empty_ref": [], "error": [], "missing": []}
    for item in items:
        if item.status != "ok":
            ids[item.status].append(item.id)
    return {
        "n_empty_pred": len(ids["empty_pred"]),
        "n_empty_ref": len(ids["empty_ref"]),
        "n_failed": len(ids["error"]),
        "n_missing_scored_zero": len(ids["missing"]),
        "empty_pred_ids": ids["empty_pred"],
        "empty_ref_ids": ids["empty_ref"],
        "failed_ids": ids["error"],
    }


def score_item(
    item_id: str,
    pred_events: Sequence[str],
    ref_events: Sequence[str],
    relations: Sequence[Sequence[str]],
    config: TemConfig | None = None,
) -> TemItem:
    """TEM of one item from its events and relation matrix (``relations[i][j]`` for pred i, ref j)."""
    config = config or TemConfig()
    n, m = len(pred_events), len(ref_events)
    item = TemItem(id=item_id, pred_events=list(pred_events), ref_events=list(ref_events))
    if n == 0 or m == 0:
        item.status = "empty_pred" if n == 0 else "empty_ref"
        return item
    if len(relations) != n or any(len(row) != m for row in relations):
        raise ValueError(f"{item_id}: relations must be {n} x {m}")
    item.relations = [list(row) for row in relations]
    item.pairs = lcs_align(item.relations)
    item.lcs = len(item.pairs)
    matched_pred = {i for i, _ in item.pairs}
    matched_ref = {j for _, j in item.pairs}
    opposite = [(i, j) for i in range(n) for j in range(m) if relations[i][j] == "opposite"]
    item.n_opposite_pairs = len(opposite)
    item.n_pred_contradicting = len({i for i, _ in opposite} - matched_pred)
    item.n_ref_contradicted = len({j for _, j in opposite} - matched_ref)
    hits_p = hits_r = float(item.lcs)
    if config.opposite == "penalize":
        hits_p = max(0.0, hits_p - config.opposite_penalty * item.n_pred_contradicting)
        hits_r = max(0.0, hits_r - config.opposite_penalty * item.n_ref_contradicted)
    item.precision = hits_p / n  # the paper: P = LCS / |predicted events|
    item.recall = hits_r / m  # the paper: R = LCS / |reference events|
    item.f1 = f1(item.precision, item.recall)
    return item


def ask_with_retries(judge: Judge, stage: str, inputs: Mapping[str, Any], retries: int) -> dict[str, Any]:
    """``judge.ask`` asked again up to ``retries`` more times on :class:`JudgeError` (the last is raised)."""
    for attempt in range(retries + 1):
        try:
            return judge.ask(stage, inputs)
        except JudgeError:
            if attempt == retries:
                raise
    raise AssertionError("unreachable")


def judge_item(judge: Judge, item_id: str, prediction: str, reference: str, config: TemConfig) -> TemItem:
    """Run the TEM stages for one item with ``judge``; a call that still fails makes an ``error`` item."""
    try:
        pred_events = ask_with_retries(judge, "tem_events", {"caption": prediction}, config.retries)["events"]
        ref_events = ask_with_retries(judge, "tem_events", {"caption": reference}, config.retries)["events"]
        if not pred_events or not ref_events:
            return score_item(item_id, pred_events, ref_events, [], config)
        inputs = {"pred_events": pred_events, "ref_events": ref_events}
        relations = ask_with_retries(judge, "tem_relations", inputs, config.retries)
        return score_item(item_id, pred_events, ref_events, relations["relations"], config)
    except JudgeError as exc:
        return TemItem(id=item_id, status="error", error=str(exc))


def aggregate(items: Iterable[TemItem], config: TemConfig | None = None) -> dict[str, Any]:
    """Corpus TEM from per-item results.

    Returns:
        ``tem`` (F1 of mean P and mean R), ``precision``, ``recall``, ``mean_item_f1``, the counts of
        scored, empty and failed items with their ids, and the opposite-pair policy and totals.
    """
    config = config or TemConfig()
    items = list(items)
    means = item_means(items, config.empty, ("precision", "recall", "f1"))
    mean_p, mean_r = means["precision"], means["recall"]
    return {
        # Corpus TEM: F1 of the mean P and the mean R (as AutoDQ's summary); mean item F1 beside it.
        "tem": f1(mean_p, mean_r) if mean_p is not None and mean_r is not None else None,
        "precision": mean_p,
        "recall": mean_r,
        "mean_item_f1": means["f1"],
        "n_items": len(items),
        "n_scored": means["n_scored"],
        "n_ok": sum(1 for it in items if it.status == "ok"),
        **unscored_report(items),
        "empty_policy": config.empty,
        "opposite_policy": config.opposite,
        "opposite_penalty": config.opposite_penalty if config.opposite == "penalize" else None,
        "n_opposite_pairs": sum(it.n_opposite_pairs for it in items),
        "n_pred_events": sum(len(it.pred_events) for it in items if it.status == "ok"),
        "n_ref_events": sum(len(it.ref_events) for it in items if it.status == "ok"),
    }


def item_from_dict(data: Mapping[str, Any]) -> TemItem:
    """Inverse of :meth:`TemItem.to_dict`."""
    known = {k: data[k] for k in TemItem.__dataclass_fields__ if k in data}
    known["pairs"] = [tuple(p) for p in known.get("pairs", [])]
    return TemItem(**known)
