"""Export a fine-tuned FaceTrack-MM in a format the captioner loads: the LoRA adapter or merged weights.

SOURCE is a fine-tuning run folder (<storage_path>/<name>; its latest checkpoint is taken) or one of its
checkpoint_* folders, local or s3://. OUT is a new local folder; give it to `facetrack caption` as the
model (for an adapter export the base model must stay where the run read it, or pass --base).

Examples:
  facetrack export out/finetune/tiny-cpu exported/
  facetrack export s3://bucket/finetune/facetrack-7b-lora exported-7b/ --merge
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="run folder or checkpoint folder (local or s3://)")
    parser.add_argument("out", help="new local output folder")
    parser.add_argument("--base", help="base model (default: the one the run trained from)")
    parser.add_argument(
        "--merge", action="store_true", help="merge the adapter into the weights (a standalone checkpoint)"
    )


def run(args: argparse.Namespace) -> int:
    from facetrack.model.export import ExportError, export_checkpoint
    from facetrack.model.loading import CheckpointError

    try:
        info = export_checkpoint(args.source, args.out, base=args.base, merge=args.merge)
    except (ExportError, CheckpointError, FileNotFoundError) as exc:
        print(f"facetrack export: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2))
    return 0
