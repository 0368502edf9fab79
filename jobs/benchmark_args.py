"""Score a benchmark as a Ray job: TEM, AutoDQ, CIDEr, ROUGE-L and the VideoChatGPT scores.

Reads references and predictions (FEC-Bench format: JSON list or JSON lines of {"id", "video",
"caption"}; local paths or s3:// URIs), fans the judge calls out over Ray actors (each with bounded
concurrency, all sharing one judge cache) and writes report.json, report.md, items.csv and tem_plot.png
to --out (a folder or an s3:// prefix). References without a prediction are listed by id.

With --judges A,B[,C] (and/or several --pred files) every system is scored by every judge: each run's
full report goes to OUT/runs/<system>/<judge>/, and OUT/report.md and report.json hold one row per
system and judge plus a judge-agreement section: Pearson and Spearman correlation of every per-item
metric, Cohen's kappa of the TEM relation labels on the event pairs both judges labelled and, with
several systems, Kendall's tau of the judges' rankings of the systems. The judges share OUT/judge_cache
(its keys name the judge and its model).

With --caption-model instead of --pred, the benchmark's videos are first captioned by the caption job
(--video-root says where the benchmark's relative video paths live), then scored.

Examples:
  facetrack benchmark --ref s3://bench/fec_bench.json --pred s3://runs/r1/preds.jsonl --out s3://runs/r1/eval
  facetrack benchmark --ref fec_bench.json --pred preds.json --out eval/ --judge openai \\
      --judge-url http://vllm:8000/v1 --judge-model Qwen/Qwen2.5-72B-Instruct --workers 4 --concurrency 16
  facetrack benchmark --ref fec_bench.json --pred a.json --pred b.json --out eval/ \\
      --judges embedded,openai:gpt-4o-mini --metrics tem,autodq
  facetrack benchmark --ref fec_bench.json --caption-model ckpt/ --video-root s3://videos/ --out eval/
"""

from __future__ import annotations

import argparse

from evaluation.results import ALL_METRICS
from facetrack.commands.tem import add_eval_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pred",
        action="append",
        help="predicted captions (JSON/JSONL with id and caption); repeat it or give a comma list to "
        "score several systems, each named by its file's stem",
    )
    add_eval_arguments(parser, ALL_METRICS)
    parser.add_argument(
        "--judges",
        metavar="A,B[,C]",
        help="score with several judges and compare them: comma-separated KIND or KIND:MODEL "
        "(KIND: embedded, openai, transformers, or embedded-nolexicon, the embedded judge with its "
        "lexicon off, an ablation; MODEL: everything after the first colon), e.g. "
        "embedded,openai:gpt-4o-mini,transformers:Qwen/Qwen2.5-7B-Instruct. --judge-url, --prompts "
        "and judge.* overrides apply to every judge; replaces --judge/--judge-model",
    )
    parser.add_argument(
        "--caption-model", help="caption the benchmark with this checkpoint first (instead of --pred)"
    )
    parser.add_argument("--video-root", help="folder or s3:// prefix under which the benchmark's videos are")
    parser.add_argument(
        "--caption-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a caption job setting, e.g. batch_size=4 (repeatable)",
    )
    parser.add_argument("--workers", type=int, default=2, help="judge actors (default 2)")
    parser.add_argument("--items-per-task", type=int, default=8, help="items sent to an actor at a time")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray when one is started")
