"""The adaptive detection stride: carry faces between detector keyframes, and say when to detect again.

Between two detector calls each face of the previous tracking frame is carried: its box is predicted
with the face's own velocity (constant motion between tracking frames), then checked on the frame by
normalised cross-correlation (NCC) of the face's grey template, taken at its last detection, in a small
window around the prediction (scaled so the template is at most ``template`` pixels wide). The template
holds the box plus a ``context`` border around it, so a face whose inside is flat (little texture) is
still located by its outline; a template that is flat even so (grey spread under ``min_std``) cannot be
checked, and such a face is re-detected on the next frame instead of being carried. The best match
becomes the carried box; the face keeps its embedding, landmarks (shifted) and score, so the tracker
associates it with the same trajectory at no embedding cost.

:class:`StridePlanner` decides per tracking frame whether the detector runs: on the first frame, on a
shot cut (thumbnail difference), when a carried face fails its check (NCC under ``min_ncc``: occluded,
turned, gone, or a wrong prediction), when a face's uncertainty (frames since its detection, weighted by
how fast it moves relative to its size) reaches ``detect_every``, and at least every ``detect_every``
tracking frames so that new faces enter. ``detect_every=1`` detects on every tracking frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from facetrack.faces.base import StrideConfig, clip_box
from facetrack.types import Face


@dataclass(slots=True)
class _Carried:
    face: Face
    template: np.ndarray | None
    """Grey template of the face and its context border at its last detection, ``scale`` times its size;
    ``None`` when it is too flat to check (the face is re-detected on the next frame)."""
    scale: float
    offset: tuple[float, float] = (0.0, 0.0)
    """Where the box's top-left corner lies in the template, in frame pixels."""
    border: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    """Context the template holds on each side of the box (left, top, right, bottom), frame pixels."""
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    uncertainty: float = 0.0


def _grey(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def _centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])


class StridePlanner:
    """Per video: decide detect-or-carry for each tracking frame and carry the faces in between."""

    def __init__(self, detect_every: int, config: StrideConfig | None = None):
        self.detect_every = max(1, int(detect_every))
        self.config = config or StrideConfig()
        self._carried: list[_Carried] = []
        self._thumb: np.ndarray | None = None
        self._since = 0
        self._grey: np.ndarray | None = None
        self.reasons: dict[str, int] = {}
        """Why the detector ran: ``first``, ``cut``, ``check``, ``uncertain``, ``stride`` (counts)."""

    def _count(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def _thumbnail(self, grey: np.ndarray) -> np.ndarray:
        import cv2

        return cv2.resize(grey, (32, 18), interpolation=cv2.INTER_AREA).astype(np.float32)

    def plan(self, image: np.ndarray, frame: int = 0) -> list[Face] | None:
        """The carried faces for this frame, or ``None`` when the detector must run on it.

        After ``None`` call :meth:`detected` with the detector's faces (embedded); after a list, the
        faces are this frame's (with embeddings) and nothing else needs calling.
        """
        if self.detect_every == 1:
            self._count("every")
            return None
        grey = _grey(image)
        self._grey = grey
        thumb = self._thumbnail(grey)
        previous, self._thumb = self._thumb, thumb
        if previous is None:
            self._count("first")
            return None
        if float(np.mean(np.abs(thumb - previous))) > self.config.cut_threshold:
            self._count("cut")
            return None
        if self._since + 1 >= self.detect_every:
            self._count("stride")
            return None
        out: list[Face] = []
        for item in self._carried:
            face = self._carry(item, grey, frame)
            if face is None:
                self._count("check")
                return None
            if item.uncertainty >= self.detect_every:
                self._count("uncertain")
                return None
            out.append(face)
        for item, face in zip(self._carried, out):
            item.face = face
        self._since += 1
        return out

    def _carry(self, item: _Carried, grey: np.ndarray, frame: int) -> Face | None:
        import cv2

        if item.template is None:
            return None  # nothing to check the prediction with: let the detector decide
        cfg = self.config
        h, w = grey.shape[:2]
        box = np.asarray(item.face.box, dtype=np.float64)
        bw, bh = box[2] - box[0], box[3] - box[1]
        side = max(bw, bh, 1.0)
        pred = box + np.concatenate([item.velocity, item.velocity])
        speed = float(np.hypot(*item.velocity))
        pad = cfg.search * side + speed
        left, top, right, bottom = item.border
        x0, y0 = max(0, int(pred[0] - left - pad)), max(0, int(pred[1] - top - pad))
        x1 = min(w, int(np.ceil(pred[2] + right + pad)))
        y1 = min(h, int(np.ceil(pred[3] + bottom + pad)))
        th, tw = item.template.shape[:2]
        rw, rh = int(round((x1 - x0) * item.scale)), int(round((y1 - y0) * item.scale))
        if rw < tw or rh < th:
            return None  # mostly outside the frame
        region = grey[y0:y1, x0:x1]
        if item.scale != 1.0:
            region = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
        scores = cv2.matchTemplate(region, item.template, cv2.TM_CCOEFF_NORMED)
        _, peak, _, loc = cv2.minMaxLoc(scores)
        if not np.isfinite(peak) or peak < cfg.min_ncc:
            return None
        nx = x0 + loc[0] / item.scale + item.offset[0]
        ny = y0 + loc[1] / item.scale + item.offset[1]
        new_box = clip_box((nx, ny, nx + bw, ny + bh), w, h)
        if new_box[2] - new_box[0] < 0.5 * bw or new_box[3] - new_box[1] < 0.5 * bh:
            return None  # leaving the frame: let the detector decide
        shift = np.array([nx - box[0], ny - box[1]])
        item.velocity = 0.5 * item.velocity + 0.5 * shift
        item.uncertainty += 1.0 + cfg.motion_weight * float(np.hypot(*shift)) / side
        landmarks = None
        if item.face.landmarks is not None:
            landmarks = (np.asarray(item.face.landmarks, np.float32) + shift.astype(np.float32)).astype(
                np.float32
            )
        return Face(
            frame=frame,
            box=new_box,
            score=item.face.score,
            landmarks=landmarks,
            embedding=item.face.embedding,
        )

    def detected(self, faces: list[Face], image: np.ndarray) -> None:
        """Take the detector's (embedded) faces of this frame as the new keyframe."""
        self._since = 0
        if self.detect_every == 1:
            return
        grey = self._grey if self._grey is not None else _grey(image)
        self._grey = None
        previous = {id(c): c for c in self._carried}
        prev_centres = [(_centre(c.face.box), c) for c in previous.values()]
        carried = []
        for face in faces:
            template, scale, offset, border = self._template(grey, face.box)
            velocity = np.zeros(2)
            centre = _centre(face.box)
            if prev_centres:
                dists = [float(np.hypot(*(centre - pc))) for pc, _ in prev_centres]
                j = int(np.argmin(dists))
                if dists[j] < 0.5 * max(face.box[2] - face.box[0], face.box[3] - face.box[1], 1.0):
                    # The same face as one carried into this frame: refine its motion estimate.
                    velocity = 0.5 * prev_centres[j][1].velocity + 0.5 * (centre - prev_centres[j][0])
            carried.append(_Carried(face, template, scale, offset, border, velocity))
        self._carried = carried

    def _template(
        self, grey: np.ndarray, box
    ) -> tuple[np.ndarray | None, float, tuple[float, float], tuple[float, float, float, float]]:
        """The grey template of ``box`` with its context border: (template or None, scale, offset, border)."""
        import cv2

        cfg = self.config
        h, w = grey.shape[:2]
        bx1, by1, bx2, by2 = (float(v) for v in box[:4])
        side = max(bx2 - bx1, by2 - by1, 1.0)
        ctx = cfg.context * side
        x1, y1 = max(0, int(round(bx1 - ctx))), max(0, int(round(by1 - ctx)))
        x2, y2 = min(w, int(round(bx2 + ctx))), min(h, int(round(by2 + ctx)))
        offset = (bx1 - x1, by1 - y1)
        border = (bx1 - x1, by1 - y1, x2 - bx2, y2 - by2)
        if x2 - x1 < 4 or y2 - y1 < 4:
            return None, 1.0, offset, border
        scale = min(1.0, cfg.template / max(x2 - x1, y2 - y1))
        patch = grey[y1:y2, x1:x2]
        tw, th = max(4, int(round((x2 - x1) * scale))), max(4, int(round((y2 - y1) * scale)))
        template = cv2.resize(patch, (tw, th), interpolation=cv2.INTER_AREA) if scale != 1.0 else patch
        if float(template.std()) < cfg.min_std:
            return None, scale, offset, border  # flat: any place would match it
        return np.ascontiguousarray(template), scale, offset, border
