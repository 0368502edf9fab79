"""Tests of atomic output shards and resume bookkeeping."""

from __future__ import annotations

import pytest

from facetrack import shards, storage
from facetrack.types import CaptionRow


def rows(n, start=0):
    return [
        CaptionRow(
            id=f"v{i}", video=f"v{i}.mp4", caption="c", main_track={"track_id": 1}, timings={"t": 0.5}
        ).to_dict()
        for i in range(start, start + n)
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_rows_round_trip_in_whole_shards(tmp_path, fmt):
    out = str(tmp_path / "out")
    with shards.ShardWriter(out, fmt=fmt, rows_per_shard=4) as writer:
        writer.add_many(rows(10))
    assert len(writer.shards_written) == 3 and writer.rows_written == 10
    back = shards.read_rows(out)
    assert back == rows(10)
    assert shards.done_ids(out) == {f"v{i}" for i in range(10)}


def test_a_failing_write_leaves_no_partial_shard(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    writer = shards.ShardWriter(out, rows_per_shard=100)
    writer.add_many(rows(3))
    writer.flush()

    def boom(uri, data):
        raise OSError("disk full")

    monkeypatch.setattr(storage, "write_bytes", boom)
    writer.add_many(rows(2, start=3))
    with pytest.raises(OSError):
        writer.flush()
    monkeypatch.undo()
    assert shards.done_ids(out) == {"v0", "v1", "v2"}
    assert all(not p.name.startswith(".") for p in (tmp_path / "out" / "rows").iterdir())


def test_time_based_flush_and_empty_output(tmp_path):
    out = str(tmp_path / "out")
    assert shards.done_ids(out) == set()
    writer = shards.ShardWriter(out, rows_per_shard=1000, flush_seconds=0.0)
    writer.add(rows(1)[0])
    assert len(writer.shards_written) == 1
    with pytest.raises(ValueError, match="unknown shard format"):
        shards.ShardWriter(out, fmt="csv")  # type: ignore[arg-type]


def test_a_row_committed_twice_is_read_once_and_success_wins(tmp_path):
    out = str(tmp_path / "out")
    failed = dict(rows(1)[0], caption=None, error="track: TimeoutError: slow")
    for run_id, batch in (("r1", [failed, *rows(1, start=1)]), ("r2", rows(2)), ("r3", [failed])):
        with shards.ShardWriter(out, run_id=run_id) as writer:
            writer.add_many(batch)
    back = shards.read_rows(out)
    assert sorted(r["id"] for r in back) == ["v0", "v1"]
    assert all(r["error"] is None for r in back)


def test_stale_temporary_shards_are_removed_and_whole_shards_kept(tmp_path):
    out = str(tmp_path / "out")
    with shards.ShardWriter(out, run_id="r1") as writer:
        writer.add_many(rows(2))
    folder = tmp_path / "out" / "rows"
    stale = folder / f".part-r0-00000.jsonl.0123abcd{storage.TMP_SUFFIX}"
    stale.write_text('{"id": "half')
    removed = shards.clean_stale_temp(out)
    assert removed == [str(stale)] and not stale.exists()
    assert shards.done_ids(out) == {"v0", "v1"}
    assert shards.clean_stale_temp(str(tmp_path / "nothing-here")) == []


def test_an_unwritable_output_is_one_line_naming_it_and_the_cause(tmp_path):
    assert shards.check_writable(str(tmp_path / "new" / "out")) is None
    assert not (tmp_path / "new").exists()  # the probe and the folders made for it are removed
    (tmp_path / "old" / "rows").mkdir(parents=True)
    assert shards.check_writable(str(tmp_path / "old")) is None
    assert list((tmp_path / "old" / "rows").iterdir()) == []
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    problem = shards.check_writable(str(blocker / "out"))
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"cannot write the output {blocker / 'out'}")
    assert "not a directory" in problem
