"""The Redis store on fakeredis: one key table, the error mapping, guarded calls, and the rent lock
(atomic take, renewal while held, release only by its holder, the bounded section)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ClusterCrossSlotError, MovedError, ResponseError

from provisioner import blacklist, errors, fleet, fleetguard, rentmark, store
from tests.fakes import Clock

LABEL = "k8s_pod=vast-pod-0"


def rent_lock(client: Any) -> store.RentLock:
    return store.RentLock(client, store.Keys())


def guarded(client: Any, **kwargs: Any) -> fleetguard.GuardedFleet:
    record = fleet.Fleet.over(blacklist.Blacklist(client))
    return fleetguard.GuardedFleet(record, store.Outage(), pod="vast-pod-0", **kwargs)


# ---------------------------------------------------------------- keys, connections, errors


def test_every_key_lives_under_the_prefix() -> None:
    """Each key of the table carries the deployment's prefix, and the names are distinct."""
    keys = store.Keys("p:")
    names = [
        keys.ban("host", 1),
        keys.ban("machine", 1),
        keys.ban_index("host"),
        keys.ban_index("machine"),
        keys.boot(1),
        keys.restarts(1),
        keys.events,
        keys.heartbeat(LABEL),
        keys.heartbeats,
        keys.since,
        keys.rent_lock(LABEL),
        keys.rent_mark(LABEL),
    ]
    assert all(name.startswith("p:") for name in names)
    assert len(set(names)) == len(names)


def test_the_section_is_bounded_below_the_lock_ttl() -> None:
    """The work under the rent lock is cut off before the lock could expire, and renewed well before."""
    assert store.RENT_LOCK_RENEW_S < store.RENT_SECTION_S < store.RENT_LOCK_TTL_S


def test_connect_uses_short_timeouts_and_no_backoff() -> None:
    """The client gets the short socket timeouts and at most one immediate retry."""
    c = store.connect("redis://127.0.0.1:1/3", timeout_s=0.5)
    kwargs = c.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"], kwargs["db"]) == (0.5, 0.5, 3)
    assert c.get_retry()._retries == 1


def test_describe_url_hides_credentials() -> None:
    """Logs name the Redis host, never its password."""
    assert store.describe_url("redis://:s3cret@redis:6379/10") == "redis:6379/10"


async def test_slow_redis_hits_the_deadline() -> None:
    """A Redis exchange that does not answer within the deadline is a StoreError, not a hang."""

    async def stall() -> None:
        await asyncio.sleep(10)

    with pytest.raises(errors.StoreError, match=r"redis ping: no answer within 0\.05s"):
        await store.run_redis("ping", stall, 0.05)


async def test_redis_and_socket_errors_become_store_errors(server: fakeredis.FakeServer, client: Any) -> None:
    """A refused connection is a StoreError naming the operation; nothing else escapes."""
    server.connected = False
    with pytest.raises(errors.StoreError, match="redis get"):
        await store.run_redis("get", lambda: client.get("x"), 1.0)


@pytest.mark.parametrize(
    "raised",
    [
        MovedError("3999 127.0.0.1:6381"),
        ClusterCrossSlotError("Keys in request don't hash to the same slot"),
        ResponseError("Command # 1 (SET k v) of pipeline caused error: CROSSSLOT Keys in request ..."),
        ResponseError("CLUSTERDOWN Hash slot not served"),
    ],
)
async def test_a_cluster_nodes_answers_name_the_cause(raised: Exception) -> None:
    """What a cluster node answers a plain client (a redirect, a cross-slot refusal, also inside a
    pipeline's error) is a StoreError saying that BLACKLIST_REDIS_URL names a cluster node and what to
    use instead; any other Redis error is passed on as it is."""

    async def fail() -> None:
        raise raised

    with pytest.raises(errors.StoreError, match="names a Redis Cluster node; cluster mode is not supported"):
        await store.run_redis("beat", fail, 1.0)

    async def other() -> None:
        raise ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    with pytest.raises(errors.StoreError) as caught:
        await store.run_redis("beat", other, 1.0)
    assert (
        str(caught.value) == "redis beat: WRONGTYPE Operation against a key holding the wrong kind of value"
    )


# ---------------------------------------------------------------- guarded calls


async def test_outage_answers_the_default_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    """While calls fail the default comes back, Redis is not tried before the retry time (which grows
    up to its cap), and the outage is logged once when it starts and once when it ends."""
    clock = Clock(0.0)
    outage = store.Outage(retry_s=2.0, retry_cap_s=8.0, clock=clock)
    tries = 0
    failing = True

    async def call() -> str:
        nonlocal tries
        tries += 1
        if failing:
            raise errors.StoreError("redis get: refused")
        return "real"

    attempts: list[float] = []
    with caplog.at_level(logging.INFO, logger="provisioner.store"):
        for step in range(62):
            clock.now = step * 0.5
            before = tries
            assert await outage.call(call, "default") == "default"
            if tries > before:
                attempts.append(clock.now)
        failing = False
        clock.now = 100.0
        assert await outage.call(call, "default") == "real"
    assert [b - a for a, b in itertools.pairwise(attempts)] == [2.0, 4.0, 8.0, 8.0, 8.0]
    events = [getattr(r, "event", None) for r in caplog.records]
    assert (events.count("store-unavailable"), events.count("store-recovered")) == (1, 1)


# ---------------------------------------------------------------- the rent lock


async def test_lock_take_is_atomic_across_processes(server: fakeredis.FakeServer) -> None:
    """Ten processes racing for one label: exactly one holds the lock."""
    clients = [fakeredis.FakeAsyncRedis(server=server, decode_responses=True) for _ in range(10)]
    try:
        taken = await asyncio.gather(*(rent_lock(c).take(LABEL, f"proc-{i}") for i, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.aclose()
    assert sorted(taken) == [False] * 9 + [True]


async def test_lock_renewal_extends_only_the_holders_lock(client: Any) -> None:
    """The holder's renew resets the TTL; another token cannot renew it."""
    lock = rent_lock(client)
    assert await lock.take(LABEL, "proc-a", ttl_s=1.0)
    assert await client.pttl("vastprov:rentlock:" + LABEL) <= 1000
    assert await lock.renew(LABEL, "proc-a", ttl_s=60.0)
    assert await client.pttl("vastprov:rentlock:" + LABEL) > 1000
    assert not await lock.renew(LABEL, "proc-b", ttl_s=60.0)
    assert await client.get("vastprov:rentlock:" + LABEL) == "proc-a"


async def test_lock_release_only_by_its_holder(client: Any) -> None:
    """Another token's release leaves the lock; the holder's release frees it; a lost lock is not
    renewed or released by its old holder."""
    lock = rent_lock(client)
    assert await lock.take(LABEL, "proc-a")
    await lock.release(LABEL, "proc-b")
    assert await client.get("vastprov:rentlock:" + LABEL) == "proc-a"
    await lock.release(LABEL, "proc-a")
    assert await client.get("vastprov:rentlock:" + LABEL) is None
    assert await lock.take(LABEL, "proc-b")
    assert not await lock.renew(LABEL, "proc-a")
    await lock.release(LABEL, "proc-a")
    assert await client.get("vastprov:rentlock:" + LABEL) == "proc-b"


async def test_rent_lock_renews_while_the_section_runs(client: Any) -> None:
    """A section longer than the lock's TTL keeps the lock (renewed), and frees it at the end."""
    ports = guarded(client, lock_ttl_s=0.2, renew_s=0.05, section_s=5.0)
    other = guarded(client)
    async with ports.rent_lock(LABEL) as held:
        assert held
        await asyncio.sleep(0.5)  # more than twice the 0.2 s TTL
        async with other.rent_lock(LABEL) as other_held:
            assert not other_held, "the renewed lock must still be held"
    assert await client.get("vastprov:rentlock:" + LABEL) is None


async def test_rent_lock_section_is_cut_off_and_released(client: Any) -> None:
    """A section that outlasts its bound ends with TimeoutError, and the lock is released."""
    ports = guarded(client, section_s=0.05)
    with pytest.raises(TimeoutError):
        async with ports.rent_lock(LABEL) as held:
            assert held
            await asyncio.sleep(5)
    assert await client.get("vastprov:rentlock:" + LABEL) is None


# ---------------------------------------------------------------- rent marks


@pytest.mark.parametrize(
    ("raw", "listed_at_ms", "covered"),
    [
        pytest.param(None, 100_000, True, id="no-rent-within-the-mark-ttl"),
        pytest.param("done:90000", 100_000, True, id="done-well-before-the-list"),
        pytest.param("done:96000", 100_000, False, id="done-within-the-list-lag"),
        pytest.param("done:120000", 100_000, False, id="done-after-the-list"),
        pytest.param("started:10000", 100_000, False, id="started-without-an-outcome"),
        pytest.param("garbage", 100_000, False, id="unreadable"),
    ],
)
def test_a_list_covers_the_rents_done_before_it(raw: str | None, listed_at_ms: int, covered: bool) -> None:
    assert rentmark.list_covers_rents(raw, listed_at_ms, now_ms=listed_at_ms + 1_000) is covered


def test_a_list_older_than_the_marks_can_vouch_for_covers_nothing() -> None:
    """A list held longer than half the mark's TTL might predate a rent whose mark expired."""
    old = 1_000_000
    assert not rentmark.list_covers_rents(None, old, now_ms=old + int(store.RENT_MARK_TTL_S * 1000))


async def test_rent_marks_on_the_redis_clock(client: Any) -> None:
    """A rent started after a list is not covered; once done, a list requested after the lag is."""
    marks = rentmark.RentMarks(client, store.Keys())
    now_ms = int((await client.time())[0]) * 1000
    assert await marks.covers(LABEL, now_ms), "no rent was ever marked"
    await marks.mark(LABEL, done=False)
    assert not await marks.covers(LABEL, now_ms + 60_000), "a rent in flight is never covered"
    await marks.mark(LABEL, done=True)
    assert not await marks.covers(LABEL, now_ms), "the list was requested before the rent"
    raw = await client.get(store.Keys().rent_mark(LABEL))
    done_ms = int(raw.split(":")[1])
    assert await marks.covers(LABEL, done_ms + store.RENT_MARK_LAG_MS + 1)
    assert 0 < await client.pttl(store.Keys().rent_mark(LABEL)) <= store.RENT_MARK_TTL_S * 1000
