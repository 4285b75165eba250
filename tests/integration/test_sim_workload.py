"""The simulated GPU workload over real sockets: health, echo, SSE, WebSocket, kill, reboot with remap."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from provisioner.sim.app import SimConfig, SimRuntime, serving_sim

pytestmark = pytest.mark.integration


@pytest.fixture
async def api() -> AsyncIterator[tuple[httpx.AsyncClient, SimRuntime]]:
    """The sim served by uvicorn on 127.0.0.1 (port 0) in this loop, and a client for it."""
    async with serving_sim(SimConfig(boot_delay_s=0.3)) as (base_url, runtime):
        headers = {"Authorization": "Bearer k"}
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
            yield client, runtime


@pytest.fixture
async def client(api: tuple[httpx.AsyncClient, SimRuntime]) -> httpx.AsyncClient:
    return api[0]


async def wait_running(client: httpx.AsyncClient, instance_id: int) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            row: dict[str, Any] = (await client.get(f"/api/v0/instances/{instance_id}/")).json()["instances"]
            if row["actual_status"] == "running":
                return row
            await asyncio.sleep(0.05)


def port_of(row: dict[str, Any], key: str = "8000/tcp") -> tuple[str, int]:
    return row["public_ipaddr"].strip(), int(row["ports"][key][0]["HostPort"])


async def rent_running(client: httpx.AsyncClient, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Rent the cheapest offer, wait for running, return the instance id and its workload base URL."""
    offer = (await client.post("/api/v0/bundles/", json={"order": [["dph_total", "asc"]], "limit": 1})).json()
    body = {"image": "nginx", "env": env or {"-p 8000:8000": "1"}, "label": "k8s_pod=w", "runtype": "args"}
    created = await client.put(f"/api/v0/asks/{offer['offers'][0]['id']}/", json=body)
    instance_id: int = created.json()["new_contract"]
    host, port = port_of(await wait_running(client, instance_id))
    return instance_id, f"http://{host}:{port}"


async def refused(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as probe:
            await probe.get(url)
    except httpx.ConnectError:
        return True
    return False


async def test_health_and_echo(client: httpx.AsyncClient) -> None:
    """The workload answers /health with its instance id and echoes other requests with their details."""
    instance_id, url = await rent_running(client)
    async with httpx.AsyncClient(timeout=5) as http:
        health = await http.get(f"{url}/health")
        assert health.status_code == 200
        assert health.json()["instance_id"] == instance_id
        echo = await http.post(f"{url}/v1/chat?x=1", content=b"hello", headers={"X-Test": "yes"})
    body = echo.json()
    assert body["instance_id"] == instance_id
    assert body["label"] == "k8s_pod=w"
    assert (body["method"], body["path"], body["query"], body["body_size"]) == ("POST", "/v1/chat", "x=1", 5)
    assert body["headers"]["x-test"] == "yes"
    logs = await client.put(f"/api/v0/instances/request_logs/{instance_id}/", json={"filter": "POST"})
    result_url = logs.json()["result_url"]
    async with httpx.AsyncClient(timeout=5) as anonymous:
        assert (await anonymous.get(result_url)).status_code == 404
        text = (await anonymous.get(result_url)).text
    assert '"POST /v1/chat HTTP/1.1" 200' in text


async def test_every_tcp_mapping_gets_a_real_port(client: httpx.AsyncClient) -> None:
    """Each -p TCP mapping is its own listening port serving the workload."""
    instance_id, _ = await rent_running(client, {"-p 8000:8000": "1", "-p 9000:9000": "1"})
    row = await wait_running(client, instance_id)
    async with httpx.AsyncClient(timeout=5) as http:
        for key in ("8000/tcp", "9000/tcp"):
            host, port = port_of(row, key)
            answer = (await http.get(f"http://{host}:{port}/who")).json()
            assert answer["port"] == port


async def test_sse_arrives_incrementally(client: httpx.AsyncClient) -> None:
    """SSE events are flushed as produced: arrivals are spread over the stream, about one interval apart."""
    _, url = await rent_running(client)
    count, interval_s = 8, 0.06
    arrivals: list[float] = []
    events: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream(
            "GET", f"{url}/stream", params={"n": count, "interval_ms": interval_s * 1000}
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
                events.append(json.loads(line.removeprefix("data: ")))
    assert [e["i"] for e in events] == list(range(count))
    span = arrivals[-1] - arrivals[0]
    assert span >= 0.7 * (count - 1) * interval_s  # not all at once at the end
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    assert gaps[len(gaps) // 2] >= 0.5 * interval_s
    assert events[-1]["t"] - events[0]["t"] >= 0.7 * (count - 1) * interval_s


async def test_websocket_echo(client: httpx.AsyncClient) -> None:
    """Text and binary WebSocket messages come back unchanged."""
    _, url = await rent_running(client)
    async with connect(url.replace("http://", "ws://") + "/ws") as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        await ws.send(b"\x00\x01")
        assert await ws.recv() == b"\x00\x01"


async def test_kill_refuses_connections(client: httpx.AsyncClient) -> None:
    """Killing the instance stops its workload: the port refuses connections and the row shows exited."""
    instance_id, url = await rent_running(client)
    assert not await refused(f"{url}/health")
    killed = await client.post(f"/_sim/instances/{instance_id}/kill")
    assert killed.json()["instance"]["actual_status"] == "exited"
    assert await refused(f"{url}/health")
    row = (await client.get(f"/api/v0/instances/{instance_id}/")).json()["instances"]
    assert row["ports"] is None


async def test_destroy_refuses_connections(client: httpx.AsyncClient, api: tuple[Any, SimRuntime]) -> None:
    """Destroying the instance stops its workload at once."""
    instance_id, url = await rent_running(client)
    await client.delete(f"/api/v0/instances/{instance_id}/")
    assert await refused(f"{url}/health")
    await api[1].settle()


async def test_reboot_with_remap_moves_the_port(client: httpx.AsyncClient) -> None:
    """An admin reboot with remap brings the workload back on a new port; the old one refuses."""
    instance_id, old_url = await rent_running(client)
    rebooted = await client.post(f"/_sim/instances/{instance_id}/reboot", json={"remap": True})
    assert rebooted.json()["success"] is True
    host, port = port_of(await wait_running(client, instance_id))
    new_url = f"http://{host}:{port}"
    assert new_url != old_url
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{new_url}/health")).json()["instance_id"] == instance_id
    assert await refused(f"{old_url}/health")


async def test_reboot_without_remap_keeps_the_port(client: httpx.AsyncClient) -> None:
    """An API reboot comes back on the same HostPort."""
    instance_id, url = await rent_running(client)
    await client.put(f"/api/v0/instances/reboot/{instance_id}/", json={})
    host, port = port_of(await wait_running(client, instance_id))
    assert f"http://{host}:{port}" == url
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{url}/health")).status_code == 200
