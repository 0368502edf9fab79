"""Benchmark of the caption job end to end on an embedded Ray: 1 vs 2 CPU workers for tracking.

Run by hand (the machine otherwise idle):
  python bench/caption_job.py                         # 8 composed 4 s clips, tiny random checkpoint
  python bench/caption_job.py --clips 16 --seconds 6 --json bench-caption-job.json

For each worker count W it starts a fresh local Ray with W CPUs for the tracking tasks (one CPU each) and
runs the real job (``jobs.caption.run``) on the same clips into a fresh output folder. The captioning
actor asks for no CPU of its own (``cpus_per_actor=0``) so that W counts tracking slots; with the tiny
checkpoint captioning is a small share of the work. Reported per W:

- videos/s end to end (job wall time, Ray start-up excluded) and of the tracking stage (W slots over the
  mean seconds one video spends in a tracking task, from the rows' timings: it falls when the W tasks
  slow each other down);
- utilisation of each stage: its busy seconds over (wall x slots);
- peak resident memory of each Ray worker process (sampled), the largest reported;
- the scaling ratio W=2 / W=1 for both throughputs;
- how long a finished caption waits before it is durable: median and max seconds from the moment its
  batch was captioned to the commit of its shard (the job's ``durable_wait_seconds``), with the default
  ``flush_seconds``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PeakMemory, write_report  # noqa: E402


def run_once(workers: int, clips: Path, model: Path, out: Path, batch_size: int) -> dict[str, Any]:
    import ray

    from facetrack import shards
    from facetrack.config import load_config
    from jobs.caption import CaptionJobConfig, run

    cfg = load_config(
        CaptionJobConfig,
        None,
        [
            "cpus_per_actor=0",
            f"batch_size={batch_size}",
            "captioner.max_new_tokens=16",
            "sheets=false",
            "progress_seconds=1000",
        ],
        base={"input": str(clips), "out": str(out), "captioner": {"model": str(model)}},
    )
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="error", log_to_driver=False)
    try:
        with PeakMemory(interval=0.1, title_prefix="ray::") as memory:
            start = time.time()
            summary = run(cfg)
            wall = time.time() - start
    finally:
        ray.shutdown()
    rows = shards.read_rows(str(out))
    assert all(not r["error"] for r in rows), [r["error"] for r in rows if r["error"]]
    n = len(rows)
    busy = {k: sum(r["timings"].get(k, 0.0) for r in rows) for k in ("track_total", "caption")}
    return {
        "workers": workers,
        "videos": n,
        "wall_s": round(wall, 2),
        "videos_per_s": round(n / wall, 4),
        "tracking_s_per_video": round(busy["track_total"] / n, 3),
        "tracking_videos_per_s": round(workers * n / busy["track_total"], 4),
        "utilisation": {
            "tracking": round(busy["track_total"] / (wall * workers), 3),
            "captioning": round(busy["caption"] / wall, 3),
        },
        "stage_seconds": summary["stage_seconds"],
        "durable_wait_s": summary["durable_wait_seconds"],
        "flush_seconds": cfg.flush_seconds,
        "peak_worker_rss_mb": round(memory.peak / 2**20, 1),
        "worker_processes_seen": len(memory.peaks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--json", default="bench-caption-job.json", help="where to write the results")
    args = parser.parse_args()

    from facetrack.cli import main as cli
    from facetrack.samples import write_samples

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kinds = ["extras", "occlusion", "cut", "crowd"]
        write_samples(root / "clips", n=args.clips, seconds=args.seconds, kinds=kinds)
        assert cli(["tiny-model", str(root / "model")]) == 0
        results = []
        for w in [int(x) for x in args.workers.split(",")]:
            results.append(run_once(w, root / "clips", root / "model", root / f"out-{w}", args.batch_size))

    print(f"\ncaption job, {args.clips} clips x {args.seconds:g} s (640x360), tiny random checkpoint")
    head = (
        f"{'workers':>7} {'wall s':>8} {'videos/s':>9} {'track s/video':>13} {'track v/s':>10} "
        f"{'util track':>10} {'util capt':>9} {'peak RSS MB':>11} {'durable wait med/max s':>22}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r['workers']:>7} {r['wall_s']:>8.2f} {r['videos_per_s']:>9.3f} "
            f"{r['tracking_s_per_video']:>13.3f} {r['tracking_videos_per_s']:>10.3f} "
            f"{r['utilisation']['tracking']:>10.2f} {r['utilisation']['captioning']:>9.2f} "
            f"{r['peak_worker_rss_mb']:>11.1f} "
            f"{r['durable_wait_s']['median']:>11.3f}/{r['durable_wait_s']['max']:<10.3f}"
        )
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "clips": args.clips,
        "seconds": args.seconds,
        "runs": results,
    }
    by_w = {r["workers"]: r for r in results}
    if 1 in by_w and 2 in by_w:
        report["scaling_2_over_1"] = {
            "end_to_end": round(by_w[2]["videos_per_s"] / by_w[1]["videos_per_s"], 3),
            "tracking_stage": round(by_w[2]["tracking_videos_per_s"] / by_w[1]["tracking_videos_per_s"], 3),
        }
        scaling = report["scaling_2_over_1"]
        print(
            f"\nscaling 2 vs 1 worker: end to end {scaling['end_to_end']:.2f}x, "
            f"tracking stage {scaling['tracking_stage']:.2f}x"
        )
    write_report(report, args.json)


if __name__ == "__main__":
    main()
