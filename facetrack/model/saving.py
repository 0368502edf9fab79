"""Write checkpoints: our format (:func:`save_checkpoint`) and VideoLLaMA2 folders (:func:`save_videollama2`),
with safetensors sharding."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from facetrack.model.checkpoint_files import (
    ADAPTER_DIR,
    BIN_WEIGHTS,
    FORMAT_NAME,
    FORMAT_VERSION,
    OUR_CONFIG,
    PROJECTOR_FILE,
    SAFE_INDEX,
    SAFE_WEIGHTS,
)
from facetrack.model.modeling import FaceTrackMM, checkpoint_state


def _save_safetensors(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int) -> list[str]:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = state[key]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / SAFE_WEIGHTS), metadata={"format": "pt"})
        return [SAFE_WEIGHTS]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / SAFE_INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")
    return names


def _split_peft(model: FaceTrackMM) -> tuple[dict[str, torch.Tensor], Any]:
    """Checkpoint weights of a model whose LM may be a peft model: (base weights, the peft model or None)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        PeftModel = ()  # noqa: N806
    llm = model.llm
    if not isinstance(llm, PeftModel):
        return checkpoint_state(model), None
    state = checkpoint_state(model)
    base: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if "lora_" in key or ".modules_to_save." in key:
            continue
        key = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        base[key] = value
    return base, llm


def save_checkpoint(
    model: FaceTrackMM, tokenizer: Any, out_dir: str | os.PathLike, max_shard_bytes: int = 5 * 2**30
) -> Path:
    """Write ``model`` in the FaceTrack-MM format; a peft-wrapped LM becomes base weights + ``adapter/``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state, peft_model = _split_peft(model)
    spec = model.spec.to_dict()
    spec["llm"] = llm_config_dict(model)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "spec": spec}
    _save_safetensors(state, out, max_shard_bytes)
    if peft_model is not None:
        peft_model.save_pretrained(str(out / ADAPTER_DIR))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    (out / OUR_CONFIG).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def llm_config_dict(model: FaceTrackMM) -> dict[str, Any]:
    """The language model's config as a mapping, without the keys that name where or how it was saved."""
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    data = llm.config.to_dict()
    for key in ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype"):
        data.pop(key, None)
    return data


def save_videollama2(
    model: FaceTrackMM,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    weights: str = "safetensors",
    projector_file: bool = False,
    include_vision_tower: bool = True,
    vision_tower_dir: str = "clip_vision_tower",
    face_encoder_file: str | None = None,
) -> Path:
    """Write ``model`` as a VideoLLaMA2 folder (used for tiny test models and for exporting).

    Args:
        weights: ``safetensors`` (``model.safetensors``) or ``bin`` (``pytorch_model.bin``).
        projector_file: put the connector in ``mm_projector.bin`` instead of the main weights.
        include_vision_tower: keep ``model.vision_tower.*`` in the weights; the tower's config and
            preprocessor are written to ``vision_tower_dir`` either way (with its own weights when not
            included), and ``mm_vision_tower`` names that folder.
        face_encoder_file: write a FaceXFormer face encoder as a FaceXFormer-style checkpoint
            (``{"state_dict_backbone": ...}``) under this name, referenced by ``face_encoder_path``,
            instead of keeping it in the main weights.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = model.spec
    state = checkpoint_state(model)
    llm_cfg = llm_config_dict(model)
    base_type = llm_cfg.get("model_type", "mistral")
    config = dict(llm_cfg)
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        # transformers 4 (VideoLLaMA2's) reads a top-level rope_theta; without it RoPE runs with 10000.
        config.setdefault("rope_theta", rope["rope_theta"])
    config.update(
        model_type=f"videollama2_{base_type}",
        architectures=[f"Videollama2{base_type.capitalize()}ForCausalLM"],
        mm_vision_tower=vision_tower_dir,
        mm_projector_type=spec.projector_type,
        mm_hidden_size=model.vision_tower.hidden_size,
        mm_vision_select_layer=spec.select_layer,
        mm_vision_select_feature=spec.select_feature,
        image_aspect_ratio="pad" if spec.preprocess == "pad" else "square",
        facetrack_preprocess=spec.preprocess,
        num_frames=spec.num_frames,
        use_mm_proj=True,
        tune_mm_mlp_adapter=False,
    )
    if spec.face_encoder != "none":
        config.update(face_encoder=spec.face_encoder, face_tokens_per_frame=spec.face_tokens_per_frame)
        if spec.face_encoder_arch:
            config["face_encoder_arch"] = spec.face_encoder_arch
    if spec.name:
        config["facetrack_name"] = spec.name
    if face_encoder_file and model.face_encoder is not None:
        face = {
            k.removeprefix("model.face_encoder."): state.pop(k).detach().cpu().contiguous()
            for k in list(state)
            if k.startswith("model.face_encoder.")
        }
        torch.save({"state_dict_backbone": face}, out / face_encoder_file)
        config["face_encoder_path"] = face_encoder_file
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    tower = out / vision_tower_dir
    tower.mkdir(exist_ok=True)
    vision_cfg = model.vision_tower.config.to_dict()
    vision_cfg.pop("transformers_version", None)
    (tower / "config.json").write_text(json.dumps(vision_cfg, indent=2), encoding="utf-8")
    (tower / "preprocessor_config.json").write_text(
        json.dumps(model.image_processor.to_dict(), indent=2), encoding="utf-8"
    )
    tower_keys = [k for k in state if k.startswith("model.vision_tower.")]
    if not include_vision_tower:
        from safetensors.torch import save_file

        tower_state = {
            k.removeprefix("model.vision_tower.vision_tower."): state.pop(k).detach().cpu().contiguous()
            for k in tower_keys
        }
        save_file(tower_state, str(tower / SAFE_WEIGHTS), metadata={"format": "pt"})

    if projector_file:
        projector = {
            k: state.pop(k).detach().cpu().contiguous()
            for k in list(state)
            if k.startswith("model.mm_projector.")
        }
        torch.save(projector, out / PROJECTOR_FILE)
    if weights == "safetensors":
        _save_safetensors(state, out, max_shard_bytes=5 * 2**30)
    elif weights == "bin":
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, out / BIN_WEIGHTS)
    else:
        raise ValueError(f"weights must be 'safetensors' or 'bin', got {weights!r}")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
