"""Restart counting (fakeredis blacklist, Vast through respx): only starts after a crash count toward
BLACKLIST_RESTART_THRESHOLD; a clean stop marks its instances; a condemned instance that answers is
replaced make-before-break and its host is not banned."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

from provisioner import blacklist, planning, upstream_health
from provisioner.blacklist import Guarded
from tests.fakes import Clock
from tests.unit.builders import BASE, make_reconciler
from tests.unit.test_blacklist import inst, make

LABEL = "k8s_pod=vast-pod-0"


async def answering(host: str, port: int) -> bool:
    """Every upstream answers (the TCP health check without sockets)."""
    return True


def running(iid: int, host: int) -> dict[str, Any]:
    """A running, matching instance with its port mapped (the pod env wants port 8000)."""
    return {
        "id": iid,
        "label": LABEL,
        "actual_status": "running",
        "host_id": host,
        "machine_id": host * 10,
        "public_ipaddr": "203.0.113.7",
        "ports": {"8000/tcp": [{"HostPort": str(40000 + iid)}]},
        "dph_total": 0.2,
    }


async def test_a_clean_stop_is_not_counted(client: Any, clock: Clock) -> None:
    """After mark_clean_stop the next adopting start is not counted (the mark is used up); a start after
    a crash counts again."""
    bl = make(client, clock, restart_threshold=1)
    for _ in range(4):
        await bl.mark_clean_stop([77, 78])
        assert await bl.adopted(inst(77, status="running")) is None
    assert await client.zcard("vastprov:restarts:77") == 0
    assert await client.ttl("vastprov:cleanstop:78") == 3600
    assert await bl.adopted(inst(77, status="running")) is None, (
        "the first start after a crash: counted, within threshold"
    )
    assert await bl.adopted(inst(77, status="running")) == blacklist.RESTART_REASON
    assert await bl.bans() == []


async def test_note_clean_stop_marks_the_listed_instances(
    env: pytest.MonkeyPatch, client: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconciler.note_clean_stop (the daemon's shutdown hook) marks what the last list showed, so that
    repeated clean restarts never condemn a healthy instance."""
    env.setenv("BLACKLIST_ENABLED", "true")
    env.setenv("VAST_ALLOW_PRIVATE_UPSTREAMS", "true")
    monkeypatch.setattr(upstream_health, "tcp_connects", answering)
    bl = make(client, clock, restart_threshold=1)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json={"instances": [running(77, 10)], "next_token": None})
        search = mock.post("/api/v0/bundles/").respond(json={"offers": []})
        async with httpx.AsyncClient() as http:
            for _ in range(4):
                rec = make_reconciler(env, http, clock, bans=Guarded(bl))
                plan = await rec.tick()
                assert plan.phase is planning.Phase.SERVING
                await rec.note_clean_stop()
                clock.now += 10
    assert not search.called
    assert await client.zcard("vastprov:restarts:77") == 1, "only the very first start counted"


async def test_a_condemned_answering_instance_is_replaced_make_before_break(
    env: pytest.MonkeyPatch, client: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash restarts past the threshold condemn a healthy instance: it keeps serving while the
    replacement boots, is destroyed once the replacement is healthy, and its host is not banned."""
    env.setenv("BLACKLIST_ENABLED", "true")
    env.setenv("VAST_ALLOW_PRIVATE_UPSTREAMS", "true")
    monkeypatch.setattr(upstream_health, "tcp_connects", answering)
    bl = make(client, clock, restart_threshold=0)
    booting = {"id": 90, "label": LABEL, "actual_status": "loading", "host_id": 20}
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        lists = mock.get("/api/v1/instances/")
        lists.side_effect = [
            httpx.Response(200, json={"instances": [running(77, 10)], "next_token": None}),
            httpx.Response(200, json={"instances": [running(77, 10)], "next_token": None}),
            httpx.Response(200, json={"instances": [running(77, 10), booting], "next_token": None}),
            httpx.Response(200, json={"instances": [running(77, 10), running(90, 20)], "next_token": None}),
        ]
        mock.get("/api/v0/instances/90/").respond(json={"instances": None})
        mock.post("/api/v0/bundles/").respond(json={"offers": [_offer(1, 20)]})
        mock.put("/api/v0/asks/1/").respond(json={"success": True, "new_contract": 90})
        destroy = mock.delete("/api/v0/instances/77/").respond(json={"success": True})
        async with httpx.AsyncClient() as http:
            rec = make_reconciler(env, http, clock, bans=Guarded(bl))
            plans = []
            for _ in range(4):
                plans.append(await rec.tick())
                clock.now += 10
    served = [p.serving.id if p.serving else None for p in plans]
    assert served == [77, 77, 77, 90]
    assert plans[0].verdicts[77] == planning.Verdict(
        planning.VerdictKind.CONDEMNED, "restart-threshold", True
    )
    assert destroy.call_count == 1 and any(
        isinstance(a, planning.Destroy) and a.instance.id == 77 for a in plans[3].actions
    )
    assert (await bl.standing()).banned_hosts == frozenset()


def _offer(oid: int, host: int) -> dict[str, Any]:
    return {
        "id": oid,
        "host_id": host,
        "machine_id": host * 10,
        "dph_total": 0.2,
        "reliability": 0.99,
        "direct_port_count": 10,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
    }


async def test_a_restart_adopting_a_once_ready_instance_that_is_booting_again_starts_its_boot_clock(
    env: pytest.MonkeyPatch, client: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rental stored its boot start in Redis (so that restarts do not reset the wait of an instance
    that never comes up). Once it has shown its endpoints that start is over: a pod restarted hours
    later, whose first list shows the instance rebooting (no ports), waits for it as booting instead of
    banning its host and destroying it for a boot timeout counted from the rental."""
    env.setenv("BLACKLIST_ENABLED", "true")
    env.setenv("VAST_ALLOW_PRIVATE_UPSTREAMS", "true")
    monkeypatch.setattr(upstream_health, "tcp_connects", answering)
    bl = make(client, clock, restart_threshold=5)
    await bl.boot_started(77, clock.now)  # the rental
    rebooting = {"id": 77, "label": LABEL, "actual_status": "loading", "host_id": 10, "machine_id": 100}
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").side_effect = [
            httpx.Response(200, json={"instances": [running(77, 10)], "next_token": None}),
            httpx.Response(200, json={"instances": [rebooting], "next_token": None}),
        ]
        destroy = mock.delete("/api/v0/instances/77/").respond(json={"success": True})
        async with httpx.AsyncClient() as http:
            first = await make_reconciler(env, http, clock, bans=Guarded(bl)).tick()
            clock.now += 3 * 3600
            restarted = await make_reconciler(env, http, clock, bans=Guarded(bl)).tick()
    assert first.verdicts[77].kind is planning.VerdictKind.HEALTHY
    assert restarted.verdicts[77].kind is planning.VerdictKind.BOOTING
    assert destroy.call_count == 0
    assert (await bl.standing()).banned_hosts == frozenset()
