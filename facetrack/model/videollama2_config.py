"""What a VideoLLaMA2 ``config.json`` says: its multimodal keys, vision tower, family and ModelSpec."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from facetrack.model.checkpoint_files import detect_format, read_json
from facetrack.model.modeling import ModelSpec
from facetrack.model.sources import resolve_source

# VideoLLaMA2 config keys that describe the multimodal parts, not the language model.
MM_KEYS = (
    "mm_vision_tower",
    "vision_tower",
    "mm_projector_type",
    "mm_hidden_size",
    "mm_vision_select_layer",
    "mm_vision_select_feature",
    "mm_use_im_start_end",
    "mm_use_im_patch_token",
    "image_aspect_ratio",
    "num_frames",
    "use_mm_proj",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "mm_projector_lr",
    "pretrain_mm_mlp_adapter",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "face_encoder",
    "face_tokens_per_frame",
    "face_encoder_path",
    "face_encoder_arch",
    "facetrack_name",
    "facetrack_preprocess",
)

# Vision towers whose shape is known, so that a checkpoint carrying the tower's weights loads offline.
KNOWN_VISION_TOWERS: dict[str, dict[str, Any]] = {
    "openai/clip-vit-large-patch14-336": {
        "config": {
            "model_type": "clip_vision_model",
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "image_size": 336,
            "patch_size": 14,
            "projection_dim": 768,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        },
        "image": {"crop_size": 336},
    },
}


V1_MODEL_TYPES = ("videollama2", "videollama2_mistral", "videollama2_mixtral", "videollama2_llama")
"""VideoLLaMA2 v1.x language models; their authors ran them with the ``llama2`` conversation template."""


def checkpoint_family(folder: Path, kind: str | None = None) -> str:
    """``videollama2-v1``, ``videollama2-later`` or ``facetrack``.

    See :attr:`facetrack.model.loading.LoadedModel.family`.
    """
    kind = kind or detect_format(folder)
    if kind == "facetrack":
        return "facetrack"
    model_type = str(read_json(folder / "config.json").get("model_type", "videollama2_mistral"))
    return "videollama2-v1" if model_type in V1_MODEL_TYPES else "videollama2-later"


def _vision_source(tower: str, folders: Iterable[Path]) -> Path | None:
    for candidate in (*(f / tower for f in folders), Path(tower).expanduser()):
        if tower and candidate.is_dir() and (candidate / "config.json").is_file():
            return candidate
    return None


def vision_spec(tower: str, folders: Iterable[Path], have_weights: bool) -> tuple[dict, dict, Path | None]:
    """``(vision config, preprocessor mapping, folder holding the tower)`` for ``mm_vision_tower``.

    The tower is looked up relative to the checkpoint (and its base), as a local folder, among the known
    towers (only when the checkpoint carries the tower's weights) and finally on the hub.
    """
    local = _vision_source(tower, folders)
    if local is None and have_weights and tower in KNOWN_VISION_TOWERS:
        known = KNOWN_VISION_TOWERS[tower]
        return dict(known["config"]), dict(known["image"]), None
    if local is None:
        local = resolve_source(tower)
    config = read_json(local / "config.json")
    pre = local / "preprocessor_config.json"
    image = read_json(pre) if pre.is_file() else {}
    return config, image, local


def spec_from_videollama2(
    cfg: dict[str, Any], folders: list[Path], have_tower: bool
) -> tuple[ModelSpec, Path | None]:
    """The :class:`ModelSpec` of a VideoLLaMA2 config and the folder holding its vision tower (or None)."""
    tower = cfg.get("mm_vision_tower") or cfg.get("vision_tower") or ""
    vision, image, tower_dir = vision_spec(tower, folders, have_tower)
    llm = {k: v for k, v in cfg.items() if k not in MM_KEYS}
    model_type = str(llm.get("model_type", "videollama2_mistral"))
    base_type = model_type.removeprefix("videollama2").lstrip("_") or "mistral"
    llm["model_type"] = base_type
    spec = ModelSpec(
        llm=llm,
        vision=vision,
        image=image,
        vision_tower=tower,
        select_layer=int(cfg.get("mm_vision_select_layer", -2)),
        select_feature=str(cfg.get("mm_vision_select_feature", "patch")),
        projector_type=str(cfg.get("mm_projector_type", "linear")),
        num_frames=int(cfg.get("num_frames") or 8),
        # VideoLLaMA2 infers with a crop whatever image_aspect_ratio says; our exports record theirs.
        preprocess=str(cfg.get("facetrack_preprocess") or "crop"),
        face_encoder=str(cfg.get("face_encoder", "none")),
        face_tokens_per_frame=int(cfg.get("face_tokens_per_frame", 4)),
        face_encoder_arch=cfg.get("face_encoder_arch"),
        name=str(cfg.get("facetrack_name", "")),
    )
    return spec, tower_dir
