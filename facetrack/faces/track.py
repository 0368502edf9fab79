"""Face trajectories: boxmot's StrongSort fed our own face embeddings, then tracklet merging.

StrongSort associates each tracking frame's faces with the existing trajectories by appearance (our
identity embeddings, never boxmot's ReID network: embeddings always come with the detections, and the
tracker holds a ReID stand-in that fails loudly if it is ever asked for features) and by motion (Kalman
filter, IoU). A trajectory that goes unseen longer than ``max_age_seconds`` ends; when the same person
comes back after that, tracklet merging joins the two pieces if they never overlap in time and their
mean embeddings are closer than the analyser's match distance. boxmot is AGPL-3.0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from facetrack.faces.base import INSTALL_FACES, l2_normalise
from facetrack.types import Box, Face, Track


@dataclass(slots=True)
class TrackConfig:
    """StrongSort and merging parameters."""

    max_cos_dist: float | None = None
    """Appearance gate (cosine distance); ``None`` uses the analyser's match distance."""
    max_iou_dist: float = 0.7
    n_init: int = 3
    """Consecutive tracking frames a new trajectory needs before it counts."""
    nn_budget: int = 100
    mc_lambda: float = 0.98
    ema_alpha: float = 0.9
    max_age_seconds: float = 2.0
    """A trajectory unseen for longer than this ends (converted to tracking frames per video)."""
    camera_motion: bool = False
    """Estimate camera motion between tracking frames (ECC) and compensate the trajectories."""
    merge: bool = True
    """Join trajectories of the same person that do not overlap in time."""
    merge_distance: float | None = None
    """Cosine distance between mean embeddings under which two trajectories are joined; ``None`` uses the
    analyser's match distance."""

    def __post_init__(self) -> None:
        if self.n_init < 1:
            raise ValueError("n_init must be at least 1")
        if self.max_age_seconds <= 0:
            raise ValueError("max_age_seconds must be positive")


class _NoReID:
    """Stands in for boxmot's ReID model: facetrack always passes embeddings, so this is never called."""

    def get_features(self, boxes, image):
        raise RuntimeError("boxmot asked for ReID features; facetrack passes its own face embeddings")


@dataclass(slots=True)
class _Trajectory:
    track_id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)


class FaceTracker:
    """Run StrongSort over one video's tracking frames; create once, :meth:`start` per video."""

    def __init__(
        self, config: TrackConfig | None = None, match_distance: float = 0.3, embedding_dim: int = 512
    ):
        self.config = config or TrackConfig()
        self.match_distance = match_distance
        self.embedding_dim = embedding_dim
        try:
            import torch
            from boxmot.structures import Boxes, Detections
            from boxmot.trackers.box.strongsort.tracker import StrongSort
        except ImportError as exc:
            raise ImportError(f"face tracking needs boxmot: {INSTALL_FACES}") from exc
        # boxmot sets its logger to INFO and prints every tracker's parameters once per worker.
        logging.getLogger("boxmot").setLevel(logging.WARNING)
        self._torch = torch
        self._Boxes = Boxes
        self._Detections = Detections
        c = self.config
        cos = c.max_cos_dist if c.max_cos_dist is not None else match_distance
        self._tracker = StrongSort(
            min_conf=0.0,
            max_cos_dist=cos,
            max_iou_dist=c.max_iou_dist,
            n_init=c.n_init,
            nn_budget=c.nn_budget,
            mc_lambda=c.mc_lambda,
            ema_alpha=c.ema_alpha,
            reid_model=_NoReID(),
        )
        self._base_max_obs = self._tracker.max_obs
        self._trajectories: dict[int, _Trajectory] = {}
        self._frame_area = 1.0

    def start(self, tracking_fps: float, width: int, height: int, num_frames: int | None = None) -> None:
        """Reset for a new video whose tracking frames come at ``tracking_fps``."""
        t = self._tracker
        t.reset()
        t.cmc = self._make_cmc() if self.config.camera_motion else None
        max_age = max(1, int(math.ceil(self.config.max_age_seconds * tracking_fps)))
        t.max_age = max_age
        t.max_obs = max(self._base_max_obs, max_age + 5)
        n_init = self.config.n_init
        if num_frames is not None:
            # A clip shorter than n_init tracking frames could never confirm a face.
            n_init = max(1, min(n_init, num_frames))
        t.n_init = n_init
        self._trajectories = {}
        self._frame_area = float(max(1, width) * max(1, height))

    def _make_cmc(self):
        from boxmot.trackers.common.motion.cmc import create_cmc

        return create_cmc("ecc")

    def update(self, faces: list[Face], image: np.ndarray, index: int) -> list[int | None]:
        """Feed one tracking frame; return the trajectory id given to each face (None: not yet confirmed).

        Every face must carry its embedding.
        """
        torch = self._torch
        n = len(faces)
        if n:
            embs = np.stack([np.asarray(f.embedding, dtype=np.float32) for f in faces])
            boxes = np.asarray([f.box for f in faces], dtype=np.float32)
            scores = np.clip(np.asarray([f.score for f in faces], dtype=np.float32), 0.0, 1.0)
        else:
            embs = np.zeros((0, self.embedding_dim), dtype=np.float32)
            boxes = np.zeros((0, 4), dtype=np.float32)
            scores = np.zeros((0,), dtype=np.float32)
        dets = self._Detections(
            geometry=self._Boxes(torch.from_numpy(boxes)),
            scores=torch.from_numpy(scores),
            class_ids=torch.zeros(n, dtype=torch.int64),
            sample_id=f"frame-{index}",
            embeddings=torch.from_numpy(embs),
        )
        out = self._tracker.update(dets, np.ascontiguousarray(image))
        ids: list[int | None] = [None] * n
        for track_id, det_index in zip(out.track_ids.tolist(), out.detection_indices.tolist()):
            if det_index < 0 or det_index >= n:
                continue
            face = faces[det_index]
            traj = self._trajectories.setdefault(int(track_id), _Trajectory(int(track_id)))
            traj.frames.append(index)
            traj.boxes.append(tuple(float(v) for v in face.box))
            traj.scores.append(float(face.score))
            traj.embeddings.append(np.asarray(face.embedding, dtype=np.float32))
            ids[det_index] = int(track_id)
        return ids

    def finish(self) -> tuple[list[Track], dict[int, np.ndarray]]:
        """The video's trajectories (merged if configured), ordered by id, and each one's mean embedding."""
        trajs = [t for t in self._trajectories.values() if t.frames]
        if self.config.merge:
            limit = (
                self.config.merge_distance if self.config.merge_distance is not None else self.match_distance
            )
            trajs = merge_trajectories(trajs, limit)
        tracks = []
        means = {}
        for traj in sorted(trajs, key=lambda t: t.track_id):
            track, mean = _to_track(traj, self._frame_area)
            tracks.append(track)
            means[track.track_id] = mean
        return tracks, means


def _mean_embedding(embeddings: list[np.ndarray]) -> np.ndarray:
    return l2_normalise(np.mean(np.stack(embeddings), axis=0))


def merge_trajectories(trajs: list[_Trajectory], max_distance: float) -> list[_Trajectory]:
    """Greedily join trajectories that never share a frame and whose mean embeddings are close.

    The closest pair is joined first; the joined trajectory keeps the smaller id.
    """
    trajs = [t for t in trajs if t.frames]
    while len(trajs) > 1:
        means = np.stack([_mean_embedding(t.embeddings) for t in trajs])
        dist = 1.0 - means @ means.T
        best = None
        for i in range(len(trajs)):
            for j in range(i + 1, len(trajs)):
                if dist[i, j] > max_distance:
                    continue
                if set(trajs[i].frames) & set(trajs[j].frames):
                    continue
                if best is None or dist[i, j] < best[0]:
                    best = (dist[i, j], i, j)
        if best is None:
            break
        _, i, j = best
        a, b = trajs[i], trajs[j]
        order = np.argsort(a.frames + b.frames, kind="stable")
        merged = _Trajectory(min(a.track_id, b.track_id))
        for field_name in ("frames", "boxes", "scores", "embeddings"):
            values = getattr(a, field_name) + getattr(b, field_name)
            setattr(merged, field_name, [values[k] for k in order])
        trajs = [t for k, t in enumerate(trajs) if k not in (i, j)] + [merged]
    return trajs


def _to_track(traj: _Trajectory, frame_area: float) -> tuple[Track, np.ndarray]:
    boxes = np.asarray(traj.boxes, dtype=np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / frame_area
    embs = l2_normalise(np.stack(traj.embeddings))
    mean = _mean_embedding(list(embs))
    similarity = float(np.mean(embs @ mean))
    track = Track(
        track_id=traj.track_id,
        frames=list(traj.frames),
        boxes=list(traj.boxes),
        scores=list(traj.scores),
        area=float(areas.sum()),
        similarity=similarity,
    )
    return track, mean
