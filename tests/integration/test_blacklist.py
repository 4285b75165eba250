"""The shared host blacklist end to end: a real redis-server process, the simulator, real `provisioner`
processes, and a recording proxy in front of the simulator to see the search bodies actually sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from provisioner import blacklist, fleet, fleet_wiring, fleetguard, redisclock, settings, store
from tests.glitch_support import crash
from tests.procs import Provisioner, Sim, base_env, cli, run_provisioner, run_sim, wait_for
from tests.redis_server import RedisServer, run_redis

pytestmark = pytest.mark.integration

PREFIX = "vastprov:"
_HOP_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding", "content-encoding"})


@dataclass
class RecordingProxy:
    """Forwards every request to the simulator and keeps (API key, JSON body) of each offer search."""

    target: str
    searches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, key: str | None = None) -> list[dict[str, Any]]:
        return [body for k, body in list(self.searches) if key is None or k == key]


@contextlib.contextmanager
def run_recording_proxy(target: str) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(target)
    http = httpx.Client(timeout=30.0, limits=httpx.Limits(keepalive_expiry=2.0))  # below uvicorn's 5 s

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.command == "POST" and self.path.startswith("/api/v0/bundles"):
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                proxy.searches.append((key, json.loads(body)))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            answer = http.request(self.command, target + self.path, content=body, headers=headers)
            self.send_response(answer.status_code)
            for k, v in answer.headers.items():
                if k.lower() not in _HOP_HEADERS:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def do_GET(self) -> None:
            self.forward()

        def do_POST(self) -> None:
            self.forward()

        def do_PUT(self) -> None:
            self.forward()

        def do_DELETE(self) -> None:
            self.forward()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    proxy.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
        http.close()


@dataclass
class Stack:
    sim: Sim
    proxy: RecordingProxy
    redis: RedisServer
    tmp: Path

    def env(self, pod: str = "vast-pod-0", **overrides: str) -> dict[str, str]:
        env = base_env(self.sim, self.tmp, pod=pod)
        env.update(
            {
                "VAST_API_URL": self.proxy.url,
                "BLACKLIST_ENABLED": "true",
                "BLACKLIST_REDIS_URL": self.redis.url,
            }
        )
        env.update(overrides)
        return env

    def db(self) -> redis.Redis:
        """A fresh synchronous client (a new connection each time: Redis may have been restarted)."""
        return redis.Redis.from_url(self.redis.url, decode_responses=True, socket_timeout=2)

    def host_of(self, instance_id: int) -> int:
        rows = [r for r in self.sim.state()["instances"] if r["id"] == instance_id]
        return int(rows[0]["host_id"])


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A redis-server, the simulator (one-second boots) and the recording proxy in front of it."""
    with (
        run_redis(tmp_path) as server,
        run_sim(tmp_path, boot_delay_s=1.0) as sim,
        run_recording_proxy(sim.url) as proxy,
    ):
        yield Stack(sim, proxy, server, tmp_path)


def top_offer(env: dict[str, str]) -> dict[str, Any]:
    """What this pod would rent now, by `provisioner offers --json`."""
    result = cli(env, "offers", "--json", "--top", "1")
    assert result.returncode == 0, result.stderr
    offer: dict[str, Any] = json.loads(result.stdout)["offers"][0]
    return offer


def events(prov: Provisioner, name: str) -> int:
    return sum(1 for line in prov.log_lines() if line.get("event") == name)


def test_slow_host_is_banned_and_the_pod_serves_from_another_host(stack: Stack) -> None:
    """A host that never boots is banned after BLACKLIST_BAN_AFTER_SECONDS, the next search sent to Vast
    excludes it (notin), and the same process ends up serving from another host."""
    env = stack.env(BLACKLIST_BAN_AFTER_SECONDS="4")
    slow = top_offer(env)["host_id"]
    stack.sim.admin("POST", f"/hosts/{slow}", {"never_boots": True})
    stack.proxy.searches.clear()
    with run_provisioner(env, stack.tmp) as prov:
        served = prov.wait_serving(60)
        assert stack.host_of(served) != slow
        assert prov.proc.poll() is None, "no restart"
    label = "k8s_pod=vast-pod-0"
    on_slow = [r for r in stack.sim.instances(label, include_destroyed=True) if r["host_id"] == slow]
    assert len(on_slow) == 1 and on_slow[0]["destroyed_at"], "the slow host's instance was destroyed"
    ban = json.loads(stack.db().get(f"{PREFIX}ban:host:{slow}") or "{}")
    assert ban["reason"] == "boot-timeout" and ban["by"] == "vast-pod-0"
    first, *later = stack.proxy.bodies()
    assert "host_id" not in first, "nothing was banned before the first rental"
    assert later and slow in later[-1]["host_id"]["notin"], "the ban is in the query sent to the API"


def test_two_processes_share_bans_through_redis(stack: Stack) -> None:
    """A ban made by one pod's process is in the very first search of another pod's process, which
    never rents on that host."""
    env0 = stack.env("vast-pod-0", BLACKLIST_BAN_AFTER_SECONDS="4")
    env1 = stack.env("vast-pod-1", VAST_API_KEY="test-key-of-pod-1")
    slow = top_offer(env0)["host_id"]
    stack.sim.admin("POST", f"/hosts/{slow}", {"never_boots": True})
    stack.proxy.searches.clear()
    with run_provisioner(env0, stack.tmp, "pod0") as pod0:
        wait_for(lambda: stack.db().exists(f"{PREFIX}ban:host:{slow}"), 40, "pod 0 to ban the slow host")
        with run_provisioner(env1, stack.tmp, "pod1") as pod1:
            served1 = pod1.wait_serving(40)
        served0 = pod0.wait_serving(40)
    assert slow not in {stack.host_of(served0), stack.host_of(served1)}
    first_of_pod1 = stack.proxy.bodies("test-key-of-pod-1")[0]
    assert slow in first_of_pod1["host_id"]["notin"]
    pod1_hosts = {r["host_id"] for r in stack.sim.instances("k8s_pod=vast-pod-1", include_destroyed=True)}
    assert slow not in pod1_hosts


def test_restart_threshold_counts_crashes_not_clean_stops(stack: Stack) -> None:
    """With BLACKLIST_RESTART_THRESHOLD=1: clean (SIGTERM) restarts are never counted; the second start
    after a crash condemns the instance, which is replaced without banning its host."""
    env = stack.env(BLACKLIST_RESTART_THRESHOLD="1")
    with run_provisioner(env, stack.tmp, "start1") as prov:
        first = prov.wait_serving(40)
    host = stack.host_of(first)
    for k in range(3):  # each leaves by SIGTERM: a clean stop
        with run_provisioner(env, stack.tmp, f"clean{k}") as prov:
            assert prov.wait_serving(30) == first
    assert stack.db().zcard(f"{PREFIX}restarts:{first}") == 0, "no clean restart counted"
    for k in range(2):
        with run_provisioner(env, stack.tmp, f"crash{k}") as prov:
            assert prov.wait_serving(30) == first
            crash(prov)
    with run_provisioner(env, stack.tmp, "over") as prov:
        replacement = prov.wait_serving(40, other_than=first)
    assert replacement != first
    assert not stack.db().exists(f"{PREFIX}ban:host:{host}"), "our own restarts ban no host"


def test_killing_redis_does_not_stop_provisioning(stack: Stack) -> None:
    """With Redis killed mid-run, a dead instance is still replaced; the outage is logged once; once Redis
    is back it is written to again."""
    env = stack.env()
    with run_provisioner(env, stack.tmp) as prov:
        first = prov.wait_serving(40)
        # its boot start was in Redis from the rental until it showed its endpoints (then deleted)
        wait_for(lambda: stack.db().keys(f"{PREFIX}*") or None, 10, "the provisioner's keys in Redis")
        assert not stack.db().exists(f"{PREFIX}boot:{first}"), "a ready instance's boot start is over"
        stack.redis.kill()
        stack.sim.admin("POST", f"/instances/{first}/kill")
        second = prov.wait_serving(60, other_than=first)
        assert prov.proc.poll() is None
        assert events(prov, "store-unavailable") == 1
        stack.redis.start()
        time.sleep(store.OUTAGE_RETRY_S + 0.5)  # the provisioner's pause between Redis attempts
        stack.sim.admin("POST", f"/instances/{second}/kill")
        prov.wait_serving(60, other_than=second)
        # the first death fell in the outage (not recorded): an event now means Redis is written again
        wait_for(lambda: stack.db().zcard(f"{PREFIX}events") or None, 10, "the second death in Redis")
        assert events(prov, "store-unavailable") == 1
        assert events(prov, "store-recovered") == 1


def test_operator_ban_expires_with_its_ttl(stack: Stack) -> None:
    """A ban made with `provisioner blacklist ban HOST --ttl 4` vanishes from Redis and from
    `blacklist list` after its TTL, while a longer ban stays listed."""
    env = stack.env()
    banned = cli(env, "blacklist", "ban", "4242", "--ttl", "4", "--reason", "flaky")
    assert banned.returncode == 0, banned.stderr
    assert 0 < stack.db().ttl(f"{PREFIX}ban:host:4242") <= 4
    assert cli(env, "blacklist", "ban", "4343", "--reason", "slow pulls").returncode == 0
    wait_for(lambda: not stack.db().exists(f"{PREFIX}ban:host:4242"), 15, "the short ban's key to expire")
    listed = cli(env, "blacklist", "list", "--json")
    assert [(b["kind"], b["ident"], b["reason"]) for b in json.loads(listed.stdout)] == [
        ("host", 4343, "slow pulls")
    ]
    assert stack.db().zrange(f"{PREFIX}bans:host", 0, -1) == ["4343"], "the expired entry is pruned on read"
    assert "4343" in cli(env, "blacklist", "list").stdout


def test_offers_prints_a_table_with_banned_offers_marked(stack: Stack) -> None:
    """`provisioner offers` prints the top offers with score parts; after a ban that host is marked and
    the next rental moves to another host."""
    env = stack.env()
    before = cli(env, "offers", "--top", "5")
    assert before.returncode == 0, before.stderr
    header, *rows = before.stdout.splitlines()
    assert header.split()[:4] == ["#", "offer", "host", "machine"]
    assert {"score", "price", "rel", "rep", "ctry", "bw"} <= set(header.split())
    assert len(rows) == 5 and rows[0].endswith("rents next")
    top_host = rows[0].split()[2]
    assert cli(env, "blacklist", "ban", top_host).returncode == 0
    after = cli(env, "offers", "--top", "5").stdout.splitlines()[1:]
    marked = [r for r in after if r.split()[2] == top_host]
    assert marked and all(r.endswith("BANNED host") for r in marked)
    next_rental = [r for r in after if r.endswith("rents next")]
    assert len(next_rental) == 1 and next_rental[0].split()[2] != top_host


def test_offers_explains_why_nothing_matches(stack: Stack) -> None:
    """With a price cap nothing meets, `provisioner offers` exits 1 and names VAST_MAX_PRICE as the filter
    that removed the most offers."""
    env = stack.env(VAST_MAX_PRICE="0.001")
    result = cli(env, "offers")
    assert result.returncode == 1
    message = result.stderr.strip()
    assert message.count("\n") == 0 and "Traceback" not in message
    assert "VAST_MAX_PRICE (dph_total lte 0.001) removes the most" in message
    as_json = json.loads(cli(env, "offers", "--json").stdout)
    assert as_json["offers"] == [] and "VAST_MAX_PRICE" in as_json["reason"]


def test_blacklist_commands_report_an_unreachable_redis(stack: Stack) -> None:
    """With Redis down, `provisioner blacklist list` prints one line and exits 1."""
    stack.redis.kill()
    result = cli(stack.env(), "blacklist", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("provisioner: redis") and result.stderr.count("\n") == 1


async def test_rent_lock_on_a_real_redis_server(tmp_path: Path) -> None:
    """Against redis-server: one of many racing takes wins, only the holder renews and releases, and a
    holder working past the lock's TTL keeps it (renewed) until it releases it."""
    label = "k8s_pod=vast-pod-0"
    with run_redis(tmp_path) as server:
        clients = [store.connect(server.url, timeout_s=2.0) for _ in range(6)]
        try:
            locks = [store.RentLock(c, store.Keys()) for c in clients]
            taken = await asyncio.gather(*(lock.take(label, f"proc-{i}") for i, lock in enumerate(locks)))
            assert sorted(taken) == [False] * 5 + [True]
            holder = taken.index(True)
            other = (holder + 1) % len(locks)
            assert not await locks[other].renew(label, f"proc-{other}")
            await locks[other].release(label, f"proc-{other}")
            assert await clients[0].get(store.Keys().rent_lock(label)) == f"proc-{holder}"
            await locks[holder].release(label, f"proc-{holder}")
            assert await clients[0].get(store.Keys().rent_lock(label)) is None

            record = fleet.Fleet.over(blacklist.Blacklist(clients[0]))
            ports = fleetguard.GuardedFleet(
                record, store.Outage(), pod="vast-pod-0", lock_ttl_s=0.3, renew_s=0.1, section_s=10.0
            )
            rival = fleetguard.GuardedFleet(
                fleet.Fleet.over(blacklist.Blacklist(clients[1])), store.Outage(), pod="b"
            )
            async with ports.rent_lock(label) as held:
                assert held
                await asyncio.sleep(1.0)  # three TTLs
                async with rival.rent_lock(label) as rival_held:
                    assert not rival_held
            assert await clients[0].get(store.Keys().rent_lock(label)) is None
        finally:
            for c in clients:
                await c.aclose()


async def test_rent_marks_on_a_real_redis_server(tmp_path: Path) -> None:
    """Against redis-server (Lua on its clock): a list taken before a rent is not trusted under the
    lock, one taken after the rent was done (plus the lag) is; an unknown outcome is never trusted."""
    label = "k8s_pod=vast-pod-0"
    with run_redis(tmp_path) as server:
        client = store.connect(server.url, timeout_s=2.0)
        try:
            guarded = fleetguard.GuardedFleet(
                fleet.Fleet.over(blacklist.Blacklist(client)), store.Outage(), pod="a"
            )
            before_ms = int((await client.time())[0]) * 1000
            assert await guarded.list_covers_rents(label, before_ms), "no rent was ever marked"
            await guarded.mark_rent(label, done=False)
            await guarded.mark_rent(label, done=True)
            assert not await guarded.list_covers_rents(label, before_ms)
            done_ms = int((await client.get(store.Keys().rent_mark(label))).split(":")[1])
            assert await guarded.list_covers_rents(label, done_ms + store.RENT_MARK_LAG_MS + 1)
            await guarded.mark_rent(label, done=False)  # a rent whose outcome stays unknown
            assert not await guarded.list_covers_rents(label, done_ms + store.RENT_MARK_LAG_MS + 1)
        finally:
            await client.aclose()


async def test_the_fleet_clock_on_a_real_redis_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against redis-server: opening the blacklist measures the Redis clock (``TIME``), and a pod whose
    own clock runs ten minutes behind stamps its heartbeat on Redis's; with Redis gone, opening it
    still works (the clock is measured before it counts)."""
    with run_redis(tmp_path) as server:
        monkeypatch.setenv("BLACKLIST_REDIS_URL", server.url)
        async with fleet_wiring.connect_blacklist(settings.load_redis_access(), "op") as bans:
            assert isinstance(bans.clock, redisclock.RedisClock) and bans.clock.synced
            assert abs(bans.clock.offset_s) < 1.0, "redis-server runs on this machine's clock"
        client = store.connect(server.url, timeout_s=2.0)
        try:
            behind = redisclock.RedisClock(client, local=lambda: time.time() - 600)
            pod = fleetguard.GuardedFleet(
                fleet.Fleet.over(blacklist.Blacklist(client, clock=behind)), store.Outage(), pod="p"
            )
            await pod.beat("k8s_pod=p", [7], 0.5)
            assert behind.offset_s == pytest.approx(600, abs=1.0)
            (beat,) = (await fleet.Fleet(client).heartbeats()).values()
            assert beat.at == pytest.approx(time.time(), abs=2.0)
        finally:
            await client.aclose()
        server.kill()
        async with fleet_wiring.connect_blacklist(settings.load_redis_access(), "op") as bans:
            assert isinstance(bans.clock, redisclock.RedisClock) and not bans.clock.synced
