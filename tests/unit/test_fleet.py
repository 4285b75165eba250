"""Heartbeats in Redis (fakeredis) and the spend guard: the arithmetic, and the reconciler using both
(Vast through respx)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import fakeredis
import httpx
import pytest
import respx

from provisioner import blacklist, daemon, errors, fleet, model, reconciler, selection, store
from provisioner.fleet import Fleet, Heartbeat
from provisioner.fleetguard import GuardedFleet
from provisioner.settings import load_settings
from tests.fakes import T0, Clock
from tests.unit.builders import BASE, make_reconciler

LABEL = "k8s_pod=vast-pod-0"
OTHER = "k8s_pod=vast-pod-1"


@pytest.fixture(autouse=True)
def blacklist_on(env: pytest.MonkeyPatch) -> None:
    """The fleet lives in Redis: the pods of these tests run with the blacklist on."""
    env.setenv("BLACKLIST_ENABLED", "true")


def guarded_fleet(client: Any, clock: Clock, pod: str = "vast-pod-0") -> GuardedFleet:
    bans = blacklist.Blacklist(client, clock=clock, owner=pod)
    return GuardedFleet(Fleet.over(bans), store.Outage(clock=clock), pod=pod, clock=clock)


# ---------------------------------------------------------------- heartbeats


async def test_heartbeat_is_one_record_with_ttl_and_index(client: Any, clock: Clock) -> None:
    """A heartbeat stores label, pod, time, instances and $/h under its label, with the week TTL, and
    indexes the label by time; the record's start is set once."""
    record = Fleet(client, clock=clock)
    await record.beat(Heartbeat(LABEL, "vast-pod-0", T0, (7,), 0.42))
    stored = json.loads(await client.get(f"vastprov:heartbeat:{LABEL}"))
    assert stored == {"label": LABEL, "pod": "vast-pod-0", "at": T0, "instance_ids": [7], "dph": 0.42}
    assert await client.ttl(f"vastprov:heartbeat:{LABEL}") == fleet.HEARTBEAT_TTL_S
    assert await client.zrange("vastprov:heartbeats", 0, -1, withscores=True) == [(LABEL, T0)]
    await record.beat(Heartbeat(LABEL, "vast-pod-0", T0 + 5, (7,), 0.42))
    assert await record.tracked_since() == T0
    assert (await record.heartbeats())[LABEL].at == T0 + 5


async def test_heartbeats_skip_junk_and_expired_index_entries(client: Any, clock: Clock) -> None:
    """Reading the record ignores corrupt values, entries whose key expired and entries past the TTL."""
    record = Fleet(client, clock=clock)
    await record.beat(Heartbeat(LABEL, "a", T0))
    await client.zadd("vastprov:heartbeats", {"k8s_pod=gone": T0, "k8s_pod=junk": T0})
    await client.set("vastprov:heartbeat:k8s_pod=junk", "{not json")
    await client.zadd("vastprov:heartbeats", {"k8s_pod=ancient": T0 - fleet.HEARTBEAT_TTL_S - 1})
    await client.set("vastprov:heartbeat:k8s_pod=ancient", Heartbeat("k8s_pod=ancient", "b", T0).to_json())
    assert list(await record.heartbeats()) == [LABEL]
    assert await record.heartbeat("k8s_pod=junk") is None


async def test_key_prefix_separates_fleets(client: Any, clock: Clock) -> None:
    """Two BLACKLIST_KEY_PREFIXes on one Redis see only their own heartbeats."""
    one = Fleet(client, keys=store.Keys("one:"), clock=clock)
    two = Fleet(client, keys=store.Keys("two:"), clock=clock)
    await one.beat(Heartbeat(LABEL, "a", T0))
    assert await two.heartbeats() == {}
    assert await two.tracked_since() is None


async def test_fleet_errors_are_store_errors(server: fakeredis.FakeServer, client: Any, clock: Clock) -> None:
    """With Redis unreachable every Fleet call raises StoreError (the reaper refuses on it)."""
    record = Fleet(client, clock=clock)
    server.connected = False
    for call in (record.beat(Heartbeat(LABEL, "a", T0)), record.heartbeats(), record.tracked_since()):
        with pytest.raises(errors.StoreError):
            await call


async def test_guarded_fleet_skips_while_redis_is_down(
    server: fakeredis.FakeServer, client: Any, clock: Clock
) -> None:
    """GuardedFleet never raises: heartbeats are skipped and the spend is unknown (None) during an
    outage; both work again once Redis is back."""
    guarded = guarded_fleet(client, clock)
    server.connected = False
    await guarded.beat(LABEL, [1], 0.5)
    assert await guarded.others_dph(OTHER) is None
    server.connected = True
    clock.now += store.OUTAGE_RETRY_S + 1
    await guarded.beat(LABEL, [1], 0.5)
    assert await guarded.others_dph(OTHER) == 0.5


# ---------------------------------------------------------------- the spend guard's arithmetic


@pytest.mark.parametrize(
    ("beats", "expected"),
    [
        pytest.param([], 0.0, id="alone"),
        pytest.param([Heartbeat(OTHER, "b", T0 - 10, (), 0.3)], 0.3, id="one-live-pod"),
        pytest.param([Heartbeat(LABEL, "a", T0, (), 9.0)], 0.0, id="own-heartbeat-excluded"),
        pytest.param([Heartbeat(OTHER, "b", T0 - fleet.HEARTBEAT_LIVE_S - 1, (), 0.3)], 0.0, id="stale-pod"),
        pytest.param(
            [Heartbeat(OTHER, "b", T0, (), 0.3), Heartbeat("k8s_pod=c", "c", T0 + 3, (), 0.2)],
            0.5,
            id="two-pods-one-clock-ahead",
        ),
    ],
)
def test_fleet_dph(beats: list[Heartbeat], expected: float) -> None:
    """The fleet's spend is the sum over other pods' live heartbeats."""
    assert fleet.fleet_dph(beats, now=T0, exclude_label=LABEL) == pytest.approx(expected)


def test_spend_block_says_why() -> None:
    """Within the cap there is no block; over it the reason names the total, the cap and the parts."""
    assert fleet.spend_block(3.0, others=2.0, own=0.0, price=1.0) is None
    reason = fleet.spend_block(3.0, others=2.4, own=0.3, price=0.5)
    assert reason == (
        "fleet would cost $3.200/h > VAST_MAX_FLEET_DPH $3.000/h (other pods $2.400/h + this pod"
        " $0.300/h + cheapest usable offer $0.500/h); waiting"
    )


# ---------------------------------------------------------------- the reconciler


def offer_row(oid: int, dph: float) -> dict[str, Any]:
    return {
        "id": oid,
        "host_id": oid,
        "machine_id": oid * 10,
        "dph_total": dph,
        "reliability": 0.99,
        "direct_port_count": 10,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
    }


def build(
    env: pytest.MonkeyPatch, http: httpx.AsyncClient, ports: GuardedFleet, clock: Clock, **extra: str
) -> reconciler.Reconciler:
    return make_reconciler(env, http, clock, fleet=ports, **extra)


def no_instances(mock: respx.MockRouter) -> None:
    mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})


async def other_pod(client: Any, clock: Clock, dph: float) -> None:
    await guarded_fleet(client, clock, "vast-pod-1").beat(OTHER, [900], dph)


async def test_tick_writes_the_heartbeat_with_the_rental_price(
    env: pytest.MonkeyPatch, client: Any, clock: Clock
) -> None:
    """After a tick that rents, the heartbeat holds the new instance (not listed yet) and its price."""
    with respx.mock(base_url=BASE) as mock:
        no_instances(mock)
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer_row(1, 0.3)]})
        mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 55})
        async with httpx.AsyncClient() as http:
            await make_reconciler(env, http, clock, fleet=guarded_fleet(client, clock)).tick()
    stored = json.loads(await client.get(f"vastprov:heartbeat:{LABEL}"))
    assert (stored["pod"], stored["at"], stored["instance_ids"]) == ("vast-pod-0", T0, [55])
    assert stored["dph"] == pytest.approx(0.3)


async def test_heartbeat_uses_the_listed_price_and_forgets_destroyed_instances(
    env: pytest.MonkeyPatch, client: Any, clock: Clock
) -> None:
    """A listed instance counts at its dph_total; once list and show say it is gone, it no longer counts."""
    rows = [{"id": 55, "label": LABEL, "actual_status": "loading", "dph_total": 0.35}]
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v0/instances/55/").respond(json={"instances": None})
        mock.get("/api/v1/instances/").mock(
            side_effect=[
                httpx.Response(200, json={"instances": rows, "next_token": None}),
                httpx.Response(200, json={"instances": [], "next_token": None}),
                # the rental that follows lists once more under the rent lock
                httpx.Response(200, json={"instances": [], "next_token": None}),
            ]
        )
        mock.post("/api/v0/bundles/").respond(json={"offers": []})
        async with httpx.AsyncClient() as http:
            rec = make_reconciler(env, http, clock, fleet=guarded_fleet(client, clock))
            await rec.tick()
            first = json.loads(await client.get(f"vastprov:heartbeat:{LABEL}"))
            clock.now += 5
            await rec.tick()
    second = json.loads(await client.get(f"vastprov:heartbeat:{LABEL}"))
    assert (first["instance_ids"], first["dph"]) == ([55], 0.35)
    assert (second["instance_ids"], second["dph"], second["at"]) == ([], 0.0, T0 + 5)


async def test_over_the_cap_the_pod_waits_says_why_once_and_rents_later(
    env: pytest.MonkeyPatch, client: Any, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Other pods at $0.50/h and a $0.70/h cap: no $0.30/h rental; one spend-cap event over several
    ticks; once the other pod's spend drops, the next tick rents."""
    await other_pod(client, clock, 0.5)
    with respx.mock(base_url=BASE) as mock, caplog.at_level(logging.INFO, logger="provisioner.reconciler"):
        no_instances(mock)
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer_row(1, 0.3), offer_row(2, 0.25)]})
        rent = mock.put(url__regex=r"/api/v0/asks/\d+/").respond(json={"success": True, "new_contract": 55})
        async with httpx.AsyncClient() as http:
            rec = make_reconciler(
                env, http, clock, fleet=guarded_fleet(client, clock), VAST_MAX_FLEET_DPH="0.7"
            )
            for _ in range(3):
                await rec.tick()
                clock.now += 5
                await other_pod(client, clock, 0.5)
            assert not rent.called
            await other_pod(client, clock, 0.1)
            await rec.tick()
    assert rent.called
    events = [r for r in caplog.records if getattr(r, "event", None) == "spend-cap"]
    assert len(events) == 1
    assert events[0].getMessage() == (
        "spend-cap: fleet would cost $0.750/h > VAST_MAX_FLEET_DPH $0.700/h (other pods $0.500/h"
        " + cheapest usable offer $0.250/h); waiting"
    )
    assert [e.kind for e in rec.view().events].count("spend-cap") == 1


async def test_the_cap_rents_the_best_offer_that_fits(
    env: pytest.MonkeyPatch, client: Any, clock: Clock
) -> None:
    """When the best-ranked offer would break the cap but a lower-ranked cheaper one fits, that one is
    rented (the cap acts like a price limit of cap - committed)."""
    await other_pod(client, clock, 0.5)
    offers = [{**offer_row(1, 0.1), "reliability": 0.95}, {**offer_row(2, 0.4), "reliability": 0.999}]
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        no_instances(mock)
        mock.post("/api/v0/bundles/").respond(json={"offers": offers})
        cheap = mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 55})
        dear = mock.put("/api/v0/asks/2/").respond(json={"success": True, "new_contract": 56})
        async with httpx.AsyncClient() as http:
            rec = build(
                env,
                http,
                guarded_fleet(client, clock),
                clock,
                VAST_MAX_FLEET_DPH="0.7",
                VAST_SCORE_WEIGHTS="price=0",
            )
            ranked = rec.renter.spec.choose_offers(
                [model.Offer.from_api(o, "test") for o in offers], selection.Standing()
            )
            assert [c.offer.id for c in ranked] == [2, 1], "the dearer offer ranks first"
            await rec.tick()
    assert cheap.called
    assert not dear.called, "the $0.40/h offer would take the fleet to $0.90/h"


async def test_redis_down_rents_anyway_and_says_so_once(
    env: pytest.MonkeyPatch,
    server: fakeredis.FakeServer,
    client: Any,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without Redis the cap cannot be checked: the pod rents, and says so once."""
    server.connected = False
    with respx.mock(base_url=BASE) as mock, caplog.at_level(logging.INFO, logger="provisioner.reconciler"):
        no_instances(mock)
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer_row(1, 0.3)]})
        rent = mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 55})
        async with httpx.AsyncClient() as http:
            rec = make_reconciler(
                env, http, clock, fleet=guarded_fleet(client, clock), VAST_MAX_FLEET_DPH="0.1"
            )
            await rec.tick()
    assert rent.called
    events = [r for r in caplog.records if getattr(r, "event", None) == "spend-cap-unchecked"]
    assert len(events) == 1


def test_cap_without_redis_is_a_configuration_error(env: pytest.MonkeyPatch) -> None:
    """VAST_MAX_FLEET_DPH with BLACKLIST_ENABLED=false is a ConfigError naming VAST_MAX_FLEET_DPH."""
    env.setenv("BLACKLIST_ENABLED", "false")
    env.setenv("VAST_MAX_FLEET_DPH", "3")
    with pytest.raises(errors.ConfigError) as info:
        load_settings()
    assert info.value.variable == "VAST_MAX_FLEET_DPH"
    env.setenv("VAST_MAX_FLEET_DPH", "")
    assert load_settings().vast_max_fleet_dph is None


async def test_daemon_beats_between_ticks(env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's heartbeat task beats on its own interval, however long the reconcile interval, and
    stops with the daemon."""
    monkeypatch.setattr(fleet, "HEARTBEAT_INTERVAL_S", 0.001)
    beats = 0
    enough = asyncio.Event()

    class Rec:
        async def beat(self) -> None:
            nonlocal beats
            beats += 1
            if beats >= 3:
                enough.set()

    d = daemon.Daemon(load_settings(RECONCILE_INTERVAL_SECONDS=3600))
    task = asyncio.create_task(d._heartbeat_loop(Rec()))
    await asyncio.wait_for(enough.wait(), 10)
    d.stop.set()
    await asyncio.wait_for(task, 10)
    assert beats >= 3


# ---------------------------------------------------------------- the rent lock


async def test_rent_lock_admits_one_process_per_label(client: Any) -> None:
    """One token takes a label's rent lock; another is refused; the holder renews; other labels are free."""
    record = Fleet.over(blacklist.Blacklist(client))
    assert await record.take_rent_lock(LABEL, "proc-a")
    assert not await record.take_rent_lock(LABEL, "proc-b")
    assert await record.take_rent_lock(LABEL, "proc-a"), "the holder renews"
    assert await record.take_rent_lock(OTHER, "proc-b")
    assert 0 < await client.pttl(record.keys.rent_lock(LABEL)) <= fleet.RENT_LOCK_TTL_S * 1000


async def test_rent_lock_expires(client: Any) -> None:
    """A crashed holder blocks the label only until the lock's TTL runs out."""
    record = Fleet.over(blacklist.Blacklist(client))
    assert await record.take_rent_lock(LABEL, "proc-a", ttl_s=0.05)
    await asyncio.sleep(0.1)
    assert await record.take_rent_lock(LABEL, "proc-b")


async def test_rent_lock_is_open_while_redis_is_down(
    server: fakeredis.FakeServer, client: Any, clock: Clock
) -> None:
    """Without Redis there is no lock to take: renting goes on (the outage is logged once, by the store)."""
    guarded, other = guarded_fleet(client, clock), guarded_fleet(client, clock, "vast-pod-1")
    server.connected = False
    async with guarded.rent_lock(LABEL) as held:
        assert held
    server.connected = True
    clock.now += store.OUTAGE_RETRY_S + 1
    async with guarded.rent_lock(LABEL) as held:
        assert held
        async with other.rent_lock(LABEL) as other_held:
            assert not other_held


async def test_while_redis_is_down_no_list_is_trusted_under_the_lock(
    server: fakeredis.FakeServer, client: Any, clock: Clock
) -> None:
    """The rent mark cannot be read: the renter lists again (False); marking is skipped, not raised."""
    guarded = guarded_fleet(client, clock)
    server.connected = False
    await guarded.mark_rent(LABEL, done=False)
    assert not await guarded.list_covers_rents(LABEL, 0)
    server.connected = True
    clock.now += store.OUTAGE_RETRY_S + 1
    now_ms = int((await client.time())[0]) * 1000
    assert await guarded.list_covers_rents(LABEL, now_ms), "the mark written during the outage is not there"


async def test_rent_lock_release_only_by_its_holder(client: Any) -> None:
    """Releasing frees the label for the next process; a non-holder's release changes nothing."""
    record = Fleet.over(blacklist.Blacklist(client))
    assert await record.take_rent_lock(LABEL, "proc-a")
    await record.release_rent_lock(LABEL, "proc-b")
    assert not await record.take_rent_lock(LABEL, "proc-b")
    await record.release_rent_lock(LABEL, "proc-a")
    assert await record.take_rent_lock(LABEL, "proc-b")
