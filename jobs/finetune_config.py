"""Settings of the fine-tuning job: data, scaling and the run, from YAML plus ``key=value`` overrides."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facetrack import storage
from facetrack.config import ConfigError, load_config
from facetrack.faces.stage import FaceTrackConfig
from facetrack.model.lora import LoraSettings
from facetrack.model.train_settings import TrainSettings

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEEPSPEED_CONFIGS = {"zero2": "deepspeed_zero2.json", "zero3": "deepspeed_zero3.json"}
CACHE_FORMAT = 1


@dataclass
class DataSettings:
    """Where the records are and how clips are preprocessed and cached."""

    train: str = ""
    """FDA-format records: a ``.json`` list or ``.jsonl`` file of ``{"id", "video", "caption"}``."""
    video_root: str | None = None
    """Base for relative ``video`` paths (default: the records file's folder)."""
    templates: str | None = None
    """A JSON list of instructions (default: the model's training instructions)."""
    cache: str = ""
    """Clip cache prefix, local or ``s3://`` (default: ``<storage_path>/cache``); shared across runs."""
    num_frames: int = 0
    """Frames per clip (0: the base model's ``num_frames``)."""
    frame_size: int = 336
    """Cached frames are shrunk so their longer side is at most this (0 keeps the decoded size)."""
    jpeg_quality: int = 95
    tracking: FaceTrackConfig = field(default_factory=FaceTrackConfig)
    """The face tracking stage's settings (``video``, ``faces``, ``track``, ``select``)."""
    preprocess_cpus: float = 1.0
    """CPUs per preprocessing actor."""
    preprocess_concurrency: int = 2
    """Preprocessing actors at most."""

    def __post_init__(self) -> None:
        if self.num_frames < 0 or self.frame_size < 0:
            raise ValueError("data.num_frames and data.frame_size must be >= 0")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("data.jpeg_quality must be in 1..100")
        if self.preprocess_cpus <= 0 or self.preprocess_concurrency < 1:
            raise ValueError("data.preprocess_cpus must be > 0 and data.preprocess_concurrency >= 1")


@dataclass
class ScalingSettings:
    """How many training workers and what each gets (also settable with --num-workers / --gpu)."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    backend: str = "auto"
    """Process group backend: ``auto`` (nccl with GPUs, gloo on CPU), ``nccl`` or ``gloo``."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError("scaling.num_workers must be >= 1")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"scaling.backend must be auto, nccl or gloo, got {self.backend!r}")


@dataclass
class FinetuneConfig:
    """A fine-tuning run."""

    model: str = ""
    """The base checkpoint (folder, ``s3://`` prefix or hub id), VideoLLaMA2 or FaceTrack-MM format."""
    name: str = "facetrack-finetune"
    """Run name: the run folder is ``<storage_path>/<name>``; a re-run with the same name resumes."""
    storage_path: str = "out/finetune"
    """Where runs, checkpoints and the clip cache go (local folder or ``s3://bucket/prefix``)."""
    max_failures: int = 0
    """Times Ray Train restarts failed workers from the latest checkpoint within one run."""
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model (the base checkpoint) is required")
        if not self.data.train:
            raise ValueError("data.train (the FDA-format records) is required")

    @property
    def storage_root(self) -> str:
        """``storage_path`` as an absolute local path or a URI (``s3://``, ``gs://``, ...)."""
        path = self.storage_path
        return path if storage.is_remote(path) else os.path.abspath(path)

    @property
    def run_dir(self) -> str:
        return storage.join(self.storage_root, self.name)

    @property
    def cache_dir(self) -> str:
        if self.data.cache:
            return self.data.cache if storage.is_remote(self.data.cache) else os.path.abspath(self.data.cache)
        return storage.join(self.storage_root, "cache")


def _absolute(path: str | None, must_exist: bool = False) -> str | None:
    """A local relative path made absolute (Ray workers do not share the driver's working directory)."""
    if not path or storage.is_remote(path) or os.path.isabs(path):
        return path
    if must_exist and not os.path.exists(path):
        return path  # not a local path: a hub id
    return os.path.abspath(path)


def load_finetune_config(path: str | None, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """Build a :class:`FinetuneConfig` from a YAML file and ``key=value`` overrides.

    Local relative paths (model, records, templates, cache, storage) are made absolute.
    """
    config = load_config(FinetuneConfig, path, overrides)
    config.model = _absolute(config.model, must_exist=True) or config.model
    config.data.train = _absolute(config.data.train) or config.data.train
    config.data.video_root = _absolute(config.data.video_root)
    config.data.templates = _absolute(config.data.templates)
    config.data.cache = _absolute(config.data.cache) or ""
    config.storage_path = _absolute(config.storage_path) or config.storage_path
    return config


def deepspeed_base_config(name: str) -> dict[str, Any]:
    """The DeepSpeed JSON named by ``train.deepspeed``: a shipped one (zero2/zero3) or a path/URI."""
    if name in DEEPSPEED_CONFIGS:
        return json.loads((CONFIG_DIR / DEEPSPEED_CONFIGS[name]).read_text(encoding="utf-8"))
    try:
        return json.loads(storage.read_text(name))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"train.deepspeed: no DeepSpeed config {name!r} (zero2, zero3 or a JSON path)"
        ) from exc
