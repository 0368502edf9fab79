"""Load and save FaceTrack-MM checkpoints: VideoLLaMA2 folders (full, projector-only, LoRA) and our format.

Sources: a local folder, a Hugging Face hub id (fetched with ``huggingface_hub``), or an ``s3://`` prefix
(mirrored once into a local cache through :mod:`facetrack.storage`).

Formats:

- **VideoLLaMA2 folder**: ``config.json`` with ``mm_vision_tower``, ``mm_projector_type``,
  ``mm_hidden_size``, ... and a ``model_type`` such as ``videollama2_mistral``; LLM weights
  (``model.safetensors[.index.json]`` or ``pytorch_model.bin[.index.json]``) holding also
  ``model.mm_projector.*`` and usually ``model.vision_tower.*``; or the projector alone in
  ``mm_projector.bin`` next to a base LLM. A LoRA folder adds ``adapter_config.json`` + adapter weights and
  ``non_lora_trainables.bin``; its base model is ``model_base`` or the config's ``_name_or_path``.
  FaceTrack-MM adds ``face_encoder``, ``face_tokens_per_frame`` (and for FaceXFormer ``face_encoder_path``)
  to the config and ``model.face_projector.*`` to the weights.
- **FaceTrack-MM folder** (what :func:`save_checkpoint` writes): ``facetrack.json`` (the whole
  :class:`ModelSpec`), ``model.safetensors`` (sharded with an index when large), tokenizer files, and an
  optional peft adapter in ``adapter/``.

Weights are read with safetensors or ``torch.load(weights_only=True)``; nothing runs remote code.
A missing, truncated or unreadable weight file raises :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facetrack.model.face import FaceXFormerEncoder, facexformer_encoder_state
from facetrack.model.modeling import (
    FaceTrackMM,
    ModelSpec,
    checkpoint_state,
    llm_config_from_dict,
    module_key,
)

log = logging.getLogger(__name__)

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
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")

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


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, inconsistent or of a format this package does not read."""


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


# --------------------------------------------------------------------------------------------- sources


def _default_cache() -> Path:
    if os.environ.get("FACETRACK_CACHE_DIR"):
        return Path(os.environ["FACETRACK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "facetrack"


def mirror_prefix(prefix: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local folder mirroring every object under an ``s3://`` prefix; objects are downloaded once.

    Objects go through :func:`facetrack.storage.local_copy` (cached by URI, ETag and size, so a changed
    object is fetched again) and are linked into ``<cache>/models/<hash of prefix>/``.

    Raises:
        CheckpointError: nothing under the prefix, or it cannot be read.
    """
    from facetrack import storage

    root = Path(cache_dir) if cache_dir is not None else _default_cache()
    prefix = prefix.rstrip("/") + "/"
    dest = root / "models" / hashlib.sha256(prefix.encode()).hexdigest()[:24]
    try:
        uris = list(storage.list_uris(prefix))
    except storage.StorageError as exc:
        raise CheckpointError(f"cannot list checkpoint prefix {prefix}: {exc}") from exc
    if not uris:
        raise CheckpointError(f"no checkpoint files under {prefix}")
    for uri in uris:
        rel = uri[len(prefix) :]
        try:
            cached = storage.local_copy(uri, cache_dir=root / "objects")
        except storage.StorageError as exc:
            raise CheckpointError(f"cannot download {uri}: {exc}") from exc
        target = dest / rel
        if target.exists() and target.stat().st_size == cached.stat().st_size and target.samefile(cached):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            os.link(cached, tmp)
        except OSError:
            shutil.copyfile(cached, tmp)
        os.replace(tmp, target)
    return dest


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_source(source: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local folder for a checkpoint given as a folder, an ``s3://`` prefix or a hub id.

    Raises:
        CheckpointError: the source does not exist or cannot be fetched.
    """
    from facetrack import storage

    source = os.fspath(source)
    if storage.is_remote(source):
        return mirror_prefix(source, cache_dir)
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{source} is a file; a checkpoint is a folder")
    if not _HUB_ID.match(source) or source.startswith((".", "/", "~")):
        raise CheckpointError(f"no checkpoint folder at {source}")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id=source, cache_dir=None if cache_dir is None else str(cache_dir))
        )
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise CheckpointError(
            f"{source} is not a local folder and could not be fetched from the Hugging Face hub: {exc}"
        ) from exc


def model_name(source: str, folder: Path) -> str:
    """A short model name: the last path part (``parent_checkpoint-N`` for trainer checkpoints)."""
    parts = [p for p in re.split(r"[/\\]", source.rstrip("/")) if p] or [folder.name]
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


V1_MODEL_TYPES = ("videollama2", "videollama2_mistral", "videollama2_mixtral", "videollama2_llama")
"""VideoLLaMA2 v1.x language models; their authors ran them with the ``llama2`` conversation template."""


def checkpoint_family(folder: Path, kind: str | None = None) -> str:
    """``videollama2-v1``, ``videollama2-later`` or ``facetrack`` (see :attr:`LoadedModel.family`)."""
    kind = kind or detect_format(folder)
    if kind == "facetrack":
        return "facetrack"
    model_type = str(_read_json(folder / "config.json").get("model_type", "videollama2_mistral"))
    return "videollama2-v1" if model_type in V1_MODEL_TYPES else "videollama2-later"


def detect_format(folder: Path) -> str:
    """``facetrack``, ``videollama2-lora`` or ``videollama2``.

    Raises:
        CheckpointError: the folder holds neither format.
    """
    if (folder / OUR_CONFIG).is_file():
        return "facetrack"
    config = folder / "config.json"
    if config.is_file():
        data = _read_json(config)
        if any(k in data for k in ("mm_vision_tower", "mm_projector_type", "vision_tower")):
            return "videollama2-lora" if (folder / "adapter_config.json").is_file() else "videollama2"
    raise CheckpointError(
        f"{folder} is neither a FaceTrack-MM checkpoint ({OUR_CONFIG}) nor a VideoLLaMA2 folder "
        "(config.json with mm_vision_tower / mm_projector_type)"
    )


# ---------------------------------------------------------------------------------------- weight files


def _read_json(path: Path) -> dict[str, Any]:
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
            weight_map = _read_json(index).get("weight_map")
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


def _is_llm_key(key: str) -> bool:
    return not key.startswith(
        ("model.vision_tower.", "model.mm_projector.", "model.face_projector.", "model.face_encoder.")
    )


# ----------------------------------------------------------------------------------------------- parts


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
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
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - tokenizer loading raises many types
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()


def load_llm(folder: Path, config: dict[str, Any], dtype: torch.dtype):
    """The causal LM from ``folder``'s weights and a config mapping; every LM weight must be there."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    files = weight_files(folder)
    if not files:
        raise CheckpointError(f"no language model weights in {folder} ({SAFE_WEIGHTS} or {BIN_WEIGHTS})")
    cfg = llm_config_from_dict(config)
    try:
        with _quiet_transformers():
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
    config = _read_json(local / "config.json")
    pre = local / "preprocessor_config.json"
    image = _read_json(pre) if pre.is_file() else {}
    return config, image, local


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


# ------------------------------------------------------------------------------------------------ load


def _spec_from_videollama2(
    cfg: dict[str, Any], folders: list[Path], have_tower: bool
) -> tuple[ModelSpec, Path | None]:
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
    state = {module_key(k, nested): v for k, v in ckpt.items() if not _is_llm_key(k)}
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


def _apply_adapter(model: FaceTrackMM, adapter_dir: Path, merge: bool) -> None:
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
        with _quiet_transformers():
            peft_model = PeftModel.from_pretrained(model.llm, str(adapter_dir), is_trainable=False)
    except Exception as exc:  # noqa: BLE001 - peft raises many types
        raise CheckpointError(f"cannot apply the LoRA adapter in {adapter_dir}: {exc}") from exc
    model.llm = peft_model.merge_and_unload() if merge else peft_model


def _load_videollama2(
    folder: Path,
    kind: str,
    base: str | None,
    dtype: torch.dtype,
    cache_dir: str | os.PathLike | None,
    merge_lora: bool,
    face_encoder_path: str | None,
):
    cfg = _read_json(folder / "config.json")
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
        ckpt.update(read_tensors(files, lambda k: not _is_llm_key(k)))
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
    spec, tower_dir = _spec_from_videollama2(cfg, folders, have_tower)
    llm = load_llm(lm_folder, spec.llm, dtype)
    extra_llm = {k: v for k, v in ckpt.items() if _is_llm_key(k)}
    if extra_llm:  # e.g. resized embeddings saved among the non-LoRA trainables
        try:
            llm.load_state_dict(extra_llm, strict=False)
        except RuntimeError as exc:
            raise CheckpointError(f"{folder}: language model tensors do not fit the config: {exc}") from exc
    face_path = face_encoder_path or cfg.get("face_encoder_path")
    model = _assemble(spec, llm, ckpt, str(folder), tower_dir, face_path, folder)
    if kind == "videollama2-lora":
        _apply_adapter(model, folder, merge_lora)
    tok_folder = folder if _has_tokenizer(folder) else lm_folder
    return model, load_tokenizer(tok_folder)


def _load_ours(folder: Path, dtype: torch.dtype, merge_lora: bool):
    meta = _read_json(folder / OUR_CONFIG)
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
    ckpt = read_tensors(files, lambda k: not _is_llm_key(k))
    model = _assemble(spec, llm, ckpt, str(folder), None, None, folder)
    if (folder / ADAPTER_DIR).is_dir():
        _apply_adapter(model, folder / ADAPTER_DIR, merge_lora)
    return model, load_tokenizer(folder)


# ------------------------------------------------------------------------------------------------ save


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
    spec["llm"] = _llm_config_dict(model)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "spec": spec}
    _save_safetensors(state, out, max_shard_bytes)
    if peft_model is not None:
        peft_model.save_pretrained(str(out / ADAPTER_DIR))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    (out / OUR_CONFIG).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def _llm_config_dict(model: FaceTrackMM) -> dict[str, Any]:
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
    llm_cfg = _llm_config_dict(model)
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
