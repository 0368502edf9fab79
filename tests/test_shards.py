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
