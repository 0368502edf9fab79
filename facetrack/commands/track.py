"""Run face tracking on videos; write each one's tracks as JSON and a contact sheet PNG.

Inputs are video files, folders, s3:// prefixes or JSON/JSONL manifests. For every video, OUT gets
<id>.json (trajectories, the main character, its box at each model frame, timings, or the error) and
<id>.png (the model frames with every trajectory, the main character highlighted, and its crops), plus
summary.json for the run. A video that cannot be read gets an error in its JSON and the run goes on;
the exit status is 1 when any video failed.

Settings come from FaceTrackConfig (sections video, faces, track, select): a --config YAML file and
key=value overrides such as faces.backend=builtin or video.max_tracking_frames=128 (among the inputs,
or after --set). By default the detector runs on keyframes only (faces.detect_every=8: at least every 8
tracking frames, earlier on a shot cut or when a carried face fails its check) and faces are carried in
between; faces.detect_every=1 detects on every tracking frame. The built-in backend upsamples once
(faces.upsample=1) so it finds faces down to about 40 px; faces.upsample=0 is cheaper and stops at ~80 px.

Examples:
  facetrack track clip.mp4 --out tracks/
  facetrack track videos/ s3://bucket/more/ faces.backend=insightface --out s3://bucket/tracks/
  facetrack track manifest.jsonl --out tracks/ --config track.yaml --set select.crop_size=112
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from typing import Any

_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*=")

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="VIDEO",
        help="video files, folders, s3:// prefixes or manifests; key=value overrides",
    )
    parser.add_argument("--out", required=True, help="output folder or s3:// prefix")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)"
    )
    parser.add_argument("--config", help="YAML file of FaceTrackConfig settings")
    parser.add_argument(
        "--backend", choices=["auto", "insightface", "builtin"], help="face backend (faces.backend)"
    )
    parser.add_argument("--no-sheet", action="store_true", help="do not draw contact sheets")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _split(values: list[str]) -> tuple[list[str], list[str]]:
    inputs, overrides = [], []
    for value in values:
        (overrides if _OVERRIDE.match(value) else inputs).append(value)
    return inputs, overrides


def output_name(video_id: str) -> str:
    """A safe relative output name for a video id (keeps sub-folders, drops what could escape OUT)."""
    parts = [p for p in re.split(r"[\\/]+", video_id) if p not in ("", ".", "..")]
    return "/".join(re.sub(r"[^\w.\-]+", "_", p) for p in parts) or "video"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facetrack import storage
    from facetrack.config import ConfigError, load_config, to_dict
    from facetrack.faces.draw import contact_sheet_png
    from facetrack.faces.stage import FaceTrackConfig, FaceTrackStage, result_to_dict
    from facetrack.manifest import read_inputs

    sources, overrides = _split(list(args.inputs))
    overrides += list(args.set)
    if args.backend:
        overrides.append(f"faces.backend={args.backend}")
    try:
        config = load_config(FaceTrackConfig, args.config, overrides)
    except ConfigError as exc:
        print(f"facetrack track: {exc}", file=sys.stderr)
        return 2
    if not sources:
        print("facetrack track: no input videos", file=sys.stderr)
        return 2

    videos, input_errors, seen = [], [], set()
    for source in sources:
        try:
            found = read_inputs(source)
        except (FileNotFoundError, ValueError, OSError) as exc:
            input_errors.append({"id": source, "video": source, "error": str(exc)})
            continue
        for video in found.videos:
            if video.id in seen:
                logger.warning("skipping %s: a video with id %s is already in the run", video.uri, video.id)
                continue
            seen.add(video.id)
            videos.append(video)
        input_errors.extend({"id": e.id, "video": e.video, "error": e.error} for e in found.errors)

    stage = FaceTrackStage(config)
    started = time.perf_counter()
    try:
        stage.setup()
    except Exception as exc:
        print(f"facetrack track: cannot load the face models: {exc}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    bar = tqdm(videos, desc="track", unit="video", disable=args.quiet)
    for video in bar:
        result = stage.process(video)
        name = output_name(video.id)
        record = result_to_dict(result)
        record["backend"] = stage.analyser.name if stage.analyser is not None else None
        storage.write_text(storage.join(args.out, f"{name}.json"), json.dumps(record, indent=1))
        sheet = None
        if not args.no_sheet:
            png = contact_sheet_png(result)
            if png is not None:
                sheet = storage.join(args.out, f"{name}.png")
                storage.write_bytes(sheet, png)
        rows.append(
            {
                "id": video.id,
                "video": video.uri,
                "json": storage.join(args.out, f"{name}.json"),
                "sheet": sheet,
                "main_track": result.main_track_summary(),
                "n_tracks": len(result.tracks),
                "timings": record["timings"],
                "error": result.error,
            }
        )
        if result.error:
            tqdm.write(f"error: {result.error}", file=sys.stderr)
        bar.set_postfix(errors=stage.counters["errors"], no_face=stage.counters["no_face"])
    failed = [r for r in rows if r["error"]] + input_errors
    summary = {
        "videos": len(videos),
        "errors": len(failed),
        "no_face": stage.counters["no_face"],
        "backend": stage.analyser.name if stage.analyser is not None else None,
        "seconds": round(time.perf_counter() - started, 3),
        "counters": dict(stage.counters),
        "config": to_dict(config),
        "results": rows,
        "input_errors": input_errors,
    }
    storage.write_text(storage.join(args.out, "summary.json"), json.dumps(summary, indent=1))
    print(
        f"tracked {len(videos)} video(s) with the {summary['backend']} backend in {summary['seconds']:.1f}s: "
        f"{len(videos) - len([r for r in rows if r['error']])} ok, {len(failed)} failed, "
        f"{summary['no_face']} without a face -> {args.out}"
    )
    return 1 if failed else 0
