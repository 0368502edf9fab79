"""Rows per character (track.select.mode=all): a dialogue's two people are two rows, a stopped run picks up
the character it had not written, and a video without faces keeps its one row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facetrack import shards
from jobs.caption_characters import COMPLETE, VideoRows, characters_written

FAST = ["captioner.max_new_tokens=4", "batch_size=1", "rows_per_shard=1", "track.video.num_frames=8"]


def char_row(video: str, n: int, of: int, error: str | None = None) -> dict:
    return {
        "id": f"{video}#{n}",
        "video": f"{video}.mp4",
        "error": error,
        "main_track": {"character": n, "of": of},
    }


def test_characters_written_tells_complete_partial_and_other_rows_apart():
    rows = [
        char_row("a", 0, 2),
        char_row("a", 1, 2),
        char_row("b#x", 1, 3),  # an id with '#' of its own
        {"id": "c", "video": "c.mp4", "error": None, "main_track": None},  # no face: the video's own row
        {"id": "d#0", "video": "d.mp4", "error": None, "main_track": {"n_frames": 8}},  # not a character row
    ]
    written = characters_written(rows)
    assert written == {"a": COMPLETE, "b#x": frozenset({"b#x#1"})}


def test_video_rows_report_a_video_once_with_its_last_row():
    rows, skips = VideoRows(), {"b": frozenset({"b#0"})}
    assert rows.row(char_row("a", 0, 2), {}) == []
    assert rows.row(char_row("b", 2, 3, error="caption: oom"), skips) == []
    assert rows.row(char_row("a", 1, 2), {}) == [False]
    assert rows.row(char_row("b", 1, 3), skips) == [True]  # two rows to make (one was written), one failed
    assert rows.row({"id": "c", "error": "track: not a readable video", "main_track": None}, {}) == [True]


@pytest.fixture(scope="module")
def dialogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two people of the same size side by side for 2 s (a dialogue)."""
    pytest.importorskip("dlib")
    from facetrack.faces.scenes import Appearance, Scene, compose_scene

    path = tmp_path_factory.mktemp("dialogue") / "dialogue.mp4"
    scene = Scene(
        "dialogue",
        2.0,
        [
            Appearance("hopper", 0, 2.0, [(0.28, 0.5), (0.3, 0.52)], size=120),
            Appearance("t1-0", 0, 2.0, [(0.72, 0.5), (0.7, 0.48)], size=120),
        ],
        kind="dialogue",
    )
    compose_scene(path, scene)
    return path


def test_select_mode_all_writes_one_row_per_character_and_resumes(
    ray_local, dialogue, archive, tiny_checkpoint, tmp_path
):
    from facetrack.config import load_config
    from jobs.caption import CaptionJobConfig, run

    manifest = tmp_path / "m.jsonl"
    nobody = archive / "empty-shots" / "sample-000-no-face.mp4"
    manifest.write_text(
        json.dumps({"id": "talk", "video": str(dialogue)})
        + "\n"
        + json.dumps({"id": "nobody", "video": str(nobody)})
    )
    out = str(tmp_path / "out")
    base = {"input": str(manifest), "out": out, "captioner": {"model": str(tiny_checkpoint)}}

    def job():
        return run(load_config(CaptionJobConfig, None, [*FAST, "track.select.mode=all"], base=base))

    summary = job()
    rows = {r["id"]: r for r in shards.read_rows(out)}
    assert sorted(rows) == ["nobody", "talk#0", "talk#1"]
    assert rows["nobody"]["main_track"] is None
    first, second = rows["talk#0"]["main_track"], rows["talk#1"]["main_track"]
    assert (first["character"], first["of"], first["main"]) == (0, 2, True)
    assert (second["character"], second["of"], second["main"]) == (1, 2, False)
    assert first["margin"] is not None and first["margin"] == second["margin"]
    assert first["track_id"] != second["track_id"]
    assert all(r["caption"] is not None and r["error"] is None for r in rows.values())
    tracked = [r for r in rows.values() if "track_total" in r["timings"]]
    assert sorted(r["id"] for r in tracked) == ["nobody", "talk#0"], "a video's tracking time counts once"
    assert summary["counts"]["done"] == 3 and summary["counts"]["videos"] == 2

    # A run stopped after the first character: its shard is there, the second's is not.
    [lost] = [u for u in shards.list_shards(out) if "talk#1" in Path(u).read_text()]
    Path(lost).unlink()
    again = job()
    assert again["counts"]["done"] == 1 and again["counts"]["skipped_already_done"] == 1
    assert again["counts"]["videos"] == 1
    ids = [r["id"] for r in shards.read_rows(out)]
    assert sorted(ids) == ["nobody", "talk#0", "talk#1"], "every character exactly once"

    done = job()
    assert done["counts"]["done"] == 0 and done["counts"]["skipped_already_done"] == 2
