"""A head and two worker nodes started with the start commands of cluster/ray-cluster.yaml, token auth on.

The commands are read from the YAML, not retyped: only what the launcher itself fills in is substituted
(the head's address, ports on this machine, each node type's resources, folders). The token travels as
the YAML's file_mounts say (the client's ~/.ray/auth_token copied to every node's home) and its
setup_commands make it owner-only. A client without the token is refused.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mount_token(home: Path, client_home: Path) -> None:
    """Do what the launcher does for this node: file_mounts, then setup_commands, with ~ as ``home``."""
    for dest, src in CONFIG["file_mounts"].items():
        target = home / dest.removeprefix("~/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(client_home / src.removeprefix("~/"), target)
    for command in CONFIG["setup_commands"]:
        subprocess.run(["bash", "-c", command], env={**os.environ, "HOME": str(home)}, check=True)


def _start_command(key: str, head_port: int, temp: Path, extra: list[str]) -> list[str]:
    """The YAML's `ray start` line for ``key`` with this machine's values substituted in."""
    (line,) = [c for c in CONFIG[key] if "ray start" in c]
    words = shlex.split(line.replace("$RAY_HEAD_IP", "127.0.0.1"))
    env_prefix = [w for w in words[: words.index("ray")] if "=" in w]
    assert env_prefix == ["RAY_AUTH_MODE=token"]
    out = []
    for word in words[words.index("ray") :]:
        if word.startswith("--autoscaling-config"):
            continue  # no cloud provider here: the nodes are started by the test
        word = re.sub(r"^--port=\d+", f"--port={head_port}", word)
        word = re.sub(r"^(--address=127\.0\.0\.1):\d+", rf"\1:{head_port}", word)
        word = re.sub(r"^--object-store-memory=\d+", "--object-store-memory=100000000", word)
        word = re.sub(r"^--object-spilling-directory=.*", f"--object-spilling-directory={temp}/spill", word)
        out.append(word)
    ports = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port"]
    for flag in ports:
        out += [flag, str(free_port())]
    return [*out, "--block", *extra]


def _wait_until_up(proc: subprocess.Popen, log: Path, address: str, client: dict, name: str) -> None:
    """One node at a time: on a small machine, nodes starting together time out."""
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
        if name == "head":
            probe = subprocess.run(
                ["ray", "job", "list", "--address", address], env=client, capture_output=True, timeout=60
            )
            if probe.returncode == 0:
                return
        elif "Ray runtime started" in log.read_text():
            return
        assert time.monotonic() < deadline, f"{name} never came up:\n{log.read_text()[-3000:]}"
        time.sleep(2)


@pytest.fixture
def cluster(tmp_path: Path):
    client_home = tmp_path / "client"
    (client_home / ".ray").mkdir(parents=True)
    token = secrets.token_hex(16)
    (client_home / ".ray" / "auth_token").write_text(token)
    head_port, dashboard = free_port(), free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    nodes = {
        "head": ("head_start_ray_commands", ["--dashboard-port", str(dashboard), "--num-cpus", "0"]),
        "cpu_worker": ("worker_start_ray_commands", ["--num-cpus", "1"]),
        "gpu_worker": ("worker_start_ray_commands", ["--num-cpus", "1", "--resources", '{"fake_gpu": 1}']),
    }
    client = {**base_env, "HOME": str(client_home), "RAY_AUTH_MODE": "token"}
    procs = []
    ray_temp = tempfile.mkdtemp(prefix="ft")  # short: Ray's socket paths have a length limit
    try:
        for name, (key, extra) in nodes.items():
            home = tmp_path / name
            _mount_token(home, client_home)
            if name == "head":
                extra = [*extra, "--temp-dir", ray_temp]
            cmd = _start_command(key, head_port, tmp_path / name, extra)
            env = {**base_env, "HOME": str(home), "RAY_AUTH_MODE": "token"}
            log = open(tmp_path / f"{name}.log", "w")
            proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            procs.append((proc, log))
            _wait_until_up(proc, tmp_path / f"{name}.log", f"http://127.0.0.1:{dashboard}", client, name)
        yield f"http://127.0.0.1:{dashboard}", client, tmp_path
    finally:
        for proc, log in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            log.close()
        shutil.rmtree(ray_temp, ignore_errors=True)


PROBE = (
    "import json, ray; ray.init(); "
    "print('NODES', json.dumps(sorted([n['Resources'] for n in ray.nodes() if n['Alive']], key=str)))"
)


def test_three_nodes_from_the_yaml_with_the_token_distributed_as_the_yaml_says(cluster):
    address, client, tmp = cluster
    for name in ("head", "cpu_worker", "gpu_worker"):
        assert (tmp / name / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600
    submit = ["ray", "job", "submit", "--address", address, "--", "python", "-c", PROBE]
    deadline = time.monotonic() + 240
    while True:
        done = subprocess.run(submit, env=client, capture_output=True, text=True, timeout=120)
        nodes = [json.loads(line[6:]) for line in done.stdout.splitlines() if line.startswith("NODES ")]
        if done.returncode == 0 and nodes and len(nodes[-1]) == 3:
            break
        assert time.monotonic() < deadline, (done.stdout + done.stderr)[-3000:]
        time.sleep(3)
    resources = nodes[-1]
    assert sum(r.get("fake_gpu", 0) for r in resources) == 1
    assert sorted(r.get("CPU", 0) for r in resources) == [0, 1, 1]

    # A client without the token is refused.
    no_token = tmp / "stranger"
    no_token.mkdir()
    refused = subprocess.run(
        ["ray", "job", "list", "--address", address],
        env={**client, "HOME": str(no_token)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()
