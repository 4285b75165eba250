"""The fair rental queue: join order, one pod renting at a time, distinct offer claims, dead pods pruned."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from provisioner import pacer, rentqueue

KEYS = rentqueue.Keys("b0")


@pytest.fixture
async def clients(server: fakeredis.FakeServer) -> AsyncIterator[list[fakeredis.FakeAsyncRedis]]:
    """One Redis client per pod, all on one server."""
    made = [fakeredis.FakeAsyncRedis(server=server, decode_responses=True) for _ in range(4)]
    yield made
    for c in made:
        await c.aclose()


def queue(redis: Any, **kw: Any) -> rentqueue.RentQueue:
    kw.setdefault("poll_s", 0.005)
    return rentqueue.RentQueue(redis, KEYS, **kw)


def where(p: rentqueue.Position | None) -> tuple[int, int] | None:
    return None if p is None else (p.k, p.n)


async def test_positions_follow_join_order(clients: list[fakeredis.FakeAsyncRedis]) -> None:
    """Pods stand in the order they joined; a pod joining again keeps its place; leaving moves the rest up."""
    qs = [queue(c) for c in clients[:3]]
    for i, q in enumerate(qs):
        assert where(await q.join(f"web-{i}")) == (i + 1, i + 1)
    assert where(await qs[0].join("web-0")) == (1, 3)
    await qs[0].leave("web-0")
    assert where(await qs[2].position("web-2")) == (2, 2)
    assert where(await qs[1].position("web-1")) == (1, 2)
    assert await qs[0].position("web-0") is None  # looking does not join


async def test_pods_rent_one_after_another_in_queue_order(clients: list[fakeredis.FakeAsyncRedis]) -> None:
    """Concurrent pods get their turn one at a time, in the order they joined."""
    qs = [queue(c) for c in clients]
    pods = [f"web-{i}" for i in range(len(qs))]
    for q, pod in zip(qs, pods, strict=True):
        await q.join(pod)
    order: list[str] = []
    renting: list[str] = []

    async def rent(q: rentqueue.RentQueue, pod: str) -> None:
        async with q.turn(pod):
            renting.append(pod)
            assert renting == [pod], f"two pods renting at once: {renting}"
            order.append(pod)
            await asyncio.sleep(0.02)
            renting.remove(pod)

    await asyncio.gather(*(rent(q, pod) for q, pod in reversed(list(zip(qs, pods, strict=True)))))
    assert order == pods
    assert await clients[0].zcard(KEYS.queue) == 0


async def test_waiting_pods_report_their_position(
    clients: list[fakeredis.FakeAsyncRedis], caplog: pytest.LogCaptureFixture
) -> None:
    """A waiting pod logs ``queued for rental (position k of n)`` and reports each new position."""
    first, second = queue(clients[0]), queue(clients[1])
    await first.join("web-0")
    seen: list[tuple[int, int]] = []
    caplog.set_level(logging.INFO, "provisioner.rentqueue")
    waiting = asyncio.create_task(second.wait_turn("web-1", lambda p: seen.append((p.k, p.n))))
    await asyncio.sleep(0.05)
    assert seen == [(2, 2)]
    await first.leave("web-0")
    assert where(await asyncio.wait_for(waiting, 1.0)) == (1, 1)
    assert seen == [(2, 2), (1, 1)]
    assert [r.getMessage() for r in caplog.records] == ["queued for rental (position 2 of 2)"]


async def test_a_dead_pod_leaves_the_queue(clients: list[fakeredis.FakeAsyncRedis]) -> None:
    """A pod that stops beating is pruned after the member TTL, and the next pod's turn comes."""
    dead, alive = queue(clients[0], member_ttl_s=0.1), queue(clients[1], member_ttl_s=0.1)
    await dead.join("web-0")
    assert where(await alive.join("web-1")) == (2, 2)
    turn = await asyncio.wait_for(alive.wait_turn("web-1"), 2.0)
    assert where(turn) == (1, 1)
    assert await clients[0].zscore(KEYS.beats, "web-0") is None


async def test_the_pod_renting_keeps_its_turn_while_it_works(clients: list[fakeredis.FakeAsyncRedis]) -> None:
    """A turn held longer than the member TTL is kept alive by beats, so nobody rents beside it."""
    # a TTL a loaded CI machine can keep beating (0.1 s churned there); held for more than 3 TTLs
    holder, waiter = queue(clients[0], member_ttl_s=0.4), queue(clients[1], member_ttl_s=0.4)
    await holder.join("web-0")
    await waiter.join("web-1")
    async with holder.turn("web-0"):
        waiting = asyncio.create_task(waiter.wait_turn("web-1"))
        await asyncio.sleep(1.3)
        assert not waiting.done()
    assert where(await asyncio.wait_for(waiting, 3.0)) == (1, 1)


async def test_pods_picking_from_one_ranking_claim_different_offers(
    clients: list[fakeredis.FakeAsyncRedis],
) -> None:
    """Pods that rank the same offers each get a different one; when all are claimed, none."""
    ranked = [10, 11, 12]
    picks = [await queue(c).pick(f"web-{i}", ranked) for i, c in enumerate(clients)]
    assert picks == [10, 11, 12, None]
    assert await queue(clients[0]).pick("web-1", ranked) == 11  # its own claim again
    assert await clients[0].get(KEYS.claim(10)) == "web-0"


async def test_concurrent_picks_never_share_an_offer(clients: list[fakeredis.FakeAsyncRedis]) -> None:
    """Picks made at the same moment are atomic: every pod ends with its own offer."""
    picks = await asyncio.gather(*(queue(c).pick(f"web-{i}", [7, 8, 9, 10]) for i, c in enumerate(clients)))
    assert sorted(p for p in picks if p is not None) == [7, 8, 9, 10]


async def test_a_released_or_expired_claim_is_free_again(clients: list[fakeredis.FakeAsyncRedis]) -> None:
    """A claim given back, or one whose TTL passed, can be picked by another pod; others' claims stay."""
    a, b = queue(clients[0], claim_ttl_s=0.05), queue(clients[1], claim_ttl_s=0.05)
    assert await a.pick("web-0", [1]) == 1
    await b.release("web-1", 1)  # not its claim: nothing happens
    assert await b.pick("web-1", [1]) is None
    await a.release("web-0", 1)
    assert await b.pick("web-1", [1]) == 1
    await asyncio.sleep(0.08)
    assert await a.pick("web-0", [1]) == 1
    assert await a.pick("web-0", []) is None


async def test_without_redis_the_pod_is_alone_in_its_own_queue(
    server: fakeredis.FakeServer, clients: list[fakeredis.FakeAsyncRedis], caplog: pytest.LogCaptureFixture
) -> None:
    """While Redis fails the pod queues and claims locally (same rules), logged once; back, it is shared."""
    now = [100.0]
    q = queue(clients[0], failover=pacer.Failover(clock=lambda: now[0]), clock=lambda: now[0])
    server.connected = False
    caplog.set_level(logging.WARNING)
    position = await q.join("web-0")
    assert (position.k, position.n, position.shared) == (1, 1, False)
    assert [await q.pick("web-0", [5, 6]), await q.pick("web-9", [5, 6]), await q.pick("web-8", [5, 6])] == [
        5,
        6,
        None,
    ]
    await q.leave("web-0")
    assert await q.position("web-0") is None
    assert len(caplog.records) == 1
    server.connected = True
    now[0] += pacer.DEFAULT_RETRY_S
    assert (await q.join("web-0")).shared


def test_local_queue_prunes_silent_pods() -> None:
    """The per-process queue drops a member that has not been seen for the member TTL."""
    now = [0.0]
    local = rentqueue.LocalQueue(member_ttl_s=10.0, clock=lambda: now[0])
    local.position("a", join=True)
    now[0] = 5.0
    assert where(local.position("b", join=True)) == (2, 2)
    now[0] = 12.0
    assert where(local.position("b", join=False)) == (1, 1)


async def test_a_retired_offer_is_picked_by_nobody_not_even_its_renter(
    clients: list[fakeredis.FakeAsyncRedis],
) -> None:
    """A rented (or vanished) offer stays out of every pick while a cached shared search may list it."""
    first = queue(clients[0])
    assert await first.pick("web-0", [5, 6]) == 5
    await first.retire(5)
    assert await first.pick("web-0", [5, 6]) == 6, "the renter itself skips the offer it rented"
    assert await queue(clients[1]).pick("web-1", [5]) is None


async def test_a_retired_offer_is_skipped_without_redis_too() -> None:
    """The per-process fallback keeps the same rule."""
    local = queue(None)
    await local.retire(3)
    assert await local.pick("web-0", [3, 4]) == 4
