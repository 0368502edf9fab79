"""Benchmark of the face tracking stage: cost and accuracy on multi-person scenes, and where the time goes.

Run by hand:
  python bench/track.py                                  # scenes: 20 composed multi-person clips, 4 variants
  python bench/track.py --variant "today=" --out before.json      # one variant: NAME=key=value,key=value
  python bench/track.py lengths                          # the split per stage part on 5 s and 60 s clips
  python bench/track.py lengths --backend insightface --seconds 5 --repeat 5 --out bench-track.json

``scenes`` (the default) composes the twenty scenes of :func:`facetrack.faces.scenes.bench_scenes`
(motion, fast motion, occlusion, shot cuts, small faces of about 40 px, people entering and leaving,
dialogues; 640x360, real faces from installed packages) and runs the stage on each under every variant
(a named list of config overrides; by default every-frame detection against the adaptive stride, at the
old and the new recall setting). Per variant: CPU seconds per video second (``time.process_time`` of this
process, not wall time, so a shared machine does not skew it), detector calls per video second,
main-character accuracy (model frames whose main box is on the true main character), person recall
(planted people with a trajectory mostly on them), box coverage (true face boxes at tracking frames that
some trajectory covers), identity switches, fragments and false trajectories.

``lengths`` composes one clip per length from packaged faces (a main face, extras entering and leaving),
runs the stage ``--repeat`` times after one warm-up run, and reports the median split into decode /
detect+embed / track / select+crop, the wall and CPU time per clip, clips per second per core, the peak
resident memory above the process's baseline while a clip runs, and the ratio of the whole stage to
detection+embedding alone on the same tracking frames (decoded beforehand, same embedding policy).
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
from facetrack.config import load_config, to_dict  # noqa: E402
from facetrack.faces.base import FaceConfig  # noqa: E402
from facetrack.faces.scenes import SceneVideo, bench_scenes, compose_scene, score_result  # noqa: E402
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


def lengths_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/track.py lengths", description="the split per stage part")
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


DEFAULT_VARIANTS = [
    "every-frame up0=faces.detect_every=1,faces.upsample=0",
    "adaptive up0=faces.upsample=0",
    "every-frame up1=faces.detect_every=1,faces.upsample=1",
    "adaptive up1 (default)=",
]


class CountingAnalyser:
    """Wraps an analyser and counts its detector calls, one per frame (batched calls too)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name != "detect_batch":
            return value

        def detect_batch(images: Any, frames: Any) -> Any:
            self.calls += len(images)
            return value(images, frames)

        return detect_batch

    def detect(self, image: Any, frame: int = 0) -> Any:
        self.calls += 1
        return self._inner.detect(image, frame)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=key=value,key=value`` (or ``NAME=`` for the defaults) -> (name, overrides)."""
    name, _, rest = text.partition("=")
    if not name:
        raise SystemExit(f"a variant needs a name: {text!r}")
    return name, [o for o in rest.split(",") if o.strip()]


def run_variant(name: str, overrides: list[str], backend: str, videos: list[SceneVideo]) -> dict[str, Any]:
    config = load_config(FaceTrackConfig, None, [f"faces.backend={backend}", *overrides])
    stage = FaceTrackStage(config)
    stage.setup()
    counting = CountingAnalyser(stage.analyser)
    stage.analyser = counting
    stage.process(videos[0].path)  # warm-up: caches, lazy imports, thread pools
    per_clip, totals = [], {"cpu_s": 0.0, "seconds": 0.0, "calls": 0}
    for video in videos:
        counting.calls = 0
        cpu0 = time.process_time()
        result = stage.process(video.path)
        cpu = time.process_time() - cpu0
        if result.error:
            raise SystemExit(f"{name}: the stage failed on {video.path}: {result.error}")
        score = score_result(result, video)
        seconds = video.scene.seconds
        per_clip.append({"scene": video.scene.name, "cpu_s": cpu, "detector_calls": counting.calls, **score})
        totals["cpu_s"] += cpu
        totals["seconds"] += seconds
        totals["calls"] += counting.calls
    pooled = {k: sum(c[k] for c in per_clip) for k in per_clip[0] if isinstance(per_clip[0][k], int)}
    return {
        "variant": name,
        "overrides": overrides,
        "config": to_dict(config),
        "cpu_per_video_s": totals["cpu_s"] / totals["seconds"],
        "detector_calls_per_video_s": totals["calls"] / totals["seconds"],
        "main_accuracy": 100.0 * pooled["main_correct"] / max(1, pooled["main_frames"]),
        "person_recall": 100.0 * pooled["found"] / max(1, pooled["people"]),
        "coverage": 100.0 * pooled["covered"] / max(1, pooled["person_frames"]),
        "id_switches": pooled["id_switches"],
        "fragments": pooled["fragments"],
        "false_tracks": pooled["false_tracks"],
        "people": pooled["people"],
        "found": pooled["found"],
        "video_seconds": totals["seconds"],
        "clips": per_clip,
    }


def scenes_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/track.py", description="cost and accuracy on scenes")
    parser.add_argument("--backend", default="builtin", choices=["builtin", "insightface", "auto"])
    parser.add_argument("--variant", action="append", default=[], help="NAME=key=value,... (repeatable)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each scene")
    parser.add_argument("--limit", type=int, default=0, help="run only the first N scenes")
    parser.add_argument("--clips", default="", help="folder to keep the composed clips in (reused)")
    parser.add_argument("--out", default="bench-track-scenes.json")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    scenes = bench_scenes(args.seconds)
    if args.limit:
        scenes = scenes[: args.limit]
    with tempfile.TemporaryDirectory(prefix="facetrack-bench-") as tmp:
        folder = Path(args.clips or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"composing {len(scenes)} scenes ...", file=sys.stderr)
        videos = [compose_scene(folder / f"{s.name}.mp4", s) for s in scenes]
        rows = []
        for name, overrides in variants:
            print(f"running {name} ...", file=sys.stderr)
            rows.append(run_variant(name, overrides, args.backend, videos))
    header = (
        f"{'variant':<26}{'cpu s/video s':>14}{'det calls/s':>12}{'main acc %':>11}{'recall %':>9}"
        f"{'found':>7}{'cover %':>8}{'id sw':>6}{'frag':>5}{'false':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['variant']:<26}{r['cpu_per_video_s']:>14.3f}{r['detector_calls_per_video_s']:>12.2f}"
            f"{r['main_accuracy']:>11.1f}{r['person_recall']:>9.1f}{r['found']:>4}/{r['people']:<2}"
            f"{r['coverage']:>8.1f}{r['id_switches']:>6}{r['fragments']:>5}{r['false_tracks']:>6}"
        )
    report = {
        "backend": args.backend,
        "scenes": [s.name for s in scenes],
        "scene_seconds": args.seconds,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "rows": rows,
    }
    write_report(report, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "lengths":
        return lengths_main(argv[1:])
    return scenes_main(argv)


if __name__ == "__main__":
    sys.exit(main())
