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

from facetrack.video.opening import VideoSource, open_video, sample_frames, stream_samples
from facetrack.video.readers import Video
from facetrack.video.sampling import (
    SampledFrame,
    SamplePlan,
    VideoConfig,
    VideoError,
    VideoInfo,
    plan_samples,
    videollama2_frame_indices,
)

__all__ = [
    "SampledFrame",
    "SamplePlan",
    "Video",
    "VideoConfig",
    "VideoError",
    "VideoInfo",
    "VideoSource",
    "open_video",
    "plan_samples",
    "sample_frames",
    "stream_samples",
    "videollama2_frame_indices",
]
