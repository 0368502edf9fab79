"""Temporal Event Matching (TEM) of predicted captions against reference captions, with a judge.

Reads predictions and references (FEC-Bench format: a JSON list or JSON lines of {"id", "video",
"caption"}; local paths or s3:// URIs), scores them in this process and writes report.json, report.md,
items.csv and tem_plot.png to --out. Judge answers are cached (by default under OUT/judge_cache), so
running the same command again costs no judge call.

Judges: "embedded" (default; offline and deterministic, a sentence model plus rules, an approximation of
an LLM judge), "openai" (any OpenAI-compatible endpoint: --judge-url and --judge-model, API key from the
environment variable judge.openai.api_key_env, OPENAI_API_KEY by default) and "transformers" (a local
model: --judge-model PATH_OR_HUB_ID).

Examples:
  facetrack tem --pred preds.json --ref fec_bench.json --out eval/
  facetrack tem --pred preds.json --ref fec_bench.json --out eval/ \\
      --judge openai --judge-url http://localhost:8000/v1 --judge-model Qwen/Qwen2.5-7B-Instruct
  facetrack tem --pred preds.json --ref fec_bench.json --out eval/ --metrics all tem.opposite=penalize
  facetrack tem --pred preds.json --ref fec_bench.json --out eval/ --judge openai \\
      --judge-model gpt-4o-mini --prompts my_prompts.yaml

Every report names the prompt set and its hash; --prompts takes your own set (a YAML/JSON file or a folder,
schema in evaluation/prompts/README.md), e.g. to reproduce published numbers with the prompts they used.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_METRICS = ("tem",)


def add_eval_arguments(parser: argparse.ArgumentParser, default_metrics: tuple[str, ...]) -> None:
    """The options shared by ``facetrack tem`` and ``facetrack benchmark``."""
    parser.add_argument(
        "--ref", required=True, help="reference captions (FEC-Bench JSON/JSONL; path or s3://)"
    )
    parser.add_argument("--out", required=True, help="output folder or s3:// prefix for the reports")
    parser.add_argument("--config", help="YAML file of evaluation settings (EvalConfig)")
    parser.add_argument(
        "--metrics",
        help="comma-separated: tem, autodq, cider, rouge_l, vcgpt, or all "
        f"(default: {','.join(default_metrics)})",
    )
    parser.add_argument(
        "--judge", choices=["embedded", "openai", "transformers"], help="judge kind (default embedded)"
    )
    parser.add_argument(
        "--judge-url", help="base URL of an OpenAI-compatible endpoint, e.g. http://host:8000/v1"
    )
    parser.add_argument("--judge-model", help="model name at the endpoint, or a transformers model path/id")
    parser.add_argument(
        "--prompts",
        metavar="FILE",
        help="the LLM judge's prompt set: a YAML/JSON file or a folder like evaluation/prompts/ "
        "(schema: evaluation/prompts/README.md; default: the shipped set)",
    )
    parser.add_argument(
        "--cache", help="judge cache folder or s3:// prefix ('off' disables; default OUT/judge_cache)"
    )
    parser.add_argument("--model-name", help="name of the evaluated model in the report table")
    parser.add_argument(
        "--compare-paper", action="store_true", help="add the paper's published rows to table and plot"
    )
    parser.add_argument(
        "--concurrency", type=int, help="judge requests in flight (default: the judge's bound)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. tem.opposite=penalize"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="predicted captions (JSON/JSONL with id and caption)")
    add_eval_arguments(parser, DEFAULT_METRICS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def eval_config_from_args(args: argparse.Namespace, default_metrics: tuple[str, ...]) -> Any:
    """Build the EvalConfig: defaults < --config file < command-line flags < key=value overrides.

    Raises:
        ConfigError: unknown key or wrong type, naming where it came from.
    """
    from evaluation.pipeline import EvalConfig
    from evaluation.results import ALL_METRICS
    from facetrack.config import load_config, read_yaml

    data: dict[str, Any] = {"metrics": list(default_metrics)}
    if args.config:
        load_config(EvalConfig, args.config)  # errors name the file
        data = _merge(data, read_yaml(args.config))
    judge: dict[str, Any] = {}
    if args.judge:
        judge["kind"] = args.judge
    kind = args.judge or (data.get("judge") or {}).get("kind", "embedded")
    if args.judge_url:
        judge["openai"] = {"base_url": args.judge_url}
        if not args.judge:
            judge["kind"] = kind = "openai"
    if args.judge_model:
        section = "transformers" if kind == "transformers" else "openai"
        judge.setdefault(section, {})["model"] = args.judge_model
    if getattr(args, "prompts", None):
        judge["prompts"] = args.prompts
    if judge:
        data = _merge(data, {"judge": judge})
    if args.metrics:
        names = [m.strip() for m in args.metrics.split(",") if m.strip()]
        data["metrics"] = list(ALL_METRICS) if names == ["all"] else names
    for flag, key in (("cache", "cache"), ("model_name", "model_name"), ("concurrency", "concurrency")):
        value = getattr(args, flag, None)
        if value is not None:
            data[key] = value
    if args.compare_paper:
        data["compare_paper"] = True
    return load_config(EvalConfig, None, args.overrides, base=data)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def print_table(report: dict[str, Any], out: str) -> None:
    """A short summary on stdout: the table row, what was not scored, judge calls, where the files are."""
    from evaluation.published import COLUMNS

    row = report["table"]
    judge = report["judge"]
    print(
        f"\njudge: {judge.get('name')}"
        + ("  (approximate embedded judge)" if judge.get("approximate") else "")
    )
    cells = [(c, row.get(c)) for c in COLUMNS if row.get(c) is not None]
    print("  ".join(f"{c}={v:.3f}" for c, v in cells))
    tem = report["metrics"].get("tem")
    if tem:
        print(
            f"TEM {tem['tem'] if tem['tem'] is None else round(tem['tem'], 4)}  "
            f"P={_r(tem['precision'])} R={_r(tem['recall'])} mean item F1={_r(tem['mean_item_f1'])}  "
            f"scored {tem['n_scored']}/{tem['n_items']} (empty pred {tem['n_empty_pred']}, "
            f"empty ref {tem['n_empty_ref']}, failed {tem['n_failed']})"
        )
    counts = report["counts"]
    if counts["missing"] or counts["failed"]:
        print(f"no usable prediction for {counts['missing'] + counts['failed']} reference(s): see report.md")
    calls = report["judge_calls"]
    print(
        f"judge calls: {calls['calls']} ({calls['calls_per_item']:.2f}/item), cache hits: {calls['hits']}, "
        f"errors: {calls['errors']}"
    )
    print(f"reports: {out}/report.md, report.json, items.csv, tem_plot.png")


def _r(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    from evaluation.data import DataError, load_records, pair
    from evaluation.judges.base import JudgeFatalError
    from evaluation.pipeline import evaluate
    from facetrack.config import ConfigError

    try:
        config = eval_config_from_args(args, DEFAULT_METRICS)
        pairing = pair(load_records(args.pred), load_records(args.ref))
    except (ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"facetrack tem: {exc}", file=sys.stderr)
        return 2
    if not pairing.items and config.missing == "exclude":
        print(
            f"facetrack tem: no prediction matches a reference id ({pairing.n_predictions} predictions, "
            f"{pairing.n_references} references)",
            file=sys.stderr,
        )
        return 2
    try:
        report = evaluate(pairing, config, args.out, progress=not args.no_progress)
    except JudgeFatalError as exc:
        print(f"facetrack tem: the judge refuses every request, stopped: {exc}", file=sys.stderr)
        return 3
    except (ValueError, ImportError) as exc:
        print(f"facetrack tem: {exc}", file=sys.stderr)
        return 2
    print_table(report, args.out.rstrip("/"))
    return 0
