"""Every cluster definition parses, says how to launch it, and names what the caption job needs."""

from __future__ import annotations

import json
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
    # KubeRay injects RAY_AUTH_MODE and RAY_AUTH_TOKEN (from the Secret's key `auth_token`) into every pod.
    assert cfg["spec"]["authOptions"] == {"mode": "token", "secretName": "facetrack-ray-token"}


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


KUBERAY = ("kuberay-raycluster.yaml", "kuberay-rayjob-caption.yaml")


def _cluster_spec(name: str) -> dict:
    spec = load(name)["spec"]
    return spec.get("rayClusterSpec", spec)


def _images() -> dict[str, set[str]]:
    images = {"ray-cluster.yaml": {load("ray-cluster.yaml")["docker"]["image"]}}
    for name in KUBERAY:
        spec = _cluster_spec(name)
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        images[name] = {c["image"] for g in groups for c in _containers(g)}
    return images


def test_every_cluster_file_names_one_pinned_image_from_a_registry() -> None:
    images = _images()
    (image,) = set().union(*images.values())
    registry, _, rest = image.partition("/")
    name, _, tag = rest.rpartition(":")
    assert "." in registry and name and tag and tag != "latest", image


def test_every_cluster_file_names_the_pinned_ray_version() -> None:
    import ray

    for name in KUBERAY:
        assert _cluster_spec(name)["rayVersion"] == ray.__version__
    pins = (CLUSTER.parent / "infra" / "constraints.txt").read_text().splitlines()
    assert f"ray=={ray.__version__}" in pins
    assert f"ray[data,train,default]=={ray.__version__}" in (CLUSTER.parent / "pyproject.toml").read_text()


def test_ray_up_file_passes_the_wheels_schema_and_rays_own_config_preparation() -> None:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = load("ray-cluster.yaml")
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(cfg))
    broken = {**cfg, "available_node_types": {"head": {"node_config": {}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"


def test_ray_up_gives_every_node_the_token_an_instance_profile_and_a_gpu_image() -> None:
    cfg = load("ray-cluster.yaml")
    token = "~/.ray/auth_token"
    assert cfg["file_mounts"] == {token: token}
    assert f"chmod 600 {token}" in cfg["setup_commands"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts
        assert all("RAY_AUTH_MODE=token" in c and "--object-spilling-directory" in c for c in starts)
    for name, node in cfg["available_node_types"].items():
        node_config = node["node_config"]
        assert node_config["IamInstanceProfile"]["Name"], name
        # The Deep Learning Base GPU AMI (R580+ driver), resolved by EC2 at launch; never Ray's default.
        image = node_config["ImageId"]
        assert image == f"resolve:ssm:{DLAMI_PARAMETER}" or image.startswith("ami-"), name


def test_kuberay_gpu_pods_are_scheduled_on_gpu_nodes_with_cache_and_ray_volumes() -> None:
    for name in KUBERAY:
        spec = _cluster_spec(name)
        assert spec["authOptions"]["mode"] == "token" and spec["autoscalerOptions"]
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            mounts = {m["mountPath"] for c in _containers(group) for m in c.get("volumeMounts", [])}
            assert "/tmp/ray" in mounts, name
            pod = group["template"]["spec"]
            if any("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(group)):
                assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
                assert "/models" in mounts
                claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
                assert claims, name


def test_kuberay_job_has_a_deadline_a_backoff_and_the_runtime_envs_settings() -> None:
    spec = load("kuberay-rayjob-caption.yaml")["spec"]
    assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 1
    carried = yaml.safe_load(spec["runtimeEnvYAML"])
    assert carried["env_vars"] == load("runtime_env.yaml")["env_vars"]


def test_dockerfile_installs_the_lock_before_the_source_on_a_matching_cuda_base_as_non_root() -> None:
    import torch

    root = CLUSTER.parent
    lines = [line.strip() for line in (root / "infra" / "Dockerfile").read_text().splitlines()]
    first_source = next(i for i, line in enumerate(lines) if line.startswith("COPY facetrack"))
    lock_install = next(i for i, line in enumerate(lines) if "-c infra/constraints.txt" in line)
    assert lock_install < first_source
    cuda = next(line for line in lines if line.startswith("ARG CUDA_VERSION=")).split("=")[1]
    assert torch.version.cuda is None or cuda.startswith(torch.version.cuda)
    assert sum(line.startswith("FROM ") for line in lines) >= 2
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    (tag,) = _images()["ray-cluster.yaml"]
    assert f"-t {tag} " in lines[0]
    ignored = (root / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" or "*" in ignored
