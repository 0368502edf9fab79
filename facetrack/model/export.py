"""Export a fine-tuning checkpoint in a format the captioner loads: a VideoLLaMA2 LoRA folder or ours."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from facetrack import storage
from facetrack.model.checkpoint_files import NON_LORA_FILE, TOKENIZER_FILES, detect_format, load_torch_file
from facetrack.model.language_model import apply_adapter
from facetrack.model.loading import load_model
from facetrack.model.lora import add_face_branch
from facetrack.model.modeling import FaceTrackMM
from facetrack.model.run_checkpoints import TRAIN_STATE_FILE, checkpoint_folders, write_json
from facetrack.model.saving import save_checkpoint
from facetrack.model.sources import resolve_source

EXPORT_INFO_FILE = "finetune.json"


class ExportError(RuntimeError):
    """A fine-tuning checkpoint cannot be found or exported."""


def find_checkpoint(source: str) -> str:
    """The checkpoint folder to export: ``source`` itself when it holds ``train_state.json``, else the
    checkpoint with the highest step under a run folder (``<storage_path>/<name>``).

    Raises:
        ExportError: no fine-tuning checkpoint there.
    """

    source = source.rstrip("/")
    if storage.exists(storage.join(source, TRAIN_STATE_FILE)):
        return source
    best: tuple[int, str] | None = None
    try:
        folders = checkpoint_folders(source)
    except FileNotFoundError as exc:
        raise ExportError(f"{source}: no such run or checkpoint folder") from exc
    for folder in folders:
        step = int(json.loads(storage.read_text(storage.join(folder, TRAIN_STATE_FILE))).get("step", -1))
        if best is None or step > best[0]:
            best = (step, folder)
    if best is None:
        raise ExportError(
            f"{source}: no fine-tuning checkpoint (a checkpoint_* folder with {TRAIN_STATE_FILE})"
        )
    return best[1]


def _fetch_checkpoint(checkpoint: str, dest: Path) -> dict[str, Any]:
    """Copy the exportable part of a checkpoint (adapter, full-rank weights, state) into ``dest``."""

    for uri in storage.list_uris(checkpoint):
        rel = uri[len(checkpoint) :].lstrip("/")
        if rel.startswith("adapter/") or rel in (NON_LORA_FILE, TRAIN_STATE_FILE):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(uri))
    for need in ("adapter/adapter_config.json", NON_LORA_FILE, TRAIN_STATE_FILE):
        if not (dest / need).is_file():
            raise ExportError(f"{checkpoint} lacks {need}")
    return json.loads((dest / TRAIN_STATE_FILE).read_text(encoding="utf-8"))


def _absolute_source(source: str) -> str:
    """A base-model reference that still resolves from elsewhere: local paths made absolute."""
    if storage.is_remote(source) or not Path(source).expanduser().exists():
        return source
    return str(Path(source).expanduser().resolve())


def export_checkpoint(
    source: str, out_dir: str | os.PathLike, *, base: str | None = None, merge: bool = False
) -> dict[str, Any]:
    """Write a fine-tuning checkpoint in a format the captioner loads.

    Args:
        source: a run folder (the latest checkpoint is taken) or one checkpoint folder; local or s3://.
        out_dir: a new local folder.
        base: the base model (default: the one the run trained from).
        merge: merge the adapter into the weights and write a standalone FaceTrack-MM checkpoint.
            Otherwise write the adapter: for a VideoLLaMA2 base, a VideoLLaMA2 LoRA folder
            (``adapter_config.json``, adapter weights, ``non_lora_trainables.bin``, ``config.json`` whose
            ``_name_or_path`` names the base); for a FaceTrack-MM base, the base weights with the trained
            projectors plus the adapter in ``adapter/``.

    Returns:
        What was written: ``checkpoint``, ``step``, ``base``, ``format``, ``out``.

    Raises:
        ExportError: no checkpoint, or it lacks a part.
        facetrack.model.checkpoint_files.CheckpointError: the base model or the adapter cannot be loaded.
    """
    import tempfile

    checkpoint = find_checkpoint(source)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty")
    with tempfile.TemporaryDirectory(prefix="facetrack-export-") as tmp:
        local = Path(tmp)
        state = _fetch_checkpoint(checkpoint, local)
        base_source = _absolute_source(base or str(state.get("model") or ""))
        if not base_source:
            raise ExportError(f"{checkpoint}: the base model is unknown; pass base=")
        base_folder = resolve_source(base_source)
        kind = detect_format(base_folder)
        non_lora = load_torch_file(local / NON_LORA_FILE)
        info = {"checkpoint": checkpoint, "step": state.get("step"), "base": base_source, "out": str(out)}
        out.mkdir(parents=True, exist_ok=True)
        face = state.get("face_encoder", "none")
        if face not in ("none", "vision_tower") and kind == "videollama2":
            base_face = json.loads((base_folder / "config.json").read_text()).get("face_encoder", "none")
            if base_face != face:
                raise ExportError(f"the run trained a {face} face branch that the base {base_source} lacks")
        if not merge and kind == "videollama2":
            _write_videollama2_lora(base_folder, base_source, local, out, state)
            info["format"] = "videollama2-lora"
        else:
            loaded = load_model(base_source, merge_lora=True)
            model = loaded.model
            if face == "vision_tower":
                add_face_branch(model, int(state.get("face_tokens_per_frame", 4)))
            _load_non_lora(model, non_lora)
            apply_adapter(model, local / "adapter", merge)
            save_checkpoint(model, loaded.tokenizer, out)
            info["format"] = "facetrack-merged" if merge else "facetrack-adapter"
        shutil.copyfile(local / TRAIN_STATE_FILE, out / TRAIN_STATE_FILE)
    write_json(out / EXPORT_INFO_FILE, info)
    return info


def _load_non_lora(model: FaceTrackMM, state: dict[str, torch.Tensor]) -> None:
    from facetrack.model.modeling import module_key

    params = dict(model.named_parameters())
    missing = []
    for key, value in state.items():
        name = module_key(key, model.nested_vision)
        if name not in params:
            missing.append(key)
            continue
        with torch.no_grad():
            params[name].copy_(value.to(params[name].dtype))
    if missing:
        raise ExportError(
            f"the base model has no parameter for {len(missing)} trained tensors: {missing[:3]}"
        )


def _write_videollama2_lora(
    base_folder: Path, base_source: str, ckpt: Path, out: Path, state: dict[str, Any]
) -> None:
    config = json.loads((base_folder / "config.json").read_text(encoding="utf-8"))
    config["_name_or_path"] = base_source
    if state.get("face_encoder", "none") != "none":  # a face branch the run may have added to the base
        config["face_encoder"] = state["face_encoder"]
        config["face_tokens_per_frame"] = int(state.get("face_tokens_per_frame", 4))
    tower = str(config.get("mm_vision_tower") or "")
    if tower and (base_folder / tower).is_dir() and not Path(tower).is_absolute():
        shutil.copytree(base_folder / tower, out / tower)
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    for item in (ckpt / "adapter").iterdir():
        if item.is_file():
            shutil.copyfile(item, out / item.name)
    shutil.copyfile(ckpt / NON_LORA_FILE, out / NON_LORA_FILE)
    for name in (*TOKENIZER_FILES, "special_tokens_map.json"):
        if (base_folder / name).is_file():
            shutil.copyfile(base_folder / name, out / name)
