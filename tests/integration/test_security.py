"""Secrets stay secret, upstream addresses are checked, and the proxy-to-instance hop can be authenticated."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import PROVISIONER, Sim, base_env, run_provisioner, run_sim, wait_for

pytestmark = pytest.mark.integration

API_KEY = "sk-live-9f8e7d6c5b4a39281706"
REGISTRY_PASSWORD = "reg-pass-5f4e3d2c1b0a"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    with run_sim(tmp_path, boot_delay_s=0.5) as s:
        yield s


def _cmdlines(root_pid: int) -> list[str]:
    """The command lines of a process and all its descendants (what `ps` would show)."""
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return found


def test_secrets_never_leave_their_channel(sim: Sim, tmp_path: Path) -> None:
    """The API key and registry password are absent from DEBUG logs, nginx config and process args."""
    env = base_env(
        sim,
        tmp_path,
        VAST_API_KEY=API_KEY,
        DOCKER_LOGIN=f"-u deploy -p {REGISTRY_PASSWORD} registry.example.com",
        DEBUG="true",
        UPSTREAM_AUTH_HEADER="X-Upstream-Auth",
    )
    with run_provisioner(env, tmp_path) as prov:
        prov.wait_serving(60)
        httpx.get(prov.admin_url + "/metrics", timeout=5)
        httpx.get(prov.admin_url + "/status", timeout=5)
        places = {
            "logs": prov.output(),
            "nginx config": Path(env["NGINX_CONFIG_PATH"]).read_text(),
            "process arguments": "\n".join(_cmdlines(prov.proc.pid)),
            "metrics": httpx.get(prov.admin_url + "/metrics", timeout=5).text,
            "status": httpx.get(prov.admin_url + "/status", timeout=5).text,
        }
    assert "nginx" in places["process arguments"], "the nginx child was inspected too"
    assert '"level": "debug"' in places["logs"], "DEBUG logging was on"
    for where, text in places.items():
        assert API_KEY not in text, f"API key found in {where}"
        assert REGISTRY_PASSWORD not in text, f"registry password found in {where}"
    # the login really went out (in the rent request body, its only channel)
    assert sim.count("rent") == 1


def test_refused_key_is_not_echoed(tmp_path: Path) -> None:
    """A refused API key ends the process with exit 3 and a message that does not contain the key."""
    with run_sim(tmp_path, extra=("--api-key", "the-right-key-000")) as sim:
        env = base_env(sim, tmp_path, VAST_API_KEY=API_KEY)
        result = subprocess.run([PROVISIONER, "run"], env=env, capture_output=True, timeout=60, check=False)
    text = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 3, text[-2000:]
    assert "refused" in text
    assert API_KEY not in text


def test_private_upstreams_are_refused_by_default(sim: Sim, tmp_path: Path) -> None:
    """Without VAST_ALLOW_PRIVATE_UPSTREAMS an instance on a loopback address is never proxied to."""
    env = base_env(sim, tmp_path, VAST_ALLOW_PRIVATE_UPSTREAMS="false")
    with run_provisioner(env, tmp_path) as prov:
        wait_for(lambda: "not a public" in prov.output() or "public" in prov.output(), 30, "the refusal")
        assert prov.served_instance() is None
        response = httpx.get(prov.proxy_url + "/", timeout=5)
        assert response.status_code == 503
        assert "127.0.0.1" not in Path(env["NGINX_CONFIG_PATH"]).read_text().split("upstream", 1)[-1]


def test_upstream_auth_header_guards_the_instance_port(sim: Sim, tmp_path: Path) -> None:
    """With UPSTREAM_AUTH_HEADER the proxy reaches the GPU, while a direct request without it gets 401."""
    env = base_env(sim, tmp_path, UPSTREAM_AUTH_HEADER="X-Upstream-Auth")
    with run_provisioner(env, tmp_path) as prov:
        iid = prov.wait_serving(60)
        echoed = prov.get("/check").json()
        assert "x-upstream-auth" not in echoed["headers"], "the workload does not echo the secret"
        row = next(i for i in sim.instances() if i["id"] == iid)
        port = int(row["ports"]["8000/tcp"][0]["HostPort"])
        direct = httpx.get(f"http://127.0.0.1:{port}/check", timeout=5)
        assert direct.status_code == 401
        forged = httpx.get(f"http://127.0.0.1:{port}/check", headers={"X-Upstream-Auth": "guess"}, timeout=5)
        assert forged.status_code == 401
        spoofed = httpx.get(prov.proxy_url + "/check", headers={"X-Upstream-Auth": "guess"}, timeout=5)
        assert spoofed.status_code == 200, "the proxy replaces a client-sent copy of the header"


@pytest.mark.parametrize("change", ["rotated-key", "auth-turned-on"])
def test_an_instance_rented_with_another_or_no_secret_is_replaced(
    sim: Sim, tmp_path: Path, change: str
) -> None:
    """The upstream secret derives from the API key. After a rotation (same account, new key) the
    instance rented before would refuse what nginx now sends, so it is replaced make-before-break
    (auth-drift) instead of being adopted and served 401s for good. One rented before
    UPSTREAM_AUTH_HEADER was set answers anyone who finds its public port: replaced the same way."""
    env = base_env(sim, tmp_path, VAST_API_KEY=API_KEY, UPSTREAM_AUTH_HEADER="X-Upstream-Auth")
    if change == "auth-turned-on":
        del env["UPSTREAM_AUTH_HEADER"]
    with run_provisioner(env, tmp_path, "before") as prov:
        before = prov.wait_serving(60)
    env["VAST_API_KEY"] = API_KEY + "-rotated"
    env["UPSTREAM_AUTH_HEADER"] = "X-Upstream-Auth"
    with run_provisioner(env, tmp_path, "after") as prov:
        after = prov.wait_serving(60, other_than=before)
        assert prov.get("/check").status_code == 200
        wait_for(
            lambda: [i["id"] for i in sim.instances("k8s_pod=vast-pod-0")] == [after] or None,
            60,
            "the instance rented with the old secret to be destroyed",
        )
    assert "auth-drift" in prov.output()
