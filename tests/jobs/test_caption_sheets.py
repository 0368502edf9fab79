"""A contact sheet that cannot be written is a warning on its row, never the loss of the video's caption."""

from __future__ import annotations

import json

import pytest

from facetrack import storage

pytest.importorskip("dlib")


def test_unwritable_sheet_keeps_the_tracked_row(archive, tmp_path, monkeypatch):
    from facetrack.config import load_config
    from facetrack.faces.stage import FaceTrackConfig, FaceTrackStage
    from jobs.caption import track_rows

    stage = FaceTrackStage(load_config(FaceTrackConfig, None, ["video.num_frames=8"]))
    stage.setup()
    row = {"id": "clips/sample-002-cut.mp4", "video": str(archive / "clips" / "sample-002-cut.mp4")}
    write_bytes = storage.write_bytes

    def full_disk(uri, data):
        if "/sheets/" in str(uri):
            raise storage.StorageError(f"{uri}: no space left on device")
        return write_bytes(uri, data)

    monkeypatch.setattr(storage, "write_bytes", full_disk)
    [out] = track_rows(stage, row, str(tmp_path / "out"), sheets=True, frame_size=112)
    assert out["error"] == "" and out["frames"] and json.loads(out["main_track"])["n_frames"] > 0
    [warning] = json.loads(out["warnings"])
    assert warning.startswith("sheet: StorageError") and "no space left on device" in warning

    monkeypatch.setattr(storage, "write_bytes", write_bytes)
    [again] = track_rows(stage, row, str(tmp_path / "out"), sheets=True, frame_size=112)
    assert json.loads(again["warnings"]) == [] and (tmp_path / "out" / "sheets" / "clips").is_dir()
