"""NginxProcess with the real nginx binary, real sockets on 127.0.0.1 and a real ASGI backend."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from provisioner import errors, model, nginx, rendering
from tests import procs

if TYPE_CHECKING:
    from tests.integration.conftest import Backend, BackendFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

NginxFactory = Callable[..., nginx.NginxProcess]


@pytest.fixture
async def make_nginx(nginx_bin: str, tmp_path: Path) -> AsyncIterator[NginxFactory]:
    """Build NginxProcess objects on a state dir under tmp_path; every one is stopped afterwards."""
    made: list[nginx.NginxProcess] = []

    def make(binary: str | None = None, **kwargs: Any) -> nginx.NginxProcess:
        proc = nginx.NginxProcess(binary or nginx_bin, tmp_path / "state" / "nginx.conf", **kwargs)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        await proc.stop(drain_s=0)


def proxy_config(state_dir: Path, *ports: int, **overrides: Any) -> rendering.ProxyConfig:
    values: dict[str, Any] = {
        "listeners": tuple(model.PortMap(p, 8000 + i) for i, p in enumerate(ports)),
        "state_dir": state_dir,
        "max_body_size": "10M",
        "proxy_timeout_s": 30,
        "connect_timeout_s": 5,
        "retry_after_s": 7,
        "listen_address": "127.0.0.1",
    }
    values.update(overrides)
    return rendering.ProxyConfig(**values)


def to(listen_port: int, backend: Backend) -> dict[int, model.Upstream]:
    return {listen_port: model.Upstream(listen_port=listen_port, host="127.0.0.1", port=backend.port)}


async def get(port: int, path: str = "/echo", **kwargs: Any) -> httpx.Response:
    """One request on a fresh connection (never reuses a connection to an old worker)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as client:
        return await client.get(path, **kwargs)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Poll ``check`` until it returns True; fail after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (outside the ephemeral range)."""
    return procs.free_port()


def live_members(pgid: int) -> list[int]:
    """Pids of processes in group ``pgid`` that are alive (not zombies), from /proc."""
    found = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat_path.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(stat_path.parent.name))
    return found


async def started(
    make_nginx: NginxFactory,
    tmp_path: Path,
    cfg: rendering.ProxyConfig,
    upstreams: dict[int, model.Upstream] | None = None,
) -> nginx.NginxProcess:
    """A started NginxProcess serving ``cfg`` with ``upstreams``."""
    proc = make_nginx()
    await proc.start(rendering.render_nginx_conf(cfg, upstreams, reason="starting"))
    return proc


# ---------------------------------------------------------------- every config nginx -t clean


RENDER_CASES = [
    pytest.param({}, None, id="503-only"),
    pytest.param({}, "one", id="one-upstream"),
    pytest.param({"two": True}, "both", id="two-listeners"),
    pytest.param({"two": True}, "first", id="two-listeners-one-upstream"),
    pytest.param({}, "v6", id="ipv6-upstream"),
    pytest.param({"listen_address": "::1"}, "one", id="ipv6-listen"),
    pytest.param({"upstream_headers": {"X-Secret": "a b#c", "X-Empty": ""}}, "one", id="headers"),
    pytest.param({"access_log": False, "keepalive": 0}, "one", id="no-log-no-keepalive"),
    pytest.param({"max_body_size": "0"}, "one", id="unlimited-body"),
    pytest.param({"max_concurrency": 4096, "worker_processes": 4}, "one", id="largest-pool-four-workers"),
    pytest.param({"max_concurrency": 1, "upstream_keepalive_timeout_s": 3600}, "one", id="smallest-pool"),
]


@pytest.mark.parametrize(("overrides", "which"), RENDER_CASES)
async def test_every_rendered_config_passes_nginx_t(
    make_nginx: NginxFactory, tmp_path: Path, overrides: dict[str, Any], which: str | None
) -> None:
    """Every shape render_nginx_conf produces is accepted by the real `nginx -t`."""
    overrides = dict(overrides)
    ports = (3000, 3001) if overrides.pop("two", False) else (3000,)
    cfg = proxy_config(tmp_path / "state", *ports, **overrides)
    choices = {
        None: {},
        "one": {3000: model.Upstream(3000, "203.0.113.9", 41000)},
        "both": {p: model.Upstream(p, "203.0.113.9", 41000 + i) for i, p in enumerate(ports)},
        "first": {3000: model.Upstream(3000, "203.0.113.9", 41000)},
        "v6": {3000: model.Upstream(3000, "2606:4700::1111", 443)},
    }
    await make_nginx().test_config(rendering.render_nginx_conf(cfg, choices[which]))


async def test_test_config_reports_nginx_complaint(make_nginx: NginxFactory, tmp_path: Path) -> None:
    """A config nginx rejects raises NginxError quoting nginx, and leaves no temp file behind."""
    proc = make_nginx()
    with pytest.raises(errors.NginxError, match="unknown directive"):
        await proc.test_config("events {}\nhttp { bogus_directive on; }\n")
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.endswith(".test")]


# ---------------------------------------------------------------- serving


async def test_no_upstream_answers_503_json_with_retry_after(
    make_nginx: NginxFactory, tmp_path: Path
) -> None:
    """Started without an upstream, nginx answers any request with 503, JSON reason and Retry-After."""
    port = free_port()
    proc = await started(make_nginx, tmp_path, proxy_config(tmp_path / "state", port))
    assert proc.is_running
    assert proc.pid is not None
    for method in ("GET", "POST"):
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            resp = await client.request(method, f"http://127.0.0.1:{port}/v1/chat", content=b"{}")
        assert resp.status_code == 503
        assert resp.headers["content-type"] == "application/json"
        assert resp.headers["retry-after"] == "7"
        assert resp.json() == {"status": "unavailable", "reason": "starting"}


async def test_apply_upstream_proxies_to_backend(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend
) -> None:
    """apply() with an upstream makes requests reach the backend, with forwarding headers set."""
    port = free_port()
    cfg = proxy_config(tmp_path / "state", port, upstream_headers={"X-Shared-Secret": "s3cr3t"})
    proc = await started(make_nginx, tmp_path, cfg)
    assert await proc.apply(rendering.render_nginx_conf(cfg, to(port, backend))) is True
    assert proc.reloads == 1
    resp = await get(port, "/v1/models?x=1", headers={"X-Shared-Secret": "forged"})
    seen = resp.json()
    assert seen["backend"] == "a"
    assert seen["path"] == "/v1/models"
    assert seen["query"] == "x=1"
    headers = seen["headers"]
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-port"] == str(port)
    assert headers["host"] == "127.0.0.1"
    assert headers["x-shared-secret"] == "s3cr3t"
    assert "connection" not in headers


async def test_unreachable_upstream_answers_502_json(make_nginx: NginxFactory, tmp_path: Path) -> None:
    """An upstream that refuses connections gives a JSON 502 with Retry-After, not nginx's HTML page."""
    port = free_port()
    cfg = proxy_config(tmp_path / "state", port)
    dead = {port: model.Upstream(port, "127.0.0.1", free_port())}
    await started(make_nginx, tmp_path, cfg, dead)
    resp = await get(port)
    assert resp.status_code == 502
    assert resp.headers["retry-after"] == "7"
    assert resp.json() == {"status": "bad_gateway", "reason": "upstream unreachable"}


async def test_body_size_limit(make_nginx: NginxFactory, tmp_path: Path, backend: Backend) -> None:
    """With max_body_size 10M a 2 MB body reaches the backend and an 11 MB body gets 413."""
    port = free_port()
    await started(make_nginx, tmp_path, proxy_config(tmp_path / "state", port), to(port, backend))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20, trust_env=False) as client:
        ok = await client.post("/upload", content=b"x" * (2 * 1024 * 1024))
        assert ok.status_code == 200
        assert ok.json()["body_bytes"] == 2 * 1024 * 1024
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20, trust_env=False) as client:
        too_big = await client.post("/upload", content=b"x" * (11 * 1024 * 1024))
    assert too_big.status_code == 413
    assert backend.seen.count("/upload") == 1


async def read_sse(
    port: int, path: str, on_first: Callable[[], Awaitable[None]] | None = None
) -> list[tuple[float, str]]:
    """(arrival time, data) of every SSE data line, in order."""
    events: list[tuple[float, str]] = []
    async with (
        httpx.AsyncClient(timeout=20, trust_env=False) as client,
        client.stream("GET", f"http://127.0.0.1:{port}{path}") as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                events.append((time.monotonic(), line.removeprefix("data: ")))
                if on_first is not None and len(events) == 1:
                    await on_first()
    return events


async def test_sse_arrives_incrementally(make_nginx: NginxFactory, tmp_path: Path, backend: Backend) -> None:
    """Server-sent events pass through as produced, not buffered until the stream ends."""
    port = free_port()
    await started(make_nginx, tmp_path, proxy_config(tmp_path / "state", port), to(port, backend))
    events = await read_sse(port, "/sse?n=15&interval_ms=20")
    assert [data.split()[1] for _, data in events[:-1]] == [str(i) for i in range(15)]
    assert events[-1][1] == "done"
    arrivals = [t for t, _ in events]
    produced = 14 * 0.020
    # the stream was spread out on arrival much like it was produced, not delivered in one burst
    assert arrivals[-2] - arrivals[0] >= 0.5 * produced
    assert arrivals[0] < arrivals[-1]


async def test_websocket_round_trips(make_nginx: NginxFactory, tmp_path: Path, backend: Backend) -> None:
    """A WebSocket upgrade is proxied and messages echo both ways."""
    port = free_port()
    await started(make_nginx, tmp_path, proxy_config(tmp_path / "state", port), to(port, backend))
    async with asyncio.timeout(10), ws_connect(f"ws://127.0.0.1:{port}/ws", proxy=None) as ws:
        for text in ("hello", "world"):
            await ws.send(text)
            assert await ws.recv() == f"a:{text}"


async def test_upstream_keepalive_reuses_one_connection(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend
) -> None:
    """Sequential requests through nginx reuse one upstream connection (the backend accepts only one)."""
    port = free_port()
    await started(make_nginx, tmp_path, proxy_config(tmp_path / "state", port), to(port, backend))
    client_ports = {(await get(port)).json()["client_port"] for _ in range(5)}
    assert backend.connections == 1
    assert len(client_ports) == 1


async def test_without_keepalive_each_request_opens_a_connection(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend
) -> None:
    """keepalive=0 opens an upstream connection per request (the control for the keepalive test)."""
    port = free_port()
    cfg = proxy_config(tmp_path / "state", port, keepalive=0)
    await started(make_nginx, tmp_path, cfg, to(port, backend))
    for _ in range(3):
        assert (await get(port)).status_code == 200
    assert backend.connections == 3


async def concurrent_slow_requests(port: int, count: int) -> list[int]:
    """``count`` requests held open at the upstream at the same time; their status codes."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=20, trust_env=False, limits=limits
    ) as client:
        answers = await asyncio.gather(*(client.get("/slow?delay_s=0.5") for _ in range(count)))
    return [answer.status_code for answer in answers]


@pytest.mark.parametrize(
    ("overrides", "expect_new"),
    [
        pytest.param({}, False, id="default-pool"),
        pytest.param({"keepalive": 32}, True, id="earlier-pool-of-32"),
    ],
)
async def test_100_concurrent_requests_after_warm_up_open_no_upstream_connection(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend, overrides: dict[str, Any], expect_new: bool
) -> None:
    """With the default pool, 100 requests in flight at once reuse the warm pool: no new connection.

    The control, the earlier pool of 32, keeps only 32 and opens the other 68 again.
    """
    port = free_port()
    cfg = proxy_config(tmp_path / "state", port, **overrides)
    await started(make_nginx, tmp_path, cfg, to(port, backend))
    assert await concurrent_slow_requests(port, 100) == [200] * 100  # warm-up: 100 upstream connections
    warm = backend.connections
    assert warm >= 100
    assert await concurrent_slow_requests(port, 100) == [200] * 100
    new = backend.connections - warm
    if expect_new:
        assert new >= 100 - 32
    else:
        assert new == 0


async def test_two_listeners_proxy_to_their_own_upstreams(
    make_nginx: NginxFactory, tmp_path: Path, backend_factory: BackendFactory
) -> None:
    """With two listeners each proxies to its own upstream."""
    a, b = await backend_factory("a"), await backend_factory("b")
    p1, p2 = free_port(), free_port()
    cfg = proxy_config(tmp_path / "state", p1, p2)
    proc = await started(make_nginx, tmp_path, cfg)
    assert (await get(p1)).status_code == 503
    assert (await get(p2)).status_code == 503
    await proc.apply(rendering.render_nginx_conf(cfg, {**to(p1, a), **to(p2, b)}))
    assert (await get(p1)).json()["backend"] == "a"
    assert (await get(p2)).json()["backend"] == "b"


# ---------------------------------------------------------------- reloads


async def test_reload_keeps_inflight_stream_and_switches_upstream(
    make_nginx: NginxFactory, tmp_path: Path, backend_factory: BackendFactory
) -> None:
    """A reload does not cut an SSE stream in flight; new requests go to the new upstream."""
    a, b = await backend_factory("a"), await backend_factory("b")
    port = free_port()
    cfg = proxy_config(tmp_path / "state", port)
    proc = await started(make_nginx, tmp_path, cfg, to(port, a))
    after_switch: list[str] = []

    async def switch() -> None:
        assert await proc.apply(rendering.render_nginx_conf(cfg, to(port, b)))
        # apply() returns once the old worker stopped accepting: the very next request is new
        after_switch.extend([(await get(port)).json()["backend"] for _ in range(3)])

    events = await read_sse(port, "/sse?n=40&interval_ms=25", on_first=switch)
    assert after_switch == ["b", "b", "b"]
    assert [data.split()[:2] for _, data in events[:-1]] == [["a", str(i)] for i in range(40)]
    assert events[-1][1] == "done"
    assert proc.reloads == 1


async def test_apply_identical_text_is_a_no_op(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend
) -> None:
    """apply() with the text already running returns False and does not reload."""
    port = free_port()
    cfg = proxy_config(tmp_path / "state", port)
    text = rendering.render_nginx_conf(cfg, to(port, backend))
    proc = await started(make_nginx, tmp_path, cfg, to(port, backend))
    assert await proc.apply(text) is False
    assert await proc.apply(rendering.render_nginx_conf(cfg, to(port, backend))) is False
    assert proc.reloads == 0


async def test_bad_config_is_rejected_and_old_one_keeps_serving(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend
) -> None:
    """A config nginx -t rejects is never installed; the running nginx keeps serving the old one."""
    port = free_port()
    cfg = proxy_config(tmp_path / "state", port)
    good = rendering.render_nginx_conf(cfg, to(port, backend))
    proc = await started(make_nginx, tmp_path, cfg, to(port, backend))
    bad = good.replace("proxy_buffering off;", "proxy_buffering sideways;")
    with pytest.raises(errors.NginxError, match="proxy_buffering"):
        await proc.apply(bad)
    assert proc.config == good
    assert proc.config_path.read_text() == good
    assert proc.reloads == 0
    assert (await get(port)).json()["backend"] == "a"


async def test_failed_reload_is_reported_and_old_config_restored(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend
) -> None:
    """A config that passes nginx -t but fails at reload (port taken) raises; the old one keeps serving."""
    port = free_port()
    cfg = proxy_config(tmp_path / "state", port)
    good = rendering.render_nginx_conf(cfg, to(port, backend))
    proc = await started(make_nginx, tmp_path, cfg, to(port, backend))
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        wider = proxy_config(tmp_path / "state", port, taken)
        with pytest.raises(errors.NginxError, match=r"did not reload: \[emerg\] bind\(\)"):
            await proc.apply(rendering.render_nginx_conf(wider, to(port, backend)))
    assert proc.is_running
    assert proc.reloads == 0
    assert proc.config is None, "unknown after a failed reload: the next apply reloads whatever it says"
    assert proc.config_path.read_text() == good
    assert (await get(port)).json()["backend"] == "a"
    assert await proc.apply(good) and proc.reloads == 1 and proc.config == good


async def test_a_failed_reload_that_left_no_worker_restarts_nginx(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload can fail half-way: the master could not fork the new worker (a pids limit) after it
    told the old ones to quit, and nothing accepts while the master looks alive. Here the reload
    fails for real (a port taken) and /proc is made to show no accepting worker after it, as such a
    fork failure leaves it (root ignores RLIMIT_NPROC, so the fork itself cannot be made to fail):
    the master is stopped, ``supervise`` starts nginx again on the old file, and it serves."""
    port = free_port()
    cfg = proxy_config(tmp_path / "state", port)
    proc = await started(make_nginx, tmp_path, cfg, to(port, backend))
    stop = asyncio.Event()
    supervisor = asyncio.create_task(proc.supervise(stop))
    first_pid = proc.pid
    monkeypatch.setattr(nginx, "_accepting_workers", lambda master: set())
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        wider = proxy_config(tmp_path / "state", port, blocker.getsockname()[1])
        with pytest.raises(errors.NginxError, match="did not reload"):
            await proc.apply(rendering.render_nginx_conf(wider, to(port, backend)))
    monkeypatch.undo()

    async def back() -> bool:
        if proc.pid in (None, first_pid):
            return False
        with contextlib.suppress(httpx.TransportError):
            return (await get(port)).json()["backend"] == "a"
        return False

    await eventually(back)
    assert proc.restarts == 1
    stop.set()
    async with asyncio.timeout(10):
        await supervisor


async def test_a_reload_under_worker_alerts_succeeds(make_nginx: NginxFactory, tmp_path: Path) -> None:
    """Workers out of connections log `[alert] ... worker_connections are not enough` while a reload
    runs: that is no failed reload (only the master's lines are). The reload is recorded, the file and
    the recorded config are the new ones."""
    port = free_port()
    flooding = threading.Event()
    opened: list[socket.socket] = []

    def flood() -> None:  # clients keep coming while every worker connection is taken
        while not flooding.is_set():
            with contextlib.suppress(OSError):
                c = socket.create_connection(("127.0.0.1", port), timeout=1)
                c.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
                opened.append(c)
            time.sleep(0.002)

    with socket.socket() as silent:  # an upstream that accepts (kernel backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1024)
        upstream = {port: model.Upstream(listen_port=port, host="127.0.0.1", port=silent.getsockname()[1])}
        cfg = proxy_config(tmp_path / "state", port, worker_connections=16)
        proc = await started(make_nginx, tmp_path, cfg, upstream)

        async def alerted() -> bool:
            return any("worker_connections are not enough" in line for line in proc._stderr.tail)

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        try:
            await eventually(alerted)
            new = rendering.render_nginx_conf(dataclasses.replace(cfg, retry_after_s=9), upstream)
            assert await proc.apply(new) is True
        finally:
            flooding.set()
            flooder.join(5)
            for c in opened:
                c.close()
    assert proc.reloads == 1
    assert proc.config == new == proc.config_path.read_text()


async def test_a_failed_write_back_leaves_no_stale_config_record(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload nginx refuses, then a disk that refuses to take the old file back: the process does not
    claim to run the new config, so applying the good one again really tests, writes and reloads."""
    port = free_port()
    cfg = proxy_config(tmp_path / "state", port)
    good = rendering.render_nginx_conf(cfg, to(port, backend))
    proc = await started(make_nginx, tmp_path, cfg, to(port, backend))
    writes = {"n": 0}
    real_write = nginx.config_file.write_atomic

    def write_atomic(path: Path, text: str) -> None:
        writes["n"] += 1
        if writes["n"] == 2:  # the write-back of the old config
            raise errors.NginxError("cannot write the config: No space left on device")
        real_write(path, text)

    monkeypatch.setattr(nginx.config_file, "write_atomic", write_atomic)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        wider = proxy_config(tmp_path / "state", port, blocker.getsockname()[1])
        with pytest.raises(errors.NginxError):
            await proc.apply(rendering.render_nginx_conf(wider, to(port, backend)))
    assert proc.config is None, "unknown: nginx runs the old config, the file holds the new one"
    assert await proc.apply(good) is True
    assert proc.config == good == proc.config_path.read_text()
    assert (await get(port)).json()["backend"] == "a"


async def test_apply_before_start_only_writes_the_file(make_nginx: NginxFactory, tmp_path: Path) -> None:
    """With no nginx running apply() swaps the file (mode 0600: it may hold the upstream's secret) and sends
    no reload."""
    cfg = proxy_config(tmp_path / "state", free_port())
    proc = make_nginx()
    text = rendering.render_nginx_conf(cfg, None)
    assert await proc.apply(text) is True
    assert proc.reloads == 0
    assert proc.config_path.read_text() == text
    assert stat.S_IMODE(proc.config_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in proc.state_dir.iterdir() if p.name.startswith(".")) == []


async def test_start_fails_clearly_when_port_is_taken(make_nginx: NginxFactory, tmp_path: Path) -> None:
    """start() raises NginxError quoting nginx's bind error when the port is in use."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        proc = make_nginx()
        with pytest.raises(errors.NginxError, match=r"bind\(\) to 127\.0\.0\.1:\d+ failed"):
            await proc.start(rendering.render_nginx_conf(proxy_config(tmp_path / "state", port), None))
        assert not proc.is_running


# ---------------------------------------------------------------- supervision and shutdown


async def test_supervise_restarts_nginx_after_sigkill(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend
) -> None:
    """Killing the master with SIGKILL makes supervise() start it again (orphaned workers are cleaned up)."""
    port = free_port()
    proc = await started(make_nginx, tmp_path, proxy_config(tmp_path / "state", port), to(port, backend))
    stop = asyncio.Event()
    supervisor = asyncio.create_task(proc.supervise(stop))
    first_pid = proc.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)

    async def back() -> bool:
        if proc.pid in (None, first_pid):
            return False
        with contextlib.suppress(httpx.TransportError):
            return (await get(port)).status_code == 200
        return False

    await eventually(back)
    assert proc.restarts == 1

    async def orphans_gone() -> bool:  # the old master's orphaned worker is killed too
        return not live_members(first_pid)

    await eventually(orphans_gone, timeout_s=5)
    stop.set()
    async with asyncio.timeout(10):
        await supervisor
    assert proc.is_running  # supervise returns on stop; stopping nginx is stop()'s job


async def test_supervise_gives_up_when_nginx_keeps_dying(make_nginx: NginxFactory, tmp_path: Path) -> None:
    """More than restart_limit deaths inside the window make supervise() raise NginxError."""
    real = make_nginx().binary
    flag = tmp_path / "crash"
    wrapper = tmp_path / "nginx-wrapper"
    wrapper.write_text(
        f'#!/bin/sh\nif [ -e "{flag}" ]; then echo "nginx: [emerg] simulated crash" >&2; exit 1; fi\n'
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    proc = make_nginx(str(wrapper), restart_limit=2, restart_window_s=60)
    await proc.start(rendering.render_nginx_conf(proxy_config(tmp_path / "state", free_port()), None))
    flag.touch()
    stop = asyncio.Event()
    supervisor = asyncio.create_task(proc.supervise(stop))
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    with pytest.raises(errors.NginxError, match=r"keeps dying: 3 times.*simulated crash"):
        async with asyncio.timeout(15):
            await supervisor
    assert proc.restarts == 0
    assert not proc.is_running


async def test_supervise_returns_when_stop_is_set(make_nginx: NginxFactory, tmp_path: Path) -> None:
    """supervise() returns promptly once stop is set, and does not restart an nginx that stop() ended."""
    proc = await started(make_nginx, tmp_path, proxy_config(tmp_path / "state", free_port()))
    stop = asyncio.Event()
    supervisor = asyncio.create_task(proc.supervise(stop))
    await asyncio.sleep(0.05)
    await proc.stop(drain_s=1)
    stop.set()
    async with asyncio.timeout(5):
        await supervisor
    assert proc.restarts == 0
    assert not proc.is_running


async def test_stop_drains_inflight_request(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend
) -> None:
    """stop(drain_s) lets a request in flight finish, then nginx is gone; a second stop is a no-op."""
    port = free_port()
    proc = await started(make_nginx, tmp_path, proxy_config(tmp_path / "state", port), to(port, backend))
    request = asyncio.create_task(get(port, "/slow?delay_s=0.5"))

    async def in_flight() -> bool:
        return "/slow" in backend.seen

    await eventually(in_flight)
    await proc.stop(drain_s=10)
    assert request.done()
    resp = await request
    assert resp.status_code == 200
    assert resp.json() == {"backend": "a", "slow": True}
    assert not proc.is_running
    assert proc.pid is None
    with pytest.raises(httpx.ConnectError):
        await get(port)
    await proc.stop(drain_s=10)


async def test_stop_cuts_requests_after_the_drain_period(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend
) -> None:
    """A request still open when drain_s runs out is cut (SIGTERM follows SIGQUIT)."""
    port = free_port()
    proc = await started(make_nginx, tmp_path, proxy_config(tmp_path / "state", port), to(port, backend))
    request = asyncio.create_task(get(port, "/slow?delay_s=20"))

    async def in_flight() -> bool:
        return "/slow" in backend.seen

    await eventually(in_flight)
    await proc.stop(drain_s=0.2)
    assert not proc.is_running
    with pytest.raises(httpx.TransportError):
        async with asyncio.timeout(10):
            await request


async def test_access_log_lines_are_json(
    make_nginx: NginxFactory, tmp_path: Path, backend: Backend, capfd: pytest.CaptureFixture[str]
) -> None:
    """Each proxied request writes one JSON access-log line to our stdout."""
    port = free_port()
    proc = await started(make_nginx, tmp_path, proxy_config(tmp_path / "state", port), to(port, backend))
    await get(port, "/logged")
    await proc.stop(drain_s=5)
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    (entry,) = [line for line in lines if line["uri"] == "/logged"]
    assert entry["status"] == 200
    assert entry["method"] == "GET"
    assert entry["upstream_status"] == "200"
    assert entry["upstream_addr"] == f"127.0.0.1:{backend.port}"
    assert entry["listen_port"] == port


async def test_nginx_keeps_serving_while_our_loop_stalls(
    make_nginx: NginxFactory, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The access log passes through our event loop. While the loop stalls for a moment (a slow
    stdout, a long tick), nginx's workers write into the pipe's slack (1 MiB, ~4,000 lines) instead of
    blocking on a full 64 KiB one (~250 lines): requests keep being answered meanwhile, and every line
    arrives once the loop runs again."""
    port = free_port()
    proc = await started(make_nginx, tmp_path, proxy_config(tmp_path / "state", port))  # nginx answers 503
    done: list[float] = []
    stop = threading.Event()

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            reader = conn.makefile("rb")
            while not stop.is_set():
                conn.sendall(b"GET /stalled HTTP/1.1\r\nHost: x\r\n\r\n")
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reader.read(length)
                done.append(time.monotonic())

    sender = threading.Thread(target=client, daemon=True)
    sender.start()
    await asyncio.sleep(0.2)
    stalled_at = time.monotonic()
    time.sleep(1.5)  # noqa: ASYNC251 - the loop stalls on purpose: nothing copies the access log
    answered = sum(1 for t in done if stalled_at + 0.1 < t < stalled_at + 1.5)
    stop.set()
    await asyncio.to_thread(sender.join, 5)
    await proc.stop(drain_s=5)
    logged = sum(1 for line in capfd.readouterr().out.splitlines() if '"uri":"/stalled"' in line)
    assert answered > 1000, f"only {answered} answers while the loop stalled: nginx blocked on its log"
    assert logged == len(done), "every answered request was logged, once"


async def test_one_state_directory_serves_one_provisioner(make_nginx: NginxFactory, tmp_path: Path) -> None:
    """A second process on the same NGINX_CONFIG_PATH is refused at start (its nginx would load the
    first one's config); the first keeps serving; once it stops, the directory is free again. Temp
    copies a killed process left there (they may hold the upstream secret) are removed at start."""
    state = tmp_path / "state"
    state.mkdir()
    leftovers = [state / ".nginx.conf.k1ll3d.new", state / ".nginx.conf.k1ll3d.test"]
    for path in leftovers:
        path.write_text("proxy_set_header X-Upstream-Auth secret;")
    kept = state / "notes.txt"
    kept.write_text("not ours")
    port = free_port()
    first = await started(make_nginx, tmp_path, proxy_config(state, port))
    assert not any(path.exists() for path in leftovers) and kept.exists()
    second = make_nginx()
    with pytest.raises(errors.NginxError, match=f"another process uses the state directory {state}"):
        await second.start(rendering.render_nginx_conf(proxy_config(state, free_port()), None, reason="x"))
    assert (await get(port)).status_code == 503, "the first one still serves"
    await first.stop(drain_s=0)
    await second.start(rendering.render_nginx_conf(proxy_config(state, port), None, reason="x"))
    assert second.is_running
