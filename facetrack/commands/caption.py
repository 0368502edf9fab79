"""Caption videos with FaceTrack-MM on this machine: face tracking, then the model, one JSONL row per video.

This is the local path (no Ray): each video goes through the face tracking stage (sampling, detection,
tracking, main character, crops), then batches of clips go through the captioner. Rows have the fields
of CaptionRow: id, video, caption, model, prompt, main_track, timings, error. A video that fails gets a
row with its error and the run goes on; the exit status is 1 when any video failed.

Inputs are video files, folders, s3:// prefixes or JSON/JSONL manifests. Settings come from a YAML file
(--config) with sections `model` (CaptionerConfig) and `track` (FaceTrackConfig: video, faces, track,
select) and from key=value overrides such as model.max_new_tokens=128 or track.faces.backend=builtin
(among the inputs, or after --set).
The model frames sampled per video follow the checkpoint's num_frames (or model.num_frames).

Examples:
  facetrack tiny-model models/tiny
  facetrack caption --model models/tiny clip.mp4
  facetrack caption --model DAMO-NLP-SG/VideoLLaMA2-7B-16F videos/ --out caps.jsonl --set model.batch_size=4
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from facetrack.caption import CaptionerConfig
from facetrack.faces.stage import FaceTrackConfig

logger = logging.getLogger(__name__)

_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*=")


@dataclass
class LocalCaptionConfig:
    """Settings of ``facetrack caption`` (local run): the captioner and the face tracking stage."""

    model: CaptionerConfig = field(default_factory=CaptionerConfig)
    track: FaceTrackConfig = field(default_factory=FaceTrackConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="VIDEO",
        help="videos, folders, s3:// prefixes or manifests; key=value overrides",
    )
    parser.add_argument("--model", help="checkpoint folder, hub id or s3:// prefix (model.model)")
    parser.add_argument("--out", help="write the rows as JSONL to this file or s3:// URI (default: stdout)")
    parser.add_argument("--config", help="YAML file with `model` and `track` sections")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)"
    )
    parser.add_argument("--batch-size", type=int, help="clips per generate call (model.batch_size)")
    parser.add_argument("--max-new-tokens", type=int, help="caption length limit (model.max_new_tokens)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="model.device")
    parser.add_argument("--backend", choices=["auto", "insightface", "builtin"], help="track.faces.backend")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _overrides(args: argparse.Namespace, given: list[str]) -> list[str]:
    out = list(given)
    for flag, key in (
        ("model", "model.model"),
        ("batch_size", "model.batch_size"),
        ("max_new_tokens", "model.max_new_tokens"),
        ("device", "model.device"),
        ("backend", "track.faces.backend"),
    ):
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def _read_videos(sources: list[str]) -> tuple[list[Any], list[dict[str, Any]]]:
    from facetrack.manifest import read_inputs

    videos, errors, seen = [], [], set()
    for source in sources:
        try:
            found = read_inputs(source)
        except (FileNotFoundError, ValueError, OSError) as exc:
            errors.append({"id": source, "video": source, "error": str(exc)})
            continue
        for video in found.videos:
            if video.id in seen:
                logger.warning("skipping %s: a video with id %s is already in the run", video.uri, video.id)
                continue
            seen.add(video.id)
            videos.append(video)
        errors.extend({"id": e.id, "video": e.video, "error": e.error} for e in found.errors)
    return videos, errors


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facetrack import storage
    from facetrack.caption import Captioner
    from facetrack.config import ConfigError, load_config
    from facetrack.faces.stage import FaceTrackStage
    from facetrack.model.loading import CheckpointError
    from facetrack.types import CaptionRow

    sources = [v for v in args.inputs if not _OVERRIDE.match(v)]
    given = [v for v in args.inputs if _OVERRIDE.match(v)] + list(args.set)
    try:
        config = load_config(LocalCaptionConfig, args.config, _overrides(args, given))
    except ConfigError as exc:
        print(f"facetrack caption: {exc}", file=sys.stderr)
        return 2
    if not config.model.model:
        print("facetrack caption: no model; give --model PATH (or model.model=...)", file=sys.stderr)
        return 2
    if not sources:
        print("facetrack caption: no input videos", file=sys.stderr)
        return 2
    videos, input_errors = _read_videos(sources)

    captioner = Captioner(config.model)
    try:
        captioner.setup()
    except (CheckpointError, ImportError, RuntimeError) as exc:
        print(f"facetrack caption: cannot load the model: {exc}", file=sys.stderr)
        return 2
    config.track.video.num_frames = captioner.num_frames
    stage = FaceTrackStage(config.track)
    try:
        stage.setup()
    except Exception as exc:  # noqa: BLE001 - any failure to load the face models stops the run
        print(f"facetrack caption: cannot load the face models: {exc}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    rows: list[CaptionRow] = [
        CaptionRow(
            id=e["id"],
            video=e["video"],
            model=captioner.model_name,
            prompt=captioner.prompt,
            error=e["error"],
        )
        for e in input_errors
    ]
    bar = tqdm(total=len(videos), desc="caption", unit="video", disable=args.quiet)
    size = config.model.batch_size
    for start in range(0, len(videos), size):
        chunk = videos[start : start + size]
        tracked = [stage.process(video) for video in chunk]
        ready = [r for r in tracked if r.error is None and r.model_frames is not None]
        captions = {c.id: c for c in captioner.caption([r.to_clip() for r in ready])}
        for result in tracked:
            caption = captions.get(result.video.id)
            timings = {"track_s": round(result.timings.get("total", 0.0), 4)}
            if caption is not None:
                timings["caption_s"] = round(caption.seconds, 4)
            error = result.error or (caption.error if caption is not None else None)
            rows.append(
                CaptionRow(
                    id=result.video.id,
                    video=result.video.uri,
                    caption=caption.caption if caption is not None else None,
                    model=captioner.model_name,
                    prompt=captioner.prompt,
                    main_track=result.main_track_summary(),
                    timings=timings,
                    error=error,
                )
            )
            if error:
                tqdm.write(f"error: {result.video.id}: {error}", file=sys.stderr)
        bar.update(len(chunk))
    bar.close()

    text = "".join(json.dumps(row.to_dict(), ensure_ascii=False) + "\n" for row in rows)
    if args.out:
        storage.write_text(args.out, text)
    else:
        sys.stdout.write(text)
    failed = sum(1 for row in rows if row.error)
    print(
        f"captioned {len(rows) - failed} of {len(rows)} video(s) with {captioner.model_name} in "
        f"{time.perf_counter() - started:.1f}s ({stage.counters['no_face']} without a face)"
        + (f" -> {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0
