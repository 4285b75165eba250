"""Liveness while the reconcile loop rests on purpose: a 429 slot hours away is no stall."""

from __future__ import annotations

import asyncio
import contextlib
import types
from typing import Any

import pytest

from provisioner import daemon, errors, fleet_wiring, pacer, planning, rentqueue, runtime
from provisioner.settings import load_settings
from tests.unit.test_daemon import PLAN, Account, Edge, FakeRec
from tests.unit.views import FakeNginx

NOW = 1000.0
QUOTA_RESET_S = 7200.0


class SlotHoursAway:
    """A pacer whose endpoint's next slot is ``QUOTA_RESET_S`` away (what a quota 429 leaves behind)."""

    async def free_in_s(self, endpoint: pacer.Endpoint) -> float:
        return QUOTA_RESET_S


@pytest.mark.parametrize("paced", [True, False], ids=["pacer-slot", "retry-after"])
async def test_liveness_stays_200_through_a_rest_of_hours_then_fails_if_overdue(
    env: pytest.MonkeyPatch, paced: bool
) -> None:
    """A daily search quota rests the loop for hours: /healthz is 200 all along, 503 once overdue."""
    seen: list[tuple[float, bool, bool]] = []

    async def pause(seconds: float, wakeable: bool) -> None:
        d.stop.set()
        late = seconds + runtime.STALL_AFTER_S + 1.0
        during, overdue = (runtime.health(d.runtime, NOW + t)[0] for t in (seconds - 1.0, late))
        seen.append((seconds, during, overdue))

    d = daemon.Daemon(load_settings(), clock=lambda: NOW, rng=Edge(high=False), pause=pause)
    d.runtime.nginx = FakeNginx()
    if paced:
        d.pacer = SlotHoursAway()  # type: ignore[assignment]
    quota = errors.SearchQuotaExceeded("search offers", "quota", retry_after_s=QUOTA_RESET_S)
    await d._reconcile_loop(Account(), FakeRec([quota]))
    [(rested_s, during, overdue)] = seen
    assert rested_s >= QUOTA_RESET_S
    assert during, "a deliberate rest keeps liveness at 200, however long"
    assert not overdue, "a loop that does not come back after its rest is wedged"


def test_a_stalled_tick_still_fails_liveness(env: pytest.MonkeyPatch) -> None:
    """A rest that ended long ago does not cover a tick stuck since: the stall counts from the heartbeat."""
    state = runtime.Runtime(settings=load_settings(), nginx=FakeNginx())
    state.resting_until = NOW
    state.loop_heartbeat_at = NOW + 10.0  # the next tick began, then hung
    assert runtime.health(state, NOW + 10.0 + runtime.STALL_AFTER_S - 1.0)[0]
    ok, reason = runtime.health(state, NOW + 10.0 + runtime.STALL_AFTER_S + 1.0)
    assert not ok and reason.startswith("the reconcile loop has not run for")


class SearchingRec(FakeRec):
    """A tick that searches offers through the pacer (the slot another pod's quota 429 pushed away)."""

    def __init__(self, pace: pacer.Pacer) -> None:
        super().__init__()
        self.pace = pace

    async def tick(self) -> planning.Plan:
        await self.pace.acquire(pacer.Endpoint.SEARCH_OFFERS)
        return PLAN


class NoAdmin:
    def __init__(self, *_: Any) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_liveness_stays_200_while_a_tick_sleeps_hours_for_a_pacer_slot(
    env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick waiting in the pacer for a slot hours away (fleet-wide quota) keeps /healthz 200, then not."""
    seen: list[tuple[bool, bool]] = []

    async def sleep(seconds: float) -> None:
        late = seconds + runtime.STALL_AFTER_S + 1.0
        seen.append(
            (runtime.health(d.runtime, NOW + seconds - 1.0)[0], runtime.health(d.runtime, NOW + late)[0])
        )

    async def pause(seconds: float, wakeable: bool) -> None:
        d.stop.set()

    pace = pacer.Pacer(None, pacer.Keys("b"), clock=lambda: 0.0, sleep=sleep)
    pace.local.push(pacer.Endpoint.SEARCH_OFFERS, QUOTA_RESET_S)
    rec = SearchingRec(pace)
    kit = types.SimpleNamespace(pace=pace, account=lambda *_: Account())

    async def open_clients(*_: Any) -> Any:
        return types.SimpleNamespace(vast=Account()), kit

    monkeypatch.setattr(daemon.wiring, "open_clients", open_clients)
    monkeypatch.setattr(daemon.wiring, "build_reconciler", lambda *_, **__: rec)
    monkeypatch.setattr(daemon.admin, "AdminPort", NoAdmin)
    d = daemon.Daemon(load_settings(), clock=lambda: NOW, rng=Edge(), pause=pause)
    d.runtime.nginx = FakeNginx()
    async with contextlib.AsyncExitStack() as stack:
        await d._open(stack, None, None)  # type: ignore[arg-type]
    await d._reconcile_loop(Account(), rec)
    assert seen == [(True, False)], "200 through the pacer's wait; a loop overdue after it is wedged"


async def test_a_rest_cut_short_by_a_wake_up_covers_no_stuck_tick_after_it(env: pytest.MonkeyPatch) -> None:
    """Woken 10 s into a rest of hours, the next tick counts as stuck 300 s on, not after the rest."""
    now = [NOW]
    stuck: list[bool] = []

    class StuckAfterWake(FakeRec):
        async def tick(self) -> planning.Plan:
            if self.ticks == 0:
                self.ticks += 1
                raise errors.SearchQuotaExceeded("search offers", "quota", retry_after_s=QUOTA_RESET_S)
            stuck.append(not runtime.health(d.runtime, now[0] + runtime.STALL_AFTER_S + 1.0)[0])
            d.stop.set()
            return PLAN

    async def pause(seconds: float, wakeable: bool) -> None:
        now[0] += 10.0  # the health loop's wake-up ends the rest early

    d = daemon.Daemon(load_settings(), clock=lambda: now[0], rng=Edge(), pause=pause)
    d.runtime.nginx = FakeNginx()
    await d._reconcile_loop(Account(), StuckAfterWake())
    assert stuck == [True]


async def test_a_pacer_wait_outside_the_reconcile_loop_does_not_hide_a_wedged_loop(
    env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remote logs waiting hours for their slot: the loop stuck meanwhile fails liveness after the usual
    stall; the same wait inside a tick keeps it at 200 (the test above)."""
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    pace = pacer.Pacer(None, pacer.Keys("b"), clock=lambda: 0.0, sleep=sleep)
    pace.local.push(pacer.Endpoint.LOGS, QUOTA_RESET_S)
    kit = types.SimpleNamespace(pace=pace, account=lambda *_: Account())

    async def open_clients(*_: Any) -> Any:
        return types.SimpleNamespace(vast=Account()), kit

    monkeypatch.setattr(daemon.wiring, "open_clients", open_clients)
    monkeypatch.setattr(daemon.wiring, "build_reconciler", lambda *_, **__: FakeRec())
    monkeypatch.setattr(daemon.admin, "AdminPort", NoAdmin)
    d = daemon.Daemon(load_settings(), clock=lambda: NOW, rng=Edge())
    d.runtime.nginx = FakeNginx()
    async with contextlib.AsyncExitStack() as stack:
        await d._open(stack, None, None)  # type: ignore[arg-type]
    d.runtime.loop_heartbeat_at = d.runtime.resting_until = NOW  # a tick began, then hung
    d.loop_task = asyncio.current_task()
    await asyncio.create_task(pace.acquire(pacer.Endpoint.LOGS))  # the remote log streamer's task
    assert waited and waited[0] >= QUOTA_RESET_S - 1
    ok, reason = runtime.health(d.runtime, NOW + runtime.STALL_AFTER_S + 1.0)
    assert not ok and reason.startswith("the reconcile loop has not run for")
    await pace.acquire(pacer.Endpoint.LOGS)  # the same kind of wait in the loop's own task
    assert runtime.health(d.runtime, NOW + runtime.STALL_AFTER_S + 1.0)[0]


class QueuedRec(FakeRec):
    """A tick that waits for its turn in the rental queue before renting."""

    def __init__(self, queue: rentqueue.RentQueue) -> None:
        super().__init__()
        self.queue = queue

    async def tick(self) -> planning.Plan:
        async with self.queue.turn("vast-pod-9"):
            return PLAN


async def test_liveness_stays_200_while_a_tick_waits_minutes_in_the_rental_queue(
    env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the back of a long rental queue (75 pods cold-starting, one rental every ~4.7 s) a tick waits
    longer than the stall limit: each poll is a deliberate wait, so /healthz stays 200 (else the pod
    would be restarted and join the queue at its back again)."""
    now = [NOW]
    healthy: list[bool] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        ahead.local.position("vast-pod-0", join=True)  # the pod ahead is still renting
        if now[0] - NOW > runtime.STALL_AFTER_S + 100:
            ahead.local.leave("vast-pod-0")
        healthy.append(runtime.health(d.runtime, now[0])[0])

    async def pause(seconds: float, wakeable: bool) -> None:
        d.stop.set()

    ahead = rentqueue.RentQueue(None, rentqueue.Keys("b"), clock=lambda: now[0], sleep=sleep, poll_s=2.0)
    ahead.local.position("vast-pod-0", join=True)
    pace = pacer.Pacer(None, pacer.Keys("b"), clock=lambda: now[0])
    kit = fleet_wiring.FleetKit(pace, None, pacer.Failover())
    ahead.on_wait = kit.note_wait  # as fleet_wiring.build_fleet_parts wires it
    rec = QueuedRec(ahead)

    async def open_clients(*_: Any) -> Any:
        return types.SimpleNamespace(vast=Account()), kit

    monkeypatch.setattr(daemon.wiring, "open_clients", open_clients)
    monkeypatch.setattr(daemon.wiring, "build_reconciler", lambda *_, **__: rec)
    monkeypatch.setattr(daemon.admin, "AdminPort", NoAdmin)
    monkeypatch.setattr(fleet_wiring.FleetKit, "account", lambda *_: Account())
    d = daemon.Daemon(load_settings(), clock=lambda: now[0], rng=Edge(), pause=pause)
    d.runtime.nginx = FakeNginx()
    async with contextlib.AsyncExitStack() as stack:
        await d._open(stack, None, None)  # type: ignore[arg-type]
    await d._reconcile_loop(Account(), rec)
    assert now[0] - NOW > runtime.STALL_AFTER_S + 100, "the tick waited longer than the stall limit"
    assert healthy and all(healthy), "200 all along while the queue moves"
