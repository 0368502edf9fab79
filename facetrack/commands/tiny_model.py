"""Write a tiny random FaceTrack-MM checkpoint for offline runs, demos and tests (its captions are noise).

The checkpoint has the real architecture at a small width: a CLIP vision tower (112 px, 14 px patches,
width 32, 2 layers; penultimate layer), the STC connector (depth-4 RegStages), a face projector fed by
the vision tower on the face crops, and a Mistral language model (width 64, 2 layers) with Mistral's real
32000-token tokenizer taken from the installed mistral-common package. Weights are random from --seed, so
the same seed writes the same model. Nothing is downloaded.

By default OUT_DIR is a VideoLLaMA2-format folder (config.json with mm_* keys, model.safetensors,
clip_vision_tower/, tokenizer.model); --format facetrack writes our own format instead. --size bench
writes the larger model used by bench/caption.py.

Examples:
  facetrack tiny-model models/tiny
  facetrack caption --model models/tiny clip.mp4
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument(
        "--format", choices=["videollama2", "facetrack"], default="videollama2", help="checkpoint layout"
    )
    parser.add_argument("--size", choices=["tiny", "bench"], default="tiny", help="model size (default tiny)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip the model takes (default 8)")
    parser.add_argument(
        "--face-encoder",
        choices=["vision_tower", "none"],
        default="vision_tower",
        help="face branch: the vision tower on the crops, or none (frames only)",
    )
    parser.add_argument("--face-tokens", type=int, default=4, help="face tokens per frame (default 4)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from facetrack.model.saving import save_checkpoint, save_videollama2
    from facetrack.model.tiny import BENCH_SIZE, TinySize, build_tiny, tiny_spec, write_mistral_tokenizer

    if args.frames < 1 or args.face_tokens < 1:
        print("facetrack tiny-model: --frames and --face-tokens must be at least 1")
        return 2
    size = BENCH_SIZE if args.size == "bench" else TinySize()
    spec = tiny_spec(
        size, num_frames=args.frames, face_encoder=args.face_encoder, face_tokens_per_frame=args.face_tokens
    )
    spec.name = f"facetrack-{args.size}-random-seed{args.seed}"
    model = build_tiny(spec, seed=args.seed)
    out = Path(args.out_dir)
    if args.format == "videollama2":
        save_videollama2(model, out)
        write_mistral_tokenizer(out)
    else:
        write_mistral_tokenizer(out)
        from facetrack.model.language_model import load_tokenizer

        save_checkpoint(model, load_tokenizer(out), out)
    params = sum(p.numel() for p in model.parameters())
    info = {
        "path": str(out),
        "format": args.format,
        "name": spec.name,
        "parameters": params,
        "num_frames": spec.num_frames,
        "video_tokens": model.num_video_tokens(spec.num_frames),
        "face_tokens": model.num_face_tokens(spec.num_frames),
        "note": "random weights: captions are noise",
    }
    print(json.dumps(info, indent=1))
    return 0
