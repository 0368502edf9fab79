"""The benchmark job: (optionally caption the benchmark first, then) score predictions on Ray, write reports.

    python -m jobs.benchmark --ref REFS --pred PREDS --out OUT [--judge ...] [key=value ...]
    python -m jobs.benchmark --ref REFS --caption-model CKPT --video-root VIDEOS --out OUT
    python -m jobs.benchmark --ref REFS --pred A --pred B --judges embedded,openai:MODEL --out OUT

REFS and PREDS are FEC-Bench style files (local or ``s3://``); OUT gets ``report.json``, ``report.md``,
``items.csv``, ``tem_plot.png`` and, by default, the judge cache (``judge_cache/``), so a re-run or a
resumed run asks the judge nothing it already answered. Judge calls run in ``--workers`` Ray actors, each
with at most ``concurrency`` requests in flight (the judge's own bound by default); a transformers judge
gets a GPU per actor. The corpus metrics (CIDEr's document frequencies, TEM's means) are computed on the
driver once every item is back.

With several judges (``--judges``) or prediction files, every system is scored by every judge in turn
(:func:`run_many`): full reports under ``OUT/runs/<system>/<judge>/``, one shared judge cache, and at
``OUT`` a summary with the judge-agreement section (:mod:`evaluation.agreement`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import ray
from ray.util import ActorPool

from evaluation.data import DataError, Item, Pairing, load_records, pair
from evaluation.judges import build_judge
from evaluation.judges.base import JudgeFatalError
from evaluation.judges.cache import CachedJudge, JudgeCache
from evaluation.pipeline import (
    JUDGED_METRICS,
    EvalConfig,
    ItemResult,
    cache_uri,
    judge_items,
    prepare,
    summarize,
)
from evaluation.prompts import PromptSet
from evaluation.report import write_reports
from facetrack import storage
from facetrack.config import ConfigError, load_config

log = logging.getLogger("facetrack.jobs.benchmark")


class CaptionUnavailable(RuntimeError):
    """The benchmark cannot be captioned here: the caption job is missing or lacks its entry points."""


class JudgeWorker:
    """A Ray actor holding one judge (loaded once) and a writer of the shared judge cache."""

    def __init__(self, config: EvalConfig, cache: str | None, prompts: PromptSet | None = None) -> None:
        logging.basicConfig(level=logging.INFO)
        self.config = config
        judge = build_judge(config.judge, prompts)  # the set is read on the driver: no file needed here
        self.judge = CachedJudge(judge, JudgeCache(cache) if cache else None)

    def score(self, items: list[Item]) -> list[dict[str, Any]]:
        """Judge a chunk of items; their answers are in the cache before the results return."""
        results = judge_items(items, self.judge, self.config)
        if self.judge.cache is not None:
            self.judge.cache.flush()
        return [r.to_dict() for r in results]

    def describe(self) -> dict[str, Any]:
        return self.judge.describe()

    def finish(self) -> dict[str, dict[str, int]]:
        """Close the cache and return this actor's call counts per stage."""
        if self.judge.cache is not None:
            self.judge.cache.close()
        return self.judge.stats


def actor_options(config: EvalConfig) -> dict[str, Any]:
    """Ray resources of one judge actor: a GPU for a local model, a CPU for the embedded judge."""
    kind = config.judge.kind
    if kind == "transformers":
        return {"num_cpus": 1, "num_gpus": config.judge.transformers.num_gpus}
    if kind == "openai":
        return {"num_cpus": 0.25}  # waits on HTTP; its threads need little CPU
    return {"num_cpus": 1}


def _merge_stats(parts: Sequence[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for part in parts:
        for stage, counts in part.items():
            total = out.setdefault(stage, {"calls": 0, "hits": 0, "errors": 0})
            for key, value in counts.items():
                total[key] = total.get(key, 0) + value
    return out


def score_on_ray(
    pairing: Pairing,
    config: EvalConfig,
    out_uri: str,
    workers: int = 2,
    items_per_task: int = 8,
    prompts: PromptSet | None = None,
) -> tuple[list[ItemResult], dict[str, Any], dict[str, dict[str, int]]]:
    """Judge every paired item on Ray actors (``prompts``: the set loaded on the driver, see
    :func:`~evaluation.pipeline.prepare`; without it, it is loaded here).

    Returns:
        The results in the order of ``pairing.items``, the judge's description and the merged counts.
    """
    if prompts is None:
        config, prompts = prepare(config)
    items = list(pairing.items)
    if not items or not any(m in config.metrics for m in JUDGED_METRICS):
        judge = build_judge(config.judge, prompts)
        info = judge.describe() if hasattr(judge, "describe") else {"name": judge.name}
        return [ItemResult(id=it.id) for it in items], info, {}
    chunks = [items[i : i + items_per_task] for i in range(0, len(items), max(1, items_per_task))]
    n_actors = max(1, min(workers, len(chunks)))
    worker_cls = ray.remote(JudgeWorker).options(**actor_options(config))
    cache = cache_uri(config, out_uri)
    actors = [worker_cls.remote(config, cache, prompts) for _ in range(n_actors)]
    start = time.perf_counter()
    done: dict[str, ItemResult] = {}
    try:
        pool = ActorPool(actors)
        for rows in pool.map_unordered(lambda actor, chunk: actor.score.remote(chunk), chunks):
            for row in rows:
                result = ItemResult.from_dict(row)
                done[result.id] = result
            elapsed = time.perf_counter() - start
            log.info(
                "judged %d/%d items (%.2f items/s)", len(done), len(items), len(done) / max(elapsed, 1e-9)
            )
        info = ray.get(actors[0].describe.remote())
        stats = _merge_stats(ray.get([a.finish.remote() for a in actors]))
    finally:
        for actor in actors:
            ray.kill(actor)
    return [done[it.id] for it in items], info, stats


def run(
    pairing: Pairing, config: EvalConfig, out_uri: str, workers: int = 2, items_per_task: int = 8
) -> dict[str, Any]:
    """Score ``pairing`` on the connected Ray, write the reports under ``out_uri``, return the report."""
    return run_scored(pairing, config, out_uri, workers, items_per_task)[0]


def run_scored(
    pairing: Pairing, config: EvalConfig, out_uri: str, workers: int = 2, items_per_task: int = 8
) -> tuple[dict[str, Any], list[ItemResult]]:
    """As :func:`run`, returning the per-item results with the report."""
    start = time.perf_counter()
    config, prompts = prepare(config)
    results, info, stats = score_on_ray(pairing, config, out_uri, workers, items_per_task, prompts)
    judged = time.perf_counter() - start
    report = summarize(results, pairing, config, info, stats, timings={"judging_s": judged})
    report["timings"]["items_per_s"] = len(pairing.items) / judged if judged > 0 else None
    report["timings"]["total_s"] = time.perf_counter() - start
    report["job"] = {"workers": workers, "items_per_task": items_per_task, "ray": ray.__version__}
    write_reports(report, results, pairing, config, out_uri)
    return report, results


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def run_many(
    systems: Sequence[tuple[str, Pairing]],
    judges: Sequence[tuple[str, EvalConfig]],
    out_uri: str,
    workers: int = 2,
    items_per_task: int = 8,
) -> dict[str, Any]:
    """Score every system with every judge, then write the summary with the judge-agreement section.

    Each system and judge gets its full report under ``<out>/runs/<system>/<judge>/``; ``<out>`` gets
    ``report.json`` and ``report.md`` (:func:`evaluation.agreement.write_summary`). The judges share one
    cache (``<out>/judge_cache`` unless ``cache`` is set): its keys name the judge and its model, so
    each judge asks only what it has not answered before.
    """
    from evaluation.agreement import Run, write_summary

    runs = []
    for system, pairing in systems:
        for label, config in judges:
            if not config.cache:
                config = replace(config, cache=storage.join(out_uri, "judge_cache"))
            config = replace(config, model_name=system)
            sub = storage.join(out_uri, "runs", _slug(system), _slug(label))
            log.info("scoring %s with judge %s -> %s", system, label, sub)
            report, results = run_scored(pairing, config, sub, workers, items_per_task)
            runs.append(Run(system=system, judge=label, results=results, report=report, out=sub))
    return write_summary(runs, out_uri)


def system_names(uris: Sequence[str]) -> list[str]:
    """Systems named by their prediction files' stems (``a/preds.jsonl`` -> ``preds``), made unique."""
    names: list[str] = []
    for uri in uris:
        stem = uri.rstrip("/").rsplit("/", 1)[-1]
        for ext in (".gz", ".jsonl", ".json"):
            stem = stem.removesuffix(ext)
        name, k = stem or "preds", 2
        while name in names:
            name, k = f"{stem}-{k}", k + 1
        names.append(name)
    return names


def print_summary(summary: dict[str, Any], out: str) -> None:
    """One line per system and judge, then where the summary is."""
    for r in summary["runs"]:
        cells = "  ".join(f"{c}={v:.3f}" for c, v in r["table"].items() if v is not None)
        print(f"{r['system']} / {r['judge']}: {cells}")
    print(f"reports: {out}/report.md, report.json (agreement), runs/<system>/<judge>/")


def caption_benchmark(
    records: Sequence[dict[str, Any]],
    model: str,
    out_uri: str,
    video_root: str | None = None,
    overrides: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Caption the benchmark's videos with ``model`` through the caption job; returns its output rows.

    The records' ``{"id", "video"}`` become a manifest under ``<out>/captions/``, the caption job
    (``jobs.caption``: ``CaptionJobConfig`` and ``run(config)``) writes its rows there (a re-run skips
    the videos already captioned), and the rows are read back: ``{"id", "caption", "error", ...}``.

    Raises:
        CaptionUnavailable: the caption job cannot be imported or lacks those entry points.
    """
    try:
        caption_job = importlib.import_module("jobs.caption")
    except ImportError as exc:
        raise CaptionUnavailable(
            f"captioning the benchmark needs the caption job (jobs.caption), which cannot be loaded: {exc}"
        ) from exc
    missing = [name for name in ("CaptionJobConfig", "run") if not hasattr(caption_job, name)]
    if missing:
        raise CaptionUnavailable(f"jobs.caption has no {', '.join(missing)}; pass --pred instead")
    from facetrack.shards import read_rows

    caption_out = storage.join(out_uri, "captions")
    manifest = storage.join(caption_out, "benchmark_manifest.json")
    rows = [{"id": str(r["id"]), "video": str(r.get("video") or "")} for r in records]
    storage.write_text(manifest, json.dumps(rows, indent=1) + "\n")
    base: dict[str, Any] = {"input": manifest, "out": caption_out, "captioner": {"model": model}}
    if video_root:
        base["video_root"] = video_root
    cfg = load_config(caption_job.CaptionJobConfig, None, overrides, base=base)
    caption_job.run(cfg)
    return read_rows(caption_out)


def _connect(address: str | None, num_cpus: int | None) -> None:
    from jobs.ray_session import connect

    connect(address, num_cpus)


def _pred_uris(values: Sequence[str] | str | None) -> list[str]:
    if isinstance(values, str):
        values = [values]
    return [u.strip() for v in values or () for u in v.split(",") if u.strip()]


def run_cli(args: argparse.Namespace) -> int:
    """``facetrack benchmark`` / ``python -m jobs.benchmark``: parse, connect to Ray, run, print a summary."""
    from evaluation.judges import parse_judges
    from evaluation.results import ALL_METRICS
    from facetrack.commands.tem import eval_config_from_args, print_table

    pred_uris = _pred_uris(args.pred)
    if bool(pred_uris) == bool(args.caption_model):
        print("benchmark: give exactly one of --pred and --caption-model", file=sys.stderr)
        return 2
    try:
        config = eval_config_from_args(args, ALL_METRICS)
        judges = [("", config)]
        if getattr(args, "judges", None):
            judges = [
                (label, replace(config, judge=jc)) for label, jc in parse_judges(args.judges, config.judge)
            ]
        references = load_records(args.ref)
        predictions = [load_records(u) for u in pred_uris]
    except (ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2
    _connect(args.address, args.num_cpus)
    names = system_names(pred_uris)
    if not predictions:
        try:
            predictions = [
                caption_benchmark(
                    references, args.caption_model, args.out, args.video_root, args.caption_override
                )
            ]
        except CaptionUnavailable as exc:
            print(f"benchmark: {exc}", file=sys.stderr)
            return 2
        names = [config.model_name]
    try:
        pairings = [pair(p, references) for p in predictions]
    except DataError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2
    workers, per_task = max(1, args.workers), max(1, args.items_per_task)
    try:
        if len(pairings) == 1 and len(judges) == 1:
            report = run(pairings[0], judges[0][1], args.out, workers=workers, items_per_task=per_task)
        else:
            systems = list(zip(names, pairings))
            labels = [(label or config.judge.kind, c) for label, c in judges]
            summary = run_many(systems, labels, args.out, workers=workers, items_per_task=per_task)
    except (JudgeFatalError, ray.exceptions.RayTaskError) as exc:
        cause = getattr(exc, "cause", exc)
        if not isinstance(cause, JudgeFatalError):
            raise
        print(f"benchmark: the judge refuses every request, stopped: {cause}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as exc:  # e.g. a prompt set that lacks a stage
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2
    if len(pairings) == 1 and len(judges) == 1:
        print_table(report, args.out.rstrip("/"))
    else:
        print_summary(summary, args.out.rstrip("/"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from jobs import benchmark_args as command

    parser = argparse.ArgumentParser(
        prog="python -m jobs.benchmark",
        description=command.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser().parse_args(argv))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
