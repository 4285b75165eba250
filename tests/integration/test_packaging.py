"""Dockerfile, Kubernetes manifests (k8s/) and docker-compose.yml: linted, validated and cross-checked.

No Docker engine and no cluster here: the Dockerfile is linted by hadolint and its build inputs are
checked by building the wheel from exactly the files the build context holds; the manifests are
rendered by ``kubectl kustomize`` and validated strictly against the Kubernetes schemas; every env var
name they set must be one ``Settings`` knows, and their values must load as valid settings.
"""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from provisioner import settings
from tests import manifests, procs
from tests.manifests import BIN, COMPOSE, K8S, OVERLAY, ROOT
from tests.redis_server import run_redis

pytestmark = pytest.mark.integration

DOCKERFILE = ROOT / "Dockerfile"
KUSTOMIZATIONS = [pytest.param(K8S, id="base"), pytest.param(OVERLAY, id="two-ports")]
PROVISIONER_SERVICES = ("vast-pod-0", "vast-pod-1")
COMPOSE_NAMESPACE = "compose"
SECRET_NAME = "vast-credentials"
#: values the compose file may set differently from the ConfigMap, and why
COMPOSE_LOCAL_DIFFERENCES = {
    "VAST_API_URL": "points at the vast-sim service",
    "BLACKLIST_REDIS_URL": "points at the redis service",
}
SECRET_PATTERN = re.compile(r"(KEY|SECRET|TOKEN|PASSW|LOGIN|CREDENTIAL)", re.IGNORECASE)


def defaults() -> settings.Settings:
    """Settings with only the required values: the defaults the manifests must agree with."""
    return settings.Settings(
        pod_name="vast-pod-0",
        vast_api_key="test-key",
        vast_template_name="t",
        vast_template_image="repo/image:1",
    )


def load_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> settings.Settings:
    """``load_settings()`` over exactly ``env`` (nothing else from this process's environment)."""
    for name in list(os.environ):
        if manifests.is_known_env_name(name.upper()):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings.load_settings()


# ----------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword, its flags (``--from=...``) and the rest of the line."""

    keyword: str
    flags: tuple[str, ...]
    rest: str
    stage: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for the shell form."""
        text = self.rest.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list)
        return [str(v) for v in value]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; ``stage`` counts FROMs."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    result: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        flags: list[str] = []
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(keyword, tuple(flags), rest, stage))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def test_hadolint_is_clean() -> None:
    """hadolint reports nothing for the Dockerfile, not even at style level."""
    result = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_is_multi_stage_with_pinned_bases(dockerfile: list[Instruction]) -> None:
    """Two or more stages, each FROM an exact Python patch release (or a digest) of slim bookworm."""
    froms = [i for i in dockerfile if i.keyword == "FROM"]
    assert len(froms) >= 2
    for instruction in froms:
        image = instruction.rest.split()[0]
        pinned = "@sha256:" in image or re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image)
        assert pinned, f"base image {image!r} is not pinned to an exact version or a digest"
    build_stages = {i.rest.split()[-1] for i in froms[:-1]}
    copies_from = {
        m for i in final_stage(dockerfile) for f in i.flags for m in re.findall(r"\bfrom=([^,\s]+)", f)
    }
    assert copies_from & build_stages, "the runtime stage takes nothing from the build stage"


def test_runtime_stage_runs_as_non_root(dockerfile: list[Instruction]) -> None:
    """The final USER is a non-zero numeric uid (works with runAsNonRoot without a passwd lookup)."""
    users = [i for i in final_stage(dockerfile) if i.keyword == "USER"]
    assert users, "no USER in the runtime stage"
    uid, _, gid = users[-1].rest.partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    sts = manifests.find(manifests.kustomize(K8S), "StatefulSet")
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_signals_reach_the_provisioner(dockerfile: list[Instruction]) -> None:
    """ENTRYPOINT is exec-form tini without -g (SIGTERM to the provisioner only, which drains nginx)."""
    stage = final_stage(dockerfile)
    entrypoint = [i for i in stage if i.keyword == "ENTRYPOINT"][-1].exec_form()
    cmd = [i for i in stage if i.keyword == "CMD"][-1].exec_form()
    assert entrypoint is not None and cmd is not None, "ENTRYPOINT and CMD must be exec form"
    assert Path(entrypoint[0]).name == "tini"
    assert "-g" not in entrypoint and entrypoint[-1] == "--"
    assert cmd == ["provisioner", "run"]
    installs = " ".join(i.rest for i in stage if i.keyword == "RUN")
    assert re.search(r"\btini\b", installs), "tini is not installed in the runtime stage"


def test_nginx_comes_from_the_distribution(dockerfile: list[Instruction]) -> None:
    """apt installs Debian's nginx with --no-install-recommends, cleans the lists; NGINX_BIN uses it."""
    stage = final_stage(dockerfile)
    apt = [i.rest for i in stage if i.keyword == "RUN" and "apt-get install" in i.rest]
    assert len(apt) == 1
    assert "--no-install-recommends" in apt[0]
    assert re.search(r"'?nginx(-light)?(=[^ ']+)?'?(\s|$)", apt[0])
    assert "rm -rf /var/lib/apt/lists/*" in apt[0]
    env = " ".join(i.rest for i in stage if i.keyword == "ENV")
    assert "NGINX_BIN=/usr/sbin/nginx" in env


def test_wheel_is_installed_without_cache(dockerfile: list[Instruction]) -> None:
    """The runtime stage pip-installs the built wheels with --no-cache-dir and no index."""
    pips = [i for i in final_stage(dockerfile) if i.keyword == "RUN" and "pip install" in i.rest]
    assert len(pips) == 1
    assert "--no-cache-dir" in pips[0].rest
    assert "--no-index" in pips[0].rest


def test_healthcheck_probes_healthz(dockerfile: list[Instruction]) -> None:
    """HEALTHCHECK (exec form, python: no curl in slim) asks /healthz on ADMIN_PORT (default 8081)."""
    checks = [i for i in final_stage(dockerfile) if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].rest
    assert command.startswith("CMD ")
    argv = json.loads(command[4:])
    assert argv[0] == "python"
    assert "/healthz" in argv[-1]
    assert f"'ADMIN_PORT', '{defaults().admin_port}'" in argv[-1]


def test_exposed_ports_are_the_default_ports(dockerfile: list[Instruction]) -> None:
    """EXPOSE lists the default proxy port and the default admin port."""
    exposed = {p for i in final_stage(dockerfile) if i.keyword == "EXPOSE" for p in i.rest.split()}
    cfg = defaults()
    assert exposed == {str(cfg.nginx_listen_port), str(cfg.admin_port)}


def test_no_secret_is_baked_in(dockerfile: list[Instruction]) -> None:
    """No ENV, ARG or LABEL names a key, token, password or login; no .env file is copied."""
    for instruction in dockerfile:
        if instruction.keyword in ("ENV", "ARG", "LABEL"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_.]*)=", instruction.rest) or [
                instruction.rest.split()[0]
            ]
            for name in names:
                assert not SECRET_PATTERN.search(name), f"{instruction.keyword} {name} looks like a secret"
        if instruction.keyword in ("COPY", "ADD"):
            assert ".env" not in shlex.split(instruction.rest)


def test_dockerignore_admits_only_the_build_inputs(dockerfile: list[Instruction]) -> None:
    """.dockerignore excludes everything, then re-admits exactly the paths the Dockerfile COPYs."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "the context must start from nothing (allow-list)"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = {
        src.rstrip("/")
        for i in dockerfile
        if i.keyword == "COPY" and not any(f.startswith("--from") for f in i.flags)
        for src in shlex.split(i.rest)[:-1]
    }
    assert sources == admitted
    for sensitive in (".env", ".venv", ".git", "tests", "k8s", "run"):
        assert not any(fnmatch.fnmatch(sensitive, pattern) for pattern in admitted)


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of exactly what the Docker build context admits."""
    context = tmp_path_factory.mktemp("context")
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        if line.startswith("!"):
            source = ROOT / line[1:].rstrip("/")
            if source.is_dir():
                shutil.copytree(source, context / source.name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, context / source.name)
    out = tmp_path_factory.mktemp("wheels")
    result = subprocess.run(
        [str(BIN / "pip"), "wheel", "--no-deps", "--quiet", ".", "-w", str(out)],
        cwd=context,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("vast_pod_provisioner-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_ships_the_templates(built_wheel: Path) -> None:
    """The wheel built from the Docker context holds the nginx template, py.typed and the entry point."""
    with zipfile.ZipFile(built_wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    assert "provisioner/templates/nginx.conf.j2" in names
    assert "provisioner/py.typed" in names
    assert "provisioner/sim/app.py" in names
    assert re.search(r"^provisioner\s*=\s*provisioner\.cli:main$", scripts, re.MULTILINE)


# ----------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", [None, "1.29.0"], ids=["latest", "k8s-1.29"])
def test_rendered_manifests_validate_strictly(path: Path, version: str | None, tmp_path: Path) -> None:
    """Every resource kustomize renders passes kubernetes-validate --strict (current and 1.29 schemas)."""
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(manifests.kustomize_text(path))
    argv = [str(BIN / "kubernetes-validate"), "--strict"]
    if version:
        argv += ["-k", version]
    result = subprocess.run([*argv, str(rendered)], check=False, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = re.findall(r"passed for resource", output)
    assert len(passed) == len(manifests.kustomize(path)), output


def test_base_renders_the_expected_resources() -> None:
    """The base holds the StatefulSet, both Services, Redis, the PDB, the ConfigMap, a ServiceAccount and
    the reaper CronJob."""
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in manifests.kustomize(K8S))
    names = [
        (kind, re.sub(r"-[a-z0-9]{10}$", "", name) if kind == "ConfigMap" else name) for kind, name in kinds
    ]
    assert names == [
        ("ConfigMap", "vast-pod-config"),
        ("CronJob", "vast-pod-reaper"),
        ("Deployment", "vast-pod-redis"),
        ("PodDisruptionBudget", "vast-pod"),
        ("Service", "vast-pod"),
        ("Service", "vast-pod-headless"),
        ("Service", "vast-pod-redis"),
        ("ServiceAccount", "vast-pod-provisioner"),
        ("StatefulSet", "vast-pod"),
    ]
    assert not any(d["kind"] == "Secret" for d in manifests.kustomize(K8S)), "no credential in the base"


def test_known_env_names_follow_settings() -> None:
    """The name set derived from Settings has fields and aliases, not derived values."""
    names = manifests.known_env_names()
    assert {"POD_NAME", "VAST_API_KEY", "BLACKLIST_BAN_AFTER_SECONDS", "NGINX_DRAIN_SECONDS"} <= names
    assert "REMOTE_ENV" not in names
    assert manifests.is_known_env_name("VAST_ENV_HF_HOME")
    assert not manifests.is_known_env_name("VAST_ENV_")
    assert not manifests.is_known_env_name("VAST_HEALTH_PAHT")


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_manifest_env_names_are_settings(path: Path) -> None:
    """Every env var the provisioner container gets (ConfigMap keys and env entries) is a setting."""
    assert manifests.env_problems(manifests.kustomize(path)) == []


def test_env_name_check_catches_a_typo() -> None:
    """A misspelt ConfigMap key, env entry or $(reference) is reported (the check is not vacuous)."""
    docs = manifests.kustomize(K8S)
    broken = yaml.safe_load(yaml.safe_dump(docs))
    cm = next(d for d in broken if d["kind"] == "ConfigMap")
    cm["data"]["VAST_HEALTH_PAHT"] = cm["data"].pop("VAST_HEALTH_PATH")
    container = manifests.provisioner_container(broken)
    container["env"].append({"name": "NGINX_DRAIN_SECOND", "value": "20"})
    container["env"].append({"name": "VAST_LABEL", "value": "k8s_pod=$(POD_NAMESPAC)"})
    problems = "\n".join(manifests.env_problems(broken))
    assert "VAST_HEALTH_PAHT" in problems
    assert "NGINX_DRAIN_SECOND " in problems
    assert "$(POD_NAMESPAC)" in problems


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_manifest_env_loads_as_valid_settings(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The container env (ConfigMap, downward API, Secret) passes load_settings; label has the namespace."""
    docs = manifests.kustomize(path)
    env = manifests.container_env(
        manifests.provisioner_container(docs),
        docs,
        fields={"metadata.name": "vast-pod-1", "metadata.namespace": "team-a"},
        secrets={(SECRET_NAME, "VAST_API_KEY"): "k-0123456789", (SECRET_NAME, "DOCKER_LOGIN"): "-u me -p pw"},
    )
    cfg = load_env(monkeypatch, env)
    assert cfg.pod_name == "vast-pod-1"
    assert cfg.label == "k8s_pod=team-a/vast-pod-1"
    assert "team-a" in cfg.vast_template_name
    assert cfg.docker_login is not None
    assert cfg.nginx_config_path.is_relative_to("/tmp")


def test_statefulset_pod_security() -> None:
    """Non-root, read-only root, no privilege escalation, all capabilities dropped, seccomp, no token."""
    for doc in manifests.kustomize(K8S):
        if doc["kind"] not in ("StatefulSet", "Deployment"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]
            assert container["resources"]["limits"].get("memory")
    sa = manifests.find(manifests.kustomize(K8S), "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_nginx_state_is_on_an_emptydir() -> None:
    """The directory of NGINX_CONFIG_PATH (default) lies on an emptyDir mount (read-only root fs)."""
    docs = manifests.kustomize(K8S)
    sts = manifests.find(docs, "StatefulSet")
    container = manifests.provisioner_container(docs)
    env = manifests.config_map_data(docs, container["envFrom"][0]["configMapRef"]["name"])
    state_dir = Path(env.get("NGINX_CONFIG_PATH", str(defaults().nginx_config_path))).parent
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    mounts = [m for m in container["volumeMounts"] if state_dir.is_relative_to(m["mountPath"])]
    assert mounts, f"{state_dir} is on the read-only root filesystem"
    assert "emptyDir" in volumes[mounts[0]["name"]]
    assert not mounts[0].get("readOnly")


def test_pod_identity_and_credentials_come_from_the_cluster() -> None:
    """POD_NAME and the namespace from the downward API, VAST_API_KEY and DOCKER_LOGIN from the Secret."""
    container = manifests.provisioner_container(manifests.kustomize(K8S))
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    namespace_vars = [
        name
        for name, e in env.items()
        if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace"
    ]
    assert len(namespace_vars) == 1
    assert f"$({namespace_vars[0]})" in env["VAST_LABEL"]["value"]
    assert "$(POD_NAME)" in env["VAST_LABEL"]["value"]
    assert env["VAST_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": "VAST_API_KEY"}
    login = env["DOCKER_LOGIN"]["valueFrom"]["secretKeyRef"]
    assert login["name"] == SECRET_NAME and login["key"] == "DOCKER_LOGIN" and login["optional"] is True
    cm_keys = manifests.config_map_data(
        manifests.kustomize(K8S), container["envFrom"][0]["configMapRef"]["name"]
    )
    assert [k for k in cm_keys if SECRET_PATTERN.search(k)] == [], "a credential in the ConfigMap"


def probe_seconds(probe: dict[str, Any]) -> int:
    """How long a probe may fail before the kubelet acts: failureThreshold x periodSeconds."""
    return int(probe.get("failureThreshold", 3)) * int(probe.get("periodSeconds", 10))


def test_probes_match_the_provisioner() -> None:
    """Readiness through the proxy to VAST_HEALTH_PATH; liveness and startup on /healthz (admin port)."""
    docs = manifests.kustomize(K8S)
    container = manifests.provisioner_container(docs)
    cfg = manifests.config_map_data(docs, container["envFrom"][0]["configMapRef"]["name"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == cfg["VAST_HEALTH_PATH"]
    assert ports[ready["port"]] == int(cfg["NGINX_LISTEN_PORT"])
    for name in ("livenessProbe", "startupProbe"):
        check = container[name]["httpGet"]
        assert check["path"] == "/healthz"
        assert ports[check["port"]] == int(cfg["ADMIN_PORT"])
    assert container["livenessProbe"].get("successThreshold", 1) == 1


def test_startup_budget_outlasts_the_ban_deadline() -> None:
    """startupProbe failureThreshold x periodSeconds exceeds BLACKLIST_BAN_AFTER_SECONDS."""
    docs = manifests.kustomize(K8S)
    container = manifests.provisioner_container(docs)
    cfg = manifests.config_map_data(docs, container["envFrom"][0]["configMapRef"]["name"])
    ban_after = float(cfg.get("BLACKLIST_BAN_AFTER_SECONDS", defaults().boot_timeout_seconds))
    assert probe_seconds(container["startupProbe"]) > ban_after


def test_termination_grace_covers_the_drain() -> None:
    """terminationGracePeriodSeconds > preStop sleep + NGINX_DRAIN_SECONDS + 10 s of shutdown slack."""
    docs = manifests.kustomize(K8S)
    sts = manifests.find(docs, "StatefulSet")
    container = manifests.provisioner_container(docs)
    cfg = manifests.config_map_data(docs, container["envFrom"][0]["configMapRef"]["name"])
    drain = int(cfg.get("NGINX_DRAIN_SECONDS", defaults().nginx_drain_seconds))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep_s = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > sleep_s + drain + 10


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_services_reach_the_pods(path: Path) -> None:
    """Both Services select the StatefulSet's pods and target named ports of the container."""
    docs = manifests.kustomize(path)
    sts = manifests.find(docs, "StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    container = manifests.provisioner_container(docs)
    port_names = {p["name"] for p in container["ports"]}
    client = manifests.find(docs, "Service", "vast-pod")
    headless = manifests.find(docs, "Service", sts["spec"]["serviceName"])
    assert client["spec"].get("type", "ClusterIP") == "ClusterIP" and "clusterIP" not in client["spec"]
    assert headless["spec"]["clusterIP"] == "None"
    for service in (client, headless):
        assert selects(service["spec"]["selector"], pod_labels)
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    pdb = manifests.find(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(sts["spec"]["selector"]["matchLabels"], pod_labels)


def test_redis_serves_the_blacklist_url() -> None:
    """BLACKLIST_REDIS_URL names the Redis Service and its port; that Service selects the Redis pods."""
    docs = manifests.kustomize(K8S)
    container = manifests.provisioner_container(docs)
    cfg = manifests.config_map_data(docs, container["envFrom"][0]["configMapRef"]["name"])
    url = httpx.URL(cfg["BLACKLIST_REDIS_URL"])
    assert url.scheme == "redis"
    service = manifests.find(docs, "Service", url.host)
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    redis = manifests.find(docs, "Deployment", url.host)
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])


def test_recommended_labels_everywhere() -> None:
    """Every resource carries app.kubernetes.io/{name,instance,part-of,managed-by}; pods also version."""
    for doc in manifests.kustomize(K8S):
        labels = doc["metadata"].get("labels", {})
        for key in ("name", "instance", "part-of", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, (
                f"{doc['kind']} {doc['metadata']['name']} lacks {key}"
            )
        if doc["kind"] in ("StatefulSet", "Deployment"):
            pod_labels = doc["spec"]["template"]["metadata"]["labels"]
            assert {"app.kubernetes.io/version", "app.kubernetes.io/component"} <= pod_labels.keys()


def reaper_env(docs: list[dict[str, Any]], namespace: str = "team-a") -> dict[str, str]:
    """The reaper container's environment as the kubelet builds it."""
    return manifests.container_env(
        manifests.reaper_container(docs),
        docs,
        fields={"metadata.namespace": namespace},
        secrets={(SECRET_NAME, "VAST_API_KEY"): "k-0123456789"},
    )


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_reaper_env_names_are_settings(path: Path) -> None:
    """Every env var the reaper container gets is a setting (of the pods or the reaper) or a helper."""
    docs = manifests.kustomize(path)
    assert manifests.env_problems(docs, manifests.reaper_container(docs)) == []


def test_reaper_cronjob_reaps_only_this_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CronJob runs `provisioner reap --apply` every 10 min, never two at once, with the pods'
    ConfigMap, Redis and key; its label prefix is this namespace's, which every pod label starts with."""
    docs = manifests.kustomize(K8S)
    cron = manifests.find(docs, "CronJob")
    assert cron["spec"]["schedule"] == "*/10 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    container = manifests.reaper_container(docs)
    assert container["args"] == ["provisioner", "reap", "--apply"]
    assert container["image"] == manifests.provisioner_container(docs)["image"]
    for name in list(os.environ):
        if manifests.is_known_env_name(name.upper()):
            monkeypatch.delenv(name)
    for name, value in reaper_env(docs).items():
        monkeypatch.setenv(name, value)
    reaper_cfg = settings.load_reaper_settings()
    pod_env = manifests.container_env(
        manifests.provisioner_container(docs),
        docs,
        fields={"metadata.name": "vast-pod-3", "metadata.namespace": "team-a"},
        secrets={(SECRET_NAME, "VAST_API_KEY"): "k-0123456789"},
    )
    pod_cfg = load_env(monkeypatch, pod_env)
    assert reaper_cfg.reap_label_prefix == "k8s_pod=team-a/"
    assert pod_cfg.label.startswith(reaper_cfg.reap_label_prefix)
    assert not "k8s_pod=team-ab/vast-pod-0".startswith(reaper_cfg.reap_label_prefix)
    assert reaper_cfg.blacklist_redis_url == pod_cfg.blacklist_redis_url
    assert reaper_cfg.blacklist_key_prefix == pod_cfg.blacklist_key_prefix
    assert pod_cfg.blacklist_enabled, "the reaper needs the pods' heartbeats"


def test_reaper_pod_security() -> None:
    """The reaper runs like the pods: non-root, read-only root, no escalation, no capabilities, seccomp,
    no token, and its pods are not selected by the Services or the PDB."""
    docs = manifests.kustomize(K8S)
    cron = manifests.find(docs, "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = manifests.reaper_container(docs)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert manifests.reaper_container(docs)["resources"]["limits"].get("memory")
    labels = pod["metadata"]["labels"]
    selectors = [d["spec"]["selector"] for d in docs if d["kind"] == "Service"]
    selectors.append(manifests.find(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert not any(selects(sel, labels) for sel in selectors)


def test_two_ports_overlay_exposes_every_proxy_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The overlay's PROXY_PORTS has two pairs; each listen port is a container port and a Service port."""
    docs = manifests.kustomize(OVERLAY)
    container = manifests.provisioner_container(docs)
    cfg = manifests.config_map_data(docs, container["envFrom"][0]["configMapRef"]["name"])
    maps = settings.parse_proxy_ports(cfg["PROXY_PORTS"])
    assert len(maps) == 2
    container_ports = {p["containerPort"]: p["name"] for p in container["ports"]}
    service = manifests.find(docs, "Service", "vast-pod")
    service_targets = {p["targetPort"] for p in service["spec"]["ports"]}
    for pm in maps:
        assert pm.listen_port in container_ports
        assert container_ports[pm.listen_port] in service_targets
    ready = container["readinessProbe"]["httpGet"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[ready["port"]] == maps[0].listen_port


# ----------------------------------------------------------------------------- docker-compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return manifests.compose()


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: manifests.compose_value(v) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def test_compose_services_and_healthchecks(compose: dict[str, Any]) -> None:
    """Redis, the simulator and two provisioner replicas, each with a healthcheck; pods wait for health."""
    services = compose["services"]
    assert set(services) == {"redis", "vast-sim", *PROVISIONER_SERVICES}
    assert services["redis"]["image"].startswith("redis:7")
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    for name in PROVISIONER_SERVICES:
        service = services[name]
        assert command_of(service) == ["provisioner", "run"]
        assert "/healthz" in " ".join(service["healthcheck"]["test"])
        depends = service["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["vast-sim"]["condition"] == "service_healthy"
        assert service["build"] == services["vast-sim"]["build"] == "."


def test_compose_env_names_are_settings(compose: dict[str, Any]) -> None:
    """Every environment key of the provisioner services is a setting (a typo fails)."""
    for name in PROVISIONER_SERVICES:
        unknown = [k for k in compose_env(compose["services"][name]) if not manifests.is_known_env_name(k)]
        assert unknown == [], f"{name}: not settings: {unknown}"


def published(service: dict[str, Any]) -> dict[int, int]:
    """host port -> container port of a compose service ("[ip:]host:container" short syntax)."""
    result: dict[int, int] = {}
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        result[int(parts[-2])] = int(parts[-1])
    return result


def test_compose_publishes_the_proxies(compose: dict[str, Any]) -> None:
    """localhost:3000 reaches vast-pod-0's proxy and localhost:3001 vast-pod-1's (plus admin ports)."""
    services = compose["services"]
    for name, host_port in (("vast-pod-0", 3000), ("vast-pod-1", 3001)):
        env = compose_env(services[name])
        ports = published(services[name])
        assert ports[host_port] == int(env["NGINX_LISTEN_PORT"])
        assert int(env["ADMIN_PORT"]) in ports.values()
    hosts = [p for s in services.values() for p in published(s)]
    assert len(hosts) == len(set(hosts)), "two services publish the same host port"


def test_compose_pods_are_configured_like_the_statefulset(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each replica's env is the StatefulSet's (namespace "compose"), except the documented local URLs."""
    docs = manifests.kustomize(K8S)
    container = manifests.provisioner_container(docs)
    for name in PROVISIONER_SERVICES:
        expected = manifests.container_env(
            container,
            docs,
            fields={"metadata.name": name, "metadata.namespace": COMPOSE_NAMESPACE},
            secrets={(SECRET_NAME, "VAST_API_KEY"): "sim-key"},
        )
        expected.pop("POD_NAMESPACE")
        actual = compose_env(compose["services"][name])
        assert expected.keys() <= actual.keys(), f"{name} lacks {sorted(expected.keys() - actual.keys())}"
        differing = {k for k in expected if expected[k] != actual[k]}
        assert differing == set(COMPOSE_LOCAL_DIFFERENCES), f"{name}: {differing}"
        assert actual.keys() - expected.keys() == {"VAST_ALLOW_PRIVATE_UPSTREAMS"}
        assert actual["VAST_ALLOW_PRIVATE_UPSTREAMS"] == "true"
        cfg = load_env(monkeypatch, actual)
        assert cfg.label == f"k8s_pod={COMPOSE_NAMESPACE}/{name}"
        assert str(cfg.vast_api_url) == "http://vast-sim:8765"
        assert httpx.URL(actual["BLACKLIST_REDIS_URL"]).host == "redis"


def sim_option(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def test_compose_sim_is_reachable_from_the_pods(compose: dict[str, Any]) -> None:
    """vast-sim binds 0.0.0.0 on VAST_API_URL's port and reports its own fixed network address."""
    services = compose["services"]
    sim = services["vast-sim"]
    argv = command_of(sim)
    api = httpx.URL(compose_env(services["vast-pod-0"])["VAST_API_URL"])
    assert api.host == "vast-sim"
    assert sim_option(argv, "--host") == "0.0.0.0"
    assert int(sim_option(argv, "--port")) == api.port
    assert sim_option(argv, "--workload-host") == "0.0.0.0"
    (network, attachment), *_ = sim["networks"].items()
    address = ipaddress.ip_address(sim_option(argv, "--public-ip"))
    assert attachment["ipv4_address"] == str(address)
    subnet = ipaddress.ip_network(compose["networks"][network]["ipam"]["config"][0]["subnet"])
    assert address in subnet
    for name in PROVISIONER_SERVICES:
        assert network in services[name]["networks"]


@pytest.fixture
def compose_sim(compose: dict[str, Any], tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The vast-sim service's command, run here on 127.0.0.1 and a free port (nothing else changed)."""
    argv = command_of(compose["services"]["vast-sim"])
    port = procs.free_port()
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    argv[0] = str(BIN / argv[0])
    log = tmp_path / "sim.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        procs.stop_process(proc)


def test_compose_sim_command_runs(
    compose: dict[str, Any], compose_sim: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """The vast-sim command starts the simulator with the public IP and workload host it names."""
    url, proc = compose_sim
    state = procs.wait_for(
        lambda: httpx.get(url + "/_sim/state", timeout=2).json() if proc.poll() is None else None,
        20,
        "the compose simulator command to serve",
    )
    argv = command_of(compose["services"]["vast-sim"])
    assert state["config"]["public_ip"] == sim_option(argv, "--public-ip")
    assert state["config"]["workload_host"] == "0.0.0.0"
    assert state["config"]["boot_delay_s"] == float(sim_option(argv, "--boot-delay"))


def test_compose_mirrors_the_pod_security(compose: dict[str, Any]) -> None:
    """Replicas run read-only with a /tmp tmpfs, no capabilities, and the grace period of the pods."""
    sts = manifests.find(manifests.kustomize(K8S), "StatefulSet")
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    for name in PROVISIONER_SERVICES:
        service = compose["services"][name]
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert service["stop_grace_period"] == f"{grace}s"
        assert "user" not in service, "the image's non-root USER applies"


def docker_compose_available() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    result = subprocess.run([docker, "compose", "version"], check=False, capture_output=True, timeout=30)
    return result.returncode == 0


@pytest.mark.skipif(
    not docker_compose_available(),
    reason="the docker compose plugin is not installed (the structure is checked by the tests above)",
)
def test_docker_compose_config_accepts_the_file() -> None:
    """`docker compose config` (no engine needed) accepts the file."""
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def served_while_alive(prov: procs.Provisioner) -> int | None:
    """The instance the proxy reaches; fails at once (with its output) if the process has exited."""
    code = prov.proc.poll()
    assert code is None, f"provisioner exited with {code}:\n{prov.output()[-3000:]}"
    return prov.served_instance()


def test_compose_replicas_run_side_by_side(compose: dict[str, Any], tmp_path: Path) -> None:
    """Both replicas, with the compose env (only URLs, ports and paths made local), get their own GPU."""
    with procs.run_sim(tmp_path, boot_delay_s=1.0) as sim, run_redis(tmp_path) as redis:
        running = []
        with contextlib.ExitStack() as stack:
            for name in PROVISIONER_SERVICES:
                env = {k: v for k, v in os.environ.items() if not manifests.is_known_env_name(k.upper())}
                env.update(compose_env(compose["services"][name]))
                env.update(
                    {
                        "VAST_API_URL": sim.url,
                        "BLACKLIST_REDIS_URL": redis.url,
                        "NGINX_CONFIG_PATH": str(tmp_path / name / "nginx" / "nginx.conf"),
                        "NGINX_LISTEN_PORT": str(procs.free_port()),
                        "ADMIN_PORT": str(procs.free_port()),
                        "ADMIN_HOST": "127.0.0.1",
                        "BOOT_POLL_SECONDS": "0.5",
                    }
                )
                running.append(stack.enter_context(procs.run_provisioner(env, tmp_path, name="compose")))
            served = [
                procs.wait_for(
                    lambda prov=prov: served_while_alive(prov), 60, f"{prov.env['POD_NAME']} to serve"
                )
                for prov in running
            ]
            for prov in running:
                health = prov.get(prov.env["VAST_HEALTH_PATH"])
                assert health.status_code == 200
                assert health.json()["label"] == prov.env["VAST_LABEL"]
        assert len(set(served)) == 2
        labels = {i["id"]: i["label"] for i in sim.instances()}
        assert labels == {
            iid: f"k8s_pod={COMPOSE_NAMESPACE}/{name}"
            for iid, name in zip(served, PROVISIONER_SERVICES, strict=True)
        }
        template_name = compose_env(compose["services"]["vast-pod-0"])["VAST_TEMPLATE_NAME"]
        assert [t["name"] for t in sim.state()["templates"]].count(template_name) == 1
