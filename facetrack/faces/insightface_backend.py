"""The insightface analyser: a model pack's SCRFD detector and ArcFace recogniser through onnxruntime.

The pack is a directory of ONNX files (``buffalo_l`` by default, fetched by insightface into
``model_root`` when allowed, or any directory holding a detector and a recognition model). insightface
loads and routes the models; this class calls the detector on the frame and the recogniser on the aligned
112x112 crops of every face of a frame in one batch. :meth:`InsightFaceAnalyser.detect_batch` runs the
detector once on a batch of frames when the detector's ONNX input has a dynamic batch dimension.
With ``providers`` empty, the pack runs on CUDA (CPU fallback) when onnxruntime offers CUDA and the process
sees a GPU (``CUDA_VISIBLE_DEVICES``, as Ray sets it for a worker holding a GPU share), else on the CPU.
insightface's pretrained packs are licensed for non-commercial research.
"""

from __future__ import annotations

import ctypes
import logging
import os
import warnings
from collections.abc import Sequence

import numpy as np

from facetrack.faces.base import (
    INSTALL_FACES,
    FaceConfig,
    clip_box,
    fetch_insightface_pack,
    keep_faces,
    l2_normalise,
)
from facetrack.types import Face

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
INSTALL_GPU = "pip install onnxruntime-gpu"
MAX_BATCH = 16
"""detect_batch runs the detector on at most this many frames at a time."""


def _driver_device_count() -> int:
    """CUDA devices the driver reports to this process (0 without a driver)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    return 0


def gpu_visible() -> bool:
    """Whether this process may use a CUDA GPU.

    ``CUDA_VISIBLE_DEVICES`` decides when set (Ray sets it for every worker: empty when the worker holds
    no GPU share); empty or a negative first id means none. Unset, the CUDA driver's device count decides.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        first = visible.split(",")[0].strip()
        return bool(first) and not first.startswith("-")
    return _driver_device_count() > 0


def choose_providers(requested: Sequence[str] = ()) -> list[str]:
    """onnxruntime execution providers for the pack: ``requested`` when given, else CUDA with a CPU fallback
    when onnxruntime offers CUDA and a GPU is visible, else the CPU alone."""
    if requested:
        return list(requested)
    import onnxruntime

    available = list(onnxruntime.get_available_providers())
    if gpu_visible():
        if CUDA in available:
            return [CUDA, CPU]
        logger.warning(
            "a GPU is visible but onnxruntime %s offers no %s (only %s): the insightface backend runs on "
            "the CPU; for the GPU: %s",
            onnxruntime.__version__,
            CUDA,
            ", ".join(available),
            INSTALL_GPU,
        )
    return [CPU]


class InsightFaceAnalyser:
    """SCRFD detection (boxes, scores, 5 landmarks) and ArcFace embeddings from an insightface pack."""

    name = "insightface"
    match_distance = 0.6

    def __init__(self, config: FaceConfig | None = None):
        self.config = config or FaceConfig(backend="insightface")
        self.embedding_dim = 512
        self._app = None
        self._det = None
        self._rec = None
        self.pack_dir: str | None = None
        self.providers: list[str] = []
        """The detector's active onnxruntime providers (set by setup)."""
        self.max_batch = MAX_BATCH
        self._batch_session = None
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    def setup(self) -> None:
        if self._app is not None:
            return
        try:
            from insightface.app import FaceAnalysis
        except ImportError as exc:
            raise ImportError(
                f"the insightface backend needs insightface and onnxruntime: {INSTALL_FACES}"
            ) from exc
        pack = fetch_insightface_pack(self.config)
        providers = choose_providers(self.config.providers)
        app = FaceAnalysis(
            name=str(pack),
            root=self.config.model_root,
            allowed_modules=["detection", "recognition"],
            providers=providers,
        )
        if "recognition" not in app.models:
            raise RuntimeError(f"insightface pack {pack} has no recognition model")
        det, rec = app.models["detection"], app.models["recognition"]
        active = list(det.session.get_providers())
        rec_active = list(rec.session.get_providers())
        ctx_id = 0 if any(p.startswith("CUDA") for p in active) else -1
        size = self.config.detect_size
        app.prepare(ctx_id=ctx_id, det_thresh=self.config.min_score, det_size=(size, size))
        self._app, self._det, self._rec = app, det, rec
        out_shape = getattr(self._rec, "output_shape", None)
        if out_shape and isinstance(out_shape[-1], int):
            self.embedding_dim = int(out_shape[-1])
        self.pack_dir = str(pack)
        self.providers = active
        self._batch_session = _batch_session(det)
        logger.info(
            "insightface pack %s: providers asked %s, active %s (recogniser %s); batched detection %s",
            pack,
            ", ".join(providers),
            ", ".join(active),
            ", ".join(rec_active),
            "on" if self._batch_session is not None else "off (the detector cannot take a batch)",
        )
        if CUDA in providers and (CUDA not in active or CUDA not in rec_active):
            logger.warning(
                "CUDA was asked for but onnxruntime runs the insightface pack on %s: this onnxruntime has no "
                "usable CUDA (a CPU-only build, or CUDA/cuDNN libraries it cannot load); for the GPU: %s",
                ", ".join(active),
                INSTALL_GPU,
            )

    def detect(self, image: np.ndarray, frame: int = 0) -> list[Face]:
        if self._det is None:
            self.setup()
        bgr = np.ascontiguousarray(image[..., ::-1])
        bboxes, kpss = self._det.detect(bgr, max_num=self.config.max_faces)
        return self._faces(image, frame, bboxes, kpss)

    def detect_batch(self, images: Sequence[np.ndarray], frames: Sequence[int]) -> list[list[Face]]:
        """Faces of each image, as :meth:`detect` finds them, with the detector run once per batch.

        The detector sees up to :attr:`max_batch` letterboxed frames stacked NCHW when it can take a batch
        (its ONNX input's batch dimension is dynamic, or freeing it passes a probe at setup, see
        :func:`_batch_session`); a detector that cannot runs per frame.
        Images may differ in size. Results are per image, in order, each face's ``frame`` from ``frames``.
        """
        if len(images) != len(frames):
            raise ValueError(f"detect_batch got {len(images)} images but {len(frames)} frame numbers")
        if self._det is None:
            self.setup()
        if self._batch_session is None or len(images) < 2:
            return [self.detect(image, frame) for image, frame in zip(images, frames)]
        out: list[list[Face]] = []
        for start in range(0, len(images), self.max_batch):
            chunk = images[start : start + self.max_batch]
            dets = self._detect_stacked(chunk)
            for image, frame, (bboxes, kpss) in zip(chunk, frames[start : start + self.max_batch], dets):
                out.append(self._faces(image, frame, bboxes, kpss))
        return out

    def _faces(
        self, image: np.ndarray, frame: int, bboxes: np.ndarray, kpss: np.ndarray | None
    ) -> list[Face]:
        h, w = image.shape[:2]
        faces = []
        for i in range(bboxes.shape[0]):
            box = clip_box(bboxes[i, :4], w, h)
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            landmarks = None if kpss is None else np.asarray(kpss[i], dtype=np.float32).reshape(5, 2)
            faces.append(Face(frame=frame, box=box, score=float(bboxes[i, 4]), landmarks=landmarks))
        return keep_faces(faces, self.config)

    def _detect_stacked(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """insightface's ``SCRFD.detect`` for several images, with one session run per detector input size."""
        import cv2

        det = self._det
        threshold = float(getattr(det, "det_thresh", 0.5))
        candidates: list[list[tuple[np.ndarray, np.ndarray | None]]] = [[] for _ in images]
        for size in _input_sizes(det):
            letterboxed, scales = [], []
            for image in images:
                boxed, scale = _letterbox(image, size)
                letterboxed.append(boxed)
                scales.append(scale)
            # The frames are RGB already: the blob is what SCRFD.forward makes from BGR with swapRB.
            blob = cv2.dnn.blobFromImages(
                letterboxed, 1.0 / det.input_std, size, (det.input_mean,) * 3, swapRB=False
            )
            blob = np.ascontiguousarray(blob, dtype=getattr(det, "input_dtype", np.float32))
            outs = self._batch_session.run(det.output_names, {det.input_name: blob})
            for i, scale in enumerate(scales):
                found = self._decode(outs, i, len(images), blob.shape[2], blob.shape[3], threshold, scale)
                if found[0].shape[0]:
                    candidates[i].append(found)
        return [self._finish(found, image.shape) for found, image in zip(candidates, images)]

    def _decode(
        self, outs: list[np.ndarray], i: int, n: int, height: int, width: int, threshold: float, scale: float
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Image ``i``'s candidates over ``threshold``, in frame pixels, best first (as SCRFD.forward)."""
        from insightface.model_zoo.scrfd import distance2bbox, distance2kps

        det = self._det
        fmc = det.fmc
        scores_list, boxes_list, kps_list = [], [], []
        for idx, stride in enumerate(det._feat_stride_fpn):
            centres = self._anchor_centres(height // stride, width // stride, stride)
            rows = len(centres)

            scores = _rows(outs[idx], i, n, rows)
            keep = np.where(scores >= threshold)[0]
            boxes = distance2bbox(centres, _rows(outs[idx + fmc], i, n, rows) * stride)
            scores_list.append(scores[keep])
            boxes_list.append(boxes[keep])
            if det.use_kps:
                kps = distance2kps(centres, _rows(outs[idx + 2 * fmc], i, n, rows) * stride)
                kps_list.append(kps.reshape((kps.shape[0], -1, 2))[keep])
        scores = np.vstack(scores_list)
        if scores.size == 0:
            return np.empty((0, 5), np.float32), None
        order = np.argsort(-scores.ravel(), kind="stable")
        pre_det = np.hstack((np.vstack(boxes_list) / scale, scores)).astype(np.float32, copy=False)[order]
        kpss = np.vstack(kps_list)[order] / scale if det.use_kps else None
        return pre_det, kpss

    def _anchor_centres(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._centres:
            grid = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
            centres = (grid * stride).reshape(-1, 2)
            self._centres[key] = np.repeat(centres, self._det._num_anchors, axis=0)
        return self._centres[key]

    def _finish(
        self, found: list[tuple[np.ndarray, np.ndarray | None]], shape: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Non-maximum suppression and ``max_faces`` over one image's candidates (SCRFD.detect's ending)."""
        det = self._det
        if not found:
            return np.empty((0, 5), np.float32), None
        pre_det = np.vstack([f[0] for f in found]).astype(np.float32, copy=False)
        order = np.argsort(-pre_det[:, 4], kind="stable")
        pre_det = pre_det[order]
        kpss = np.vstack([f[1] for f in found])[order] if det.use_kps else None
        keep = det.nms(pre_det)
        bboxes = pre_det[keep]
        kpss = None if kpss is None else kpss[keep]
        max_num = self.config.max_faces
        if max_num > 0 and bboxes.shape[0] > max_num:
            # SCRFD.detect's default metric: area, less twice the squared distance from the image centre.
            area = (bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1])
            cy, cx = shape[0] // 2, shape[1] // 2
            dist2 = ((bboxes[:, 0] + bboxes[:, 2]) / 2 - cx) ** 2 + (
                (bboxes[:, 1] + bboxes[:, 3]) / 2 - cy
            ) ** 2
            best = np.argsort(area - dist2 * 2.0)[::-1][:max_num]
            bboxes = bboxes[best]
            kpss = None if kpss is None else kpss[best]
        return bboxes, kpss

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        if not faces:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        if self._rec is None:
            self.setup()
        from insightface.utils import face_align

        bgr = np.ascontiguousarray(image[..., ::-1])
        size = int(self._rec.input_size[0])
        crops = []
        with warnings.catch_warnings():
            # insightface's alignment calls a scikit-image API that newer releases mark as deprecated.
            warnings.simplefilter("ignore", FutureWarning)
            for face in faces:
                if face.landmarks is None:
                    raise ValueError("insightface embeddings need the detector's 5 landmarks")
                lmk = np.asarray(face.landmarks, np.float32)
                crops.append(face_align.norm_crop(bgr, landmark=lmk, image_size=size))
        feats = np.asarray(self._rec.get_feat(crops), dtype=np.float32).reshape(len(crops), -1)
        return l2_normalise(feats)


def _rows(out: np.ndarray, i: int, n: int, rows: int) -> np.ndarray:
    """Image ``i``'s rows of one detector output: ``(N, rows, C)``, or ``(N * rows, C)`` image after image."""
    if out.ndim == 3:
        return out[i]
    if out.shape[0] != n * rows:
        raise RuntimeError(f"detector output of {out.shape[0]} rows for {n} images of {rows} anchors each")
    return out[i * rows : (i + 1) * rows]


def _batch_session(det) -> object | None:
    """A session that runs the detector on a batch: its own when its input's batch dimension is dynamic,
    else one made from its ONNX file with that dimension freed, kept only if a probe batch gives each
    image's outputs exactly as it gives them alone (many exports, ``det_10g`` among them, fix the batch
    at 1 in the declared shapes only). None when neither works."""
    inputs = det.session.get_inputs()
    if not inputs or len(inputs[0].shape) != 4:
        return None
    batch = inputs[0].shape[0]
    if not (isinstance(batch, (int, np.integer)) and batch > 0):
        return det.session
    model_file = getattr(det, "model_file", None)
    if not model_file:
        return None
    try:
        session = _freed_batch_session(model_file, inputs[0].name, list(det.session.get_providers()))
        return session if _batches_like_single(session, det) else None
    except Exception as exc:  # noqa: BLE001 - any failure means: no batched session, detect per frame
        logger.info("the detector cannot run batched (%s: %s); detecting per frame", type(exc).__name__, exc)
        return None


def _freed_batch_session(model_file: str, input_name: str, providers: list[str]) -> object:
    import onnx
    import onnxruntime

    model = onnx.load(str(model_file))
    for value in model.graph.input:
        if value.name == input_name:
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = f"{value.name}_rows"
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=providers)


def _batches_like_single(session, det) -> bool:
    """Whether ``session`` gives two different probe images in one batch the outputs each gets alone."""
    width, height = _input_sizes(det)[0]
    rng = np.random.default_rng(0)
    blocks = rng.choice([-1.0, 1.0], size=(1, 3, -(-height // 32), -(-width // 32)))
    textured = np.kron(blocks, np.ones((1, 1, 32, 32)))[:, :, :height, :width]
    probe = np.concatenate([np.full_like(textured, -1.0), textured]).astype(np.float32)
    both = session.run(det.output_names, {det.input_name: probe})
    alone = [session.run(det.output_names, {det.input_name: probe[i : i + 1]}) for i in range(2)]
    differ = False
    for out, first, second in zip(both, *alone):
        parts = [out[0], out[1]] if out.ndim == 3 else np.split(out, 2) if len(out) % 2 == 0 else None
        if parts is None or parts[0].shape != first.reshape(parts[0].shape).shape:
            return False
        want = [first.reshape(parts[0].shape), second.reshape(parts[1].shape)]
        scale = max(float(np.abs(want[0]).max(initial=0)), float(np.abs(want[1]).max(initial=0)), 1e-6)
        if not all(np.allclose(p, w, rtol=1e-3, atol=1e-4 * scale) for p, w in zip(parts, want)):
            return False
        differ = differ or not np.allclose(want[0], want[1], rtol=1e-3, atol=1e-4 * scale)
    return differ


def _input_sizes(det) -> list[tuple[int, int]]:
    """The (width, height) inputs SCRFD.detect runs the image at (one, unless several were prepared)."""
    static = getattr(det, "static_input_size", None)
    if static is not None:
        return [tuple(static)]
    sizes = getattr(det, "input_sizes", None) or [det.input_size]
    return [tuple(int(v) for v in size) for size in sizes]


def _letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """``image`` resized to fit ``size`` (width, height) at its top-left on black, and the scale used (as
    SCRFD.detect does it)."""
    import cv2

    width, height = size
    if image.shape[0] / image.shape[1] > height / width:
        new_h, new_w = height, int(height / (image.shape[0] / image.shape[1]))
    else:
        new_w, new_h = width, int(width * (image.shape[0] / image.shape[1]))
    out = np.zeros((height, width, 3), dtype=np.uint8)
    out[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
    return out, new_h / image.shape[0]
