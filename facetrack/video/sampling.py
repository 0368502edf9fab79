"""What to sample from a video: the config, the plan of sample times, VideoLLaMA2's frame numbers, and
the records an opened video and its decoded frames are described by."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

INSTALL_LINE = "pip install 'facetrack[video]'"


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


def display_index(frame_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame on screen at each time (the last one starting at or before it)."""
    idx = np.searchsorted(frame_times, times + 1e-9, side="right") - 1
    return np.clip(idx, 0, len(frame_times) - 1)
