"""The caption job end to end: composed videos in a real S3 server -> Ray Data -> caption rows in S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facetrack import shards, storage

pytest.importorskip("ray")
pytest.importorskip("torch")
pytest.importorskip("dlib")

REPO = Path(__file__).resolve().parents[2]
FAST = ["captioner.max_new_tokens=4", "batch_size=4", "rows_per_shard=1", "track.video.num_frames=8"]


def upload(folder: Path, prefix: str) -> list[str]:
    ids = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            storage.write_bytes(storage.join(prefix, rel), path.read_bytes())
            if path.suffix == ".mp4":
                ids.append(rel)
    return sorted(ids)


def job_config(source: str, out: str, model: Path, extra: list[str] = ()):
    from facetrack.config import load_config
    from jobs.caption import CaptionJobConfig

    base = {"input": source, "out": out, "captioner": {"model": str(model)}}
    return load_config(CaptionJobConfig, None, [*FAST, *extra], base=base)


def check_rows(out: str, ids: list[str]) -> list[dict]:
    rows = shards.read_rows(out)
    assert sorted(r["id"] for r in rows) == ids, "every input id exactly once"
    return rows


def test_archive_in_s3_is_captioned_into_s3(s3_server, s3_bucket, ray_local, archive, tiny_checkpoint):
    from jobs.caption import run

    source = f"s3://{s3_bucket}/videos"
    out = f"s3://{s3_bucket}/captions"
    ids = upload(archive, source)
    summary = run(job_config(source, out, tiny_checkpoint))

    rows = {r["id"]: r for r in check_rows(out, ids)}
    for vid in ("clips/sample-000-extras.mp4", "clips/sample-001-occlusion.mp4", "clips/sample-002-cut.mp4"):
        row = rows[vid]
        assert row["error"] is None and isinstance(row["caption"], str), row
        assert row["main_track"]["n_frames"] > 0 and row["model"] and row["prompt"]
        assert row["timings"]["detect_embed"] > 0 and row["timings"]["caption"] > 0
        assert storage.exists(f"{out}/sheets/{vid}.png")
    # A shot with no face is captioned from its frames alone.
    assert rows["empty-shots/sample-000-no-face.mp4"]["error"] is None
    assert rows["empty-shots/sample-000-no-face.mp4"]["main_track"] is None
    assert "not a readable video" in rows["clips/corrupt.mp4"]["error"]
    assert "empty file" in rows["clips/zero.mp4"]["error"]
    assert rows["clips/zero.mp4"]["caption"] is None

    assert summary["counts"]["done"] == 4 and summary["counts"]["failed"] == 2
    assert summary["counts"]["skipped_extension"] == 1
    assert sum(summary["counts"]["failed_by_reason"].values()) == 2
    written = json.loads(storage.read_text(f"{out}/summary.json"))
    assert written["counts"] == summary["counts"] and written["stage_seconds"]["caption"] > 0

    # The same command again skips everything and writes nothing new.
    again = run(job_config(source, out, tiny_checkpoint))
    assert again["counts"]["skipped_already_done"] == len(ids) and again["counts"]["done"] == 0
    check_rows(out, ids)
    # summary.json says what the output holds in total; each run keeps its own summary.
    totals = json.loads(storage.read_text(f"{out}/summary.json"))["output"]
    assert totals == {**summary["output"], "rows": len(ids)} and totals["done"] == 4
    assert totals["failed_by_reason"] == summary["counts"]["failed_by_reason"]
    runs = {u.rsplit("/", 1)[1]: u for u in storage.list_uris(f"{out}/runs")}
    assert sorted(runs) == sorted([f"{summary['run_id']}.json", f"{again['run_id']}.json"])
    assert json.loads(storage.read_text(runs[f"{summary['run_id']}.json"]))["counts"] == summary["counts"]


def test_manifest_bad_lines_are_error_rows(ray_local, archive, tiny_checkpoint, tmp_path):
    from jobs.caption import run

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"id": "a", "video": str(archive / "clips" / "sample-002-cut.mp4")})
        + "\n{broken\n"
        + json.dumps({"id": "missing", "video": str(tmp_path / "nope.mp4")})
        + "\n"
    )
    out = str(tmp_path / "out")
    summary = run(job_config(str(manifest), out, tiny_checkpoint, ["sheets=false", "format=parquet"]))
    rows = {r["id"]: r for r in check_rows(out, ["a", "m.jsonl:2", "missing"])}
    assert rows["a"]["error"] is None and rows["a"]["caption"] is not None
    assert rows["m.jsonl:2"]["error"].startswith("input: bad manifest record")
    assert rows["missing"]["error"] and rows["missing"]["caption"] is None
    assert summary["counts"]["done"] == 1 and summary["counts"]["failed"] == 2
    assert all(u.endswith(".parquet") for u in shards.list_shards(out))
    # A rerun does the transient failure again (the missing file may appear), never the bad record.
    again = run(job_config(str(manifest), out, tiny_checkpoint, ["sheets=false", "format=parquet"]))
    assert again["counts"]["retried"] == 1 and again["counts"]["skipped_already_done"] == 2
    check_rows(out, ["a", "m.jsonl:2", "missing"])
    assert again["output"] == {**summary["output"], "rows": 3}
    none = run(job_config(str(manifest), out, tiny_checkpoint, ["sheets=false", "retry=none"]))
    assert none["counts"]["retried"] == 0 and none["counts"]["skipped_already_done"] == 3


def test_failures_are_classified_permanent_or_transient():
    from jobs.caption_report import is_transient, should_retry

    permanent = [
        "input: bad manifest record m.jsonl:2: needs a 'video' string",
        "track: x.mp4: not a readable video (Invalid data found)",
        "track: x.mp4: empty file",
    ]
    transient = [
        "track: StorageError: s3://b/x.mp4: connection refused",
        "caption: OutOfMemoryError: CUDA out of memory",
        "track: TimeoutError: read timed out",
    ]
    assert [is_transient(e) for e in permanent + transient] == [False] * 3 + [True] * 3
    assert should_retry(permanent[0], "all") and not should_retry(transient[0], "none")
    with pytest.raises(ValueError, match="retry must be"):
        should_retry(transient[0], "sometimes")


def test_killed_driver_then_rerun_gives_every_id_once(archive, tiny_checkpoint, tmp_path):
    """Kill the job's driver (and its embedded Ray) once the first rows are durable, then run it again."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "jobs.caption", str(archive), "--out", str(out),
        "--model", str(tiny_checkpoint), "--num-cpus", "2", *FAST, "sheets=false", "batch_size=1",
    ]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    ids = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*.mp4"))
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if shards.list_shards(str(out)):
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the job ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    partial = shards.done_ids(str(out))
    assert 0 < len(partial) < len(ids)

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    check_rows(str(out), ids)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["skipped_already_done"] == len(partial)
    assert "captioned" in done.stdout and "summary:" in done.stdout


def test_missing_input_is_a_clear_error(ray_local, tiny_checkpoint, tmp_path, capsys):
    from jobs.caption import main

    assert (
        main([str(tmp_path / "nope"), "--out", str(tmp_path / "out"), "--model", str(tiny_checkpoint)]) == 2
    )
    assert "no such" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_contact_sheet_names_never_collide():
    from jobs.caption import sheet_uri

    names = {sheet_uri("out", i) for i in ("a b", "a_b", "a/b", "a?b", "clip-1")}
    assert len(names) == 5
    assert sheet_uri("out", "clip-1") == "out/sheets/clip-1.png"


def test_unwritable_output_fails_before_ray_starts(archive, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import ray

    from jobs.caption import main

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for an output that cannot be written")

    monkeypatch.setattr(ray, "init", no_ray)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "captions"
    assert main([str(archive), "--out", str(out), "--model", str(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(out) in err and "not a directory" in err
