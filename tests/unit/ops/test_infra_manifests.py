"""Every manifest under infra/ parses, and agrees with the CLI and the secure defaults.

Images, commands and ports are checked against the code they deploy: entrypoints must be real
``bratslab`` commands (resolved by the Typer app itself), job specs they name must exist, the
dashboard port must be the one ``bratslab submit`` defaults to, and nothing may be published
beyond loopback / ClusterIP.
"""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import pytest
import yaml

from bratslab.app.main import command_tree
from bratslab.jobs import client as jc
from bratslab.jobs import entrypoint as ep

REPO = Path(__file__).resolve().parents[3]
INFRA = REPO / "infra"
KUBERAY = INFRA / "kuberay"
DOCKERFILES = sorted(
    p for p in (INFRA / "docker").glob("Dockerfile.*") if p.suffix != ".dockerignore"
)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kind(path: Path, kind: str) -> dict:
    found = [d for d in _docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}"
    return found[0]


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _assert_bratslab_command(command: str, where: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == "bratslab", f"{where}: {command!r} is not a bratslab command"
    path = ep.resolve_command(command_tree(), argv[1:])  # raises naming the unknown command
    if path in {("train",), ("sweep",)}:
        spec = argv[len(path) + 1]
        assert (REPO / spec).is_file(), f"{where}: job spec {spec} is not in the repository"


def test_every_yaml_manifest_parses():
    files = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])
    assert len(files) >= 4
    for f in files:
        assert _docs(f), f"{f} is empty"


def test_dashboard_port_matches_the_submit_default():
    cluster = _kind(KUBERAY / "raycluster.yaml", "RayCluster")
    head = _containers(cluster["spec"]["headGroupSpec"]["template"])[0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["dashboard"] == jc.DASHBOARD_PORT
    assert jc.DEFAULT_ADDRESS.endswith(f":{jc.DASHBOARD_PORT}")
    launcher = yaml.safe_load((INFRA / "ray-cluster" / "aws.yaml").read_text())
    head_cmd = " ".join(launcher["head_start_ray_commands"])
    assert f"--dashboard-port={jc.DASHBOARD_PORT}" in head_cmd


def test_dashboard_is_never_exposed_outside_the_cluster():
    for path in (KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml"):
        for doc in _docs(path):
            text = yaml.safe_dump(doc)
            assert "LoadBalancer" not in text and "NodePort" not in text, path.name
            assert doc.get("kind") != "Ingress", path.name
    cluster = _kind(KUBERAY / "raycluster.yaml", "RayCluster")
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    policy = _kind(KUBERAY / "raycluster.yaml", "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": "bratslab"}
    launcher = yaml.safe_load((INFRA / "ray-cluster" / "aws.yaml").read_text())
    assert "--dashboard-host=127.0.0.1" in " ".join(launcher["head_start_ray_commands"])
    for rule in launcher["provider"]["security_group"]["IpPermissions"]:
        for ip_range in rule["IpRanges"]:
            assert ip_range["CidrIp"] != "0.0.0.0/0"


def _ray_pods(cluster: dict) -> list[tuple[str, dict]]:
    spec = cluster["spec"]
    pods = [("head", spec["headGroupSpec"]["template"])]
    pods += [(g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]
    return pods


def test_token_auth_through_kuberay_auth_options_and_on_every_node():
    cluster = _kind(KUBERAY / "raycluster.yaml", "RayCluster")
    job = _kind(KUBERAY / "rayjob.yaml", "RayJob")
    # KubeRay sets RAY_AUTH_MODE/RAY_AUTH_TOKEN on every Ray container and the autoscaler from
    # this Secret, and authenticates its own dashboard polling with it.
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": "bratslab-ray-token"}
    containers = [(g, c) for g, t in _ray_pods(cluster) for c in _containers(t)]
    containers.append(("autoscaler", cluster["spec"]["autoscalerOptions"]))
    for group, c in containers:  # a literal token in a manifest would be a leaked secret
        token = _env(c).get("RAY_AUTH_TOKEN")
        assert token is None or "value" not in token, group
    # The RayJob submitter is not a Ray container: it reads the same Secret itself.
    for c in _containers(job["spec"]["submitterPodTemplate"]):
        env = _env(c)
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        secret = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "bratslab-ray-token", "key": "auth_token"}
    launcher = yaml.safe_load((INFRA / "ray-cluster" / "aws.yaml").read_text())
    for cmd in launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token ray start" in cmd
    assert "~/.ray/auth_token" in launcher["file_mounts"]


def test_network_policy_admits_the_operator_to_the_dashboard_port_only():
    policy = _kind(KUBERAY / "raycluster.yaml", "NetworkPolicy")
    rules = policy["spec"]["ingress"]
    operator = [
        r for r in rules
        if any(p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
               == "kuberay-operator" for p in r["from"])
    ]  # fmt: skip
    assert len(operator) == 1
    assert operator[0]["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert "namespaceSelector" in operator[0]["from"][0]  # the operator runs in its own namespace
    open_rules = [r for r in rules if "ports" not in r]
    for rule in open_rules:  # all ports: only this cluster's pods and labelled clients
        for peer in rule["from"]:
            assert "namespaceSelector" not in peer and "ipBlock" not in peer


def test_stores_come_from_s3_into_a_node_local_cache():
    cluster = _kind(KUBERAY / "raycluster.yaml", "RayCluster")
    for group, template in _ray_pods(cluster):
        c = _containers(template)[0]
        env = _env(c)
        cache = env["BRATSLAB_STORE_CACHE"]["value"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        mount = next(m for m in mounts if cache.startswith(m + "/"))
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert "emptyDir" in volumes[mounts[mount]], group  # node-local, not the shared volume
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "bratslab-s3", (group, key)
    launcher = yaml.safe_load((INFRA / "ray-cluster" / "aws.yaml").read_text())
    assert any("BRATSLAB_STORE_CACHE=" in o for o in launcher["docker"]["run_options"])
    for name, node in launcher["available_node_types"].items():
        assert node["node_config"]["IamInstanceProfile"]["Arn"], name  # S3 without stored keys
    assert "AWS_SECRET_ACCESS_KEY" not in (INFRA / "ray-cluster" / "aws.yaml").read_text()


def test_gpu_worker_group_autoscales_and_images_match_the_dockerfiles():
    cluster = _kind(KUBERAY / "raycluster.yaml", "RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    worker = _containers(gpu["template"])[0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    tags = {f.suffix.lstrip(".") for f in DOCKERFILES}
    assert tags == {"cpu", "cuda"}
    for name, template in _ray_pods(cluster):
        for c in _containers(template):
            image_tag = c["image"].rsplit(":", 1)[1]
            assert image_tag in tags, f"{name}: {c['image']} is built by no Dockerfile"
            assert image_tag == ("cuda" if name == "gpu" else "cpu"), name
        sec = template["spec"]["securityContext"]
        assert sec["runAsNonRoot"] is True and sec["runAsUser"] != 0


def test_rayjob_entrypoint_is_a_real_bratslab_command():
    job = _kind(KUBERAY / "rayjob.yaml", "RayJob")
    _assert_bratslab_command(job["spec"]["entrypoint"], "rayjob.yaml")
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    cluster = _kind(KUBERAY / "raycluster.yaml", "RayCluster")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]


def test_resolve_command_rejects_what_is_not_a_command():
    with pytest.raises(Exception, match="not a command"):
        _assert_bratslab_command("bratslab trian jobs/smoke.yaml", "test")


def _dockerfile_steps(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            steps.append((instr.upper(), rest.strip()))
    return steps


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_torch_first_then_the_project_as_non_root(dockerfile):
    steps = _dockerfile_steps(dockerfile)
    args = [a for i, a in steps if i == "ARG"]
    assert any(a.startswith("TORCH_SPEC=") for a in args)
    runs = [(n, a) for n, (i, a) in enumerate(steps) if i == "RUN" and "pip install" in a]
    torch_step = next(n for n, a in runs if "${TORCH_SPEC}" in a)
    project_step = next(n for n, a in runs if re.search(r"pip install -c \S+ \.", a))
    copy_src = next(n for n, (i, a) in enumerate(steps) if i == "COPY" and "platform" in a)
    assert torch_step < copy_src < project_step, "torch must be installed before the project"
    assert "torch-constraint" in steps[project_step][1], "torch stays pinned for the project"
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for src in ("jobs", "search_spaces"):
        assert any(i == "COPY" and a.startswith(src) for i, a in steps), src
    cmd = yaml.safe_load(next(a for i, a in reversed(steps) if i == "CMD"))
    assert cmd == ["bratslab", "--help"]  # the image's default: the CLI explains itself
    assert "RAY_USAGE_STATS_ENABLED=0" in dockerfile.read_text()


def test_compose_publishes_on_loopback_only_with_auth_and_postgres_backends():
    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--app-name basic-auth" in mlflow_cmd
    assert "$$BACKEND_STORE_URI" in mlflow_cmd
    assert services["mlflow"]["environment"]["BACKEND_STORE_URI"].startswith("postgresql://")
    assert "--artifacts-destination s3://" in mlflow_cmd
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    published = {p.split(":")[-1] for p in services["mlflow"]["ports"]}
    assert "5000" in published and "--port 5000" in mlflow_cmd
    # No secret has a default: compose refuses to start until .env sets it.
    env_text = yaml.safe_dump(compose)
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MLFLOW_ADMIN_PASSWORD"):
        assert f"${{{secret}:?" in env_text
    # Optuna storage on the same PostgreSQL.
    init = (INFRA / "mlflow" / "initdb" / "10-optuna.sh").read_text()
    assert "CREATE DATABASE optuna" in init
    ini = configparser.ConfigParser()
    ini.read(INFRA / "mlflow" / "basic_auth.ini")
    assert ini["mlflow"]["default_permission"] == "READ"
    assert "admin_password" not in ini["mlflow"]
