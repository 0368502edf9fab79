"""The adaptive detection stride through the real stage (built-in backend) on composed scenes: a shot cut,
fast motion, a brief occlusion and a face entering mid-clip. Each checks that the detector ran where it
must, that every person keeps one trajectory, and that the main character stays right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facetrack.faces.base import FaceConfig
from facetrack.faces.scenes import MATCH_IOU, Appearance, Scene, SceneVideo, _iou, compose_scene, score_result
from facetrack.faces.stage import FaceTrackConfig, FaceTrackStage, StageResult

SECONDS = 2.5
DETECT_EVERY = FaceConfig().detect_every


class RecordingAnalyser:
    """Wraps an analyser and records the tracking frames its detector ran on."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.frames: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def detect(self, image: np.ndarray, frame: int = 0):
        self.frames.append(frame)
        return self._inner.detect(image, frame)


def run(builtin_analyser, tmp_path: Path, scene: Scene) -> tuple[StageResult, SceneVideo, list[int]]:
    video = compose_scene(tmp_path / f"{scene.name}.mp4", scene)
    recording = RecordingAnalyser(builtin_analyser)
    stage = FaceTrackStage(FaceTrackConfig(faces=FaceConfig(backend="builtin")), analyser=recording)
    result = stage.process(video.path)
    assert result.error is None
    assert result.stats["carried_frames"] > 0 and result.stats["detector_calls"] == len(recording.frames)
    gaps = np.diff([0, *recording.frames, result.n_tracking_frames])
    assert gaps.max() <= DETECT_EVERY  # new faces get a chance at least every detect_every frames
    return result, video, recording.frames


def first_frame_at(result: StageResult, t: float) -> int:
    return next(k for k, tt in enumerate(result.tracking_times) if tt >= t)


def assert_one_trajectory_each_and_main_right(
    result: StageResult, video: SceneVideo, settle: tuple[float, float] | None = None
) -> dict[str, Any]:
    """Everyone found as one trajectory, none false, and the main box on her at every model frame.

    ``settle``: a time window (just after a cut) whose model frames are not judged: there the tracker's
    box still moves over the jump, with every-frame detection as well.
    """
    score = score_result(result, video)
    assert score["found"] == score["people"], score["missed"]
    assert score["id_switches"] == 0 and score["fragments"] == 0 and score["false_tracks"] == 0, score
    assert score["main_people"] == ["hopper"]
    judged = 0
    for t, box in zip(result.model_frames.timestamps, result.main_boxes):
        truth = video.truth_at("hopper", t)
        if truth is None or (settle is not None and settle[0] <= t < settle[1]):
            continue
        judged += 1
        assert box is not None and _iou(box, truth) > MATCH_IOU, (t, box, truth)
    assert judged >= 12
    return score


def test_a_shot_cut_is_detected_on_its_first_frame(builtin_analyser, tmp_path: Path) -> None:
    cut = 1.2
    scene = Scene(
        "cut",
        SECONDS,
        [
            Appearance("hopper", 0, cut, [(0.3, 0.55), (0.33, 0.55)], size=140),
            Appearance("t1-0", 0, cut, [(0.8, 0.3), (0.8, 0.33)], size=70),
            Appearance("hopper", cut, SECONDS, [(0.7, 0.5), (0.65, 0.5)], size=150),
            Appearance("t1-0", cut, SECONDS, [(0.15, 0.3), (0.18, 0.3)], size=65),
        ],
        cuts=[cut],
        seed=3,
    )
    result, video, detected = run(builtin_analyser, tmp_path, scene)
    assert result.stats.get("detect/cut", 0) >= 1
    assert first_frame_at(result, cut) in detected
    assert_one_trajectory_each_and_main_right(result, video, settle=(cut, cut + 0.1))


def test_fast_motion_is_re_detected_early_and_followed(builtin_analyser, tmp_path: Path) -> None:
    scene = Scene(
        "fast",
        SECONDS,
        [
            Appearance(
                "hopper",
                0,
                SECONDS,
                [(0.2, 0.5), (0.8, 0.55), (0.3, 0.5)],
                size=130,
                wobble=0.04,
                wobble_hz=1.5,
            ),
            Appearance("t1-5", 0, SECONDS, [(0.9, 0.2), (0.88, 0.22)], size=65),
        ],
        seed=4,
    )
    result, video, detected = run(builtin_analyser, tmp_path, scene)
    early = result.stats.get("detect/uncertain", 0) + result.stats.get("detect/check", 0)
    assert early >= 1  # the fast face is not left to the stride alone
    score = assert_one_trajectory_each_and_main_right(result, video)
    assert score["covered"] >= 0.9 * score["person_frames"]


def test_a_brief_occlusion_fails_the_check_and_keeps_the_trajectory(builtin_analyser, tmp_path: Path) -> None:
    start, end = 0.9, 1.4
    scene = Scene(
        "occlusion",
        SECONDS,
        [
            Appearance("hopper", 0, SECONDS, [(0.35, 0.55), (0.6, 0.5)], size=140),
            Appearance("t1-2", 0, SECONDS, [(0.85, 0.3), (0.8, 0.3)], size=70),
        ],
        occlusions=[("hopper", start, end)],
        seed=5,
    )
    result, video, detected = run(builtin_analyser, tmp_path, scene)
    assert result.stats.get("detect/check", 0) >= 1
    k = first_frame_at(result, start)
    assert {k, k + 1} & set(detected)  # the hidden face fails its check at once
    assert_one_trajectory_each_and_main_right(result, video)
    main = result.main_track
    hidden = [k for k, t in enumerate(result.tracking_times) if start <= t < end]
    assert main.frames[0] < hidden[0] and main.frames[-1] > hidden[-1]
    assert not set(main.frames) & set(hidden)  # nothing carried onto the panel


def test_a_face_entering_mid_clip_gets_one_trajectory(builtin_analyser, tmp_path: Path) -> None:
    enter = 1.0
    scene = Scene(
        "enter",
        SECONDS,
        [
            Appearance("hopper", 0, SECONDS, [(0.4, 0.55), (0.5, 0.55)], size=140),
            Appearance("t1-3", enter, SECONDS, [(1.15, 0.3), (0.8, 0.3), (0.8, 0.3)], size=65),
        ],
        seed=6,
    )
    result, video, detected = run(builtin_analyser, tmp_path, scene)
    assert_one_trajectory_each_and_main_right(result, video)
    # The newcomer is picked up within one stride of being fully in view.
    in_view = next(
        k
        for k, t in enumerate(result.tracking_times)
        if (b := video.truth_at("t1-3", t)) is not None and b[2] - b[0] >= 60 and b[2] < video.scene.width
    )
    newcomer = [t for t in result.tracks if t.track_id != result.main_track_id]
    assert len(newcomer) == 1
    assert newcomer[0].frames[0] <= in_view + DETECT_EVERY
    assert any(in_view <= k <= in_view + DETECT_EVERY for k in detected)
