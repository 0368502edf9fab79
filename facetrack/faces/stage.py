"""The face tracking stage: one video in, a :class:`~facetrack.types.FaceTrackResult` out.

``FaceTrackStage`` is shaped for a Ray Data CPU task or actor: configuration as dataclass fields,
``setup()`` loads the face models once, ``process(video)`` handles one video and never raises for a bad
one (it sets ``error``). Per video it streams the tracking frames through detect -> embed -> StrongSort
while keeping only the T model frames, then picks the main character and crops it at the model frames.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facetrack.faces.base import FaceAnalyser, FaceConfig, box_iou, create_analyser
from facetrack.faces.carry import StridePlanner
from facetrack.faces.select import (
    SelectConfig,
    Selection,
    boxes_at,
    crops_for,
    select_characters,
    warm_up_selection,
)
from facetrack.faces.track import FaceTracker, TrackConfig
from facetrack.types import Box, Clip, Face, FaceTrackResult, Frames, VideoRef
from facetrack.video import VideoConfig, VideoError, open_video, plan_samples, stream_samples

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class FaceTrackConfig:
    """The face tracking stage's settings (YAML sections ``video``, ``faces``, ``track``, ``select``)."""

    video: VideoConfig = field(default_factory=VideoConfig)
    faces: FaceConfig = field(default_factory=FaceConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    select: SelectConfig = field(default_factory=SelectConfig)


def character_id(video_id: str, character: int) -> str:
    """The row id of a video's ``character``-th character in ``select.mode=all`` (``<video id>#<n>``)."""
    return f"{video_id}#{character}"


@dataclass(slots=True)
class StageResult(FaceTrackResult):
    """A :class:`~facetrack.types.FaceTrackResult` plus the selection and the detection stride's counts."""

    selection: Selection = field(default_factory=Selection)
    mode: str = "main"
    """``select.mode`` the video was processed with."""
    character_boxes: dict[int, list[Box]] = field(default_factory=dict)
    """Per character (track id), its box at each model frame."""
    character_crops: dict[int, np.ndarray] = field(default_factory=dict)
    """Per character (track id), its ``(T, S, S, 3)`` crops (the main character's are ``crops``)."""
    stats: dict[str, int] = field(default_factory=dict)
    """``tracking_frames``, ``detector_calls``, ``carried_frames``, ``faces``, ``embedded`` and
    ``detect/<reason>`` (why the detector ran: ``first``, ``cut``, ``check``, ``uncertain``, ``stride``,
    ``every``)."""

    @property
    def margin(self) -> float | None:
        """How clearly the main character won (see :class:`~facetrack.faces.select.Selection`)."""
        return self.selection.margin

    @property
    def characters(self) -> list[int]:
        return list(self.selection.characters)

    def main_track_summary(self) -> dict[str, Any] | None:
        """The main trajectory's summary plus ``margin``, ``runner_up`` and ``characters``."""
        out = FaceTrackResult.main_track_summary(self)
        if out is not None:
            out["margin"] = None if self.margin is None else round(self.margin, 4)
            out["runner_up"] = self.selection.runner_up
            out["characters"] = self.characters
        return out

    def character_summary(self, character: int) -> dict[str, Any]:
        """One character's trajectory summary with its place: ``character``, ``of``, ``margin``."""
        tid = self.selection.characters[character]
        track = next(t for t in self.tracks if t.track_id == tid)
        out = track.summary()
        out.update(
            n_tracks=len(self.tracks),
            character=character,
            of=len(self.selection.characters),
            margin=None if self.margin is None else round(self.margin, 4),
            main=tid == self.main_track_id,
        )
        return out

    def character_clips(self) -> list[tuple[Clip, dict[str, Any] | None]]:
        """The captioner's inputs, one per row the caption job writes, with each row's track summary.

        ``mode=main`` (or no face found): one clip with the video's id (the main character's crops, or
        none). ``mode=all``: one clip per character, id ``<video id>#<n>`` (see :func:`character_id`),
        main character first. Raises ``ValueError`` if the stage failed for this video.
        """
        clip = self.to_clip()
        if self.mode != "all" or not self.selection.characters:
            return [(clip, self.main_track_summary())]
        return [
            (
                Clip(id=character_id(self.video.id, n), frames=clip.frames, crops=self.character_crops[tid]),
                self.character_summary(n),
            )
            for n, tid in enumerate(self.selection.characters)
        ]


def _blas_one_thread() -> contextlib.AbstractContextManager:
    """Tracking and selection do many tiny matrix operations: a multi-threaded BLAS only adds wake-ups."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class _EmbeddingReuse:
    """Carry a face's embedding over to the next tracking frame when it clearly is the same face."""

    def __init__(self, every: int):
        self.every = every
        self._boxes = np.zeros((0, 4))
        self._embs: list[np.ndarray] = []
        self._ages: list[int] = []
        self._pending_ages: list[int] = []

    def assign(self, faces: list[Face]) -> list[int]:
        """Fill reusable embeddings in place; return the indices of faces that still need one."""
        need = list(range(len(faces)))
        ages = [0] * len(faces)
        if self.every > 1 and faces and len(self._boxes):
            iou = box_iou(np.asarray([f.box for f in faces]), self._boxes)
            touching = iou >= 0.3
            need = []
            for i in range(len(faces)):
                cand = np.flatnonzero(touching[i])
                if len(cand) == 1:
                    j = int(cand[0])
                    if iou[i, j] >= 0.5 and touching[:, j].sum() == 1 and self._ages[j] + 1 < self.every:
                        faces[i].embedding = self._embs[j]
                        ages[i] = self._ages[j] + 1
                        continue
                need.append(i)
        self._pending_ages = ages
        return need

    def remember(self, faces: list[Face]) -> None:
        self._boxes = np.asarray([f.box for f in faces], dtype=np.float64).reshape(-1, 4)
        self._embs = [f.embedding for f in faces]
        self._ages = list(self._pending_ages)

    def follow(self, faces: list[Face]) -> None:
        """Faces carried from the previous frame (same faces, same order): move their boxes, keep ages."""
        if len(faces) != len(self._ages):
            self._pending_ages = [0] * len(faces)
            self.remember(faces)
            return
        self._boxes = np.asarray([f.box for f in faces], dtype=np.float64).reshape(-1, 4)
        self._embs = [f.embedding for f in faces]


class FaceTrackStage:
    """Detect, embed and track faces in a video; pick the main character; crop it at the model frames.

    Example::

        stage = FaceTrackStage(FaceTrackConfig())
        stage.setup()
        result = stage.process(VideoRef(id="a", uri="s3://bucket/a.mp4"))
        clip = result.to_clip()   # when result.error is None
    """

    def __init__(self, config: FaceTrackConfig | None = None, analyser: FaceAnalyser | None = None):
        self.config = config or FaceTrackConfig()
        self.analyser = analyser
        self.tracker: FaceTracker | None = None
        self.counters: Counter[str] = Counter()
        """Totals over processed videos: ``videos``, ``errors``, ``no_face``, and the sums of every
        result's ``stats`` (``tracking_frames``, ``detector_calls``, ``carried_frames``, ``faces``,
        ``embedded`` (faces that needed the embedder), ``detect/<reason>``)."""

    def setup(self) -> None:
        """Load the face models and the tracker (once per process; later calls do nothing)."""
        if self.tracker is not None:
            return
        if self.analyser is None:
            self.analyser = create_analyser(self.config.faces)
        self.analyser.setup()
        self.tracker = FaceTracker(
            self.config.track, self.analyser.match_distance, self.analyser.embedding_dim
        )
        warm_up_selection()

    def process(self, video: VideoRef | str) -> StageResult:
        """Track faces in one video. Never raises for a bad video: the result's ``error`` says what failed."""
        if isinstance(video, str):
            video = VideoRef(id=video, uri=video)
        result = StageResult(video=video, mode=self.config.select.mode)
        start = time.perf_counter()
        self.counters["videos"] += 1
        try:
            self.setup()
            with _blas_one_thread():
                self._run(video, result)
        except VideoError as exc:
            result.error = str(exc)
        except Exception as exc:
            logger.debug("face tracking failed for %s", video.uri, exc_info=True)
            result.error = f"{video.uri}: {type(exc).__name__}: {exc}"
        if result.error is not None:
            self.counters["errors"] += 1
            result.tracks, result.main_track_id, result.crops = [], None, None
            result.selection, result.character_boxes, result.character_crops = Selection(), {}, {}
        elif result.main_track_id is None:
            self.counters["no_face"] += 1
        result.timings["total"] = time.perf_counter() - start
        return result

    def _run(self, video: VideoRef, result: StageResult) -> None:
        cfg = self.config
        analyser, tracker = self.analyser, self.tracker
        assert analyser is not None and tracker is not None
        timings = {"decode": 0.0, "detect_embed": 0.0, "carry": 0.0, "track": 0.0, "select_crop": 0.0}
        result.timings = timings
        stats: Counter[str] = Counter()
        reuse = _EmbeddingReuse(cfg.faces.reembed_every)
        planner = StridePlanner(cfg.faces.detect_every, cfg.faces.stride)
        # Every-frame detection with an analyser that detects on several frames in one call: batch it.
        batch_detect = getattr(analyser, "detect_batch", None) if cfg.faces.detect_every == 1 else None
        batch_size = cfg.faces.detect_batch
        pending: list[tuple[np.ndarray, int]] = []

        def track(image: np.ndarray, k: int, faces: list[Face], detect_start: float | None) -> None:
            """Embed a detected frame's faces (``detect_start`` set) or take carried ones; track them."""
            if detect_start is not None:
                need = reuse.assign(faces)
                if need:
                    embs = analyser.embed(image, [faces[i] for i in need])
                    for i, emb in zip(need, embs):
                        faces[i].embedding = emb
                reuse.remember(faces)
                t2 = time.perf_counter()
                planner.detected(faces, image)
                timings["carry"] += time.perf_counter() - t2
                timings["detect_embed"] += t2 - detect_start
                stats["detector_calls"] += 1
                stats["embedded"] += len(need)
            stats["faces"] += len(faces)
            t0 = time.perf_counter()
            tracker.update(faces, image, k)
            timings["track"] += time.perf_counter() - t0

        def flush() -> None:
            if not pending:
                return
            t1 = time.perf_counter()
            found = batch_detect([image for image, _ in pending], [k for _, k in pending])
            for (image, k), faces in zip(pending, found):
                track(image, k, list(faces), t1)
                t1 = time.perf_counter()
            pending.clear()

        t0 = time.perf_counter()
        with open_video(
            video.uri, backend=cfg.video.backend, threads=cfg.video.threads, seek_gap=cfg.video.seek_gap
        ) as opened:
            info = opened.info
            plan = plan_samples(info.duration, info.fps, info.num_frames, cfg.video)
            tracker.start(plan.tracking_fps, info.width, info.height, len(plan.tracking_times))
            t = len(plan.model_times)
            model: list[tuple[np.ndarray, int, float] | None] = [None] * t
            tracking_times: list[float] = []
            stream = stream_samples(opened, plan)
            timings["decode"] += time.perf_counter() - t0
            while True:
                t0 = time.perf_counter()
                step = next(stream, None)
                timings["decode"] += time.perf_counter() - t0
                if step is None:
                    break
                item, model_slots, is_tracking = step
                if model_slots:
                    image = item.image if item.image.base is None else item.image.copy()
                    for s in model_slots:
                        model[s] = (image, item.index, item.timestamp)
                if not is_tracking:
                    continue
                k = len(tracking_times)
                tracking_times.append(item.timestamp)
                if batch_detect is not None:
                    planner.plan(item.image, k)  # counts the reason ("every")
                    image = item.image if item.image.base is None else item.image.copy()
                    pending.append((image, k))
                    if len(pending) >= batch_size:
                        flush()
                    continue
                t0 = time.perf_counter()
                carried = planner.plan(item.image, k)
                t1 = time.perf_counter()
                timings["carry"] += t1 - t0
                if carried is None:
                    track(item.image, k, analyser.detect(item.image, k), t1)
                else:
                    reuse.follow(carried)
                    stats["carried_frames"] += 1
                    track(item.image, k, carried, None)
            flush()
        missing = [i for i, m in enumerate(model) if m is None]
        if missing or not tracking_times:
            raise VideoError(
                info.name, f"ended early: {len(missing)} of {t} model frames could not be decoded"
            )
        stats["tracking_frames"] = len(tracking_times)
        stats.update({f"detect/{reason}": n for reason, n in planner.reasons.items()})
        result.stats = dict(stats)
        self.counters.update(stats)
        t0 = time.perf_counter()
        tracks, _ = tracker.finish()
        timings["track"] += time.perf_counter() - t0

        t0 = time.perf_counter()
        images = np.stack([m[0] for m in model])
        result.model_frames = Frames(
            images, [m[1] for m in model], [m[2] for m in model], info.fps, info.duration
        )
        result.tracks = tracks
        result.tracking_fps = plan.tracking_fps
        result.n_tracking_frames = len(tracking_times)
        result.tracking_times = tracking_times
        result.selection = select_characters(tracks, cfg.select)
        result.main_track_id = result.selection.main_track_id
        by_id = {track.track_id: track for track in tracks}
        for tid in result.selection.characters:
            boxes = boxes_at(by_id[tid], tracking_times, result.model_frames.timestamps)
            result.character_boxes[tid] = boxes
            result.character_crops[tid] = crops_for(images, boxes, cfg.select)
        main = result.main_track
        if main is not None:
            result.main_boxes = list(result.character_boxes[main.track_id])
            result.crops = result.character_crops[main.track_id]
        else:
            result.main_boxes = [None] * t
        timings["select_crop"] = time.perf_counter() - t0


def _r(x: float, nd: int = 2) -> float:
    return round(float(x), nd)


def result_to_dict(result: FaceTrackResult) -> dict[str, Any]:
    """A JSON-able description of a result (boxes and times, no pixels)."""
    frames = result.model_frames
    out: dict[str, Any] = {
        "id": result.video.id,
        "video": result.video.uri,
        "error": result.error,
        "main_track_id": result.main_track_id,
        "main_track": result.main_track_summary(),
        "tracking_fps": _r(result.tracking_fps, 4),
        "n_tracking_frames": result.n_tracking_frames,
        "tracking_times": [_r(t, 4) for t in result.tracking_times],
        "model_frames": None
        if frames is None
        else {
            "indices": list(frames.indices),
            "timestamps": [_r(t, 4) for t in frames.timestamps],
            "width": int(frames.images.shape[2]),
            "height": int(frames.images.shape[1]),
            "fps": _r(frames.fps, 4),
            "duration": _r(frames.duration, 4),
        },
        "main_boxes": [None if b is None else [_r(v) for v in b] for b in result.main_boxes],
        "crops": None
        if result.crops is None
        else {"count": int(result.crops.shape[0]), "size": int(result.crops.shape[1])},
        "tracks": [
            {
                **t.summary(),
                "frames": list(t.frames),
                "boxes": [[_r(v) for v in b] for b in t.boxes],
                "scores": [_r(s, 4) for s in t.scores],
            }
            for t in result.tracks
        ],
        "timings": {k: _r(v, 4) for k, v in result.timings.items()},
    }
    if isinstance(result, StageResult):
        sel = result.selection
        out["selection"] = {
            "mode": result.mode,
            "margin": None if sel.margin is None else _r(sel.margin, 4),
            "runner_up": sel.runner_up,
            "characters": list(sel.characters),
        }
        out["stats"] = dict(result.stats)
    return out
