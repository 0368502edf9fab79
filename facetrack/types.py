"""Records that flow between the stages of facetrack (decode -> track -> caption -> write).

Errors travel on the record (``error``) instead of raising through a whole batch: a stage that cannot
process one video sets ``error`` and passes the record on, so a job always writes one row per input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Box = tuple[float, float, float, float]
"""A box in pixels of the frame it was found in: (x1, y1, x2, y2)."""


@dataclass(slots=True)
class VideoRef:
    """One input video: a stable id and where its bytes are (local path or ``s3://`` URI)."""

    id: str
    uri: str


@dataclass(slots=True)
class Frames:
    """Frames sampled from one video.

    ``images`` is ``(N, H, W, 3)`` uint8 RGB; ``indices`` are the source frame numbers and
    ``timestamps`` the source times in seconds of each sampled frame.
    """

    images: np.ndarray
    indices: list[int]
    timestamps: list[float]
    fps: float
    duration: float

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(slots=True)
class Face:
    """One detected face in one tracking frame."""

    frame: int
    box: Box
    score: float
    landmarks: np.ndarray | None = None
    """``(5, 2)`` float32 points: eyes, nose, mouth corners."""
    embedding: np.ndarray | None = None
    """L2-normalised identity embedding, ``(D,)`` float32."""


@dataclass(slots=True)
class Track:
    """One face trajectory over the tracking frames."""

    track_id: int
    frames: list[int]
    """Tracking-frame indices at which the track has a box."""
    boxes: list[Box]
    scores: list[float]
    area: float = 0.0
    """Total occupied area over the track, as a fraction of one frame's area summed over its frames."""
    similarity: float = 0.0
    """Mean cosine similarity of the track's embeddings to their mean (1.0 for a single observation)."""

    def summary(self) -> dict[str, Any]:
        """A small JSON-able description (no per-frame data)."""
        return {
            "track_id": self.track_id,
            "n_frames": len(self.frames),
            "first_frame": self.frames[0] if self.frames else None,
            "last_frame": self.frames[-1] if self.frames else None,
            "area": round(float(self.area), 6),
            "similarity": round(float(self.similarity), 6),
        }


@dataclass(slots=True)
class Clip:
    """What the captioner consumes for one video.

    ``frames`` is ``(T, H, W, 3)`` uint8 RGB (the model frames); ``crops`` is ``(T, h, w, 3)`` uint8 RGB
    (the main character's face at each model frame) or ``None`` when no main character was found, in
    which case the model runs on the frames alone.
    """

    id: str
    frames: np.ndarray
    crops: np.ndarray | None = None


@dataclass(slots=True)
class FaceTrackResult:
    """Output of the face tracking stage for one video."""

    video: VideoRef
    tracks: list[Track] = field(default_factory=list)
    main_track_id: int | None = None
    model_frames: Frames | None = None
    main_boxes: list[Box | None] = field(default_factory=list)
    """The main character's box at each model frame (held or interpolated across gaps)."""
    crops: np.ndarray | None = None
    """``(T, S, S, 3)`` uint8 RGB crops of the main character at the model frames, or ``None``."""
    tracking_fps: float = 0.0
    n_tracking_frames: int = 0
    tracking_times: list[float] = field(default_factory=list)
    """Time (seconds) of each tracking frame; ``Track.frames`` index into it."""
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def main_track(self) -> Track | None:
        for track in self.tracks:
            if track.track_id == self.main_track_id:
                return track
        return None

    def to_clip(self) -> Clip:
        """The captioner's input; raises ``ValueError`` if the stage failed for this video."""
        if self.error is not None or self.model_frames is None:
            raise ValueError(f"{self.video.id}: no frames to caption ({self.error or 'not decoded'})")
        return Clip(id=self.video.id, frames=self.model_frames.images, crops=self.crops)

    def main_track_summary(self) -> dict[str, Any] | None:
        track = self.main_track
        if track is None:
            return None
        out = track.summary()
        out["n_tracks"] = len(self.tracks)
        return out


@dataclass(slots=True)
class CaptionRow:
    """One output row of the caption job: one per input video, ``error`` set when it failed."""

    id: str
    video: str
    caption: str | None = None
    model: str = ""
    prompt: str = ""
    main_track: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
