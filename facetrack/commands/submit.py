"""Submit a facetrack job (caption, benchmark, finetune) to a Ray cluster as a Ray job.

Runs the real `ray job submit` with the project folder as the job's working dir, so the cluster runs
`python -m jobs.<JOB> ARGS...` there. Token authentication stays on: the Ray CLI reads the token from
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (set RAY_AUTH_MODE=token on the client).

Examples:
  facetrack submit --address http://HEAD:8265 caption s3://archive/videos/ --out s3://archive/captions/
  facetrack submit --no-wait benchmark --pred preds.json --ref fec_bench.json --out s3://bucket/report/
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

JOBS = ("caption", "benchmark", "finetune")


def project_dir() -> Path:
    """The folder holding ``jobs/`` and ``facetrack/``: the source checkout, else the current folder."""
    here = Path(__file__).resolve().parents[2]
    if (here / "jobs").is_dir() and (here / "pyproject.toml").is_file():
        return here
    return Path.cwd()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"),
        help="the cluster's job server (dashboard) address; default RAY_ADDRESS or http://127.0.0.1:8265",
    )
    parser.add_argument(
        "--working-dir", help="folder uploaded as the job's working dir (default: the project)"
    )
    parser.add_argument("--runtime-env", help="runtime_env YAML (for example cluster/runtime_env.yaml)")
    parser.add_argument(
        "--submission-id", help="a stable job id (resubmitting the same id is refused by Ray)"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="return once submitted instead of following logs"
    )
    parser.add_argument(
        "--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the driver"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the `ray job submit` command and stop")
    parser.add_argument("job", choices=JOBS, help="which job to run")
    parser.add_argument("job_args", nargs=argparse.REMAINDER, help="the job's own arguments")


def build_command(args: argparse.Namespace) -> list[str]:
    """The `ray job submit` command line for ``args``."""
    ray_cli = shutil.which("ray")
    if ray_cli is None:
        raise SystemExit("facetrack submit needs the Ray CLI: pip install 'facetrack[ray]'")
    working_dir = Path(args.working_dir) if args.working_dir else project_dir()
    if not (working_dir / "jobs" / f"{args.job}.py").is_file():
        raise SystemExit(
            f"{working_dir} has no jobs/{args.job}.py: pass --working-dir with the project folder"
        )
    cmd = [ray_cli, "job", "submit", "--address", args.address, "--working-dir", str(working_dir)]
    if args.runtime_env:
        cmd += ["--runtime-env", args.runtime_env]
    else:
        env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}, "excludes": [".git", "out", "samples"]}
        for name in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE"):
            if os.environ.get(name):
                env["env_vars"][name] = os.environ[name]
        cmd += ["--runtime-env-json", json.dumps(env)]
    if args.submission_id:
        cmd += ["--submission-id", args.submission_id]
    if args.no_wait:
        cmd.append("--no-wait")
    if args.entrypoint_num_cpus is not None:
        cmd += ["--entrypoint-num-cpus", str(args.entrypoint_num_cpus)]
    job_args = [a for a in args.job_args if a != "--"]
    return [*cmd, "--", "python", "-m", f"jobs.{args.job}", *job_args]


def run(args: argparse.Namespace) -> int:
    cmd = build_command(args)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")
    print("+", " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd, env=env)
