"""The shared instance view: one list for the fleet, single flight on a stale view, local without Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import fakeredis
import pytest

from provisioner import errors, fleetview, pacer

KEYS = fleetview.Keys(budget="b0", fleet="k8s_pod=")
INSTANCES: list[dict[str, Any]] = [
    {"id": 1, "label": "k8s_pod=web-0"},
    {"id": 2, "label": "k8s_pod=web-1"},
    {"id": 3, "label": "someone-else"},
    {"id": 4, "label": None},
    {"id": 5, "label": "k8s_pod=web-0"},
]


class Lister:
    """A fake v1 list: counts calls, can be held at a gate, can fail."""

    def __init__(self, items: Sequence[dict[str, Any]] = INSTANCES) -> None:
        self.items = list(items)
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def __call__(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return list(self.items)


def view(lister: Lister, redis: Any, **kw: Any) -> fleetview.FleetView[dict[str, Any]]:
    kw.setdefault("poll_s", 0.005)
    return fleetview.FleetView(lister, redis, KEYS, fleetview.RAW, **kw)


@pytest.fixture
async def clients(server: fakeredis.FakeServer) -> AsyncIterator[list[fakeredis.FakeAsyncRedis]]:
    """One Redis client per pod, all on one server."""
    made = [fakeredis.FakeAsyncRedis(server=server, decode_responses=True) for _ in range(12)]
    yield made
    for c in made:
        await c.aclose()


async def test_many_pods_on_a_stale_view_list_exactly_once(clients: list[fakeredis.FakeAsyncRedis]) -> None:
    """Twelve pods finding no view at once cause one list call; all read its result."""
    lister = Lister()
    lister.gate = asyncio.Event()
    pods = [view(lister, c) for c in clients]
    reads = [asyncio.create_task(p.get(10.0)) for p in pods]
    await asyncio.sleep(0.05)  # every pod has found the view stale and is waiting or listing
    lister.gate.set()
    snaps = await asyncio.gather(*reads)
    assert lister.calls == 1
    assert sum(s.fetched for s in snaps) == 1
    assert {tuple(i["id"] for i in s.items) for s in snaps} == {(1, 2, 5)}
    assert all(s.shared for s in snaps)


async def test_a_fresh_view_is_read_without_listing(clients: list[fakeredis.FakeAsyncRedis]) -> None:
    """Once one pod has listed, the others read the view from Redis within the max age."""
    lister = Lister()
    await view(lister, clients[0]).get(30.0)
    snap = await view(lister, clients[1]).get(30.0)
    assert lister.calls == 1
    assert snap.shared and not snap.fetched
    assert 0.0 <= snap.age_s < 1.0


async def test_an_older_view_than_the_caller_accepts_is_refreshed_once(
    clients: list[fakeredis.FakeAsyncRedis],
) -> None:
    """A view older than ``max_age_s`` is listed again, by one pod, and then read by the rest."""
    lister = Lister()
    await view(lister, clients[0]).get(30.0)
    await clients[0].hincrby(KEYS.view, "at", -20_000)  # the view is now 20 s old
    assert (await view(lister, clients[1]).get(30.0)).age_s >= 20.0
    snaps = await asyncio.gather(*(view(lister, c).get(10.0) for c in clients[2:]))
    assert lister.calls == 2
    assert all(s.age_s < 10.0 for s in snaps)


async def test_a_rent_gets_a_list_younger_than_its_lock(clients: list[fakeredis.FakeAsyncRedis]) -> None:
    """With ``max_age_s`` = time since the rent lock, a view requested before the lock is not good enough."""
    lister = Lister()
    await view(lister, clients[0]).get(60.0)
    await clients[0].hincrby(KEYS.view, "at", -2_000)
    snap = await view(lister, clients[1]).get(1.0)  # the rent lock was taken 1 s ago
    assert snap.fetched
    assert snap.age_s <= 1.0
    assert lister.calls == 2


async def test_pods_polling_a_boot_get_the_next_list_once_for_all(
    clients: list[fakeredis.FakeAsyncRedis],
) -> None:
    """``newer_than_ms`` = the view a pod saw: a fresh view it already saw is listed again, once for
    every pod that saw it; the new view's time comes back for the next poll."""
    lister = Lister()
    first = await view(lister, clients[0]).get(30.0)
    assert first.at_ms is not None
    await clients[0].hincrby(KEYS.view, "at", -50)  # the refresh below lands in another millisecond
    seen = first.at_ms - 50
    again = await view(lister, clients[1]).get(30.0, newer_than_ms=seen - 1)
    assert (again.fetched, again.at_ms, lister.calls) == (False, seen, 1), "a view newer than seen is read"
    snaps = await asyncio.gather(*(view(lister, c).get(30.0, newer_than_ms=seen) for c in clients[2:]))
    assert lister.calls == 2
    assert sum(s.fetched for s in snaps) == 1
    assert {s.at_ms for s in snaps} == {snaps[0].at_ms} and snaps[0].at_ms is not None
    assert snaps[0].at_ms > seen


async def test_a_pod_reads_only_its_own_instances(clients: list[fakeredis.FakeAsyncRedis]) -> None:
    """``label=`` narrows the fleet's view to one pod's instances; the fleet view drops foreign labels."""
    lister = Lister()
    mine = await view(lister, clients[0]).get(30.0, label="k8s_pod=web-0")
    fleet = await view(lister, clients[1]).get(30.0)
    assert [i["id"] for i in mine.items] == [1, 5]
    assert [i["id"] for i in fleet.items] == [1, 2, 5]
    stored = json.loads(await clients[0].hget(KEYS.view, "items"))
    assert [i["id"] for i in stored] == [1, 2, 5]


async def test_a_dead_refresher_blocks_the_others_only_for_its_lock(
    clients: list[fakeredis.FakeAsyncRedis],
) -> None:
    """A pod that took the lock and died: the others wait for its lock to expire, then one lists."""
    await clients[0].set(KEYS.lock, "dead-pod", px=100)
    lister = Lister()
    snaps = await asyncio.gather(*(view(lister, c).get(5.0) for c in clients[:4]))
    assert lister.calls == 1
    assert sum(s.fetched for s in snaps) == 1


async def test_a_failed_list_releases_the_lock_and_propagates(
    clients: list[fakeredis.FakeAsyncRedis],
) -> None:
    """A list that fails reaches its caller and frees the lock, so the next reader lists at once."""
    lister = Lister()
    lister.error = errors.VastUnavailable("list", "HTTP 502")
    with pytest.raises(errors.VastUnavailable):
        await view(lister, clients[0], lock_ttl_s=60.0).get(5.0)
    assert await clients[0].exists(KEYS.lock) == 0
    lister.error = None
    assert (await asyncio.wait_for(view(lister, clients[1]).get(5.0), 1.0)).fetched


async def test_a_late_publisher_never_overwrites_a_newer_view(
    clients: list[fakeredis.FakeAsyncRedis],
) -> None:
    """A slow refresher whose lock expired publishes after a newer list: the newer view stays."""
    slow, fast = Lister([{"id": 1, "label": "k8s_pod=old"}]), Lister([{"id": 2, "label": "k8s_pod=new"}])
    slow.gate = asyncio.Event()
    first = asyncio.create_task(view(slow, clients[0], lock_ttl_s=0.05).get(0.0))
    await asyncio.sleep(0.1)  # its lock has expired
    await asyncio.sleep(0.01)
    assert [i["id"] for i in (await view(fast, clients[1]).get(0.0)).items] == [2]
    slow.gate.set()
    await first
    stored = json.loads(await clients[0].hget(KEYS.view, "items"))
    assert [i["id"] for i in stored] == [2]


async def test_a_view_stamped_in_the_future_is_stale_and_replaced(
    clients: list[fakeredis.FakeAsyncRedis],
) -> None:
    """A view whose time lies ahead of the Redis clock (a Redis restored on a node whose clock is
    behind, a clock stepped back) is not fresh however young it looks, and the next list replaces it:
    otherwise every pod would read it, and miss a new instance, until the clock got there."""
    ahead_ms = int(time.time() * 1000) + 600_000
    await clients[0].hset(KEYS.view, mapping={"at": ahead_ms, "items": "[]"})
    lister = Lister([{"id": 42, "label": "k8s_pod=web-0"}])
    snap = await view(lister, clients[0]).get(30.0)
    assert snap.fetched and [i["id"] for i in snap.items] == [42]
    assert int(await clients[0].hget(KEYS.view, "at")) < ahead_ms, "the next list replaced it"
    again = await view(Lister(), clients[1]).get(30.0)
    assert again.shared and not again.fetched and [i["id"] for i in again.items] == [42]


async def test_a_corrupt_view_is_listed_around(clients: list[fakeredis.FakeAsyncRedis]) -> None:
    """A foreign value under the view's key makes the pod list itself, not crash."""
    await clients[0].hset(KEYS.view, mapping={"at": str(int(time.time() * 1000)), "items": "[1, 2]"})
    lister = Lister()
    snap = await view(lister, clients[0]).get(30.0)
    assert snap.fetched and not snap.shared
    assert [i["id"] for i in snap.items] == [1, 2, 5]


async def test_without_redis_a_pod_keeps_its_own_view_single_flight() -> None:
    """Without Redis the pod lists itself, once per max age however many callers ask at once."""
    now = [100.0]
    lister = Lister()
    pod = view(lister, None, clock=lambda: now[0])
    snaps = await asyncio.gather(*(pod.get(5.0) for _ in range(5)))
    assert lister.calls == 1
    assert not any(s.shared for s in snaps)
    now[0] += 6.0
    assert (await pod.get(5.0)).fetched
    assert lister.calls == 2


async def test_redis_down_falls_back_to_a_local_view_and_logs_once(
    server: fakeredis.FakeServer,
    clients: list[fakeredis.FakeAsyncRedis],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While Redis fails each pod lists for itself; the outage is logged once; back, the view is shared."""
    now = [100.0]
    failover = pacer.Failover(clock=lambda: now[0])
    lister = Lister()
    pod = view(lister, clients[0], failover=failover, clock=lambda: now[0])
    server.connected = False
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        now[0] += 1.0  # past the local view's max age, and past the retry delay once
        assert not (await pod.get(0.5)).shared
    assert lister.calls == 3
    assert [r.message.split(" (")[0] for r in caplog.records] == ["Redis failed"]
    server.connected = True
    now[0] += pacer.DEFAULT_RETRY_S
    assert (await pod.get(0.0)).shared
