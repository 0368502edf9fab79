"""The adaptive detection stride's planner on composed frames: carry a textured face, detect on a cut,
on a failed check and at least every ``detect_every`` frames."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2")

from facetrack.faces.carry import StridePlanner  # noqa: E402
from facetrack.types import Face  # noqa: E402

SIZE = 40


def scene(x: int, y: int, seed: int = 0, background: int = 90) -> np.ndarray:
    """A 320x180 frame with a smoothly textured 40 px 'face' whose top-left corner is at (x, y)."""
    import cv2

    rng = np.random.default_rng(seed)
    image = np.full((180, 320, 3), background, np.uint8)
    noise = rng.integers(0, 255, (SIZE, SIZE, 3)).astype(np.float32)
    texture = np.clip(cv2.GaussianBlur(noise, (0, 0), 3) * 4 - 384, 0, 255).astype(np.uint8)
    image[y : y + SIZE, x : x + SIZE] = texture
    return image


def face(x: float, y: float, frame: int = 0) -> Face:
    return Face(frame=frame, box=(x, y, x + SIZE, y + SIZE), score=0.9, embedding=np.ones(4, np.float32))


def test_every_frame_detection_when_the_stride_is_one() -> None:
    planner = StridePlanner(1)
    assert planner.plan(scene(10, 20)) is None and planner.plan(scene(12, 20)) is None
    assert planner.reasons == {"every": 2}


def test_a_moving_face_is_carried_between_keyframes_with_its_embedding() -> None:
    planner = StridePlanner(8)
    assert planner.plan(scene(50, 60), 0) is None  # the first frame is a keyframe
    planner.detected([face(50, 60)], scene(50, 60))
    for i in range(1, 6):
        x = 50 + 3 * i
        carried = planner.plan(scene(x, 60), i)
        assert carried is not None and len(carried) == 1, i
        box = carried[0].box
        assert abs(box[0] - x) <= 1.5 and abs(box[1] - 60) <= 1.5, (i, box)
        assert carried[0].frame == i and carried[0].embedding is not None


def test_the_detector_runs_again_on_a_cut_a_failed_check_and_the_stride() -> None:
    planner = StridePlanner(4)
    planner.plan(scene(50, 60), 0)
    planner.detected([face(50, 60)], scene(50, 60))
    assert planner.plan(scene(50, 60, background=240), 1) is None  # another shot: everything changed
    assert planner.reasons.get("cut") == 1
    planner.detected([face(50, 60)], scene(50, 60, background=240))
    assert planner.plan(scene(200, 100, seed=5, background=240), 2) is None  # the face is gone from there
    assert planner.reasons.get("check") == 1

    planner = StridePlanner(4)
    planner.plan(scene(50, 60), 0)
    planner.detected([face(50, 60)], scene(50, 60))
    results = [planner.plan(scene(50, 60), i) for i in range(1, 5)]
    assert [r is None for r in results] == [False, False, False, True]  # at least every 4 frames
    assert planner.reasons.get("stride") == 1


def flat_square(x: int, y: int) -> np.ndarray:
    """A 320x180 dark frame with a flat bright 32 px square (no texture inside) at (x, y)."""
    image = np.full((180, 320, 3), 20, np.uint8)
    image[y : y + 32, x : x + 32] = 230
    return image


def test_a_flat_face_is_located_by_its_outline() -> None:
    planner = StridePlanner(8)
    planner.plan(flat_square(60, 50), 0)
    planner.detected([Face(frame=0, box=(60, 50, 92, 82), score=0.9)], flat_square(60, 50))
    for i in range(1, 4):
        carried = planner.plan(flat_square(60 + 2 * i, 50), i)
        assert carried is not None, i
        assert carried[0].box == pytest.approx((60 + 2 * i, 50, 92 + 2 * i, 82), abs=1.0)
    # A jump larger than the search window fails the check instead of being carried to a wrong place.
    assert planner.plan(flat_square(150, 50), 4) is None
    assert planner.reasons.get("check") == 1


def test_a_template_flat_even_with_its_border_is_not_carried() -> None:
    image = np.full((180, 320, 3), 128, np.uint8)
    planner = StridePlanner(8)
    planner.plan(image, 0)
    planner.detected([Face(frame=0, box=(60, 50, 92, 82), score=0.9)], image)
    assert planner.plan(image, 1) is None  # any place would match: the detector decides
    assert planner.reasons.get("check") == 1
