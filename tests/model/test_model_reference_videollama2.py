"""Side by side with VideoLLaMA2's own inference, on the facts its code gave for the same tiny checkpoint.

The facts in ``golden/videollama2_reference.json`` were produced by running VideoLLaMA2's own code
(``model_init``, ``process_video``, the v1.x ``llama2`` conversation and its multimodal tokeniser, the
model's forward pass and greedy ``generate``) in a separate environment with its pinned libraries, on the
folders and videos that :func:`build_layouts` and :func:`write_videos` make here. The tests rebuild the
same folders and videos (fixed seeds; the golden file holds checksums that prove they are the same) and
run our loader, sampler, preprocessing, prompt and model on them.

Three checkpoint layouts, all in VideoLLaMA2's format:

- ``base``: ``facetrack tiny-model`` (LM, vision tower and STC connector in ``model.safetensors``).
- ``projector``: ``config.json`` with ``tune_mm_mlp_adapter`` and ``mm_projector.bin`` only, over
  ``base`` (another seed's connector, in float16 as VideoLLaMA2 reads it).
- ``lora``: ``non_lora_trainables.bin`` (a third connector) and a peft LoRA adapter over ``base``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

GOLDEN = Path(__file__).parent / "golden" / "videollama2_reference.json"
VIDEO_DIR = Path(__file__).parent / "golden" / "videollama2_videos"

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANK = 4
LORA_ALPHA = 8
VIDEOS = {
    # name: (width, height, frames, fps)
    "wide_5x3": (200, 120, 37, 10),
    "tall_3x4": (96, 128, 50, 25),
    "square_short": (112, 112, 7, 5),
}


# ------------------------------------------------------------------------------------------- builders


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """A checksum of a state dict: names, shapes, dtypes and the float32 bytes of every tensor."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.float().contiguous().numpy().tobytes())
    return h.hexdigest()


def tensor_sha256(x: torch.Tensor | np.ndarray) -> str:
    """A checksum of a tensor's float32 values (shape included)."""
    a = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
    return hashlib.sha256(str(a.shape).encode() + np.ascontiguousarray(a).tobytes()).hexdigest()


def _tiny(seed: int):
    from facetrack.model.tiny import build_tiny, tiny_spec

    spec = tiny_spec(face_encoder="none")
    spec.name = f"facetrack-tiny-random-seed{seed}"
    return build_tiny(spec, seed=seed)


def _projector_state(seed: int, fp16: bool) -> dict[str, torch.Tensor]:
    model = _tiny(seed)
    out = {}
    for k, v in model.mm_projector.state_dict().items():
        v = v.detach().clone()
        out[f"model.mm_projector.{k}"] = v.half() if fp16 else v
    return out


def _lora_state(base_state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random LoRA A and B (B non-zero, so the adapter changes the output) for every target linear."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(base_state):
        parts = name.split(".")
        if not (name.startswith("model.layers.") and parts[-1] == "weight" and parts[-2] in LORA_TARGETS):
            continue
        out_f, in_f = base_state[name].shape
        stem = "base_model.model." + name.removesuffix(".weight")
        out[f"{stem}.lora_A.weight"] = torch.randn(LORA_RANK, in_f, generator=gen) * 0.2
        out[f"{stem}.lora_B.weight"] = torch.randn(out_f, LORA_RANK, generator=gen) * 0.2
    return out


def build_layouts(root: Path) -> dict[str, Any]:
    """Write the ``base``, ``projector`` and ``lora`` folders under ``root``; return paths and checksums.

    Folder names matter to VideoLLaMA2's loader: a LoRA folder's name must contain ``lora``, and its base's
    ``mistral`` (otherwise the base is taken for a Qwen2 model). Every folder
    carries the vision tower's ``clip_vision_tower/`` (config and preprocessor) because its config names
    it by that relative path.
    """
    from safetensors.torch import save_file

    from facetrack.model.saving import save_videollama2
    from facetrack.model.tiny import write_mistral_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    base = root / "tiny-mistral"
    model = _tiny(0)
    save_videollama2(model, base)
    write_mistral_tokenizer(base)
    base_cfg = json.loads((base / "config.json").read_text())
    # VideoLLaMA2's transformers (4.40) reads the rotary base from a top-level rope_theta only (real
    # VideoLLaMA2 configs have it); without it, it runs Mistral with 10000 instead of the model's own.
    theta = (base_cfg.get("rope_parameters") or {}).get("rope_theta")
    if "rope_theta" not in base_cfg and theta is not None:
        base_cfg["rope_theta"] = theta
        (base / "config.json").write_text(json.dumps(base_cfg, indent=2))

    def mm_folder(name: str) -> tuple[Path, dict[str, Any]]:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copytree(base / "clip_vision_tower", folder / "clip_vision_tower", dirs_exist_ok=True)
        cfg = dict(base_cfg, _name_or_path=str(base))
        return folder, cfg

    projector, cfg = mm_folder("tiny-projector")
    cfg["tune_mm_mlp_adapter"] = True
    (projector / "config.json").write_text(json.dumps(cfg, indent=2))
    proj_state = _projector_state(1, fp16=True)
    torch.save(proj_state, projector / "mm_projector.bin")

    lora, cfg = mm_folder("tiny-lora")
    (lora / "config.json").write_text(json.dumps(cfg, indent=2))
    non_lora = {f"base_model.model.{k}": v for k, v in _projector_state(2, fp16=False).items()}
    torch.save(non_lora, lora / "non_lora_trainables.bin")
    llm_state = {k: v for k, v in model.llm.state_dict().items()}
    adapter = _lora_state(llm_state, seed=3)
    save_file(adapter, str(lora / "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "target_modules": list(LORA_TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
    }
    (lora / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=2))
    return {
        "paths": {"base": base, "projector": projector, "lora": lora},
        "sha256": {
            "base_model": state_sha256(model.state_dict()),
            "projector_bin": state_sha256(proj_state),
            "non_lora_trainables": state_sha256(non_lora),
            "adapter": state_sha256(adapter),
        },
    }


def video_frames(width: int, height: int, frames: int, seed: int) -> np.ndarray:
    """``(frames, height, width, 3)`` uint8: a drifting colour gradient, a moving block and a frame bar.

    Every frame differs strongly from its neighbours (the block moves, the bar's length is the frame
    number), so a sampler that picks a neighbouring frame gives visibly different pixels.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    out = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        t = i / max(frames - 1, 1)
        for c in range(3):
            wave = np.sin(xx / (9 + 4 * c) + phase[c] + 3 * t) * np.cos(yy / (7 + 3 * c) - 2 * t)
            out[i, :, :, c] = (127 + 100 * wave).astype(np.uint8)
        bs = max(8, min(width, height) // 4)
        x0 = int((width - bs) * t)
        y0 = int((height - bs) * (0.5 + 0.5 * np.sin(6 * t)))
        out[i, y0 : y0 + bs, x0 : x0 + bs] = (255, 255 - int(200 * t), int(200 * t))
        bar = int(round(width * (i + 1) / frames))
        out[i, :4, :bar] = 0
    return out


def write_videos(root: Path) -> dict[str, Path]:
    """Write :data:`VIDEOS` as H.264 (yuv420p, fixed quality, one thread) MP4 files under ``root``."""
    import av

    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for seed, (name, (w, h, n, fps)) in enumerate(VIDEOS.items()):
        path = root / f"{name}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps, 1))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.codec_context.options = {"crf": "18", "preset": "medium", "threads": "1"}
            stream.thread_count = 1
            for frame in video_frames(w, h, n, seed):
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths[name] = path
    return paths


# ---------------------------------------------------------------------------------------------- tests

STEPS = 12  # greedy tokens recorded from the reference


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("av")
    pytest.importorskip("safetensors")
    root = tmp_path_factory.mktemp("reference")
    info = build_layouts(root / "ckpt")
    # The videos the reference decoded, as written by write_videos() then (an encoder of another version
    # may write other bytes; a decoder gives the same frames from the same bytes).
    info["videos"] = {name: VIDEO_DIR / f"{name}.mp4" for name in VIDEOS}
    return info


def test_frame_indices_are_videollama2s(golden: dict[str, Any]) -> None:
    from facetrack.video import videollama2_frame_indices

    assert len(golden["frame_indices"]) >= 30
    for key, expected in golden["frame_indices"].items():
        n, t = (int(x) for x in key.split("/"))
        assert videollama2_frame_indices(n, t).tolist() == expected, key


def test_the_folders_hold_the_reference_run_weights(built: dict[str, Any], golden: dict[str, Any]) -> None:
    assert built["sha256"] == golden["build_sha256"], "not the checkpoints the reference ran"
    for name, path in built["videos"].items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == golden["video_file_sha256"][name], name


@pytest.mark.parametrize("layout", ["base", "projector", "lora"])
def test_our_inference_inputs_and_outputs_are_videollama2s(
    layout: str, built: dict[str, Any], golden: dict[str, Any]
) -> None:
    from facetrack.caption import Captioner, CaptionerConfig
    from facetrack.video import VideoConfig, sample_frames

    ref = golden["layouts"][layout]
    cap = Captioner(CaptionerConfig(model=str(built["paths"][layout]), device="cpu", dtype="float32"))
    cap.setup()
    model, tok = cap.model, cap.tokenizer
    ids = list(cap._ids)
    assert ids == ref["input_ids"], "token ids as VideoLLaMA2's tokeniser gives them (-201 for the video)"
    for name, path in built["videos"].items():
        want = ref["per_video"][name]
        frames, _ = sample_frames(str(path), VideoConfig(num_frames=cap.num_frames))
        assert [int(i) for i in frames.indices] == want["frame_indices"], name
        pixels = model.preprocess_frames(frames.images)
        assert list(pixels.shape) == want["pixels_shape"]
        assert float(pixels.double().sum()) == pytest.approx(want["pixels_sum"], abs=1e-2), name
        with torch.inference_mode():
            logits = model([ids], pixels[None], padding_side="right").logits[0].float()
            greedy = model.generate(
                [ids], pixels[None], max_new_tokens=STEPS, do_sample=False,
                pad_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
            )[0].tolist()  # fmt: skip
        assert list(logits.shape) == want["logits_shape"]
        assert torch.allclose(logits[-1, :64], torch.tensor(want["logits_last_row_64"]), atol=1e-4), name
        assert torch.allclose(logits[0, :64], torch.tensor(want["logits_first_row_64"]), atol=1e-4), name
        assert torch.topk(logits[-1], 8).indices.tolist() == want["logits_last_top"], name
        assert greedy == want["greedy"], name


def test_pad_mode_gives_videollama2s_padded_pixels(built: dict[str, Any], golden: dict[str, Any]) -> None:
    from facetrack.caption import Captioner, CaptionerConfig
    from facetrack.video import VideoConfig, sample_frames

    cap = Captioner(CaptionerConfig(model=str(built["paths"]["base"]), device="cpu", preprocess="pad"))
    cap.setup()
    for name, path in built["videos"].items():
        want = golden["layouts"]["base"]["per_video"][name]
        frames, _ = sample_frames(str(path), VideoConfig(num_frames=cap.num_frames))
        pixels = cap.model.preprocess_frames(frames.images)
        assert float(pixels.double().sum()) == pytest.approx(want["pixels_pad_sum"], abs=1e-2), name
        if name != "square_short":  # a square frame is the same cropped or padded
            assert want["pixels_pad_sum"] != pytest.approx(want["pixels_sum"], abs=1.0)


def test_videollama2_folder_keeps_a_top_level_rope_theta(tmp_path: Path) -> None:
    """VideoLLaMA2's transformers 4.40 reads a top-level rope_theta (else RoPE runs with 10000)."""
    from facetrack.model.saving import save_videollama2

    save_videollama2(_tiny(0), tmp_path / "tiny")
    cfg = json.loads((tmp_path / "tiny" / "config.json").read_text())
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
    assert theta == 1000000.0
    assert cfg.get("rope_theta") == theta
