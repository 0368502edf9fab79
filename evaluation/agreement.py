"""How much the scores depend on the judge: several judges score the same predictions, and we compare them.

For every pair of judges and every system (prediction file):

- per-metric Pearson and Spearman correlation over items (TEM and AutoDQ per-item F1, precision and
  recall, the four VideoChatGPT scores), on the items both judges scored;
- Cohen's kappa of the TEM relation labels (same / opposite / unrelated) on the event pairs both judges
  labelled: pairs whose predicted and reference event texts are the same for both judges (compared
  lower-cased, spaces and end punctuation ignored). Judges that extract different events share few
  pairs; the section says how many;

and, with several systems, Kendall's tau between the two judges' rankings of the systems by each corpus
metric. Values are ``None`` where they are undefined (fewer than 3 items, or a constant side).

The summary of such a run (``report.json`` and ``report.md`` at the top of the output, next to one full
report per system and judge under ``runs/``) is written by :func:`write_summary`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evaluation.judges.base import RELATIONS, VCGPT_CRITERIA
from evaluation.results import ItemResult
from evaluation.tem import f1

MIN_ITEMS = 3
"""Fewest items (or systems) a correlation is computed on."""


def _tem_value(name: str) -> Callable[[ItemResult], float | None]:
    def value(r: ItemResult) -> float | None:
        t = r.tem
        if t is None or t.status in ("error", "missing"):
            return None
        if t.status != "ok":
            return 0.0  # an empty event list is this judge's judgement: it scores 0, as in TEM's default
        return getattr(t, name)

    return value


def _dq_value(name: str) -> Callable[[ItemResult], float | None]:
    def value(r: ItemResult) -> float | None:
        d = r.autodq
        if d is None or d.status in ("error", "missing") or d.precision is None or d.recall is None:
            return None
        return f1(d.precision, d.recall) if name == "f1" else getattr(d, name)

    return value


def _vc_value(criterion: str) -> Callable[[ItemResult], float | None]:
    def value(r: ItemResult) -> float | None:
        score = r.vcgpt.scores.get(criterion) if r.vcgpt else None
        return None if score is None else float(score)

    return value


ITEM_METRICS: dict[str, Callable[[ItemResult], float | None]] = {
    "tem_f1": _tem_value("f1"),
    "tem_precision": _tem_value("precision"),
    "tem_recall": _tem_value("recall"),
    "autodq_f1": _dq_value("f1"),
    "autodq_precision": _dq_value("precision"),
    "autodq_recall": _dq_value("recall"),
    **{f"vcgpt_{c}": _vc_value(c) for c in VCGPT_CRITERIA},
}
"""Per-item values compared across judges, by name."""

CORPUS_METRICS: dict[str, Callable[[Mapping[str, Any]], float | None]] = {
    "TEM": lambda m: (m.get("tem") or {}).get("tem"),
    "AutoDQ": lambda m: (m.get("autodq") or {}).get("autodq"),
    **{c.capitalize(): (lambda m, c=c: (m.get("vcgpt") or {}).get(c)) for c in VCGPT_CRITERIA},
}
"""Corpus values whose ranking of the systems is compared across judges (CIDEr and ROUGE-L do not
depend on the judge)."""


@dataclass
class Run:
    """One system scored by one judge: its per-item results and its report."""

    system: str
    judge: str
    results: Sequence[ItemResult]
    report: Mapping[str, Any]
    out: str = ""


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def correlation(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Pearson and Spearman correlation of paired values, with their p-values and ``n``."""
    from scipy import stats

    out: dict[str, Any] = {
        "n": len(a),
        "pearson": None,
        "pearson_p": None,
        "spearman": None,
        "spearman_p": None,
    }
    if len(a) < MIN_ITEMS or len(set(a)) < 2 or len(set(b)) < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pearson = stats.pearsonr(a, b)
        spearman = stats.spearmanr(a, b)
    out.update(
        pearson=_clean(pearson.statistic),
        pearson_p=_clean(pearson.pvalue),
        spearman=_clean(spearman.statistic),
        spearman_p=_clean(spearman.pvalue),
    )
    return out


def item_correlations(a: Sequence[ItemResult], b: Sequence[ItemResult]) -> dict[str, dict[str, Any]]:
    """Per metric: the correlation over the items both judges scored (metrics neither scored are left out)."""
    by_id = {r.id: r for r in b}
    out: dict[str, dict[str, Any]] = {}
    for name, value in ITEM_METRICS.items():
        xs, ys = [], []
        for ra in a:
            rb = by_id.get(ra.id)
            if rb is None:
                continue
            x, y = value(ra), value(rb)
            if x is not None and y is not None:
                xs.append(float(x))
                ys.append(float(y))
        if xs:
            out[name] = correlation(xs, ys)
    return out


_SPACE = re.compile(r"\s+")


def _norm(event: str) -> str:
    return _SPACE.sub(" ", event.lower()).strip().rstrip(".,;:!")


def _pair_labels(results: Sequence[ItemResult]) -> dict[tuple[str, str, str], str]:
    out: dict[tuple[str, str, str], str] = {}
    for r in results:
        t = r.tem
        if t is None or t.status != "ok":
            continue
        for i, row in enumerate(t.relations):
            for j, label in enumerate(row):
                out.setdefault((r.id, _norm(t.pred_events[i]), _norm(t.ref_events[j])), label)
    return out


def relation_kappa(a: Sequence[ItemResult], b: Sequence[ItemResult]) -> dict[str, Any]:
    """Cohen's kappa of the TEM relation labels on the event pairs both judges labelled.

    Returns:
        ``n_pairs`` (shared pairs), ``kappa`` (``None`` with fewer than 3 pairs or one label only),
        ``observed_agreement`` and the label counts of each judge on the shared pairs.
    """
    la, lb = _pair_labels(a), _pair_labels(b)
    shared = sorted(set(la) & set(lb))
    ya, yb = [la[k] for k in shared], [lb[k] for k in shared]
    out: dict[str, Any] = {
        "n_pairs": len(shared),
        "n_pairs_a": len(la),
        "n_pairs_b": len(lb),
        "kappa": None,
        "observed_agreement": (sum(x == y for x, y in zip(ya, yb)) / len(shared)) if shared else None,
        "labels_a": {lab: ya.count(lab) for lab in RELATIONS},
        "labels_b": {lab: yb.count(lab) for lab in RELATIONS},
    }
    if len(shared) >= MIN_ITEMS and len(set(ya) | set(yb)) >= 2:
        from sklearn.metrics import cohen_kappa_score

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["kappa"] = _clean(cohen_kappa_score(ya, yb, labels=list(RELATIONS)))
    return out


def ranking_agreement(
    a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Kendall's tau between two judges' rankings of the systems, per corpus metric.

    Args:
        a, b: system -> that judge's ``report["metrics"]``.
    """
    from scipy import stats

    systems = [s for s in a if s in b]
    out: dict[str, Any] = {}
    for name, value in CORPUS_METRICS.items():
        pairs = [(value(a[s]), value(b[s])) for s in systems]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        entry: dict[str, Any] = {"n_systems": len(pairs), "tau": None, "p": None}
        if len(pairs) >= 2 and len({x for x, _ in pairs}) > 1 and len({y for _, y in pairs}) > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = stats.kendalltau([x for x, _ in pairs], [y for _, y in pairs])
            entry.update(tau=_clean(res.statistic), p=_clean(res.pvalue))
        if pairs:
            out[name] = entry
    return out


def agreement(runs: Sequence[Run]) -> dict[str, Any]:
    """The judge-agreement section for ``runs`` (every system scored by every judge)."""
    judges = list(dict.fromkeys(r.judge for r in runs))
    systems = list(dict.fromkeys(r.system for r in runs))
    index = {(r.system, r.judge): r for r in runs}
    pairs = []
    for ja, jb in itertools.combinations(judges, 2):
        entry: dict[str, Any] = {"a": ja, "b": jb, "systems": {}}
        for system in systems:
            ra, rb = index.get((system, ja)), index.get((system, jb))
            if ra is None or rb is None:
                continue
            entry["systems"][system] = {
                "items": item_correlations(ra.results, rb.results),
                "tem_relations": relation_kappa(ra.results, rb.results),
            }
        if len(systems) > 1:
            entry["ranking"] = ranking_agreement(
                {s: index[(s, ja)].report.get("metrics", {}) for s in systems if (s, ja) in index},
                {s: index[(s, jb)].report.get("metrics", {}) for s in systems if (s, jb) in index},
            )
        pairs.append(entry)
    return {"judges": judges, "systems": systems, "pairs": pairs}


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_agreement(section: Mapping[str, Any]) -> list[str]:
    """The markdown lines of the judge-agreement section."""
    lines = ["## Judge agreement", ""]
    if not section.get("pairs"):
        return lines + ["One judge only: nothing to compare.", ""]
    lines += [
        "Per-item correlations are over the items both judges scored (n). Kappa is over the TEM event "
        "pairs both judges labelled (same predicted and reference event texts). '-' is undefined "
        f"(fewer than {MIN_ITEMS} values or a constant side).",
        "",
    ]
    for pair in section["pairs"]:
        a, b = pair["a"], pair["b"]
        for system, data in pair["systems"].items():
            lines += [f"### `{a}` vs `{b}` on {system}", ""]
            lines += ["| Metric | n | Pearson | Spearman |", "|---|---|---|---|"]
            for name, c in data["items"].items():
                lines.append(f"| {name} | {c['n']} | {_f(c['pearson'])} | {_f(c['spearman'])} |")
            k = data["tem_relations"]
            lines += [
                "",
                f"TEM relation labels: {k['n_pairs']} shared event pairs (of {k['n_pairs_a']} and "
                f"{k['n_pairs_b']}), Cohen's kappa {_f(k['kappa'])}, observed agreement "
                f"{_f(k['observed_agreement'])}.",
                "",
            ]
        ranking = pair.get("ranking")
        if ranking:
            lines += [f"### Ranking of the systems: `{a}` vs `{b}`", ""]
            lines += ["| Metric | systems | Kendall's tau |", "|---|---|---|"]
            for name, r in ranking.items():
                lines.append(f"| {name} | {r['n_systems']} | {_f(r['tau'])} |")
            lines.append("")
    return lines


def summary_report(runs: Sequence[Run], section: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level report of a several-judge (or several-system) run."""
    rows = []
    for r in runs:
        rep = r.report
        rows.append(
            {
                "system": r.system,
                "judge": r.judge,
                "judge_name": (rep.get("judge") or {}).get("name"),
                "approximate": bool((rep.get("judge") or {}).get("approximate")),
                "prompts": {k: (rep.get("prompts") or {}).get(k) for k in ("name", "hash", "used")},
                "table": rep.get("table", {}),
                "counts": {k: v for k, v in (rep.get("counts") or {}).items() if not k.endswith("_ids")},
                "tem_counts": {
                    k: (rep.get("metrics", {}).get("tem") or {}).get(k) for k in ("n_scored", "n_failed")
                },
                "out": r.out,
            }
        )
    return {"kind": "multi-judge", "runs": rows, "agreement": dict(section)}


def render_summary(summary: Mapping[str, Any]) -> str:
    """``report.md`` of a several-judge run: one row per system and judge, then the agreement section."""
    from evaluation.published import COLUMNS

    runs = summary["runs"]
    judges = list(dict.fromkeys(r["judge"] for r in runs))
    systems = list(dict.fromkeys(r["system"] for r in runs))
    lines = [f"# Benchmark report: {len(systems)} system(s) x {len(judges)} judge(s)", ""]
    lines += ["| System | Judge | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for r in runs:
        judge = r["judge"] + (" (approximate)" if r["approximate"] else "")
        cells = " | ".join(_f(r["table"].get(c)) for c in COLUMNS)
        lines.append(f"| {r['system']} | {judge} | {cells} |")
    lines += ["", "Judges and prompt sets:", ""]
    for r in runs:
        if r["system"] != systems[0]:
            continue
        p = r["prompts"]
        prompts = f"prompts `{p['name']}` (sha256 `{p['hash']}`)" if p.get("used") else "no prompts (rules)"
        lines.append(f"- `{r['judge']}`: `{r['judge_name']}`, {prompts}")
    if any(r["approximate"] for r in runs):
        lines += [
            "",
            "The embedded judge only approximates an LLM judge: its rows are for smoke tests and for "
            "agreement studies, not for comparison with published numbers.",
        ]
    lines += ["", "Full reports (items.csv, plots, counts) of each system and judge:", ""]
    lines += [f"- {r['system']} / {r['judge']}: `{r['out']}`" for r in runs]
    lines += [""] + render_agreement(summary["agreement"])
    return "\n".join(lines).rstrip() + "\n"


def write_summary(runs: Sequence[Run], out_uri: str) -> dict[str, Any]:
    """Compute the agreement of ``runs`` and write ``report.json`` and ``report.md`` under ``out_uri``."""
    from facetrack import storage

    summary = summary_report(runs, agreement(runs))
    storage.write_text(
        storage.join(out_uri, "report.json"), json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    )
    storage.write_text(storage.join(out_uri, "report.md"), render_summary(summary))
    return summary
