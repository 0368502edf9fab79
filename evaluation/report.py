"""Reports of a benchmark run: ``report.json``, ``report.md`` (the paper's table), ``items.csv`` and a plot.

Everything is written through the storage layer, so the output may be a local folder or an ``s3://``
prefix. The markdown names the judge and, for the embedded judge, says plainly that it is an
approximation whose numbers are not comparable with LLM-judged ones.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from evaluation.published import COLUMNS, load_published, midpoint

if TYPE_CHECKING:
    from evaluation.data import Pairing
    from evaluation.results import EvalConfig, ItemResult

REPORT_FILES = ("report.json", "report.md", "items.csv", "tem_plot.png")
_MAX_IDS_IN_MD = 20


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "-".join(_fmt(v, digits) for v in value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(f"`{i}`" for i in ids[:_MAX_IDS_IN_MD])
    more = len(ids) - _MAX_IDS_IN_MD
    return shown + (f" and {more} more (all in report.json)" if more > 0 else "")


def _unscored_lines(section: dict[str, Any]) -> list[str]:
    """Markdown lines listing the items a metric could not score, by reason (see ``unscored_report``)."""
    lines = []
    for key, label in (
        ("empty_pred_ids", "Empty predicted event list"),
        ("empty_ref_ids", "Empty reference event list"),
        ("failed_ids", "Judge failed"),
    ):
        if section.get(key):
            lines.append(f"- {label} ({len(section[key])}): {_ids(section[key])}")
    return lines


def _count_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Scored / failed / excluded counts of every judged metric, shown right under the main table."""
    parts = []
    for key, label in (("tem", "TEM"), ("autodq", "AutoDQ")):
        m = metrics.get(key)
        if m and "n_items" in m:
            excluded = m["n_items"] - m["n_scored"]
            failed = m.get("n_failed", 0)
            parts.append(f"{label} {m['n_scored']} scored / {failed} failed / {excluded} excluded")
    v = metrics.get("vcgpt")
    if v:
        scored = min((int(v[k]) for k in v if k.startswith("n_scored_")), default=0)
        failed = max((len(v[k]) for k in v if k.startswith("failed_ids_")), default=0)
        parts.append(f"VideoChatGPT {scored} scored / {failed} failed / 0 excluded (fewest over criteria)")
    return ["", "Counts: " + "; ".join(parts) + "."] if parts else []


def _prompts_line(prompts: Mapping[str, Any] | None) -> str:
    """Which prompt set the judge was given: name, hash and source."""
    if not prompts:
        return "Prompts: not recorded."
    where = (
        "shipped with facetrack" if prompts.get("source") == "shipped" else f"from `{prompts.get('source')}`"
    )
    named = f"`{prompts.get('name')}` (sha256 `{prompts.get('hash')}`, {where})"
    if not prompts.get("used", True):
        return f"Prompts: {named}, not used: the embedded judge answers by rules, not prompts."
    return f"Prompts: {named}."


def render_markdown(report: Mapping[str, Any]) -> str:
    """The human-readable report: the table in the paper's columns, then details and counts."""
    judge = report.get("judge", {})
    counts = report.get("counts", {})
    metrics = report.get("metrics", {})
    lines = [f"# Benchmark report: {report.get('model', 'model')}", ""]
    lines.append(f"Judge: `{judge.get('name', '?')}`.")
    lines.append(_prompts_line(report.get("prompts")))
    if judge.get("approximate"):
        lines += ["", f"> **Approximate judge.** {judge.get('note', '')}"]
    lines += [
        "",
        f"Scored {counts.get('scored', 0)} of {counts.get('references', 0)} references "
        f"({counts.get('predictions', 0)} prediction rows).",
    ]
    if counts.get("missing"):
        lines.append(f"- Missing predictions ({counts['missing']}): {_ids(counts['missing_ids'])}")
    if counts.get("failed"):
        lines.append(f"- Failed predictions ({counts['failed']}): {_ids(counts['failed_ids'])}")
    if counts.get("missing") or counts.get("failed"):
        policy = counts.get("missing_policy")
        lines.append(
            "- These are "
            + ("scored 0 in every metric." if policy == "zero" else "left out of every metric.")
        )
    if counts.get("extra"):
        lines.append(
            f"- Prediction ids not in the benchmark, ignored ({counts['extra']}): {_ids(counts['extra_ids'])}"
        )
    if counts.get("duplicates"):
        lines.append(f"- Ids given more than once, first row used: {_ids(counts['duplicate_ids'])}")
    lines += ["", "| Model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    row = report.get("table", {})
    lines.append(
        f"| {report.get('model', 'model')} (this run) | "
        + " | ".join(_fmt(row.get(c)) for c in COLUMNS)
        + " |"
    )
    published = report.get("published")
    if published:
        for prow in published["rows"]:
            cells = " | ".join(_fmt(prow.get(c)) for c in COLUMNS)
            lines.append(f"| {prow['model']} (paper) | {cells} |")
    lines += _count_lines(metrics)
    lines += [
        "",
        "Correctness, Detail, Context and Temporal are VideoChatGPT scores (0-5); CIDEr is pycocoevalcap's "
        "CIDEr-D (0-10); ROUGE-L, AutoDQ and TEM are 0-1.",
    ]
    if published:
        lines.append(f"Paper rows: {published['source']} ({published['url']}). {published.get('note', '')}")
        if judge.get("approximate"):
            lines.append("This run's judged columns come from the approximate judge and are not comparable.")
    t = metrics.get("tem")
    if t:
        lines += [
            "",
            "## TEM",
            "",
            f"- TEM (F1 of mean precision {_fmt(t['precision'])} and mean recall {_fmt(t['recall'])}): "
            f"**{_fmt(t['tem'])}**; mean per-item F1: {_fmt(t['mean_item_f1'])}",
            f"- Items scored: {t['n_scored']} of {t['n_items']}; empty-list policy: {t['empty_policy']}",
            f"- Opposite pairs: {t['n_opposite_pairs']}, counted as "
            + (
                "unrelated (reported only)"
                if t["opposite_policy"] == "unrelated"
                else f"a penalty of {t['opposite_penalty']} per contradicting event"
            ),
        ]
        lines += _unscored_lines(t)
    d = metrics.get("autodq")
    if d:
        lines += [
            "",
            "## AutoDQ",
            "",
            f"- AutoDQ (F1 of mean precision {_fmt(d['precision'])} and mean recall {_fmt(d['recall'])}): "
            f"**{_fmt(d['autodq'])}**; items scored: {d['n_scored']} of {d['n_items']}; "
            f"contradiction labels: {d['n_contradictions']}",
        ]
        lines += _unscored_lines(d)
    v = metrics.get("vcgpt")
    if v:
        failed = {c: v.get(f"failed_ids_{c}", []) for c in ("correctness", "detail", "context", "temporal")}
        if any(failed.values()):
            lines += ["", "## VideoChatGPT scores", ""]
            for c, ids in failed.items():
                if ids:
                    lines.append(f"- {c}: judge failed for {len(ids)} item(s): {_ids(ids)}")
    calls = report.get("judge_calls", {})
    lines += [
        "",
        "## Judge calls",
        "",
        f"{calls.get('calls', 0)} calls ({_fmt(calls.get('calls_per_item'), 2)} per item), "
        f"{calls.get('hits', 0)} answers from the cache, {calls.get('errors', 0)} failed calls.",
    ]
    if calls.get("by_stage"):
        lines += ["", "| Stage | Calls | Cache hits | Errors |", "|---|---|---|---|"]
        for stage, c in sorted(calls["by_stage"].items()):
            lines.append(f"| {stage} | {c.get('calls', 0)} | {c.get('hits', 0)} | {c.get('errors', 0)} |")
    timings = report.get("timings", {})
    if timings:
        lines += ["", "## Timings", ""]
        lines += [f"- {k}: {_fmt(v, 2)}" for k, v in timings.items()]
    return "\n".join(lines) + "\n"


CSV_FIELDS = (
    "id",
    "video",
    "tem_status",
    "tem_precision",
    "tem_recall",
    "tem_f1",
    "lcs",
    "n_pred_events",
    "n_ref_events",
    "n_opposite_pairs",
    "pred_events",
    "ref_events",
    "relations",
    "lcs_pairs",
    "autodq_status",
    "autodq_precision",
    "autodq_recall",
    "autodq_pred_events",
    "autodq_pred_labels",
    "autodq_ref_events",
    "autodq_ref_labels",
    "cider",
    "rouge_l",
    "vcgpt_correctness",
    "vcgpt_detail",
    "vcgpt_context",
    "vcgpt_temporal",
    "errors",
)


def items_csv(results: Sequence[ItemResult], pairing: Pairing, report: Mapping[str, Any]) -> str:
    """One row per item: scores, the events of both sides, the non-unrelated relations and the LCS.

    ``relations`` is a JSON list of ``[pred index, ref index, label]`` for every pair that is not
    unrelated (0-based indices into ``pred_events`` / ``ref_events``).
    """
    videos = {it.id: it.video for it in pairing.items}
    ngram_scores = report.get("per_item_ngram", {})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for res in results:
        row: dict[str, Any] = {"id": res.id, "video": videos.get(res.id, "")}
        errors = []
        if res.tem:
            t = res.tem
            row.update(
                tem_status=t.status,
                tem_precision=t.precision,
                tem_recall=t.recall,
                tem_f1=t.f1,
                lcs=t.lcs,
                n_pred_events=len(t.pred_events),
                n_ref_events=len(t.ref_events),
                n_opposite_pairs=t.n_opposite_pairs,
                pred_events=json.dumps(t.pred_events, ensure_ascii=False),
                ref_events=json.dumps(t.ref_events, ensure_ascii=False),
                relations=json.dumps(
                    [
                        [i, j, lab]
                        for i, r in enumerate(t.relations)
                        for j, lab in enumerate(r)
                        if lab != "unrelated"
                    ]
                ),
                lcs_pairs=json.dumps([list(p) for p in t.pairs]),
            )
            if t.error:
                errors.append(f"tem: {t.error}")
        if res.autodq:
            d = res.autodq
            row.update(
                autodq_status=d.status,
                autodq_precision=d.precision,
                autodq_recall=d.recall,
                autodq_pred_events=json.dumps(d.pred_events, ensure_ascii=False),
                autodq_pred_labels=json.dumps(d.pred_labels),
                autodq_ref_events=json.dumps(d.ref_events, ensure_ascii=False),
                autodq_ref_labels=json.dumps(d.ref_labels),
            )
            if d.error:
                errors.append(f"autodq: {d.error}")
        if res.vcgpt:
            for c, s in res.vcgpt.scores.items():
                row[f"vcgpt_{c}"] = s
            errors += [f"vcgpt_{c}: {e}" for c, e in res.vcgpt.errors.items()]
        for name in ("cider", "rouge_l"):
            if res.id in ngram_scores.get(name, {}):
                row[name] = ngram_scores[name][res.id]
        row["errors"] = " | ".join(errors)
        writer.writerow(row)
    return buf.getvalue()


def plot_png(report: Mapping[str, Any], results: Sequence[ItemResult]) -> bytes:
    """Per-item TEM F1 histogram; with published rows, a second panel of TEM next to the paper's models."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
    except ImportError as exc:
        raise ImportError("the report plot needs matplotlib: pip install 'facetrack[eval]'") from exc
    f1s = [r.tem.f1 for r in results if r.tem is not None and r.tem.f1 is not None]
    tem_metrics = (report.get("metrics") or {}).get("tem") or {}
    published = report.get("published")
    ncols = 2 if published else 1
    fig = Figure(figsize=(6.5 * ncols, 4.2))
    axes = fig.subplots(1, ncols, squeeze=False)
    ax = axes[0][0]
    ax.hist(f1s, bins=[i / 20 for i in range(21)], color="#4C72B0", edgecolor="white")
    if tem_metrics.get("tem") is not None:
        ax.axvline(
            tem_metrics["tem"], color="#C44E52", linestyle="-", label=f"corpus TEM {tem_metrics['tem']:.3f}"
        )
    if tem_metrics.get("mean_item_f1") is not None:
        ax.axvline(
            tem_metrics["mean_item_f1"],
            color="#55A868",
            linestyle="--",
            label=f"mean item F1 {tem_metrics['mean_item_f1']:.3f}",
        )
    ax.set_xlim(0, 1)
    ax.set_xlabel("per-item TEM F1")
    ax.set_ylabel("items")
    judge = report.get("judge", {})
    title = f"{report.get('model', 'model')}: TEM per item (n={len(f1s)})"
    if judge.get("approximate"):
        title += "\napproximate embedded judge"
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    if published:
        ax2 = axes[0][1]
        names = [
            f"{report.get('model', 'model')} (this run)"
            + (", approx. judge" if judge.get("approximate") else "")
        ]
        values = [tem_metrics.get("tem") or 0.0]
        errs = [(0.0, 0.0)]
        for row in published["rows"]:
            if row.get("TEM") is None:
                continue
            value = row["TEM"]
            mid = midpoint(value)
            names.append(row["model"])
            values.append(mid)
            errs.append((mid - value[0], value[1] - mid) if isinstance(value, list) else (0.0, 0.0))
        colors = ["#C44E52"] + ["#8C8C8C"] * (len(names) - 1)
        ypos = list(range(len(names)))[::-1]
        ax2.barh(ypos, values, color=colors, xerr=list(zip(*errs)), capsize=3)
        ax2.set_yticks(ypos, names, fontsize=8)
        ax2.set_xlabel("TEM")
        ax2.set_title("TEM next to published rows (paper: LLM judge)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_reports(
    report: dict[str, Any],
    results: Sequence[ItemResult],
    pairing: Pairing,
    config: EvalConfig,
    out_uri: str,
) -> list[str]:
    """Write the four report files under ``out_uri``; returns their URIs.

    Adds the run's config (and, when ``config.compare_paper``, the published rows) to ``report``.
    """
    from facetrack import storage
    from facetrack.config import to_dict

    report["config"] = to_dict(config)
    if config.compare_paper:
        report["published"] = load_published()
    written = []
    files = {
        "report.json": json.dumps(report, indent=2, ensure_ascii=False, default=str).encode(),
        "report.md": render_markdown(report).encode(),
        "items.csv": items_csv(results, pairing, report).encode(),
        "tem_plot.png": plot_png(report, results),
    }
    for name, data in files.items():
        uri = storage.join(out_uri, name)
        storage.write_bytes(uri, data)
        written.append(uri)
    return written
