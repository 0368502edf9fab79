"""Compose sample videos (H.264 MP4) from real face photographs that ship inside installed packages.

The faces come from insightface (t1.jpg), matplotlib (grace_hopper.jpg) and, when installed,
scikit-image (astronaut). Clips cycle through kinds: extras (a main face and smaller faces entering and
leaving), occlusion (the main face hidden for a while), cut (a shot without faces in the middle),
no-face, crowd (faces of the same size) and astronaut. OUT_DIR may be a folder or an s3:// prefix.

Examples:
  facetrack samples samples/
  facetrack samples samples/ --n 12 --seconds 8 --kinds extras,occlusion
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder or s3:// prefix to write the clips to")
    parser.add_argument("--n", type=int, default=6, help="number of clips (default 6)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each clip (default 5)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--kinds", help="comma-separated kinds to cycle through (default: all available)")


def run(args: argparse.Namespace) -> int:
    from facetrack import storage
    from facetrack.samples import PRESETS, face_sources, write_samples

    if args.n < 1 or args.seconds <= 0:
        print("facetrack samples: --n must be at least 1 and --seconds positive")
        return 2
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    unknown = [k for k in kinds or [] if k not in PRESETS]
    if unknown:
        print(f"facetrack samples: unknown kind(s) {', '.join(unknown)}; known: {', '.join(PRESETS)}")
        return 2
    if not face_sources():
        print("facetrack samples: no face images found; install insightface or matplotlib")
        return 2
    with tempfile.TemporaryDirectory(prefix="facetrack-samples-") as tmp:
        local = args.out_dir if not storage.is_remote(args.out_dir) else tmp
        written = write_samples(
            local, n=args.n, seconds=args.seconds, width=args.width, height=args.height, kinds=kinds
        )
        index = []
        for clip in written:
            name = Path(clip.path).name
            uri = storage.join(args.out_dir, name)
            if storage.is_remote(args.out_dir):
                storage.write_bytes(uri, Path(clip.path).read_bytes())
            visible = {face: sum(b is not None for b in boxes) for face, boxes in clip.boxes.items()}
            index.append(
                {
                    "id": name,
                    "video": name,
                    "seconds": clip.spec.seconds,
                    "main": clip.spec.main,
                    "faces": {f: clip.sources[f].origin for f in clip.sources},
                    "frames_visible": visible,
                }
            )
            print(f"{uri}  main={clip.spec.main or '-'}  faces={','.join(sorted(clip.sources)) or '-'}")
        storage.write_text(storage.join(args.out_dir, "samples.json"), json.dumps(index, indent=1))
    return 0
