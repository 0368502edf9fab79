"""Fine-tuning throughput (samples/s, tokens/s) with 1 and 2 Ray Train workers; prints a table, writes JSON.

    python bench/finetune.py                                   # CPU: small model, 1 and 2 workers, ZeRO-2
    python bench/finetune.py --size 7b --gpu --workers 1       # GPU: 7B-shaped model, bf16, with MFU
    python bench/finetune.py --workers 1 2 4 --steps 20 --zero 3

What runs is the real job (``jobs.finetune.run``): preprocessing on Ray Data (once; later runs reuse the
clip cache), then Ray Train workers under DeepSpeed with LoRA on the LLM and the projectors at full rank.
The clips are composed from packaged face photographs (``facetrack finetune --make-demo-data``).

Models (random weights; throughput does not depend on the values), written once to a temporary
VideoLLaMA2 folder and loaded by every worker through the normal loader:

- ``small`` (CPU default): CLIP vision tower 224 px / 14 px patches, width 128, 4 layers; STC connector at
  width 256; Mistral LM width 256, 4 layers, MLP 768, vocab 32000; face branch; 8 frames -> 405 video +
  32 face tokens per clip. LoRA r=16.
- ``tiny``: the test model (112 px, LM width 64, 2 layers). LoRA r=8.
- ``7b`` (GPU): CLIP ViT-L/14-336 shape, STC connector 1024 -> 4096, Mistral-7B shape (32 layers, width
  4096, 32 heads / 8 KV, MLP 14336), 16 frames -> 1521 video + 64 face tokens. LoRA r=64, alpha=128,
  bf16, gradient checkpointing. Needs about 15 GB of disk for the temporary checkpoint.

Numbers come from the job's own ``metrics.jsonl``: the first ``--warmup`` steps are left out, then
samples/s and tokens/s are totals over the counted steps divided by their summed step times (a step's
time includes loading its clips from the cache, forward, backward and the optimizer step, and excludes
checkpointing); the JSON also has the median over steps, which a shared machine's stalls move less.
Tokens are the language model's sequence positions (text and visual tokens, no padding).

MFU (GPU only) = model FLOPs per second / the GPU's peak dense bf16 FLOPs (``--peak-tflops``, default from
the device name). Model FLOPs per step, summed over the step's LLM tokens T and clips:
4 * N_llm * T (forward and input gradients through the frozen LLM matmuls, output head included)
+ 6 * N_lora * T + 6 * L * h * S * T (causal attention scores, forward and backward, S = mean sequence
length) + 2 * N_vision * (patches + 1) per frame and per crop (the frozen vision tower, forward only)
+ 6 * N_projectors * (their input tokens). Embedding lookups are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_report  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 125.0}


def model_size(name: str):
    from facetrack.model.tiny import BENCH_SIZE, TinySize

    if name == "tiny":
        return TinySize()
    if name == "small":
        return BENCH_SIZE
    if name == "7b":
        return TinySize(
            image_size=336, vision_hidden=1024, vision_layers=24, vision_heads=16, llm_hidden=4096,
            llm_layers=32, llm_heads=32, llm_kv_heads=8, llm_intermediate=14336, num_frames=16,
            init_std=0.02,
        )  # fmt: skip
    raise SystemExit(f"unknown --size {name!r}: tiny, small or 7b")


def write_model(size_name: str, folder: Path, bf16: bool) -> dict[str, Any]:
    """Write a random model of the given size as a VideoLLaMA2 folder; return its FLOP-relevant facts."""
    import torch
    from torch import nn

    from facetrack.model.language_model import load_tokenizer
    from facetrack.model.saving import save_videollama2
    from facetrack.model.tiny import build_tiny, tiny_spec, write_mistral_tokenizer

    size = model_size(size_name)
    model = build_tiny(tiny_spec(size), seed=0)
    if bf16:
        model = model.to(torch.bfloat16)
    tokenizer = load_tokenizer(write_mistral_tokenizer(folder / "tokenizer"))
    save_videollama2(model, folder / "model", tokenizer=tokenizer)
    llm_matmul = sum(m.weight.numel() for m in model.llm.modules() if isinstance(m, nn.Linear))
    projectors = sum(p.numel() for p in model.mm_projector.parameters())
    if model.face_projector is not None:
        projectors += sum(p.numel() for p in model.face_projector.parameters())
    facts = {
        "size": size_name,
        "params": sum(p.numel() for p in model.parameters()),
        "llm_matmul_params": llm_matmul,
        "vision_params": sum(p.numel() for p in model.vision_tower.parameters()),
        "projector_params": projectors,
        "llm_layers": size.llm_layers,
        "llm_hidden": size.llm_hidden,
        "vision_tokens_per_image": (size.image_size // size.patch_size) ** 2 + 1,
        "num_frames": size.num_frames,
        "video_tokens": model.num_video_tokens(size.num_frames),
        "face_tokens": model.num_face_tokens(size.num_frames),
    }
    del model
    return facts


def step_flops(facts: dict[str, Any], row: dict[str, Any], n_lora: int) -> float:
    """Approximate model FLOPs of one optimizer step (see the module docstring)."""
    tokens = row["tokens"]
    samples = row["samples"]
    seq = tokens / max(1, samples)
    llm = 4 * facts["llm_matmul_params"] * tokens + 6 * n_lora * tokens
    attention = 6 * facts["llm_layers"] * facts["llm_hidden"] * seq * tokens
    images = samples * facts["num_frames"] * 2  # frames and crops
    vision = 2 * facts["vision_params"] * facts["vision_tokens_per_image"] * images
    projectors = 6 * facts["projector_params"] * samples * (facts["video_tokens"] + facts["face_tokens"])
    return float(llm + attention + vision + projectors)


def peak_tflops(given: float | None) -> float | None:
    if given:
        return given
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def run_workers(
    args: argparse.Namespace, workers: int, model: Path, data: Path, root: Path
) -> dict[str, Any]:
    from jobs.finetune import load_finetune_config, run

    gpu = args.gpu
    config_file = CONFIGS / ("finetune_7b_gpu.yaml" if args.size == "7b" else "finetune_tiny_cpu.yaml")
    cpus = max(0.25, (os.cpu_count() or 2) / workers - (0.5 if gpu else 0))
    overrides = [
        f"model={model}",
        f"data.train={data}",
        f"storage_path={root}",
        f"name=bench-{args.size}-w{workers}",
        "data.cache=" + str(root / "cache"),
        "data.tracking.faces.backend=builtin",
        f"train.max_steps={args.steps}",
        f"train.checkpoint_every={args.steps}",
        f"train.micro_batch_size={args.micro_batch}",
        "train.grad_accum=1",
        "train.max_length=2048",
        f"train.deepspeed=zero{args.zero}",
        "train.progress=false",
        "train.loader_workers=2" if gpu else "train.loader_workers=0",
        f"scaling.num_workers={workers}",
        f"scaling.use_gpu={'true' if gpu else 'false'}",
        f"scaling.cpus_per_worker={cpus}",
        f"data.preprocess_concurrency={max(1, (os.cpu_count() or 2) // 2)}",
    ]
    if args.size == "small":
        overrides += [
            "lora.r=16",
            "lora.alpha=32",
            "data.frame_size=224",
            "data.tracking.select.crop_size=224",
        ]
    if not gpu:
        overrides.append("train.precision=fp32")
    config = load_finetune_config(str(config_file), overrides)
    started = time.perf_counter()
    summary = run(config)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (root / config.name / "metrics.jsonl").read_text().splitlines()]
    counted = rows[args.warmup :] or rows
    seconds = sum(r["step_seconds"] for r in counted)
    out = {
        "workers": workers,
        "steps": len(rows),
        "counted_steps": len(counted),
        "samples_per_s": sum(r["samples"] for r in counted) / seconds,
        "tokens_per_s": sum(r["tokens"] for r in counted) / seconds,
        "step_seconds_median": statistics.median(r["step_seconds"] for r in counted),
        "samples_per_s_at_median_step": statistics.median(r["samples"] / r["step_seconds"] for r in counted),
        "tokens_per_s_at_median_step": statistics.median(r["tokens"] / r["step_seconds"] for r in counted),
        "tokens_per_sample": sum(r["tokens"] for r in counted) / sum(r["samples"] for r in counted),
        "first_loss": rows[0]["loss"],
        "last_loss": rows[-1]["loss"],
        "wall_seconds": round(wall, 1),
        "trainable": summary["train"].get("trainable"),
        "mfu": None,
    }
    return out, counted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--size", choices=["tiny", "small", "7b"], default=None, help="model (default small; 7b with --gpu)"
    )
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, bf16")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the averages")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--zero", type=int, choices=[2, 3], default=2)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOPS (for MFU)")
    parser.add_argument("--out", default="bench/results/finetune.json")
    args = parser.parse_args(argv)
    args.size = args.size or ("7b" if args.gpu else "small")
    if min(args.workers) * args.micro_batch > args.clips:
        raise SystemExit("--clips must be at least workers x micro-batch")

    import ray

    from facetrack.data import write_demo_dataset

    results = []
    with tempfile.TemporaryDirectory(prefix="facetrack-bench-finetune-") as tmp:
        root = Path(tmp)
        facts = write_model(args.size, root, bf16=args.gpu)
        size = model_size(args.size)
        n_clips = max(args.clips, 2 * max(args.workers) * args.micro_batch)
        data = write_demo_dataset(str(root / "data"), n=n_clips, seconds=2.0, width=320, height=240)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning")
        try:
            for workers in args.workers:
                result, counted = run_workers(args, workers, root / "model", Path(data), root)
                if args.gpu:
                    n_lora = (result["trainable"] or {}).get("lora_params", 0)
                    peak = peak_tflops(args.peak_tflops)
                    flops = sum(step_flops(facts, r, n_lora) for r in counted)
                    seconds = sum(r["step_seconds"] for r in counted)
                    result["model_tflops_per_s"] = flops / seconds / 1e12
                    if peak:
                        result["mfu"] = flops / seconds / (peak * 1e12 * workers)
                results.append(result)
        finally:
            ray.shutdown()
    report = {
        "model": facts,
        "frames": size.num_frames,
        "device": "gpu" if args.gpu else "cpu",
        "zero_stage": args.zero,
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "warmup_steps_left_out": args.warmup,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "results": results,
    }
    if args.gpu:
        import torch

        report["machine"]["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    header = (
        f"{'workers':>7} {'samples/s':>10} {'tokens/s':>10} {'step s':>8} {'tok/sample':>10} {'MFU':>6} "
        f"{'loss':>13}"
    )
    print(f"fine-tuning, {args.size} model ({facts['params'] / 1e6:.1f}M params), ZeRO-{args.zero}, "
          f"{'GPU bf16' if args.gpu else 'CPU fp32'}, micro-batch {args.micro_batch}")  # fmt: skip
    print(header)
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(
            f"{r['workers']:>7} {r['samples_per_s']:>10.3f} {r['tokens_per_s']:>10.1f} "
            f"{r['step_seconds_median']:>8.3f} {r['tokens_per_sample']:>10.0f} {mfu:>6} "
            f"{r['first_loss']:>6.2f}->{r['last_loss']:<6.2f}"
        )
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
