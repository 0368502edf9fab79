"""The insightface analyser: a model pack's SCRFD detector and ArcFace recogniser through onnxruntime.

The pack is a directory of ONNX files (``buffalo_l`` by default, fetched by insightface into
``model_root`` when allowed, or any directory holding a detector and a recognition model). insightface
loads and routes the models; this class calls the detector on the frame and the recogniser on the aligned
112x112 crops of every face of a frame in one batch. insightface's pretrained packs are licensed for
non-commercial research.
"""

from __future__ import annotations

import logging
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
        providers = list(self.config.providers) or None
        app = FaceAnalysis(
            name=str(pack),
            root=self.config.model_root,
            allowed_modules=["detection", "recognition"],
            providers=providers,
        )
        if "recognition" not in app.models:
            raise RuntimeError(f"insightface pack {pack} has no recognition model")
        det = app.models["detection"]
        active = list(det.session.get_providers())
        ctx_id = 0 if any(p.startswith("CUDA") for p in active) else -1
        size = self.config.detect_size
        app.prepare(ctx_id=ctx_id, det_thresh=self.config.min_score, det_size=(size, size))
        self._app, self._det, self._rec = app, det, app.models["recognition"]
        out_shape = getattr(self._rec, "output_shape", None)
        if out_shape and isinstance(out_shape[-1], int):
            self.embedding_dim = int(out_shape[-1])
        self.pack_dir = str(pack)
        self.providers = active
        logger.info("insightface pack %s on %s", pack, ", ".join(active))

    def detect(self, image: np.ndarray, frame: int = 0) -> list[Face]:
        if self._det is None:
            self.setup()
        h, w = image.shape[:2]
        bgr = np.ascontiguousarray(image[..., ::-1])
        bboxes, kpss = self._det.detect(bgr, max_num=self.config.max_faces)
        faces = []
        for i in range(bboxes.shape[0]):
            box = clip_box(bboxes[i, :4], w, h)
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            landmarks = None if kpss is None else np.asarray(kpss[i], dtype=np.float32).reshape(5, 2)
            faces.append(Face(frame=frame, box=box, score=float(bboxes[i, 4]), landmarks=landmarks))
        return keep_faces(faces, self.config)

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
