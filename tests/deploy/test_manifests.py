"""deploy/: every YAML parses, and carries the fields Ray, KubeRay and the cluster launcher require, token
authentication included."""

import re
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _docs(name):
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]


def _kind(name, kind):
    (doc,) = [d for d in _docs(name) if d.get("kind") == kind]
    return doc


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_parses(path):
    assert _docs(path.name)


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_kubernetes_objects_have_api_version_kind_and_name(name):
    for doc in _docs(name):
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


def _check_cluster_spec(spec):
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    pods = [head["template"]["spec"]]
    assert head["template"]["spec"]["containers"][0]["image"]
    groups = spec["workerGroupSpecs"]
    for g in groups:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert g["template"]["spec"]["containers"][0]["image"]
        pods.append(g["template"]["spec"])
    gpu = [g for g in groups if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"].get("limits", {})]
    assert gpu, "a worker group with nvidia.com/gpu limits"
    assert int(gpu[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert "persistentVolumeClaim" in volumes[mounts["/data"]]
        env = {e["name"] for e in pod["containers"][0]["env"]}
        assert "MLFLOW_TRACKING_URI" in env


def _check_token_auth(spec):
    """KubeRay (>= 1.5.1) turns Ray's token authentication on with ``authOptions.mode: token`` (Ray >= 2.52): it
    makes the token Secret and sets RAY_AUTH_MODE and RAY_AUTH_TOKEN on every Ray container. No container may
    override RAY_AUTH_MODE (to ``disabled`` or anything else)."""
    assert spec["authOptions"]["mode"] == "token"
    assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52)
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}, names


def test_raycluster_has_head_cpu_and_gpu_groups_shm_and_shared_data():
    rc = _kind("kuberay-raycluster.yaml", "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    _check_cluster_spec(rc["spec"])
    _check_token_auth(rc["spec"])
    claim = _kind("kuberay-raycluster.yaml", "PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]


def test_rayjob_runs_wcscan_on_its_own_cluster():
    job = _kind("kuberay-rayjob.yaml", "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert "wcscan" in job["spec"]["entrypoint"]
    assert "rayClusterSpec" in job["spec"] or "clusterSelector" in job["spec"]
    if "rayClusterSpec" in job["spec"]:
        _check_cluster_spec(job["spec"]["rayClusterSpec"])
        _check_token_auth(job["spec"]["rayClusterSpec"])
    # The job's own runtime env must not switch authentication off either.
    assert "RAY_AUTH_MODE" not in job["spec"].get("runtimeEnvYAML", "")


def test_cluster_launcher_names_its_node_types():
    (cfg,) = _docs("cluster-launcher.yaml")
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type"):
        assert key in cfg
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    for name, t in types.items():
        assert "resources" in t and "node_config" in t
        if name != cfg["head_node_type"]:
            assert t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
    assert any("pip install" in c for c in cfg["setup_commands"])


def test_cluster_launcher_starts_every_node_with_the_same_token():
    (cfg,) = _docs("cluster-launcher.yaml")
    # The token from `ray get-auth-token --generate` on the user's machine goes to the same path on every node ...
    mounts = cfg["file_mounts"]
    remote = [r for r in mounts if r.endswith("/.ray/auth_token")]
    assert remote and mounts[remote[0]] == "~/.ray/auth_token", mounts
    # ... and every `ray start`, head and workers, runs with token authentication on.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts), cfg[key]


@pytest.mark.parametrize("path", sorted(DEPLOY.iterdir()), ids=lambda p: p.name)
def test_nothing_in_deploy_turns_token_authentication_off(path):
    text = path.read_text()
    assert not re.search(r"RAY_AUTH_MODE\W{0,6}disabled", text, re.IGNORECASE)
    assert not re.search(r"mode:\s*[\"']?disabled", text)


def test_dockerfile_installs_torch_before_the_package():
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.splitlines()[[i for i, l in enumerate(text.splitlines()) if l.startswith("FROM")][0]] == "FROM python:3.11-slim"
    assert text.index("RUN pip install \"torch") < text.index("RUN pip install .")


def test_readme_documents_job_submission_and_the_mlflow_server():
    text = (DEPLOY / "README.md").read_text()
    assert "ray job submit --address http://127.0.0.1:8265 --working-dir . -- wcscan run --config demo" in text
    # Token authentication: the token, the client's mode, the other token sources, KubeRay's authOptions.
    for step in ("ray get-auth-token --generate", "export RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN_PATH",
                 "export RAY_AUTH_TOKEN=", "authOptions", "Missing authentication token"):
        assert step in text, step
    assert "mlflow server --backend-store-uri postgresql://" in text and "--artifacts-destination s3://" in text
