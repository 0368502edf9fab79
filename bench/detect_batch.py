"""Benchmark of the insightface backend's detection: frames per second per frame against batched.

Run by hand:
  python bench/detect_batch.py                                   # the tiny pack, 64 frames, CPU
  python bench/detect_batch.py --pack ~/.insightface/models/buffalo_l --frames 128 --out detect-batch.json
  python bench/detect_batch.py --providers CUDAExecutionProvider,CPUExecutionProvider   # on a GPU machine

Frames are 640x360 grey with real faces from installed packages pasted in and bright squares (what the
tiny pack's detector finds). Without ``--pack`` the detector is the tiny SCRFD-shaped pack the tests build
(declared 1x3xHxW like ``buffalo_l``'s ``det_10g``, so it runs batched through the freed-batch session the
backend makes at setup): its arithmetic is trivial, so its numbers measure the backend's own work around
the session (letterbox, blob, decoding, NMS), not a real network. With ``--pack`` (e.g. ``buffalo_l``) the
pack's own detector runs; one that cannot take a batch makes ``detect_batch`` run per frame (the first
line printed says which).
insightface's pretrained packs (``buffalo_l`` and the others) are licensed for non-commercial research only.

Per mode (``detect`` per frame, then ``detect_batch`` with batches of 1, 4, 8 and 16 frames): frames per
second of wall time, frames per CPU second of this process (``time.process_time``), faces found, and
whether every frame's faces equal the per-frame ones (boxes within 1e-3 px). Median of ``--repeat`` runs
after one warm-up run. Prints a table and writes JSON.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_report  # noqa: E402
from facetrack.faces.base import FaceConfig  # noqa: E402
from facetrack.faces.insightface_backend import InsightFaceAnalyser  # noqa: E402
from facetrack.samples import face_sources  # noqa: E402
from facetrack.types import Face  # noqa: E402


def frames(count: int, width: int = 640, height: int = 360, seed: int = 0) -> list[np.ndarray]:
    """Grey frames with two real faces and one to three bright one-cell squares each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = list(face_sources().values())
    side = int(0.4 * height)
    patches = [np.asarray(Image.fromarray(s.patch).resize((side, side))) for s in sources]
    cell = 32 * max(width, height) // 640
    out = []
    for k in range(count):
        image = np.full((height, width, 3), 90, np.uint8) + rng.integers(0, 20, (height, width, 3), np.uint8)
        image[height - side - 10 : height - 10, 10 : 10 + side] = patches[k % len(patches)]
        image[10 : 10 + side, width - side - 10 : width - 10] = patches[(k + 1) % len(patches)]
        for _ in range(1 + k % 3):
            cx, cy = rng.integers(0, width // cell - 1), rng.integers(0, height // cell - 1)
            image[cy * cell : (cy + 1) * cell, cx * cell : (cx + 1) * cell] = 255
        out.append(image)
    return out


def same(a: list[list[Face]], b: list[list[Face]]) -> bool:
    if [len(x) for x in a] != [len(x) for x in b]:
        return False
    return all(
        np.allclose(fa.box, fb.box, atol=1e-3) and abs(fa.score - fb.score) < 1e-4
        for xa, xb in zip(a, b)
        for fa, fb in zip(xa, xb)
    )


def measure(run, repeat: int) -> tuple[float, float, list[list[Face]]]:
    result = run()  # warm-up
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        result = run()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--pack", help="an insightface pack directory (default: the tiny pack, dynamic batch)"
    )
    parser.add_argument("--providers", default="CPUExecutionProvider", help="comma-separated; empty: auto")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--detect-size", type=int, default=640)
    parser.add_argument("--out", default="bench-detect-batch.json")
    args = parser.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    if args.pack:
        pack = Path(args.pack).expanduser()
    else:
        from tests.faces.tiny_pack import build_pack

        pack = build_pack(Path(tmp.name) / "tiny_pack")
    providers = [p for p in args.providers.split(",") if p]
    analyser = InsightFaceAnalyser(
        FaceConfig(
            backend="insightface",
            model_pack=str(pack),
            download=False,
            providers=providers,
            detect_size=args.detect_size,
        )
    )
    analyser.setup()
    images = frames(args.frames)
    numbers = list(range(len(images)))
    batched = analyser._batch_session is not None
    rows: list[dict[str, Any]] = []
    wall, cpu, reference = measure(
        lambda: [analyser.detect(im, k) for im, k in zip(images, numbers)], args.repeat
    )
    rows.append({"mode": "per frame", "batch": 1, "wall_s": wall, "cpu_s": cpu, "result": reference})
    for size in (int(b) for b in args.batch_sizes.split(",")):
        analyser.max_batch = size
        wall, cpu, result = measure(lambda: analyser.detect_batch(images, numbers), args.repeat)
        rows.append({"mode": "detect_batch", "batch": size, "wall_s": wall, "cpu_s": cpu, "result": result})
    n = len(images)
    table = []
    for row in rows:
        result = row.pop("result")
        row.update(
            frames=n,
            frames_per_s=n / row["wall_s"],
            frames_per_cpu_s=n / max(row["cpu_s"], 1e-9),
            faces=sum(len(f) for f in result),
            equal_to_per_frame=same(result, reference),
        )
        table.append(row)
    head = f"{'mode':<14}{'batch':>6}{'frames/s':>11}{'frames/cpu-s':>14}{'faces':>7}{'equal':>7}"
    print(f"pack {pack.name}: providers {', '.join(analyser.providers)}; batched session: {batched}")
    print(head)
    for row in table:
        print(
            f"{row['mode']:<14}{row['batch']:>6}{row['frames_per_s']:>11.1f}{row['frames_per_cpu_s']:>14.1f}"
            f"{row['faces']:>7}{str(row['equal_to_per_frame']):>7}"
        )
    report = {
        "pack": pack.name if args.pack else "tiny pack",
        "providers": analyser.providers,
        "batched_session": batched,
        "detect_size": args.detect_size,
        "frame_size": [640, 360],
        "repeat": args.repeat,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "rows": table,
    }
    write_report(report, args.out)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
