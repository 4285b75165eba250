"""The Redis blacklist on fakeredis: bans, TTLs, the restart window, boot starts, reputation, outages,
and the reconciler using it (Vast through respx)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import fakeredis
import httpx
import pytest
import respx

from provisioner import blacklist, errors, model, planning, reconciler, selection, store
from provisioner.blacklist import Blacklist, Guarded
from provisioner.settings import load_settings
from provisioner.store import Keys
from tests.fakes import T0, Clock
from tests.unit.builders import BASE, make_reconciler

LABEL = "k8s_pod=vast-pod-0"


def make(client: Any, clock: Clock, **kwargs: Any) -> Blacklist:
    options: dict[str, Any] = {"ban_ttl_s": 600, "restart_window_s": 3600, "restart_threshold": 5}
    options.update(kwargs)
    return Blacklist(client, clock=clock, owner="vast-pod-0", **options)


def inst(
    iid: int = 77, host: int | None = 10, machine: int | None = 100, status: str = "loading"
) -> model.Instance:
    return model.Instance(id=iid, label=LABEL, actual_status=status, host_id=host, machine_id=machine)


# ---------------------------------------------------------------- bans


async def test_ban_excludes_host_and_machine_with_details(client: Any, clock: Clock) -> None:
    """A ban puts the instance's host and machine in the standing, with reason, time and pod."""
    bl = make(client, clock)
    await bl.ban(inst(), "boot-timeout")
    standing = await bl.standing()
    assert standing.banned_hosts == {10}
    assert standing.banned_machines == {100}
    records = {(r.kind, r.ident): r for r in await bl.bans()}
    host = records[("host", 10)]
    assert (host.reason, host.at, host.by, host.instance_id) == ("boot-timeout", T0, "vast-pod-0", 77)
    assert host.expires_at == T0 + 600
    assert await client.ttl("vastprov:ban:host:10") == 600


async def test_ban_without_ids_is_a_no_op(client: Any, clock: Clock) -> None:
    """An instance without host or machine id bans nothing (and writes nothing)."""
    bl = make(client, clock)
    await bl.ban(inst(host=None, machine=None), "boot-timeout")
    assert await client.keys("*") == []


async def test_bans_expire_with_their_ttl(client: Any, clock: Clock) -> None:
    """Once the TTL has passed, a ban is no longer in the standing, and its index entry is pruned."""
    bl = make(client, clock, ban_ttl_s=60)
    await bl.ban(inst(), "unhealthy")
    clock.now += 59
    assert (await bl.standing()).banned_hosts == {10}
    clock.now += 2
    assert (await bl.standing()).banned_hosts == frozenset()
    assert await client.zcard("vastprov:bans:host") == 0


async def test_operator_ban_and_unban(client: Any, clock: Clock) -> None:
    """ban_id bans one host or machine with its own TTL; unban lifts it and says whether there was one."""
    bl = make(client, clock)
    await bl.ban_id("host", 42, "manual", ttl_s=30)
    await bl.ban_id("machine", 4200, "flaky disk")
    assert {(r.kind, r.ident, r.expires_at) for r in await bl.bans()} == {
        ("host", 42, T0 + 30),
        ("machine", 4200, T0 + 600),
    }
    assert await bl.unban("host", 42) is True
    assert await bl.unban("host", 42) is False
    standing = await bl.standing()
    assert (standing.banned_hosts, standing.banned_machines) == (frozenset(), {4200})


async def test_key_prefix_separates_deployments(client: Any, clock: Clock) -> None:
    """Deployments with different BLACKLIST_KEY_PREFIX share one Redis without seeing each other's bans."""
    one = make(client, clock, keys=Keys("one:"))
    two = make(client, clock, keys=Keys("two:"))
    await one.ban(inst(), "boot-timeout")
    assert (await one.standing()).banned_hosts == {10}
    assert (await two.standing()).banned_hosts == frozenset()
    assert all(key.startswith("one:") for key in await client.keys("*"))


async def test_two_clients_share_bans(server: fakeredis.FakeServer, clock: Clock) -> None:
    """A ban written through one connection (one pod) is seen through another (another pod)."""
    a = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    b = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    try:
        await make(a, clock).ban(inst(), "boot-timeout")
        assert (await make(b, clock).standing()).banned_hosts == {10}
    finally:
        await a.aclose()
        await b.aclose()


# ---------------------------------------------------------------- restarts


async def test_restart_threshold_condemns_after_exactly_threshold_plus_one(client: Any, clock: Clock) -> None:
    """Five adopting starts after crashes inside the window are tolerated; the sixth condemns the
    instance, and bans nothing (our own restarts say nothing about the host)."""
    bl = make(client, clock, restart_threshold=5)
    for _ in range(5):
        assert await bl.adopted(inst()) is None
        clock.now += 60
    assert await bl.adopted(inst()) == blacklist.RESTART_REASON
    assert (await bl.standing()).banned_hosts == frozenset()
    assert await bl.bans() == []


async def test_restart_window_slides(client: Any, clock: Clock) -> None:
    """Starts older than BLACKLIST_RESTART_TTL_SECONDS no longer count: no ban once the window has slid."""
    bl = make(client, clock, restart_threshold=5, restart_window_s=3600)
    for _ in range(5):
        assert await bl.adopted(inst()) is None
        clock.now += 100
    clock.now = T0 + 3600 + 1  # the first start has left the window
    assert await bl.adopted(inst()) is None
    assert await client.zcard("vastprov:restarts:77") == 5
    assert (await bl.standing()).banned_hosts == frozenset()
    assert await client.ttl("vastprov:restarts:77") == 3600


async def test_restart_counts_are_per_instance(client: Any, clock: Clock) -> None:
    """Each instance has its own counter."""
    bl = make(client, clock, restart_threshold=1)
    assert await bl.adopted(inst(1)) is None
    assert await bl.adopted(inst(2)) is None
    assert await bl.count_adoption(1) == 2


async def test_concurrent_starts_lose_no_count(server: fakeredis.FakeServer, clock: Clock) -> None:
    """Twenty starts counted at once over separate connections get twenty distinct counts."""
    clients = [fakeredis.FakeAsyncRedis(server=server, decode_responses=True) for _ in range(20)]
    try:
        counts = await asyncio.gather(*(make(c, clock).count_adoption(77) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    assert sorted(counts) == list(range(1, 21))


# ---------------------------------------------------------------- boot starts


async def test_boot_start_survives_a_restart(client: Any, clock: Clock) -> None:
    """The first boot start stored wins; a later process (new Blacklist object) gets it back."""
    assert await make(client, clock).boot_started(77, T0) == T0
    assert await make(client, clock).boot_started(77, T0 + 500) == T0
    assert await client.ttl("vastprov:boot:77") == store.BOOT_KEY_TTL_S


# ---------------------------------------------------------------- reputation


async def test_deaths_and_health_failures_lower_reputation(client: Any, clock: Clock) -> None:
    """Deaths and failed health checks count against the host; ranking then prefers another host."""
    bl = make(client, clock)
    await bl.record(inst(host=10, machine=100), "death")
    await bl.record(inst(host=10, machine=101), "health-fail")
    await bl.record(inst(host=20, machine=200), "ready", 30.0)
    standing = await bl.standing()
    assert standing.hosts[10] == selection.Record(good=0.0, bad=1.25)
    assert standing.machines[100].bad == 1.0
    assert standing.hosts[20].good == 1.0
    offers = [model.Offer(id=1, host_id=10, machine_id=102, dph_total=0.5, reliability=0.99)]
    offers.append(model.Offer(id=2, host_id=30, machine_id=300, dph_total=0.5, reliability=0.99))
    assert [s.offer.id for s in selection.rank_offers(offers, selection.Criteria(), standing)] == [2, 1]


async def test_reputation_decays(client: Any, clock: Clock) -> None:
    """A bad event weighs half after one half-life."""
    bl = make(client, clock, half_life_s=1000.0)
    await bl.record(inst(), "death")
    clock.now += 1000
    assert (await bl.standing()).hosts[10].bad == pytest.approx(0.5)


async def test_old_events_are_dropped(client: Any, clock: Clock) -> None:
    """Events beyond the horizon (EVENT_HORIZON_HALF_LIVES half-lives) are removed from Redis."""
    bl = make(client, clock, half_life_s=100.0)
    await bl.record(inst(), "death")
    clock.now += 100 * blacklist.EVENT_HORIZON_HALF_LIVES + 1
    assert (await bl.standing()).hosts == {}
    assert await client.zcard("vastprov:events") == 0


async def test_unknown_event_kind_is_refused(client: Any, clock: Clock) -> None:
    """Only the documented event kinds are recorded."""
    with pytest.raises(ValueError, match="unknown reputation event"):
        await make(client, clock).record(inst(), "meh")


async def test_garbage_in_redis_is_ignored(client: Any, clock: Clock) -> None:
    """Members that are not ours (a foreign writer, an old format) do not break reading."""
    await client.zadd("vastprov:bans:host", {"not-an-id": T0 + 100, "5": T0 + 100})
    await client.zadd("vastprov:events", {"{broken": T0, json.dumps({"k": "death", "h": "x"}): T0})
    standing = await make(client, clock).standing()
    assert standing.banned_hosts == {5}
    assert standing.hosts == {}


# ---------------------------------------------------------------- Redis down


async def test_errors_map_to_store_error(server: fakeredis.FakeServer, client: Any, clock: Clock) -> None:
    """With Redis unreachable, every Blacklist call raises StoreError, nothing else."""
    bl = make(client, clock)
    server.connected = False
    for call in (bl.standing(), bl.ban(inst(), "x"), bl.boot_started(1, T0), bl.count_adoption(1), bl.bans()):
        with pytest.raises(errors.StoreError, match="redis"):
            await call


async def test_outage_is_survived_logged_once_and_recovered(
    server: fakeredis.FakeServer, client: Any, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Guarded: while Redis is down calls answer "no bans", the outage is logged once, and Redis is used
    again when it is back."""
    retry = Clock(0.0)
    guarded = Guarded(make(client, clock), store.Outage(retry_s=2.0, clock=retry))
    await guarded.ban(inst(1, host=5), "boot-timeout")
    server.connected = False
    with caplog.at_level(logging.INFO, logger="provisioner.store"):
        for step in range(6):
            retry.now = step * 1.5
            assert await guarded.standing() == selection.Standing()
            assert await guarded.boot_started(9, 123.0) == 123.0
            assert await guarded.adopted(inst()) is None
            await guarded.record(inst(), "death")
            await guarded.ban(inst(), "boot-timeout")
        server.connected = True
        assert await guarded.standing() == selection.Standing(), "not asked again before the retry time"
        retry.now = 100.0
        assert (await guarded.standing()).banned_hosts == {5}
        assert (await guarded.standing()).banned_hosts == {5}
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("store-unavailable") == 1
    assert events.count("store-recovered") == 1


async def test_outage_backs_off_between_attempts(
    server: fakeredis.FakeServer, client: Any, clock: Clock
) -> None:
    """While down, Redis is not asked again before retry_s has passed (ticks do not stall on timeouts)."""
    calls = 0

    class Counting(Blacklist):
        async def standing(self) -> selection.Standing:
            nonlocal calls
            calls += 1
            return await super().standing()

    retry = Clock(0.0)
    guarded = Guarded(Counting(client, clock=clock), store.Outage(retry_s=2.0, clock=retry))
    server.connected = False
    await guarded.standing()
    retry.now = 1.0
    await guarded.standing()
    assert calls == 1
    retry.now = 2.5
    await guarded.standing()
    assert calls == 2


# ---------------------------------------------------------------- settings


def test_blacklist_defaults(env: pytest.MonkeyPatch) -> None:
    """The issue's defaults: off, redis://redis:6379/10, 1200 s, 7 days, 3600 s, 5."""
    s = load_settings()
    assert s.blacklist_enabled is False
    assert s.blacklist_redis_url.get_secret_value() == "redis://redis:6379/10"
    assert s.boot_timeout_seconds == 1200
    assert (s.blacklist_ban_ttl_seconds, s.blacklist_restart_ttl_seconds) == (604800, 3600)
    assert s.blacklist_restart_threshold == 5
    assert s.blacklist_key_prefix == "vastprov:"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        pytest.param({"BLACKLIST_REDIS": "redis://old:1/2"}, "redis://old:1/2", id="old-name"),
        pytest.param({"BLACKLIST_REDIS_URL": "redis://new:1/2"}, "redis://new:1/2", id="new-name"),
        pytest.param(
            {"BLACKLIST_REDIS": "redis://old:1/2", "BLACKLIST_REDIS_URL": "redis://new:1/2"},
            "redis://new:1/2",
            id="new-name-wins",
        ),
    ],
)
def test_redis_url_accepts_the_old_name(
    env: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    """BLACKLIST_REDIS_URL is read (the old provisioner ignored it); BLACKLIST_REDIS still works."""
    for key, value in variables.items():
        env.setenv(key, value)
    assert load_settings().blacklist_redis_url.get_secret_value() == expected


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BLACKLIST_REDIS_URL", "http://redis:6379"),
        ("BLACKLIST_REDIS_URL", "redis://"),
        ("BLACKLIST_KEY_PREFIX", "has space"),
        ("BLACKLIST_RESTART_THRESHOLD", "0"),
        ("BLACKLIST_BAN_TTL_SECONDS", "0"),
    ],
)
def test_bad_blacklist_settings_name_the_variable(env: pytest.MonkeyPatch, variable: str, value: str) -> None:
    """A bad blacklist variable is a ConfigError naming it (and never echoing a URL's password)."""
    env.setenv(variable, value)
    with pytest.raises(errors.ConfigError) as info:
        load_settings()
    assert info.value.variable == variable


# ---------------------------------------------------------------- the reconciler with the blacklist


def apply(self, text: str) -> bool:
    return True


def row(iid: int, host: int, machine: int, status: str = "loading") -> dict[str, Any]:
    return {"id": iid, "label": LABEL, "actual_status": status, "host_id": host, "machine_id": machine}


def offer_row(oid: int, host: int, dph: float) -> dict[str, Any]:
    return {
        "id": oid,
        "host_id": host,
        "machine_id": host * 10,
        "dph_total": dph,
        "reliability": 0.99,
        "direct_port_count": 10,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
    }


def build_reconciler(
    env: pytest.MonkeyPatch, http: httpx.AsyncClient, bans: Guarded, clock: Clock, **extra_env: str
) -> reconciler.Reconciler:
    return make_reconciler(env, http, clock, bans=bans, **extra_env)


async def test_rental_sends_bans_in_the_query_and_skips_banned_offers(
    env: pytest.MonkeyPatch, client: Any, clock: Clock
) -> None:
    """The search sent to Vast carries host_id notin [banned]; a banned offer the server returns anyway
    is not rented."""
    bl = make(client, clock)
    await bl.ban_id("host", 7, "manual")
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        search = mock.post("/api/v0/bundles/").respond(
            json={"offers": [offer_row(1, host=7, dph=0.1), offer_row(2, host=8, dph=0.5)]}
        )
        rent = mock.put("/api/v0/asks/2/").respond(json={"success": True, "new_contract": 555})
        async with httpx.AsyncClient() as http:
            rec = build_reconciler(env, http, Guarded(bl), clock, VAST_MAX_PRICE="0.6")
            plan = await rec.tick()
    body = json.loads(search.calls.last.request.content)
    assert body["host_id"] == {"notin": [7]}
    assert body["dph_total"] == {"lte": 0.6}
    assert rent.called and plan.phase is planning.Phase.RENTING
    assert await client.get("vastprov:boot:555") == repr(T0), "the boot start of the rental is stored"


async def test_interruptible_rental_sends_the_bid(env: pytest.MonkeyPatch, client: Any, clock: Clock) -> None:
    """With VAST_INTERRUPTIBLE the search is type bid and the rent carries min_bid x multiplier as price."""
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        search = mock.post("/api/v0/bundles/").respond(
            json={"offers": [{**offer_row(3, 8, 0.2), "min_bid": 0.1}]}
        )
        rent = mock.put("/api/v0/asks/3/").respond(json={"success": True, "new_contract": 556})
        async with httpx.AsyncClient() as http:
            rec = build_reconciler(
                env,
                http,
                Guarded(make(client, clock)),
                clock,
                VAST_INTERRUPTIBLE="true",
                VAST_BID_MULTIPLIER="1.5",
            )
            await rec.tick()
    assert json.loads(search.calls.last.request.content)["type"] == "bid"
    assert json.loads(rent.calls.last.request.content)["price"] == pytest.approx(0.15)


async def test_restart_threshold_through_reconciler_starts(
    env: pytest.MonkeyPatch, client: Any, clock: Clock
) -> None:
    """Process starts after crashes (fresh reconcilers, no clean stop) adopting the same booting instance:
    the (threshold+1)-th condemns it; not answering, it is destroyed at once and rented again, and its
    host is not banned."""
    env.setenv("BLACKLIST_RESTART_THRESHOLD", "2")
    bl = make(client, clock, restart_threshold=2)
    plans = []
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [row(77, 10, 100)], "next_token": None})
        mock.delete("/api/v0/instances/77/").respond(json={"success": True})
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer_row(1, 10, 0.1), offer_row(2, 20, 0.2)]})
        rent = mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 78})
        mock.get("/api/v0/instances/78/").respond(json={"instances": row(78, 20, 200)})
        async with httpx.AsyncClient() as http:
            for _ in range(3):
                rec = build_reconciler(env, http, Guarded(bl), clock)
                plans.append(await rec.tick())
                plans.append(await rec.tick())  # a later tick of the same process does not count again
                clock.now += 10
    assert [p.verdicts[77][0] for p in plans[:4]] == ["booting"] * 4
    assert plans[4].verdicts[77] == planning.Verdict(planning.VerdictKind.CONDEMNED, "restart-threshold")
    assert planning.Destroy(inst(77, 10, 100), "restart-threshold") in plans[4].actions
    assert (await bl.standing()).banned_hosts == frozenset()
    assert rent.called, "the host stays eligible: its cheaper offer is rented"


async def test_boot_wait_survives_a_restart_and_bans_the_slow_host(
    env: pytest.MonkeyPatch, client: Any, clock: Clock
) -> None:
    """The boot start kept in Redis makes a restarted process time the wait from the first start, ban the
    host and destroy the instance once BLACKLIST_BAN_AFTER_SECONDS has passed."""
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [row(77, 10, 100)], "next_token": None})
        mock.delete("/api/v0/instances/77/").respond(json={"success": True})
        mock.post("/api/v0/bundles/").respond(json={"offers": []})
        async with httpx.AsyncClient() as http:
            first = build_reconciler(
                env, http, Guarded(make(client, clock)), clock, BLACKLIST_BAN_AFTER_SECONDS="300"
            )
            assert (await first.tick()).verdicts[77][0] == "booting"
            clock.now += 301
            second = build_reconciler(env, http, Guarded(make(client, clock)), clock)
            plan = await second.tick()
    assert plan.verdicts[77][0] == "timed-out"
    assert planning.Ban(inst(77, 10, 100), "boot-timeout") in plan.actions
    assert (await make(client, clock).standing()).banned_hosts == {10}


async def test_death_is_recorded_against_the_host(env: pytest.MonkeyPatch, client: Any, clock: Clock) -> None:
    """An instance destroyed as dead leaves a death event on its host's record."""
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v1/instances/").respond(
            json={"instances": [row(77, 10, 100, status="exited")], "next_token": None}
        )
        mock.delete("/api/v0/instances/77/").respond(json={"success": True})
        mock.post("/api/v0/bundles/").respond(json={"offers": []})
        async with httpx.AsyncClient() as http:
            await build_reconciler(env, http, Guarded(make(client, clock)), clock).tick()
    assert (await make(client, clock).standing()).hosts[10].bad == 1.0


async def test_redis_down_does_not_stop_a_rental(
    env: pytest.MonkeyPatch, server: fakeredis.FakeServer, client: Any, clock: Clock
) -> None:
    """With Redis unreachable the tick still rents (without bans)."""
    server.connected = False
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        search = mock.post("/api/v0/bundles/").respond(json={"offers": [offer_row(1, 7, 0.1)]})
        rent = mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 9})
        async with httpx.AsyncClient() as http:
            await build_reconciler(env, http, Guarded(make(client, clock)), clock).tick()
    assert "host_id" not in json.loads(search.calls.last.request.content)
    assert rent.called


def _boots_then_runs_on(port: int) -> list[httpx.Response]:
    """Five list answers: instance 77 (host 10) loading, then running with its port on ``port``."""
    running = {
        **row(77, 10, 100, status="running"),
        "public_ipaddr": "127.0.0.1",
        "ports": {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]},
    }
    listed = [row(77, 10, 100), running, running, running, running]
    return [httpx.Response(200, json={"instances": [r], "next_token": None}) for r in listed]


async def test_time_to_ready_and_health_failures_are_recorded_once(
    env: pytest.MonkeyPatch, client: Any, clock: Clock
) -> None:
    """A boot this process watched records one ready event with its time to ready; a run of failed
    health checks records one health-fail, however many ticks it lasts."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v1/instances/").mock(side_effect=_boots_then_runs_on(port))
        async with httpx.AsyncClient() as http:
            rec = build_reconciler(
                env, http, Guarded(make(client, clock)), clock, VAST_ALLOW_PRIVATE_UPSTREAMS="true"
            )
            await rec.tick()
            clock.now += 42
            assert (await rec.tick()).phase is planning.Phase.SERVING
            await rec.tick()
            server.close()
            await server.wait_closed()
            for _ in range(2):
                clock.now += 5
                await rec.tick()
    events = [json.loads(m) for m, _ in await client.zrange("vastprov:events", 0, -1, withscores=True)]
    assert sorted((e["k"], e["v"]) for e in events) == [("health-fail", 0.0), ("ready", 42.0)]
    record = (await make(client, clock).standing()).hosts[10]
    assert (record.good, record.bad) == (pytest.approx(1.0, abs=1e-3), pytest.approx(0.25, abs=1e-3))


async def test_an_app_still_loading_records_no_health_failure(
    env: pytest.MonkeyPatch, client: Any, clock: Clock
) -> None:
    """Port mapped, app not answering yet (still loading): failed checks before its first answer are
    the boot, not a failure of the host. Only the ready event, with the whole wait, is recorded."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v1/instances/").mock(side_effect=_boots_then_runs_on(port))
        async with httpx.AsyncClient() as http:
            rec = build_reconciler(
                env, http, Guarded(make(client, clock)), clock, VAST_ALLOW_PRIVATE_UPSTREAMS="true"
            )
            for _ in range(4):
                assert (await rec.tick()).phase is planning.Phase.BOOTING
                clock.now += 20
            server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
            try:
                assert (await rec.tick()).phase is planning.Phase.SERVING
            finally:
                server.close()
                await server.wait_closed()
    events = [json.loads(m) for m, _ in await client.zrange("vastprov:events", 0, -1, withscores=True)]
    assert [(e["k"], e["v"]) for e in events] == [("ready", 80.0)]
