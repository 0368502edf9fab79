"""A head and three worker nodes started with the start commands of cluster/ray-cluster.yaml, token auth on.

The commands are read from the YAML, not retyped: only what the launcher itself fills in is substituted
(the head's address, ports on this machine, each node type's resources, folders). The token travels as
the YAML's file_mounts say (the client's ~/.ray/auth_token copied to every node's home) and its
setup_commands make it owner-only. A client without the token is refused.

Two worker nodes offer the tracking CPUs (custom resource ``tracking``), one a custom resource standing
in for a GPU (``caption_gpu``) that the caption actors require. The caption job is submitted with
`facetrack submit` through the real `ray job submit`; it reads an archive and a tiny checkpoint from the
local S3 server and writes its rows there. The nodes hold S3 credentials as an instance profile would
give them; the endpoint reaches the job only through `facetrack submit`'s pass-through. A tracking node
is killed while tracking is under way; the job still finishes with every input id exactly once.
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
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())
TRACK_NODES = ("track_a", "track_b")
# Node name -> (the YAML's start commands, CPUs, custom resources). Each tracking node can hold both
# tracking workers, so the survivor takes over the killed node's worker. Every worker also offers one unit
# of a resource named after it, which tells the nodes apart in Ray's state API (all are 127.0.0.1 here).
NODES = {
    "head": ("head_start_ray_commands", 0, {}),
    "track_a": ("worker_start_ray_commands", 2, {"tracking": 2}),
    "track_b": ("worker_start_ray_commands", 2, {"tracking": 2}),
    "gpu_worker": ("worker_start_ray_commands", 1, {"caption_gpu": 1}),
}


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


def _wait_for_log(proc: subprocess.Popen, log: Path, name: str) -> None:
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in log.read_text():
        assert proc.poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{name} never came up:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


class Cluster:
    """The running nodes: the dashboard address, the client's environment, each node's process."""

    def __init__(self, root: Path, token: str, client: dict[str, str]) -> None:
        self.root, self.token, self.client = root, token, client
        self.address = ""
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    def state(self, resource: str) -> list[dict]:
        """Ray's state API (``/api/v0/<resource>``) through the dashboard, with the token."""
        url = f"{self.address}/api/v0/{resource}?limit=10000&detail=true&timeout=30"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
        return body["data"]["result"]["result"]

    def node_ids(self) -> dict[str, str]:
        """Node name (``head``, ``track_a``, ...) -> Ray node id, for the alive nodes."""
        ids = {}
        for n in self.state("nodes"):
            if n["state"] == "ALIVE":
                names = [k for k in NODES if k in n["resources_total"]]
                names = names or (["head"] if n["is_head_node"] else [])
                ids.update({name: n["node_id"] for name in names})
        return ids

    def kill(self, name: str) -> None:
        """The node dies at once with everything it runs (as a lost machine would)."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)

    def stop(self) -> None:
        for proc in self.procs.values():
            os.killpg(proc.pid, signal.SIGKILL)  # SIGTERM makes each node wind down for ~10 s
        for proc in self.procs.values():
            proc.wait(timeout=60)
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_server):
    """Head and workers from the YAML; the nodes get S3 credentials (as from an instance profile)."""
    root = tmp_path_factory.mktemp("cluster")
    client_home = root / "client"
    (client_home / ".ray").mkdir(parents=True)
    token = secrets.token_hex(16)
    (client_home / ".ray" / "auth_token").write_text(token)
    head_port, dashboard = free_port(), free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    node_env = {k: v for k, v in base_env.items() if k != "AWS_ENDPOINT_URL"}  # only via the job's env
    client = {**base_env, "HOME": str(client_home), "RAY_AUTH_MODE": "token", "HF_HUB_OFFLINE": "1"}
    cluster = Cluster(root, token, client)
    ray_temp = tempfile.mkdtemp(prefix="ft")  # short: Ray's socket paths have a length limit
    try:
        for name, (key, cpus, resources) in NODES.items():
            home = root / name
            _mount_token(home, client_home)
            extra = ["--num-cpus", str(cpus), "--node-ip-address", "127.0.0.1"]
            if name == "head":
                extra += ["--dashboard-port", str(dashboard), "--temp-dir", ray_temp]
            else:
                extra += ["--resources", json.dumps({**resources, name: 1})]
            cmd = _start_command(key, head_port, home, extra)
            env = {**node_env, "HOME": str(home), "RAY_AUTH_MODE": "token"}
            log = open(root / f"{name}.log", "w")
            cluster.logs.append(log)
            cluster.procs[name] = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            # One node at a time: on a small machine, nodes starting together time out.
            _wait_for_log(cluster.procs[name], root / f"{name}.log", name)
        cluster.address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if len(cluster.node_ids()) == len(NODES):
                    break
            except (OSError, KeyError, ValueError):
                pass  # the dashboard is still starting
            assert time.monotonic() < deadline, "not every node registered with the head"
            time.sleep(1)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)


def test_nodes_from_the_yaml_with_the_token_distributed_as_the_yaml_says(cluster):
    for name in NODES:
        assert (cluster.root / name / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600
    nodes = {n["node_id"]: n["resources_total"] for n in cluster.state("nodes") if n["state"] == "ALIVE"}
    ids = cluster.node_ids()
    assert nodes[ids["head"]].get("CPU", 0) == 0
    assert nodes[ids["gpu_worker"]]["caption_gpu"] == 1 and "tracking" not in nodes[ids["gpu_worker"]]
    assert [nodes[ids[n]]["tracking"] for n in TRACK_NODES] == [2, 2]

    # A client without the token is refused, by the CLI and by the dashboard's HTTP API.
    stranger = cluster.root / "stranger"
    stranger.mkdir(exist_ok=True)
    refused = subprocess.run(
        ["ray", "job", "list", "--address", cluster.address],
        env={**cluster.client, "HOME": str(stranger)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(f"{cluster.address}/api/v0/nodes", timeout=60)
    assert http.value.code == 401


def _upload_inputs(root: Path, bucket: str) -> list[str]:
    """Composed clips and a tiny checkpoint (made by `facetrack tiny-model`) into the bucket."""
    from facetrack import storage
    from facetrack.cli import main
    from facetrack.samples import write_samples

    write_samples(root / "videos", n=8, seconds=1.0, width=256, height=144, kinds=["extras", "cut"])
    assert main(["tiny-model", str(root / "tiny"), "--frames", "8"]) == 0
    ids = []
    for folder, prefix in ((root / "videos", "videos"), (root / "tiny", "models/tiny")):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            storage.write_bytes(f"s3://{bucket}/{prefix}/{rel}", path.read_bytes())
            if folder.name == "videos":
                ids.append(rel)
    return ids


def _count(prefix: str) -> int:
    from facetrack import storage

    try:
        return len(list(storage.list_uris(prefix)))
    except storage.NotFoundError:
        return 0


def _actor_nodes(cluster: Cluster, worker: str) -> dict[str, str]:
    """Actor id -> node id of the Ray Data workers whose class is ``worker`` (alive or not)."""
    return {
        a["actor_id"]: a["node_id"]
        for a in cluster.state("actors")
        if worker in (a.get("repr_name") or "") + (a.get("class_name") or "") and a.get("node_id")
    }


def test_caption_job_across_nodes_survives_losing_a_tracking_node(cluster, s3_server, s3_bucket, tmp_path):
    from facetrack import shards, storage

    ids = _upload_inputs(tmp_path, s3_bucket)
    out = f"s3://{s3_bucket}/captions"
    submission = f"caption-{secrets.token_hex(4)}"
    cmd = [
        sys.executable, "-m", "facetrack.cli", "submit", "--address", cluster.address,
        "--submission-id", submission, "caption", f"s3://{s3_bucket}/videos/", "--out", out,
        "--model", f"s3://{s3_bucket}/models/tiny/", "captioner.max_new_tokens=4", "batch_size=2",
        "rows_per_shard=1", "track.video.num_frames=8", "track_workers=2", "progress_seconds=5",
        "track_resources={tracking: 1}", "actor_resources={caption_gpu: 1}",
    ]  # fmt: skip
    node = cluster.node_ids()
    log = open(tmp_path / "submit.log", "w")
    job = subprocess.Popen(cmd, cwd=REPO, env=cluster.client, stdout=log, stderr=subprocess.STDOUT)
    tracked_before: dict[str, str] = {}
    killed, sheets_at_kill = None, 0
    try:
        deadline = time.monotonic() + 300
        while job.poll() is None and killed is None:
            assert time.monotonic() < deadline, (tmp_path / "submit.log").read_text()[-4000:]
            time.sleep(1)
            sheets = _count(f"{out}/sheets")
            tracked_before = _actor_nodes(cluster, "TrackWorker")
            busy = [n for n in TRACK_NODES if node[n] in tracked_before.values()]
            if sheets and busy:  # tracking is under way on the cluster: lose a node that does it
                killed, sheets_at_kill = busy[0], sheets
                cluster.kill(killed)
        try:
            job.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"killed {killed}; the job did not finish:\n" + (tmp_path / "submit.log").read_text()[-5000:]
            )
    finally:
        if job.poll() is None:
            job.kill()
        log.close()
    logs = (tmp_path / "submit.log").read_text()
    assert job.returncode == 0, logs[-4000:]
    assert killed is not None, f"the job ended before a tracking node could be killed:\n{logs[-3000:]}"
    assert "succeeded" in logs.lower()
    assert 0 < sheets_at_kill < len(ids), "the node was lost while tracking was under way"

    # Every input id exactly once in the shards themselves (read_rows would hide a duplicate).
    written = Counter(str(row["id"]) for uri in shards.list_shards(out) for row in shards.read_shard(uri))
    assert sorted(written) == sorted(ids) and set(written.values()) == {1}, written
    rows = shards.read_rows(out)
    assert all(r["error"] is None and isinstance(r["caption"], str) for r in rows), rows
    summary = json.loads(storage.read_text(f"{out}/summary.json"))
    assert summary["counts"]["done"] == len(ids)

    # Tracking ran on the tracking nodes only, the caption actors on the node with the stand-in GPU.
    tracked = {**tracked_before, **_actor_nodes(cluster, "TrackWorker")}
    captioned = _actor_nodes(cluster, "CaptionActor")
    assert tracked and set(tracked.values()) <= {node[n] for n in TRACK_NODES}
    assert node[killed] in tracked_before.values()
    assert captioned and set(captioned.values()) == {node["gpu_worker"]}
