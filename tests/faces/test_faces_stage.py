"""The face tracking stage end to end with the built-in backend, on clips composed from real faces."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from facetrack.faces.base import FaceConfig
from facetrack.faces.draw import MAIN_COLOUR, contact_sheet_png
from facetrack.faces.stage import FaceTrackConfig, FaceTrackStage, result_to_dict
from facetrack.faces.track import TrackConfig
from facetrack.samples import SampleSpec, compose_video
from facetrack.types import VideoRef
from facetrack.video import VideoConfig
from tests.faces.face_helpers import iou, truth_at


def _tracks_on(result, clip, name: str, min_iou: float = 0.4) -> set[int]:
    """Ids of the trajectories that have at least one box on face ``name``."""
    ids = set()
    for track in result.tracks:
        for k, box in zip(track.frames, track.boxes):
            truth = truth_at(clip, name, result.tracking_times[k])
            if truth is not None and iou(box, truth) > min_iou:
                ids.add(track.track_id)
                break
    return ids


def test_main_character_is_the_large_face(tracked, clips) -> None:
    result, clip = tracked("extras"), clips["extras"]
    assert result.error is None
    main = result.main_track
    assert main is not None
    # Every observation of the main trajectory is on Grace Hopper's face ...
    for k, box in zip(main.frames, main.boxes):
        truth = truth_at(clip, "hopper", result.tracking_times[k])
        assert truth is not None and iou(box, truth) > 0.4
    # ... and it follows her through (nearly) every tracking frame she is on.
    visible = sum(truth_at(clip, "hopper", t) is not None for t in result.tracking_times)
    assert len(main.frames) >= 0.9 * visible
    # The two smaller faces are tracked too, each as one trajectory of its own.
    for extra in ("t1-0", "t1-5"):
        ids = _tracks_on(result, clip, extra)
        assert len(ids) == 1 and main.track_id not in ids, (extra, ids)
    assert len(result.tracks) == 3
    assert _tracks_on(result, clip, "hopper") == {main.track_id}


def test_crops_contain_the_main_face(tracked, builtin_analyser, source_embeddings) -> None:
    result = tracked("extras")
    assert result.crops is not None and result.crops.shape == (16, 224, 224, 3)
    assert len(result.main_boxes) == 16 and all(b is not None for b in result.main_boxes)
    for crop in result.crops:
        faces = builtin_analyser.detect(crop)
        assert faces, "no face in a main-character crop"
        face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        emb = builtin_analyser.embed(crop, [face])[0]
        dist = {name: float(1.0 - emb @ ref) for name, ref in source_embeddings.items()}
        assert min(dist, key=dist.get) == "hopper", dist
        assert dist["hopper"] < builtin_analyser.match_distance
        # The face fills the middle of the crop: the box side is 1 / (1 + margin) of the crop's.
        side = max(face.box[2] - face.box[0], face.box[3] - face.box[1])
        assert 0.45 * 224 < side < 0.85 * 224


def test_track_id_is_stable_across_an_occlusion(tracked, clips, builtin_analyser, source_embeddings) -> None:
    result, clip = tracked("occlusion"), clips["occlusion"]
    main = result.main_track
    assert main is not None
    gap = [k for k, t in enumerate(result.tracking_times) if 1.4 <= t < 2.4]
    assert len(gap) >= 15
    assert main.frames[0] < gap[0] and main.frames[-1] > gap[-1]
    assert not set(main.frames) & set(gap)
    assert _tracks_on(result, clip, "hopper") == {main.track_id}
    # The extra that entered during the gap is someone else.
    assert main.track_id not in _tracks_on(result, clip, "t1-3")
    # Crops of model frames outside the gap show her.
    for crop, t in zip(result.crops, result.model_frames.timestamps):
        if 1.3 <= t < 2.5:
            continue
        faces = builtin_analyser.detect(crop)
        assert faces
        emb = builtin_analyser.embed(crop, faces[:1])[0]
        assert 1.0 - emb @ source_embeddings["hopper"] < builtin_analyser.match_distance


def test_a_shot_without_faces_is_bridged_by_merging(tracked, clips, builtin_analyser) -> None:
    result, clip = tracked("cut"), clips["cut"]
    empty = [k for k, t in enumerate(result.tracking_times) if 1.4 <= t < 3.6]
    assert len(result.tracks) == 1
    main = result.main_track
    assert main.frames[0] < empty[0] and main.frames[-1] > empty[-1]
    assert not set(main.frames) & set(empty)
    # Without merging, StrongSort alone loses her during the 2.2 s shot and starts a new trajectory.
    stage = FaceTrackStage(
        FaceTrackConfig(faces=FaceConfig(backend="builtin"), track=TrackConfig(merge=False)),
        analyser=builtin_analyser,
    )
    unmerged = stage.process(clip.path)
    assert len(_tracks_on(unmerged, clip, "hopper")) == 2


def test_no_face_gives_an_empty_result(tracked) -> None:
    result = tracked("no-face")
    assert result.error is None
    assert result.tracks == [] and result.main_track_id is None and result.crops is None
    assert result.main_boxes == [None] * 16
    clip = result.to_clip()
    assert clip.frames.shape[0] == 16 and clip.crops is None


def test_long_video_costs_a_bounded_number_of_detections(clips, builtin_analyser) -> None:
    config = FaceTrackConfig(faces=FaceConfig(backend="builtin"), video=VideoConfig(max_tracking_frames=24))
    stage = FaceTrackStage(config, analyser=builtin_analyser)
    result = stage.process(VideoRef(id="cut", uri=clips["cut"].path))
    assert result.error is None
    assert result.n_tracking_frames == 24 == stage.counters["tracking_frames"]
    assert result.tracking_fps == pytest.approx(24 / 5.0, rel=0.02)
    assert result.main_track is not None


def test_embedding_reuse_keeps_the_result(clips) -> None:
    from facetrack.faces.dlib_backend import DlibFaceAnalyser

    # Detection on every tracking frame, so that only the embedding policy differs (upsample 0: the
    # faces of this clip are large, and every-frame detection twice costs less so).
    analyser = DlibFaceAnalyser(FaceConfig(backend="builtin", upsample=0))
    analyser.setup()

    def stage(reembed_every: int) -> FaceTrackStage:
        faces = FaceConfig(backend="builtin", reembed_every=reembed_every, detect_every=1, upsample=0)
        return FaceTrackStage(FaceTrackConfig(faces=faces), analyser=analyser)

    every, reusing = stage(1), stage(FaceConfig().reembed_every)
    full = every.process(clips["occlusion"].path)
    reused = reusing.process(clips["occlusion"].path)
    assert every.counters["embedded"] == every.counters["faces"]
    assert reusing.counters["embedded"] < 0.5 * reusing.counters["faces"]
    assert full.main_track is not None and reused.main_track is not None
    assert full.main_track.frames == reused.main_track.frames
    assert np.allclose(full.main_boxes, reused.main_boxes)


def _bad_files(tmp: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    (tmp / "zero.mp4").write_bytes(b"")
    (tmp / "text.mp4").write_text("not a video\n" * 100)
    (tmp / "truncated.mp4").write_bytes(data[: len(data) // 3])
    corrupt = np.frombuffer(data, np.uint8).copy()
    rng = np.random.default_rng(0)
    idx = rng.integers(2000, len(corrupt), size=len(corrupt) // 20)
    corrupt[idx] = rng.integers(0, 256, size=len(idx), dtype=np.uint8)
    (tmp / "corrupt.mp4").write_bytes(corrupt.tobytes())
    (tmp / "folder.mp4").mkdir()
    return {
        "zero": tmp / "zero.mp4",
        "text": tmp / "text.mp4",
        "truncated": tmp / "truncated.mp4",
        "corrupt": tmp / "corrupt.mp4",
        "missing": tmp / "missing.mp4",
        "folder": tmp / "folder.mp4",
    }


def test_bad_inputs_become_error_records(tmp_path: Path, clips, builtin_stage) -> None:
    for name, path in _bad_files(tmp_path, Path(clips["no-face"].path)).items():
        result = builtin_stage.process(VideoRef(id=name, uri=str(path)))
        if name == "corrupt" and result.error is None:
            # Damage the decoder can conceal still yields a complete, well-formed result.
            assert result.model_frames is not None and len(result.model_frames) == 16
            continue
        assert result.error is not None, name
        assert str(path) in result.error, result.error
        assert result.tracks == [] and result.crops is None
        with pytest.raises(ValueError, match=name):
            result.to_clip()


def test_json_record_and_contact_sheet(tracked) -> None:
    from PIL import Image

    result = tracked("occlusion")
    record = json.loads(json.dumps(result_to_dict(result)))
    assert record["main_track_id"] == result.main_track_id
    assert record["main_track"]["n_tracks"] == len(result.tracks)
    assert len(record["main_boxes"]) == 16 and record["crops"] == {"count": 16, "size": 224}
    assert [t["track_id"] for t in record["tracks"]] == [t.track_id for t in result.tracks]
    assert set(record["timings"]) >= {"decode", "detect_embed", "track", "select_crop", "total"}
    png = contact_sheet_png(result)
    sheet = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert sheet.shape[1] == 8 * 244 + 4
    assert (np.abs(sheet.astype(int) - MAIN_COLOUR).sum(axis=2) == 0).sum() > 500


def test_track_command_writes_json_and_sheets(tmp_path: Path, clips) -> None:
    from facetrack.cli import main

    short = compose_video(tmp_path / "short.mp4", SampleSpec(1.5))
    (tmp_path / "empty.mp4").write_bytes(b"")
    out = tmp_path / "out"
    code = main(
        [
            "track",
            str(short.path),
            str(tmp_path / "empty.mp4"),
            "faces.backend=builtin",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 1
    record = json.loads((out / "short.mp4.json").read_text())
    assert record["error"] is None and record["main_track_id"] is not None and record["backend"] == "builtin"
    assert (out / "short.mp4.png").stat().st_size > 10_000
    bad = json.loads((out / "empty.mp4.json").read_text())
    assert "empty file" in bad["error"] and not (out / "empty.mp4.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos"] == 2 and summary["errors"] == 1
    assert summary["config"]["faces"]["backend"] == "builtin"


def test_track_command_reads_and_writes_s3(tmp_path: Path, clips, s3_bucket: str) -> None:
    from facetrack import storage
    from facetrack.cli import main

    src = f"s3://{s3_bucket}/in/no-face.mp4"
    storage.write_bytes(src, Path(clips["no-face"].path).read_bytes())
    out = f"s3://{s3_bucket}/tracks"
    assert (
        main(["track", f"s3://{s3_bucket}/in/", "--set", "faces.backend=builtin", "--out", out, "--quiet"])
        == 0
    )
    record = json.loads(storage.read_text(f"{out}/no-face.mp4.json"))
    assert record["video"] == src and record["error"] is None and record["tracks"] == []
    assert storage.exists(f"{out}/no-face.mp4.png") and storage.exists(f"{out}/summary.json")


class _Batching:
    """An analyser with ``detect_batch`` (as insightface has) wrapped around the built-in one."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.batches: list[list[int]] = []

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def detect(self, image, frame: int = 0):
        raise AssertionError("every-frame detection should go through detect_batch")

    def detect_batch(self, images, frames):
        self.batches.append(list(frames))
        return [self._inner.detect(image, k) for image, k in zip(images, frames)]


def test_every_frame_detection_is_batched_when_the_analyser_can(clips) -> None:
    from facetrack.faces.dlib_backend import DlibFaceAnalyser

    analyser = DlibFaceAnalyser(FaceConfig(backend="builtin", upsample=0))
    analyser.setup()
    faces = FaceConfig(backend="builtin", detect_every=1, upsample=0, detect_batch=8)
    plain = FaceTrackStage(FaceTrackConfig(faces=faces), analyser=analyser).process(clips["occlusion"].path)
    batching = _Batching(analyser)
    batched = FaceTrackStage(FaceTrackConfig(faces=faces), analyser=batching).process(clips["occlusion"].path)
    assert batched.error is None
    frames = [k for batch in batching.batches for k in batch]
    assert frames == list(range(batched.n_tracking_frames))
    assert all(len(b) == 8 for b in batching.batches[:-1]) and 1 <= len(batching.batches[-1]) <= 8
    assert batched.stats == plain.stats
    assert [t.frames for t in batched.tracks] == [t.frames for t in plain.tracks]
    assert np.allclose(batched.main_boxes, plain.main_boxes)
