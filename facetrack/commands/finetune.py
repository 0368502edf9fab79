"""LoRA fine-tuning of FaceTrack-MM on FDA-format data: Ray Data preprocessing, Ray Train + DeepSpeed.

Runs the Ray job `python -m jobs.finetune` on this machine (an embedded Ray, or the cluster named by
RAY_ADDRESS); on a cluster, submit it with `facetrack submit finetune ...`. Settings come from a YAML file
(jobs/configs/finetune_*.yaml) and key=value overrides. Running again with the same name and storage_path
resumes from the latest checkpoint.

Examples:
  facetrack tiny-model tiny-model && facetrack finetune --make-demo-data samples
  facetrack finetune --config jobs/configs/finetune_tiny_cpu.yaml
  facetrack finetune --config my.yaml --num-workers 8 --gpu train.lr=1.0e-4 name=run2
  facetrack finetune --config my.yaml --preprocess-only
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The fine-tuning job's options (``python -m jobs.finetune`` takes the same)."""
    parser.add_argument("--config", help="YAML config (see jobs/configs/finetune_*.yaml)")
    parser.add_argument("--num-workers", type=int, help="training workers (scaling.num_workers)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (scaling.use_gpu=true)")
    parser.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (scaling.cpus_per_worker)")
    parser.add_argument("--preprocess-only", action="store_true", help="track and cache the clips, then stop")
    parser.add_argument(
        "--make-demo-data",
        metavar="DIR",
        help="compose a few clips from packaged face photos, write DIR/train.json (FDA records) and stop",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1.0e-4 name=run2"
    )


def job_argv(args: argparse.Namespace) -> list[str]:
    """The command line of ``python -m jobs.finetune`` for parsed ``args``."""
    argv: list[str] = []
    if args.config:
        argv += ["--config", args.config]
    if args.num_workers is not None:
        argv += ["--num-workers", str(args.num_workers)]
    if args.gpu:
        argv.append("--gpu")
    if args.cpus_per_worker is not None:
        argv += ["--cpus-per-worker", str(args.cpus_per_worker)]
    if args.preprocess_only:
        argv.append("--preprocess-only")
    return argv + list(args.overrides)


def make_demo_data(out_dir: str) -> int:
    from facetrack.data import write_demo_dataset

    print(write_demo_dataset(out_dir))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.make_demo_data:
        return make_demo_data(args.make_demo_data)
    # The job lives in jobs/ (the only package that imports Ray): run it as its own process.
    cmd = [sys.executable, "-m", "jobs.finetune", *job_argv(args)]
    return subprocess.call(cmd, env=dict(os.environ))
