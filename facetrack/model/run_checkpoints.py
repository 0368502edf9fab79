"""Fine-tuning checkpoints: the exportable files a checkpoint holds, and finding the latest complete one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from facetrack import storage
from facetrack.model.checkpoint_files import NON_LORA_FILE
from facetrack.model.lora import is_lora_name
from facetrack.model.modeling import FaceTrackMM, checkpoint_key

TRAIN_STATE_FILE = "train_state.json"
"""A checkpoint's training state (step, data position, base model, face branch), written last."""


def save_trainables(model: FaceTrackMM, folder: Path, state: dict[str, Any]) -> None:
    """The exportable part of a checkpoint: the peft adapter (``adapter/``), the full-rank weights
    (``non_lora_trainables.bin``) and ``train_state.json``. Weights must be whole (gathered under ZeRO-3)."""
    model.llm.save_pretrained(str(folder / "adapter"))
    torch.save(non_lora_state(model), folder / NON_LORA_FILE)
    write_json(folder / TRAIN_STATE_FILE, state)


def non_lora_state(model: FaceTrackMM) -> dict[str, torch.Tensor]:
    """The full-rank trainable weights under checkpoint (VideoLLaMA2) names, on CPU."""
    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad and not is_lora_name(name):
            out[checkpoint_key(name)] = param.detach().to("cpu").clone()
    return out


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON with sorted keys to a local file."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def checkpoint_complete(folder: str) -> int | None:
    """The step of a checkpoint folder when all of it is there (state and every rank's shard), else None."""
    try:
        state = json.loads(storage.read_text(storage.join(folder, TRAIN_STATE_FILE)))
        shards = list(storage.list_uris(storage.join(folder, "deepspeed"), suffixes="optim_states.pt"))
    except (FileNotFoundError, storage.StorageError, ValueError):
        return None
    return int(state["step"]) if len(shards) == int(state.get("world_size", -1)) else None


def checkpoint_folders(run_dir: str) -> list[str]:
    """The ``checkpoint_*`` folders under a run folder that hold a ``train_state.json``, complete or not.

    Raises:
        FileNotFoundError: no such run folder.
        facetrack.storage.StorageError: it cannot be listed.
    """
    folders = []
    for uri in storage.list_uris(run_dir, suffixes=TRAIN_STATE_FILE):
        folder = uri[: -len(TRAIN_STATE_FILE)].rstrip("/")
        if folder.rsplit("/", 1)[-1].startswith("checkpoint_"):
            folders.append(folder)
    return folders


def latest_checkpoint(run_dir: str) -> str | None:
    """The complete checkpoint with the highest step under a run folder.

    The run folder is scanned rather than trusting only Ray's registry: Ray registers a reported
    checkpoint a moment after the workers upload it, so a crash right after a checkpoint can leave the
    newest checkpoint on storage but unregistered.
    """
    try:
        folders = checkpoint_folders(run_dir)
    except (FileNotFoundError, storage.StorageError):
        return None
    best: tuple[int, str] | None = None
    for folder in folders:
        step = checkpoint_complete(folder)
        if step is not None and (best is None or step > best[0]):
            best = (step, folder)
    return None if best is None else best[1]


def local_checkpoint(uri: str, tmp: Path) -> Path:
    """A local folder with the checkpoint's files (the folder itself when it is local)."""
    if not storage.is_remote(uri):
        return Path(uri)
    for item in storage.list_uris(uri):
        target = tmp / item[len(uri) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with storage.open_read(item) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return tmp
