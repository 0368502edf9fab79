"""Submit a facetrack job (caption, benchmark, finetune) to a Ray cluster as a Ray job.

Runs the real `ray job submit` with the project folder as the job's working dir, so the cluster runs
`python -m jobs.<JOB> ARGS...` there. Token authentication stays on: the Ray CLI reads the token from
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (never from the command line; RAY_AUTH_MODE=token
is set for it).

Paths the cluster would not see are refused before anything is submitted: local absolute paths, relative
paths outside the working dir or left out of its upload (git-ignored), and local outputs (they would be
written into the job's temporary working dir). Use storage URIs (s3://...), or --local-paths when the
cluster's nodes share this machine's file system. AWS_ENDPOINT_URL, AWS_REGION, AWS_DEFAULT_REGION and
HF_HUB_OFFLINE are passed on to the job, also with --runtime-env.

Examples:
  facetrack submit --address http://HEAD:8265 caption s3://archive/videos/ --out s3://archive/captions/
  facetrack submit --no-wait benchmark --pred preds.json --ref fec_bench.json --out s3://bucket/report/
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

JOBS = ("caption", "benchmark", "finetune")
PASS_THROUGH = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE")
DEFAULT_EXCLUDES = [".git", "out", "samples", "tiny-model"]
OUTPUT_OPTIONS = ("--out", "--output", "--output-dir")


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
    parser.add_argument(
        "--local-paths",
        action="store_true",
        help="allow local paths: the cluster's nodes share this machine's file system (a local head)",
    )
    parser.add_argument("job", choices=JOBS, help="which job to run")
    parser.add_argument("job_args", nargs=argparse.REMAINDER, help="the job's own arguments")


def runtime_env(path: str | None) -> dict:
    """The job's runtime env: ``path``'s YAML (or the defaults) plus this shell's pass-through variables.

    The working dir is passed separately (``--working-dir``), so a ``working_dir`` in the file is dropped.
    A variable the file sets itself keeps the file's value.
    """
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(f"{path}: a runtime env is a YAML mapping")
        env = {k: v for k, v in loaded.items() if k != "working_dir"}
    else:
        env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}, "excludes": list(DEFAULT_EXCLUDES)}
    env_vars = {str(k): str(v) for k, v in (env.get("env_vars") or {}).items()}
    for name in PASS_THROUGH:
        if os.environ.get(name) and name not in env_vars:
            env_vars[name] = os.environ[name]
    env["env_vars"] = env_vars
    return env


def _is_uri(value: str) -> bool:
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme.isalnum()


def _git_ignored(path: Path, working_dir: Path, is_dir: bool) -> bool:
    if shutil.which("git") is None:
        return False
    relative = path.relative_to(working_dir).as_posix() + ("/" if is_dir else "")
    done = subprocess.run(
        ["git", "-C", str(working_dir), "check-ignore", "-q", "--no-index", relative],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0


def check_paths(job_args: list[str], working_dir: Path) -> None:
    """Refuse job arguments naming files the cluster will not have (see the module docstring)."""
    problems = []
    root = working_dir.resolve()
    for i, value in enumerate(job_args):
        if value.startswith("-") or _is_uri(value) or ("=" in value and not value.startswith(("/", "."))):
            continue
        option = job_args[i - 1] if i else ""
        local = Path(os.path.expanduser(value))
        if value.startswith(("/", "~")):
            problems.append(f"{value}: a local path; the cluster's nodes do not have it")
        elif option in OUTPUT_OPTIONS:
            problems.append(f"{value}: a local output would be written into the job's temporary working dir")
        else:
            resolved = local.resolve()
            if not resolved.is_relative_to(root):
                problems.append(f"{value}: outside the working dir {working_dir}, so it is not uploaded")
            elif _git_ignored(resolved, root, value.endswith("/") or resolved.is_dir()):
                problems.append(f"{value}: git-ignored, so the working-dir upload leaves it out")
    if problems:
        raise SystemExit(
            "facetrack submit: these paths will not exist on the cluster:\n  "
            + "\n  ".join(problems)
            + "\nUse storage URIs (s3://...) for inputs, outputs and models, or --local-paths when the "
            "cluster's nodes share this file system."
        )


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
    job_args = [a for a in args.job_args if a != "--"]
    if not getattr(args, "local_paths", False):
        check_paths(job_args, working_dir)
    cmd = [ray_cli, "job", "submit", "--address", args.address, "--working-dir", str(working_dir)]
    cmd += ["--runtime-env-json", json.dumps(runtime_env(args.runtime_env), sort_keys=True)]
    if args.submission_id:
        cmd += ["--submission-id", args.submission_id]
    if args.no_wait:
        cmd.append("--no-wait")
    if args.entrypoint_num_cpus is not None:
        cmd += ["--entrypoint-num-cpus", str(args.entrypoint_num_cpus)]
    return [*cmd, "--", "python", "-m", f"jobs.{args.job}", *job_args]


def run(args: argparse.Namespace) -> int:
    cmd = build_command(args)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")
    print("+", shlex.join(cmd), file=sys.stderr)
    return subprocess.call(cmd, env=env)
