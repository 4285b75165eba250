"""The admin server in-process: /healthz and /readyz semantics, /metrics format, /status shape."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import socket
import time
from typing import Any

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from provisioner import admin, errors, events, metrics, model, planning
from provisioner.runtime import Runtime
from tests.unit.views import FakeNginx, Shows, make_view, pod_settings

SERVED = model.Instance(
    id=7,
    label="k8s_pod=vast-pod-0",
    actual_status="running",
    host_id=17,
    machine_id=27,
    gpu_name="RTX 4090",
    num_gpus=1,
    dph_total=0.4,
    public_ipaddr="203.0.113.7",
    ports={8000: 40007},
    start_date=1000.0,
)
RENT = events.Event(1500.0, events.EventKind.RENT, "none: offer 1", 7, reason="none")


def make_runtime(
    *,
    phase: str = "serving",
    nginx_up: bool = True,
    healthy: bool | None = True,
    stopping: bool = False,
    heartbeat_age_s: float = 1.0,
    with_reconciler: bool = True,
) -> tuple[Runtime, metrics.Metrics]:
    runtime = Runtime(settings=pod_settings())
    runtime.nginx = FakeNginx(is_running=nginx_up, reloads=2)
    runtime.loop_heartbeat_at = time.time() - heartbeat_age_s
    runtime.stopping = stopping
    if with_reconciler:
        view = make_view(
            phase=planning.Phase(phase), last_tick_at=time.time(), unserve_reason=phase, events=(RENT,)
        )
        if phase == "serving":
            obs = planning.Observation(now=2000.0, instances=(SERVED,), template_hash=None)
            view = dataclasses.replace(
                view,
                serving=SERVED,
                serving_healthy=healthy,
                upstreams={3000: model.Upstream(3000, "203.0.113.7", 40007)},
                last_observation=obs,
            )
        runtime.reconciler = Shows(view)
    m = metrics.Metrics()
    runtime.cost = m.cost
    m.bind(runtime)
    return runtime, m


async def get(made: tuple[Runtime, metrics.Metrics], path: str) -> httpx.Response:
    runtime, m = made
    transport = httpx.ASGITransport(app=admin.create_app(runtime, m.registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
        return await http.get(path)


@pytest.mark.parametrize(
    ("runtime_kw", "health", "ready", "reason"),
    [
        pytest.param({}, 200, 200, "ok", id="serving-healthy"),
        pytest.param({"phase": "booting"}, 200, 503, "booting", id="booting-is-alive-not-ready"),
        pytest.param({"phase": "renting"}, 200, 503, "renting", id="renting"),
        pytest.param({"healthy": False}, 200, 503, "upstream failing its health check", id="instance-died"),
        pytest.param({"healthy": None}, 200, 200, "ok", id="served-not-yet-probed"),
        pytest.param({"stopping": True}, 200, 503, "shutting down", id="shutting-down"),
        pytest.param({"with_reconciler": False}, 200, 503, "starting", id="starting"),
        pytest.param({"nginx_up": False}, 503, 503, "nginx is not running", id="nginx-down"),
        pytest.param({"heartbeat_age_s": 3600.0}, 503, 200, "ok", id="loop-stalled"),
    ],
)
async def test_probe_semantics(runtime_kw: dict[str, Any], health: int, ready: int, reason: str) -> None:
    """/healthz is liveness (loop ticking, nginx up; 200 while booting); /readyz needs a healthy upstream."""
    runtime = make_runtime(**runtime_kw)
    healthz = await get(runtime, "/healthz")
    readyz = await get(runtime, "/readyz")
    assert healthz.status_code == health, healthz.json()
    assert readyz.status_code == ready, readyz.json()
    assert readyz.json()["reason"] == reason


async def test_readyz_says_what_holds_the_rental_back() -> None:
    """A pod held back (here by the spend cap) says why on /readyz, not just "renting"."""
    runtime, m = make_runtime(phase="renting")
    why = "fleet would cost $0.400/h > VAST_MAX_FLEET_DPH $0.300/h (...); waiting"
    assert isinstance(runtime.reconciler, Shows)
    runtime.reconciler = Shows(dataclasses.replace(runtime.reconciler.view(), waiting_reason=why))
    body = (await get((runtime, m), "/readyz")).json()
    assert body["reason"] == f"renting: {why}"


@pytest.mark.parametrize("with_reconciler", [False, True], ids=["starting", "renting"])
async def test_readyz_gives_the_last_error(with_reconciler: bool) -> None:
    """Not ready after a failed tick: /readyz gives the last error (naming the URL), not only the phase."""
    made = make_runtime(phase="renting", with_reconciler=with_reconciler)
    error = "whoami: connection failed to http://127.0.0.1:9/api/v0/users/current/ (ConnectError: refused)"
    made[0].last_error = error
    body = (await get(made, "/readyz")).json()
    phase = "renting" if with_reconciler else "starting"
    assert body["reason"] == f"{phase} (last error: {error})"


async def test_readyz_names_the_served_instance() -> None:
    """A ready answer carries the id of the instance being served."""
    body = (await get(make_runtime(), "/readyz")).json()
    assert body == {"status": "ready", "reason": "ok", "instance_id": 7}


async def test_metrics_endpoint_serves_the_prometheus_text_format() -> None:
    """/metrics answers the Prometheus text format from the process's registry."""
    response = await get(make_runtime(), "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["vastprov_ready"].samples[0].value == 1
    assert families["vastprov_nginx_reloads"].samples[0].value == 2


async def test_status_endpoint_reports_instance_upstream_and_events() -> None:
    """/status is the JSON report of `provisioner status`: instance, upstream, health, events."""
    report = (await get(make_runtime(), "/status")).json()
    assert report["source"] == "admin"
    assert report["pod"] == "vast-pod-0"
    assert report["phase"] == "serving"
    assert report["ready"] is True
    assert report["instance"]["id"] == 7
    assert report["instance"]["served"] is True
    assert report["instance"]["gpu_name"] == "RTX 4090"
    assert report["upstreams"] == [{"listen_port": 3000, "host": "203.0.113.7", "port": 40007}]
    assert report["upstream_healthy"] is True
    assert [e["kind"] for e in report["events"]] == ["rent"]
    assert report["bans"] == [] and report["bans_source"] == "events"


async def test_metrics_endpoint_without_a_registry_is_503() -> None:
    """Before the metrics exist, /metrics says so with a 503 instead of an empty scrape."""
    runtime, _ = make_runtime()
    transport = httpx.ASGITransport(app=admin.create_app(runtime, None))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
        response = await http.get("/metrics")
    assert response.status_code == 503
    assert response.text == "no metrics yet\n"


async def test_the_port_is_bound_at_once_and_served_after_the_first_tick() -> None:
    """A probe that comes before the first tick is over waits in the backlog and is then answered."""
    runtime, m = make_runtime()
    port = admin.AdminPort("127.0.0.1", 0, runtime, m.registry)
    addr = port.sock.getsockname()
    try:
        with pytest.raises(errors.AdminServerError, match="cannot listen"):
            admin.AdminPort("127.0.0.1", addr[1], runtime, m.registry)  # taken: the start ends here
        ticked = asyncio.Event()
        serving = asyncio.create_task(port.serve_after(ticked, 60.0))
        async with httpx.AsyncClient(timeout=10.0) as http:
            early = asyncio.create_task(http.get(f"http://127.0.0.1:{addr[1]}/healthz"))
            await asyncio.sleep(0.2)
            assert not early.done() and port.handle is None  # bound, accepted, not answered yet
            ticked.set()
            await serving
            assert (await early).status_code == 200
    finally:
        await port.close()
    assert port.sock.fileno() == -1


@pytest.mark.parametrize(
    ("failure", "variable", "problem"),
    [
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "ADMIN_HOST",
            "ADMIN_HOST: cannot resolve 'gpu-admin.example': Name or service not known",
        ),
        (
            OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"),
            "ADMIN_HOST",
            "ADMIN_HOST: gpu-admin.example is not an address of this machine",
        ),
        (
            socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
            None,
            "ADMIN_PORT: cannot listen on gpu-admin.example:0: Temporary failure in name resolution",
        ),
    ],
    ids=["no-such-name", "not-this-machine", "dns-down-for-now"],
)
def test_a_host_it_cannot_listen_on_is_a_config_error_naming_admin_host(
    monkeypatch: pytest.MonkeyPatch, failure: OSError, variable: str | None, problem: str
) -> None:
    """A name that does not resolve, or an address of another machine, is ADMIN_HOST's fault (exit 2),
    not ADMIN_PORT's; a name server that fails for now is no configuration error (exit 1)."""

    def bind(host: str, port: int) -> None:
        raise failure

    monkeypatch.setattr(admin.listen, "bind_socket", bind)
    runtime, m = make_runtime()
    with pytest.raises(errors.ProvisionerError) as caught:
        admin.AdminPort("gpu-admin.example", 0, runtime, m.registry)
    assert str(caught.value) == problem
    assert isinstance(caught.value, errors.ConfigError) == (variable is not None)


def test_an_unresolvable_admin_host_is_named_by_the_real_resolver() -> None:
    """The same through the real getaddrinfo: ``.invalid`` never resolves (RFC 6761)."""
    runtime, m = make_runtime()
    with pytest.raises(errors.ProvisionerError, match=r"no-such-host\.invalid"):
        admin.AdminPort("no-such-host.invalid", 0, runtime, m.registry)


async def test_the_port_is_served_within_the_bound_when_the_first_tick_is_long() -> None:
    """A first tick waiting for its turn in the rental queue does not keep the probes unanswered."""
    runtime, m = make_runtime()
    port = admin.AdminPort("127.0.0.1", 0, runtime, m.registry)
    try:
        await asyncio.wait_for(port.serve_after(asyncio.Event(), 0.05), 10.0)
        async with httpx.AsyncClient(timeout=10.0) as http:
            answer = await http.get(f"http://127.0.0.1:{port.sock.getsockname()[1]}/readyz")
        assert answer.status_code == 200
    finally:
        await port.close()
