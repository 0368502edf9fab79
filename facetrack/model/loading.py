"""Load FaceTrack-MM checkpoints: VideoLLaMA2 folders (full, projector-only, LoRA) and our format.

Sources (:mod:`facetrack.model.sources`): a local folder, a Hugging Face hub id, or a remote prefix
(``s3://`` and the other :mod:`facetrack.storage` schemes) mirrored once into a local cache. The formats
and their files are described in :mod:`facetrack.model.checkpoint_files`; writing them is
:mod:`facetrack.model.saving`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facetrack.model.checkpoint_files import (
    ADAPTER_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    NON_LORA_FILE,
    OUR_CONFIG,
    PROJECTOR_FILE,
    SAFE_WEIGHTS,
    CheckpointError,
    check_safetensors,
    detect_format,
    is_llm_key,
    load_torch_file,
    read_json,
    read_tensors,
    weight_files,
)
from facetrack.model.face import FaceXFormerEncoder, facexformer_encoder_state
from facetrack.model.language_model import apply_adapter, has_tokenizer, load_llm, load_tokenizer
from facetrack.model.modeling import FaceTrackMM, ModelSpec, module_key
from facetrack.model.sources import model_name, resolve_source
from facetrack.model.videollama2_config import checkpoint_family, spec_from_videollama2

__all__ = ["CheckpointError", "LoadedModel", "load_model", "load_tokenizer"]

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A loaded model with its tokenizer and where it came from."""

    model: FaceTrackMM
    tokenizer: Any
    name: str
    source: str
    kind: str
    """``facetrack``, ``videollama2`` or ``videollama2-lora``."""
    family: str = "facetrack"
    """``videollama2-v1`` (Mistral/Mixtral/Llama based VideoLLaMA2, run with its ``llama2`` template),
    ``videollama2-later`` (other VideoLLaMA2 language models, run with the tokenizer's chat template) or
    ``facetrack`` (our format: the prompt it was trained with)."""

    @property
    def prompt_style(self) -> str:
        """The prompt style (:mod:`facetrack.model.prompt`) this checkpoint is asked with by default."""
        return "llama2" if self.family == "videollama2-v1" else "chat"


def _load_part(model: FaceTrackMM, state: dict[str, torch.Tensor], prefix: str, where: str) -> None:
    """Load ``state`` (module names) into the submodule ``prefix``; all of its parameters must be there."""
    module = model.get_submodule(prefix.rstrip("."))
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    expected = set(module.state_dict())
    missing = sorted(expected - set(sub))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(f"{where} lacks {len(missing)} {prefix.rstrip('.')} tensors: {shown}")
    try:
        module.load_state_dict({k: v for k, v in sub.items() if k in expected}, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: {prefix.rstrip('.')} weights do not fit the config: {exc}") from exc


def _face_checkpoint(path: str, folder: Path) -> dict[str, torch.Tensor]:
    from facetrack import storage

    local = folder / path if not (storage.is_remote(path) or os.path.isabs(path)) else None
    if local is None or not local.exists():
        try:
            local = storage.local_copy(path)
        except (storage.StorageError, FileNotFoundError) as exc:
            raise CheckpointError(f"face encoder checkpoint {path} not found: {exc}") from exc
    if local.suffix == ".safetensors":
        check_safetensors(local)
        state = read_tensors([local], lambda k: True)
    else:
        state = load_torch_file(local)
    try:
        return facexformer_encoder_state(state)
    except ValueError as exc:
        raise CheckpointError(f"{local}: {exc}") from exc


def _strip_peft_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        k = (
            k.removeprefix("base_model.model.")
            if k.startswith("base_model.model.")
            else k.removeprefix("base_model.")
        )
        out[k] = v
    if any(k.startswith("model.model.") for k in out):
        out = {k.removeprefix("model."): v for k, v in out.items()}
    return out


def _assemble(
    spec: ModelSpec,
    llm,
    ckpt: dict[str, torch.Tensor],
    where: str,
    tower_dir: Path | None,
    face_encoder_path: str | None,
    folder: Path,
) -> FaceTrackMM:
    """Build the model around a loaded LM and fill the multimodal parts from checkpoint tensors."""
    face_state: dict[str, torch.Tensor] = {}
    if spec.face_encoder == "facexformer":
        face_state = {
            k[len("model.face_encoder.") :]: v for k, v in ckpt.items() if k.startswith("model.face_encoder.")
        }
        if not face_state:
            if not face_encoder_path:
                raise CheckpointError(
                    f"{where} uses the FaceXFormer face encoder but has no model.face_encoder.* weights "
                    "and no face_encoder_path"
                )
            face_state = _face_checkpoint(face_encoder_path, folder)
        try:
            arch = FaceXFormerEncoder.arch_from_state_dict(face_state)
        except ValueError as exc:
            raise CheckpointError(f"face encoder weights: {exc}") from exc
        if spec.face_encoder_arch and spec.face_encoder_arch != arch:
            raise CheckpointError(
                f"face encoder weights have shape {arch}, the config says {spec.face_encoder_arch}"
            )
        spec.face_encoder_arch = arch
    model = FaceTrackMM(spec, llm=llm)
    nested = model.nested_vision
    state = {module_key(k, nested): v for k, v in ckpt.items() if not is_llm_key(k)}
    if not any(k.startswith("vision_tower.") for k in state):
        if tower_dir is None:
            raise CheckpointError(
                f"{where} has no vision tower weights and the tower {spec.vision_tower!r} was not found"
            )
        tower_files = weight_files(tower_dir)
        if not tower_files:
            raise CheckpointError(f"no weights for the vision tower in {tower_dir}")
        text_parts = ("text_model.", "text_projection", "visual_projection", "logit_scale")
        raw = read_tensors(tower_files, lambda k: not k.startswith(text_parts))
        for k, v in raw.items():
            state[module_key("model.vision_tower.vision_tower." + k, nested)] = v
    _load_part(model, state, "vision_tower.", where)
    _load_part(model, state, "mm_projector.", where)
    if model.has_face_branch:
        _load_part(model, state, "face_projector.", where)
    if model.face_encoder is not None:
        model.face_encoder.load_state_dict(face_state, strict=True)
    return model.eval()


def load_model(
    source: str,
    *,
    base: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
    merge_lora: bool = True,
    face_encoder_path: str | None = None,
) -> LoadedModel:
    """Load a checkpoint of either format from a folder, hub id or ``s3://`` prefix.

    Args:
        source: where the checkpoint is.
        base: base model for a LoRA folder (default: the config's ``_name_or_path``), or the LLM for a
            folder that holds only ``mm_projector.bin``.
        device: where the model goes.
        dtype: parameter dtype (``torch.bfloat16`` on GPU, ``torch.float32`` on CPU).
        cache_dir: cache for ``s3://`` and hub downloads.
        merge_lora: merge a LoRA adapter into the LM weights (otherwise keep it as a peft model).
        face_encoder_path: FaceXFormer checkpoint overriding the config's ``face_encoder_path``.

    Raises:
        CheckpointError: missing/truncated/unreadable files, unknown format or inconsistent weights.
    """
    folder = resolve_source(source, cache_dir)
    kind = detect_format(folder)
    if kind == "facetrack":
        loaded = _load_ours(folder, dtype, merge_lora)
    else:
        loaded = _load_videollama2(folder, kind, base, dtype, cache_dir, merge_lora, face_encoder_path)
    model, tokenizer = loaded
    model.to(device=device, dtype=dtype)
    name = model.spec.name or model_name(os.fspath(source), folder)
    log.info("loaded %s checkpoint %s from %s", kind, name, source)
    family = checkpoint_family(folder, kind)
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=name, source=os.fspath(source), kind=kind, family=family
    )


def _load_videollama2(
    folder: Path,
    kind: str,
    base: str | None,
    dtype: torch.dtype,
    cache_dir: str | os.PathLike | None,
    merge_lora: bool,
    face_encoder_path: str | None,
):
    cfg = read_json(folder / "config.json")
    own_files = weight_files(folder)
    base_folder: Path | None = None
    if kind == "videollama2-lora" or not own_files:
        base = base or cfg.get("_name_or_path")
        if not base:
            what = "LoRA folder" if kind == "videollama2-lora" else "folder without LM weights"
            raise CheckpointError(f"{folder} is a {what}; give its base model (model_base)")
        base_folder = resolve_source(base, cache_dir)
    lm_folder = base_folder if base_folder is not None else folder
    lm_files = weight_files(lm_folder)

    # Multimodal tensors, later sources winning: the base's weights and mm_projector.bin, this folder's
    # weights and mm_projector.bin, then a LoRA folder's non-LoRA trainables.
    ckpt: dict[str, torch.Tensor] = {}
    for source_folder, files in ((base_folder, lm_files), (folder, own_files)):
        if source_folder is None:
            continue
        ckpt.update(read_tensors(files, lambda k: not is_llm_key(k)))
        projector = source_folder / PROJECTOR_FILE
        if projector.is_file():
            ckpt.update(
                {k: v for k, v in load_torch_file(projector).items() if k.startswith("model.mm_projector.")}
            )
    if kind == "videollama2-lora":
        non_lora = folder / NON_LORA_FILE
        if not non_lora.is_file():
            raise CheckpointError(
                f"missing {non_lora} (the LoRA folder's projector and other full-rank weights)"
            )
        ckpt.update(_strip_peft_prefix(load_torch_file(non_lora)))

    have_tower = any(k.startswith("model.vision_tower.") for k in ckpt)
    folders = [folder] + ([base_folder] if base_folder is not None else [])
    spec, tower_dir = spec_from_videollama2(cfg, folders, have_tower)
    llm = load_llm(lm_folder, spec.llm, dtype)
    extra_llm = {k: v for k, v in ckpt.items() if is_llm_key(k)}
    if extra_llm:  # e.g. resized embeddings saved among the non-LoRA trainables
        try:
            llm.load_state_dict(extra_llm, strict=False)
        except RuntimeError as exc:
            raise CheckpointError(f"{folder}: language model tensors do not fit the config: {exc}") from exc
    face_path = face_encoder_path or cfg.get("face_encoder_path")
    model = _assemble(spec, llm, ckpt, str(folder), tower_dir, face_path, folder)
    if kind == "videollama2-lora":
        apply_adapter(model, folder, merge_lora)
    tok_folder = folder if has_tokenizer(folder) else lm_folder
    return model, load_tokenizer(tok_folder)


def _load_ours(folder: Path, dtype: torch.dtype, merge_lora: bool):
    meta = read_json(folder / OUR_CONFIG)
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{folder / OUR_CONFIG} is not a {FORMAT_NAME} config")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{folder} was written by a newer version (format {meta['format_version']})")
    try:
        spec = ModelSpec.from_dict(meta["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / OUR_CONFIG}: bad spec: {exc}") from exc
    files = weight_files(folder)
    if not files:
        raise CheckpointError(f"missing weight file {folder / SAFE_WEIGHTS}")
    llm = load_llm(folder, spec.llm, dtype)
    ckpt = read_tensors(files, lambda k: not is_llm_key(k))
    model = _assemble(spec, llm, ckpt, str(folder), None, None, folder)
    if (folder / ADAPTER_DIR).is_dir():
        apply_adapter(model, folder / ADAPTER_DIR, merge_lora)
    return model, load_tokenizer(folder)
