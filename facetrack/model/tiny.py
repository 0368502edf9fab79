"""Tiny random FaceTrack-MM models and the real Mistral tokenizer shipped in ``mistral-common``.

A tiny model has the real architecture (CLIP vision tower, STC connector with depth-4 RegStages, face
projector, Mistral LM with the 32000-token vocabulary) at a small width, and random weights from a fixed
seed: its captions are noise. It exists for offline demos, tests and benchmarks of the machinery.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facetrack.model.modeling import FaceTrackMM, ModelSpec


@dataclass
class TinySize:
    """Widths and depths of a small model (the defaults make a ~4.5M-parameter test model)."""

    image_size: int = 112
    patch_size: int = 14
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    llm_hidden: int = 64
    llm_layers: int = 2
    llm_heads: int = 4
    llm_kv_heads: int = 2
    llm_intermediate: int = 128
    vocab_size: int = 32000
    num_frames: int = 8
    face_encoder: str = "vision_tower"
    face_tokens_per_frame: int = 4
    init_std: float = 0.1
    """Larger than usual so that a random model's next-token choices are well separated."""


BENCH_SIZE = TinySize(
    image_size=224, vision_hidden=128, vision_layers=4, vision_heads=4, llm_hidden=256, llm_layers=4,
    llm_heads=8, llm_kv_heads=4, llm_intermediate=768,
)  # fmt: skip
"""The benchmark's small model: 224 px CLIP (width 128, 4 layers), Mistral width 256, 4 layers."""


def mistral_tokenizer_file() -> Path:
    """Mistral's sentencepiece tokenizer (v1, 32000 tokens) as shipped inside ``mistral-common``."""
    try:
        import mistral_common
    except ImportError as exc:
        raise ImportError("the tiny model needs mistral-common: pip install 'facetrack[model]'") from exc
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(f"mistral-common has no tokenizer.model.v1 (looked at {path})")
    return path


def write_mistral_tokenizer(out_dir: str | Path) -> Path:
    """Write Mistral's tokenizer as a transformers folder: ``tokenizer.model`` + ``tokenizer_config.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mistral_tokenizer_file(), out / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 32768,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return out


def tiny_spec(size: TinySize | None = None, **overrides: Any) -> ModelSpec:
    """The :class:`ModelSpec` of a tiny model (``overrides`` replace :class:`TinySize` fields)."""
    size = size or TinySize()
    if overrides:
        size = TinySize(**{**size.__dict__, **overrides})
    llm = {
        "model_type": "mistral",
        "vocab_size": size.vocab_size,
        "hidden_size": size.llm_hidden,
        "intermediate_size": size.llm_intermediate,
        "num_hidden_layers": size.llm_layers,
        "num_attention_heads": size.llm_heads,
        "num_key_value_heads": size.llm_kv_heads,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "initializer_range": size.init_std,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": size.vision_hidden,
        "intermediate_size": 4 * size.vision_hidden,
        "num_hidden_layers": size.vision_layers,
        "num_attention_heads": size.vision_heads,
        "image_size": size.image_size,
        "patch_size": size.patch_size,
        "projection_dim": size.vision_hidden,
        "hidden_act": "quick_gelu",
        "initializer_range": 0.02,
    }
    return ModelSpec(
        llm=llm,
        vision=vision,
        image={"crop_size": size.image_size},
        vision_tower="clip_vision_tower",
        num_frames=size.num_frames,
        face_encoder=size.face_encoder,
        face_tokens_per_frame=size.face_tokens_per_frame,
    )


def build_tiny(spec: ModelSpec | None = None, seed: int = 0) -> FaceTrackMM:
    """A model with random weights drawn from ``seed`` (same seed, same weights)."""
    spec = spec or tiny_spec()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = FaceTrackMM(spec)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()
