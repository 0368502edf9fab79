"""Tests of job inputs: folders, prefixes and JSON/JSONL manifests."""

from __future__ import annotations

import json

import pytest

from facetrack import storage
from facetrack.manifest import read_inputs


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_folder_ids_are_relative_paths_and_extensions_filter(tmp_path):
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "sub" / "b.MOV")
    touch(tmp_path / "notes.txt")
    first = read_inputs(str(tmp_path))
    second = read_inputs(str(tmp_path) + "/")
    assert [v.id for v in first.videos] == ["a.mp4", "sub/b.MOV"]
    assert [v.id for v in second.videos] == [v.id for v in first.videos]  # stable ids
    assert first.skipped_extension == 1
    only_mov = read_inputs(str(tmp_path), extensions=["mov"])
    assert [v.id for v in only_mov.videos] == ["sub/b.MOV"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(storage.NotFoundError, match="no such"):
        read_inputs(str(tmp_path / "nope"))


def test_jsonl_manifest_bad_lines_become_errors_and_duplicates_are_dropped(tmp_path):
    lines = [
        json.dumps({"id": "v1", "video": "clips/one.mp4"}),
        "{not json",
        json.dumps({"id": "v2"}),
        json.dumps({"id": "v1", "video": "clips/again.mp4"}),
        "",
        json.dumps({"video": "/abs/three.mp4"}),
        json.dumps({"id": 7, "video": "s3://bucket/seven.mp4"}),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    inputs = read_inputs(str(manifest))
    assert [(v.id, v.uri) for v in inputs.videos] == [
        ("v1", str(tmp_path / "clips" / "one.mp4")),
        ("/abs/three.mp4", "/abs/three.mp4"),
        ("7", "s3://bucket/seven.mp4"),
    ]
    assert [e.id for e in inputs.errors] == ["m.jsonl:2", "m.jsonl:3"]
    assert "not valid JSON" in inputs.errors[0].error and "'video'" in inputs.errors[1].error
    assert inputs.duplicate_ids == ["v1"]


def test_json_list_manifest_with_video_root(tmp_path):
    manifest = tmp_path / "bench.json"
    manifest.write_text(json.dumps([{"id": "0", "video": "DFEW/1.mp4", "caption": "c"}]))
    inputs = read_inputs(str(manifest), video_root="s3://videos/root")
    assert [(v.id, v.uri) for v in inputs.videos] == [("0", "s3://videos/root/DFEW/1.mp4")]
    (tmp_path / "bad.json").write_text('{"id": 1}')
    with pytest.raises(ValueError, match="must hold a list"):
        read_inputs(str(tmp_path / "bad.json"))


def test_single_video_input(tmp_path):
    touch(tmp_path / "clip.mp4")
    inputs = read_inputs(str(tmp_path / "clip.mp4"))
    assert [(v.id, v.uri) for v in inputs.videos] == [("clip.mp4", str(tmp_path / "clip.mp4"))]


def test_a_record_with_its_own_id_is_kept_whatever_its_extension(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"id": "named", "video": "clip.webm"})
        + "\n"
        + json.dumps({"video": "other.webm"})
        + "\n"
        + json.dumps({"id": "plain", "video": "a.mp4"})
        + "\n"
    )
    inputs = read_inputs(str(manifest), extensions=["mp4"])
    assert [v.id for v in inputs.videos] == ["named", "plain"]
    assert inputs.skipped_extension == 1 and inputs.errors == []
