"""Liveness while the reconcile loop rests on purpose: a 429 slot hours away is no stall."""

from __future__ import annotations

import pytest

from provisioner import daemon, errors, pacer, runtime
from provisioner.settings import load_settings
from tests.unit.test_daemon import Account, Edge, FakeRec
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
