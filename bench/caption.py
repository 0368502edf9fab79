"""Captioner throughput (clips per second) against batch size; prints a table and writes JSON.

    python bench/caption.py                                  # CPU, the ``lm`` model below
    python bench/caption.py --size tiny                      # CPU, the test model of ``facetrack tiny-model``
    python bench/caption.py --size 7b --device cuda          # GPU, a 7B-shaped model (VideoLLaMA2-7B-16F)
    python bench/caption.py --model path/to/checkpoint       # any checkpoint the captioner loads

Models (random weights; throughput does not depend on the values). The first three are written to a
temporary VideoLLaMA2 folder and loaded through the captioner like any checkpoint.

- ``lm`` (CPU default): the tiny model's vision side (112 px, CLIP width 32 / 2 layers) with a larger
  language model (Mistral width 512, 8 layers, 8 heads / 4 KV, MLP 1536, vocab 32000; 65.8M parameters).
  As in the 7B model, the language model dominates a clip's cost and batch-1 decoding is bound by memory
  bandwidth, which is what batching recovers.
- ``tiny``: the test model of ``facetrack tiny-model`` (112 px, CLIP width 32 / 2 layers, Mistral width
  64 / 2 layers, vocab 32000; 125 video + 32 face tokens for 8 frames; 4.4M parameters).
- ``small``: a vision-heavier model: CLIP vision tower 224 px / 14 px patches, width 128, 4 layers; STC
  connector with depth-4 RegStages at width 256; Mistral width 256, 4 layers, 8 heads (4 KV), MLP 768,
  vocab 32000; 405 video + 32 face tokens per clip; 22.5M parameters. Its vision tower (16 images of
  224 px per clip) costs as much per clip at any batch size, so batching gains less.
- ``7b`` (GPU): CLIP ViT-L/14-336 shape, STC connector 1024 -> 4096 (depth 4), Mistral-7B shape
  (32 layers, width 4096, 32 heads / 8 KV, MLP 14336), 16 frames -> 1521 video + 64 face tokens. Built in
  bf16 directly on the GPU (no checkpoint on disk).

``--max-new-tokens`` defaults to 160, about the median length of FEC-Bench's reference captions in
Mistral tokens (163 over a sample of 200 of its 800 items): the captioner is meant to write captions
that long. Random weights rarely produce EOS, so every clip generates about that many tokens; the
report gives the count actually generated.

``cpu_seconds`` is the process's CPU time in the counted run (all threads): on a machine shared with
other work, wall time above CPU time means the run waited for a core.

Every clip has random 240x320 frames and 112x112 face crops. Each batch size captions the same clips
after one warm-up batch, ``--repeat`` times; the fastest run counts (the others are in the JSON), which
keeps the numbers stable on a shared machine.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_report  # noqa: E402
from facetrack.caption import Captioner, CaptionerConfig  # noqa: E402
from facetrack.types import Clip  # noqa: E402


def seven_b_size():
    from facetrack.model.tiny import TinySize

    return TinySize(
        image_size=336, vision_hidden=1024, vision_layers=24, vision_heads=16, llm_hidden=4096,
        llm_layers=32, llm_heads=32, llm_kv_heads=8, llm_intermediate=14336, num_frames=16, init_std=0.02,
    )  # fmt: skip


def lm_heavy_size():
    """A small model with the 7B model's balance: the language model dominates, the vision tower is small."""
    from facetrack.model.tiny import TinySize

    return TinySize(
        llm_hidden=512, llm_layers=8, llm_heads=8, llm_kv_heads=4, llm_intermediate=1536, init_std=0.05,
    )  # fmt: skip


def make_clips(n: int, frames: int, seed: int = 0) -> list[Clip]:
    rng = np.random.default_rng(seed)
    return [
        Clip(
            id=f"clip-{i:03d}",
            frames=rng.integers(0, 256, (frames, 240, 320, 3), dtype=np.uint8),
            crops=rng.integers(0, 256, (frames, 112, 112, 3), dtype=np.uint8),
        )
        for i in range(n)
    ]


def build_captioner(args: argparse.Namespace, tmp: Path) -> tuple[Captioner, dict]:
    import torch

    from facetrack.model.language_model import load_tokenizer
    from facetrack.model.loading import LoadedModel
    from facetrack.model.saving import save_videollama2
    from facetrack.model.tiny import BENCH_SIZE, build_tiny, tiny_spec, write_mistral_tokenizer

    common = dict(device=args.device, max_new_tokens=args.max_new_tokens, dtype=args.dtype)
    if args.model:
        captioner = Captioner(CaptionerConfig(model=args.model, **common))
        captioner.setup()
        return captioner, {"model": args.model}
    if args.size in ("tiny", "small", "lm"):
        sizes = {"tiny": None, "small": BENCH_SIZE, "lm": lm_heavy_size()}
        spec = tiny_spec(sizes[args.size])
        spec.name = f"bench-{args.size}"
        folder = tmp / spec.name
        save_videollama2(build_tiny(spec), folder)
        write_mistral_tokenizer(folder)
        captioner = Captioner(CaptionerConfig(model=str(folder), **common))
        captioner.setup()
    else:
        spec = tiny_spec(seven_b_size())
        spec.name = "bench-7b-shape"
        device = "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = build_tiny(spec)
        finally:
            torch.set_default_dtype(default)
        write_mistral_tokenizer(tmp / "tokenizer")
        loaded = LoadedModel(model, load_tokenizer(tmp / "tokenizer"), spec.name, "memory", "facetrack")
        captioner = Captioner.from_model(CaptionerConfig(model=spec.name, **common), loaded)
    model = captioner.model
    info = {
        "model": spec.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_frames": captioner.num_frames,
        "video_tokens": model.num_video_tokens(captioner.num_frames),
        "face_tokens": model.num_face_tokens(captioner.num_frames),
        "prompt_tokens": len(captioner._ids) - 1,
    }
    return captioner, info


def run_batch_size(captioner: Captioner, clips: list[Clip], batch: int, repeat: int) -> dict:
    """Caption ``clips`` ``repeat`` times at batch size ``batch``; the best run counts (least disturbed)."""
    import torch

    captioner.config.batch_size = batch
    captioner.caption(clips[:batch])  # warm-up
    times, cpu_times, tokens = [], [], 0
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        results = captioner.caption(clips)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"batch {batch}: {len(errors)} clip(s) failed, first: {errors[0]}")
        tokens = sum(r.num_tokens for r in results)
    best = min(times)
    return {
        "batch_size": batch,
        "clips": len(clips),
        "seconds": round(best, 3),
        "seconds_all": [round(t, 3) for t in times],
        "cpu_seconds": round(cpu_times[times.index(best)], 3),
        "clips_per_s": round(len(clips) / best, 3),
        "new_tokens": tokens,
        "tokens_per_s": round(tokens / best, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", help="a checkpoint instead of a random model")
    parser.add_argument("--size", choices=["lm", "tiny", "small", "7b"], default="lm")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--clips", type=int, default=32, help="clips captioned per batch size")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per batch size; the fastest counts")
    parser.add_argument("--out", default="bench/results/caption.json")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="facetrack-bench-") as tmp:
        captioner, info = build_captioner(args, Path(tmp))
        clips = make_clips(args.clips, captioner.num_frames)
        rows = [run_batch_size(captioner, clips, b, args.repeat) for b in sizes]
    device = str(captioner.model.device)
    by_size = {r["batch_size"]: r for r in rows}
    for r in rows:
        r["speedup_vs_batch_1"] = (
            round(r["clips_per_s"] / by_size[1]["clips_per_s"], 2) if 1 in by_size else None
        )
    ratio = by_size[8]["clips_per_s"] / by_size[1]["clips_per_s"] if 1 in by_size and 8 in by_size else None

    print(f"model {info['model']} ({info['parameters'] / 1e6:.1f}M parameters) on {device}, "
          f"{info['num_frames']} frames = {info['video_tokens']} video + {info['face_tokens']} face tokens, "
          f"{info['prompt_tokens']} prompt tokens, max_new_tokens {args.max_new_tokens}")  # fmt: skip
    print(
        f"{'batch':>5} {'clips':>5} {'seconds':>9} {'cpu s':>8} {'clips/s':>9} {'tokens/s':>9} {'speedup':>8}"
    )
    for r in rows:
        speedup = r["speedup_vs_batch_1"] or 0
        print(
            f"{r['batch_size']:>5} {r['clips']:>5} {r['seconds']:>9.2f} {r['cpu_seconds']:>8.2f} "
            f"{r['clips_per_s']:>9.3f} {r['tokens_per_s']:>9.1f} {speedup:>7.2f}x"
        )
    if ratio is not None:
        print(f"batch 8 / batch 1 throughput: {ratio:.2f}x")
    report = {
        "bench": "caption",
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "max_new_tokens": args.max_new_tokens,
        "repeat": args.repeat,
        **info,
        "results": rows,
        "batch8_over_batch1": round(ratio, 3) if ratio is not None else None,
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
