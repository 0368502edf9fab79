"""`facetrack submit` runs the real `ray job submit` against a local `ray start` head with token auth."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facetrack import shards

pytest.importorskip("ray")
pytest.importorskip("torch")
pytest.importorskip("dlib")

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path_factory: pytest.TempPathFactory):
    """A `ray start --head --block` process group with token authentication, killed afterwards."""
    if shutil.which("ray") is None:
        pytest.skip("the ray CLI is not installed")
    token = secrets.token_hex(16)
    port, dashboard = free_port(), free_port()
    temp = tmp_path_factory.mktemp("rayhead")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    cmd = [
        "ray", "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
        "--temp-dir", str(temp), "--disable-usage-stats",
        # Its own agent port: the session's embedded Ray (ray_local) may hold the default one.
        "--dashboard-agent-listen-port", str(free_port()),
    ]  # fmt: skip
    log = open(temp / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        # Ready once a trivial job runs: the job server and the head's job agent are both up.
        deadline = time.monotonic() + 180
        probe = ["ray", "job", "submit", "--address", address, "--", "python", "-c", "print('ready')"]
        while True:
            assert proc.poll() is None, (temp / "head.log").read_text()[-3000:]
            ready = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120)
            if ready.returncode == 0:
                break
            assert time.monotonic() < deadline, f"the Ray head never ran a job:\n{ready.stderr[-2000:]}"
            time.sleep(2)
        yield address, token, env
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group at once: SIGTERM waits out a 30 s wind-down
        proc.wait(timeout=60)
        log.close()


def test_submit_caption_job_to_a_token_protected_head(ray_head, tmp_path, tiny_checkpoint, archive):
    address, token, env = ray_head
    out = tmp_path / "out"
    args = [
        # --local-paths: this head runs on this machine, so the test's folders exist on it.
        sys.executable, "-m", "facetrack.cli", "submit", "--local-paths", "--address", address,
        "--submission-id", f"caption-{secrets.token_hex(4)}", "caption", str(archive / "clips"),
        "--out", str(out),
        "--model", str(tiny_checkpoint), "captioner.max_new_tokens=4", "sheets=false",
    ]  # fmt: skip

    # A wrong token is refused: token authentication is on.
    refused = subprocess.run(
        args,
        cwd=REPO,
        env={**env, "RAY_AUTH_TOKEN": "not-the-token"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert (
        "unauthenticated" in refused.stderr.lower()
        or "401" in refused.stderr
        or "token" in refused.stderr.lower()
    )
    assert not out.exists()

    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:]
    assert "succeeded" in logs.lower()
    ids = sorted(p.name for p in (archive / "clips").glob("*.mp4"))
    rows = {r["id"]: r for r in shards.read_rows(str(out))}
    assert sorted(rows) == ids
    assert rows["sample-000-extras.mp4"]["error"] is None and rows["zero.mp4"]["error"]
    assert (out / "summary.json").is_file()


def _dry_run(capsys, *args: str) -> list[str]:
    from facetrack.cli import main

    assert main(["submit", "--dry-run", "--address", "http://head:8265", *args]) == 0
    return shlex.split(capsys.readouterr().out)


def test_dry_run_prints_a_shell_quoted_ray_job_submit_line(capsys):
    words = _dry_run(capsys, "caption", "s3://b/in dir/", "--out", "s3://b/o/", "prompt=two words")
    assert words[1:6] == ["job", "submit", "--address", "http://head:8265", "--working-dir"]
    assert words[words.index("--") :] == [
        "--",
        "python",
        "-m",
        "jobs.caption",
        "s3://b/in dir/",
        "--out",
        "s3://b/o/",
        "prompt=two words",
    ]


def test_environment_pass_through_survives_a_runtime_env_file(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)  # the session's S3 server may have set it
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.internal:9000")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    env_file = tmp_path / "env.yaml"
    env_file.write_text(
        "working_dir: .\nexcludes: [.git]\nenv_vars: {OMP_NUM_THREADS: '1', AWS_REGION: us-east-2}\n"
    )
    words = _dry_run(capsys, "--runtime-env", str(env_file), "caption", "s3://b/in/", "--out", "s3://b/o/")
    env = json.loads(words[words.index("--runtime-env-json") + 1])
    assert env["excludes"] == [".git"] and "working_dir" not in env
    assert env["env_vars"] == {
        "OMP_NUM_THREADS": "1",
        "AWS_REGION": "us-east-2",  # the file's own value wins
        "AWS_ENDPOINT_URL": "http://s3.internal:9000",
        "HF_HUB_OFFLINE": "1",
    }


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["caption", "/data/videos/", "--out", "s3://b/o/"], "a local path"),
        (["caption", "s3://b/in/", "--out", "out/"], "a local output"),
        (["caption", "s3://b/in/", "--out", "s3://b/o/", "--model", "tiny-model/"], "git-ignored"),
        (["caption", "../elsewhere/", "--out", "s3://b/o/"], "outside the working dir"),
    ],
)
def test_paths_the_cluster_will_not_have_are_refused_before_submitting(capsys, args, why):
    from facetrack.cli import main

    with pytest.raises(SystemExit) as refused:
        main(["submit", "--dry-run", *args])
    assert why in str(refused.value) and "s3://" in str(refused.value)
    assert capsys.readouterr().out == ""


def test_uris_model_ids_and_local_paths_on_request_are_accepted(capsys):
    words = _dry_run(capsys, "caption", "s3://b/in/", "--out", "s3://b/o/", "--model", "org/Model-7B")
    assert words[-2:] == ["--model", "org/Model-7B"]
    words = _dry_run(capsys, "--local-paths", "caption", "/data/in/", "--out", "out/")
    assert words[-3:] == ["/data/in/", "--out", "out/"]
