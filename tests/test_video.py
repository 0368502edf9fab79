"""Video opening and sampling: which frames come out, from which inputs, and how bad files fail."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="video tests need PyAV (pip install 'facetrack[video]')")

from facetrack.samples import write_video  # noqa: E402
from facetrack.video import (  # noqa: E402
    VideoConfig,
    VideoError,
    open_video,
    plan_samples,
    sample_frames,
    stream_samples,
    videollama2_frame_indices,
)

W, H = 64, 48


def coded_frame(i: int, width: int = W, height: int = H) -> np.ndarray:
    """A frame whose number survives compression: left half = i // 16, right half = i % 16, in steps of 16."""
    img = np.empty((height, width, 3), np.uint8)
    img[:, : width // 2] = 16 * (i // 16) + 8
    img[:, width // 2 :] = 16 * (i % 16) + 8
    # An asymmetric mark (top-left corner) makes a wrong rotation visible.
    img[: height // 4, : width // 4] = (255, 0, 0)
    return img


def frame_number(img: np.ndarray) -> int:
    h, w = img.shape[:2]
    hi = img[h // 2 :, : w // 2].mean()
    lo = img[h // 2 :, w // 2 :].mean()
    return int(round((hi - 8) / 16)) * 16 + int(round((lo - 8) / 16))


def write_coded(path: Path, n: int, fps: float = 25.0, **kwargs) -> Path:
    write_video(path, (coded_frame(i) for i in range(n)), fps, crf=10, **kwargs)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s at 25 fps: 100 numbered frames."""
    return write_coded(tmp_path_factory.mktemp("video") / "coded.mp4", 100)


def reference_indices(n: int, t: int) -> list[int]:
    """VideoLLaMA2's rule written out: middle of each of t segments of [0, n-1], rounded half up."""
    return [int(np.floor((n - 1) / t * (i + 0.5) + 0.5 + 1e-6)) for i in range(t)]


@pytest.mark.parametrize(
    ("n", "t", "expected"),
    [
        (100, 8, [6, 19, 31, 43, 56, 68, 80, 93]),
        (100, 4, [12, 37, 62, 87]),
        (17, 16, list(range(1, 17))),  # every middle is a half: rounded up, not to even
        (33, 8, [2, 6, 10, 14, 18, 22, 26, 30]),
        (9, 4, [1, 3, 5, 7]),
        (2, 4, [0, 0, 1, 1]),
        (1, 3, [0, 0, 0]),
    ],
)
def test_videollama2_frame_indices(n: int, t: int, expected: list[int]) -> None:
    assert videollama2_frame_indices(n, t).tolist() == expected


@pytest.mark.parametrize("n", [1, 5, 16, 99, 100, 101, 250, 1001, 7919])
@pytest.mark.parametrize("t", [1, 4, 8, 16, 32])
def test_videollama2_frame_indices_follow_the_rule(n: int, t: int) -> None:
    got = videollama2_frame_indices(n, t)
    assert got.tolist() == reference_indices(n, t)
    assert got.min() >= 0 and got.max() <= n - 1 and np.all(np.diff(got) >= 0)


def test_plan_model_frames_by_index_by_default() -> None:
    plan = plan_samples(4.0, 25.0, 100, VideoConfig(num_frames=16))
    assert plan.model_indices.tolist() == reference_indices(100, 16)
    # Each index is sampled in the middle of its frame's interval.
    assert np.allclose(plan.model_times, (np.array(reference_indices(100, 16)) + 0.5) / 25.0)


def test_plan_model_frames_by_time_are_segment_midpoints() -> None:
    plan = plan_samples(4.0, 25.0, 100, VideoConfig(num_frames=16, model_sampling="time"))
    assert np.allclose(plan.model_times, (np.arange(16) + 0.5) * 4.0 / 16)
    assert plan.model_indices is None


def test_plan_tracking_frames_at_16_fps() -> None:
    plan = plan_samples(4.0, 25.0, 100, VideoConfig())
    assert len(plan.tracking_times) == 64
    assert np.allclose(np.diff(plan.tracking_times), 1 / 16)
    assert plan.tracking_fps == pytest.approx(16.0)


def test_plan_never_oversamples_a_low_frame_rate() -> None:
    plan = plan_samples(4.0, 10.0, 40, VideoConfig(tracking_fps=16))
    assert len(plan.tracking_times) == 40
    assert plan.tracking_fps == pytest.approx(10.0)


def test_plan_caps_long_videos_with_evenly_spaced_frames() -> None:
    plan = plan_samples(3600.0, 30.0, 108000, VideoConfig(max_tracking_frames=100))
    assert len(plan.tracking_times) == 100
    assert np.allclose(np.diff(plan.tracking_times), 36.0)
    assert plan.tracking_times[0] == pytest.approx(18.0)
    assert plan.tracking_fps == pytest.approx(100 / 3600)


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_sampled_frames_are_the_expected_source_frames(clip: Path, backend: str) -> None:
    if backend == "decord":
        pytest.importorskip("decord")
    model, tracking = sample_frames(clip, VideoConfig(backend=backend))
    expected_model = reference_indices(100, 16)
    assert expected_model != [int((i + 0.5) * 100 / 16) for i in range(16)]  # not the same as by time
    assert model.images.shape == (16, H, W, 3)
    assert [frame_number(f) for f in model.images] == expected_model
    assert model.indices == expected_model
    assert model.fps == pytest.approx(25.0)
    assert model.duration == pytest.approx(4.0, abs=0.05)
    expected_tracking = [int(k / 16 * 25 + 1e-6) for k in range(64)]
    assert [frame_number(f) for f in tracking.images] == expected_tracking
    assert np.allclose(tracking.timestamps, np.array(expected_tracking) / 25.0, atol=1e-3)


@pytest.mark.parametrize("t", [8, 16])
def test_time_sampling_takes_the_frames_on_screen_at_segment_midpoints(clip: Path, t: int) -> None:
    model, _ = sample_frames(clip, VideoConfig(num_frames=t, model_sampling="time"))
    expected = [int((i + 0.5) * 100 / t) for i in range(t)]
    assert [frame_number(f) for f in model.images] == expected == model.indices


@pytest.mark.parametrize(("n", "t"), [(100, 8), (100, 32), (37, 16), (10, 16)])
def test_model_frames_are_videollama2s_frames(tmp_path: Path, n: int, t: int) -> None:
    path = clip_of(tmp_path, n)
    model, _ = sample_frames(path, VideoConfig(num_frames=t))
    assert [frame_number(f) for f in model.images] == reference_indices(n, t) == model.indices


def clip_of(tmp_path: Path, n: int) -> Path:
    return write_coded(tmp_path / f"coded{n}.mp4", n)


def test_decord_and_pyav_agree(clip: Path) -> None:
    pytest.importorskip("decord")
    a, _ = sample_frames(clip, VideoConfig(backend="decord"))
    b, _ = sample_frames(clip, VideoConfig(backend="pyav"))
    assert a.indices == b.indices
    assert np.abs(a.images.astype(int) - b.images.astype(int)).mean() < 2.0


def test_bytes_input(clip: Path) -> None:
    model, _ = sample_frames(clip.read_bytes(), VideoConfig(num_frames=4), name="clip-bytes")
    assert [frame_number(f) for f in model.images] == [12, 37, 62, 87]


def test_s3_input(clip: Path, s3_bucket: str) -> None:
    from facetrack import storage

    uri = f"s3://{s3_bucket}/videos/coded.mp4"
    storage.write_bytes(uri, clip.read_bytes())
    model, tracking = sample_frames(uri, VideoConfig(num_frames=4))
    assert [frame_number(f) for f in model.images] == [12, 37, 62, 87]
    assert len(tracking) == 64
    with pytest.raises(VideoError, match=f"s3://{s3_bucket}/videos/missing.mp4: not found"):
        sample_frames(f"s3://{s3_bucket}/videos/missing.mp4")


@pytest.mark.parametrize("rotation", [90, 270, 180])
def test_rotation_metadata_is_applied(tmp_path: Path, rotation: int) -> None:
    path = write_coded(tmp_path / "rotated.mp4", 30, rotation=rotation)
    with open_video(path) as video:
        assert video.info.rotation == rotation
        assert video.info.backend == "pyav"
        assert (video.info.width, video.info.height) == (W, H)
        frames = video.read_at([0.5])
    img = frames.images[0]
    assert img.shape[:2] == (H, W)

    # Upright again: the red mark is back in the top-left corner.
    def red(y: int, x: int) -> bool:
        return bool(img[y, x, 0] > 200 and img[y, x, 1] < 60)

    assert red(2, 2) and not red(2, -3) and not red(-3, 2) and not red(-3, -3)
    assert frame_number(img) == 12


def test_variable_frame_rate_is_sampled_by_time(tmp_path: Path) -> None:
    # 20 frames: the first 10 are 0.05 s apart, the last 10 are 0.25 s apart (3 s in all).
    times = [0.05 * i for i in range(10)] + [0.5 + 0.25 * i for i in range(10)]
    path = write_coded(tmp_path / "vfr.mp4", 20, fps=20, frame_times=times)
    for backend in ("pyav", "auto"):
        with open_video(path, backend=backend) as video:
            frames = video.read_at([0.12, 0.49, 1.0, 2.8])
        # The frame on screen at each time: the last one that started at or before it.
        assert [frame_number(f) for f in frames.images] == [2, 9, 12, 19], backend
        assert np.allclose(frames.timestamps, [0.1, 0.45, 1.0, 2.75], atol=2e-3), backend


def test_short_clip_repeats_frames_to_fill_t(tmp_path: Path) -> None:
    path = write_coded(tmp_path / "short.mp4", 5)
    model, tracking = sample_frames(path, VideoConfig(num_frames=16))
    assert len(model) == 16
    numbers = [frame_number(f) for f in model.images]
    assert numbers == sorted(numbers) and set(numbers) == {0, 1, 2, 3, 4}
    # 0.2 s at 16 fps: sample times 0, 1/16, 2/16, 3/16 s land on frames 0, 1, 3, 4 (at 25 fps).
    assert [frame_number(f) for f in tracking.images] == [0, 1, 3, 4]


def test_long_video_tracking_frames_are_capped(tmp_path: Path) -> None:
    path = write_coded(tmp_path / "long.mp4", 250, fps=10)  # 25 s
    model, tracking = sample_frames(path, VideoConfig(max_tracking_frames=20))
    assert len(tracking) == 20
    assert np.allclose(np.diff(tracking.timestamps), 1.25, atol=0.11)
    assert [frame_number(f) for f in tracking.images] == [int((k + 0.5) * 12.5) for k in range(20)]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_streaming_holds_a_bounded_number_of_frames(tmp_path: Path, backend: str) -> None:
    if backend == "decord":
        pytest.importorskip("decord")
    w, h = 320, 240
    path = tmp_path / "many.mp4"
    write_video(path, (coded_frame(i % 200, w, h) for i in range(300)), 25.0)
    frame_bytes = w * h * 3
    with open_video(path, backend=backend) as video:
        plan = plan_samples(video.info.duration, video.info.fps, video.info.num_frames, VideoConfig())
        tracemalloc.start()
        count = 0
        for item, _, is_tracking in stream_samples(video, plan):
            count += is_tracking
            del item
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert count == len(plan.tracking_times) == 192
    # All tracking frames together would be 192 frames; the stream holds a few at most.
    assert peak < 40 * frame_bytes, peak / frame_bytes


def _audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def bad_inputs(tmp: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the error must say)."""
    data = good.read_bytes()
    (tmp / "zero.mp4").write_bytes(b"")
    (tmp / "text.mp4").write_text("this is not a video\n" * 50)
    (tmp / "truncated.mp4").write_bytes(data[: len(data) // 2])
    fast = write_coded(tmp / "fast.mp4", 100, faststart=True)
    fdata = fast.read_bytes()
    (tmp / "truncated-faststart.mp4").write_bytes(fdata[: len(fdata) * 2 // 3])
    _audio_only(tmp / "audio.m4a")
    return {
        "zero": (tmp / "zero.mp4", "empty file"),
        "text": (tmp / "text.mp4", "not a readable video"),
        "truncated": (tmp / "truncated.mp4", "not a readable video"),
        "truncated-faststart": (tmp / "truncated-faststart.mp4", "truncated or corrupt|ended early"),
        "audio": (tmp / "audio.m4a", "no video stream"),
        "missing": (tmp / "missing.mp4", "not found"),
    }


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, clip: Path) -> dict[str, tuple[Path, str]]:
    return bad_inputs(tmp_path_factory.mktemp("bad"), clip)


@pytest.mark.parametrize("case", ["zero", "text", "truncated", "truncated-faststart", "audio", "missing"])
def test_bad_inputs_raise_a_clear_error_naming_the_file(bad: dict, case: str) -> None:
    path, reason = bad[case]
    with pytest.raises(VideoError, match=reason) as info:
        sample_frames(path)
    assert str(path) in str(info.value)


def test_empty_bytes_name_the_input() -> None:
    with pytest.raises(VideoError, match="upload-7: empty input"):
        sample_frames(b"", name="upload-7")


@pytest.mark.parametrize("seed", range(6))
def test_damaged_files_give_frames_or_a_video_error(clip: Path, tmp_path: Path, seed: int) -> None:
    data = np.frombuffer(clip.read_bytes(), np.uint8).copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data), size=max(1, len(data) // 50))
    data[idx] = rng.integers(0, 256, size=len(idx), dtype=np.uint8)
    path = tmp_path / f"damaged-{seed}.mp4"
    path.write_bytes(data.tobytes())
    try:
        model, tracking = sample_frames(path)
    except VideoError as exc:
        assert str(path) in str(exc)
    else:
        assert model.images.shape[0] == 16 and len(tracking) > 0
