"""Health checks against the boot clock, and make-before-break, through whole ticks (respx for Vast,
scripted health answers).

A failing health check makes an instance unhealthy (replaced, host banned after the unhealthy timeout)
only once it has answered since its boot (re)started: before that its app may still be loading, and
the boot timeout applies. A reboot starts the boot clock again and forgets the health failures from
before. A drifted instance bridging a make-before-break is not destroyed for one failed check, and
its serving does not lift the rent brakes on replacements that keep dying.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from provisioner import planning
from tests.fakes import Clock
from tests.unit.test_reconciler import BASE, HASH, build, listing, row


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def kinds(plan: planning.Plan) -> list[str]:
    """``serve:1``, ``unserve``, ``ban:1:unhealthy``, ``destroy:1:template-drift``, ``rent``."""
    out = []
    for action in plan.actions:
        if isinstance(action, planning.Destroy | planning.Ban):
            out.append(f"{type(action).__name__.lower()}:{action.instance.id}:{action.reason}")
        elif isinstance(action, planning.Serve):
            out.append(f"serve:{action.instance.id}")
        else:
            out.append(type(action).__name__.lower())
    return out


async def test_an_app_loading_for_longer_than_the_unhealthy_timeout_is_given_the_boot_timeout(
    http: httpx.AsyncClient, clock: Clock
) -> None:
    """The container runs and its port is mapped, but the app (model weights, say) loads for 400 s:
    past the 300 s unhealthy timeout, within the 600 s boot timeout. It is kept and served once it
    answers; an app that never answers goes at the boot timeout, as a boot timeout."""
    answers = {1: False}
    rec, _ = build(http, clock, answers=answers)
    rec.state.template_hash = HASH
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [row(1)], "next_token": None})
        delete = mock.delete("/api/v0/instances/1/").respond(json={"success": True})
        mock.post("/api/v0/bundles/").respond(json={"offers": []})
        assert (await rec.tick()).phase is planning.Phase.BOOTING
        clock.now += 400
        plan = await rec.tick()
        assert kinds(plan) == ["unserve"] and plan.phase is planning.Phase.BOOTING
        answers[1] = True
        clock.now += 5
        assert kinds(await rec.tick()) == ["serve:1"]
        assert not delete.called
        # it answered: from now on a failing check counts, and 300 s of it replace the instance
        answers[1] = False
        clock.now += 5
        await rec.tick()
        clock.now += 301
        assert "ban:1:unhealthy" in kinds(await rec.tick())
        assert delete.call_count == 1


async def test_an_app_that_never_answers_goes_at_the_boot_timeout(
    http: httpx.AsyncClient, clock: Clock
) -> None:
    """Port mapped, app never answering: kept until the boot timeout (600 s), then replaced and its
    host banned for a boot timeout, not for failing health checks."""
    rec, _ = build(http, clock, answers={1: False})
    rec.state.template_hash = HASH
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [row(1)], "next_token": None})
        delete = mock.delete("/api/v0/instances/1/").respond(json={"success": True})
        mock.post("/api/v0/bundles/").respond(json={"offers": []})
        await rec.tick()
        clock.now += 590
        assert kinds(await rec.tick()) == ["unserve"]
        clock.now += 20
        plan = await rec.tick()
    assert kinds(plan)[:3] == ["unserve", "ban:1:boot-timeout", "destroy:1:boot-timeout"]
    assert delete.call_count == 1


async def test_a_failure_before_a_reboot_does_not_count_against_the_new_boot(
    http: httpx.AsyncClient, clock: Clock
) -> None:
    """A served instance fails a check as it goes down for a reboot that takes 400 s; back, its app
    still starting, it is booting again (its boot clock restarted), not unhealthy for 400 s."""
    answers: dict[int, bool] = {}
    rec, _ = build(http, clock, answers=answers)
    rec.state.template_hash = HASH
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        lists = mock.get("/api/v1/instances/")
        delete = mock.delete("/api/v0/instances/1/").respond(json={"success": True})
        mock.post("/api/v0/bundles/").respond(json={"offers": []})
        lists.return_value = listing(row(1))
        assert (await rec.tick()).phase is planning.Phase.SERVING
        clock.now += 5
        answers[1] = False
        assert await rec.probe_serving() is False
        await rec.tick()
        lists.return_value = listing(row(1, "rebooting"))
        for _ in range(8):
            clock.now += 50
            assert (await rec.tick()).phase is planning.Phase.BOOTING
        clock.now += 5
        lists.return_value = listing(row(1))
        plan = await rec.tick()
        assert kinds(plan) == ["unserve"] and plan.phase is planning.Phase.BOOTING
        answers[1] = True
        clock.now += 5
        assert kinds(await rec.tick()) == ["serve:1"]
    assert not delete.called


async def test_one_failed_check_of_the_bridge_does_not_end_the_make_before_break(
    http: httpx.AsyncClient, clock: Clock
) -> None:
    """A drifted instance serves while its replacement boots. One failed check unserves it for that
    tick, but it is not destroyed: it serves again when it answers, and goes once the replacement
    serves (or after failing for the unhealthy timeout)."""
    answers: dict[int, bool] = {}
    rec, _ = build(http, clock, answers=answers, drain_s=30.0)
    rec.state.template_hash = HASH
    old = row(1, template_hash_id="b" * 32)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        lists = mock.get("/api/v1/instances/")
        mock.post("/api/v0/bundles/").respond(json={"offers": [{"id": 7, "host_id": 9, "dph_total": 0.3}]})
        mock.put("/api/v0/asks/7/").respond(json={"success": True, "new_contract": 2})
        delete = mock.delete("/api/v0/instances/1/").respond(json={"success": True})
        lists.return_value = listing(old)
        assert kinds(await rec.tick())[0] == "serve:1"
        lists.return_value = listing(old, row(2, "loading"))
        clock.now += 5
        assert kinds(await rec.tick()) == ["serve:1"]
        answers[1] = False
        clock.now += 5
        assert kinds(await rec.tick()) == ["unserve"]
        answers[1] = True
        clock.now += 5
        assert kinds(await rec.tick()) == ["serve:1"]
        assert not delete.called
        answers[1] = False
        clock.now += 5
        await rec.tick()
        clock.now += 301
        assert "destroy:1:template-drift" in kinds(await rec.tick())
    assert delete.call_count == 1


async def _bridge_and_dying_replacements(http: httpx.AsyncClient, *, bridge: bool, ticks: int = 8) -> int:
    """Each tick a replacement is rented and the next list shows it dead (a bad new image); with
    ``bridge``, a healthy template-drifted instance serves meanwhile. The rentals made."""
    clock = Clock()
    rec, _ = build(http, clock)
    rec.state.template_hash = HASH
    ids = iter(range(100, 200))
    rented: list[int] = []

    def lister(request: httpx.Request) -> httpx.Response:
        rows = [row(7, template_hash_id="b" * 32)] if bridge else []
        return listing(*rows, *(row(i, "exited") for i in rented[-1:]))

    def rent(request: httpx.Request) -> httpx.Response:
        rented.append(next(ids))
        return httpx.Response(200, json={"success": True, "new_contract": rented[-1]})

    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").side_effect = lister
        mock.get(url__regex=r"/api/v0/instances/\d+/").respond(json={"instances": None})
        mock.delete(url__regex=r"/api/v0/instances/\d+/").respond(json={"success": True})
        mock.post("/api/v0/bundles/").respond(json={"offers": [{"id": 1, "host_id": 9, "dph_total": 0.3}]})
        mock.put("/api/v0/asks/1/").side_effect = rent
        for _ in range(ticks):
            await rec.tick()
            clock.now += 100  # past the rent hold
    return len(rented)


async def test_a_bridge_does_not_lift_the_rent_brakes(http: httpx.AsyncClient) -> None:
    """Serving the bridge is not a rental of the current spec working: replacements that die before
    serving slow the rentals down (the rent brakes) whether or not a bridge serves meanwhile."""
    alone = await _bridge_and_dying_replacements(http, bridge=False)
    bridged = await _bridge_and_dying_replacements(http, bridge=True)
    assert alone < 8, "the brakes engage"
    assert bridged == alone
