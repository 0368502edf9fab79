"""Compose sample videos from real face photographs that ship inside installed packages.

Faces come from insightface (``data/images/t1.jpg``, six people), matplotlib (``grace_hopper.jpg``) and,
when scikit-image is installed, its ``astronaut`` image. They are found through the installed packages,
never by a fixed path; a package that is missing only removes its faces from :func:`face_sources`.

A composed clip is a moving background with faces pasted on it: a large main face that drifts across the
frame, smaller extra faces that slide in and out, optionally an occlusion gap (a panel hides the main
face) and a shot with no face at all. The composer returns the true face box of every face in every
frame, so tests can check what the tracker found. ``facetrack samples`` writes a set of such clips.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facetrack.types import Box

# Face boxes (x1, y1, x2, y2) in the packaged images, at the image sizes given.
_T1_SIZE = (1280, 886)
_T1_FACES: tuple[tuple[int, int, int, int], ...] = (
    (67, 283, 175, 390),
    (275, 176, 364, 265),
    (450, 295, 557, 402),
    (724, 367, 832, 474),
    (870, 67, 999, 196),
    (1118, 283, 1226, 390),
)
_HOPPER_SIZE = (512, 600)
_HOPPER_FACE = (180, 139, 366, 325)
_ASTRONAUT_SIZE = (512, 512)
_ASTRONAUT_FACE = (175, 76, 265, 166)

CONTEXT = 1.6
"""A face patch is a square this many times the face box's side, centred on the face."""


@dataclass(slots=True)
class FaceSource:
    """A face photograph cut out of a packaged image: a square RGB patch with the face in its middle."""

    name: str
    patch: np.ndarray
    """``(S, S, 3)`` uint8 RGB; the face box is the central ``S / CONTEXT`` square."""
    origin: str
    """Where it came from (package and file), for captions and reports."""

    @property
    def face(self) -> np.ndarray:
        """The tight face crop (the central square of the patch)."""
        s = self.patch.shape[0]
        inner = int(round(s / CONTEXT))
        o = (s - inner) // 2
        return self.patch[o : o + inner, o : o + inner]


def _read_rgb(path: str | os.PathLike) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _cut(image: np.ndarray, box: Sequence[int], expected_size: tuple[int, int]) -> np.ndarray:
    """Square patch of CONTEXT times the face box, padded with edge pixels where it leaves the image."""
    h, w = image.shape[:2]
    sx, sy = w / expected_size[0], h / expected_size[1]
    x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * CONTEXT
    half = side / 2
    left, top = int(round(cx - half)), int(round(cy - half))
    size = int(round(side))
    pad = size
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded[top + pad : top + pad + size, left + pad : left + pad + size])


def _insightface_t1() -> Path | None:
    # Find the package directory without importing insightface itself (its import pulls heavy modules).
    import importlib.util

    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "images" / "t1.jpg"
        if path.is_file():
            return path
    return None


def _grace_hopper() -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return path if path.is_file() else None


_SOURCES_CACHE: dict[str, FaceSource] | None = None


def face_sources() -> dict[str, FaceSource]:
    """The face photographs available from installed packages, by name.

    Names: ``hopper`` (matplotlib), ``t1-0`` ... ``t1-5`` (insightface, left to right), ``astronaut``
    (scikit-image). Packages that are not installed contribute nothing.
    """
    global _SOURCES_CACHE
    if _SOURCES_CACHE is not None:
        return dict(_SOURCES_CACHE)
    out: dict[str, FaceSource] = {}
    hopper = _grace_hopper()
    if hopper is not None:
        out["hopper"] = FaceSource(
            "hopper",
            _cut(_read_rgb(hopper), _HOPPER_FACE, _HOPPER_SIZE),
            "matplotlib sample_data/grace_hopper.jpg",
        )
    t1 = _insightface_t1()
    if t1 is not None:
        image = _read_rgb(t1)
        for i, box in enumerate(_T1_FACES):
            out[f"t1-{i}"] = FaceSource(
                f"t1-{i}", _cut(image, box, _T1_SIZE), "insightface data/images/t1.jpg"
            )
    try:
        from skimage import data as skdata

        out["astronaut"] = FaceSource(
            "astronaut",
            _cut(skdata.astronaut(), _ASTRONAUT_FACE, _ASTRONAUT_SIZE),
            "scikit-image data.astronaut()",
        )
    except Exception:  # scikit-image is optional (a dev extra); its data may also be unavailable
        pass
    _SOURCES_CACHE = out
    return dict(out)


@dataclass(slots=True)
class Extra:
    """A smaller face that slides in from one side, stays, and slides out."""

    source: str
    enter: float
    """Seconds at which it starts to enter."""
    leave: float
    """Seconds at which it has fully left."""
    size: float = 0.42
    """Patch height as a fraction of the frame height."""
    y: float = 0.3
    """Vertical position of the patch centre, as a fraction of the frame height."""
    side: str = "right"
    """The side it enters from and leaves by (``left`` or ``right``)."""


@dataclass(slots=True)
class SampleSpec:
    """What one composed clip shows."""

    seconds: float = 5.0
    fps: float = 25.0
    width: int = 640
    height: int = 360
    main: str | None = "hopper"
    """Name of the main face (see :func:`face_sources`); ``None`` for a clip without a main face."""
    main_size: float = 0.62
    """Main patch height as a fraction of the frame height."""
    main_path: tuple[float, float] = (0.28, 0.72)
    """Horizontal centre of the main patch at the start and the end, as fractions of the width."""
    extras: list[Extra] = field(default_factory=list)
    occlusion: tuple[float, float] | None = None
    """Seconds during which a panel hides the main face."""
    no_face: tuple[float, float] | None = None
    """Seconds of a shot with no face at all (a cut to an empty scene)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.fps <= 0:
            raise ValueError("seconds and fps must be positive")
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even and at least 16")


@dataclass(slots=True)
class ComposedVideo:
    """A written clip and the truth about it."""

    path: str
    spec: SampleSpec
    frame_times: list[float]
    boxes: dict[str, list[Box | None]]
    """Per face source name, its true face box in every frame (``None`` where not visible)."""
    sources: dict[str, FaceSource]

    def visible(self, name: str) -> list[bool]:
        return [b is not None for b in self.boxes[name]]


def _background(width: int, height: int, seed: int, t: float, empty_shot: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 200, size=(2, 3)) if not empty_shot else rng.uniform(120, 230, size=(2, 3))
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    phase = 0.15 * math.sin(2 * math.pi * t / 7.0)
    mix = np.clip(0.6 * y + 0.4 * x + phase, 0.0, 1.0)
    img = base[0] * (1 - mix) + base[1] * mix
    # A few soft stripes give the codec and the trackers some texture that is not a face.
    stripes = 12.0 * np.sin((x * 9.0 + y * 3.0 + t * 0.2) * math.pi)
    return np.clip(img + stripes, 0, 255).astype(np.uint8)


def _mask(size: int) -> np.ndarray:
    """A feathered ellipse, so pasted patches have no hard square edges."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0
    r = ((xx - c) / (0.5 * size)) ** 2 + ((yy - c) / (0.5 * size)) ** 2
    return np.clip((1.0 - r) / 0.25, 0.0, 1.0)[..., None]


_RESIZED: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}


def _resized(source: FaceSource, size: int) -> tuple[np.ndarray, np.ndarray]:
    key = (source.name, size)
    if key not in _RESIZED:
        from PIL import Image

        patch = np.asarray(Image.fromarray(source.patch).resize((size, size), Image.BICUBIC)).astype(
            np.float32
        )
        _RESIZED[key] = (patch, _mask(size))
    return _RESIZED[key]


def _paste(frame: np.ndarray, source: FaceSource, cx: float, cy: float, size: int) -> Box | None:
    """Paste the patch centred at (cx, cy); return the visible part of the face box, or None."""
    h, w = frame.shape[:2]
    patch, mask = _resized(source, size)
    x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(w, x0 + size), min(h, y0 + size)
    if fx1 <= fx0 or fy1 <= fy0:
        return None
    px0, py0 = fx0 - x0, fy0 - y0
    region = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    p = patch[py0 : py0 + (fy1 - fy0), px0 : px0 + (fx1 - fx0)]
    m = mask[py0 : py0 + (fy1 - fy0), px0 : px0 + (fx1 - fx0)]
    frame[fy0:fy1, fx0:fx1] = (region * (1 - m) + p * m).astype(np.uint8)
    inner = size / CONTEXT
    bx1, by1 = cx - inner / 2, cy - inner / 2
    bx2, by2 = bx1 + inner, by1 + inner
    vx1, vy1, vx2, vy2 = max(bx1, 0.0), max(by1, 0.0), min(bx2, float(w)), min(by2, float(h))
    # A face is "visible" when most of it is in the frame.
    if (vx2 - vx1) * (vy2 - vy1) < 0.6 * inner * inner:
        return None
    return (vx1, vy1, vx2, vy2)


def _extra_centre(extra: Extra, t: float, spec: SampleSpec, size: int) -> float | None:
    span = extra.leave - extra.enter
    if span <= 0 or t < extra.enter or t > extra.leave:
        return None
    travel = min(0.35 * span, 1.0)
    outside = -size / 2 if extra.side == "left" else spec.width + size / 2
    inside = size * 0.75 if extra.side == "left" else spec.width - size * 0.75
    if t < extra.enter + travel:
        a = (t - extra.enter) / travel
    elif t > extra.leave - travel:
        a = (extra.leave - t) / travel
    else:
        a = 1.0
    return outside + (inside - outside) * a


def compose_frames(
    spec: SampleSpec, sources: dict[str, FaceSource] | None = None
) -> Iterator[tuple[float, np.ndarray, dict[str, Box | None]]]:
    """Yield ``(time, frame, true face boxes)`` for every frame of the clip, one frame at a time.

    Raises:
        KeyError: a face named in ``spec`` is not available (its package is not installed).
    """
    sources = face_sources() if sources is None else sources
    names = ([spec.main] if spec.main else []) + [e.source for e in spec.extras]
    for name in names:
        if name not in sources:
            raise KeyError(f"face source {name!r} is not available; available: {sorted(sources)}")
    n = max(1, int(round(spec.seconds * spec.fps)))
    main_px = int(round(spec.main_size * spec.height))
    for i in range(n):
        t = i / spec.fps
        empty = spec.no_face is not None and spec.no_face[0] <= t < spec.no_face[1]
        frame = _background(spec.width, spec.height, spec.seed + (7 if empty else 0), t, empty)
        boxes: dict[str, Box | None] = {name: None for name in names}
        if not empty:
            for extra in spec.extras:
                size = int(round(extra.size * spec.height))
                cx = _extra_centre(extra, t, spec, size)
                if cx is not None:
                    boxes[extra.source] = _paste(
                        frame, sources[extra.source], cx, extra.y * spec.height, size
                    )
            if spec.main:
                a = t / max(spec.seconds, 1e-6)
                cx = spec.width * (spec.main_path[0] + (spec.main_path[1] - spec.main_path[0]) * a)
                cy = spec.height * (0.52 + 0.05 * math.sin(2 * math.pi * a))
                boxes[spec.main] = _paste(frame, sources[spec.main], cx, cy, main_px)
                if spec.occlusion is not None and spec.occlusion[0] <= t < spec.occlusion[1]:
                    pad = int(main_px * 0.55)
                    x0, y0 = int(cx - pad), int(cy - pad)
                    frame[max(0, y0) : max(0, y0 + 2 * pad), max(0, x0) : max(0, x0 + 2 * pad)] = (90, 90, 96)
                    boxes[spec.main] = None
        yield t, frame, boxes


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    frame_times: Sequence[float] | None = None,
    rotation: int = 0,
    codec: str = "libx264",
    crf: int = 23,
    faststart: bool = False,
) -> None:
    """Write RGB frames as an MP4 file (H.264 through PyAV; MPEG-4 part 2 if H.264 is not available).

    Args:
        frame_times: optional presentation time of each frame (seconds) for variable frame rate files.
        rotation: display rotation stored in the file (counter-clockwise degrees); the frames are
            written turned the other way, so a player (and :mod:`facetrack.video`) shows them upright.
        faststart: put the index at the start of the file (as streaming sites do).
    """
    try:
        import av
    except ImportError as exc:
        raise ImportError("writing videos needs PyAV: pip install 'facetrack[video]'") from exc
    from fractions import Fraction

    options = {"movflags": "faststart"} if faststart else {}
    container = av.open(os.fspath(path), mode="w", options=options)
    try:
        if codec not in av.codecs_available:
            codec = "mpeg4"
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream(codec, rate=rate)
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        if frame_times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        k = (rotation // 90) % 4
        started = False
        for i, image in enumerate(frames):
            stored = np.ascontiguousarray(np.rot90(image, -k)) if k else image
            if not started:
                stream.height, stream.width = stored.shape[:2]
                if rotation and hasattr(stream, "set_display_rotation"):
                    stream.set_display_rotation(k * 90)
                started = True
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(stored), format="rgb24")
            if frame_times is not None:
                frame.pts = int(round(frame_times[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        if not started:
            raise ValueError("no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()


def compose_video(path: str | os.PathLike, spec: SampleSpec, *, crf: int = 23) -> ComposedVideo:
    """Compose ``spec`` and write it to ``path`` (a local ``.mp4``); return the truth about it."""
    sources = face_sources()
    times: list[float] = []
    boxes: dict[str, list[Box | None]] = {}

    def frames() -> Iterator[np.ndarray]:
        for t, frame, frame_boxes in compose_frames(spec, sources):
            times.append(t)
            for name, box in frame_boxes.items():
                boxes.setdefault(name, []).append(box)
            yield frame

    write_video(path, frames(), spec.fps, crf=crf)
    used = {name: sources[name] for name in boxes}
    return ComposedVideo(os.fspath(path), spec, times, boxes, used)


def preset(kind: str, seconds: float = 5.0, seed: int = 0, width: int = 640, height: int = 360) -> SampleSpec:
    """A named kind of clip.

    Kinds: ``extras`` (main face, two smaller faces entering and leaving), ``occlusion`` (main face hidden
    for a while, one extra), ``no-face`` (no face at all), ``cut`` (main face, a shot without faces, main
    face again), ``crowd`` (several faces of the same size, none larger), ``astronaut`` (scikit-image's
    astronaut as the main face, when available).
    """
    s = seconds
    if kind == "extras":
        return SampleSpec(
            s,
            width=width,
            height=height,
            seed=seed,
            extras=[
                Extra("t1-0", 0.15 * s, 0.6 * s, side="right", y=0.3),
                Extra("t1-5", 0.45 * s, 0.95 * s, side="left", y=0.32),
            ],
        )
    if kind == "occlusion":
        return SampleSpec(
            s,
            width=width,
            height=height,
            seed=seed,
            occlusion=(0.4 * s, 0.4 * s + min(1.0, 0.2 * s)),
            extras=[Extra("t1-3", 0.5 * s, 0.98 * s, side="right", y=0.3)],
        )
    if kind == "no-face":
        return SampleSpec(s, width=width, height=height, seed=seed, main=None)
    if kind == "cut":
        return SampleSpec(s, width=width, height=height, seed=seed, no_face=(0.35 * s, 0.6 * s))
    if kind == "crowd":
        return SampleSpec(
            s,
            width=width,
            height=height,
            seed=seed,
            main=None,
            extras=[
                Extra("t1-0", 0.0, s, size=0.5, y=0.3, side="left"),
                Extra("t1-5", 0.0, s, size=0.5, y=0.7, side="right"),
            ],
        )
    if kind == "astronaut":
        return SampleSpec(
            s,
            width=width,
            height=height,
            seed=seed,
            main="astronaut",
            extras=[Extra("t1-3", 0.3 * s, 0.9 * s, side="right", y=0.3)],
        )
    raise ValueError(f"unknown sample kind {kind!r}; known: {', '.join(PRESETS)}")


PRESETS = ("extras", "occlusion", "cut", "no-face", "crowd", "astronaut")


def write_samples(
    out_dir: str | os.PathLike,
    n: int = 4,
    seconds: float = 5.0,
    width: int = 640,
    height: int = 360,
    kinds: Sequence[str] | None = None,
) -> list[ComposedVideo]:
    """Write ``n`` sample clips to a local folder, cycling through the kinds (those whose faces exist).

    Files are named ``sample-<i>-<kind>.mp4``. Returns what was written.
    """
    available = face_sources()
    kinds = list(kinds) if kinds else [k for k in PRESETS if k != "astronaut" or "astronaut" in available]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        spec = preset(kind, seconds=seconds, seed=i, width=width, height=height)
        written.append(compose_video(out / f"sample-{i:03d}-{kind}.mp4", spec))
    return written
