"""Show what the model will see for one video: prompt, token ids, frames, preprocessing, token counts.

Loads the checkpoint (as the captioner does: same prompt, ids and preprocessing), samples the video's
model frames as the caption job does (VideoLLaMA2's frame numbers round((N-1)/T*(i+0.5)) for T model
frames), finds the main character's face crops with the face tracking stage (--faces none to skip it),
and reports, without generating anything:

  - the checkpoint's format (facetrack, videollama2, videollama2-lora) and family (videollama2-v1: asked
    with VideoLLaMA2's v1.x llama2 template; videollama2-later and facetrack: the chat template);
  - the prompt text and its input_ids, with -201 (VideoLLaMA2's video token index) where the video and
    face tokens are spliced in;
  - the model frames' source frame numbers and timestamps;
  - the preprocessing: mode (crop: shortest-edge resize + centre crop, as VideoLLaMA2's inference; pad:
    padded to a square with the mean colour) and size;
  - the numbers of video tokens and face tokens, the input length and the new-token budget;
  - a PNG of the preprocessed frames (the pixels the vision tower gets, before normalisation) and of the
    preprocessed face crops (--png PATH; default VIDEO-NAME.inspect.png in the current folder).

Readable by a person by default; --json prints one JSON object (keys: prompt, input_ids, frame_indices,
timestamps, preprocess, tokens, checkpoint, video, faces, png).

Examples:
  facetrack tiny-model tiny-model/ && facetrack inspect clip.mp4 --model tiny-model/
  facetrack inspect clip.mp4 --model DAMO-NLP-SG/VideoLLaMA2-7B-16F --json --faces none
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from facetrack.model.prompt import VIDEO_TOKEN_INDEX


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", metavar="VIDEO", help="a video file or s3:// URI")
    parser.add_argument(
        "--model", required=True, metavar="CKPT", help="checkpoint folder, hub id or s3:// prefix"
    )
    parser.add_argument(
        "--model-base", metavar="CKPT", help="base model of a LoRA or projector-only checkpoint"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    parser.add_argument(
        "--png", metavar="PATH", help="where to write the picture (default VIDEO-NAME.inspect.png)"
    )
    parser.add_argument("--no-png", action="store_true", help="write no picture")
    parser.add_argument(
        "--faces",
        choices=["auto", "builtin", "insightface", "none"],
        default="auto",
        help="face backend of the tracking stage, or none to show the frames alone (default auto)",
    )
    parser.add_argument("--frames", type=int, metavar="T", help="model frames (default: the checkpoint's)")
    parser.add_argument("--prompt", metavar="TEXT", help="the instruction (default: the benchmark's)")
    parser.add_argument("--prompt-style", choices=["auto", "llama2", "chat"], default="auto")
    parser.add_argument("--preprocess", choices=["auto", "crop", "pad"], default="auto")
    parser.add_argument("--no-system-prompt", action="store_true", help="leave the system prompt out")


def _frames_and_crops(video: str, num_frames: int, faces: str) -> tuple[Any, np.ndarray | None, dict]:
    """``(model Frames, main character's crops or None, facts about the video and the faces)``."""
    from facetrack.video import VideoConfig, open_video, plan_samples

    config = VideoConfig(num_frames=num_frames)
    with open_video(video) as opened:
        info = opened.info
        plan = plan_samples(info.duration, info.fps, info.num_frames, config)
        if faces == "none":
            frames = opened.read_at(plan.model_times)
    facts: dict[str, Any] = {
        "video": {
            "name": info.name, "backend": info.backend, "width": info.width, "height": info.height,
            "fps": round(info.fps, 6), "num_frames": info.num_frames, "duration": round(info.duration, 6),
            "sampling": config.model_sampling,
        },
        "faces": {"backend": faces, "main_track_id": None, "found": False},
    }  # fmt: skip
    if faces == "none":
        return frames, None, facts
    from facetrack.faces.base import FaceConfig
    from facetrack.faces.stage import FaceTrackConfig, FaceTrackStage
    from facetrack.types import VideoRef

    stage = FaceTrackStage(FaceTrackConfig(video=config, faces=FaceConfig(backend=faces)))
    stage.setup()
    result = stage.process(VideoRef(id=Path(video).stem or "video", uri=video))
    if result.error is not None:
        raise RuntimeError(f"face tracking failed: {result.error}")
    facts["faces"].update(
        main_track_id=result.main_track_id, found=result.crops is not None, tracks=len(result.tracks)
    )
    return result.model_frames, result.crops, facts


def describe(args: argparse.Namespace) -> dict[str, Any]:
    """The report :func:`run` prints (see the module docstring for its keys)."""
    from facetrack.caption import Captioner, CaptionerConfig, resample_indices

    captioner = Captioner(
        CaptionerConfig(
            model=args.model, model_base=args.model_base, device="cpu", num_frames=args.frames,
            prompt=args.prompt, prompt_style=args.prompt_style, preprocess=args.preprocess,
            use_system_prompt=not args.no_system_prompt,
        )
    )  # fmt: skip
    captioner.setup()
    loaded, model = captioner.loaded, captioner.model
    t = captioner.num_frames
    frames, crops, facts = _frames_and_crops(args.video, t, args.faces)
    images = frames.images[resample_indices(len(frames.images), t)]
    pixels = model.image_processor.resize(images)  # what the vision tower sees, before normalisation
    face_pixels = None
    if crops is not None and model.has_face_branch:
        face_pixels = model.face_processor.resize(crops[resample_indices(len(crops), t)])
    ids = captioner.input_ids
    n_video = model.num_video_tokens(t)
    n_face = model.num_face_tokens(t) if face_pixels is not None else 0
    length = len(ids) - 1 + n_video + n_face
    processor = model.image_processor
    report: dict[str, Any] = {
        "checkpoint": {
            "source": loaded.source, "name": loaded.name, "format": loaded.kind, "family": loaded.family,
            "prompt_style": captioner.prompt_style, "num_frames": t,
            "face_encoder": model.spec.face_encoder,
        },
        "prompt": captioner.prompt_text,
        "instruction": captioner.prompt,
        "input_ids": ids,
        "video_token_index": VIDEO_TOKEN_INDEX,
        "video_token_position": ids.index(VIDEO_TOKEN_INDEX),
        "frame_indices": [int(i) for i in frames.indices],
        "timestamps": [round(float(s), 6) for s in frames.timestamps],
        "preprocess": {
            "mode": processor.mode, "size": processor.size, "mean": list(processor.mean),
            "std": list(processor.std),
            "face": None if model.face_processor is None else {
                "mode": model.face_processor.mode, "size": model.face_processor.size,
            },
        },
        "tokens": {
            "text": len(ids) - 1, "video": n_video, "face": n_face,
            "face_per_frame": model.face_tokens_per_frame if model.has_face_branch else 0,
            "input": length, "max_new_tokens": captioner.max_new_tokens_for(length),
            "context": captioner.context_limit(),
        },
        **facts,
        "png": None,
    }  # fmt: skip
    if not args.no_png:
        path = Path(args.png) if args.png else Path(f"{Path(args.video).stem or 'video'}.inspect.png")
        write_png(path, pixels, face_pixels, report["frame_indices"], report["timestamps"])
        report["png"] = str(path)
    return report


def write_png(
    path: Path, pixels: Any, face_pixels: Any | None, indices: list[int], timestamps: list[float]
) -> None:
    """A grid: the preprocessed frames (labelled with frame number and time), then the face crops."""
    from PIL import Image, ImageDraw

    frames = pixels.permute(0, 2, 3, 1).numpy()
    faces = None if face_pixels is None else face_pixels.permute(0, 2, 3, 1).numpy()
    t, size = frames.shape[0], frames.shape[1]
    cols = min(t, 8)
    rows = -(-t // cols)
    label = 14
    face_size = 0 if faces is None else faces.shape[1]
    height = rows * (size + label) + (0 if faces is None else rows * face_size)
    sheet = Image.new("RGB", (cols * size, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if i >= t:
                break
            x = c * size
            draw.text((x + 2, y + 1), f"#{indices[i]} {timestamps[i]:.2f}s", fill=(0, 0, 0))
            sheet.paste(Image.fromarray(np.ascontiguousarray(frames[i])), (x, y + label))
            if faces is not None:
                face = Image.fromarray(np.ascontiguousarray(faces[i]))
                sheet.paste(face, (x, y + label + size))
        y += size + label + face_size
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report."""
    ck, pre, tok, vid, faces = (report[k] for k in ("checkpoint", "preprocess", "tokens", "video", "faces"))
    ids = report["input_ids"]
    pos = report["video_token_position"]
    lines = [
        f"checkpoint   {ck['source']} ({ck['name']})",
        f"  format     {ck['format']}, family {ck['family']}, prompt style {ck['prompt_style']}",
        f"video        {vid['name']}: {vid['width']}x{vid['height']}, {vid['num_frames']} frames at "
        f"{vid['fps']:g} fps, {vid['duration']:.2f} s ({vid['backend']})",
        f"model frames {ck['num_frames']} by {vid['sampling']}: indices {report['frame_indices']}",
        f"  timestamps {[round(s, 3) for s in report['timestamps']]}",
        f"preprocess   {pre['mode']} to {pre['size']}x{pre['size']}"
        + (f"; face crops {pre['face']['mode']} to {pre['face']['size']}" if pre["face"] else ""),
        f"faces        {faces['backend']}: "
        + (f"main track {faces['main_track_id']}" if faces["found"] else "no main character (frames only)"),
        f"tokens       {tok['text']} text + {tok['video']} video + {tok['face']} face"
        f" = {tok['input']} input; up to {tok['max_new_tokens']} new (context {tok['context']})",
        "prompt       " + json.dumps(report["prompt"], ensure_ascii=False),
        f"input_ids    {len(ids)} ids, {VIDEO_TOKEN_INDEX} at position {pos} (visual tokens go there)",
        f"  {ids}",
    ]
    if report["png"]:
        lines.append(f"picture      {report['png']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from facetrack.model.loading import CheckpointError
    from facetrack.video import VideoError

    if args.frames is not None and args.frames < 1:
        print("facetrack inspect: --frames must be at least 1", file=sys.stderr)
        return 2
    try:
        report = describe(args)
    except (CheckpointError, VideoError, RuntimeError, ImportError) as exc:
        print(f"facetrack inspect: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, ensure_ascii=False) if args.json else format_report(report))
    return 0
