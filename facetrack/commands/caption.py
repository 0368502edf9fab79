"""Caption videos with FaceTrack-MM: a folder, an s3:// prefix, a JSON/JSONL manifest or one video.

Runs the caption job (jobs/caption.py) on an embedded local Ray, or on a cluster with --address or
RAY_ADDRESS: decoding and face tracking on CPU workers, the model's encoders and batched generation on an
actor pool (GPU when the cluster has one). OUT gets rows/part-*.jsonl with one row per video
({id, video, caption, model, prompt, main_track, timings, error}), sheets/<id>.png contact sheets and
summary.json. Running the same command again skips every video already in OUT.

Settings: --config FILE (YAML of CaptionJobConfig) and key=value overrides, for example batch_size=4,
actors=2, captioner.max_new_tokens=256, track.faces.backend=builtin, format=parquet.

Examples:
  facetrack tiny-model tiny-model/ && facetrack caption clip.mp4 --model tiny-model/  # offline; noise
  facetrack caption videos/ --out captions/ --model DAMO-NLP-SG/VideoLLaMA2-7B-16F
  facetrack caption s3://archive/videos/ --out s3://archive/captions/ --address auto actors=4
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jobs.caption import build_parser

    build_parser(parser)


def run(args: argparse.Namespace) -> int:
    from jobs.caption import run_cli

    return run_cli(args)
