"""Many pods on one API key (issue 13), end to end: real `provisioner run` processes, a real
redis-server and the simulator with Vast's rate limits (scaled down, the pacer's intervals alike)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import redis

from tests.procs import Provisioner, Sim, base_env, run_provisioner, run_sim, wait_for
from tests.redis_server import RedisServer, run_redis

PREFIX = "vastprov:"
#: the simulator's limits at this share of production speed; the pacer is told the same
SCALE = 0.2
PACE = ",".join(
    f"{name}={seconds * SCALE:g}"
    for name, seconds in {
        "list_instances": 1.0,
        "show_instance": 2.0,
        "destroy": 3.0,
        "template_search": 3.0,
        "template_create": 1.0,
        "create_instance": 4.5,
        "search_offers": 6.0,
        "whoami": 1.0,
        "logs": 1.0,
        "label": 1.0,
        "other": 1.0,
    }.items()
)
PODS = 5

pytestmark = pytest.mark.timeout(180)


def pod_env(sim: Sim, server: RedisServer, tmp: Path, pod: str) -> dict[str, str]:
    return base_env(
        sim,
        tmp,
        pod=pod,
        VAST_TEMPLATE_NAME="tmpl-fleet",
        BLACKLIST_ENABLED="true",
        BLACKLIST_REDIS_URL=server.url,
        VAST_PACE_INTERVALS=PACE,
        BOOT_POLL_SECONDS="0.5",
    )


def fleet_events(prov: Provisioner, name: str) -> int:
    return sum(1 for line in prov.log_lines() if line.get("event") == name)


@contextlib.contextmanager
def fleet(sim: Sim, server: RedisServer, tmp: Path) -> Iterator[list[Provisioner]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(run_provisioner(pod_env(sim, server, tmp, f"web-{i}"), tmp))
            for i in range(PODS)
        ]


def test_killing_redis_while_five_pods_boot_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """Redis killed while 5 pods boot on one key: every pod serves its own single instance, no label
    is rented twice, each pod logs the outage once, and once Redis is back the fleet shares again."""
    with run_redis(tmp_path) as server, run_sim(tmp_path, boot_delay_s=3.0) as sim:
        sim.admin("POST", "/config", {"rate_limits": True, "rate_limit_scale": SCALE})
        db = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=2)
        with fleet(sim, server, tmp_path) as pods:
            wait_for(
                lambda: db.keys(f"{PREFIX}rentq:*") or db.keys(f"{PREFIX}view:*"), 30, "the fleet in Redis"
            )
            booting = sum(1 for p in pods if p.served_instance() is None)
            server.kill()
            killed_at = time.time()
            served = {p.env["POD_NAME"]: p.wait_serving(timeout_s=120) for p in pods}
            server.start()
            restarted_at = time.time()
            db.close()
            db = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=2)
            # back on Redis: the pods publish the shared view again (one list for the fleet)
            wait_for(lambda: db.keys(f"{PREFIX}view:*"), 30, "the shared view in Redis again")
            time.sleep(1.0)
            outages = [fleet_events(p, "fleet-store-unavailable") for p in pods]
            recovered = [fleet_events(p, "fleet-store-recovered") for p in pods]
        db.close()
        rows = sim.instances(include_destroyed=True)
        # a list already under way when Redis died (waiting for its paced slot) may still go out
        # whole, one per pod at most; after that, only label lists (before the fix: 58 whole lists)
        window = [r for r in sim.requests() if killed_at < r["ts"] < restarted_at]
        lists = [r for r in window if r["endpoint"] == "list"]
        whole = [r for r in lists if "label" not in "".join(parse_qs(r["query"]).get("select_filters", []))]
    assert booting >= 1, "Redis went away while pods were still booting"
    assert len(set(served.values())) == PODS, served
    for pod, iid in served.items():
        mine = [r for r in rows if r.get("label") == f"k8s_pod={pod}"]
        assert [r["id"] for r in mine] == [iid], f"{pod}: exactly one instance, the served one: {mine}"
    assert all(n <= 1 for n in outages) and sum(outages) >= 1, outages
    assert sum(recovered) >= 1, recovered
    assert lists, "the pods listed during the outage"
    assert len(whole) <= PODS, (
        f"during the outage a pod lists its own label, not the whole account: {whole[:3]}"
    )
