"""Open a video (path, bytes or ``s3://`` URI) and sample its model and tracking frames, streaming.

Two sets of frames are taken from every video:

* the **model frames**: ``T`` frames (16 by default), by default the frames VideoLLaMA2 takes: source frame
  numbers ``round((N - 1) / T * (i + 0.5))`` for ``i = 0..T-1`` of a video of ``N`` frames
  (:func:`videollama2_frame_indices`); ``model_sampling: time`` takes the frames on screen at the
  mid-points of ``T`` equal segments of the duration instead. A clip shorter than ``T`` frames repeats
  frames so there are always ``T``;
* the **tracking frames**: the video resampled to ``tracking_fps`` (16 by default; never more frames than
  the source has). When that would be more than ``max_tracking_frames``, that many frames evenly spaced
  over the video are taken instead, so a long video costs a bounded number of detections.

A sample time ``t`` takes the frame on screen at ``t`` (the last frame whose presentation time is not
after ``t``), so variable frame rate videos are sampled by time, not by frame count.

Decoding streams: frames come out in presentation order and only the sampled ones are converted to
arrays. PyAV decodes by default and decord is the fallback for files PyAV cannot open: next to a face
detector, decord's read-ahead thread converts every frame and held ~0.7 GB more memory and ~10% more CPU
on a 60 s clip (see bench/track.py), and decord does not apply rotation (a rotated file comes out
garbled). Rotation metadata is applied, so frames come out as a player shows them. A file that cannot
be read (missing, empty, not a video, audio only, truncated or corrupt) raises :class:`VideoError`
naming it.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facetrack.types import Frames

logger = logging.getLogger(__name__)

VideoSource = str | os.PathLike | bytes | bytearray | memoryview
"""A local path, an ``s3://`` URI, or the bytes of a video file."""

_INSTALL = "pip install 'facetrack[video]'"


class VideoError(Exception):
    """A video cannot be opened or decoded; the message names the file."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.reason = message


@dataclass(slots=True)
class VideoConfig:
    """How frames are sampled and decoded."""

    num_frames: int = 16
    """T, the number of model frames."""
    model_sampling: Literal["index", "time"] = "index"
    """``index``: VideoLLaMA2's frame numbers ``round((N - 1) / T * (i + 0.5))``; ``time``: the frames on
    screen at the mid-points of T equal segments of the duration."""
    tracking_fps: float = 16.0
    """Rate of the tracking frames (capped by the source's own frame rate)."""
    max_tracking_frames: int = 256
    """At most this many tracking frames; a longer video gets this many, evenly spaced."""
    backend: Literal["auto", "decord", "pyav"] = "auto"
    """``auto``: PyAV, and decord for a file PyAV cannot open. ``decord`` ignores rotation metadata."""
    threads: int = 1
    """Decoder threads (match the CPUs given to the task)."""
    seek_gap: float = 4.0
    """PyAV: seek instead of decoding through when the next sample is more than this many seconds ahead."""

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError("num_frames must be at least 1")
        if self.tracking_fps <= 0:
            raise ValueError("tracking_fps must be positive")
        if self.max_tracking_frames < 1:
            raise ValueError("max_tracking_frames must be at least 1")
        if self.threads < 0:
            raise ValueError("threads must be 0 (decoder default) or more")
        if self.model_sampling not in ("index", "time"):
            raise ValueError(f"model_sampling must be 'index' or 'time', got {self.model_sampling!r}")


@dataclass(slots=True)
class VideoInfo:
    """What is known about an opened video; sizes are in display orientation (after rotation)."""

    name: str
    backend: str
    width: int
    height: int
    fps: float
    """Average frame rate."""
    num_frames: int
    duration: float
    """Seconds from the first frame's start to the last frame's end."""
    rotation: int = 0
    """Counter-clockwise degrees applied to the decoded frames (0, 90, 180 or 270)."""


@dataclass(slots=True)
class SampledFrame:
    """One decoded frame and the sample slots it fills."""

    image: np.ndarray
    """``(H, W, 3)`` uint8 RGB in display orientation."""
    index: int
    """Source frame number (estimated from time on the PyAV path when it had to seek)."""
    timestamp: float
    """Presentation time in seconds from the start of the video."""
    slots: tuple[int, ...]
    """Positions in the requested sample times that this frame fills."""


@dataclass(slots=True)
class SamplePlan:
    """Sample times (seconds) of the model frames and of the tracking frames."""

    model_times: np.ndarray
    tracking_times: np.ndarray
    tracking_fps: float
    """Effective rate of the tracking frames (lower when the cap applies)."""
    model_indices: np.ndarray | None = None
    """The source frame numbers the model frames were planned from (``index`` sampling), else ``None``."""

    def all_times(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique sample times and, per model/tracking slot, its position in them."""
        joined = np.concatenate([self.model_times, self.tracking_times])
        unique, inverse = np.unique(joined, return_inverse=True)
        return unique, inverse


def videollama2_frame_indices(num_frames_in_video: int, num_frames: int) -> np.ndarray:
    """The frame numbers VideoLLaMA2 samples: the middle of each of ``num_frames`` segments of ``[0, N-1]``.

    Its own arithmetic (``frame_sample`` in its ``mm_utils.py``): segment ``(N - 1) / T``, middle
    ``(start + end) / 2``, rounded half up after adding 1e-6. Indices repeat when ``N < T``.
    """
    if num_frames_in_video < 1:
        raise ValueError("a video has at least one frame")
    if num_frames < 1:
        raise ValueError("num_frames must be at least 1")
    seg_size = float(num_frames_in_video - 1) / num_frames
    mids = [(seg_size * i + seg_size * (i + 1)) / 2 for i in range(num_frames)]
    return np.round(np.array(mids) + 1e-6).astype(int)


def plan_samples(duration: float, fps: float, num_frames_in_video: int, config: VideoConfig) -> SamplePlan:
    """Choose the model and tracking sample times for a video of ``duration`` seconds.

    With ``index`` sampling the model frames are :func:`videollama2_frame_indices` of the video's
    ``num_frames_in_video`` frames, each sampled at the middle of its frame interval (``(k + 0.5) / N`` of
    the duration), so a constant frame rate video gives exactly those frames.

    The tracking rate is ``min(tracking_fps, fps)`` so a low frame rate source is not oversampled; past
    ``max_tracking_frames`` the tracking times are that many segment mid-points over the whole video.
    """
    duration = max(float(duration), 1e-6)
    t = config.num_frames
    model_indices = None
    if config.model_sampling == "index":
        n = max(1, int(num_frames_in_video))
        model_indices = videollama2_frame_indices(n, t)
        model_times = (model_indices.astype(np.float64) + 0.5) * duration / n
    else:
        model_times = (np.arange(t, dtype=np.float64) + 0.5) * duration / t
    rate = min(config.tracking_fps, fps) if fps > 0 else config.tracking_fps
    count = max(1, int(math.ceil(duration * rate - 1e-6)))
    count = min(count, max(1, num_frames_in_video))
    if count > config.max_tracking_frames:
        count = config.max_tracking_frames
        tracking_times = (np.arange(count, dtype=np.float64) + 0.5) * duration / count
        rate = count / duration
    else:
        tracking_times = np.arange(count, dtype=np.float64) / rate
    return SamplePlan(
        model_times=model_times,
        tracking_times=tracking_times,
        tracking_fps=float(rate),
        model_indices=model_indices,
    )


def _display_index(frame_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame on screen at each time (the last one starting at or before it)."""
    idx = np.searchsorted(frame_times, times + 1e-9, side="right") - 1
    return np.clip(idx, 0, len(frame_times) - 1)


def _rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def _normalise_rotation(degrees: float | int | None) -> int:
    if degrees is None or not math.isfinite(float(degrees)):
        return 0
    return int(round(float(degrees) / 90.0)) % 4 * 90


class _Reader:
    """One decoding backend over one opened file."""

    info: VideoInfo

    def iter_at(self, times: np.ndarray) -> Iterator[SampledFrame]:
        raise NotImplementedError

    def close(self) -> None:
        return None


class _DecordReader(_Reader):
    def __init__(self, target: Any, name: str, rotation: int, threads: int, seek_gap: float = 4.0):
        self._seek_gap = seek_gap
        try:
            import decord
        except ImportError as exc:
            raise ImportError(f"decord is not installed: {_INSTALL}") from exc
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
        indices = _display_index(self._times, np.asarray(times, dtype=np.float64))
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


class _PyAVReader(_Reader):
    def __init__(self, target: Any, name: str, threads: int, seek_gap: float):
        try:
            import av
        except ImportError as exc:
            raise ImportError(f"PyAV is not installed: {_INSTALL}") from exc
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

    def __init__(self, reader: _Reader, cleanup: Sequence[Any] = ()):
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


@dataclass(slots=True)
class _Opened:
    target: Any
    name: str
    cleanup: list[Any] = field(default_factory=list)


def _materialise(source: VideoSource, name: str | None) -> _Opened:
    """Turn a source into something both decoders can open (a path or a file-like object)."""
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "<bytes>"
        data = bytes(source)
        if not data:
            raise VideoError(label, "empty input (0 bytes)")
        return _Opened(data, label)
    text = os.fspath(source)
    label = name or str(text)
    from facetrack import storage

    if storage.is_remote(str(text)):
        suffix = Path(str(text)).suffix or ".bin"
        fd, tmp = tempfile.mkstemp(prefix="facetrack-video-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as out, storage.open_read(str(text)) as stream:
                shutil.copyfileobj(stream, out, length=1 << 20)
        except FileNotFoundError as exc:
            os.unlink(tmp)
            raise VideoError(label, "not found") from exc
        except Exception as exc:
            os.unlink(tmp)
            raise VideoError(label, f"cannot read ({type(exc).__name__}: {exc})") from exc
        if os.path.getsize(tmp) == 0:
            os.unlink(tmp)
            raise VideoError(label, "empty file (0 bytes)")
        return _Opened(tmp, label, [tmp])
    path = Path(text)
    if not path.exists():
        raise VideoError(label, "not found")
    if not path.is_file():
        raise VideoError(label, "not a file")
    if path.stat().st_size == 0:
        raise VideoError(label, "empty file (0 bytes)")
    return _Opened(str(path), label)


def _fresh(target: Any) -> Any:
    return io.BytesIO(target) if isinstance(target, bytes) else target


def open_video(
    source: VideoSource,
    *,
    backend: Literal["auto", "decord", "pyav"] = "auto",
    name: str | None = None,
    threads: int = 1,
    seek_gap: float = 4.0,
) -> Video:
    """Open a video for sampling.

    Args:
        source: a local path, an ``s3://`` URI (streamed to a temporary file that is removed on close),
            or the file's bytes.
        backend: ``auto`` decodes with PyAV, and with decord when PyAV cannot open the file.
        name: how errors name the video (default: the path or URI).

    Raises:
        VideoError: missing, empty, unreadable, audio-only or undecodable input.
        ImportError: neither decoder is installed (with the install line).
    """
    opened = _materialise(source, name)
    try:
        return _open(opened, backend, threads, seek_gap)
    except BaseException:
        for item in opened.cleanup:
            try:
                os.unlink(item)
            except OSError:
                pass
        raise


def _decord_reader(opened: _Opened, threads: int, seek_gap: float) -> _DecordReader:
    try:
        return _DecordReader(_fresh(opened.target), opened.name, 0, threads, seek_gap)
    except (VideoError, ImportError):
        raise
    except Exception as exc:
        raise VideoError(opened.name, f"not a readable video (decord: {_first_line(exc)})") from exc


def _pyav_reader(opened: _Opened, threads: int, seek_gap: float) -> _PyAVReader:
    try:
        return _PyAVReader(_fresh(opened.target), opened.name, threads, seek_gap)
    except (VideoError, ImportError):
        raise
    except Exception as exc:  # a damaged container can trip PyAV in unexpected places
        raise VideoError(opened.name, f"not a readable video ({type(exc).__name__}: {exc})") from exc


def _open(opened: _Opened, backend: str, threads: int, seek_gap: float) -> Video:
    have_av, have_decord = _importable("av"), _importable("decord")
    if backend == "decord":
        return Video(_decord_reader(opened, threads, seek_gap), opened.cleanup)
    if backend == "pyav" or have_av:
        try:
            return Video(_pyav_reader(opened, threads, seek_gap), opened.cleanup)
        except VideoError as exc:
            if backend == "pyav" or not have_decord:
                raise
            try:
                reader = _decord_reader(opened, threads, seek_gap)
            except (VideoError, ImportError):
                raise exc from None
            logger.info("%s: PyAV cannot read it (%s); decoding with decord", opened.name, exc.reason)
            return Video(reader, opened.cleanup)
    if have_decord:
        logger.warning("PyAV is not installed: rotation metadata is not applied (%s)", _INSTALL)
        return Video(_decord_reader(opened, threads, seek_gap), opened.cleanup)
    raise ImportError(f"no video decoder installed (PyAV or decord): {_INSTALL}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:200] if text else type(exc).__name__


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def sample_frames(
    source: VideoSource, config: VideoConfig | None = None, name: str | None = None
) -> tuple[Frames, Frames]:
    """Decode the model frames and the tracking frames of a video, in one pass.

    This holds every tracking frame in memory: use it for short clips and tests. The face tracking stage
    streams the tracking frames instead (see :func:`stream_samples`).

    Returns:
        ``(model_frames, tracking_frames)``.
    """
    config = config or VideoConfig()
    with open_video(
        source, backend=config.backend, name=name, threads=config.threads, seek_gap=config.seek_gap
    ) as video:
        plan = plan_samples(video.info.duration, video.info.fps, video.info.num_frames, config)
        t = len(plan.model_times)
        model: list[SampledFrame | None] = [None] * t
        tracking: list[SampledFrame] = []
        for item, model_slots, is_tracking in stream_samples(video, plan):
            for s in model_slots:
                model[s] = item
            if is_tracking:
                tracking.append(item)
        if any(m is None for m in model) or not tracking:
            raise VideoError(video.info.name, "ended before all sample frames were decoded")
        info = video.info
    model_frames = Frames(
        np.stack([m.image for m in model]),
        [m.index for m in model],
        [m.timestamp for m in model],
        info.fps,
        info.duration,
    )
    tracking_frames = Frames(
        np.stack([f.image for f in tracking]),
        [f.index for f in tracking],
        [f.timestamp for f in tracking],
        info.fps,
        info.duration,
    )
    return model_frames, tracking_frames


def stream_samples(video: Video, plan: SamplePlan) -> Iterator[tuple[SampledFrame, tuple[int, ...], bool]]:
    """Decode the frames a plan needs, in order, one at a time.

    Yields ``(frame, model_slots, is_tracking)``: the model-frame positions the frame fills, and whether
    it is a tracking frame. A source frame that several tracking times land on is a tracking frame once.
    """
    t = len(plan.model_times)
    unique, inverse = plan.all_times()
    model_of_unique: dict[int, list[int]] = {}
    for slot in range(t):
        model_of_unique.setdefault(int(inverse[slot]), []).append(slot)
    tracking_unique = {int(u) for u in inverse[t:]}
    # Each distinct source frame comes once, carrying every sample time that lands on it.
    for item in video.iter_at(unique):
        model_slots: list[int] = []
        for u in item.slots:
            model_slots.extend(model_of_unique.get(u, ()))
        is_tracking = any(u in tracking_unique for u in item.slots)
        yield item, tuple(sorted(model_slots)), is_tracking
