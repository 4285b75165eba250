"""Issue 13's seams: the client paced per endpoint, observe through the shared view, the renter's turn."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import httpx
import pytest
import respx
from pydantic import SecretStr

from provisioner import errors, fleet_wiring, fleetshared, fleetview, model, pacer, renting, rentqueue, wiring
from provisioner.settings import load_settings
from provisioner.vast import transport
from provisioner.vast.client import RetryPolicy, VastClient
from tests.fakes import Clock
from tests.unit import builders
from tests.unit.test_daemon import Account, FakeRec, make_daemon
from tests.unit.test_renting import BASE, Fleet, offer, ranked, request, search_body
from tests.unit.test_renting import ask as make_ask

E = pacer.Endpoint
KEY = SecretStr("k3y-0123456789")
LIST = f"{BASE}/api/v1/instances/"


class Waits:
    """The pacer's sleep: records each wait instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def paced_client(http: httpx.AsyncClient, redis: Any, waits: Waits, tries: list[float]) -> VastClient:
    keys = pacer.Keys(pacer.budget_id(KEY.get_secret_value()))
    pace = pacer.Pacer(redis, keys, margin_s=0.0, sleep=waits)

    async def no_backoff(seconds: float) -> None:
        tries.append(seconds)

    retry = RetryPolicy(attempts=3, initial_backoff_s=5.0)
    return VastClient(http, KEY, base_url=BASE, retry=retry, pacer=pace, sleep=no_backoff)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def pods(server: fakeredis.FakeServer) -> AsyncIterator[list[fakeredis.FakeAsyncRedis]]:
    made = [fakeredis.FakeAsyncRedis(server=server, decode_responses=True) for _ in range(2)]
    yield made
    for c in made:
        await c.aclose()


def rows(*ids: int, label: str = "k8s_pod=web-0") -> dict[str, Any]:
    return {"instances": [{"id": i, "label": label, "actual_status": "running"} for i in ids]}


# ---------------------------------------------------------------- the client's pacing


@respx.mock
async def test_two_clients_on_one_redis_share_the_list_slot(
    http: httpx.AsyncClient, pods: list[fakeredis.FakeAsyncRedis]
) -> None:
    """Two pods' clients on one key: the second list call waits for the first one's interval (1 s)."""
    respx.get(LIST).mock(return_value=httpx.Response(200, json=rows(1)))
    waits_a, waits_b = Waits(), Waits()
    a = paced_client(http, pods[0], waits_a, [])
    b = paced_client(http, pods[1], waits_b, [])
    await a.list_instances()
    await b.list_instances()
    assert waits_a.waits == []
    assert len(waits_b.waits) == 1 and 0.8 < waits_b.waits[0] <= 1.0


@respx.mock
async def test_a_429_moves_the_slot_for_every_pod_and_the_retry_waits_for_the_slot(
    http: httpx.AsyncClient, pods: list[fakeredis.FakeAsyncRedis]
) -> None:
    """A plain-text 429 penalizes the endpoint fleet-wide; the retry takes no backoff, only the slot."""
    route = respx.get(LIST)
    route.side_effect = [
        httpx.Response(429, text="API requests too frequent"),
        httpx.Response(200, json=rows(1)),
    ]
    waits_a, backoffs = Waits(), list[float]()
    a = paced_client(http, pods[0], waits_a, backoffs)
    assert [i.id for i in await a.list_instances()] == [1]
    assert backoffs == [0.0], "no 5 s backoff: the pacer's slot is the wait"
    assert len(waits_a.waits) == 1 and 0.8 < waits_a.waits[0] <= 1.0, (
        "the retry waited for the penalized slot"
    )
    waits_b = Waits()
    route.side_effect = None
    route.return_value = httpx.Response(200, json=rows(1))
    await paced_client(http, pods[1], waits_b, []).list_instances()
    assert waits_b.waits and waits_b.waits[0] > 0.5, "the other pod's slot moved too"


def test_every_client_call_spends_its_own_endpoint_budget() -> None:
    """The call -> endpoint table: each Vast call has its endpoint; an unknown call spends OTHER."""
    assert transport.endpoint_of("list instances") is E.LIST_INSTANCES
    assert transport.endpoint_of("rent") is E.CREATE_INSTANCE
    assert transport.endpoint_of("search offers") is E.SEARCH_OFFERS
    assert transport.endpoint_of("find template") is E.TEMPLATE_SEARCH
    assert transport.endpoint_of("request logs") is E.LOGS, "remote logs are counted apart"
    assert transport.endpoint_of("something new") is E.OTHER
    assert set(transport.PACED_CALLS.values()) == set(E) - {E.LABEL, E.OTHER}


# ---------------------------------------------------------------- wiring


def test_pace_intervals_are_read_from_the_environment(env: pytest.MonkeyPatch) -> None:
    """VAST_PACE_INTERVALS replaces the named intervals; the others keep Vast's published ones."""
    env.setenv("VAST_PACE_INTERVALS", "list_instances=2.5, create_instance=6")
    pace = fleet_wiring.build_pacer(load_settings(), None)
    assert pace.interval_s(pacer.Endpoint.LIST_INSTANCES) == pytest.approx(2.5 + fleet_wiring.PACE_MARGIN_S)
    assert pace.interval_s(pacer.Endpoint.CREATE_INSTANCE) == pytest.approx(6 + fleet_wiring.PACE_MARGIN_S)
    assert pace.interval_s(pacer.Endpoint.SHOW_INSTANCE) == pytest.approx(2.0 + fleet_wiring.PACE_MARGIN_S)
    assert pace.keys.budget == pacer.budget_id(load_settings().vast_api_key.get_secret_value())


async def test_deployments_on_one_key_share_one_pace_whatever_their_prefix(env: pytest.MonkeyPatch) -> None:
    """Two deployments on one Redis, each under its own BLACKLIST_KEY_PREFIX (as the README asks), on
    one API key: Vast limits the key, so their slots come from one budget (one key in Redis), and the
    second deployment's call waits for the first's."""
    server = fakeredis.FakeServer()
    clients = [fakeredis.FakeAsyncRedis(server=server, decode_responses=True) for _ in range(2)]
    paces = []
    for prefix, client in zip(["team-a:", "team-b:"], clients, strict=True):
        env.setenv("BLACKLIST_KEY_PREFIX", prefix)
        paces.append(fleet_wiring.build_pacer(load_settings(), client))
    try:
        first = await paces[0].reserve(pacer.Endpoint.CREATE_INSTANCE)
        second = await paces[1].reserve(pacer.Endpoint.CREATE_INSTANCE)
        assert paces[0].keys.slot(pacer.Endpoint.CREATE_INSTANCE) == paces[1].keys.slot(
            pacer.Endpoint.CREATE_INSTANCE
        )
        assert (first.wait_s, second.wait_s) == (
            0.0,
            pytest.approx(paces[1].interval_s(pacer.Endpoint.CREATE_INSTANCE), abs=0.05),
        )
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.parametrize("text", ["list=1", "list_instances=-1", "list_instances", "rent=fast"])
def test_bad_pace_intervals_are_a_config_error_naming_the_variable(
    env: pytest.MonkeyPatch, text: str
) -> None:
    """Nonsense in VAST_PACE_INTERVALS is a ConfigError (exit 2) naming the variable."""
    env.setenv("VAST_PACE_INTERVALS", text)
    with pytest.raises(errors.ConfigError, match="VAST_PACE_INTERVALS"):
        fleet_wiring.build_pacer(load_settings(), None)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param({}, 5.0, id="no-redis-keeps-5s"),
        pytest.param({"BLACKLIST_ENABLED": "true"}, wiring.SHARED_BOOT_POLL_S, id="shared-view-0.9s"),
        pytest.param({"BLACKLIST_ENABLED": "true", "BOOT_POLL_SECONDS": "3"}, 3.0, id="explicit-wins"),
    ],
)
def test_boot_poll_is_fast_only_with_the_shared_view(
    env: pytest.MonkeyPatch, extra: dict[str, str], expected: float
) -> None:
    """Unset BOOT_POLL_SECONDS is 1 s when the fleet shares one list, 5 s when each pod lists alone."""
    for key, value in extra.items():
        env.setenv(key, value)
    assert wiring.build_policy(load_settings()).boot_interval_s == expected


# ---------------------------------------------------------------- observe via the view


class Lister:
    """A fake shared view: records the freshness each read asked for."""

    def __init__(self, instances: list[Any]) -> None:
        self.instances = instances
        self.max_ages: list[float] = []
        self.newer_than: list[int | None] = []
        self.lists = 0

        #: what OwnInstances says while Redis is away (the pace of a pod without it); 0: shared
        self.min_poll_s = 0.0

    async def own(self, label: str, max_age_s: float, *, newer_than_ms: int | None = None) -> Any:
        self.max_ages.append(max_age_s)
        self.newer_than.append(newer_than_ms)
        self.lists += 1
        own = [i for i in self.instances if i.label == label]
        return fleetview.OwnList(own, 1_000 * self.lists, self.min_poll_s)


@respx.mock
async def test_observe_reads_the_shared_view_not_the_api(
    env: pytest.MonkeyPatch, http: httpx.AsyncClient, clock: Clock
) -> None:
    """With a shared view the tick lists nothing itself, and asks for a view no older than its poll."""
    listed = respx.get(LIST).mock(return_value=httpx.Response(200, json=rows()))
    rec = builders.make_reconciler(env, http, clock)
    mine = model.Instance.from_api({"id": 7, "label": rec.desired.label, "actual_status": "loading"}, "t")
    lister = Lister([mine])
    rec.adapters = dataclasses.replace(rec.adapters, lister=lister)
    obs = await rec.observe()
    assert [i.id for i in obs.instances] == [7]
    assert listed.call_count == 0
    assert lister.max_ages == [rec.policy.boot_interval_s]
    await rec.observe()
    assert lister.newer_than == [None, 1_000], "the next tick asks for a list after the one it saw"
    assert rec.state.listed_at_ms == 2_000


@respx.mock
async def test_while_redis_is_away_the_tick_polls_at_the_pace_of_a_pod_without_it(
    env: pytest.MonkeyPatch, http: httpx.AsyncClient, clock: Clock
) -> None:
    """A booting pod's tick comes back after the shared view's 0.9 s; while its list is its own
    (Redis away) after BOOT_POLL_SECONDS, as a pod without Redis would, and in steady state unchanged."""
    respx.get(LIST).mock(return_value=httpx.Response(200, json=rows()))
    respx.post(f"{BASE}/api/v0/bundles/").mock(return_value=httpx.Response(200, json={"offers": []}))
    rec = builders.make_reconciler(env, http, clock)
    rec.policy = dataclasses.replace(rec.policy, boot_interval_s=0.9)
    lister = Lister([])
    rec.adapters = dataclasses.replace(rec.adapters, lister=lister)
    assert (await rec.tick()).next_check_s == 0.9
    lister.min_poll_s = 5.0
    clock.now += 1
    assert (await rec.tick()).next_check_s == 5.0
    lister.min_poll_s = 0.0
    clock.now += 5
    assert (await rec.tick()).next_check_s == 0.9, "Redis back: the shared pace again"


@respx.mock
async def test_while_redis_is_away_a_pod_lists_its_own_label_not_the_account(
    env: pytest.MonkeyPatch, http: httpx.AsyncClient, server: fakeredis.FakeServer, pods: list[Any]
) -> None:
    """The fleet's view lists the whole account once for everyone; during an outage each pod lists one
    page, its own label (the server's filter), and says so to its tick (BOOT_POLL_SECONDS)."""
    env.setenv("BOOT_POLL_SECONDS", "4")
    settings = load_settings()
    label = settings.label
    filters: list[str] = []

    def answer(req: httpx.Request) -> httpx.Response:
        filters.append(req.url.params.get("select_filters", ""))
        others = rows(2, label="k8s_pod=other-0")["instances"]
        return httpx.Response(200, json={"instances": rows(1, label=label)["instances"] + others})

    respx.get(LIST).mock(side_effect=answer)
    vast = VastClient(http, KEY, base_url=BASE, retry=RetryPolicy(attempts=1))
    lister, _, _ = fleet_wiring.build_fleet_parts(settings, vast, fleet_wiring.fleet_kit(settings, pods[0]))
    shared = await lister.own(label, 0.0)
    assert ([i.id for i in shared.instances], shared.min_poll_s) == ([1], 0.0)
    assert "label" not in json.loads(filters[-1] or "{}"), "shared: the whole account, for every pod"
    server.connected = False
    alone = await lister.own(label, 0.0)
    assert ([i.id for i in alone.instances], alone.min_poll_s, alone.at_ms) == ([1], 4.0, None)
    assert json.loads(filters[-1]) == {"label": {"eq": label}}, "alone: one page, this pod's label"
    assert len(filters) == 2


async def test_own_instances_keeps_exactly_this_label(pods: list[fakeredis.FakeAsyncRedis]) -> None:
    """The shared view's reader returns this pod's rows only (not another pod's with a longer label)."""

    async def fetch() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = rows(1, label="k8s_pod=web-1")["instances"] + rows(2, 3)["instances"]
        return found

    keys = fleetview.Keys("b", fleetview.label_prefix("k8s_pod=web-0"))
    own = fleetview.OwnInstances(fleetview.FleetView(fetch, pods[0], keys, fleetview.RAW))
    assert [i.id for i in (await own.own("k8s_pod=web-0", 5.0)).instances] == [2, 3]
    assert fleetview.label_prefix("custom") == "custom"


# ---------------------------------------------------------------- the renter's turn


def queue_renter(http: httpx.AsyncClient, redis: Any, pod: str) -> renting.Renter:
    vast = VastClient(http, KEY, base_url=BASE, retry=RetryPolicy(attempts=1))
    spec = renting.RentSpec(search_body=search_body, choose_offers=ranked, rent_request=request)
    queue = rentqueue.RentQueue(redis, rentqueue.Keys("b"), poll_s=0.01)
    return renting.Renter(vast, spec, fleet=Fleet(), turns=renting.Turns(queue, pod))


@respx.mock
async def test_pods_in_the_queue_rent_different_offers(
    http: httpx.AsyncClient, pods: list[fakeredis.FakeAsyncRedis]
) -> None:
    """Two pods ranking the same offers rent one after another, each a different offer (no race)."""
    respx.post(f"{BASE}/api/v0/bundles/").mock(
        return_value=httpx.Response(200, json={"offers": [offer(1, 0.1), offer(2, 0.2)]})
    )
    rented: list[int] = []

    def rent(req: httpx.Request) -> httpx.Response:
        oid = int(req.url.path.rstrip("/").rsplit("/", 1)[1])
        rented.append(oid)
        return httpx.Response(200, json={"success": True, "new_contract": 100 + oid})

    respx.put(url__regex=rf"{BASE}/api/v0/asks/\d+/").mock(side_effect=rent)
    respx.get(LIST).mock(return_value=httpx.Response(200, json=rows()))
    a = queue_renter(http, pods[0], "web-0")
    b = queue_renter(http, pods[1], "web-1")
    out = await asyncio.gather(
        a.rent(make_ask(label="k8s_pod=web-0")), b.rent(make_ask(label="k8s_pod=web-1"))
    )
    assert sorted(o.instance_id or 0 for o in out) == [101, 102]
    assert sorted(rented) == [1, 2], "each offer rented once, none fought over"
    assert a.queue_line is None and b.queue_line is None, "nobody is queued once both rented"


@respx.mock
async def test_a_rent_refused_with_429_gives_its_offer_claim_back(
    http: httpx.AsyncClient, pods: list[fakeredis.FakeAsyncRedis]
) -> None:
    """web-0's rent of the best offer meets a 429: nothing was rented, so its claim on the offer goes
    back at once and web-1 rents that offer, rather than the second best while the claim lives."""
    respx.post(f"{BASE}/api/v0/bundles/").mock(
        return_value=httpx.Response(200, json={"offers": [offer(1, 0.1), offer(2, 0.2)]})
    )
    respx.get(LIST).mock(return_value=httpx.Response(200, json=rows()))
    asks = respx.put(f"{BASE}/api/v0/asks/1/")
    asks.side_effect = [
        httpx.Response(429, text="API requests too frequent"),
        httpx.Response(200, json={"success": True, "new_contract": 101}),
    ]
    with pytest.raises(errors.RateLimited):
        await queue_renter(http, pods[0], "web-0").rent(make_ask(label="k8s_pod=web-0"))
    out = await queue_renter(http, pods[1], "web-1").rent(make_ask(label="k8s_pod=web-1"))
    assert out.instance_id == 101 and asks.call_count == 2


async def queued_behind_web_0(
    redis: fakeredis.FakeAsyncRedis, renter: renting.Renter
) -> tuple[rentqueue.RentQueue, asyncio.Task[renting.Outcome]]:
    """web-0 holds the queue's turn; ``renter`` (web-1) starts renting and waits behind it."""
    head = rentqueue.RentQueue(redis, rentqueue.Keys("b"))
    await head.join("web-0")
    waiting = asyncio.create_task(renter.rent(make_ask(label="k8s_pod=web-1")))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if renter.queue_line:
            break
    assert renter.queue_line == "queued for rental (position 2 of 2)"
    return head, waiting


async def test_a_waiting_pod_says_its_position(
    http: httpx.AsyncClient, pods: list[fakeredis.FakeAsyncRedis]
) -> None:
    """While another pod holds the turn, the renter reports `queued for rental (position 2 of 2)`."""
    b = queue_renter(http, pods[1], "web-1")
    head, waiting = await queued_behind_web_0(pods[0], b)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert b.queue_line is None
    assert await head.position("web-1") is None, "a cancelled wait leaves the queue"


@respx.mock
async def test_under_the_lock_the_renter_lists_its_label_itself(
    http: httpx.AsyncClient, pods: list[fakeredis.FakeAsyncRedis]
) -> None:
    """In its turn, under the rent lock, the renter lists its own label (a list younger than the lock,
    one page): an instance rented meanwhile is adopted, nothing is rented."""
    listed = respx.get(LIST).mock(return_value=httpx.Response(200, json=rows(9)))
    rent = respx.put(url__regex=rf"{BASE}/api/v0/asks/\d+/")
    out = await queue_renter(http, pods[0], "web-0").rent(make_ask(label="k8s_pod=web-0"))
    assert out.result is renting.Result.SKIPPED
    assert listed.call_count == 1 and rent.call_count == 0
    assert "label" in str(listed.calls.last.request.url), "filtered by label on the server"


# ---------------------------------------------------------------- one template check, slot waits


async def test_the_template_is_checked_once_for_the_fleet(pods: list[fakeredis.FakeAsyncRedis]) -> None:
    """Pods checking one template at once: one check runs, the others read its hash."""
    runs = 0

    async def check() -> str:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return "hash-1"

    shared = [fleetshared.SharedChecks(pods[i % 2], "b") for i in range(6)]
    got = await asyncio.gather(*(c.once("template:42:abc", check, 600) for c in shared))
    assert got == ["hash-1"] * 6
    assert runs == 1


async def test_a_rate_limited_tick_waits_for_the_slot_not_a_doubling_backoff(env: pytest.MonkeyPatch) -> None:
    """Repeated 429s on the list: the loop waits the pacer's next slot each time, never 2, 4, 8 s."""
    d, pauses = make_daemon(env, 4)
    pace = d.pacer = pacer.Pacer(None, pacer.Keys("b"), margin_s=0.0)
    limited: list[Exception] = [errors.RateLimited("list instances", "429") for _ in range(3)]
    orig = pace.free_in_s

    async def free_in_s(endpoint: pacer.Endpoint) -> float:
        await pace.penalize(endpoint)  # the 429 moved the slot (the transport does this)
        return await orig(endpoint)

    pace.free_in_s = free_in_s  # type: ignore[method-assign]
    await d._reconcile_loop(Account(), FakeRec(limited))
    assert all(0.9 < w <= 1.0 for w in pauses.waits[:3]), pauses.waits


async def test_one_offer_search_serves_the_whole_queue(pods: list[fakeredis.FakeAsyncRedis]) -> None:
    """Pods searching with one body within the search's age share one search call; another body searches."""
    calls: list[Any] = []

    async def search(body: Any) -> list[Any]:
        calls.append(body)
        await asyncio.sleep(0.02)
        return [offer(1, 0.1), {"id": "broken"}]

    shared = [fleetshared.SharedSearch(search, pods[i % 2], "b") for i in range(4)]
    found = await asyncio.gather(*(s.offers({"gpu": "x"}) for s in shared))
    assert [[o.id for o in f] for f in found] == [[1]] * 4, "a malformed offer is skipped"
    assert len(calls) == 1
    await shared[0].offers({"gpu": "y"})
    assert len(calls) == 2


async def test_with_a_fleet_store_the_reconciler_lists_and_rents_through_the_fleet(
    env: pytest.MonkeyPatch, server: fakeredis.FakeServer
) -> None:
    """build_reconciler over a kit with Redis: shared view, shared template check, rent queue wired."""
    env.setenv("BLACKLIST_ENABLED", "true")
    settings = load_settings()
    redis = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    kit = fleet_wiring.fleet_kit(settings, redis)
    async with httpx.AsyncClient() as http:
        vast = wiring.vast_over(settings, http, pace=kit.pace)
        clients = wiring.Clients(vast=vast, proxy=builders.FakeProxy(), health_http=http, kit=kit)
        rec = wiring.build_reconciler(settings, clients)
        alone = wiring.build_reconciler(
            settings, dataclasses.replace(clients, kit=fleet_wiring.fleet_kit(settings, None))
        )
    await redis.aclose()
    assert vast.pacer is kit.pace
    assert isinstance(rec.adapters.lister, fleetview.OwnInstances)
    assert rec.adapters.checks is not None and rec.renter.turns is not None
    assert rec.renter.turns.pod == settings.pod_name and rec.renter.turns.search is not None
    assert alone.adapters.lister is None and alone.renter.turns is None, "no Redis: each pod lists itself"


@respx.mock
@pytest.mark.parametrize("endpoint", [E.SEARCH_OFFERS, E.CREATE_INSTANCE, E.LIST_INSTANCES])
async def test_a_search_rent_or_list_slot_hours_away_holds_the_rental_instead_of_sleeping_under_the_lock(
    http: httpx.AsyncClient, pods: list[fakeredis.FakeAsyncRedis], endpoint: pacer.Endpoint
) -> None:
    """Another pod's quota 429 moves the key's search (or rent, or list) slot two hours on while this
    pod waits in the rental queue: in its turn it holds and says so, releasing turn and lock at once,
    instead of sleeping for the slot under a lock whose section would end it as an unknown rent (the
    list: the label's own list under the lock, when its rent mark cannot vouch for the tick's)."""
    searched = respx.post(f"{BASE}/api/v0/bundles/").mock(
        return_value=httpx.Response(200, json={"offers": []})
    )
    listed = respx.get(LIST).mock(return_value=httpx.Response(200, json=rows()))
    waits: Waits = Waits()
    vast = paced_client(http, pods[1], waits, [])
    assert vast.pacer is not None
    queue = rentqueue.RentQueue(pods[1], rentqueue.Keys("b"), poll_s=0.01)
    spec = renting.RentSpec(search_body=search_body, choose_offers=ranked, rent_request=request)
    renter = renting.Renter(vast, spec, fleet=Fleet(), turns=renting.Turns(queue, "web-1"))
    head, waiting = await queued_behind_web_0(pods[0], renter)
    await vast.pacer.penalize(endpoint, 7200.0)  # while it waits behind web-0
    await head.leave("web-0")
    out = await asyncio.wait_for(waiting, 5)
    assert out.result is renting.Result.HELD
    assert out.why is not None and "rate limited; next slot in 7200s" in out.why
    assert [str(n.event.kind) for n in out.notes] == ["rent-waits"]
    assert (searched.call_count, [w for w in waits.waits if w > 60]) == (0, [])
    assert listed.call_count == (0 if endpoint is E.LIST_INSTANCES else 1)
    assert await queue.position("web-1") is None, "the turn is given back"
    again = await renter.rent(make_ask(label="k8s_pod=web-1"))
    assert again.result is renting.Result.HELD and again.notes == (), "said once per situation"
