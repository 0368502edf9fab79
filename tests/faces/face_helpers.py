"""Helpers for the face tests: box overlap and the true box of a composed clip at a time."""

from __future__ import annotations

import numpy as np

from facetrack.samples import ComposedVideo


def iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def truth_at(clip: ComposedVideo, name: str, t: float):
    """The true box of face ``name`` in the frame on screen at time ``t``."""
    idx = min(int(np.searchsorted(clip.frame_times, t + 1e-9, side="right")) - 1, len(clip.frame_times) - 1)
    return clip.boxes[name][max(idx, 0)]
