"""`provisioner run` as a real process against the simulator over HTTP, with the real nginx binary."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.procs import (
    PROVISIONER,
    Sim,
    base_env,
    free_port,
    port_is_free,
    processes_mentioning,
    run_provisioner,
    run_sim,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def sim(tmp_path: Path) -> object:
    """A simulated Vast.ai process with a one-second boot."""
    with run_sim(tmp_path, boot_delay_s=1.0) as s:
        yield s


def live(sim: Sim, label: str) -> list[dict[str, object]]:
    return sim.instances(label)


def test_request_reaches_the_simulated_gpu(sim: Sim, tmp_path: Path) -> None:
    """A request through NGINX_LISTEN_PORT reaches the rented simulated GPU; readiness follows."""
    env = base_env(sim, tmp_path)
    with run_provisioner(env, tmp_path) as prov:
        # nginx owns the port from start-up and answers 503 + JSON + Retry-After while renting
        first = wait_for(lambda: prov.get("/"), 20, "nginx to listen")
        if first.status_code == 503:
            assert first.headers["retry-after"]
            assert first.json()["status"] == "unavailable"
        iid = prov.wait_serving(40)
        body = prov.get("/v1/echo?x=1").json()
        assert body["instance_id"] == iid
        assert body["label"] == "k8s_pod=vast-pod-0"
        assert body["path"] == "/v1/echo"
        assert httpx.get(prov.admin_url + "/readyz").status_code == 200
        assert httpx.get(prov.admin_url + "/healthz").status_code == 200
        assert [i["id"] for i in live(sim, "k8s_pod=vast-pod-0")] == [iid]


#: a keep-alive connection nginx closed as idle (on a reload its old worker closes every idle one) while
#: the client was sending on it: HTTP clients resend an idempotent request once (RFC 9110 9.2.2)
_STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def _poll_during(prov_url: str, stop: threading.Event, results: list[int]) -> None:
    """GET /poll every 50 ms on one keep-alive client, as a browser would: a request that met a stale
    connection is sent once more on a new one; any other failure (refused, timeout) is recorded as -1."""
    with httpx.Client(timeout=5.0) as http:
        while not stop.is_set():
            for attempt in (1, 2):
                try:
                    results.append(http.get(prov_url + "/poll").status_code)
                except _STALE_CONNECTION:
                    if attempt == 2:
                        results.append(-1)
                    continue
                except httpx.HTTPError:
                    results.append(-1)
                break
            time.sleep(0.05)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"VAST_TEMPLATE_IMAGE": "vastai/test-workload:2.0"}, id="image-drift"),
        pytest.param({"VAST_ENV_MODEL_NAME": "whisper-large"}, id="template-drift"),
    ],
)
def test_drift_replaces_once_make_before_break(sim: Sim, tmp_path: Path, change: dict[str, str]) -> None:
    """A drift causes exactly one replacement; the old instance serves until the new one is healthy."""
    env = base_env(sim, tmp_path)
    label = "k8s_pod=vast-pod-0"
    with run_provisioner(env, tmp_path, "first") as prov:
        old = prov.wait_serving(40)
    sim.admin("POST", "/config", {"boot_delay_s": 4.0})
    env2 = {**env, **change}
    with run_provisioner(env2, tmp_path, "second") as prov:
        assert prov.wait_serving(30) == old, "the drifted instance bridges while the new one boots"
        stop = threading.Event()
        codes: list[int] = []
        poller = threading.Thread(target=_poll_during, args=(prov.proxy_url, stop, codes))
        poller.start()
        try:
            new = prov.wait_serving(40, other_than=old)
        finally:
            stop.set()
            poller.join()
        assert set(codes) == {200}, f"traffic was interrupted during the replacement: {sorted(set(codes))}"
        wait_for(lambda: [i["id"] for i in live(sim, label)] == [new], 20, "the old instance to be destroyed")
    every = sim.instances(label, include_destroyed=True)
    assert sorted(i["id"] for i in every) == sorted([old, new]), "exactly one replacement"
    assert sim.count("rent") == 2


def test_dead_instance_is_replaced_without_restart(sim: Sim, tmp_path: Path) -> None:
    """An instance that dies is destroyed and replaced by the same process; traffic recovers."""
    env = base_env(sim, tmp_path)
    with run_provisioner(env, tmp_path) as prov:
        old = prov.wait_serving(40)
        sim.admin("POST", f"/instances/{old}/kill")
        new = prov.wait_serving(40, other_than=old)
        assert prov.proc.poll() is None, "the provisioner did not restart"
        wait_for(lambda: [i["id"] for i in live(sim, "k8s_pod=vast-pod-0")] == [new], 20, "one instance left")


def test_port_remap_after_reboot_reloads_nginx(sim: Sim, tmp_path: Path) -> None:
    """A reboot that changes the host port is followed by an nginx reload to the new port."""
    env = base_env(sim, tmp_path)
    with run_provisioner(env, tmp_path) as prov:
        iid = prov.wait_serving(40)
        before = Path(env["NGINX_CONFIG_PATH"]).read_text()
        sim.admin("POST", f"/instances/{iid}/reboot", {"remap": True})
        wait_for(lambda: Path(env["NGINX_CONFIG_PATH"]).read_text() != before, 30, "the config to change")
        assert prov.wait_serving(30) == iid, "same instance, new port"
        assert len(live(sim, "k8s_pod=vast-pod-0")) == 1


def test_killed_nginx_is_restarted(sim: Sim, tmp_path: Path) -> None:
    """SIGKILLing the nginx master is noticed and nginx is started again; traffic flows."""
    env = base_env(sim, tmp_path)
    with run_provisioner(env, tmp_path) as prov:
        prov.wait_serving(40)
        pid = prov.nginx_pid()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: prov.nginx_pid() != pid, 20, "a new nginx master")
        prov.wait_serving(20)
        assert prov.proc.poll() is None


def test_sigterm_exits_zero_within_grace_and_keeps_instance(sim: Sim, tmp_path: Path) -> None:
    """SIGTERM: exit 0 within the grace period; the instance is kept for the next start."""
    env = base_env(sim, tmp_path)
    with run_provisioner(env, tmp_path) as prov:
        iid = prov.wait_serving(40)
        started = time.monotonic()
        prov.proc.send_signal(signal.SIGTERM)
        code = prov.proc.wait(30)
        elapsed = time.monotonic() - started
        assert code == 0, prov.output()[-2000:]
        assert elapsed < 10 + float(env["NGINX_DRAIN_SECONDS"])
    assert [i["id"] for i in live(sim, "k8s_pod=vast-pod-0")] == [iid]
    assert sim.count("destroy") == 0


def test_restart_adopts_instead_of_renting(sim: Sim, tmp_path: Path) -> None:
    """A restarted provisioner adopts its healthy instance: no new rental, no destroy."""
    env = base_env(sim, tmp_path)
    with run_provisioner(env, tmp_path, "first") as prov:
        iid = prov.wait_serving(40)
    with run_provisioner(env, tmp_path, "second") as prov:
        assert prov.wait_serving(20) == iid
    assert sim.count("rent") == 1
    assert sim.count("destroy") == 0


def test_two_ports_via_proxy_ports(sim: Sim, tmp_path: Path) -> None:
    """PROXY_PORTS: two listeners reach two container ports of one instance."""
    p1, p2 = free_port(), free_port()
    env = base_env(sim, tmp_path, PROXY_PORTS=f"{p1}:8000,{p2}:8001")
    with run_provisioner(env, tmp_path) as prov:

        def answer(port: int, path: str) -> dict[str, Any] | None:
            # the JSON of a 200 itself: right after the reload an old worker may still send the 503 page
            r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=3)
            return r.json() if r.status_code == 200 else None

        a = wait_for(lambda: answer(p1, "/a"), 40, "port one to serve")
        b = wait_for(lambda: answer(p2, "/b"), 20, "port two to serve")
        assert a["instance_id"] == b["instance_id"]
        assert prov.proc.poll() is None


def test_streaming_and_websocket_through_the_proxy(sim: Sim, tmp_path: Path) -> None:
    """SSE events arrive incrementally through the proxy, and a WebSocket round-trips."""
    env = base_env(sim, tmp_path)
    with run_provisioner(env, tmp_path) as prov:
        prov.wait_serving(40)
        arrivals: list[float] = []
        start = time.monotonic()
        with httpx.stream("GET", prov.proxy_url + "/stream?n=10&interval_ms=100", timeout=10) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data:"):
                    arrivals.append(time.monotonic() - start)
        assert len(arrivals) == 10
        assert arrivals[0] < arrivals[-1] - 0.5, f"events were buffered: {arrivals}"

        async def ws_roundtrip() -> str:
            url = prov.proxy_url.replace("http://", "ws://") + "/ws"
            async with websockets.connect(url, open_timeout=5) as ws:
                await ws.send("hello gpu")
                reply = await asyncio.wait_for(ws.recv(), 5)
                return reply if isinstance(reply, str) else reply.decode()

        assert "hello gpu" in asyncio.run(ws_roundtrip())


def test_bad_configuration_exits_2_without_api_calls(sim: Sim, tmp_path: Path) -> None:
    """A bad variable: exit 2, one line naming it, and not a single API call."""
    env = base_env(sim, tmp_path, NGINX_LISTEN_PORT="seventy")
    before = len(sim.requests())
    result = subprocess.run([PROVISIONER, "run"], env=env, capture_output=True, timeout=30, check=False)
    assert result.returncode == 2
    err = result.stderr.decode().strip()
    assert err.count("\n") == 0 and "NGINX_LISTEN_PORT" in err, err
    assert "Traceback" not in err + result.stdout.decode()
    assert len(sim.requests()) == before


def test_demo_check_exits_zero(tmp_path: Path) -> None:
    """`provisioner demo --check` runs the whole loop in-process and exits 0."""
    result = subprocess.run(
        [PROVISIONER, "demo", "--check", "--port", str(free_port()), "--boot-delay", "1"],
        capture_output=True,
        timeout=90,
        check=False,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out[-3000:] + result.stderr.decode()[-2000:]
    assert "demo check passed" in out
    start = out.index("\n{\n") + 1  # the pretty-printed answer, among one-line JSON access logs
    answer = json.loads(out[start : out.index("\n}\n", start) + 2])
    assert answer["label"] == "k8s_pod=demo-pod-0"


def test_sigterm_while_renting_exits_zero(sim: Sim, tmp_path: Path) -> None:
    """SIGTERM during a slow boot exits 0 promptly and leaves at most one instance."""
    sim.admin("POST", "/config", {"boot_delay_s": 30.0})
    env = base_env(sim, tmp_path)
    with run_provisioner(env, tmp_path) as prov:
        wait_for(lambda: sim.count("rent") >= 1, 20, "a rental")
        prov.proc.send_signal(signal.SIGTERM)
        assert prov.proc.wait(20) == 0
    assert len(live(sim, "k8s_pod=vast-pod-0")) <= 1
    assert stop_process(prov.proc) == 0


def test_busy_admin_port_exits_cleanly_and_leaves_no_nginx(sim: Sim, tmp_path: Path) -> None:
    """With ADMIN_PORT taken: exit 1 naming ADMIN_PORT, no nginx left behind, the proxy port free again."""
    env = base_env(sim, tmp_path)
    state_dir = str(Path(env["NGINX_CONFIG_PATH"]).parent)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["ADMIN_PORT"])))
        taken.listen(1)
        with run_provisioner(env, tmp_path) as prov:
            assert prov.proc.wait(30) == 1, prov.output()
        lines = [line for line in prov.output().splitlines() if line.startswith("provisioner: ")]
        assert lines == [
            f"provisioner: ADMIN_PORT: cannot listen on 127.0.0.1:{env['ADMIN_PORT']}: Address already in use"
        ], prov.output()
        assert "Traceback" not in prov.output()
    assert processes_mentioning(state_dir) == [], "an nginx master (or worker) outlived the provisioner"
    assert port_is_free(int(env["NGINX_LISTEN_PORT"])), "the proxy port is still held"
