"""Score paired predictions with a judge: per-item TEM, AutoDQ and VideoChatGPT scores, corpus CIDEr and
ROUGE-L, then one report.

``evaluate(pairing, config, out)`` runs everything in this process (threads bounded by the judge's
concurrency) and writes the reports; the benchmark job runs :func:`judge_items` on Ray workers instead
and calls :func:`summarize` and :func:`~evaluation.report.write_reports` itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from typing import Any

from evaluation import autodq, ngram, tem, vcgpt
from evaluation.data import Item, Pairing
from evaluation.judges import build_judge
from evaluation.judges.base import Judge
from evaluation.judges.cache import CachedJudge, JudgeCache
from evaluation.prompts import PromptSet, load_prompt_set
from evaluation.report import write_reports
from evaluation.results import JUDGED_METRICS, EvalConfig, ItemResult

log = logging.getLogger(__name__)


def cache_uri(config: EvalConfig, out_uri: str | None) -> str | None:
    """Where the judge cache lives for this run (``None`` when disabled)."""
    if config.cache == "off":
        return None
    if config.cache:
        return config.cache
    if out_uri is None:
        return None
    from facetrack import storage

    return storage.join(out_uri, "judge_cache")


METRIC_STAGES: dict[str, tuple[str, ...]] = {
    "tem": ("tem_events", "tem_relations"),
    "autodq": ("dq_events", "dq_entailment"),
    "vcgpt": tuple(f"vcgpt_{c}" for c in vcgpt.VCGPT_CRITERIA),
}
"""The judge stages each judged metric asks."""


def prepare(config: EvalConfig) -> tuple[EvalConfig, PromptSet]:
    """The run's prompt set, checked before any judge call, and the config to score with.

    An LLM judge's set must have every stage the run's metrics ask; the VideoChatGPT question comes from
    the set's ``fec_question`` unless ``vcgpt.question`` is set.

    Raises:
        FileNotFoundError, ValueError: the set cannot be read, or lacks a stage or key the run needs.
    """
    prompts = load_prompt_set(config.judge.prompt_source() or None)
    if config.judge.kind != "embedded":
        for metric in config.metrics:
            prompts.require(METRIC_STAGES.get(metric, ()), metric)
    if "vcgpt" in config.metrics and not config.vcgpt.question:
        question = vcgpt.default_question(prompts)
        config = replace(config, vcgpt=replace(config.vcgpt, question=question))
    return config, prompts


def prompts_info(config: EvalConfig) -> dict[str, Any]:
    """The prompt set's name, hash and source as the reports show them; ``used`` is false for the
    embedded judge, which answers by rules."""
    info = load_prompt_set(config.judge.prompt_source() or None).describe()
    return {**info, "used": config.judge.kind != "embedded"}


def open_judge(
    config: EvalConfig, out_uri: str | None, judge: Judge | None = None, prompts: PromptSet | None = None
) -> CachedJudge:
    """The configured judge (or ``judge``) in front of the run's cache."""
    judge = judge if judge is not None else build_judge(config.judge, prompts)
    uri = cache_uri(config, out_uri)
    return CachedJudge(judge, JudgeCache(uri) if uri else None)


def score_item(judge: Judge, item: Item, config: EvalConfig) -> ItemResult:
    """All judged metrics of one item, stage by stage; judge failures are recorded on the result."""
    start = time.perf_counter()
    result = ItemResult(id=item.id)
    if "tem" in config.metrics:
        result.tem = tem.judge_item(judge, item.id, item.prediction, item.reference, config.tem)
    if "autodq" in config.metrics:
        result.autodq = autodq.judge_item(judge, item.id, item.prediction, item.reference, config.autodq)
    if "vcgpt" in config.metrics:
        result.vcgpt = vcgpt.judge_item(judge, item.id, item.prediction, item.reference, config.vcgpt)
    result.seconds = time.perf_counter() - start
    return result


def judge_items(
    items: Sequence[Item],
    judge: Judge,
    config: EvalConfig,
    on_result: Callable[[ItemResult], None] | None = None,
    progress: bool = False,
) -> list[ItemResult]:
    """Score ``items`` with at most ``config.concurrency`` (or the judge's bound) items in flight.

    Returns the results in the order of ``items``.
    """
    if not any(m in config.metrics for m in JUDGED_METRICS):
        return [ItemResult(id=it.id) for it in items]
    workers = max(1, config.concurrency or judge.max_concurrency)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="judging", unit="item")
    results: dict[str, ItemResult] = {}
    try:
        if workers == 1:
            for item in items:
                results[item.id] = score_item(judge, item, config)
                if on_result:
                    on_result(results[item.id])
                if bar:
                    bar.update()
        else:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge")
            try:
                futures = {pool.submit(score_item, judge, item, config): item.id for item in items}
                for future in as_completed(futures):
                    res = future.result()  # a JudgeFatalError stops the run here
                    results[res.id] = res
                    if on_result:
                        on_result(res)
                    if bar:
                        bar.update()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)  # items not started are not started
    finally:
        if bar:
            bar.close()
    return [results[it.id] for it in items]


def _missing_results(ids: Iterable[str]) -> list[ItemResult]:
    out = []
    for i in ids:
        out.append(
            ItemResult(
                id=i,
                tem=tem.TemItem(
                    id=i, status="missing", precision=0.0, recall=0.0, f1=0.0, error="no prediction"
                ),
                autodq=autodq.AutoDQItem(
                    id=i, status="missing", precision=0.0, recall=0.0, error="no prediction"
                ),
                vcgpt=vcgpt.VcgptItem(id=i, scores={c: 0.0 for c in vcgpt.VCGPT_CRITERIA}),
            )
        )
    return out


def summarize(
    results: Sequence[ItemResult],
    pairing: Pairing,
    config: EvalConfig,
    judge_info: Mapping[str, Any],
    judge_stats: Mapping[str, Mapping[str, int]] | None = None,
    timings: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The report: corpus metrics, counts, judge identity and calls, the paper-style table row.

    With ``config.missing == "zero"`` references without a usable prediction are scored 0 in every
    metric; otherwise they are only listed.
    """
    results = list(results)
    unscorable = pairing.missing_ids + pairing.failed_ids
    if config.missing == "zero" and unscorable:
        results = results + _missing_results(unscorable)
    metrics: dict[str, Any] = {}
    if "tem" in config.metrics:
        metrics["tem"] = tem.aggregate([r.tem for r in results if r.tem], config.tem)
    if "autodq" in config.metrics:
        metrics["autodq"] = autodq.aggregate([r.autodq for r in results if r.autodq], config.autodq)
    if "vcgpt" in config.metrics:
        metrics["vcgpt"] = vcgpt.aggregate([r.vcgpt for r in results if r.vcgpt])
    preds = {it.id: it.prediction for it in pairing.items}
    refs = {it.id: it.reference for it in pairing.items}
    if config.missing == "zero":
        for i in unscorable:
            preds[i], refs[i] = "", pairing.references[i]
    per_item_ngram: dict[str, dict[str, float]] = {}
    if "cider" in config.metrics:
        corpus, per_item = ngram.cider(preds, refs, config.tokenizer)
        metrics["cider"] = corpus
        per_item_ngram["cider"] = per_item
    if "rouge_l" in config.metrics:
        corpus, per_item = ngram.rouge_l(preds, refs, config.tokenizer, config.rouge)
        metrics["rouge_l"] = corpus
        per_item_ngram["rouge_l"] = per_item
    stats = {k: dict(v) for k, v in (judge_stats or {}).items()}
    totals = {"calls": 0, "hits": 0, "errors": 0}
    for counts in stats.values():
        for k in totals:
            totals[k] += counts.get(k, 0)
    n_judged = len(pairing.items)
    report: dict[str, Any] = {
        "model": config.model_name,
        "judge": dict(judge_info),
        "prompts": prompts_info(config),
        "counts": {**pairing.counts(), "scored": n_judged, "missing_policy": config.missing},
        "metrics": metrics,
        "table": table_row(metrics),
        "judge_calls": {
            **totals,
            "calls_per_item": totals["calls"] / n_judged if n_judged else 0.0,
            "by_stage": stats,
        },
        "timings": dict(timings or {}),
        "per_item_ngram": per_item_ngram,
    }
    return report


def table_row(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """The paper's columns: VideoChatGPT scores, CIDEr, ROUGE-L, AutoDQ, TEM."""
    vc = metrics.get("vcgpt") or {}
    return {
        "Correctness": vc.get("correctness"),
        "Detail": vc.get("detail"),
        "Context": vc.get("context"),
        "Temporal": vc.get("temporal"),
        "CIDEr": metrics.get("cider"),
        "ROUGE-L": metrics.get("rouge_l"),
        "AutoDQ": (metrics.get("autodq") or {}).get("autodq"),
        "TEM": (metrics.get("tem") or {}).get("tem"),
    }


def evaluate(
    pairing: Pairing,
    config: EvalConfig,
    out_uri: str,
    judge: Judge | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``pairing`` in this process, write the reports under ``out_uri`` and return the report.

    Args:
        pairing: the items to score and what could not be paired.
        config: metrics, judge and policies.
        out_uri: local folder or ``s3://`` prefix for the reports (and, by default, the judge cache).
        judge: a judge to use instead of building ``config.judge`` (it is still cached).
        progress: show a progress bar.
    """
    start = time.perf_counter()
    if config.tokenizer == "ptb" and {"cider", "rouge_l"} & set(config.metrics):
        ngram.require_ptb()  # before any judge call, not after them
    config, prompts = prepare(config)
    cached = open_judge(config, out_uri, judge, prompts)
    try:
        results = judge_items(pairing.items, cached, config, progress=progress)
    finally:
        if cached.cache is not None:
            cached.cache.close()
    judged = time.perf_counter() - start
    report = summarize(
        results,
        pairing,
        config,
        judge_info=cached.describe(),
        judge_stats=cached.stats,
        timings={"judging_s": judged},
    )
    report["timings"]["total_s"] = time.perf_counter() - start
    report["timings"]["items_per_s"] = len(pairing.items) / judged if judged > 0 else None
    write_reports(report, results, pairing, config, out_uri)
    return report
