"""Decoding backends over one opened file (PyAV, decord), rotation, and :class:`Video`, the opened video."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facetrack.types import Frames
from facetrack.video.sampling import INSTALL_LINE, SampledFrame, VideoError, VideoInfo, display_index

logger = logging.getLogger(__name__)


def _rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def _normalise_rotation(degrees: float | int | None) -> int:
    if degrees is None or not math.isfinite(float(degrees)):
        return 0
    return int(round(float(degrees) / 90.0)) % 4 * 90


class Reader:
    """One decoding backend over one opened file."""

    info: VideoInfo

    def iter_at(self, times: np.ndarray) -> Iterator[SampledFrame]:
        raise NotImplementedError

    def close(self) -> None:
        return None


class DecordReader(Reader):
    def __init__(self, target: Any, name: str, rotation: int, threads: int, seek_gap: float = 4.0):
        self._seek_gap = seek_gap
        try:
            import decord
        except ImportError as exc:
            raise ImportError(f"decord is not installed: {INSTALL_LINE}") from exc
        self._vr = decord.VideoReader(target, ctx=decord.cpu(0), num_threads=threads)
        n = len(self._vr)
        if n < 1:
            raise VideoError(name, "no video frames")
        stamps = np.asarray(self._vr.get_frame_timestamp(list(range(n))), dtype=np.float64).reshape(n, 2)
        start = stamps[0, 0]
        self._times = stamps[:, 0] - start
        if not np.all(np.isfinite(self._times)) or np.any(np.diff(self._times) < 0):
            raise VideoError(name, "frame timestamps are not usable")
        end = float(stamps[-1, 1] - start)
        fps = float(self._vr.get_avg_fps() or 0.0)
        if not end > self._times[-1]:
            end = float(self._times[-1] + (1.0 / fps if fps > 0 else 0.04))
        if not fps > 0:
            fps = n / end
        first = self._vr.get_batch([0]).asnumpy()
        if first.ndim != 4 or first.shape[-1] != 3:
            raise VideoError(name, f"decord returned frames of shape {first.shape[1:]}")
        h, w = int(first.shape[1]), int(first.shape[2])
        if rotation in (90, 270):
            h, w = w, h
        self._rotation = rotation
        self.info = VideoInfo(name, "decord", int(w), int(h), fps, n, end, rotation)

    def iter_at(self, times: np.ndarray) -> Iterator[SampledFrame]:
        # One frame at a time, in order: frames between samples are decoded and skipped (no conversion)
        # unless the next sample is more than ``seek_gap`` seconds ahead, then decord seeks. Batched
        # random access (``get_batch``) allocates far more transient memory next to a detector.
        indices = display_index(self._times, np.asarray(times, dtype=np.float64))
        order: dict[int, list[int]] = {}
        for slot, idx in enumerate(indices.tolist()):
            order.setdefault(int(idx), []).append(slot)
        vr = self._vr
        vr.seek(0)
        pos = 0
        for idx in sorted(order):
            if idx > pos:
                if self._times[idx] - self._times[pos] > self._seek_gap:
                    vr.seek_accurate(idx)
                else:
                    vr.skip_frames(idx - pos)
            image = _rotate(vr.next().asnumpy(), self._rotation)
            pos = idx + 1
            yield SampledFrame(image, idx, float(self._times[idx]), tuple(order[idx]))

    def close(self) -> None:
        self._vr = None


class PyAVReader(Reader):
    def __init__(self, target: Any, name: str, threads: int, seek_gap: float):
        try:
            import av
        except ImportError as exc:
            raise ImportError(f"PyAV is not installed: {INSTALL_LINE}") from exc
        self._av = av
        self._name = name
        self._target = target
        self._threads = threads
        self._seek_gap = seek_gap
        self._container = None
        try:
            container = av.open(target, mode="r")
        except av.error.FFmpegError as exc:
            raise VideoError(name, f"not a readable video ({_ffmpeg_reason(exc)})") from exc
        self._container = container
        try:
            self._probe(container, name, threads)
        except BaseException:
            container.close()
            self._container = None
            raise

    def _probe(self, container, name: str, threads: int) -> None:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            what = f"only {', '.join(kinds)} streams" if kinds else "no streams"
            raise VideoError(name, f"no video stream ({what})")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise VideoError(name, "no decoder for its video stream")
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        stream.codec_context.thread_count = threads
        self._stream = stream
        self._tb = float(stream.time_base) if stream.time_base else 0.0
        first = self._first_frame()
        if first is None:
            raise VideoError(name, "no decodable video frames")
        self._start = first.time if first.time is not None else 0.0
        rotation = _normalise_rotation(getattr(first, "rotation", 0))
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        duration = self._duration(fps)
        if not fps > 0:
            fps = 25.0
        if duration is None:
            duration, count = self._scan_duration()
        else:
            count = int(stream.frames) if stream.frames else max(1, int(round(duration * fps)))
        self._rotation = rotation
        self.info = VideoInfo(name, "pyav", int(w), int(h), fps, int(count), float(duration), rotation)

    def _first_frame(self):
        try:
            for frame in self._container.decode(self._stream):
                return frame
        except self._av.error.FFmpegError as exc:
            raise VideoError(self._name, f"cannot decode the first frame ({_ffmpeg_reason(exc)})") from exc
        return None

    def _duration(self, fps: float) -> float | None:
        stream = self._stream
        if stream.duration and self._tb:
            return float(stream.duration) * self._tb
        if self._container.duration:
            return float(self._container.duration) / 1_000_000.0
        if stream.frames and fps > 0:
            return stream.frames / fps
        return None

    def _scan_duration(self) -> tuple[float, int]:
        """Demux once (no decoding) to find the last frame's time when the container does not say."""
        self._container.seek(0)
        last, count = 0.0, 0
        for packet in self._container.demux(self._stream):
            if packet.pts is None:
                continue
            count += 1
            end = (packet.pts + (packet.duration or 0)) * self._tb - self._start
            last = max(last, end)
        self._container.seek(0)
        if count == 0:
            raise VideoError(self._name, "no video packets")
        return max(last, 1e-3), count

    def _to_array(self, frame) -> np.ndarray:
        return _rotate(frame.to_ndarray(format="rgb24"), self._rotation)

    def _frames_from(self, seek_time: float | None):
        av = self._av
        if seek_time is not None and self._tb:
            target = int((seek_time + self._start) / self._tb)
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        else:
            self._container.seek(0)
        try:
            for frame in self._container.decode(self._stream):
                if frame.time is None:
                    continue
                yield frame
        except av.error.FFmpegError as exc:
            raise VideoError(self._name, f"truncated or corrupt video data ({_ffmpeg_reason(exc)})") from exc

    def iter_at(self, times: np.ndarray) -> Iterator[SampledFrame]:
        times = np.asarray(times, dtype=np.float64)
        if times.size == 0:
            return
        order = np.argsort(times, kind="stable")
        sorted_times = times[order]
        fps = self.info.fps
        j = 0
        n = len(sorted_times)
        frames = self._frames_from(None)
        prev = None
        prev_time = 0.0
        seeked_for = -1
        while j < n:
            frame = next(frames, None)
            if frame is None:
                break
            t = float(frame.time) - self._start
            if prev is None or t <= sorted_times[j] + 1e-9:
                # Far behind the next sample: seek to the keyframe before it (once per sample).
                if sorted_times[j] - t > self._seek_gap and seeked_for != j:
                    seeked_for = j
                    frames.close()
                    frames = self._frames_from(float(sorted_times[j]))
                    prev = None
                    continue
                prev, prev_time = frame, t
                continue
            # ``frame`` starts after sample j: the previous frame is the one on screen at it.
            slots = []
            while j < n and sorted_times[j] < t - 1e-9:
                slots.append(int(order[j]))
                j += 1
            if slots:
                yield SampledFrame(self._to_array(prev), int(round(prev_time * fps)), prev_time, tuple(slots))
            prev, prev_time = frame, t
        frames.close()
        if j < n and prev is not None:
            slots = [int(s) for s in order[j:]]
            yield SampledFrame(self._to_array(prev), int(round(prev_time * fps)), prev_time, tuple(slots))

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def _ffmpeg_reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).strip() or type(exc).__name__


class Video:
    """An opened video: ``info`` and streaming access to frames at given times. Use as a context manager."""

    def __init__(self, reader: Reader, cleanup: Sequence[Any] = ()):
        self._reader = reader
        self._cleanup = list(cleanup)
        self.info = reader.info

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def iter_at(self, times: Sequence[float] | np.ndarray) -> Iterator[SampledFrame]:
        """Yield, in presentation order, each distinct frame on screen at the given times.

        Raises:
            VideoError: the data turns out to be truncated or corrupt while decoding.
        """
        times = np.asarray(times, dtype=np.float64)
        try:
            yield from self._reader.iter_at(times)
        except VideoError:
            raise
        except Exception as exc:  # decoder libraries raise their own types on bad data
            raise VideoError(self.info.name, f"decoding failed ({type(exc).__name__}: {exc})") from exc

    def read_at(self, times: Sequence[float] | np.ndarray) -> Frames:
        """The frames on screen at ``times`` (one per time, repeats allowed) as :class:`Frames`."""
        times = np.asarray(times, dtype=np.float64)
        images: list[np.ndarray | None] = [None] * len(times)
        indices = [0] * len(times)
        stamps = [0.0] * len(times)
        for item in self.iter_at(times):
            for slot in item.slots:
                images[slot] = item.image
                indices[slot] = item.index
                stamps[slot] = item.timestamp
        if any(img is None for img in images):
            missing = sum(img is None for img in images)
            raise VideoError(self.info.name, f"ended early: {missing} of {len(times)} sample frames missing")
        array = np.stack(images) if images else np.zeros((0, self.info.height, self.info.width, 3), np.uint8)
        return Frames(array, indices, stamps, self.info.fps, self.info.duration)

    def close(self) -> None:
        self._reader.close()
        for item in self._cleanup:
            if isinstance(item, str | Path):
                try:
                    os.unlink(item)
                except OSError:
                    pass
        self._cleanup.clear()
