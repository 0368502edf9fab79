"""Main-character selection (K-means over trajectories), the main box at each model frame, and crops.

Selection follows FaceTrack-MM: every trajectory is described by its total occupied area (the sum over
its frames of box area / frame area) and its mean intra-trajectory cosine similarity. The two features
are standardised and clustered by K-means (k=2); the main cluster is the one whose trajectories have
the larger mean area, and the main character is that cluster's trajectory with the largest area.

Edge cases, decided here:

* no trajectory: no main character (the clip is captioned from its frames alone);
* trajectories shorter than ``min_track_frames`` are left out, unless nothing else is left;
* one trajectory: it is the main character;
* trajectories that K-means cannot tell apart (identical features, so one cluster): the largest area.

Every selection also says how clearly the main character won: the margin ``1 - area(runner-up) /
area(main)`` over the candidates (1: nobody else; near 0: two people share the screen equally, as in a
dialogue). With ``mode=all`` every trajectory of the main cluster is a character of its own (largest area
first, the main character first), so a dialogue yields both speakers.

The main character's box at a model frame is interpolated between its observations before and after
that time, and held (the nearest observation) before its first or after its last one. A crop is a square
of side ``(1 + margin)`` times the box's longer side, centred on the box, padded with black outside the
frame, resized to ``crop_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from facetrack.types import Box, Track


@dataclass(slots=True)
class SelectConfig:
    """Main-character selection and cropping."""

    min_track_frames: int = 3
    """Trajectories seen on fewer tracking frames are not candidates (unless there is nothing else)."""
    crop_size: int = 224
    margin: float = 0.5
    """The crop's side is ``1 + margin`` times the box's longer side."""
    seed: int = 0
    mode: Literal["main", "all"] = "main"
    """``main``: one character per video; ``all``: every trajectory of the main cluster is a character."""
    tie: float = 0.25
    """``mode=all``: a candidate whose area is at least ``1 - tie`` of the main character's is a character
    too, whichever cluster K-means gave it (two people sharing the screen equally, a dialogue: K-means on
    standardised features always splits two trajectories)."""

    def __post_init__(self) -> None:
        if self.mode not in ("main", "all"):
            raise ValueError("select.mode must be 'main' or 'all'")
        if self.crop_size < 8:
            raise ValueError("crop_size must be at least 8")
        if self.margin < 0:
            raise ValueError("margin must not be negative")
        if not 0.0 <= self.tie < 1.0:
            raise ValueError("tie must be in [0, 1)")


def track_features(tracks: Sequence[Track]) -> np.ndarray:
    """``(N, 2)`` features per trajectory: total occupied area, mean intra-trajectory cosine similarity."""
    return np.asarray([[t.area, t.similarity] for t in tracks], dtype=np.float64).reshape(-1, 2)


@dataclass(slots=True)
class Selection:
    """Who the selection picked and how clearly."""

    main_track_id: int | None = None
    margin: float | None = None
    """``1 - area(runner-up) / area(main)`` over the candidates: 1.0 when the main character is the only
    candidate, near 0 when another trajectory is as large; ``None`` without trajectories."""
    runner_up: int | None = None
    """The largest candidate after the main character (``None`` when there is none)."""
    characters: list[int] = field(default_factory=list)
    """Track ids of the characters, main first: ``[main]`` in ``mode=main``, the main cluster by
    decreasing area in ``mode=all``, empty without trajectories."""


def select_characters(tracks: Sequence[Track], config: SelectConfig | None = None) -> Selection:
    """The main character, the selection margin and (``mode=all``) every main-cluster character."""
    config = config or SelectConfig()
    if not tracks:
        return Selection()
    candidates = [t for t in tracks if len(t.frames) >= config.min_track_frames] or list(tracks)
    ranked = sorted(candidates, key=lambda t: (-t.area, t.track_id))
    if len(candidates) == 1:
        members = candidates
    else:
        feats = track_features(candidates)
        labels = _kmeans2(feats, config.seed)
        if labels is None:
            members = candidates
        else:
            areas = feats[:, 0]
            main_label = max(set(labels.tolist()), key=lambda lab: areas[labels == lab].mean())
            members = [t for t, lab in zip(candidates, labels) if lab == main_label]
    members = sorted(members, key=lambda t: (-t.area, t.track_id))
    main = members[0]
    if config.mode == "all":  # equals of the main character are characters whatever their cluster
        ids = {t.track_id for t in members}
        equals = [t for t in ranked if t.track_id not in ids and t.area >= (1.0 - config.tie) * main.area]
        members = [main, *sorted(members[1:] + equals, key=lambda t: (-t.area, t.track_id))]
    others = [t for t in ranked if t.track_id != main.track_id]
    runner = others[0] if others else None
    margin = 1.0 if runner is None or main.area <= 0 else max(0.0, 1.0 - runner.area / main.area)
    characters = [t.track_id for t in members] if config.mode == "all" else [main.track_id]
    return Selection(
        main_track_id=main.track_id,
        margin=float(margin),
        runner_up=None if runner is None else runner.track_id,
        characters=characters,
    )


def select_main(tracks: Sequence[Track], config: SelectConfig | None = None) -> int | None:
    """The ``track_id`` of the main character, or ``None`` when there is no trajectory."""
    return select_characters(tracks, config).main_track_id


def _kmeans2(feats: np.ndarray, seed: int) -> np.ndarray | None:
    """K-means (k=2) labels on standardised features, or None when the points are all the same."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    scaled = StandardScaler().fit_transform(feats)
    distinct = np.unique(np.round(scaled, 9), axis=0)
    if len(distinct) < 2:
        return None
    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(scaled)
    if len(set(labels.tolist())) < 2:
        return None
    return labels


def warm_up_selection() -> None:
    """Import and run the clustering and cropping code once, so the first video does not pay for it."""
    _kmeans2(np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9]]), 0)
    crop_square(np.zeros((8, 8, 3), np.uint8), (1, 1, 5, 5), 0.5, 8)


def boxes_at(track: Track, track_times: Sequence[float], times: Sequence[float]) -> list[Box]:
    """The track's box at each of ``times``: interpolated inside its span, held outside it.

    Args:
        track_times: time (seconds) of each tracking frame; ``track.frames`` index into it.
    """
    obs_t = np.asarray([track_times[f] for f in track.frames], dtype=np.float64)
    obs_b = np.asarray(track.boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(obs_t, kind="stable")
    obs_t, obs_b = obs_t[order], obs_b[order]
    out: list[Box] = []
    for t in times:
        cols = [float(np.interp(t, obs_t, obs_b[:, c])) for c in range(4)]
        out.append((cols[0], cols[1], cols[2], cols[3]))
    return out


def boxes_within(
    track: Track, track_times: Sequence[float], times: Sequence[float], slack: float
) -> list[Box | None]:
    """Like :func:`boxes_at` but ``None`` outside the track's span (widened by ``slack`` seconds)."""
    if not track.frames:
        return [None] * len(times)
    first = track_times[track.frames[0]] - slack
    last = track_times[track.frames[-1]] + slack
    inside = boxes_at(track, track_times, times)
    return [b if first <= t <= last else None for b, t in zip(inside, times)]


def crop_square(image: np.ndarray, box: Sequence[float], margin: float, size: int) -> np.ndarray:
    """The square around ``box`` (side ``(1 + margin) * longer side``), black outside the image, resized."""
    import cv2

    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    # Map the square to the output with one affine warp: resampling and padding in a single pass.
    scale = size / side
    matrix = np.array([[scale, 0.0, size / 2.0 - cx * scale], [0.0, scale, size / 2.0 - cy * scale]])
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def crops_for(images: np.ndarray, boxes: Sequence[Sequence[float]], config: SelectConfig) -> np.ndarray:
    """``(T, S, S, 3)`` uint8 crops, one per image and box."""
    return np.stack(
        [crop_square(img, box, config.margin, config.crop_size) for img, box in zip(images, boxes)]
    )
