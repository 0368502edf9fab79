"""StrongSort on our embeddings: identities through gaps, merging, and no ReID model or download."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from facetrack.faces.stage import _EmbeddingReuse
from facetrack.faces.track import FaceTracker, TrackConfig, _NoReID
from facetrack.types import Face

W, H = 640, 360
FPS = 16.0


def unit(seed: int, dim: int = 128) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, seed: int, noise: float = 0.02) -> np.ndarray:
    w = v + noise * np.random.default_rng(seed).normal(size=v.shape).astype(np.float32)
    return w / np.linalg.norm(w)


def face_at(k: int, x: float, y: float, size: float, emb: np.ndarray) -> Face:
    return Face(frame=k, box=(x, y, x + size, y + size), score=0.9, embedding=emb)


def run(tracker: FaceTracker, frames: list[list[Face]]) -> list[list[int | None]]:
    tracker.start(FPS, W, H, len(frames))
    image = np.zeros((H, W, 3), np.uint8)
    return [tracker.update(faces, image, k) for k, faces in enumerate(frames)]


def scene(n: int, gap: range = range(0), b_from: int = 0) -> list[list[Face]]:
    """Person A walks right across n frames (hidden during ``gap``); person B stands still from ``b_from``."""
    a, b = unit(1), unit(2)
    frames = []
    for k in range(n):
        faces = []
        if k not in gap:
            faces.append(face_at(k, 50 + 4 * k, 100, 120, near(a, 100 + k)))
        if k >= b_from:
            faces.append(face_at(k, 480, 60, 80, near(b, 200 + k)))
        frames.append(faces)
    return frames


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Opening a connection (a weight download) fails the test, and so does building boxmot's ReID."""
    attempts: list[str] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(str(address))
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a))

    import boxmot.reid.core as reid_core

    def no_reid(*args, **kwargs):
        attempts.append("boxmot ReID")
        raise AssertionError("boxmot's ReID model was constructed")

    monkeypatch.setattr(reid_core, "ReID", no_reid)
    return attempts


def test_identities_are_kept_and_no_reid_is_used(no_network: list[str]) -> None:
    tracker = FaceTracker(TrackConfig(), match_distance=0.1, embedding_dim=128)
    ids = run(tracker, scene(40, b_from=10))
    assert no_network == []
    a_ids = {i[0] for i in ids[2:] if i[0] is not None}
    b_ids = {i[1] for i in ids[12:] if len(i) > 1 and i[1] is not None}
    assert len(a_ids) == 1 and len(b_ids) == 1 and a_ids != b_ids
    # A new face needs n_init=3 consecutive frames before it gets an id.
    assert ids[0] == [None] and ids[1] == [None] and ids[2][0] is not None
    tracks, means = tracker.finish()
    assert sorted(len(t.frames) for t in tracks) == [28, 38]
    for t in tracks:
        assert 0.95 < t.similarity <= 1.0
        assert np.isclose(np.linalg.norm(means[t.track_id]), 1.0)


def test_short_gap_keeps_the_id(no_network: list[str]) -> None:
    tracker = FaceTracker(TrackConfig(merge=False), match_distance=0.1, embedding_dim=128)
    gap = range(15, 27)  # 0.75 s, under max_age_seconds=2
    ids = run(tracker, scene(45, gap=gap, b_from=0))
    before = {f[0] for f in ids[3:15]}
    after = {f[0] for f in ids[27:] if f and f[0] is not None}
    assert len(before) == 1 and before == after
    tracks, _ = tracker.finish()
    assert len(tracks) == 2


def test_long_gap_is_merged_back_only_for_the_same_person(no_network: list[str]) -> None:
    gap = range(12, 60)  # 3 s: StrongSort drops the trajectory
    tracker = FaceTracker(TrackConfig(merge=False), match_distance=0.1, embedding_dim=128)
    run(tracker, scene(75, gap=gap))
    unmerged, _ = tracker.finish()
    assert len(unmerged) == 3
    tracker = FaceTracker(TrackConfig(merge=True), match_distance=0.1, embedding_dim=128)
    run(tracker, scene(75, gap=gap))
    merged, _ = tracker.finish()
    assert len(merged) == 2
    walker = min(merged, key=lambda t: t.boxes[0][0])
    assert walker.frames[0] < gap.start and walker.frames[-1] > gap.stop
    assert walker.frames == sorted(walker.frames)


def test_different_people_are_not_merged(no_network: list[str]) -> None:
    frames = scene(30, b_from=1000)
    c = unit(3)
    frames += [[face_at(30 + k, 300, 100, 120, near(c, 300 + k))] for k in range(30)]
    tracker = FaceTracker(TrackConfig(), match_distance=0.1, embedding_dim=128)
    run(tracker, frames)
    tracks, _ = tracker.finish()
    assert len(tracks) == 2


def test_frames_without_faces_before_the_first_face(no_network: list[str]) -> None:
    frames = [[] for _ in range(5)] + scene(20)
    tracker = FaceTracker(TrackConfig(), match_distance=0.1, embedding_dim=128)
    run(tracker, frames)
    tracks, _ = tracker.finish()
    assert len(tracks) == 2 and tracks[0].frames[0] >= 5


def test_clip_shorter_than_n_init_still_confirms() -> None:
    tracker = FaceTracker(TrackConfig(n_init=3), match_distance=0.1, embedding_dim=128)
    ids = run(tracker, scene(2, b_from=1000))
    assert ids[0] == [None] and ids[1][0] is not None


def test_the_reid_stand_in_refuses_to_work() -> None:
    with pytest.raises(RuntimeError, match="facetrack passes its own face embeddings"):
        _NoReID().get_features(np.zeros((1, 4)), np.zeros((8, 8, 3), np.uint8))


def test_camera_motion_option_runs() -> None:
    tracker = FaceTracker(TrackConfig(camera_motion=True), match_distance=0.1, embedding_dim=128)
    frames = scene(20)
    tracker.start(FPS, W, H, len(frames))
    rng = np.random.default_rng(0)
    for k, faces in enumerate(frames):
        tracker.update(faces, rng.integers(0, 255, (H, W, 3), dtype=np.uint8), k)
    tracks, _ = tracker.finish()
    assert len(tracks) == 2


def test_embedding_reuse_only_for_an_unambiguous_overlap() -> None:
    reuse = _EmbeddingReuse(every=3)
    e1, e2 = unit(1), unit(2)
    first = [face_at(0, 100, 100, 100, None), face_at(0, 400, 100, 100, None)]
    assert reuse.assign(first) == [0, 1]
    first[0].embedding, first[1].embedding = e1, e2
    reuse.remember(first)
    # Moved a little: reused. A face appearing between two old ones overlaps neither enough: embedded.
    second = [face_at(1, 105, 100, 100, None), face_at(1, 250, 100, 100, None)]
    assert reuse.assign(second) == [1]
    assert second[0].embedding is e1
    second[1].embedding = e2
    reuse.remember(second)
    third = [face_at(2, 110, 100, 100, None)]
    assert reuse.assign(third) == []
    reuse.remember(third)
    # The embedding is two frames old now: with every=3 it is computed afresh.
    fourth = [face_at(3, 112, 100, 100, None)]
    assert reuse.assign(fourth) == [0]
    # Two faces over the same old one: both embedded.
    fourth[0].embedding = e1
    reuse.remember(fourth)
    fifth = [face_at(4, 112, 100, 100, None), face_at(4, 130, 100, 100, None)]
    assert reuse.assign(fifth) == [0, 1]
