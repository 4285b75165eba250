"""The reaper: the pure decision table, and the run against respx (Vast) and fakeredis (heartbeats)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import httpx
import pytest
import respx
from pydantic import SecretStr

from provisioner import errors, fleet, fleetguard, model, reaper, reapmarks, store
from provisioner.fleet import Heartbeat
from provisioner.reaper import Decision, Policy, decide
from provisioner.redisclock import RedisClock
from provisioner.settings import load_reaper_settings
from provisioner.vast import client as vast_client
from tests.fakes import Clock, SkewedRedis

NOW = 1_800_000_000.0
GRACE = 1800.0
POLICY = Policy(label_prefix="k8s_pod=gpu/", grace_s=GRACE, max_share=0.5)
BASE = "http://vast.test"


def inst(iid: int, label: str | None, age_s: float | None = 3 * GRACE, dph: float = 0.4) -> model.Instance:
    start = None if age_s is None else NOW - age_s
    return model.Instance(id=iid, label=label, start_date=start, dph_total=dph, actual_status="running")


def beat(label: str, age_s: float, pod: str = "p") -> Heartbeat:
    return Heartbeat(label=label, pod=pod, at=NOW - age_s, instance_ids=(), dph=0.4)


def verdicts(decisions: list[Decision]) -> dict[int, str]:
    return {d.instance_id: d.verdict for d in decisions}


A, B, C, D = (f"k8s_pod=gpu/vast-pod-{i}" for i in range(4))
#: a live pod elsewhere, so that the heartbeat record is never empty in the cases below
LIVE = {D: beat(D, 5)}
LIVE_INSTANCE = inst(4, D)


@pytest.mark.parametrize(
    ("instances", "heartbeats", "expected"),
    [
        pytest.param([inst(1, A)], {A: beat(A, 10)}, {1: "keep"}, id="fresh-heartbeat-kept"),
        pytest.param(
            [inst(1, A), LIVE_INSTANCE],
            {A: beat(A, GRACE + 1), **LIVE},
            {1: "orphan", 4: "keep"},
            id="stale-heartbeat-old-instance-reaped",
        ),
        pytest.param(
            [inst(1, A), LIVE_INSTANCE], LIVE, {1: "orphan", 4: "keep"}, id="no-heartbeat-old-instance-reaped"
        ),
        pytest.param(
            [inst(1, A, age_s=GRACE - 1), LIVE_INSTANCE],
            {A: beat(A, 10 * GRACE), **LIVE},
            {1: "keep", 4: "keep"},
            id="stale-heartbeat-young-instance-kept",
        ),
        pytest.param(
            [inst(1, A, age_s=60), LIVE_INSTANCE],
            LIVE,
            {1: "keep", 4: "keep"},
            id="new-instance-before-first-heartbeat-kept",
        ),
        pytest.param(
            [inst(1, A, age_s=None), LIVE_INSTANCE], LIVE, {1: "keep", 4: "keep"}, id="unknown-age-kept"
        ),
        pytest.param(
            [inst(1, A), LIVE_INSTANCE],
            {A: beat(A, GRACE), **LIVE},
            {1: "keep", 4: "keep"},
            id="heartbeat-exactly-grace-old-kept",
        ),
        pytest.param(
            [inst(1, A), LIVE_INSTANCE],
            {A: beat(A, -30), **LIVE},
            {1: "keep", 4: "keep"},
            id="heartbeat-from-a-clock-ahead-kept",
        ),
        pytest.param(
            [inst(1, "k8s_pod=other/vast-pod-0"), inst(2, None), inst(3, "my-own-box"), LIVE_INSTANCE],
            LIVE,
            {4: "keep"},
            id="foreign-labels-never-touched",
        ),
        pytest.param(
            [inst(1, A), inst(2, B), LIVE_INSTANCE],
            LIVE,
            {1: "refused", 2: "refused", 4: "keep"},
            id="share-limit-refuses",
        ),
        pytest.param(
            [inst(1, A), inst(2, B), inst(3, C), LIVE_INSTANCE],
            {C: beat(C, 1), **LIVE},
            {1: "orphan", 2: "orphan", 3: "keep", 4: "keep"},
            id="exactly-the-share-is-allowed",
        ),
        pytest.param(
            [inst(1, A), inst(2, B), inst(3, C)],
            {},
            {1: "refused", 2: "refused", 3: "refused"},
            id="no-heartbeats-refuse",
        ),
        pytest.param([inst(1, A, age_s=10)], {}, {1: "keep"}, id="no-heartbeats-nothing-to-reap"),
        pytest.param([inst(1, A)], {A: beat(A, GRACE + 1)}, {1: "refused"}, id="single-orphan-is-all"),
        pytest.param([], LIVE, {}, id="nothing-listed"),
    ],
)
def test_decide(
    instances: list[model.Instance], heartbeats: dict[str, Heartbeat], expected: dict[int, str]
) -> None:
    """Each listed instance with our prefix gets keep / orphan / refused as the rules say; others none."""
    assert verdicts(decide(instances, heartbeats, NOW, POLICY)) == expected


def test_decide_is_in_id_order_and_says_why() -> None:
    """Decisions come in instance id order and carry the ages, the price and a readable reason."""
    decisions = decide([LIVE_INSTANCE, inst(1, A, dph=0.55)], LIVE, NOW, POLICY)
    assert [d.instance_id for d in decisions] == [1, 4]
    orphan = decisions[0]
    assert (orphan.label, orphan.dph, orphan.heartbeat_age_s) == (A, 0.55, None)
    assert orphan.instance_age_s == pytest.approx(3 * GRACE)
    assert orphan.reason == "no heartbeat (grace 1800s); instance 5400s old"
    assert decisions[1].reason == "its pod p sent a heartbeat 5s ago"


@pytest.mark.parametrize(
    ("since_age_s", "expected"),
    [
        pytest.param(GRACE / 2, "refused", id="young-record-refuses"),
        pytest.param(GRACE + 1, "orphan", id="old-record-allows"),
        pytest.param(None, "orphan", id="unknown-record-age-allows"),
    ],
)
def test_a_young_heartbeat_record_refuses(since_age_s: float | None, expected: str) -> None:
    """When the heartbeat record started less than a grace ago (Redis restarted), orphans are refused."""
    since = None if since_age_s is None else NOW - since_age_s
    decisions = decide([inst(1, A), LIVE_INSTANCE], LIVE, NOW, POLICY, tracked_since=since)
    assert decisions[0].verdict == expected
    if expected == "refused":
        assert "Redis was restarted or flushed" in decisions[0].reason


def test_refusal_says_why() -> None:
    """A share refusal names the counts and REAP_MAX_SHARE; an empty record names the likely causes."""
    shared = decide([inst(1, A), inst(2, B), LIVE_INSTANCE], LIVE, NOW, POLICY)
    assert "it would destroy 2 of 3 managed instances, more than REAP_MAX_SHARE=0.5" in shared[0].reason
    empty = decide([inst(1, A)], {}, NOW, POLICY)
    assert "no heartbeat in Redis at all under 'k8s_pod=gpu/'" in empty[0].reason
    assert "BLACKLIST_ENABLED" in empty[0].reason


def test_heartbeats_of_another_prefix_only_refuse() -> None:
    """Another deployment's heartbeats in the same Redis say nothing about ours: with none under our
    prefix, every one of our old instances would look orphaned, so the run refuses."""
    other = "k8s_pod=other/vast-pod-0"
    decisions = decide([inst(1, A), inst(2, B), inst(3, C), inst(4, D)], {other: beat(other, 5)}, NOW, POLICY)
    assert verdicts(decisions) == {1: "refused", 2: "refused", 3: "refused", 4: "refused"}
    assert "no heartbeat in Redis at all under 'k8s_pod=gpu/'" in decisions[0].reason


@pytest.mark.parametrize(
    ("instance", "expected"),
    [
        pytest.param(inst(2, A, age_s=GRACE + 60), "keep", id="rented-after-the-reap"),
        pytest.param(inst(2, A, age_s=3 * GRACE), "orphan", id="older-than-the-reap"),
        pytest.param(inst(1, A, age_s=GRACE + 60), "orphan", id="the-reaped-one-itself"),
    ],
)
def test_a_label_rented_again_after_a_reap_is_a_live_pod(instance: model.Instance, expected: str) -> None:
    """Instance 1 of A was reaped 2 grace ago; a later instance of A was rented by a live pod (only a
    live pod rents) that sends no heartbeats (it cannot reach Redis): reaping it again would loop."""
    last = {A: reapmarks.Reaped(at=NOW - 2 * GRACE, instance_id=1)}
    decisions = decide([instance, LIVE_INSTANCE, inst(5, D)], LIVE, NOW, POLICY, reaped=last)
    assert decisions[0].verdict == expected
    if expected == "keep":
        assert decisions[0].reason.startswith("its pod rented it after instance 1 was reaped")


def test_a_label_whose_pod_wrote_heartbeats_after_the_reap_is_judged_by_them() -> None:
    """A was reaped, its pod came back (scaled up again), rented, wrote heartbeats (it reaches Redis),
    and went away again: its instance is an orphan by its stale heartbeat, not kept for the week the
    reaper remembers the first destroy. The same instance whose pod Kubernetes says is gone, too."""
    last = {A: reapmarks.Reaped(at=NOW - 2 * GRACE, instance_id=1)}
    later = inst(2, A, age_s=GRACE + 60)
    stale = {A: beat(A, GRACE + 30), **LIVE}
    decisions = decide([later, LIVE_INSTANCE, inst(5, D)], stale, NOW, POLICY, reaped=last)
    assert decisions[0].verdict == "orphan" and "last heartbeat" in decisions[0].reason
    silent = decide([later, LIVE_INSTANCE, inst(5, D)], LIVE, NOW, POLICY, reaped=last, gone={A})
    assert silent[0].verdict == "orphan" and not silent[0].alive_unseen


def test_empty_prefix_manages_nothing() -> None:
    """An empty prefix would match every label: it manages nothing instead."""
    assert decide([inst(1, A)], LIVE, NOW, Policy(label_prefix="", grace_s=GRACE)) == []


# ---------------------------------------------------------------- the run (respx + fakeredis)


@pytest.fixture(autouse=True)
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The reaper's wait before re-reading an orphan's heartbeat, recorded instead of slept."""
    waited: list[float] = []

    async def pause(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(reaper, "_pause", pause)
    return waited


@pytest.fixture
async def record(server: fakeredis.FakeServer) -> AsyncIterator[fleet.Fleet]:
    client = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    yield fleet.Fleet(client, clock=Clock())
    await client.aclose()


def row(iid: int, label: str | None, age_s: float = 3 * GRACE) -> dict[str, Any]:
    return {
        "id": iid,
        "label": label,
        "actual_status": "running",
        "start_date": NOW - age_s,
        "dph_total": 0.4,
    }


async def seed(record: fleet.Fleet, *beats: Heartbeat) -> None:
    """Heartbeats in a record that started long ago (the first heartbeat sets its start)."""
    await record.beat(beat("k8s_pod=gpu/long-gone", 10 * GRACE))
    for b in beats:
        await record.beat(b)


async def run_reap(record: fleet.Fleet, mock: respx.MockRouter, *, apply: bool) -> reaper.Outcome:
    async with httpx.AsyncClient() as http:
        vast = vast_client.VastClient(
            http,
            SecretStr("k"),
            base_url=BASE,
            retry=vast_client.RetryPolicy(attempts=2, initial_backoff_s=0),
        )
        return await reaper.reap(vast, record, POLICY, apply=apply, clock=Clock())


def listing(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"instances": list(rows), "next_token": None}


async def test_dry_run_destroys_nothing_and_logs_every_decision(
    record: fleet.Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """Without apply nothing is destroyed; each managed instance gets one reap-decision log line."""
    await seed(record, beat(D, 5))
    with (
        respx.mock(base_url=BASE, assert_all_called=False) as mock,
        caplog.at_level(logging.INFO, logger="provisioner.reaper"),
    ):
        mock.get("/api/v1/instances/").respond(json=listing(row(1, A), row(4, D), row(9, "mine")))
        destroy = mock.delete(url__regex=r"/api/v0/instances/\d+/")
        outcome = await run_reap(record, mock, apply=False)
    assert not destroy.called
    assert outcome.problem is None and outcome.destroyed == []
    lines = [(r.instance_id, r.verdict, r.dry_run) for r in caplog.records if r.event == "reap-decision"]
    assert lines == [(1, "orphan", True), (4, "keep", True)]


async def test_apply_destroys_exactly_the_orphans(record: fleet.Fleet) -> None:
    """With apply only the orphan is destroyed: not the live pod's instance, not a foreign one."""
    await seed(record, beat(D, 5), beat(B, 2 * GRACE))
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(
            json=listing(row(1, A, age_s=60), row(2, B), row(4, D), row(9, None))
        )
        gone = mock.delete("/api/v0/instances/2/").respond(json={"success": True})
        outcome = await run_reap(record, mock, apply=True)
    assert gone.call_count == 1
    assert outcome.destroyed == [2] and outcome.problem is None


async def test_a_record_younger_than_the_grace_refuses_the_run(record: fleet.Fleet) -> None:
    """Redis flushed or restarted half a grace ago: the heartbeat record restarts with the first pod
    that wrote again, so an old instance without a heartbeat may belong to a live pod that has not
    written yet. The run reads when the record started and refuses, destroying nothing."""
    await record.beat(beat(D, GRACE / 2))  # the first heartbeat since the flush starts the record
    await record.beat(beat(D, 5))
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json=listing(row(1, A), row(4, D)))
        destroy = mock.delete(url__regex=r"/api/v0/instances/\d+/")
        outcome = await run_reap(record, mock, apply=True)
    assert not destroy.called and outcome.destroyed == []
    assert outcome.problem is not None and "Redis was restarted or flushed" in outcome.problem
    assert verdicts(outcome.decisions) == {1: "refused", 4: "keep"}


async def test_a_reap_is_remembered_and_a_later_rental_of_the_label_is_kept(
    record: fleet.Fleet, server: fakeredis.FakeServer
) -> None:
    """The first run destroys B's orphan and records it; B's pod, alive but cut off from Redis, rents
    again; once that instance is past the grace too, the next run keeps it and says why."""
    await seed(record, beat(D, 5), beat(B, 3 * GRACE))
    client = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    reaped = reapmarks.ReapRecord(client, record.keys)
    rows = [row(2, B), row(4, D), row(5, D)]

    async def run(now: float) -> reaper.Outcome:
        with respx.mock(base_url=BASE, assert_all_called=False) as mock:
            mock.get("/api/v1/instances/").respond(json=listing(*rows))
            mock.delete(url__regex=r"/api/v0/instances/\d+/").respond(json={"success": True})
            async with httpx.AsyncClient() as http:
                vast = vast_client.VastClient(http, SecretStr("k"), base_url=BASE)
                return await reaper.reap(vast, record, POLICY, apply=True, clock=Clock(now), reaped=reaped)

    first = await run(NOW)
    assert first.destroyed == [2]
    assert await reaped.read([B]) == {B: reapmarks.Reaped(NOW, 2)}
    rows[0] = row(7, B, age_s=-60)  # rented again a minute after the reap, by B's pod
    await record.beat(beat(D, 5 - 2 * GRACE))  # D's pod still beats
    second = await run(NOW + 2 * GRACE)
    assert second.problem is None and second.destroyed == []
    assert verdicts(second.decisions) == {4: "keep", 5: "keep", 7: "keep"}
    assert "its pod rented it after instance 2 was reaped" in second.decisions[-1].reason
    await client.aclose()


async def test_a_live_pod_whose_clock_runs_behind_is_not_reaped(
    record: fleet.Fleet, monkeypatch: pytest.MonkeyPatch, pauses: list[float]
) -> None:
    """B's pod stamps its heartbeats with a clock 3 graces behind: they look stale, but it writes a new
    one every 20 s. The reaper waits a heartbeat interval before destroying, reads again, sees it
    changed, and keeps the instance."""
    await seed(record, beat(D, 5), beat(B, 3 * GRACE))

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        await record.beat(beat(B, 3 * GRACE - 20))  # the pod's next heartbeat, on its slow clock

    monkeypatch.setattr(reaper, "_pause", pause)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json=listing(row(2, B), row(4, D), row(5, D)))
        destroy = mock.delete(url__regex=r"/api/v0/instances/\d+/")
        outcome = await run_reap(record, mock, apply=True)
    assert pauses == [reaper.CHANGE_WAIT_S] and reaper.CHANGE_WAIT_S > fleet.HEARTBEAT_INTERVAL_S
    assert not destroy.called and outcome.destroyed == [] and outcome.problem is None


async def test_a_pod_that_came_back_is_not_reaped(record: fleet.Fleet) -> None:
    """The orphan's heartbeat is read again right before the destroy; a fresh one saves the instance."""
    await seed(record, beat(D, 5), beat(B, 2 * GRACE))

    def revive(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=listing(row(2, B), row(4, D)))

    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").mock(side_effect=revive)
        destroy = mock.delete(url__regex=r"/api/v0/instances/\d+/")
        original = record.heartbeat

        async def heartbeat_after_revival(label: str) -> Heartbeat | None:
            await record.beat(beat(B, 0))
            return await original(label)

        record.heartbeat = heartbeat_after_revival  # type: ignore[method-assign]
        outcome = await run_reap(record, mock, apply=True)
    assert not destroy.called and outcome.destroyed == []


async def test_redis_down_refuses_before_listing(record: fleet.Fleet, server: fakeredis.FakeServer) -> None:
    """Redis unreachable: refused, with a reason, and Vast is not even listed."""
    server.connected = False
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        listed = mock.get("/api/v1/instances/")
        outcome = await run_reap(record, mock, apply=True)
    assert not listed.called
    assert outcome.problem is not None and "would look orphaned" in outcome.problem


async def test_list_failure_refuses(record: fleet.Fleet) -> None:
    """A failing instance list (5xx after the retries) refuses; nothing is destroyed."""
    await seed(record, beat(D, 5))
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(503)
        destroy = mock.delete(url__regex=r"/api/v0/instances/\d+/")
        outcome = await run_reap(record, mock, apply=True)
    assert not destroy.called
    assert outcome.problem is not None and "the instance list failed" in outcome.problem


async def test_refused_orphans_are_not_destroyed(record: fleet.Fleet) -> None:
    """Over the share limit nothing is destroyed even with apply, and the run reports the refusal."""
    await seed(record, beat(D, 5))
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json=listing(row(1, A), row(2, B), row(4, D)))
        destroy = mock.delete(url__regex=r"/api/v0/instances/\d+/")
        outcome = await run_reap(record, mock, apply=True)
    assert not destroy.called
    assert outcome.problem is not None and "REAP_MAX_SHARE" in outcome.problem


async def test_failed_destroy_is_reported_and_the_rest_goes_on(record: fleet.Fleet) -> None:
    """A destroy that fails is a problem (exit 1); the other orphans are still destroyed."""
    await seed(record, beat(D, 5), beat(C, 1))
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json=listing(row(1, A), row(2, B), row(3, C), row(4, D)))
        mock.delete("/api/v0/instances/1/").respond(400, json={"error": "nope"})
        gone = mock.delete("/api/v0/instances/2/").respond(json={"success": True})
        outcome = await run_reap(record, mock, apply=True)
    assert gone.called and outcome.destroyed == [2]
    assert outcome.problem is not None and "instance 1" in outcome.problem


# ---------------------------------------------------------------- settings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith(("VAST_", "BLACKLIST_", "REAP_", "POD_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("VAST_API_KEY", "k3y-abcdef")
    return monkeypatch


def test_reaper_settings_need_no_pod_variables(env: pytest.MonkeyPatch) -> None:
    """The reaper loads with VAST_API_KEY alone (no POD_NAME, template...), with the documented defaults."""
    cfg = load_reaper_settings()
    assert (cfg.reap_label_prefix, cfg.reap_grace_seconds, cfg.reap_max_share) == ("k8s_pod=", 1800, 0.5)
    assert cfg.blacklist_redis_url.get_secret_value() == "redis://redis:6379/10"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VAST_API_KEY", ""),
        ("VAST_API_URL", "ftp://vast"),
        ("BLACKLIST_REDIS_URL", "http://redis"),
        ("BLACKLIST_KEY_PREFIX", "has space"),
        ("REAP_GRACE_SECONDS", "0"),
        # under three heartbeat intervals (20 s each): live pods would look silent
        ("REAP_GRACE_SECONDS", "59"),
        ("REAP_MAX_SHARE", "1.5"),
        ("REAP_MAX_SHARE", "0"),
        ("REAP_LABEL_PREFIX", " k8s_pod="),
    ],
)
def test_bad_reaper_settings_name_the_variable(env: pytest.MonkeyPatch, variable: str, value: str) -> None:
    """A bad reaper variable is a ConfigError naming it (exit 2 from the CLI)."""
    env.setenv(variable, value)
    with pytest.raises(errors.ConfigError) as info:
        load_reaper_settings()
    assert info.value.variable == variable


def test_heartbeat_json_round_trips_and_rejects_junk() -> None:
    """A heartbeat survives its JSON; anything that is not one reads as None."""
    b = Heartbeat("k8s_pod=a", "a", NOW, (3, 1), 0.25)
    assert Heartbeat.from_json(b.to_json()) == b
    for junk in (
        None,
        "",
        "[]",
        "{",
        json.dumps({"label": "x"}),
        json.dumps({**json.loads(b.to_json()), "at": True}),
    ):
        assert Heartbeat.from_json(junk) is None


@pytest.mark.parametrize("redis_skew_s", [3600.0, -3600.0])
async def test_heartbeat_ages_are_on_the_redis_clock_and_vast_times_on_the_reapers(
    server: fakeredis.FakeServer, redis_skew_s: float
) -> None:
    """The pod's clock runs 20 minutes behind, Redis's an hour ahead (or behind): the pod stamps its
    heartbeat on the Redis clock and the reaper ages it on the same, so it is seconds old and the
    instance is kept. On any other pair of clocks it would be an hour old: an orphan. Vast's
    ``start_date`` is compared with the reaper's own clock: the instance is 90 minutes old."""
    real = time.time()
    client = SkewedRedis(server=server, decode_responses=True)
    client.skew_s = redis_skew_s
    pod_clock = RedisClock(client, local=Clock(real - 1200))
    pod = fleetguard.GuardedFleet(fleet.Fleet(client, clock=pod_clock), store.Outage(), pod="vast-pod-0")
    await pod.beat(A, [1], 0.4)
    long_ago = real + redis_skew_s - 10 * GRACE
    await client.set("vastprov:heartbeats:since", repr(long_ago))  # a record kept for long
    record = fleet.Fleet(client, clock=RedisClock(client))
    old_row = row(1, A) | {"start_date": real - 3 * GRACE}
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json=listing(old_row))
        destroy = mock.delete(url__regex=r"/api/v0/instances/\d+/")
        async with httpx.AsyncClient() as http:
            vast = vast_client.VastClient(http, SecretStr("k"), base_url=BASE)
            outcome = await reaper.reap(vast, record, POLICY, apply=True)
    await client.aclose()
    assert not destroy.called and outcome.destroyed == []
    (decision,) = outcome.decisions
    assert decision.verdict == "keep"
    assert decision.heartbeat_age_s is not None and decision.heartbeat_age_s < 5
    assert decision.instance_age_s == pytest.approx(3 * GRACE, abs=5)


async def test_a_young_instance_is_kept_whatever_the_redis_clock_says(server: fakeredis.FakeServer) -> None:
    """A pod rented a minute ago and has written no heartbeat yet; Redis's clock runs two hours ahead.
    The instance's age is on the reaper's own clock (1 minute, within the grace): kept."""
    real = time.time()
    client = SkewedRedis(server=server, decode_responses=True)
    client.skew_s = 4 * GRACE
    other = fleetguard.GuardedFleet(
        fleet.Fleet(client, clock=RedisClock(client)), store.Outage(), pod="vast-pod-3"
    )
    await other.beat(D, [4], 0.4)  # the record is not empty
    await client.set("vastprov:heartbeats:since", repr(real + 4 * GRACE - 10 * GRACE))
    record = fleet.Fleet(client, clock=RedisClock(client))
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        rows = [row(1, A) | {"start_date": real - 60}, row(4, D) | {"start_date": real - 3 * GRACE}]
        mock.get("/api/v1/instances/").respond(json=listing(*rows))
        destroy = mock.delete(url__regex=r"/api/v0/instances/\d+/")
        async with httpx.AsyncClient() as http:
            vast = vast_client.VastClient(http, SecretStr("k"), base_url=BASE)
            outcome = await reaper.reap(vast, record, POLICY, apply=True)
    await client.aclose()
    assert not destroy.called
    assert {d.instance_id: d.verdict for d in outcome.decisions} == {1: "keep", 4: "keep"}


async def reap_on_skewed_redis(
    server: fakeredis.FakeServer, skew_s: float, since_age_s: float, *beats: tuple[str, float]
) -> tuple[reaper.Outcome, list[int]]:
    """Heartbeats ``(label, age_s)`` written on a Redis whose clock runs ``skew_s`` ahead, its record
    started ``since_age_s`` ago (Redis clock); the reaper (on this machine's clock) applies over
    instances 1 (A) and 4 (D), both 90 minutes old. Returns the outcome and the destroyed ids."""
    real = time.time()
    client = SkewedRedis(server=server, decode_responses=True)
    client.skew_s = skew_s
    writer = fleet.Fleet(client)
    for label, age_s in beats:
        await writer.beat(Heartbeat(label, "p", real + skew_s - age_s, (), 0.4))
    await client.set("vastprov:heartbeats:since", repr(real + skew_s - since_age_s))
    record = fleet.Fleet(client, clock=RedisClock(client))
    rows = [row(i, label) | {"start_date": real - 3 * GRACE} for i, label in ((1, A), (4, D))]
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/api/v1/instances/").respond(json=listing(*rows))
        gone = mock.delete(url__regex=r"/api/v0/instances/\d+/").respond(json={"success": True})
        async with httpx.AsyncClient() as http:
            vast = vast_client.VastClient(http, SecretStr("k"), base_url=BASE)
            outcome = await reaper.reap(vast, record, POLICY, apply=True)
    await client.aclose()
    return outcome, [int(str(c.request.url).rstrip("/").rsplit("/", 1)[1]) for c in gone.calls]


async def test_a_stale_heartbeat_on_a_redis_clock_behind_is_still_an_orphan(
    server: fakeredis.FakeServer,
) -> None:
    """Redis's clock runs an hour behind: A's heartbeat, two graces old on it, is an orphan's, and the
    second read before the destroy sees the same heartbeat (moved by the same lead): destroyed."""
    outcome, destroyed = await reap_on_skewed_redis(server, -3600.0, 10 * GRACE, (A, 2 * GRACE), (D, 5))
    assert {d.instance_id: d.verdict for d in outcome.decisions} == {1: "orphan", 4: "keep"}
    assert destroyed == [1] and outcome.problem is None


async def test_a_young_record_on_a_redis_clock_behind_refuses(server: fakeredis.FakeServer) -> None:
    """Redis's clock runs an hour behind and its heartbeat record started ten minutes ago on it (a
    flushed Redis): refused, although on this machine's clock that start looks 70 minutes old."""
    outcome, destroyed = await reap_on_skewed_redis(server, -3600.0, 600, (A, 2 * GRACE), (D, 5))
    assert destroyed == [] and outcome.problem is not None and "record in Redis is only" in outcome.problem
