"""Benchmark of the face tracking stage on composed clips: where the time goes, throughput, memory.

Run by hand:
  python bench/track.py                       # built-in backend, 5 s and 60 s clips
  python bench/track.py --backend insightface --seconds 5 --repeat 5 --out bench-track.json

For each clip length it composes a clip from packaged faces (a main face, extras entering and leaving),
runs the stage (``FaceTrackStage.process``) ``--repeat`` times after one warm-up run, and reports the
median split into decode / detect+embed / track / select+crop, the wall and CPU time per clip, clips per
second per core (one clip uses one core: 1 / CPU seconds), the peak resident memory above the process's
baseline while a clip runs, and the ratio of the whole stage to detection+embedding alone on the same
tracking frames (decoded beforehand, same embedding policy): the floor no tracking stage can go under.
The ratio is given on wall time and on CPU time (steadier on a shared machine).
A 60 s clip runs twice: with the default cap on tracking frames and without a cap (every frame at 16 fps).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PeakMemory, write_report  # noqa: E402
from facetrack.config import to_dict  # noqa: E402
from facetrack.faces.base import FaceConfig  # noqa: E402
from facetrack.faces.stage import FaceTrackConfig, FaceTrackStage, _EmbeddingReuse  # noqa: E402
from facetrack.samples import Extra, SampleSpec, compose_video  # noqa: E402
from facetrack.video import VideoConfig, sample_frames  # noqa: E402


def clip_spec(seconds: float, width: int, height: int) -> SampleSpec:
    """A main face across the whole clip; extras entering and leaving every ~5 s."""
    extras = []
    names = ["t1-0", "t1-5", "t1-3", "t1-2"]
    period = 5.0
    k = 0
    start = 0.3
    while start < seconds - 1.0:
        side = "right" if k % 2 == 0 else "left"
        extras.append(
            Extra(names[k % len(names)], start, min(seconds - 0.1, start + 0.6 * period), side=side)
        )
        start += period
        k += 1
    return SampleSpec(
        seconds, width=width, height=height, extras=extras, occlusion=(0.45 * seconds, 0.45 * seconds + 0.8)
    )


def floor_run(stage: FaceTrackStage, tracking_images) -> tuple[float, float]:
    """Detection + embedding alone on decoded tracking frames: (wall seconds, CPU seconds)."""
    analyser = stage.analyser
    reuse = _EmbeddingReuse(stage.config.faces.reembed_every)
    wall, cpu = time.perf_counter(), time.process_time()
    for k, image in enumerate(tracking_images):
        faces = analyser.detect(image, k)
        need = reuse.assign(faces)
        if need:
            for i, emb in zip(need, analyser.embed(image, [faces[i] for i in need])):
                faces[i].embedding = emb
        reuse.remember(faces)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_clip(stage: FaceTrackStage, path: str, repeat: int) -> dict[str, Any]:
    _, tracking = sample_frames(path, stage.config.video)
    stage.process(path)  # warm-up: caches, lazy imports, thread pools
    runs, floors = [], []
    for _ in range(repeat):
        # Stage and floor alternate so both see the same machine load.
        cpu0 = time.process_time()
        with PeakMemory(interval=0.005) as mem:
            result = stage.process(path)
        cpu = time.process_time() - cpu0
        if result.error:
            raise SystemExit(f"the stage failed on {path}: {result.error}")
        runs.append({**result.timings, "cpu": cpu, "peak_mb": (mem.peak - mem.baseline) / 2**20})
        floors.append(floor_run(stage, tracking.images))
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    floor_wall = statistics.median(f[0] for f in floors)
    floor_cpu = statistics.median(f[1] for f in floors)
    return {
        "tracking_frames": result.n_tracking_frames,
        "tracks": len(result.tracks),
        "main_track_frames": len(result.main_track.frames) if result.main_track else 0,
        "decode_s": med["decode"],
        "detect_embed_s": med["detect_embed"],
        "track_s": med["track"],
        "select_crop_s": med["select_crop"],
        "total_s": med["total"],
        "cpu_s": med["cpu"],
        "clips_per_s_per_core": 1.0 / med["cpu"] if med["cpu"] > 0 else float("inf"),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "floor_s": floor_wall,
        "floor_cpu_s": floor_cpu,
        "ratio_to_floor": med["total"] / floor_wall if floor_wall > 0 else float("inf"),
        "cpu_ratio_to_floor": med["cpu"] / floor_cpu if floor_cpu > 0 else float("inf"),
        "runs": runs,
        "floor_runs": [{"wall": w, "cpu": c} for w, c in floors],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="builtin", choices=["builtin", "insightface", "auto"])
    parser.add_argument("--seconds", default="5,60", help="clip lengths, comma-separated (default 5,60)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--repeat-long", type=int, default=1, help="repeats for clips of 30 s and more")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--no-uncapped", action="store_true", help="skip the uncapped run of long clips")
    parser.add_argument("--out", default="bench-track.json")
    args = parser.parse_args(argv)

    base = FaceTrackConfig(faces=FaceConfig(backend=args.backend))
    stage = FaceTrackStage(base)
    t0 = time.perf_counter()
    stage.setup()
    setup_s = time.perf_counter() - t0
    uncapped = FaceTrackStage(
        FaceTrackConfig(faces=base.faces, video=VideoConfig(max_tracking_frames=100_000)),
        analyser=stage.analyser,
    )
    uncapped.setup()

    rows = []
    with tempfile.TemporaryDirectory(prefix="facetrack-bench-") as tmp:
        for seconds in [float(s) for s in args.seconds.split(",") if s.strip()]:
            path = str(Path(tmp) / f"clip-{seconds:g}s.mp4")
            compose_video(path, clip_spec(seconds, args.width, args.height))
            variants = [("capped", stage)]
            if not args.no_uncapped and seconds * base.video.tracking_fps > base.video.max_tracking_frames:
                variants.append(("uncapped", uncapped))
            for label, which in variants:
                name = f"{seconds:g} s" + (" (no cap)" if label == "uncapped" else "")
                print(f"running {name} ...", file=sys.stderr)
                repeat = args.repeat if seconds < 30 else args.repeat_long
                rows.append({"clip": name, "seconds": seconds, **bench_clip(which, path, repeat)})

    header = (
        f"{'clip':<14}{'frames':>7}{'decode':>8}{'det+emb':>9}{'track':>8}{'sel+crop':>9}{'total':>8}"
        f"{'floor':>8}{'ratio':>7}{'cpu ratio':>10}{'clips/s/core':>14}{'peak MB':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['clip']:<14}{r['tracking_frames']:>7}{r['decode_s']:>8.3f}{r['detect_embed_s']:>9.3f}"
            f"{r['track_s']:>8.3f}{r['select_crop_s']:>9.3f}{r['total_s']:>8.3f}{r['floor_s']:>8.3f}"
            f"{r['ratio_to_floor']:>7.2f}{r['cpu_ratio_to_floor']:>10.2f}{r['clips_per_s_per_core']:>14.3f}"
            f"{r['peak_mb']:>9.1f}"
        )
    report = {
        "backend": stage.analyser.name,
        "setup_s": setup_s,
        "repeat": args.repeat,
        "frame_size": [args.width, args.height],
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "config": to_dict(base),
        "rows": rows,
    }
    write_report(report, args.out)
    print(
        f"\nbackend {report['backend']} (setup {setup_s:.2f} s); times are medians in seconds -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
