"""The spend cap as a reservation in Redis (fakeredis): reserve under the fleet-wide lock, settle in the
heartbeat, release, expire; pods deciding at once never both fit under a one-rental cap."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fakeredis
import httpx
import pytest
import respx

from provisioner import errors, spend, store
from tests.fakes import T0, Clock
from tests.unit.builders import BASE, make_reconciler
from tests.unit.test_fleet import guarded_fleet, offer_row

LABELS = [f"k8s_pod=vast-pod-{i}" for i in range(4)]


def up_to(cap: float, price: float) -> spend.Decide:
    return lambda others: price if others + price <= cap + 1e-9 else None


async def test_a_reservation_is_seen_by_the_other_pods(client: Any, clock: Clock) -> None:
    """Pod 0 reserves $0.3/h: pod 1 sees it as the others' spend and is refused under a $0.5/h cap."""
    a, b = guarded_fleet(client, clock, "vast-pod-0"), guarded_fleet(client, clock, "vast-pod-1")
    first = await a.reserve(LABELS[0], up_to(0.5, 0.3))
    second = await b.reserve(LABELS[1], up_to(0.5, 0.3))
    assert (first.others, first.amount) == (0.0, 0.3)
    assert (second.others, second.amount) == (pytest.approx(0.3), None)
    stored = json.loads(await client.get(f"vastprov:spend:{LABELS[0]}"))
    assert (stored["pod"], stored["dph"], stored["at"]) == ("vast-pod-0", 0.3, T0)
    assert 0 < await client.pttl(f"vastprov:spend:{LABELS[0]}") <= store.SPEND_RESERVE_TTL_S * 1000


async def test_the_heartbeat_that_counts_the_rental_settles_the_reservation(
    client: Any, clock: Clock
) -> None:
    """beat(settle=True) writes the heartbeat and drops the reservation in one transaction: counted once."""
    a, b = guarded_fleet(client, clock, "vast-pod-0"), guarded_fleet(client, clock, "vast-pod-1")
    await a.reserve(LABELS[0], up_to(1.0, 0.3))
    await a.beat(LABELS[0], [55], 0.3)
    assert (await b.reserve(LABELS[1], lambda others: None)).others == pytest.approx(0.6), "not settled yet"
    await a.beat(LABELS[0], [55], 0.3, settle=True)
    assert (await b.reserve(LABELS[1], lambda others: None)).others == pytest.approx(0.3)
    assert not await client.exists(f"vastprov:spend:{LABELS[0]}")


async def test_release_and_expiry_free_the_reserved_spend(client: Any, clock: Clock) -> None:
    """A released reservation counts no more; an expired one (a crashed pod) neither."""
    a, b = guarded_fleet(client, clock, "vast-pod-0"), guarded_fleet(client, clock, "vast-pod-1")
    await a.reserve(LABELS[0], up_to(1.0, 0.3))
    await a.release_reservation(LABELS[0])
    assert (await b.reserve(LABELS[1], lambda others: None)).others == 0.0
    await a.reserve(LABELS[0], up_to(1.0, 0.3))
    clock.now += store.SPEND_RESERVE_TTL_S + 1
    assert (await b.reserve(LABELS[1], lambda others: None)).others == 0.0


async def test_pods_deciding_at_once_never_overshoot(client: Any, clock: Clock) -> None:
    """Four pods reserving concurrently under a cap that fits one $0.3/h rental: exactly one gets it."""
    pods = [guarded_fleet(client, clock, f"vast-pod-{i}") for i in range(4)]
    found = await asyncio.gather(
        *(p.reserve(label, up_to(0.5, 0.3)) for p, label in zip(pods, LABELS, strict=True))
    )
    assert sorted(r.amount is not None for r in found) == [False, False, False, True]


async def test_redis_down_is_unchecked(server: fakeredis.FakeServer, client: Any, clock: Clock) -> None:
    """While Redis is unavailable the reservation is UNCHECKED (the renter says so and rents)."""
    pod = guarded_fleet(client, clock, "vast-pod-0")
    server.connected = False
    assert await pod.reserve(LABELS[0], up_to(1.0, 0.3)) == spend.UNCHECKED


async def test_a_failed_call_elsewhere_does_not_let_the_next_rental_skip_the_cap(
    server: fakeredis.FakeServer, client: Any, clock: Clock
) -> None:
    """One Redis call of the pod failed a moment ago (a ban read, a heartbeat: the outage state is
    shared). The reservation and the rent lock are tried anyway: Redis answers, so the cap holds the
    rental back and the lock is taken; only Redis failing them now makes them fail open."""
    pod = guarded_fleet(client, clock, "vast-pod-0")
    other = guarded_fleet(client, clock, "vast-pod-1")
    await other.beat(LABELS[1], [7], 2.7)

    async def blip() -> None:
        raise errors.StoreError("redis read bans: no answer within 0.5s")

    assert await pod.outage.call(blip, None) is None  # the outage starts: calls skip Redis for a while
    assert await pod.outage.call(lambda: client.get("x"), "skipped") == "skipped"
    held = await pod.reserve(LABELS[0], up_to(3.0, 0.5))
    assert (held.others, held.amount) == (pytest.approx(2.7), None), "the cap was checked, not UNCHECKED"
    async with pod.rent_lock(LABELS[0]) as got:
        assert got and await client.exists(f"vastprov:rentlock:{LABELS[0]}")
    server.connected = False
    assert await pod.reserve(LABELS[0], up_to(3.0, 0.5)) == spend.UNCHECKED


async def test_a_busy_spend_lock_holds_the_rental(
    client: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another pod holding the fleet-wide spend lock past the wait: busy, nothing reserved."""
    monkeypatch.setattr(store, "SPEND_LOCK_WAIT_S", 0.05)
    await client.set("vastprov:spendlock", "someone-else", px=10_000)
    found = await guarded_fleet(client, clock, "vast-pod-0").reserve(LABELS[0], up_to(1.0, 0.3))
    assert found.busy and found.amount is None
    assert not await client.exists(f"vastprov:spend:{LABELS[0]}")


async def test_a_tick_that_rents_reserves_then_settles_in_its_heartbeat(
    env: pytest.MonkeyPatch, client: Any, clock: Clock
) -> None:
    """Under VAST_MAX_FLEET_DPH a rental's $/h is reserved before the rent call and settled by the tick's
    heartbeat (which counts it): afterwards no reservation is left and the heartbeat holds the price."""
    env.setenv("BLACKLIST_ENABLED", "true")
    key = f"vastprov:spend:{LABELS[0]}"
    seen: list[int] = []

    async def renting(request: httpx.Request) -> httpx.Response:
        seen.append(await client.exists(key))
        return httpx.Response(200, json={"success": True, "new_contract": 55})

    ports = guarded_fleet(client, clock, "vast-pod-0")
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer_row(1, 0.3)]})
        mock.put("/api/v0/asks/1/").mock(side_effect=renting)
        async with httpx.AsyncClient() as http:
            await make_reconciler(env, http, clock, fleet=ports, VAST_MAX_FLEET_DPH="0.5").tick()
    assert seen == [1], "reserved before the rent call"
    assert not await client.exists(key), "settled by the heartbeat"
    assert json.loads(await client.get(f"vastprov:heartbeat:{LABELS[0]}"))["dph"] == pytest.approx(0.3)
