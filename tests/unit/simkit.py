"""The in-process simulator the sim unit tests share: a client on it (fixtures ``sim``, ``client``,
``runtime``; import them into a test module) and request helpers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from provisioner.sim.app import SimConfig, SimRuntime, running_sim

KEY = "test-key"
BASE = "http://sim.test"
RENT_BODY = {"image": "nginx", "env": {"-p 8000:8000": "1"}, "disk": 20, "runtype": "args"}


@pytest.fixture
async def sim() -> AsyncIterator[tuple[httpx.AsyncClient, SimRuntime, Starlette]]:
    """A client on an in-process sim with a 0.2 s boot."""
    async with running_sim(SimConfig(boot_delay_s=0.2)) as (app, runtime):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as client:
            yield client, runtime, app


@pytest.fixture
def client(sim: tuple[httpx.AsyncClient, SimRuntime, Starlette]) -> httpx.AsyncClient:
    return sim[0]


@pytest.fixture
def runtime(sim: tuple[httpx.AsyncClient, SimRuntime, Starlette]) -> SimRuntime:
    return sim[1]


def q(value: Any) -> str:
    """JSON-encode a query value as the official client does (quote_plus of json.dumps happens in httpx)."""
    return json.dumps(value)


async def offers(client: httpx.AsyncClient, **query: Any) -> list[dict[str, Any]]:
    response = await client.post("/api/v0/bundles/", json=query)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["offers"]
    return result


async def rent(client: httpx.AsyncClient, label: str = "k8s_pod=a", offer_id: int | None = None) -> int:
    if offer_id is None:
        offer_id = (await offers(client, limit=1))[0]["id"]
    response = await client.put(f"/api/v0/asks/{offer_id}/", json={**RENT_BODY, "label": label})
    assert response.status_code == 200, response.text
    instance_id: int = response.json()["new_contract"]
    return instance_id


async def show(client: httpx.AsyncClient, instance_id: int) -> dict[str, Any] | None:
    response = await client.get(f"/api/v0/instances/{instance_id}/", params={"owner": "me"})
    assert response.status_code == 200
    row: dict[str, Any] | None = response.json()["instances"]
    return row


async def wait_status(client: httpx.AsyncClient, instance_id: int, wanted: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            row = await show(client, instance_id)
            if row is not None and row["actual_status"] == wanted:
                return row
            await asyncio.sleep(0.05)


async def fault(client: httpx.AsyncClient, **body: Any) -> None:
    response = await client.post("/_sim/faults", json=body)
    assert response.status_code == 200, response.text


async def counts(client: httpx.AsyncClient) -> dict[str, int]:
    result: dict[str, int] = (await client.get("/_sim/requests")).json()["counts"]
    return result
