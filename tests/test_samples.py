"""The sample-video composer: packaged faces, truth boxes, clip options, written files and the command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="writing videos needs PyAV (pip install 'facetrack[video]')")

from facetrack import samples  # noqa: E402
from facetrack.samples import Extra, SampleSpec, compose_frames, compose_video, face_sources, preset  # noqa: E402


def test_packaged_faces_are_found() -> None:
    sources = face_sources()
    assert {"hopper", "t1-0", "t1-1", "t1-2", "t1-3", "t1-4", "t1-5"} <= set(sources)
    for src in sources.values():
        h, w, c = src.patch.shape
        assert h == w and c == 3 and src.patch.dtype == np.uint8
        assert src.face.shape[0] == pytest.approx(h / samples.CONTEXT, abs=1)
    # The six t1 faces are six different crops.
    t1 = [sources[f"t1-{i}"].face for i in range(6)]
    means = [f.reshape(-1, 3).mean(0) for f in t1]
    assert len({tuple(np.round(m)) for m in means}) == 6


def test_without_scikit_image_the_other_faces_remain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(samples, "_SOURCES_CACHE", None)
    monkeypatch.setitem(sys.modules, "skimage", None)
    sources = face_sources()
    assert "astronaut" not in sources and "hopper" in sources and "t1-3" in sources
    monkeypatch.setattr(samples, "_SOURCES_CACHE", None)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    from PIL import Image

    size = (48, 48)
    x = np.asarray(Image.fromarray(a).resize(size), float).ravel()
    y = np.asarray(Image.fromarray(b).resize(size), float).ravel()
    return float(np.corrcoef(x, y)[0, 1])


def test_truth_boxes_are_where_the_faces_are() -> None:
    spec = SampleSpec(2.0, extras=[Extra("t1-3", 0.2, 1.8, side="right")])
    sources = face_sources()
    seen_extra = 0
    xs = []
    for t, frame, boxes in compose_frames(spec):
        for name, box in boxes.items():
            if box is None:
                continue
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            assert 0 <= x1 < x2 <= spec.width and 0 <= y1 < y2 <= spec.height
            if x2 - x1 > 0.9 * (y2 - y1):  # fully inside the frame
                assert _correlation(frame[y1:y2, x1:x2], sources[name].face) > 0.8, (name, t)
            seen_extra += name == "t1-3"
        xs.append((boxes["hopper"][0] + boxes["hopper"][2]) / 2)
        assert (boxes["t1-3"] is not None) <= (0.2 <= t <= 1.8)
    assert seen_extra > 20
    assert xs[-1] - xs[0] > 0.3 * spec.width  # the main face moves across


def test_occlusion_and_empty_shot_hide_the_faces() -> None:
    spec = SampleSpec(3.0, occlusion=(0.5, 1.0), no_face=(2.0, 2.5), fps=10)
    frames = list(compose_frames(spec))
    for t, _frame, boxes in frames:
        hidden = 0.5 <= t < 1.0 or 2.0 <= t < 2.5
        assert (boxes["hopper"] is None) == hidden, t
    _, empty, _ = frames[22]
    _, shown, _ = frames[15]
    assert shown.std() > empty.std()


def test_compose_video_writes_a_readable_h264_file(tmp_path: Path) -> None:
    import av

    from facetrack.video import open_video

    clip = compose_video(tmp_path / "c.mp4", preset("extras", seconds=2.0, width=320, height=180))
    with av.open(clip.path) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    with open_video(clip.path) as video:
        assert (video.info.width, video.info.height) == (320, 180)
        assert video.info.num_frames == 50 == len(clip.frame_times)
        assert video.info.fps == pytest.approx(25.0)
    assert set(clip.boxes) == {"hopper", "t1-0", "t1-5"}
    assert all(len(v) == 50 for v in clip.boxes.values())


def test_unknown_names_are_refused() -> None:
    with pytest.raises(KeyError, match="face source 'nobody'"):
        next(compose_frames(SampleSpec(1.0, main="nobody")))
    with pytest.raises(ValueError, match="unknown sample kind"):
        preset("nope")


def test_samples_command_writes_clips_and_a_manifest(tmp_path: Path) -> None:
    from facetrack.cli import main
    from facetrack.manifest import read_inputs

    out = tmp_path / "samples"
    code = main(["samples", str(out), "--n", "3", "--seconds", "1", "--width", "160", "--height", "90"])
    assert code == 0
    names = sorted(p.name for p in out.glob("*.mp4"))
    assert names == ["sample-000-extras.mp4", "sample-001-occlusion.mp4", "sample-002-cut.mp4"]
    index = json.loads((out / "samples.json").read_text())
    assert [r["id"] for r in index] == names and index[0]["main"] == "hopper"
    # samples.json is a manifest the jobs can read.
    inputs = read_inputs(str(out / "samples.json"))
    assert [Path(v.uri).name for v in inputs.videos] == names and not inputs.errors
    assert main(["samples", str(out), "--kinds", "nope"]) == 2
