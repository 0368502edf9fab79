"""The ``facetrack`` command line: one subcommand per job, each implemented in ``facetrack.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# name -> (module under facetrack.commands, one-line help). Modules are imported only when their
# subcommand runs, so ``facetrack --help`` stays fast and needs no optional dependency.
COMMANDS: dict[str, tuple[str, str]] = {
    "caption": ("caption", "caption videos (folder, s3:// prefix or manifest) with FaceTrack-MM on Ray"),
    "track": ("track", "run face tracking on videos; write the tracks as JSON and a contact sheet"),
    "inspect": ("inspect", "show what the model sees for one video: prompt, ids, frames, preprocessing"),
    "finetune": ("finetune", "LoRA instruction-tuning on FDA-format data with Ray Train + DeepSpeed"),
    "export": ("export", "package or merge a fine-tuned adapter into a checkpoint the captioner loads"),
    "benchmark": (
        "benchmark",
        "score predictions against a benchmark (TEM, AutoDQ, CIDEr, ...) as a Ray job",
    ),
    "tem": ("tem", "Temporal Event Matching of predictions against references, with a judge"),
    "submit": ("submit", "submit a facetrack job to a Ray cluster with `ray job submit`"),
    "samples": ("samples", "compose sample videos from face images that ship in packages"),
    "tiny-model": ("tiny_model", "write a tiny random FaceTrack-MM checkpoint for offline runs and tests"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facetrack",
        description="FaceTrack-MM: caption what faces do in video, at archive scale, on Ray.",
        epilog="Run `facetrack COMMAND --help` for the options of one command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _load(name: str):
    module_name, _ = COMMANDS[name]
    try:
        return importlib.import_module(f"facetrack.commands.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"facetrack.commands.{module_name}":
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    # Find the subcommand first, then give the rest to that command's own parser.
    known, _ = top.parse_known_args(argv)
    if known.command is None:
        top.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if known.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = _load(known.command)
    if module is None:
        print(f"facetrack {known.command}: not implemented in this version yet.", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog=f"facetrack {known.command}",
        description=(module.__doc__ or COMMANDS[known.command][1]).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    idx = argv.index(known.command)
    rest = argv[idx + 1 :]
    try:
        # Options and key=value overrides may come in any order.
        args = parser.parse_intermixed_args(rest)
    except TypeError:  # a command that takes a remainder of arguments (submit) parses them as given
        args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
