"""The fleet's one clock (``redisclock``): measured against Redis ``TIME`` (fakeredis answers with this
machine's real time; ``SkewedRedis`` an hour ahead), measured again when due, and what the pods stamp
and age their records with."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import fakeredis
import pytest

from provisioner import blacklist, errors, fleet, fleetguard, redisclock, store
from provisioner.redisclock import MAX_SYNC_RTT_S, RedisClock
from tests.fakes import REDIS_AHEAD_S, Clock, SkewedRedis

LABEL = "k8s_pod=vast-pod-0"
OTHER = "k8s_pod=vast-pod-1"


async def test_a_clock_ten_minutes_behind_reads_redis_time_after_one_sync(client: Any) -> None:
    """Before the first sync it is the local clock; after it, the Redis server's (to the round trip)."""
    local = Clock(time.time() - 600)
    clock = RedisClock(client, local=local)
    assert clock() == local.now and not clock.synced
    await clock.sync()
    assert clock.synced
    assert clock.offset_s == pytest.approx(600, abs=1.0)
    assert clock() == pytest.approx(time.time(), abs=1.0)


async def test_it_is_measured_again_only_when_due(client: Any) -> None:
    mono = Clock(0.0)
    clock = RedisClock(client, local=Clock(time.time() + 30), monotonic=mono, resync_s=300)
    assert clock.due() and redisclock.due(clock)
    await redisclock.sync_if_due(clock)
    mono.now += 299
    assert not clock.due() and not redisclock.due(clock)
    mono.now += 1
    assert clock.due()
    assert not redisclock.due(time.time), "a plain clock is never measured"


class SlowTime:
    """A Redis whose ``TIME`` answers ``ahead_s`` ahead and takes ``delay_s`` on the monotonic clock."""

    def __init__(self, mono: Clock) -> None:
        self.mono = mono
        self.delay_s = 0.0
        self.ahead_s = 0

    async def time(self) -> tuple[int, int]:
        self.mono.now += self.delay_s
        return int(time.time()) + self.ahead_s, 0


async def test_a_slow_answer_does_not_replace_a_known_offset() -> None:
    """An answer slower than ``MAX_SYNC_RTT_S`` says little about when it was taken: the first one is
    still taken (better than none), a later one keeps the known offset until the next is due."""
    mono = Clock(0.0)
    redis = SlowTime(mono)
    clock = RedisClock(cast(store.Client, redis), local=Clock(time.time()), monotonic=mono)
    redis.delay_s, redis.ahead_s = MAX_SYNC_RTT_S + 0.1, 3600
    await clock.sync()
    assert clock.offset_s == pytest.approx(3600, abs=2.0) and not clock.due()
    mono.now += clock.resync_s
    redis.ahead_s = 7200
    await clock.sync()
    assert clock.offset_s == pytest.approx(3600, abs=2.0) and not clock.due()
    mono.now += clock.resync_s
    redis.delay_s = 0.01
    await clock.sync()
    assert clock.offset_s == pytest.approx(7200, abs=2.0)


async def test_a_large_offset_is_warned_about_once(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    clock = RedisClock(client, local=Clock(time.time() + 120), resync_s=0)
    with caplog.at_level(logging.WARNING, logger="provisioner.redisclock"):
        await clock.sync()
        await clock.sync()
    warned = [r for r in caplog.records if getattr(r, "event", None) == "clock-offset"]
    assert len(warned) == 1
    assert "120.0s ahead of the Redis server's" in warned[0].getMessage()


async def test_redis_down_is_a_store_error_and_the_last_offset_stays(
    server: fakeredis.FakeServer, client: Any
) -> None:
    clock = RedisClock(client, local=Clock(time.time() - 50), resync_s=0)
    await clock.sync()
    server.connected = False
    with pytest.raises(errors.StoreError, match="redis time"):
        await clock.sync()
    assert clock.offset_s == pytest.approx(50, abs=1.0)


def pod(client: Any, name: str, skew_s: float) -> fleetguard.GuardedFleet:
    """A pod as ``fleet_wiring`` builds it (the fleet record shares the blacklist's clock), its
    machine's clock ``skew_s`` off."""
    clock = RedisClock(client, local=Clock(time.time() + skew_s))
    bans = blacklist.Blacklist(client, clock=clock, owner=name)
    return fleetguard.GuardedFleet(fleet.Fleet.over(bans), store.Outage(), pod=name)


async def test_pods_with_skewed_clocks_stamp_and_age_on_the_redis_clock(server: fakeredis.FakeServer) -> None:
    """One pod's clock is 20 minutes behind, another's 20 minutes ahead, Redis's an hour ahead: both
    stamp their heartbeats with Redis's time, and each sees the other's fresh heartbeat as live and
    counts its $/h (on their own clocks, 40 minutes apart, neither would)."""
    client = SkewedRedis(server=server, decode_responses=True)
    behind, ahead = pod(client, "vast-pod-0", -1200), pod(client, "vast-pod-1", +1200)
    await behind.beat(LABEL, [7], 0.5)
    await ahead.beat(OTHER, [8], 0.25)
    redis_now = time.time() + REDIS_AHEAD_S
    beats = await fleet.Fleet(client).heartbeats()
    assert beats[LABEL].at == pytest.approx(redis_now, abs=2.0)
    assert beats[OTHER].at == pytest.approx(redis_now, abs=2.0)
    assert await ahead.others_dph(OTHER) == pytest.approx(0.5)
    assert await behind.others_dph(LABEL) == pytest.approx(0.25)
    assert float(await client.get("vastprov:heartbeats:since")) == pytest.approx(redis_now, abs=2.0)
    await client.aclose()


async def test_a_beat_while_redis_is_down_is_skipped_not_raised(
    server: fakeredis.FakeServer, client: Any
) -> None:
    """The clock's measurement goes through the pod's outage state like every other Redis call."""
    server.connected = False
    member = pod(client, "vast-pod-0", -600)
    await member.beat(LABEL, [7], 0.5)
    server.connected = True
    assert await fleet.Fleet(client).heartbeats() == {}


async def test_an_outage_is_said_once_though_the_clock_is_not_due(
    server: fakeredis.FakeServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """With the clock measured, a beat during an outage makes no Redis call for it: nothing that could
    pass for Redis being back (one ``store-unavailable``, no ``store-recovered``, however many beats)."""
    mono = Clock(0.0)
    clock = RedisClock(client, local=Clock(time.time()))
    outage = store.Outage(retry_s=1.0, clock=mono)
    member = fleetguard.GuardedFleet(
        fleet.Fleet.over(blacklist.Blacklist(client, clock=clock)), outage, pod="p"
    )
    await member.beat(LABEL, [7], 0.5)
    assert clock.synced
    server.connected = False
    with caplog.at_level(logging.WARNING, logger="provisioner.store"):
        for _ in range(4):
            mono.now += 5.0  # past the retry time each round
            await member.beat(LABEL, [7], 0.5)
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("store-unavailable") == 1 and "store-recovered" not in events


async def test_a_boot_start_is_kept_on_the_redis_clock(server: fakeredis.FakeServer) -> None:
    """A pod whose clock runs ten minutes ahead starts an instance's boot wait; restarted on a node
    whose clock is right, the pod reads it back as the same moment on its own clock, not ten minutes
    in its future (which would shorten the boot deadline by as much)."""
    client = SkewedRedis(server=server, decode_responses=True)
    real = time.time()
    ahead = blacklist.Blacklist(client, clock=RedisClock(client, local=Clock(real + 600)))
    await redisclock.sync_if_due(ahead.clock)
    assert await ahead.boot_started(7, real + 600) == real + 600
    right = blacklist.Blacklist(client, clock=RedisClock(client, local=Clock(real)))
    await redisclock.sync_if_due(right.clock)
    assert await right.boot_started(7, real + 30) == pytest.approx(real, abs=2.0)
    assert float(await client.get("vastprov:boot:7")) == pytest.approx(real + REDIS_AHEAD_S, abs=2.0)
    await client.aclose()


async def test_ban_times_are_read_back_on_this_machines_clock(server: fakeredis.FakeServer) -> None:
    """Bans are indexed on the fleet's clock (Redis's, an hour ahead here); ``bans()`` answers on this
    machine's, so ``blacklist list`` and ``status`` subtract ``time.time()`` from them."""
    client = SkewedRedis(server=server, decode_responses=True)
    bans = blacklist.Blacklist(client, clock=RedisClock(client), ban_ttl_s=600, owner="op")
    await redisclock.sync_if_due(bans.clock)
    await bans.ban_id("host", 42, "slow")
    (record,) = await bans.bans()
    assert record.expires_at == pytest.approx(time.time() + 600, abs=2.0)
    assert record.at == pytest.approx(time.time(), abs=2.0)
    await client.aclose()
