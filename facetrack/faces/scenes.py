"""Composed multi-person scenes with ground truth, and how well a tracking result matches that truth.

A :class:`Scene` places faces from packaged photographs (see :func:`facetrack.samples.face_sources`) on
a moving background: each :class:`Appearance` is one person on screen for a while, following a path
(keyframes, linear in between, an optional fast horizontal wobble), entering or leaving through the
frame edges when the path starts or ends outside it. Shot cuts change the background; occlusions hide a
face behind a panel. :func:`compose_scene` writes the clip and returns every face's true box in every
frame. :func:`score_result` compares a :class:`~facetrack.types.FaceTrackResult` with that truth: main
character at the model frames, people found, box coverage and identity switches.

:func:`bench_scenes` is the fixed set of scenes ``bench/track.py`` runs (and tests draw from).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facetrack.samples import CONTEXT, FaceSource, _background, _paste, face_sources, write_video
from facetrack.types import Box, FaceTrackResult

MATCH_IOU = 0.4
"""A box is on a true face when their IoU is above this."""


@dataclass(slots=True)
class Appearance:
    """One person on screen from ``start`` to ``end`` seconds."""

    source: str
    start: float
    end: float
    path: Sequence[tuple[float, float]]
    """Keyframes of the face centre as fractions of (width, height), spread evenly over the appearance;
    points outside 0..1 are off screen (entering or leaving)."""
    size: int = 120
    """Side of the face box in pixels."""
    wobble: float = 0.0
    """Amplitude of a horizontal oscillation, as a fraction of the width (fast motion)."""
    wobble_hz: float = 0.0

    def centre(self, t: float, width: int, height: int) -> tuple[float, float] | None:
        if t < self.start or t >= self.end or not self.path:
            return None
        pts = np.asarray(self.path, dtype=np.float64).reshape(-1, 2)
        a = (t - self.start) / max(self.end - self.start, 1e-9)
        knots = np.linspace(0.0, 1.0, len(pts))
        x = float(np.interp(a, knots, pts[:, 0]))
        y = float(np.interp(a, knots, pts[:, 1]))
        x += self.wobble * math.sin(2 * math.pi * self.wobble_hz * (t - self.start))
        return x * width, y * height


@dataclass(slots=True)
class Scene:
    """What one composed multi-person clip shows."""

    name: str
    seconds: float
    people: list[Appearance]
    cuts: list[float] = field(default_factory=list)
    """Times of shot cuts (the background changes)."""
    occlusions: list[tuple[str, float, float]] = field(default_factory=list)
    """``(source, start, end)``: a panel hides that face from ``start`` to ``end`` seconds."""
    kind: str = ""
    fps: float = 25.0
    width: int = 640
    height: int = 360
    seed: int = 0


@dataclass(slots=True)
class SceneVideo:
    """A written scene and the truth about it."""

    path: str
    scene: Scene
    frame_times: list[float]
    boxes: dict[str, list[Box | None]]
    """Per person (face source name), the true face box in every frame (``None``: not visible)."""

    def truth_at(self, name: str, t: float) -> Box | None:
        """The true box of ``name`` in the frame on screen at time ``t``."""
        idx = int(np.searchsorted(self.frame_times, t + 1e-9, side="right")) - 1
        return self.boxes[name][min(max(idx, 0), len(self.frame_times) - 1)]

    def areas(self) -> dict[str, float]:
        """Total visible face area of each person over the clip (pixels times frames)."""
        return {
            name: float(sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes if b is not None))
            for name, boxes in self.boxes.items()
        }

    def main_people(self, tie: float = 0.15) -> list[str]:
        """The main character (largest total area) and anyone within ``tie`` of it (a dialogue)."""
        areas = self.areas()
        if not areas or max(areas.values()) <= 0:
            return []
        top = max(areas.values())
        return sorted((n for n, a in areas.items() if a >= (1.0 - tie) * top), key=lambda n: -areas[n])


def compose_scene_frames(
    scene: Scene, sources: dict[str, FaceSource] | None = None
) -> Iterator[tuple[float, np.ndarray, dict[str, Box | None]]]:
    """Yield ``(time, frame, true boxes)`` for every frame of ``scene``."""
    sources = face_sources() if sources is None else sources
    names = list(dict.fromkeys(p.source for p in scene.people))
    for name in names:
        if name not in sources:
            raise KeyError(f"face source {name!r} is not available; available: {sorted(sources)}")
    n = max(1, int(round(scene.seconds * scene.fps)))
    cuts = sorted(scene.cuts)
    for i in range(n):
        t = i / scene.fps
        shot = int(np.searchsorted(cuts, t, side="right"))
        frame = _background(scene.width, scene.height, scene.seed + 11 * shot, t, shot % 2 == 1)
        boxes: dict[str, Box | None] = {name: None for name in names}
        for person in scene.people:
            centre = person.centre(t, scene.width, scene.height)
            if centre is None:
                continue
            patch = int(round(person.size * CONTEXT))
            box = _paste(frame, sources[person.source], centre[0], centre[1], patch)
            if box is not None:
                boxes[person.source] = box
        for name, start, end in scene.occlusions:
            box = boxes.get(name)
            if box is None or not start <= t < end:
                continue
            w, h = box[2] - box[0], box[3] - box[1]
            x0, y0 = int(max(0, box[0] - 0.15 * w)), int(max(0, box[1] - 0.15 * h))
            x1, y1 = int(min(scene.width, box[2] + 0.15 * w)), int(min(scene.height, box[3] + 0.15 * h))
            frame[y0:y1, x0:x1] = (90, 90, 96)
            boxes[name] = None
        yield t, frame, boxes


def compose_scene(path: str | os.PathLike, scene: Scene, *, crf: int = 23) -> SceneVideo:
    """Compose ``scene`` and write it to ``path`` (a local ``.mp4``); return the truth about it."""
    sources = face_sources()
    times: list[float] = []
    boxes: dict[str, list[Box | None]] = {}

    def frames() -> Iterator[np.ndarray]:
        for t, frame, frame_boxes in compose_scene_frames(scene, sources):
            times.append(t)
            for name, box in frame_boxes.items():
                boxes.setdefault(name, []).append(box)
            yield frame

    write_video(path, frames(), scene.fps, crf=crf)
    return SceneVideo(os.fspath(path), scene, times, boxes)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score_result(result: FaceTrackResult, video: SceneVideo) -> dict[str, Any]:
    """How ``result`` matches the truth of ``video``.

    Returns counts (so a corpus can pool them): ``main_frames`` (model frames where a main character is
    visible) and ``main_correct`` (those where the chosen main box is on one of the main people),
    ``people`` and ``found`` (people with at least one trajectory that is mostly on them), ``person_frames``
    and ``covered`` (true face boxes at tracking frames, and those some trajectory's box is on),
    ``id_switches`` (times a person's covering trajectory changes from one tracking frame to a later one,
    whatever lies between), ``fragments`` (trajectories per found person beyond the first) and
    ``false_tracks`` (trajectories mostly on no one).
    """
    names = list(video.boxes)
    times = result.tracking_times
    mains = video.main_people()
    out: dict[str, Any] = {"main_frames": 0, "main_correct": 0}
    if result.model_frames is not None and mains:
        for t, box in zip(result.model_frames.timestamps, result.main_boxes):
            truths = [video.truth_at(n, t) for n in mains]
            if all(tb is None for tb in truths):
                continue
            out["main_frames"] += 1
            if box is not None and any(tb is not None and _iou(box, tb) > MATCH_IOU for tb in truths):
                out["main_correct"] += 1
    # Which person each trajectory is mostly on.
    owner: dict[int, str | None] = {}
    for track in result.tracks:
        votes: dict[str, int] = {}
        for k, box in zip(track.frames, track.boxes):
            for n in names:
                tb = video.truth_at(n, times[k])
                if tb is not None and _iou(box, tb) > MATCH_IOU:
                    votes[n] = votes.get(n, 0) + 1
        best = max(votes, key=votes.get) if votes else None
        owner[track.track_id] = best if best is not None and votes[best] >= 0.5 * len(track.frames) else None
    found = {n for n in owner.values() if n is not None}
    people = [n for n in names if any(b is not None for b in video.boxes[n])]
    by_frame: dict[int, list[tuple[int, Box]]] = {}
    for track in result.tracks:
        for k, box in zip(track.frames, track.boxes):
            by_frame.setdefault(k, []).append((track.track_id, box))
    person_frames = covered = switches = 0
    for n in people:
        last: int | None = None
        for k, t in enumerate(times):
            tb = video.truth_at(n, t)
            if tb is None:
                continue
            person_frames += 1
            hits = [(_iou(b, tb), tid) for tid, b in by_frame.get(k, []) if _iou(b, tb) > MATCH_IOU]
            if not hits:
                continue
            covered += 1
            tid = max(hits)[1]
            if last is not None and tid != last:
                switches += 1
            last = tid
    out.update(
        people=len(people),
        found=len(found & set(people)),
        missed=sorted(set(people) - found),
        person_frames=person_frames,
        covered=covered,
        id_switches=switches,
        fragments=sum(max(0, list(owner.values()).count(n) - 1) for n in found),
        false_tracks=sum(1 for v in owner.values() if v is None),
        tracks=len(result.tracks),
        main_people=mains,
    )
    return out


def _pick(names: list[str], k: int, n: int) -> list[str]:
    return [names[(k + i) % len(names)] for i in range(n)]


def bench_scenes(seconds: float = 4.0, width: int = 640, height: int = 360) -> list[Scene]:
    """Twenty multi-person scenes: motion, fast motion, occlusion, shot cuts, small faces (~40 px),
    people entering and leaving, dialogues. Deterministic; needs the insightface and matplotlib faces."""
    s = seconds
    others = ["t1-0", "t1-1", "t1-2", "t1-3", "t1-4", "t1-5"]
    out: list[Scene] = []

    def add(kind: str, people: list[Appearance], **kw: Any) -> None:
        k = len(out)
        out.append(Scene(f"{k:02d}-{kind}", s, people, kind=kind, width=width, height=height, seed=k, **kw))

    for k in range(3):  # a main face drifting, two or three smaller ones moving
        a, b, c = _pick(others, 2 * k, 3)
        add(
            "motion",
            [
                Appearance("hopper", 0, s, [(0.3, 0.55), (0.65, 0.5)], size=150),
                Appearance(a, 0, s, [(0.85, 0.25), (0.8, 0.75)], size=70),
                Appearance(b, 0, s, [(0.1, 0.8), (0.2, 0.2)], size=60),
            ]
            + ([Appearance(c, 0.5, s, [(0.55, 0.15), (0.95, 0.15)], size=55)] if k else []),
        )
    for k in range(2):  # fast motion: the main face sweeps across and wobbles
        a, b = _pick(others, 3 * k + 1, 2)
        add(
            "fast",
            [
                Appearance(
                    "hopper",
                    0,
                    s,
                    [(0.2, 0.5), (0.8, 0.55), (0.3, 0.5)],
                    size=130,
                    wobble=0.04,
                    wobble_hz=1.5,
                ),
                Appearance(a, 0, s, [(0.9, 0.2), (0.88, 0.22)], size=65),
                Appearance(b, 0, s, [(0.08, 0.85), (0.6, 0.85)], size=55),
            ],
        )
    for k in range(3):  # occlusion of the main face (0.6-1 s) and of an extra
        a, b = _pick(others, k + 2, 2)
        add(
            "occlusion",
            [
                Appearance("hopper", 0, s, [(0.35, 0.55), (0.6, 0.5)], size=140),
                Appearance(a, 0, s, [(0.85, 0.3), (0.8, 0.3)], size=70),
                Appearance(b, 0.3, s, [(0.1, 0.75), (0.15, 0.6)], size=60),
            ],
            occlusions=[("hopper", 0.35 * s, 0.35 * s + 0.6 + 0.2 * k), (a, 0.65 * s, 0.65 * s + 0.5)],
        )
    for k in range(3):  # shot cuts: the same people placed elsewhere, an empty shot in between for one
        a, b = _pick(others, 2 * k + 1, 2)
        c1, c2 = 0.4 * s, 0.7 * s
        people = [
            Appearance("hopper", 0, c1, [(0.3, 0.55), (0.35, 0.55)], size=140),
            Appearance(a, 0, c1, [(0.8, 0.3), (0.8, 0.35)], size=70),
            Appearance("hopper", c2 if k == 0 else c1, s, [(0.7, 0.5), (0.6, 0.5)], size=150),
            Appearance(a, c2 if k == 0 else c1, s, [(0.15, 0.3), (0.2, 0.3)], size=65),
        ]
        if k == 2:
            people.append(Appearance(b, c2, s, [(0.45, 0.15), (0.45, 0.2)], size=55))
        add("cut", people, cuts=[c1, c2] if k == 0 else [c1])
    for k in range(3):  # small faces: 40-60 px people around a medium main face
        a, b, c = _pick(others, k, 3)
        add(
            "small",
            [
                Appearance("hopper", 0, s, [(0.45, 0.55), (0.55, 0.55)], size=110),
                Appearance(a, 0, s, [(0.1, 0.2), (0.15, 0.25)], size=40 + 4 * k),
                Appearance(b, 0, s, [(0.88, 0.2), (0.85, 0.3)], size=44),
                Appearance(c, 0, s, [(0.85, 0.8), (0.75, 0.82)], size=50),
            ],
        )
    for k in range(4):  # people entering and leaving through the sides
        a, b, c = _pick(others, k + 3, 3)
        add(
            "enter-leave",
            [
                Appearance("hopper", 0, s, [(0.4, 0.55), (0.5, 0.55)], size=140),
                Appearance(a, 0.2, 0.7 * s, [(1.15, 0.25), (0.82, 0.25), (0.82, 0.25), (1.15, 0.3)], size=70),
                Appearance(b, 0.35 * s, s, [(-0.15, 0.3), (0.15, 0.3), (0.15, 0.3)], size=65),
                Appearance(c, 0.5 * s, s, [(0.9, 1.2), (0.9, 0.75), (0.88, 0.75)], size=60),
            ],
        )
    for k in range(2):  # a dialogue: two faces of the same size share the screen
        a, b = _pick(others, 2 * k, 2)
        add(
            "dialogue",
            [
                Appearance("hopper", 0, s, [(0.28, 0.5), (0.3, 0.52)], size=120),
                Appearance(a, 0, s, [(0.72, 0.5), (0.7, 0.48)], size=120),
                Appearance(b, 0.4 * s, s, [(0.5, 0.12), (0.52, 0.14)], size=48),
            ],
        )
    return out
