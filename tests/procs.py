"""Real processes for integration tests: the simulator and `provisioner run`, on free local ports.

Plain context managers (no pytest magic) so that every integration suite can
reuse them; each process is killed on exit, and its output kept in a file for
assertions and for the failure report.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from provisioner import pacer

BIN = Path(sys.executable).parent
PROVISIONER = str(BIN / "provisioner")
#: every endpoint's pacer interval for tests against a simulator without rate limits (seconds)
FAST_PACE = ",".join(f"{endpoint}=0.1" for endpoint in pacer.Endpoint)
T = TypeVar("T")


#: ports handed to processes under test come from below the kernel's ephemeral range (32768+), so a
#: port picked here and bound a moment later by nginx cannot meanwhile be taken by some process's
#: port-0 bind or outgoing connection; each xdist worker draws from its own slice.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_SLICE = 1500
_BASE = 20000 + (_WORKER % 8) * _SLICE
_rng = random.Random(os.getpid())
#: the slice in a shuffled order, handed out in turn: two ports asked for one after the other (an
#: admin port and a listen port not bound yet) are never the same one
_ports: list[int] = []


def cli(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """One ``provisioner`` command (not ``run``) with ``env``; its output captured as text."""
    return subprocess.run(
        [PROVISIONER, *args], env=dict(env), capture_output=True, text=True, timeout=60, check=False
    )


def bare_env(tmp: Path, **extra: str) -> dict[str, str]:
    """PATH and HOME only: none of the pod's variables (no POD_NAME, no API key), plus ``extra``."""
    return {"PATH": os.environ["PATH"], "HOME": str(tmp), **extra}


def free_port() -> int:
    """A currently free port in this worker's slice of 20000-31999, none handed out twice in a row."""
    for _ in range(200):
        if not _ports:
            _ports.extend(_rng.sample(range(_BASE, _BASE + _SLICE), _SLICE))
        port = _ports.pop()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in this worker's range")


def wait_for(predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError, ValueError) as exc:
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last_error})")


@dataclass
class Sim:
    """A `provisioner sim` process and a client for its admin API."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        # idle connections are dropped after 2 s, well before the simulator's (uvicorn's) 5 s keep-alive
        # timeout: reusing one the server is closing at that instant fails with "Server disconnected"
        self.http = httpx.Client(base_url=self.url, timeout=10.0, limits=httpx.Limits(keepalive_expiry=2.0))

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, "/_sim" + path, json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("GET", "/state")
        return result

    def instances(self, label: str | None = None, *, include_destroyed: bool = False) -> list[dict[str, Any]]:
        rows = self.state()["instances"]
        return [
            r
            for r in rows
            if (label is None or r.get("label") == label) and (include_destroyed or not r.get("destroyed_at"))
        ]

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.admin("GET", "/requests")
        if isinstance(result, dict):
            result = result.get("requests", [])
        return result

    def count(self, endpoint: str) -> int:
        """Calls the sim answered on ``endpoint`` (its unbounded counter, faults included)."""
        counts: dict[str, int] = self.admin("GET", "/requests?endpoint=-").get("counts", {})
        return int(counts.get(endpoint, 0))


@contextlib.contextmanager
def run_sim(tmp: Path, *, boot_delay_s: float = 1.0, extra: tuple[str, ...] = ()) -> Iterator[Sim]:
    port = free_port()
    log_path = tmp / f"sim-{port}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [PROVISIONER, "sim", "--port", str(port), "--boot-delay", str(boot_delay_s), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    sim = Sim(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_for(lambda: sim.http.get("/_sim/state").status_code == 200, 20, "the simulator to listen")
        yield sim
    finally:
        sim.http.close()
        stop_process(proc)


def processes_mentioning(text: str) -> list[int]:
    """Pids of the live processes whose command line contains ``text`` (a unique tmp path, say)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on ``host:port`` (a bind succeeds)."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def base_env(sim: Sim, tmp: Path, pod: str = "vast-pod-0", **overrides: str) -> dict[str, str]:
    """The environment of a provisioner pointed at ``sim``, with fast loops for tests."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "NGINX_", "BLACKLIST_", "PROXY_"))
    }
    env.update(
        {
            "POD_NAME": pod,
            "VAST_API_KEY": "test-key-0123456789",
            "VAST_API_URL": sim.url,
            "VAST_TEMPLATE_NAME": f"tmpl-{pod}",
            "VAST_TEMPLATE_IMAGE": "vastai/test-workload:1.0",
            "VAST_SEARCH_QUERY": "num_gpus=1 reliability>0.9",
            "NGINX_CONFIG_PATH": str(tmp / pod / "nginx" / "nginx.conf"),
            "NGINX_LISTEN_PORT": str(free_port()),
            "ADMIN_PORT": str(free_port()),
            "ADMIN_HOST": "127.0.0.1",
            "VAST_ALLOW_PRIVATE_UPSTREAMS": "true",
            "BOOT_POLL_SECONDS": "0.5",
            "HEALTH_INTERVAL_SECONDS": "0.5",
            "RECONCILE_INTERVAL_SECONDS": "2",
            "NGINX_DRAIN_SECONDS": "2",
            "LOG_FORMAT": "json",
            # the test simulator does not rate-limit unless a test says so: Vast's intervals (search 6 s,
            # rent 4.5 s, template search 3 s) would only make these tests wait; pacing has its own tests
            "VAST_PACE_INTERVALS": FAST_PACE,
        }
    )
    env.update(overrides)
    return env


@dataclass
class Provisioner:
    """A `provisioner run` process."""

    env: Mapping[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.env['NGINX_LISTEN_PORT']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.env['ADMIN_PORT']}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict) and "level" in obj:
                    lines.append(obj)
        return lines

    def get(self, path: str = "/", timeout: float = 5.0) -> httpx.Response:
        return httpx.get(self.proxy_url + path, timeout=timeout)

    def served_instance(self) -> int | None:
        """The instance id the proxy reaches now, or None when it does not answer 200."""
        try:
            response = self.get("/whoami")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        iid = response.json().get("instance_id")
        return int(iid) if iid is not None else None

    def wait_serving(self, timeout_s: float = 30.0, *, other_than: int | None = None, stable: int = 3) -> int:
        """The instance the proxy reaches, once ``stable`` requests in a row reached it.

        Right after a reload an old nginx worker may still take a request or two with the
        previous config; asking for a short streak keeps tests from racing that window. Fails at
        once, with the process's output, if it has exited.
        """
        streak: list[int] = []

        def settled() -> int | None:
            code = self.proc.poll()
            assert code is None, f"provisioner exited with {code}:\n{self.output()[-3000:]}"
            iid = self.served_instance()
            if iid is None or iid == other_than:
                streak.clear()
                return None
            streak[:] = [*streak, iid][-stable:] if not streak or streak[-1] == iid else [iid]
            return iid if len(streak) >= stable else None

        return wait_for(
            settled,
            timeout_s,
            "the proxy to reach the simulated GPU" + (f" (not {other_than})" if other_than else ""),
        )

    def nginx_pid(self) -> int:
        pid_file = Path(self.env["NGINX_CONFIG_PATH"]).parent / "nginx.pid"
        return int(pid_file.read_text().strip())


@contextlib.contextmanager
def run_provisioner(env: Mapping[str, str], tmp: Path, name: str = "prov") -> Iterator[Provisioner]:
    log_path = tmp / f"{name}-{env['POD_NAME']}-{int(time.time() * 1000)}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([PROVISIONER, "run"], env=dict(env), stdout=out, stderr=subprocess.STDOUT)
    prov = Provisioner(env, proc, log_path)
    try:
        yield prov
    finally:
        stop_process(proc)
