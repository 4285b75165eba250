"""The pacer on a real redis-server: separate processes share one budget, and a Redis crash falls back."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from provisioner import fleetview, pacer, rentqueue
from tests.redis_server import run_redis

pytestmark = pytest.mark.integration

INTERVAL_S = 0.3
SLOTS_PER_PROCESS = 6

#: one pod: waits for the start signal, then takes N create_instance slots and reports each slot
#: and the Redis time at which it would have sent the call
_POD = """
import asyncio, json, os, sys
import redis.asyncio as aioredis
from provisioner import fleetview, pacer, rentqueue

async def main() -> None:
    url, n, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    r = aioredis.Redis.from_url(url, decode_responses=True)
    keys = pacer.Keys(pacer.budget_id(os.environ["VAST_API_KEY"]))
    limits = pacer.limits_with({"create_instance": interval})
    p = pacer.Pacer(r, keys, limits=limits, margin_s=0.0, failover=pacer.Failover(deadline_s=5.0))
    while not await r.exists("test:go"):
        await asyncio.sleep(0.01)
    out = []
    for _ in range(n):
        slot = await p.acquire(pacer.Endpoint.CREATE_INSTANCE)
        sec, usec = await r.time()
        out.append({"slot": slot.at_s, "sent": sec + usec / 1e6, "fleet": slot.fleet})
    print(json.dumps(out))
    await r.aclose()

asyncio.run(main())
"""


def start_pod(url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "VAST_API_KEY": "k3y-shared-by-the-fleet"}
    args = [sys.executable, "-c", _POD, url, str(SLOTS_PER_PROCESS), str(INTERVAL_S)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_on_one_key_send_one_interval_apart(tmp_path: Path) -> None:
    """Two pod processes taking slots of one endpoint get slots spaced by the interval on the Redis clock."""
    with run_redis(tmp_path) as server:
        pods = [start_pod(server.url) for _ in range(2)]
        with redis.Redis.from_url(server.url) as r:
            time.sleep(0.5)  # both processes reach the start line (and poll for the signal)
            r.set("test:go", "1")
        results: list[list[dict[str, Any]]] = []
        for proc in pods:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            results.append(json.loads(out))
    taken = [s for r in results for s in r]
    assert len(taken) == 2 * SLOTS_PER_PROCESS
    assert all(s["fleet"] for s in taken)
    assert all(s["sent"] >= s["slot"] - 0.001 for s in taken), "a call went out before its slot"
    slots = sorted(s["slot"] for s in taken)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= INTERVAL_S - 0.001, gaps


async def test_a_redis_crash_falls_back_to_local_pacing_and_returns(tmp_path: Path) -> None:
    """With Redis killed the pacer answers locally within its deadline; restarted, it is fleet-wide again."""
    with run_redis(tmp_path) as server:
        client = aioredis.Redis.from_url(server.url, decode_responses=True, socket_connect_timeout=0.2)
        failover = pacer.Failover(deadline_s=0.3, retry_s=0.2)
        p = pacer.Pacer(client, pacer.Keys("b"), failover=failover, margin_s=0.0)
        try:
            assert (await p.reserve(pacer.Endpoint.LIST_INSTANCES)).fleet
            server.kill()
            local = await p.reserve(pacer.Endpoint.LIST_INSTANCES)
            assert local.fleet is False
            assert 0.5 < local.wait_s <= 1.0  # the fleet slot taken before the crash still spaces this one
            server.start()
            await asyncio.sleep(0.25)  # past the retry delay
            back = await p.reserve(pacer.Endpoint.LIST_INSTANCES)
            assert back.fleet
            assert back.wait_s > 1.0  # after the local slot, although the restarted Redis is empty
        finally:
            await client.aclose()


async def test_the_shared_view_and_rent_queue_scripts_on_a_real_redis(tmp_path: Path) -> None:
    """On a real Redis: eight pods on a stale view list once; the queue orders, prunes, claims apart."""
    with run_redis(tmp_path) as server:
        clients = [aioredis.Redis.from_url(server.url, decode_responses=True) for _ in range(8)]
        try:
            calls = 0

            async def fetch() -> list[dict[str, Any]]:
                nonlocal calls
                calls += 1
                await asyncio.sleep(0.1)
                return [{"id": 1, "label": "k8s_pod=web-0"}, {"id": 2, "label": "other"}]

            keys = fleetview.Keys("b", "k8s_pod=")
            views = [fleetview.FleetView(fetch, c, keys, fleetview.RAW, poll_s=0.01) for c in clients]
            snaps = await asyncio.gather(*(v.get(30.0, label="k8s_pod=web-0") for v in views))
            assert calls == 1
            assert all(s.shared and [i["id"] for i in s.items] == [1] for s in snaps)

            qs = [rentqueue.RentQueue(c, rentqueue.Keys("b"), member_ttl_s=0.2) for c in clients[:3]]
            assert [(await q.join(f"web-{i}")).k for i, q in enumerate(qs)] == [1, 2, 3]
            picks = await asyncio.gather(*(q.pick(f"web-{i}", [5, 6]) for i, q in enumerate(qs)))
            assert sorted(picks, key=str) == [5, 6, None]
            for _ in range(6):  # web-0 and web-1 stop beating; web-2 looks (and beats) every 50 ms
                await asyncio.sleep(0.05)
                position = await qs[2].position("web-2")
                assert position is not None
            assert (position.k, position.n) == (1, 1)
        finally:
            for c in clients:
                await c.aclose()
