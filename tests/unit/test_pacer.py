"""The pacer: per-endpoint minimum intervals, shared through Redis, local when Redis fails."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from provisioner import errors, pacer
from tests.fakes import Clock

E = pacer.Endpoint
KEY = "k3y-abcdef-secret"


class Sleeper:
    """A fake ``asyncio.sleep`` that records each wait and moves the clock by it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.now += seconds


def make(redis: Any, clock: Clock, sleeper: Sleeper | None = None, **kw: Any) -> pacer.Pacer:
    keys = pacer.Keys(pacer.budget_id(KEY))
    failover = pacer.Failover(clock=clock, deadline_s=kw.pop("deadline_s", 0.5))
    return pacer.Pacer(
        redis, keys, failover=failover, clock=clock, sleep=sleeper or Sleeper(clock), margin_s=0.0, **kw
    )


@pytest.fixture
async def second(server: fakeredis.FakeServer) -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    c = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    yield c
    await c.aclose()


async def test_local_pacer_spaces_calls_by_the_endpoint_interval(clock: Clock) -> None:
    """Without Redis, each call of an endpoint waits until one interval after the previous one."""
    sleeper = Sleeper(clock)
    p = make(None, clock, sleeper)
    start = clock.now
    sent = []
    for _ in range(3):
        await p.acquire(E.CREATE_INSTANCE)
        sent.append(clock.now - start)
    assert sent == [0.0, 4.5, 9.0]
    assert sleeper.waits == [4.5, 4.5]


async def test_endpoints_have_separate_budgets(clock: Clock) -> None:
    """A busy rent slot does not delay a list: each endpoint group has its own budget."""
    p = make(None, clock)
    await p.reserve(E.CREATE_INSTANCE)
    assert (await p.reserve(E.CREATE_INSTANCE)).wait_s == 4.5
    assert (await p.reserve(E.LIST_INSTANCES)).wait_s == 0.0
    assert (await p.reserve(E.SEARCH_OFFERS)).wait_s == 0.0
    assert (await p.reserve(E.SEARCH_OFFERS)).wait_s == 6.0


async def test_margin_is_added_to_every_interval(clock: Clock) -> None:
    """The margin widens the spacing so that network jitter cannot bring two calls closer than the limit."""
    p = pacer.Pacer(None, pacer.Keys("b"), margin_s=0.25, clock=clock, sleep=Sleeper(clock))
    await p.reserve(E.LIST_INSTANCES)
    assert (await p.reserve(E.LIST_INSTANCES)).wait_s == 1.25


async def test_two_pacers_on_one_redis_share_one_budget(
    client: fakeredis.FakeAsyncRedis, second: fakeredis.FakeAsyncRedis, clock: Clock
) -> None:
    """Two pods' pacers on one Redis hand out slots exactly one interval apart on the Redis clock."""
    a, b = make(client, clock), make(second, clock)
    slots = [
        await a.reserve(E.SHOW_INSTANCE),
        await b.reserve(E.SHOW_INSTANCE),
        await a.reserve(E.SHOW_INSTANCE),
    ]
    assert all(s.fleet for s in slots)
    assert [round(y.at_s - x.at_s, 3) for x, y in itertools.pairwise(slots)] == [2.0, 2.0]
    assert 1.5 < slots[1].wait_s <= 2.0  # the real time between the two calls is milliseconds
    assert 3.5 < slots[2].wait_s <= 4.0


async def test_a_penalty_from_one_pod_moves_the_other_pods_slot(
    client: fakeredis.FakeAsyncRedis, second: fakeredis.FakeAsyncRedis, clock: Clock
) -> None:
    """A 429 seen by one pod pushes the endpoint's next slot for every pod on the key."""
    a, b = make(client, clock), make(second, clock)
    assert (await b.reserve(E.TEMPLATE_SEARCH)).wait_s == 0.0
    moved = await a.penalize(E.TEMPLATE_SEARCH, retry_after_s=20.0)
    assert 19.5 < moved <= 20.0
    assert 19.5 < (await b.reserve(E.TEMPLATE_SEARCH)).wait_s <= 20.0
    assert 19.5 < await b.free_in_s(E.TEMPLATE_SEARCH) - 3.0 <= 20.0


async def test_a_penalty_without_retry_after_uses_the_endpoint_penalty(
    client: fakeredis.FakeAsyncRedis, clock: Clock
) -> None:
    """A rent 429 without Retry-After costs Vast's rent penalty (12 s), not just the interval."""
    p = make(client, clock)
    assert 11.5 < await p.penalize(E.CREATE_INSTANCE) <= 12.0
    assert 11.5 < (await p.reserve(E.CREATE_INSTANCE)).wait_s <= 12.0


async def test_a_penalty_never_pulls_a_later_slot_earlier(
    client: fakeredis.FakeAsyncRedis, clock: Clock
) -> None:
    """A short Retry-After leaves a slot that is already further out where it is."""
    p = make(client, clock)
    await p.penalize(E.DESTROY, retry_after_s=30.0)
    assert 29.5 < await p.penalize(E.DESTROY, retry_after_s=1.0) <= 30.0


async def test_rate_limited_leaving_the_slot_block_penalizes_and_propagates(
    client: fakeredis.FakeAsyncRedis, clock: Clock
) -> None:
    """``async with pacer.slot(e)`` re-raises a 429 after moving the endpoint's slot by its Retry-After."""
    p = make(client, clock)
    with pytest.raises(errors.RateLimited):
        async with p.slot(E.WHOAMI):
            raise errors.RateLimited("whoami", "too frequent", retry_after_s=7.0)
    assert 6.5 < await p.free_in_s(E.WHOAMI) <= 7.0


async def test_acquire_sleeps_until_the_fleet_slot(client: fakeredis.FakeAsyncRedis, clock: Clock) -> None:
    """``acquire`` sleeps the wait Redis hands out before returning."""
    sleeper = Sleeper(clock)
    p = make(client, clock, sleeper)
    await p.acquire(E.DESTROY)
    await p.acquire(E.DESTROY)
    assert len(sleeper.waits) == 1
    assert 2.5 < sleeper.waits[0] <= 3.0


async def test_budget_keys_hold_a_hash_of_the_api_key_never_the_key(client: fakeredis.FakeAsyncRedis) -> None:
    """The Redis key names derive from a hash of the API key; the key is nowhere in Redis."""
    p = pacer.Pacer(client, pacer.Keys(pacer.budget_id(KEY)))
    await p.reserve(E.LIST_INSTANCES)
    names = [k async for k in client.scan_iter("*")]
    assert names == [f"vastprov:pace:{pacer.budget_id(KEY)}:list_instances"]
    assert KEY not in names[0]
    values = [await client.get(n) for n in names]
    assert all(KEY not in str(v) for v in values)
    assert pacer.budget_id(KEY) != pacer.budget_id(KEY + "x")
    assert len(pacer.budget_id(KEY)) == 16


async def test_slot_keys_expire_after_their_slot(client: fakeredis.FakeAsyncRedis) -> None:
    """A slot key carries a TTL of its next slot plus the slack, so idle budgets leave nothing behind."""
    p = pacer.Pacer(client, pacer.Keys("b"))
    await p.reserve(E.CREATE_INSTANCE)
    ttl_ms = await client.pttl("vastprov:pace:b:create_instance")
    assert pacer.SLOT_KEY_SLACK_MS < ttl_ms <= pacer.SLOT_KEY_SLACK_MS + 4550


async def test_redis_down_falls_back_to_local_pacing_and_logs_once(
    server: fakeredis.FakeServer,
    client: fakeredis.FakeAsyncRedis,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While Redis fails the pod paces alone with the same rules; outage and return are logged once."""
    p = make(client, clock)
    server.connected = False
    caplog.set_level(logging.WARNING, "provisioner.pacer")
    slots = [await p.acquire(E.LIST_INSTANCES) for _ in range(4)]
    assert [s.fleet for s in slots] == [False] * 4
    assert [s.wait_s for s in slots] == [0.0, 1.0, 1.0, 1.0]
    down = [r for r in caplog.records if getattr(r, "event", "") == "fleet-store-unavailable"]
    assert len(down) == 1
    server.connected = True
    clock.now += pacer.DEFAULT_RETRY_S
    assert (await p.reserve(E.LIST_INSTANCES)).fleet
    assert [getattr(r, "event", "") for r in caplog.records] == [
        "fleet-store-unavailable",
        "fleet-store-recovered",
    ]


async def test_back_on_redis_the_local_slots_are_a_floor(
    server: fakeredis.FakeServer, client: fakeredis.FakeAsyncRedis, clock: Clock
) -> None:
    """A slot taken locally during the outage still spaces this pod's first call once Redis is back."""
    p = make(client, clock)
    server.connected = False
    assert (await p.reserve(E.CREATE_INSTANCE)).fleet is False
    server.connected = True
    clock.now += 2.0  # the retry delay has passed; 2.5 s of the local slot's interval remain
    slot = await p.reserve(E.CREATE_INSTANCE)
    assert slot.fleet
    assert slot.wait_s == 2.5


class SlowRedis:
    """A client whose every call takes longer than any sane deadline."""

    async def eval(self, *args: Any) -> Any:
        await asyncio.sleep(5)


async def test_a_slow_redis_counts_as_down(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """A Redis slower than the deadline is not waited for: the call is paced locally at once."""
    p = make(SlowRedis(), clock, deadline_s=0.05)
    caplog.set_level(logging.WARNING, "provisioner.pacer")
    slot = await p.reserve(E.SHOW_INSTANCE)
    assert slot.fleet is False
    assert (await p.reserve(E.SHOW_INSTANCE)).wait_s == 2.0  # skipped during the retry delay: no second wait
    assert len(caplog.records) == 1


def test_parse_intervals_reads_overrides_per_endpoint() -> None:
    """``VAST_PACE_INTERVALS`` overrides named endpoints and keeps the defaults for the others."""
    parsed = pacer.parse_intervals(" create_instance=5 , list_instances=1.5,")
    assert parsed == {"create_instance": 5.0, "list_instances": 1.5}
    limits = pacer.limits_with(parsed)
    assert limits[E.CREATE_INSTANCE] == pacer.Limit(5.0, 12.0)
    assert limits[E.LIST_INSTANCES] == pacer.Limit(1.5, 1.5)
    assert limits[E.DESTROY] == pacer.DEFAULT_LIMITS[E.DESTROY]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("rent=4.5", id="unknown-endpoint"),
        pytest.param("create_instance", id="no-value"),
        pytest.param("create_instance=fast", id="not-a-number"),
        pytest.param("create_instance=-1", id="negative"),
        pytest.param("create_instance=nan", id="nan"),
        pytest.param("create_instance=inf", id="infinite"),
    ],
)
def test_parse_intervals_rejects_bad_entries_naming_the_variable(text: str) -> None:
    """A bad override is a one-line ConfigError that names the variable."""
    with pytest.raises(errors.ConfigError) as caught:
        pacer.parse_intervals(text, variable="VAST_PACE_INTERVALS")
    assert caught.value.variable == "VAST_PACE_INTERVALS"
    assert "\n" not in str(caught.value)


def test_default_limits_cover_every_endpoint() -> None:
    """Every endpoint group has a published interval (a missing one would be a KeyError mid-call)."""
    assert set(pacer.DEFAULT_LIMITS) == set(E)
    assert pacer.DEFAULT_LIMITS[E.SEARCH_OFFERS].interval_s == 6.0  # 10 per minute


class Oversleeper(Sleeper):
    """A sleep that wakes ``late_s`` after its deadline the first ``times`` times (a stalled loop)."""

    def __init__(self, clock: Clock, late_s: float, times: int) -> None:
        super().__init__(clock)
        self.late_s, self.times = late_s, times

    async def __call__(self, seconds: float) -> None:
        await super().__call__(seconds)
        if self.times > 0:
            self.times -= 1
            self.clock.now += self.late_s


async def test_a_slot_woken_up_late_is_given_up_for_the_next_one(clock: Clock) -> None:
    """Sent late, a call would reach Vast closer than the interval to the call in the next slot."""
    sleeper = Oversleeper(clock, late_s=0.3, times=1)
    p = make(None, clock, sleeper)
    await p.acquire(E.LIST_INSTANCES)  # slot 0, free: no sleep, not late
    start = clock.now
    await p.acquire(E.LIST_INSTANCES)  # slot 1.0, woken at 1.3: given up; slot 2.0 taken instead
    assert clock.now - start == pytest.approx(2.0)
    assert sleeper.waits == [pytest.approx(1.0), pytest.approx(0.7)]


class SlowExchange(pacer.Pacer):
    """A pacer whose next exchanges with the store take ``delays`` (before the script runs, or after,
    as ``where`` says: a request queued in a loaded Redis, or a reply that comes back late)."""

    def __init__(self, clock: Clock, sleeper: Sleeper, where: str, delays: list[float]) -> None:
        super().__init__(None, pacer.Keys("b"), clock=clock, sleep=sleeper, margin_s=0.0)
        self.clock, self.where, self.delays = clock, where, delays

    async def reserve(self, endpoint: pacer.Endpoint) -> pacer.Slot:
        delay = self.delays.pop(0) if self.delays else 0.0
        if self.where == "before":
            self.clock.now += delay
        slot = await super().reserve(endpoint)
        if self.where == "after":
            self.clock.now += delay
        return slot


async def test_a_slot_whose_reply_came_back_late_is_given_up_too(clock: Clock) -> None:
    """A reply that took 0.35 s to come back (a loaded Redis, a busy loop) may be that late for its
    slot: the free slot is given up for the next one (1.0 s), not sent 0.35 s after its slot, near
    the call of the pod holding the next one."""
    sleeper = Sleeper(clock)
    p = SlowExchange(clock, sleeper, "after", [0.35])
    start = clock.now
    await p.acquire(E.LIST_INSTANCES)
    assert clock.now - start == pytest.approx(1.0)
    assert sleeper.waits == [pytest.approx(0.65)]


async def test_a_slot_is_never_reached_early_when_the_script_ran_late(clock: Clock) -> None:
    """The request waited 0.2 s in the store before the script ran and gave a slot 0.8 s on from
    there: the pod sleeps from the reply, so it never sends before that slot (1.0 s; the exchange
    being that slow, it may even give the slot up for the next one)."""
    sleeper = Sleeper(clock)
    p = SlowExchange(clock, sleeper, "before", [0.0, 0.2])
    start = clock.now
    await p.acquire(E.LIST_INSTANCES)  # slot 0: sent at once
    await p.acquire(E.LIST_INSTANCES)
    assert clock.now - start >= 1.0 - 1e-9


async def test_a_call_late_every_time_still_goes_after_the_retries(clock: Clock) -> None:
    """A process starved for good does not wait forever: after LATE_RETRIES it sends anyway."""
    sleeper = Oversleeper(clock, late_s=0.3, times=99)
    p = make(None, clock, sleeper)
    await p.acquire(E.LIST_INSTANCES)
    await p.acquire(E.LIST_INSTANCES)
    assert len(sleeper.waits) == 1 + pacer.LATE_RETRIES


async def test_each_wait_for_a_slot_is_told_before_it_is_slept(clock: Clock) -> None:
    """``on_wait`` hears every slot wait (the daemon's liveness allows for it), a free slot none."""
    sleeper = Sleeper(clock)
    p = make(None, clock, sleeper)
    told: list[tuple[float, int]] = []
    p.on_wait = lambda wait_s: told.append((wait_s, len(sleeper.waits)))
    p.local.push(E.SEARCH_OFFERS, 7200.0)
    await p.acquire(E.SEARCH_OFFERS)
    await p.acquire(E.LIST_INSTANCES)
    assert told == [(7200.0, 0)], "told before the sleep, not after; nothing for a free slot"


async def test_a_penalty_also_holds_slots_given_out_before_it(server: fakeredis.FakeServer) -> None:
    """Five pods took their slots 0.3 s apart; the first call is answered 429 with Retry-After: 1.5.
    The pods already sleeping towards slots inside that penalty take new ones after it, instead of
    each earning another 429 (real time, scaled down: Vast's show_instance interval is 2 s)."""
    endpoint = E.SHOW_INSTANCE
    limits = pacer.limits_with({"show_instance": 0.3})
    clients = [fakeredis.FakeAsyncRedis(server=server, decode_responses=True) for _ in range(5)]
    pods = [pacer.Pacer(c, pacer.Keys("b"), limits=limits, margin_s=0.0) for c in clients]
    sent: list[tuple[int, float]] = []
    started = asyncio.get_running_loop().time()

    async def call(i: int, pod: pacer.Pacer) -> None:
        with contextlib.suppress(errors.RateLimited):
            async with pod.slot(endpoint):
                sent.append((i, asyncio.get_running_loop().time() - started))
                if i == 0:
                    raise errors.RateLimited("show instance", "rate limited", retry_after_s=1.5)

    try:
        await asyncio.gather(*(call(i, pod) for i, pod in enumerate(pods)))
    finally:
        for c in clients:
            await c.aclose()
    first = dict(sent)[0]
    assert len(sent) == 5
    assert all(at >= first + 1.45 for i, at in sent if i != 0), sent
