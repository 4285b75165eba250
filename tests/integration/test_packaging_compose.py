"""docker-compose.yml: the local test bed configured like the StatefulSet, and its pieces run for real."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import manifests, procs
from tests.integration.packaging_support import SECRET_NAME, load_env
from tests.manifests import BIN, COMPOSE, K8S, ROOT
from tests.redis_server import run_redis

pytestmark = pytest.mark.integration

PROVISIONER_SERVICES = ("vast-pod-0", "vast-pod-1")
COMPOSE_NAMESPACE = "compose"
#: values the compose file may set differently from the ConfigMap, and why
COMPOSE_LOCAL_DIFFERENCES = {
    "VAST_API_URL": "points at the vast-sim service",
    "BLACKLIST_REDIS_URL": "points at the redis service",
}


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
            # a streak: right after the reload an old worker may still answer with the 503 page
            served = [prov.wait_serving(60) for prov in running]
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
