"""Clean stops of the caption job: SIGINT and SIGTERM keep what is finished, stop Ray, say how to continue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from facetrack import shards

pytest.importorskip("ray")
pytest.importorskip("dlib")

REPO = Path(__file__).resolve().parents[2]
FAST = ["captioner.max_new_tokens=4", "rows_per_shard=1", "track.video.num_frames=8", "sheets=false"]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path("/proc", pid, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline[:200]}")
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_commits_rows_shuts_ray_down_and_says_how_to_continue(sig, archive, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="ft-ray-")  # short: Ray's socket paths live under it
    cmd = [
        sys.executable, "-m", "jobs.caption", str(archive), "--out", str(out),
        "--model", str(tiny_checkpoint), "--num-cpus", "2", *FAST, "batch_size=1",
    ]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not shards.list_shards(str(out)):
            time.sleep(0.2)
        assert proc.poll() is None, "the job ended before it could be stopped"
        proc.send_signal(sig)  # the driver only, as a terminal or a pod's kubelet would
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == 128 + sig, err[-3000:]
    rows = len(shards.done_ids(str(out)))
    assert rows > 0
    assert f"interrupted: {rows} rows written; run the same command to continue" in err
    assert "Traceback" not in err
    time.sleep(2)
    assert processes_mentioning(ray_tmp) == [], "Ray processes left behind"
