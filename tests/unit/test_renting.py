"""The renter on its own: an Ask in, an Outcome out (Vast through respx, fakes for the bans and the fleet).

Pins the order of the brakes (template, back-off, lock, spend cap), that a rent is never retried, that
vanished offers are skipped, and that each "not now" is said once per situation.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from provisioner import errors, events, model, rentguard, renting, selection, spend
from provisioner.vast.client import RentRequest, RetryPolicy, VastClient
from tests.fakes import T0

BASE = "http://vast.test"
LABEL = "k8s_pod=vast-pod-0"
K = events.EventKind


def offer(oid: int, dph: float, host: int | None = None) -> dict[str, Any]:
    return {"id": oid, "host_id": host or 100 + oid, "dph_total": dph, "gpu_name": "RTX 4090"}


def ranked(offers: list[model.Offer], standing: selection.Standing) -> list[selection.Scored]:
    """Every offer not banned, in the order the search returned them."""
    parts = selection.Parts(1, 1, 1, 1, 1)
    return [
        selection.Scored(o, 1.0, parts, o.dph_total) for o in offers if o.host_id not in standing.banned_hosts
    ]


def request(template_hash: str | None) -> RentRequest:
    return RentRequest(
        image="img", env={}, ports=[8000], label=LABEL, disk_gb=10, template_hash_id=template_hash
    )


def ask(**kw: Any) -> renting.Ask:
    fields: dict[str, Any] = {
        "label": LABEL,
        "reason": "none",
        "template_hash": "h" * 32,
        "template_pending": False,
        "known_ids": frozenset(),
        "own_dph": 0.0,
        "now": T0,
    }
    fields.update(kw)
    return renting.Ask(**fields)


class Bans:
    def __init__(self, banned: frozenset[int] = frozenset()) -> None:
        self.banned = banned

    async def standing(self) -> selection.Standing:
        return selection.Standing(banned_hosts=self.banned)


class Fleet:
    """A fleet port: the other pods' spend, and a rent lock that is free unless ``held_by_other``."""

    def __init__(
        self, others: float | None = 0.0, held_by_other: bool = False, section_s: float = 10.0
    ) -> None:
        self.others = others
        self.held_by_other = held_by_other
        self.section_s = section_s
        self.locked = 0
        #: what the rent mark answers under the lock (True: the tick's list shows every rent)
        self.covers = False
        #: the rent marks written, in order ("started", "done"), and the list times asked about
        self.marks: list[str] = []
        self.asked_covers: list[int] = []
        #: label -> $/h reserved (what Redis would hold), and the labels released
        self.reserved: dict[str, float] = {}
        self.released: list[str] = []

    async def reserve(self, label: str, decide: spend.Decide) -> spend.Reservation:
        if self.others is None:
            return spend.UNCHECKED
        others = self.others + sum(v for k, v in self.reserved.items() if k != label)
        amount = decide(others)
        if amount is not None:
            self.reserved[label] = amount
        return spend.Reservation(others, amount)

    async def release_reservation(self, label: str) -> None:
        self.released.append(label)
        self.reserved.pop(label, None)

    async def mark_rent(self, label: str, *, done: bool) -> None:
        self.marks.append("done" if done else "started")

    async def list_covers_rents(self, label: str, listed_at_ms: int) -> bool:
        self.asked_covers.append(listed_at_ms)
        return self.covers

    @contextlib.asynccontextmanager
    async def rent_lock(self, label: str) -> AsyncIterator[bool]:
        if self.held_by_other:
            yield False
            return
        self.locked += 1
        async with asyncio.timeout(self.section_s):
            yield True


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def renter(http: httpx.AsyncClient, *, cap: float | None = None, **kw: Any) -> renting.Renter:
    vast = VastClient(
        http, SecretStr("k3y-0123456789"), base_url=BASE, retry=RetryPolicy(attempts=2, initial_backoff_s=0)
    )
    spec = renting.RentSpec(
        search_body=search_body, choose_offers=ranked, rent_request=request, max_fleet_dph=cap
    )
    return renting.Renter(vast, spec, **kw)


def search_body(standing: selection.Standing) -> Mapping[str, Any]:
    return {"host_id": {"notin": sorted(standing.banned_hosts)}}


def kinds(outcome: renting.Outcome) -> list[str]:
    return [str(n.event.kind) for n in outcome.notes]


async def test_rents_the_best_offer_and_reports_id_and_price(http: httpx.AsyncClient) -> None:
    """No brakes: search, rent the first offer with the template hash; the outcome carries id and price."""
    with respx.mock(base_url=BASE) as mock:
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer(1, 0.3), offer(2, 0.2)]})
        rent = mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 55})
        outcome = await renter(http).rent(ask())
    assert (outcome.result, outcome.instance_id, outcome.price_per_hour) == (renting.Result.RENTED, 55, 0.3)
    assert json.loads(rent.calls.last.request.content)["template_hash_id"] == "h" * 32
    (note,) = outcome.notes
    assert (note.event.kind, note.event.instance_id, note.event.reason, note.event.at) == (
        K.RENT,
        55,
        "none",
        T0,
    )


async def test_waits_for_the_template_and_says_so_once(http: httpx.AsyncClient) -> None:
    """While the template is pending nothing is searched; the reason is noted on the first ask only."""
    r = renter(http)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        search = mock.post("/api/v0/bundles/").respond(json={"offers": []})
        first, second = await r.rent(ask(template_pending=True)), await r.rent(ask(template_pending=True))
    assert (first.result, kinds(first)) == (renting.Result.HELD, ["rent-waits"])
    assert (second.result, kinds(second)) == (renting.Result.HELD, [])
    assert not search.called


async def test_backoff_after_failed_boots_holds_and_avoids_the_host(http: httpx.AsyncClient) -> None:
    """After three failures before serving, renting waits (said once per failure); afterwards the failed
    hosts are left out of the search."""
    guard = rentguard.RentGuard(backoff_start_s=30.0)
    r = renter(http, guard=guard)
    for host in (7, 8, 9):
        r.failed_before_ready(host, T0)
    with respx.mock(base_url=BASE) as mock:
        search = mock.post("/api/v0/bundles/").respond(
            json={"offers": [offer(1, 0.3, host=7), offer(2, 0.4)]}
        )
        mock.put("/api/v0/asks/2/").respond(json={"success": True, "new_contract": 56})
        held = await r.rent(ask(now=T0 + 10))
        again = await r.rent(ask(now=T0 + 20))
        rented = await r.rent(ask(now=T0 + 31))
    assert (held.result, kinds(held)) == (renting.Result.HELD, ["rent-backoff"])
    assert (again.result, kinds(again)) == (renting.Result.HELD, [])
    assert (rented.result, rented.instance_id) == (renting.Result.RENTED, 56)
    assert json.loads(search.calls.last.request.content)["host_id"] == {"notin": [7, 8, 9]}


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        pytest.param(404, {"error": "no_such_ask", "msg": "gone"}, "offer-gone", id="taken-meanwhile"),
        pytest.param(
            400, {"error": "invalid_args", "msg": "no ssh key for vm"}, "offer-refused", id="refused"
        ),
    ],
)
async def test_an_offer_taken_or_refused_is_noted_and_the_next_rented(
    http: httpx.AsyncClient, status: int, body: dict[str, str], kind: str
) -> None:
    """An offer taken meanwhile, or refused with a 4xx about that offer (which must not wedge the pod
    on it), is noted and the next one rented."""
    with respx.mock(base_url=BASE) as mock:
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer(1, 0.3), offer(2, 0.4)]})
        mock.put("/api/v0/asks/1/").respond(status, json=body)
        mock.put("/api/v0/asks/2/").respond(json={"success": True, "new_contract": 57})
        outcome = await renter(http).rent(ask())
    assert (outcome.result, outcome.instance_id, kinds(outcome)) == (
        renting.Result.RENTED,
        57,
        [kind, "rent"],
    )


async def test_two_refusals_in_a_row_are_about_the_request_and_raised(http: httpx.AsyncClient) -> None:
    """Two offers refused in one rental: the request is at fault, the refusal is raised (the loop backs
    off and shows it) and no third offer is tried."""
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer(i, 0.3 + i / 10) for i in (1, 2, 3)]})
        for oid in (1, 2):
            mock.put(f"/api/v0/asks/{oid}/").respond(400, json={"error": "invalid_args", "msg": "bad env"})
        third = mock.put("/api/v0/asks/3/").respond(json={"success": True, "new_contract": 58})
        with pytest.raises(errors.VastRejected, match="bad env"):
            await renter(http).rent(ask())
    assert not third.called


async def test_unknown_rent_is_never_retried(http: httpx.AsyncClient) -> None:
    """A 5xx on the rent is an unknown outcome: one request, no other offer tried."""
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer(1, 0.3), offer(2, 0.4)]})
        first = mock.put("/api/v0/asks/1/").respond(502, text="bad gateway")
        second = mock.put("/api/v0/asks/2/").respond(json={"success": True, "new_contract": 58})
        outcome = await renter(http).rent(ask())
    assert (outcome.result, kinds(outcome)) == (renting.Result.UNKNOWN, ["rent-unknown"])
    assert (first.call_count, second.called) == (1, False)


@pytest.mark.parametrize(
    ("offers", "gone", "detail"),
    [
        pytest.param(
            [],
            [],
            "no usable offer (0 returned by the search); `provisioner offers` shows every offer and what"
            " excludes it",
            id="none-returned",
        ),
        pytest.param([offer(1, 0.3)], [1], "every offer tried was taken", id="all-taken"),
    ],
)
async def test_no_offers(
    http: httpx.AsyncClient, offers: list[dict[str, Any]], gone: list[int], detail: str
) -> None:
    """Nothing to rent is a NO_OFFERS outcome that says why."""
    with respx.mock(base_url=BASE) as mock:
        mock.post("/api/v0/bundles/").respond(json={"offers": offers})
        for oid in gone:
            mock.put(f"/api/v0/asks/{oid}/").respond(410, json={"error": "gone"})
        outcome = await renter(http).rent(ask())
    assert outcome.result is renting.Result.NO_OFFERS
    assert outcome.notes[-1].event.detail == detail


async def test_lock_held_elsewhere_holds_and_says_so_once(http: httpx.AsyncClient) -> None:
    """Another process holds the label's rent lock: no list, no search; said once."""
    r = renter(http, fleet=Fleet(held_by_other=True))
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        listing = mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        first, second = await r.rent(ask()), await r.rent(ask())
    assert (first.result, kinds(first), kinds(second)) == (renting.Result.HELD, ["rent-lock-held"], [])
    assert not listing.called


async def test_under_the_lock_a_new_instance_is_adopted_not_doubled(http: httpx.AsyncClient) -> None:
    """The list under the lock shows an instance this tick did not know: skip (adopt it), no search."""
    fleet = Fleet()
    row = {"id": 90, "label": LABEL, "actual_status": "loading"}
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [row], "next_token": None})
        search = mock.post("/api/v0/bundles/").respond(json={"offers": [offer(1, 0.3)]})
        mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 59})
        skipped = await renter(http, fleet=fleet).rent(ask())
        known = await renter(http, fleet=fleet).rent(ask(known_ids=frozenset({90})))
    assert (skipped.result, kinds(skipped), skipped.notes[0].event.instance_id) == (
        renting.Result.SKIPPED,
        ["rent-skipped"],
        90,
    )
    assert search.call_count == 1, "only the ask that knew instance 90 searched"
    assert (known.result, known.instance_id) == (renting.Result.RENTED, 59)
    assert fleet.locked == 2


@pytest.mark.parametrize(("covers", "lists"), [(True, 0), (False, 1)])
async def test_under_the_lock_the_ticks_list_stands_when_no_rent_happened_since(
    http: httpx.AsyncClient, covers: bool, lists: int
) -> None:
    """The rent mark says no rent of the label since the tick's list was requested: no second list
    (a list interval saved per rental); otherwise the label is listed again. The rent is marked
    started before the rent call and done after it."""
    fleet = Fleet()
    fleet.covers = covers
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        listing = mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer(1, 0.3)]})
        mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 61})
        outcome = await renter(http, fleet=fleet).rent(ask(listed_at_ms=1_234))
    assert (outcome.result, outcome.instance_id) == (renting.Result.RENTED, 61)
    assert (listing.call_count, fleet.asked_covers, fleet.marks) == (lists, [1_234], ["started", "done"])


async def test_a_list_not_from_the_fleets_view_is_never_trusted_under_the_lock(
    http: httpx.AsyncClient,
) -> None:
    """Without the list's time on the Redis clock the mark is not asked: the label is listed again."""
    fleet = Fleet()
    fleet.covers = True
    with respx.mock(base_url=BASE) as mock:
        listing = mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer(1, 0.3)]})
        mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 62})
        await renter(http, fleet=fleet).rent(ask())
    assert (listing.call_count, fleet.asked_covers) == (1, [])


async def test_an_unknown_rent_leaves_its_mark_started(http: httpx.AsyncClient) -> None:
    """A rent whose outcome is unknown is never marked done: the next renter of the label lists again."""
    fleet = Fleet()
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer(1, 0.3)]})
        mock.put("/api/v0/asks/1/").respond(502, text="bad gateway")
        outcome = await renter(http, fleet=fleet).rent(ask())
    assert (outcome.result, fleet.marks) == (renting.Result.UNKNOWN, ["started"])


async def test_spend_cap_counts_others_own_and_the_offer(http: httpx.AsyncClient) -> None:
    """Others $0.5/h + this pod's served $0.2/h + $0.3/h > $0.9/h cap: held (said once); a cheaper offer
    that fits is rented instead; with the fleet's spend unknown the pod rents and says so."""
    r = renter(http, cap=0.9, fleet=Fleet(others=0.5))
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        bundles = mock.post("/api/v0/bundles/")
        bundles.respond(json={"offers": [offer(1, 0.3)]})
        held, again = await r.rent(ask(own_dph=0.2)), await r.rent(ask(own_dph=0.2))
        bundles.respond(json={"offers": [offer(1, 0.3), offer(2, 0.15)]})
        mock.put("/api/v0/asks/2/").respond(json={"success": True, "new_contract": 60})
        fits = await r.rent(ask(own_dph=0.2))
        mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 61})
        unchecked = await renter(http, cap=0.1, fleet=Fleet(others=None)).rent(ask())
    assert (held.result, kinds(held), kinds(again)) == (renting.Result.HELD, ["spend-cap"], [])
    assert "this pod $0.200/h" in held.notes[0].event.detail
    assert held.why == again.why == held.notes[0].event.detail, "the reason is kept, said or not"
    assert (fits.result, fits.instance_id) == (renting.Result.RENTED, 60)
    assert (unchecked.result, kinds(unchecked)) == (renting.Result.RENTED, ["spend-cap-unchecked", "rent"])


async def test_the_spend_cap_reserves_before_the_rent_call(http: httpx.AsyncClient) -> None:
    """Two pods under a one-rental cap: the first reserves its offer's $/h before renting (kept until
    its heartbeat counts it), so the second, deciding meanwhile, is held; a failed rent releases it."""
    shared = Fleet(others=0.0)
    first, second = renter(http, cap=0.5, fleet=shared), renter(http, cap=0.5, fleet=shared)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer(1, 0.3)]})
        rent = mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 70})
        rented = await first.rent(ask())
        held = await second.rent(ask(label="k8s_pod=vast-pod-1"))
        rent.respond(410, json={"error": "no_such_ask"})
        shared.reserved.clear()
        gone = await second.rent(ask(label="k8s_pod=vast-pod-1"))
    assert (rented.result, rented.reserved, shared.released) == (
        renting.Result.RENTED,
        True,
        ["k8s_pod=vast-pod-1"],
    )
    assert held.result is renting.Result.HELD and "other pods $0.300/h" in (held.why or "")
    assert gone.result is renting.Result.NO_OFFERS and not gone.reserved


async def test_no_offers_points_at_provisioner_offers(http: httpx.AsyncClient) -> None:
    """When no offer matches, the note and the waiting reason say for how long and point at
    `provisioner offers`."""
    r = renter(http)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.post("/api/v0/bundles/").respond(json={"offers": []})
        first = await r.rent(ask())
        later = await r.rent(ask(now=T0 + 300))
    assert "`provisioner offers`" in first.notes[0].event.detail
    assert later.why is not None and "for 300s" in later.why and "`provisioner offers`" in later.why


async def test_a_section_cut_off_under_the_lock_counts_as_unknown(http: httpx.AsyncClient) -> None:
    """When the locked section runs past its bound (a rent may be in flight) the outcome is UNKNOWN."""

    started: list[httpx.Request] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        started.append(request)
        await asyncio.sleep(5)
        return httpx.Response(200, json={"success": True, "new_contract": 62})

    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer(1, 0.3)]})
        mock.put("/api/v0/asks/1/").mock(side_effect=slow)
        outcome = await renter(http, fleet=Fleet(section_s=0.2)).rent(ask())
    assert (outcome.result, kinds(outcome)) == (renting.Result.UNKNOWN, ["rent-unknown"])
    assert len(started) == 1, "the rent had been sent when the bound cut it off"


def test_renting_never_imports_the_reconciler() -> None:
    """renting.py sits below the reconciler: it imports no reconciler, applying or tracking module."""
    tree = ast.parse(inspect.getsource(renting))
    imported = {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"reconciler", "applying", "tracking", "provisioner.reconciler"}


def test_a_situation_is_said_once_whatever_its_figures() -> None:
    """The same hold with other $/h figures is not said again; a different situation is; /readyz
    (``why``) always has the latest figures."""
    r = renting.Renter(None, renting.RentSpec(lambda s: {}, lambda o, s: [], lambda h: None))  # type: ignore[arg-type]
    kind = events.EventKind.SPEND_CAP
    first = r._held(ask(), kind, "fleet would cost $0.116/h > VAST_MAX_FLEET_DPH $0.087/h; waiting")
    again = r._held(ask(), kind, "fleet would cost $0.118/h > VAST_MAX_FLEET_DPH $0.087/h; waiting")
    other = r._held(ask(), kind, "another pod is checking the fleet's spend; renting next tick")
    assert (len(first.notes), len(again.notes), len(other.notes)) == (1, 0, 1)
    assert again.why is not None and "$0.118/h" in again.why


@pytest.mark.parametrize("status", [429, 400], ids=["429", "refused-twice"])
async def test_a_rent_that_raises_releases_its_reservation_and_says_nothing_was_rented(
    http: httpx.AsyncClient, status: int
) -> None:
    """A 429 on the rent call, or a second 4xx refusal in one rental: nothing was rented. The error
    reaches the loop (which backs off), but the $/h reserved for the rental is released, not left to
    the other pods for its TTL, and the rent mark says done (the next renter need not list again)."""
    fleet = Fleet(others=0.0)
    r = renter(http, cap=3.0, fleet=fleet)
    body = {"success": False, "error": "invalid_args", "msg": "bad request"}
    answer = (
        httpx.Response(status, text="API requests too frequent")
        if status == 429
        else httpx.Response(400, json=body)
    )
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer(1, 0.5), offer(2, 0.6)]})
        mock.put(url__regex=r"/api/v0/asks/\d+/").mock(return_value=answer)
        with pytest.raises(errors.RateLimited if status == 429 else errors.VastRejected):
            await r.rent(ask())
    assert fleet.released == [ask().label] and fleet.marks == ["started", "done"]


async def test_a_rental_cut_off_after_the_api_named_it_is_still_reported(http: httpx.AsyncClient) -> None:
    """The rent section's bound cuts the bookkeeping after a successful rent (a slow Redis answer to
    the 'done' mark): the rental, whose id the API gave, is RENTED with that id, not an unknown
    outcome whose instance the pod would not track."""

    class SlowMark(Fleet):
        async def mark_rent(self, label: str, *, done: bool) -> None:
            await super().mark_rent(label, done=done)
            if done:
                await asyncio.sleep(1.0)

    r = renter(http, fleet=SlowMark(section_s=0.3))
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        mock.post("/api/v0/bundles/").respond(json={"offers": [offer(1, 0.5)]})
        mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 55})
        outcome = await r.rent(ask())
    assert (outcome.result, outcome.instance_id) == (renting.Result.RENTED, 55)
