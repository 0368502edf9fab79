"""Checkpoint files: names, format detection, weight-file discovery and checks, reading tensors.

Formats:

- **VideoLLaMA2 folder**: ``config.json`` with ``mm_vision_tower``, ``mm_projector_type``,
  ``mm_hidden_size``, ... and a ``model_type`` such as ``videollama2_mistral``; LLM weights
  (``model.safetensors[.index.json]`` or ``pytorch_model.bin[.index.json]``) holding also
  ``model.mm_projector.*`` and usually ``model.vision_tower.*``; or the projector alone in
  ``mm_projector.bin`` next to a base LLM. A LoRA folder adds ``adapter_config.json`` + adapter weights and
  ``non_lora_trainables.bin``; its base model is ``model_base`` or the config's ``_name_or_path``.
  FaceTrack-MM adds ``face_encoder``, ``face_tokens_per_frame`` (and for FaceXFormer ``face_encoder_path``)
  to the config and ``model.face_projector.*`` to the weights.
- **FaceTrack-MM folder** (what :func:`facetrack.model.saving.save_checkpoint` writes):
  ``facetrack.json`` (the whole :class:`~facetrack.model.modeling.ModelSpec`), ``model.safetensors``
  (sharded with an index when large), tokenizer files, and an optional peft adapter in ``adapter/``.

Weights are read with safetensors or ``torch.load(weights_only=True)``; nothing runs remote code.
A missing, truncated or unreadable weight file raises :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

OUR_CONFIG = "facetrack.json"
FORMAT_NAME = "facetrack-mm"
FORMAT_VERSION = 1
ADAPTER_DIR = "adapter"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
PROJECTOR_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"
"""VideoLLaMA2's name for the full-rank trainable weights saved next to a LoRA adapter."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, inconsistent or of a format this package does not read."""


def detect_format(folder: Path) -> str:
    """``facetrack``, ``videollama2-lora`` or ``videollama2``.

    Raises:
        CheckpointError: the folder holds neither format.
    """
    if (folder / OUR_CONFIG).is_file():
        return "facetrack"
    config = folder / "config.json"
    if config.is_file():
        data = read_json(config)
        if any(k in data for k in ("mm_vision_tower", "mm_projector_type", "vision_tower")):
            return "videollama2-lora" if (folder / "adapter_config.json").is_file() else "videollama2"
    raise CheckpointError(
        f"{folder} is neither a FaceTrack-MM checkpoint ({OUR_CONFIG}) nor a VideoLLaMA2 folder "
        "(config.json with mm_vision_tower / mm_projector_type)"
    )


def read_json(path: Path) -> dict[str, Any]:
    """A checkpoint file's JSON object; :class:`CheckpointError` when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"missing file {path}") from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def check_safetensors(path: Path) -> None:
    """Raise :class:`CheckpointError` if a safetensors file is missing, truncated or has a bad header."""
    if not path.is_file():
        raise CheckpointError(f"missing weight file {path}")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is truncated ({size} bytes; no safetensors header)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(f"{path} is truncated: its header needs {n} bytes, the file has {size}")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if size < 8 + n + end:
        raise CheckpointError(f"{path} is truncated: {size} bytes, the header describes {8 + n + end}")


def check_torch_file(path: Path) -> None:
    """Raise :class:`CheckpointError` if a ``torch.save`` file is missing or truncated."""
    if not path.is_file():
        raise CheckpointError(f"missing weight file {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path} is truncated or not a torch checkpoint: {exc}") from exc


def weight_files(folder: Path) -> list[Path]:
    """The LM weight files of a folder (shards resolved through the index), each checked.

    Returns an empty list when the folder holds no LM weights.
    """
    for index_name, single, check in (
        (SAFE_INDEX, SAFE_WEIGHTS, check_safetensors),
        (BIN_INDEX, BIN_WEIGHTS, check_torch_file),
    ):
        index = folder / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} has no weight_map")
            files = [folder / name for name in sorted(set(weight_map.values()))]
            for f in files:
                check(f)
            return files
        if (folder / single).exists():
            check(folder / single)
            return [folder / single]
    return []


def load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a checked file, as a flat name -> tensor mapping."""
    check_torch_file(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise CheckpointError(f"{path} could not be read as tensors (weights_only): {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return data


def read_tensors(files: Iterable[Path], keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The tensors whose names satisfy ``keep`` from safetensors or torch files (others are not read)."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    for key in f.keys():
                        if keep(key):
                            out[key] = f.get_tensor(key)
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(f"{path} could not be read: {exc}") from exc
        else:
            for key, value in load_torch_file(path).items():
                if keep(key) and isinstance(value, torch.Tensor):
                    out[key] = value
    return out


def is_llm_key(key: str) -> bool:
    """Whether a checkpoint tensor name belongs to the language model (not a multimodal part)."""
    return not key.startswith(
        ("model.vision_tower.", "model.mm_projector.", "model.face_projector.", "model.face_encoder.")
    )
