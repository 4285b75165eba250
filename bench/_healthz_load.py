"""Benchmark 1's loop check: ``/healthz`` latency and throughput while the proxy carries a heavy load.

No emulated delay here: the point is CPU, so the upstream is a fast one (``_proxies.static_conf``: nginx
answering 200 itself) on loopback. ``bench._loop_pod`` runs nginx through ``provisioner.nginx`` with the
access log on (the provisioner's own path for it) and serves ``/healthz`` from the same event loop. A
load process (closed loop, ``concurrency`` clients, GETs) runs for ``duration_s`` first straight at the
upstream (``direct``), then through the pod's nginx (``ours``), while this process opens a new
connection every ``PROBE_EVERY_S`` and times ``GET /healthz`` (as a kubelet's probe does).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench import _common, _httpclient, _proxies

PROBE_EVERY_S = 0.02
HZ = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    return 0.0


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _probe(port: int) -> float | None:
    """One ``GET /healthz`` on a new connection; its latency, or None if it failed."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        ok = response.status == 200
    except OSError:
        ok = False
    finally:
        conn.close()
    return time.perf_counter() - started if ok else None


def _loaded(
    pool: concurrent.futures.Executor, port: int, admin_port: int, load: tuple[int, float, float]
) -> dict[str, Any]:
    """Run the load (clients, seconds, requests/s or 0 for as fast as they go) and probe meanwhile."""
    concurrency, duration_s, rate = load
    future = pool.submit(_httpclient.load_for, "127.0.0.1", port, concurrency, duration_s, "/v1/models", rate)
    probes: list[float] = []
    failed = 0
    while not future.done():
        latency = _probe(admin_port)
        if latency is None:
            failed += 1
        else:
            probes.append(latency)
        time.sleep(PROBE_EVERY_S)
    requests, wall_s, errors = future.result()
    return {
        "requests": requests,
        "wall_s": wall_s,
        "errors": errors,
        "probes_s": probes,
        "probe_failures": failed,
    }


def measure(duration_s: float, concurrency: int, rates: list[float]) -> list[dict[str, Any]]:
    """Both paths at each offered rate (0: as fast as the clients go); with the pod's CPU seconds."""
    workdir = Path(tempfile.mkdtemp(prefix="vpp-healthz-"))
    upstream_port, listen, admin = _common.free_port(), _common.free_port(), _common.free_port()
    upstream = _proxies.Nginx(
        _proxies.static_conf(workdir / "up", upstream_port), workdir / "up", [upstream_port]
    )
    argv = [sys.executable, "-m", "bench._loop_pod", "--state", str(workdir / "pod"), "--listen", str(listen)]
    argv += ["--upstream-port", str(upstream_port), "--admin-port", str(admin)]
    with (workdir / "pod.log").open("wb") as err:
        pod = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=_common.ROOT
        )
    results: list[dict[str, Any]] = []
    try:
        _common.wait_for(partial(_common.port_open, "127.0.0.1", admin), 20, "the loop pod")
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            pool.submit(int).result()  # the load process is up before the clock starts
            for rate in rates:
                for name, port in (("direct", upstream_port), ("ours", listen)):
                    procs = [pod.pid, *(w for m in _children(pod.pid) for w in _children(m))]
                    before = {pid: _cpu_s(pid) for pid in procs}
                    result = _loaded(pool, port, admin, (concurrency, duration_s, rate))
                    result.update(path=name, rate=rate, concurrency=concurrency)
                    result["cpu_pod_s"] = _cpu_s(pod.pid) - before[pod.pid]
                    result["cpu_nginx_s"] = sum(_cpu_s(pid) - before[pid] for pid in procs[1:])
                    results.append(result)
    finally:
        _common.stop_process(pod, timeout_s=10)
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results
