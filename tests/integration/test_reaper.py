"""Orphan reaping and the spend guard end to end: a real redis-server, the simulator, real
`provisioner run` pods writing heartbeats, and `provisioner reap` as a process."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.procs import PROVISIONER, Provisioner, Sim, base_env, run_provisioner, run_sim, wait_for
from tests.redis_server import RedisServer, run_redis

pytestmark = pytest.mark.integration

PREFIX = "vastprov:"
#: the least REAP_GRACE_SECONDS allows (three heartbeat intervals); the tests age the records past it
#: (`Stack.age_heartbeat`, `Stack.age_instances`) instead of waiting a minute
GRACE_S = 60


@dataclass
class Stack:
    sim: Sim
    redis: RedisServer
    tmp: Path

    def pod_env(self, pod: str, **overrides: str) -> dict[str, str]:
        env = base_env(self.sim, self.tmp, pod=pod)
        env.update({"BLACKLIST_ENABLED": "true", "BLACKLIST_REDIS_URL": self.redis.url})
        env.update(overrides)
        return env

    def reaper_env(self, **overrides: str) -> dict[str, str]:
        """Only what the reaper needs: no POD_NAME, no template."""
        env = {k: v for k, v in self.pod_env("unused").items() if k in ("PATH", "HOME", "LANG")}
        env.update(
            {
                "VAST_API_KEY": "test-key-0123456789",
                "VAST_API_URL": self.sim.url,
                "BLACKLIST_REDIS_URL": self.redis.url,
                "REAP_GRACE_SECONDS": str(GRACE_S),
                "LOG_FORMAT": "json",
            }
        )
        env.update(overrides)
        return env

    def db(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, decode_responses=True, socket_timeout=2)

    def heartbeat(self, label: str) -> dict[str, Any] | None:
        raw = self.db().get(f"{PREFIX}heartbeat:{label}")
        return json.loads(raw) if raw else None

    def alive(self) -> set[int]:
        return {int(r["id"]) for r in self.sim.instances()}

    def age_heartbeat(self, label: str, seconds: float) -> None:
        """As if ``label``'s pod had been silent ``seconds`` longer (it is stopped: nothing rewrites it),
        in a heartbeat record that started long ago."""
        db = self.db()
        record = json.loads(db.get(f"{PREFIX}heartbeat:{label}") or "{}")
        record["at"] -= seconds
        db.set(f"{PREFIX}heartbeat:{label}", json.dumps(record), keepttl=True)
        db.zadd(f"{PREFIX}heartbeats", {label: record["at"]})
        db.set(f"{PREFIX}heartbeats:since", repr(time.time() - 10 * GRACE_S))

    def age_instances(self, label: str, seconds: float) -> None:
        """The simulated Vast lists ``label``'s instances as started ``seconds`` ago."""
        patch = {"start_date": time.time() - seconds}
        fault = {
            "endpoint": "list",
            "kind": "row_incomplete",
            "label": label,
            "patch": patch,
            "count": 10_000,
        }
        self.sim.admin("POST", "/faults", fault)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A redis-server and the simulator (one-second boots)."""
    with run_redis(tmp_path) as server, run_sim(tmp_path, boot_delay_s=1.0) as sim:
        yield Stack(sim, server, tmp_path)


@dataclass
class Reap:
    code: int
    stderr: str
    lines: list[dict[str, Any]]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    def verdicts(self) -> dict[int, str]:
        return {int(line["instance_id"]): line["verdict"] for line in self.events("reap-decision")}


def reap(env: dict[str, str], *args: str) -> Reap:
    result = subprocess.run(
        [PROVISIONER, "reap", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    lines = []
    for text in result.stdout.splitlines():
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if isinstance(obj, dict):
            lines.append(obj)
    return Reap(result.returncode, result.stderr, lines)


def rent_unlabelled(sim: Sim) -> int:
    """Rent a free offer directly through the simulated API, with no label (someone's own instance)."""
    offer = next(o for o in sim.state()["offers"] if o["rentable"] and not o["rented"])
    response = httpx.put(
        f"{sim.url}/api/v0/asks/{offer['id']}/",
        json={"client_id": "me", "image": "vastai/test-workload:1.0", "disk": 10},
        headers={"Authorization": "Bearer test-key-0123456789"},
        timeout=10,
    )
    response.raise_for_status()
    return int(response.json()["new_contract"])


def log_events(prov: Provisioner, name: str) -> list[dict[str, Any]]:
    return [line for line in prov.log_lines() if line.get("event") == name]


def test_reap_destroys_only_the_stopped_pods_instance(stack: Stack) -> None:
    """Pod 0 stops (its instance is kept) while pod 1 runs: once pod 0's heartbeat is older than the
    grace, a dry run reports its instance as the orphan and destroys nothing; --apply destroys exactly
    it; pod 1's instance and an unlabelled instance are untouched."""
    with run_provisioner(stack.pod_env("vast-pod-1"), stack.tmp, "pod1") as pod1:
        with run_provisioner(stack.pod_env("vast-pod-0"), stack.tmp, "pod0") as pod0:
            orphan = pod0.wait_serving(40)
            kept = pod1.wait_serving(40)
            wait_for(lambda: stack.heartbeat("k8s_pod=vast-pod-0"), 10, "pod 0's heartbeat")
        assert orphan in stack.alive(), "a stopped pod keeps its instance"
        foreign = rent_unlabelled(stack.sim)
        stopped_at = stack.heartbeat("k8s_pod=vast-pod-0")
        assert stopped_at is not None and stopped_at["instance_ids"] == [orphan]
        assert stopped_at["dph"] > 0
        stack.age_heartbeat("k8s_pod=vast-pod-0", GRACE_S + 5)
        stack.age_instances("k8s_pod=vast-pod-0", 2 * GRACE_S)

        dry = reap(stack.reaper_env())
        assert dry.code == 0, dry.stderr
        assert dry.verdicts() == {orphan: "orphan", kept: "keep"}
        assert all(line["dry_run"] for line in dry.events("reap-decision"))
        assert dry.events("reap-destroy") == []
        assert {orphan, kept, foreign} <= stack.alive(), "a dry run destroys nothing"

        applied = reap(stack.reaper_env(), "--apply")
        assert applied.code == 0, applied.stderr
        assert [line["instance_id"] for line in applied.events("reap-destroy")] == [orphan]
        assert orphan not in stack.alive()
        assert {kept, foreign} <= stack.alive()
        assert pod1.wait_serving(10) == kept
        assert pod1.proc.poll() is None


def test_reap_refuses_when_it_cannot_see_clearly(stack: Stack) -> None:
    """A failing instance list and an unreachable Redis each make `reap --apply` exit 1 saying why,
    destroying nothing; a bad or missing setting exits 2 with one line naming it."""
    orphan_like = rent_unlabelled(stack.sim)
    stack.sim.admin("POST", "/faults", {"endpoint": "list", "kind": "5xx", "count": 10})
    listed = reap(stack.reaper_env(), "--apply")
    assert listed.code == 1
    assert "the instance list failed" in listed.stderr
    assert listed.events("reap-refused"), "the refusal is logged as a JSON line"
    stack.sim.admin("DELETE", "/faults")

    down = reap(stack.reaper_env(BLACKLIST_REDIS_URL="redis://127.0.0.1:1/0"), "--apply")
    assert down.code == 1 and "would look orphaned" in down.stderr

    blank_prefix = reap(stack.reaper_env(REAP_LABEL_PREFIX=""), "--apply")
    assert blank_prefix.code == 2 and "REAP_LABEL_PREFIX" in blank_prefix.stderr

    bad = reap(stack.reaper_env(REAP_MAX_SHARE="2"))
    assert bad.code == 2 and bad.stderr.startswith("provisioner: REAP_MAX_SHARE:")
    assert len(bad.stderr.strip().splitlines()) == 1

    missing = reap({k: v for k, v in stack.reaper_env().items() if k != "VAST_API_KEY"})
    assert missing.code == 2 and "VAST_API_KEY" in missing.stderr
    assert orphan_like in stack.alive()


def test_no_heartbeats_means_no_reaping(stack: Stack) -> None:
    """With instances under our prefix but no heartbeat in Redis at all, `reap --apply` refuses."""
    with run_provisioner(stack.pod_env("vast-pod-0"), stack.tmp) as pod0:
        served = pod0.wait_serving(40)
    stack.db().flushdb()
    stack.age_instances("k8s_pod=vast-pod-0", 2 * GRACE_S)
    refused = reap(stack.reaper_env(), "--apply")
    assert refused.code == 1 and "no heartbeat in Redis at all under 'k8s_pod='" in refused.stderr
    assert refused.verdicts() == {served: "refused"}
    assert served in stack.alive()


def test_spend_cap_keeps_the_second_pod_waiting(stack: Stack) -> None:
    """With VAST_MAX_FLEET_DPH just above pod 0's rental, pod 1 does not rent, says why once, and keeps
    checking on later ticks."""
    probe = subprocess.run(
        [PROVISIONER, "offers", "--json", "--top", "1000"],
        env=stack.pod_env("vast-pod-0"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    prices = [row["price_per_hour"] for row in json.loads(probe.stdout)["offers"]]
    cap = prices[0] + min(prices) / 2
    env0 = stack.pod_env("vast-pod-0", VAST_MAX_FLEET_DPH=f"{cap:.6f}")
    env1 = stack.pod_env("vast-pod-1", VAST_MAX_FLEET_DPH=f"{cap:.6f}")
    with run_provisioner(env0, stack.tmp, "pod0") as pod0:
        first = pod0.wait_serving(40)
        wait_for(lambda: (stack.heartbeat("k8s_pod=vast-pod-0") or {}).get("dph"), 10, "pod 0's price")
        with run_provisioner(env1, stack.tmp, "pod1") as pod1:
            noted = wait_for(lambda: log_events(pod1, "spend-cap"), 30, "pod 1 to hit the spend cap")
            searches = stack.sim.count("search")
            # a later tick checks again (a new search: the fleet shares one search per query for 20 s)
            wait_for(lambda: stack.sim.count("search") > searches, 45, "a later rental attempt")
            assert len(log_events(pod1, "spend-cap")) == 1, "said once, not on every tick"
            assert stack.sim.instances("k8s_pod=vast-pod-1") == []
            assert pod1.proc.poll() is None
    message = noted[0]["msg"]
    assert f"VAST_MAX_FLEET_DPH ${cap:.3f}/h" in message and "waiting" in message
    assert log_events(pod0, "spend-cap") == []
    assert [r["id"] for r in stack.sim.instances("k8s_pod=vast-pod-0")] == [first]
