"""The language-model side of a checkpoint: tokenizer, causal LM weights and a peft LoRA adapter."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from facetrack.model.checkpoint_files import (
    BIN_WEIGHTS,
    SAFE_WEIGHTS,
    CheckpointError,
    check_safetensors,
    check_torch_file,
    weight_files,
)
from facetrack.model.modeling import FaceTrackMM, llm_config_from_dict


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and progress bars (the multimodal keys and model types of a
    VideoLLaMA2 folder are unknown to the bare LM and make it complain)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()


def load_tokenizer(folder: Path):
    """The folder's tokenizer (sentencepiece ``tokenizer.model`` or ``tokenizer.json``), left-padding."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - tokenizer loading raises many types
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds tokenizer files (``tokenizer.json`` or ``tokenizer.model``)."""
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()


def load_llm(folder: Path, config: dict[str, Any], dtype: torch.dtype):
    """The causal LM from ``folder``'s weights and a config mapping; every LM weight must be there."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    files = weight_files(folder)
    if not files:
        raise CheckpointError(f"no language model weights in {folder} ({SAFE_WEIGHTS} or {BIN_WEIGHTS})")
    cfg = llm_config_from_dict(config)
    try:
        with quiet_transformers():
            llm, info = AutoModelForCausalLM.from_pretrained(
                str(folder),
                config=cfg,
                dtype=dtype,
                generation_config=GenerationConfig.from_model_config(cfg),
                output_loading_info=True,
            )
    except Exception as exc:  # noqa: BLE001 - transformers raises many types on bad weights
        raise CheckpointError(f"cannot load the language model from {folder}: {exc}") from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(f"language model weights in {folder} lack {len(missing)} tensors: {shown}")
    return llm.eval()


def apply_adapter(model: FaceTrackMM, adapter_dir: Path, merge: bool) -> None:
    """Wrap ``model.llm`` with the peft adapter in ``adapter_dir``, merged into the weights when ``merge``."""
    try:
        from peft import PeftModel
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("LoRA checkpoints need peft: pip install 'facetrack[model]'") from exc
    if not any((adapter_dir / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise CheckpointError(f"missing adapter weights in {adapter_dir} (adapter_model.safetensors or .bin)")
    if (adapter_dir / "adapter_model.safetensors").is_file():
        check_safetensors(adapter_dir / "adapter_model.safetensors")
    else:
        check_torch_file(adapter_dir / "adapter_model.bin")
    try:
        with quiet_transformers():
            peft_model = PeftModel.from_pretrained(model.llm, str(adapter_dir), is_trainable=False)
    except Exception as exc:  # noqa: BLE001 - peft raises many types
        raise CheckpointError(f"cannot apply the LoRA adapter in {adapter_dir}: {exc}") from exc
    model.llm = peft_model.merge_and_unload() if merge else peft_model
