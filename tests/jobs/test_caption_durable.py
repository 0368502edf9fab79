"""Rows are durable where they are made: caption actors commit their shards; kills and full disks lose
at most what was in flight."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facetrack import shards, storage

pytest.importorskip("ray")
pytest.importorskip("torch")
pytest.importorskip("dlib")

REPO = Path(__file__).resolve().parents[2]
FAST = ["captioner.max_new_tokens=4", "track.video.num_frames=8", "sheets=false", "batch_size=1"]
ENV = {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}


def video_ids(archive: Path) -> list[str]:
    return sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*.mp4"))


def tracked_batch(archive: Path, out: Path) -> dict[str, np.ndarray]:
    """The tracking stage's rows for two clips of the archive, as the batch a caption actor receives."""
    from facetrack.config import to_dict
    from facetrack.faces.stage import FaceTrackConfig
    from jobs.caption import TrackWorker

    track = to_dict(FaceTrackConfig())
    track["video"]["num_frames"] = 8
    worker = TrackWorker(track, str(out), sheets=False, frame_size=336)
    rows = [r for v in video_ids(archive)[:2] for r in worker({"id": v, "video": str(archive / v)})]
    return {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}


def test_a_caption_actor_commits_its_batch_before_handing_it_on(
    archive, tiny_checkpoint, tmp_path, monkeypatch
):
    from jobs.caption import CaptionActor

    out = tmp_path / "out"
    batch = tracked_batch(archive, out)
    config = {"model": str(tiny_checkpoint), "max_new_tokens": 4}
    actor = CaptionActor(config, out=str(out), fmt="jsonl", rows_per_shard=1, run_id="run1")
    result = actor(batch)

    assert result["committed"].tolist() == [True, True]
    names = sorted(Path(u).name for u in shards.list_shards(str(out)))
    assert names == [f"part-run1-{actor.writer}-00000.jsonl", f"part-run1-{actor.writer}-00001.jsonl"]
    returned = [json.loads(r) for r in result["row"]]
    assert shards.read_rows(str(out)) == returned  # what the driver is told is exactly what is on disk
    assert all(result["committed_at"] >= result["captioned_at"])

    # A shard that cannot be written (a full disk) leaves the rows to the driver, with nothing half-written.
    def full_disk(uri, data):
        raise storage.StorageError(f"{uri}: write failed: No space left on device (the disk is full)")

    monkeypatch.setattr(storage, "write_bytes", full_disk)
    again = actor(batch)
    assert again["committed"].tolist() == [False, False]
    assert [json.loads(r)["id"] for r in again["row"]] == [str(i) for i in batch["id"]]
    assert len(shards.list_shards(str(out))) == 2


def _start(cmd: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, **kw,
    )  # fmt: skip


def _caption_actor_pids() -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path("/proc", pid, "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "CaptionActor" in cmdline and "ray::" in cmdline:
            pids.append(int(pid))
    return pids


def test_sigkill_of_a_caption_worker_mid_run_loses_nothing(archive, tiny_checkpoint, tmp_path):
    """Kill the captioning actor's process once it has committed a batch: Ray restarts it, the job ends."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "jobs.caption", str(archive), "--out", str(out),
        "--model", str(tiny_checkpoint), "--num-cpus", "2", *FAST,
    ]  # fmt: skip
    proc = _start(cmd)
    killed = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not killed:
            committed_by_actor = [u for u in shards.list_shards(str(out)) if u.count("-") >= 4]
            if committed_by_actor:
                for pid in _caption_actor_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.1)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert killed, "no caption actor process was found to kill"
    assert proc.returncode == 0, err[-3000:]
    rows = shards.read_rows(str(out))
    assert sorted(r["id"] for r in rows) == video_ids(archive), "every input id exactly once"
    good = [r for r in rows if not r["error"]]
    assert len(good) >= 3 and all(r["caption"] is not None for r in good)


def _can_mount_tmpfs() -> bool:
    probe = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.skipif(shutil.which("unshare") is None or not _can_mount_tmpfs(), reason="needs user namespaces")
def test_full_disk_mid_run_is_one_line_keeps_what_was_committed_and_the_rerun_completes(
    archive, tiny_checkpoint, tmp_path
):
    """A real full disk: the output on a small tmpfs that fills up once the first rows are committed."""
    disk, kept_out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    args = [
        "-m", "jobs.caption", str(archive), "--out", f"{disk}/out",
        "--model", str(tiny_checkpoint), "--num-cpus", "2", *FAST,
    ]  # fmt: skip
    script = f"""
set -u
mount -t tmpfs -o size=2m none {disk}
{sys.executable} {" ".join(args)} > {tmp_path}/first.out 2> {tmp_path}/first.err &
job=$!
while ! ls {disk}/out/rows/part-* >/dev/null 2>&1; do sleep 0.1; done
dd if=/dev/zero of={disk}/fill bs=4k 2>/dev/null
wait $job; echo $? > {tmp_path}/first.rc
cp -r {disk}/out {kept_out}
"""
    done = subprocess.run(
        ["unshare", "-r", "-m", "bash", "-c", script], cwd=REPO, env={**os.environ, **ENV},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    first_err = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "1", first_err[-3000:]
    assert "Traceback" not in first_err
    line = [x for x in first_err.splitlines() if x.startswith("facetrack caption: cannot write the output")]
    assert len(line) == 1 and "No space left on device" in line[0] and "rows written are kept" in line[0]
    kept = {p.name: p.read_bytes() for p in (kept_out / "rows").iterdir() if not p.name.startswith(".")}
    assert kept, "the rows committed before the disk filled up are kept"

    # The same output, now with room (copied off the full disk): the rerun completes it.
    args[args.index(f"{disk}/out")] = str(kept_out)
    second = subprocess.run(
        [sys.executable, *args], cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    final = kept_out
    for name, data in kept.items():  # committed shards are never rewritten
        assert (final / "rows" / name).read_bytes() == data
    rows = shards.read_rows(str(final))
    assert sorted(r["id"] for r in rows) == video_ids(archive)
    assert not [p for p in (final / "rows").iterdir() if p.name.endswith(storage.TMP_SUFFIX)]


def test_s3_down_beyond_the_retry_budget_then_back_the_rerun_completes_every_video(
    s3_server, s3_bucket, archive, tiny_checkpoint
):
    """Stop the S3 server while rows and contact sheets are being written; restart it; run again."""
    from jobs.caption_report import is_transient

    out = f"s3://{s3_bucket}/out"
    cmd = [
        sys.executable, "-m", "jobs.caption", str(archive), "--out", out, "--model", str(tiny_checkpoint),
        "--num-cpus", "2", *[o for o in FAST if o != "sheets=false"], "sheets=true",
    ]  # fmt: skip
    env = {**ENV, **s3_server.env(), "FACETRACK_STORAGE_RETRY_SECONDS": "4"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not shards.list_shards(out):
            time.sleep(0.2)
        assert proc.poll() is None, "the job ended before the outage"
        s3_server.stop()
        _, err = proc.communicate(timeout=300)
        down_for = time.monotonic()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        if not s3_server.running:
            s3_server.start()
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    assert "cannot write the output" in err and "run the same command to continue" in err
    assert time.monotonic() >= down_for  # the server came back only after the job had given up

    again = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    rows = shards.read_rows(out)
    assert sorted(r["id"] for r in rows) == video_ids(archive), "every input id exactly once"
    failed = {r["id"]: r["error"] for r in rows if r["error"]}
    assert {"clips/corrupt.mp4", "clips/zero.mp4"} <= set(failed)
    assert not [e for e in failed.values() if is_transient(e)], failed  # only the input's own faults remain
    assert len(failed) <= 3, failed
    assert all(r["caption"] for r in rows if not r["error"]), "every good video has its caption"
