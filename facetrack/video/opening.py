"""Open a video (path, bytes or remote URI) with the right decoder, and sample its frames from a plan."""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facetrack.types import Frames
from facetrack.video.readers import DecordReader, PyAVReader, Video
from facetrack.video.sampling import (
    INSTALL_LINE,
    SampledFrame,
    SamplePlan,
    VideoConfig,
    VideoError,
    VideoInfo,
    plan_samples,
)

logger = logging.getLogger(__name__)

VideoSource = str | os.PathLike | bytes | bytearray | memoryview
"""A local path, an ``s3://`` URI, or the bytes of a video file."""


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


def _decord_reader(opened: _Opened, threads: int, seek_gap: float) -> DecordReader:
    try:
        return DecordReader(_fresh(opened.target), opened.name, 0, threads, seek_gap)
    except (VideoError, ImportError):
        raise
    except Exception as exc:
        raise VideoError(opened.name, f"not a readable video (decord: {_first_line(exc)})") from exc


def _pyav_reader(opened: _Opened, threads: int, seek_gap: float) -> PyAVReader:
    try:
        return PyAVReader(_fresh(opened.target), opened.name, threads, seek_gap)
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
        logger.warning("PyAV is not installed: rotation metadata is not applied (%s)", INSTALL_LINE)
        return Video(_decord_reader(opened, threads, seek_gap), opened.cleanup)
    raise ImportError(f"no video decoder installed (PyAV or decord): {INSTALL_LINE}")


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
    return _as_frames([m for m in model if m is not None], info), _as_frames(tracking, info)


def _as_frames(items: list[SampledFrame], info: VideoInfo) -> Frames:
    """Decoded frames stacked into :class:`Frames`, in the given order."""
    return Frames(
        np.stack([m.image for m in items]),
        [m.index for m in items],
        [m.timestamp for m in items],
        info.fps,
        info.duration,
    )


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
