"""The reconciler on its own: ticks against respx, a fake proxy and a fake health check.

Pins the public surface (tick, view, mark_template_pending, has_fleet, probe_serving, ensure_template),
the per-instance records (created on sight, forgotten in one pop), how a renter's outcome is applied
(rent hold, price, boot start) and the drain before a destroy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from provisioner import (
    doubt,
    errors,
    events,
    model,
    planning,
    reconciler,
    rendering,
    renting,
    selection,
    upstream_health,
)
from provisioner.vast.client import RentRequest, RetryPolicy, VastClient
from tests.fakes import T0, Clock

BASE = "http://vast.test"
LABEL = "k8s_pod=vast-pod-0"
IMAGE = "ghcr.io/acme/whisper:1.2"
HASH = "a" * 32
DESIRED = model.DesiredSpec(
    label=LABEL,
    image=IMAGE,
    template=model.TemplateSpec(
        name="whisper", image=IMAGE, tag=None, env="-p 8000:8000", onstart=None, disk_gb=20
    ),
    ports=(model.PortMap(3000, 8000),),
    env={},
    onstart=None,
    disk_gb=20,
)


@dataclass
class Proxy:
    texts: list[str] = field(default_factory=list)

    async def apply(self, text: str) -> bool:
        changed = not self.texts or self.texts[-1] != text
        self.texts.append(text)
        return changed


@dataclass(frozen=True)
class Health(upstream_health.Checker):
    """The real upstream mapping, with the health answer taken from ``answers`` (default healthy)."""

    answers: dict[int, bool] = field(default_factory=dict)

    async def check(self, instance: model.Instance) -> bool:
        return self.answers.get(instance.id, True)


@dataclass
class Fleet:
    beats: list[tuple[str, Sequence[int], float]] = field(default_factory=list)

    settled: list[bool] = field(default_factory=list)

    async def beat(
        self, label: str, instance_ids: Sequence[int], dph: float, *, settle: bool = False
    ) -> None:
        self.beats.append((label, list(instance_ids), dph))
        self.settled.append(settle)


def row(iid: int, status: str = "running", **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": iid,
        "label": LABEL,
        "actual_status": status,
        "image_uuid": IMAGE,
        "template_hash_id": HASH,
        "host_id": 100 + iid,
        "public_ipaddr": "203.0.113.7" if status == "running" else None,
        "ports": {"8000/tcp": [{"HostPort": str(40000 + iid)}]} if status == "running" else None,
        "dph_total": 0.25,
    }
    base.update(kw)
    return base


def listing(*rows: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"instances": list(rows), "next_token": None})


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def build(
    http: httpx.AsyncClient,
    clock: Clock,
    *,
    answers: dict[int, bool] | None = None,
    drain_s: float = 0.0,
    proxy: Proxy | None = None,
    **kw: Any,
) -> tuple[reconciler.Reconciler, Proxy]:
    vast = VastClient(http, SecretStr("k3y-0123456789"), base_url=BASE, retry=RetryPolicy(attempts=1))
    spec = renting.RentSpec(
        search_body=lambda standing: {},
        choose_offers=lambda offers, standing: [
            selection.Scored(o, 1.0, selection.Parts(1, 1, 1, 1, 1), o.dph_total) for o in offers
        ],
        rent_request=lambda h: RentRequest(
            image=IMAGE, env={}, ports=[8000], label=LABEL, disk_gb=20, template_hash_id=h
        ),
    )
    proxy = Proxy() if proxy is None else proxy
    health = Health(http, DESIRED.ports, allow_private=True, answers={} if answers is None else answers)
    config = reconciler.ReconcilerConfig(
        desired=DESIRED,
        proxy_config=rendering.ProxyConfig(
            listeners=DESIRED.ports, state_dir=Path("/tmp"), max_body_size="1M", proxy_timeout_s=60
        ),
        policy=planning.Policy(boot_timeout_s=600, unhealthy_timeout_s=300),
        drain_s=drain_s,
    )
    adapters = reconciler.Adapters(vast, proxy, health, fleet=kw.get("fleet"))
    return reconciler.Reconciler(adapters, renting.Renter(vast, spec), config, clock=clock), proxy


async def test_view_before_the_first_tick(http: httpx.AsyncClient, clock: Clock) -> None:
    """Until a tick succeeds the view says: no phase, never ticked, starting, nothing served."""
    rec, _ = build(http, clock)
    view = rec.view()
    assert (view.phase, view.last_tick_at, view.unserve_reason, view.serving) == (None, 0.0, "starting", None)
    assert (view.events, dict(view.first_seen), view.template_pending, rec.has_fleet) == (
        (),
        {},
        False,
        False,
    )
    assert await rec.probe_serving() is None


async def test_rent_then_hold_until_the_list_shows_it(http: httpx.AsyncClient, clock: Clock) -> None:
    """A rental is tracked at once (boot start, price in the heartbeat); ticks that cannot see it yet
    wait instead of renting again; once listed it is confirmed and the hold lifted."""
    fleet = Fleet()
    rec, _ = build(http, clock, fleet=fleet)
    with respx.mock(base_url=BASE) as mock:
        lists = mock.get("/api/v1/instances/")
        lists.side_effect = [listing(), listing(), listing(row(55, "loading"))]
        mock.post("/api/v0/bundles/").respond(json={"offers": [{"id": 1, "host_id": 9, "dph_total": 0.3}]})
        rent = mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 55})
        mock.get("/api/v0/instances/55/").respond(json={"instances": None})
        first = await rec.tick()
        assert (first.phase, rec.view().first_seen) == (planning.Phase.RENTING, {55: T0})
        assert fleet.beats[-1] == (LABEL, [55], 0.3)
        clock.now += 5
        second = await rec.tick()
        assert second.phase is planning.Phase.WAITING
        assert rent.call_count == 1
        clock.now += 5
        third = await rec.tick()
    assert third.phase is planning.Phase.BOOTING
    assert rec.state.rent_hold_until == 0.0
    assert rec.state.tracked[55].unconfirmed is False
    assert fleet.beats[-1] == (LABEL, [55], 0.25), "the listed price replaces the rental's"
    assert [e.kind for e in rec.view().events] == [events.EventKind.RENT]


@dataclass
class SlowProxy(Proxy):
    """A proxy whose apply waits for ``release`` (an nginx test and reload that take a while)."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    failure: Exception | None = None

    async def apply(self, text: str) -> bool:
        await self.release.wait()
        if self.failure is not None:
            raise self.failure
        return await super().apply(text)


@pytest.mark.parametrize("fails", [False, True])
async def test_a_cold_starts_rent_does_not_wait_for_the_503_page(
    http: httpx.AsyncClient, clock: Clock, fails: bool
) -> None:
    """Nothing is served: the 503 page's new reason is rendered while the rent goes out; the tick
    ends once both are done, and a failed render is raised after the rental was recorded."""
    rec, _ = build(http, clock)
    proxy = SlowProxy(failure=errors.NginxError("nginx rejected the config") if fails else None)
    rec.executor.proxy = proxy
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v1/instances/").mock(return_value=listing())
        mock.post("/api/v0/bundles/").respond(json={"offers": [{"id": 1, "host_id": 9, "dph_total": 0.3}]})
        rented = asyncio.Event()

        def rent(request: httpx.Request) -> httpx.Response:
            rented.set()
            return httpx.Response(200, json={"success": True, "new_contract": 55})

        mock.put("/api/v0/asks/1/").mock(side_effect=rent)
        tick = asyncio.create_task(rec.tick())
        async with asyncio.timeout(5):  # the old order (page first) never gets here
            await rented.wait()
        assert not proxy.texts and not tick.done(), "rented while the page was still being applied"
        proxy.release.set()
        if fails:
            with pytest.raises(errors.NginxError):
                await tick
        else:
            assert (await tick).phase is planning.Phase.RENTING
    assert rec.state.tracked[55].unconfirmed, "the rental is recorded either way"
    assert len(proxy.texts) == (0 if fails else 1)


async def test_serve_a_healthy_instance_and_forget_it_when_gone(
    http: httpx.AsyncClient, clock: Clock
) -> None:
    """A healthy listed instance is served (view: serving, healthy, upstreams); when the list no longer
    shows it, show confirms it is gone and it stopped answering, its record is gone and nothing is served."""
    answers: dict[int, bool] = {}
    rec, proxy = build(http, clock, answers=answers)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").side_effect = [listing(row(7)), listing()]
        show = mock.get("/api/v0/instances/7/").respond(json={"instances": None})
        mock.post("/api/v0/bundles/").respond(json={"offers": []})
        plan = await rec.tick()
        view = rec.view()
        assert plan.phase is planning.Phase.SERVING and view.phase is planning.Phase.SERVING
        assert (view.serving and view.serving.id, view.serving_healthy) == (7, True)
        assert view.upstreams == {3000: model.Upstream(3000, "203.0.113.7", 40007)}
        assert "203.0.113.7:40007" in proxy.texts[-1]
        assert await rec.probe_serving() is True
        clock.now += 5
        answers[7] = False
        await rec.tick()
    assert show.call_count == 1
    assert rec.view().serving is None
    assert 7 not in rec.state.tracked.records
    kinds = [e.kind for e in rec.view().events]
    assert kinds[:2] == [events.EventKind.SERVE, events.EventKind.UNSERVE]


@dataclass
class FailingOnce(Proxy):
    """nginx refuses the next config (and keeps serving the one before, as NginxProxy does)."""

    fail_next: bool = False

    async def apply(self, text: str) -> bool:
        if self.fail_next:
            self.fail_next = False
            raise errors.NginxError("nginx reload timed out")
        return await super().apply(text)


async def test_a_503_page_that_failed_to_apply_is_applied_on_the_next_tick(
    http: httpx.AsyncClient, clock: Clock
) -> None:
    """The served instance dies; the reload to the 503 page fails, so nginx still proxies to it. The next
    tick, with the same reason, renders the page again instead of taking it as already in place."""
    proxy = FailingOnce()
    rec, _ = build(http, clock, proxy=proxy)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").side_effect = [listing(row(7))] + [listing(row(7, "exited"))] * 2
        mock.get("/api/v0/instances/7/").respond(json={"instances": row(7, "exited")})
        mock.delete("/api/v0/instances/7/").respond(json={"success": True})
        mock.post("/api/v0/bundles/").respond(json={"offers": []})
        await rec.tick()
        assert "203.0.113.7:40007" in proxy.texts[-1]
        proxy.fail_next = True
        clock.now += 5
        with pytest.raises(errors.NginxError):
            await rec.tick()
        assert "203.0.113.7:40007" in proxy.texts[-1], "nginx kept the config before"
        clock.now += 5
        await rec.tick()
    assert "203.0.113.7" not in proxy.texts[-1] and "return 503" in proxy.texts[-1]


async def test_health_changes_are_events(http: httpx.AsyncClient, clock: Clock) -> None:
    """A served instance that starts failing is recorded once as failing; the view shows it unhealthy."""
    answers: dict[int, bool] = {}
    rec, _ = build(http, clock, answers=answers)
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v1/instances/").side_effect = [listing(row(7))]
        await rec.tick()
    answers[7] = False
    assert await rec.probe_serving() is False
    assert await rec.probe_serving() is False
    health = [e for e in rec.view().events if e.kind is events.EventKind.HEALTH]
    assert [(e.detail, e.instance_id) for e in health] == [("upstream failing", 7)]
    assert rec.view().serving_healthy is False
    assert rec.state.tracked[7].unhealthy_since == T0


async def test_template_pending_holds_the_rental(http: httpx.AsyncClient, clock: Clock) -> None:
    """mark_template_pending: nothing is searched until ensure_template has run (which creates it)."""
    rec, _ = build(http, clock)
    rec.mark_template_pending()
    assert rec.view().template_pending
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [], "next_token": None})
        search = mock.post("/api/v0/bundles/").respond(json={"offers": []})
        await rec.tick()
        assert not search.called
        templates = mock.get("/api/v0/template/")
        templates.side_effect = [
            httpx.Response(200, json={"templates": []}),
            httpx.Response(
                200, json={"templates": [{"id": 3, "hash_id": HASH, "name": "whisper", "private": True}]}
            ),
        ]
        mock.post("/api/v0/template/").respond(json={"success": True, "template": {"id": 3, "hash_id": HASH}})
        assert await rec.ensure_template(None) == HASH
        await rec.tick()
    assert search.called
    assert not rec.view().template_pending
    assert events.EventKind.TEMPLATE_CREATED in [e.kind for e in rec.view().events]


async def test_replaced_instance_drains_before_it_is_destroyed(http: httpx.AsyncClient, clock: Clock) -> None:
    """Make-before-break: the drifted served instance is switched away from, then destroyed only after
    drain_s has passed."""
    rec, _ = build(http, clock, drain_s=30.0)
    rec.state.template_hash = HASH
    old = row(7, template_hash_id="b" * 32)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [old, row(8)], "next_token": None})
        destroy = mock.delete("/api/v0/instances/7/").respond(json={"success": True})
        rec.state.serving = model.Instance.from_api(old)
        await rec.tick()
        assert rec.view().serving is not None and rec.view().serving.id == 8
        assert not destroy.called
        assert rec.state.tracked[7].draining_until == T0 + 30.0
        clock.now += 31
        await rec.tick()
    assert destroy.called


async def test_failed_boots_feed_the_rent_brakes(http: httpx.AsyncClient, clock: Clock) -> None:
    """An instance destroyed dead before it ever served counts against renting (the guard's streak)."""
    rec, _ = build(http, clock)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [row(7, "exited")], "next_token": None})
        mock.delete("/api/v0/instances/7/").respond(json={"success": True})
        mock.post("/api/v0/bundles/").respond(json={"offers": []})
        await rec.tick()
    assert rec.renter.guard.failures_in_a_row == 1
    assert rec.renter.guard.avoided(clock.now) == {107}


async def test_a_refused_destroy_still_rents_the_replacement_and_counts_once(
    http: httpx.AsyncClient, clock: Clock
) -> None:
    """The DELETE of a dead instance fails (a Vast 5xx) for two ticks: the replacement is rented on the
    first anyway, the error is still raised (the loop backs off and shows it), and the one failed boot
    counts once, when the destroy finally succeeds, not once per tick."""
    rec, _ = build(http, clock)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").side_effect = [
            listing(row(7, "exited")),
            listing(row(7, "exited"), row(55, "loading")),
            listing(row(7, "exited"), row(55, "loading")),
        ]
        mock.post("/api/v0/bundles/").respond(json={"offers": [{"id": 1, "host_id": 9, "dph_total": 0.3}]})
        rent = mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 55})
        destroy = mock.delete("/api/v0/instances/7/")
        destroy.side_effect = [
            httpx.Response(500),
            httpx.Response(500),
            httpx.Response(200, json={"success": True}),
        ]
        for _ in range(2):
            with pytest.raises(errors.VastUnavailable):
                await rec.tick()
            clock.now += 5
        await rec.tick()
    assert rent.call_count == 1
    assert destroy.call_count == 3
    assert rec.renter.guard.failures_in_a_row == 1


# ---------------------------------------------------------------- one odd list answer (issue 16)

INCOMPLETE = [
    pytest.param({"public_ipaddr": None}, id="ip-null"),
    pytest.param({"ports": None}, id="ports-missing"),
    pytest.param({"ports": []}, id="ports-empty"),
    pytest.param({"actual_status": None}, id="status-null"),
]


@pytest.mark.parametrize("spoil", INCOMPLETE)
async def test_one_incomplete_entry_of_the_served_instance_is_confirmed_by_show(
    http: httpx.AsyncClient, clock: Clock, spoil: dict[str, Any]
) -> None:
    """The served instance listed once without IP, ports or status: show lists it whole, so it stays
    served (no unserve, no rent) and its boot clock does not restart."""
    rec, proxy = build(http, clock)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").side_effect = [listing(row(7)), listing(row(7, **spoil))]
        show = mock.get("/api/v0/instances/7/").respond(json={"instances": row(7)})
        search = mock.post("/api/v0/bundles/").respond(json={"offers": []})
        await rec.tick()
        clock.now += 5
        plan = await rec.tick()
    assert plan.phase is planning.Phase.SERVING and show.call_count == 1
    assert not search.called
    assert rec.view().serving is not None and "203.0.113.7:40007" in proxy.texts[-1]
    assert rec.view().first_seen[7] == T0, "the boot clock did not restart"
    assert events.EventKind.UNSERVE not in [e.kind for e in rec.view().events]


async def test_an_odd_entry_show_repeats_is_outweighed_by_the_health_check(
    http: httpx.AsyncClient, clock: Clock
) -> None:
    """List and show both say status null, but the served upstream answers: the last known entry keeps
    serving (one list-doubted warning), and once it stops answering the list is believed."""
    answers: dict[int, bool] = {}
    rec, _ = build(http, clock, answers=answers)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").side_effect = [listing(row(7))] + [
            listing(row(7, actual_status=None))
        ] * 3
        mock.get("/api/v0/instances/7/").respond(json={"instances": row(7, actual_status=None)})
        for _ in range(3):
            plan = await rec.tick()
            assert plan.phase is planning.Phase.SERVING
            clock.now += 5
        answers[7] = False
        plan = await rec.tick()
    assert plan.phase is planning.Phase.BOOTING
    kinds = [e.kind for e in rec.view().events]
    assert kinds.count(events.EventKind.LIST_DOUBTED) == 1
    assert kinds[-1] is events.EventKind.UNSERVE


async def test_a_served_instance_missing_from_one_page_rents_nothing(
    http: httpx.AsyncClient, clock: Clock
) -> None:
    """One empty list page (no Redis, no rent lock): show still lists the served instance, so nothing is
    rented, searched or unserved."""
    rec, _ = build(http, clock)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").side_effect = [listing(row(7)), listing(), listing(row(7))]
        mock.get("/api/v0/instances/7/").respond(json={"instances": row(7)})
        search = mock.post("/api/v0/bundles/").respond(json={"offers": []})
        rent = mock.put(url__regex=r"/api/v0/asks/\d+/").respond(json={"success": True, "new_contract": 9})
        for _ in range(3):
            plan = await rec.tick()
            assert plan.phase is planning.Phase.SERVING
            clock.now += 5
    assert not search.called and not rent.called


async def test_a_vanished_served_instance_that_answers_is_believed_gone_after_the_grace(
    http: httpx.AsyncClient, clock: Clock
) -> None:
    """List and show both say gone while the upstream answers: it keeps serving for GONE_DOUBT_S, then the
    API is believed (a rental follows)."""
    rec, _ = build(http, clock)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").side_effect = [listing(row(7))] + [listing()] * 3
        mock.get("/api/v0/instances/7/").respond(json={"instances": None})
        search = mock.post("/api/v0/bundles/").respond(json={"offers": []})
        await rec.tick()
        clock.now += 5
        assert (await rec.tick()).phase is planning.Phase.SERVING
        clock.now += doubt.GONE_DOUBT_S / 2
        assert (await rec.tick()).phase is planning.Phase.SERVING
        assert not search.called
        clock.now += doubt.GONE_DOUBT_S
        plan = await rec.tick()
    assert plan.phase is planning.Phase.RENTING and search.called


async def test_a_booting_instance_missing_from_one_page_is_shown_not_replaced(
    http: httpx.AsyncClient, clock: Clock
) -> None:
    """A booting instance absent from one list page is shown; show lists it, so no second rental."""
    rec, _ = build(http, clock)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").side_effect = [listing(row(7, "loading")), listing()]
        show = mock.get("/api/v0/instances/7/").respond(json={"instances": row(7, "loading")})
        search = mock.post("/api/v0/bundles/").respond(json={"offers": []})
        await rec.tick()
        clock.now += 5
        plan = await rec.tick()
    assert plan.phase is planning.Phase.BOOTING and show.called and not search.called


async def test_an_instance_we_destroyed_is_not_shown_again(http: httpx.AsyncClient, clock: Clock) -> None:
    """The absence of an instance this process destroyed is expected: no show call for it."""
    rec, _ = build(http, clock)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").side_effect = [listing(row(7, "exited")), listing()]
        mock.delete("/api/v0/instances/7/").respond(json={"success": True})
        show = mock.get("/api/v0/instances/7/").respond(json={"instances": None})
        mock.post("/api/v0/bundles/").respond(json={"offers": []})
        await rec.tick()
        clock.now += 5
        await rec.tick()
    assert not show.called
