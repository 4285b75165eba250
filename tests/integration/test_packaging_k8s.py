"""Kubernetes manifests (k8s/): rendered by ``kubectl kustomize``, validated and cross-checked.

The manifests are validated strictly against the Kubernetes schemas; every env var name they set must
be one ``Settings`` knows, and their values must load as valid settings.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from provisioner import settings
from tests import manifests
from tests.integration.packaging_support import SECRET_NAME, SECRET_PATTERN, defaults, load_env, project
from tests.manifests import BIN, K8S, OVERLAY, ROOT

pytestmark = pytest.mark.integration

KUSTOMIZATIONS = [pytest.param(K8S, id="base"), pytest.param(OVERLAY, id="two-ports")]


# ----------------------------------------------------------------------------- Kubernetes


PLACEHOLDER_IMAGE = "REPLACE-ME.invalid/vast-pod-provisioner"


def provisioner_images(docs: list[dict[str, Any]]) -> set[str]:
    """The images of the StatefulSet's and the reaper CronJob's provisioner containers."""
    cronjob = manifests.find(docs, "CronJob")
    reaper = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return {manifests.provisioner_container(docs)["image"], *(c["image"] for c in reaper)}


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_image_is_a_placeholder_that_fails_loudly(path: Path) -> None:
    """Until replaced, every provisioner image is REPLACE-ME.invalid/...:<version> (never resolves)."""
    assert provisioner_images(manifests.kustomize(path)) == {f"{PLACEHOLDER_IMAGE}:{project()['version']}"}


def test_readme_apply_steps_set_the_image_with_kubectl_only(tmp_path: Path) -> None:
    """README "Apply" uses no standalone kustomize; its sed line turns the placeholder into the image."""
    readme = (ROOT / "README.md").read_text()
    apply = readme[readme.index("### Apply") : readme.index("### Check")]
    assert "kustomize edit" not in apply
    assert "kubectl apply -n gpu -k k8s/" in apply
    pushed = re.search(r"docker push (\S+):(\S+)", apply)
    sed = re.search(r"sed -i '(s\|([^|]+)\|([^|]+)\|)' (k8s/\S+)", apply)
    assert pushed and sed, apply
    assert sed.group(2) == PLACEHOLDER_IMAGE
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    target = copy / Path(sed.group(4)).relative_to("k8s")
    target.write_text(target.read_text().replace(sed.group(2), sed.group(3)))
    assert provisioner_images(manifests.kustomize(copy)) == {f"{pushed.group(1)}:{pushed.group(2)}"}


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
    """The base holds the StatefulSet, both Services, Redis, the PDB, the ConfigMap, a ServiceAccount, and
    the reaper CronJob with its own ServiceAccount, Role and RoleBinding."""
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in manifests.kustomize(K8S))
    names = [
        (kind, re.sub(r"-[a-z0-9]{10}$", "", name) if kind == "ConfigMap" else name) for kind, name in kinds
    ]
    assert names == [
        ("ConfigMap", "vast-pod-config"),
        ("CronJob", "vast-pod-reaper"),
        ("Deployment", "vast-pod-redis"),
        ("PodDisruptionBudget", "vast-pod"),
        ("Role", "vast-pod-reaper"),
        ("RoleBinding", "vast-pod-reaper"),
        ("Service", "vast-pod"),
        ("Service", "vast-pod-headless"),
        ("Service", "vast-pod-redis"),
        ("ServiceAccount", "vast-pod-provisioner"),
        ("ServiceAccount", "vast-pod-reaper"),
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
    for sa in (d for d in manifests.kustomize(K8S) if d["kind"] == "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False, "a token only where a pod asks for one"


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
    assert reaper_cfg.reap_check_pods, "and asks Kubernetes before destroying"


def test_reaper_pod_security() -> None:
    """The reaper runs like the pods: non-root, read-only root, no escalation, no capabilities, seccomp,
    and its pods are not selected by the Services or the PDB. Its token (for the pod check) is its own
    service account's, which may get pods in the namespace and nothing else."""
    docs = manifests.kustomize(K8S)
    cron = manifests.find(docs, "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is True and spec["restartPolicy"] == "Never"
    assert spec["serviceAccountName"] == "vast-pod-reaper"
    binding = manifests.find(docs, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "vast-pod-reaper"}]
    role = manifests.find(docs, "Role")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
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
