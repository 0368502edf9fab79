"""Every cluster definition parses, says how to launch it, and names what the caption job needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("path", YAMLS + sorted(CLUSTER.glob("*.sh")), ids=lambda p: p.name)
def test_each_file_starts_with_the_command_that_uses_it(path: Path) -> None:
    lines = path.read_text().splitlines()
    first = lines[1] if lines[0].startswith("#!") else lines[0]
    assert first.startswith("# ") and any(
        word in first for word in ("ray up", "kubectl apply", "facetrack submit", "bash cluster/")
    ), first
    if path.suffix == ".yaml":
        assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_ray_up_cluster_has_cpu_and_gpu_workers_with_bounds() -> None:
    cfg = load("ray-cluster.yaml")
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    for name in ("cpu_worker", "gpu_worker"):
        assert 0 <= types[name]["min_workers"] <= types[name]["max_workers"]
    assert sum(types[n]["max_workers"] for n in ("cpu_worker", "gpu_worker")) <= cfg["max_workers"]
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["head_start_ray_commands"] if "ray start" in c)


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_kuberay_cluster_has_a_gpu_group_and_token_auth() -> None:
    cfg = load("kuberay-raycluster.yaml")
    assert cfg["kind"] == "RayCluster" and cfg["apiVersion"].startswith("ray.io/")
    groups = cfg["spec"]["workerGroupSpecs"]
    gpu = [g for g in groups if any("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(g))]
    assert gpu and all(g["minReplicas"] <= g["maxReplicas"] for g in groups)
    head_env = {e["name"] for e in _containers(cfg["spec"]["headGroupSpec"])[0]["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= head_env


def test_kuberay_job_runs_the_caption_job() -> None:
    cfg = load("kuberay-rayjob-caption.yaml")
    assert cfg["kind"] == "RayJob"
    entry = cfg["spec"]["entrypoint"]
    assert entry.startswith("python -m jobs.caption ") and "--out" in entry
    assert cfg["spec"]["rayClusterSpec"]["workerGroupSpecs"]


def test_caption_job_overrides_in_the_manifests_are_real_settings() -> None:
    """The key=value settings a manifest passes to the job must exist in its config."""
    from facetrack.config import load_config
    from jobs.caption import CaptionJobConfig

    entry = load("kuberay-rayjob-caption.yaml")["spec"]["entrypoint"].split()
    overrides = [w for w in entry if "=" in w and not w.startswith("-")]
    assert overrides
    load_config(CaptionJobConfig, None, overrides, base={"input": "x", "out": "y"})


def test_runtime_env_uses_the_project_as_working_dir() -> None:
    env = load("runtime_env.yaml")
    assert env["working_dir"] == "." and ".git" in env["excludes"]
