"""``facetrack benchmark``: the benchmark job (jobs/benchmark.py); its help and options are the job's own
(jobs/benchmark_args.py, which does not import Ray)."""

from __future__ import annotations

import argparse

from jobs import benchmark_args

__doc__ = benchmark_args.__doc__  # noqa: A001 - the command's --help is the job's description


def add_arguments(parser: argparse.ArgumentParser) -> None:
    benchmark_args.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    # The job imports Ray: it is loaded only when this command runs.
    from jobs.benchmark import run_cli

    return run_cli(args)
