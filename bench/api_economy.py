"""Benchmark 4: API economy — a fleet of pods on one Vast API key (issue 13's figures).

    .venv/bin/python -m bench.api_economy [--pods 1,12,20,50] [--steady 120] [--boot-delay 10]
                                          [--cold-repeats 9]

For each N in ``--pods``, a fresh ``provisioner sim`` with rate limits on (every endpoint at Vast's
published minimum interval, per API key; 429 bodies as documented: JSON for create instance,
``rate_limit_exceeded`` for destroy, plain text elsewhere) and a fresh redis-server, both on 127.0.0.1.
N real ``provisioner run`` processes start at the same moment (``podManagementPolicy: Parallel``), all
with ONE API key and ``BLACKLIST_ENABLED=true`` on that one Redis, production-default loop intervals
(``BOOT_POLL_SECONDS=5``, ``RECONCILE_INTERVAL_SECONDS=60``, ``HEALTH_INTERVAL_SECONDS=5``).

Boot phase: until every pod serves (its first 200 through its nginx, ``GET /health`` on the listen
port, polled every 0.02 s for one pod, 0.25 s for more), at most ``--boot-cap`` × the target
(N × 4.5 s + boot + 30 s). Then a steady window of ``--steady`` seconds. The sim's unbounded counters
(``GET /_sim/requests`` status_counts) are read at the start, when
the boot phase ends and at the end, so boot and steady calls and 429s are exact per endpoint; the
request log (timestamps) gives the plot. Rentals come from ``/_sim/state``. The per-pod footprint
(RSS, CPU to boot, CPU per idle hour of the provisioner and its nginx) is read from /proc.

With Redis the pods run in fleet mode (one pacer, one instance view, one rental queue); ``--env
NAME=VALUE`` (repeatable) adds variables to every pod. The cold overhead at N = 1 (serving minus the
simulated boot) is one sample of a spread, since the boot poll lands anywhere in a list interval: the
benchmark adds ``--cold-repeats`` single-pod starts (default 9, no steady window) and reports their
median and each start by phase. Time: per N, the boot phase (at most the cap) + the steady window +
~10 s start/stop, plus ~15 s per cold repeat; the default sweep runs ~20-30 min.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _common, _econ_report, _procs
from bench.footprint import cpu_s, memory_kb

RENT_INTERVAL_S = 4.5
SIM_CONFIG = {"rate_limits": True, "rate_limit_scale": 1.0, "rate_limit_body": "documented"}


@dataclass
class Options:
    boot_delay_s: float = 10.0
    steady_s: float = 120.0
    boot_cap: float = 2.0
    extra_env: dict[str, str] = field(default_factory=dict)

    def target_s(self, n: int) -> float:
        """Issue 13: every pod serves within N × 4.5 s + boot + 30 s."""
        return n * RENT_INTERVAL_S + self.boot_delay_s + 30.0


@dataclass
class Pod:
    prov: _procs.Provisioner
    serving_at: float | None = None
    cpu_boot_s: float = float("nan")
    cpu_steady0_s: float = float("nan")
    cpu_idle_s: float = float("nan")
    rss_prov_kb: int = 0
    rss_nginx_kb: int = 0


@dataclass
class Snapshot:
    at: float
    status_counts: dict[str, dict[str, int]]
    cpu_total: tuple[int, int]
    side_cpu_s: dict[str, float]


@dataclass
class FleetRun:
    n: int
    t_start: float
    pods: list[Pod]
    snaps: list[Snapshot] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    instances: list[dict[str, Any]] = field(default_factory=list)
    side_rss_kb: dict[str, int] = field(default_factory=dict)


def snapshot(sim: _procs.Sim, side: dict[str, int]) -> Snapshot:
    side_cpu = {name: cpu_s(pid) for name, pid in side.items()}
    return Snapshot(time.time(), sim.status_counts(), _common.machine_ticks(), side_cpu)


def pod_cpu_s(pod: Pod) -> float:
    """CPU seconds of the pod's provisioner (with reaped children) and its nginx processes."""
    total = cpu_s(pod.prov.proc.pid, children=True)
    for pid in pod.prov.nginx_pids():
        with contextlib.suppress(OSError, ValueError):
            total += cpu_s(pid)
    return total


def check_alive(pods: list[Pod]) -> None:
    for pod in pods:
        if pod.prov.proc.poll() is not None:
            raise RuntimeError(
                f"{pod.prov.pod} exited with {pod.prov.proc.returncode}; see {pod.prov.log_path}"
            )


def poll_serving(pods: list[Pod], until: float, poll_s: float, note_every_s: float = 30.0) -> None:
    """Poll each pod's proxy until every pod has answered 200 once, or ``until``."""
    next_note = time.time() + note_every_s
    t0 = time.time()
    while time.time() < until:
        for pod in pods:
            if pod.serving_at is None and _procs.http_status(pod.prov.listen_port, "/health") == 200:
                pod.serving_at = time.time()
                pod.cpu_boot_s = pod_cpu_s(pod)
        if all(p.serving_at is not None for p in pods):
            return
        check_alive(pods)
        if time.time() >= next_note:
            done = sum(p.serving_at is not None for p in pods)
            print(f"    {time.time() - t0:4.0f}s: {done}/{len(pods)} pods serving", flush=True)
            next_note += note_every_s
        time.sleep(poll_s)


def steady_window(pods: list[Pod], seconds: float) -> None:
    """Wait out the steady window; pods not serving yet are still polled (not an API call)."""
    until = time.time() + seconds
    while time.time() < until:
        if any(p.serving_at is None for p in pods):
            poll_serving(pods, min(until, time.time() + 5.0), 0.5, note_every_s=1e9)
        else:
            check_alive(pods)
            time.sleep(min(5.0, max(0.0, until - time.time())))


def pod_envs(
    n: int, sim: _procs.Sim, redis: _procs.Redis, workdir: Path, opts: Options
) -> list[dict[str, str]]:
    extra = {"BLACKLIST_ENABLED": "true", "BLACKLIST_REDIS_URL": redis.url, **opts.extra_env}
    return [_procs.pod_env(sim, workdir, f"fleet{n}-{i}", **extra) for i in range(n)]


def run_fleet(n: int, opts: Options) -> FleetRun:
    """N pods against a fresh rate-limited sim and a fresh Redis; every process stopped on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix=f"vpp-bench-fleet{n}-"))
    started: list[_procs.Provisioner] = []
    try:
        with (
            _procs.run_redis(workdir) as redis,
            _procs.run_sim(workdir, boot_delay_s=opts.boot_delay_s, rate_limits=True) as sim,
            _procs.provisioners(started),
        ):
            sim.admin("POST", "/config", SIM_CONFIG)
            sim.admin("DELETE", "/rate_limits")
            sim.admin("DELETE", "/requests")
            side = {"sim": sim.proc.pid, "redis": redis.proc.pid}
            envs = pod_envs(n, sim, redis, workdir, opts)
            first = snapshot(sim, side)
            run = FleetRun(n, time.time(), [])
            for env in envs:
                started.append(_procs.start_provisioner(env, workdir))
                run.pods.append(Pod(started[-1]))
            run.snaps.append(first)
            cap = run.t_start + opts.boot_cap * opts.target_s(n)
            poll_serving(run.pods, cap, 0.02 if n == 1 else 0.25)
            run.snaps.append(snapshot(sim, side))
            for pod in run.pods:
                pod.cpu_steady0_s = pod_cpu_s(pod)
            print(f"    boot phase over after {time.time() - run.t_start:.0f}s; steady window", flush=True)
            steady_window(run.pods, opts.steady_s)
            run.snaps.append(snapshot(sim, side))
            measure_footprint(run, side)
            run.calls = [e for e in sim.requests() if e["ts"] >= run.t_start]
            run.instances = sim.state()["instances"]
            return run
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def cold_starts(repeats: int, opts: Options) -> list[FleetRun]:
    """``repeats`` more N = 1 runs without a steady window: the cold overhead of one start is one
    sample of a spread (the boot poll lands anywhere in a list interval), so the figure is a median."""
    runs = []
    for i in range(repeats):
        print(f"  cold start {i + 1} of {repeats}", flush=True)
        runs.append(run_fleet(1, dataclasses.replace(opts, steady_s=0.0)))
    return runs


def measure_footprint(run: FleetRun, side: dict[str, int]) -> None:
    for pod in run.pods:
        pod.cpu_idle_s = pod_cpu_s(pod) - pod.cpu_steady0_s
        pod.rss_prov_kb = memory_kb(pod.prov.proc.pid)[0]
        for pid in pod.prov.nginx_pids():
            with contextlib.suppress(OSError, ValueError):
                pod.rss_nginx_kb += memory_kb(pid)[0]
    run.side_rss_kb = {name: memory_kb(pid)[0] for name, pid in side.items()}


def parse_env(items: list[str]) -> dict[str, str]:
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env {item!r}: expected NAME=VALUE")
        result[name] = value
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pods", default="1,12,20,50", help="comma-separated fleet sizes (default 1,12,20,50)"
    )
    parser.add_argument("--steady", type=float, default=120.0, help="steady window per N, s (default 120)")
    parser.add_argument("--boot-delay", type=float, default=10.0, help="simulated boot, s (default 10)")
    parser.add_argument(
        "--boot-cap", type=float, default=2.0, help="end the boot phase at this × the target (default 2)"
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for every pod (repeatable)")
    parser.add_argument(
        "--cold-repeats",
        type=int,
        default=9,
        help="more single-pod cold starts (fresh sim and Redis, no steady window) for the cold overhead's"
        " spread (default 9; 0: none)",
    )
    parser.add_argument("--plot", default="api_economy-fleet.png", help="plot file name under docs/img/")
    args = parser.parse_args()
    sizes = [int(x) for x in args.pods.split(",") if x.strip()]
    if not sizes or min(sizes) < 1:
        raise SystemExit("--pods: a comma-separated list of positive integers")
    opts = Options(args.boot_delay, args.steady, args.boot_cap, parse_env(args.env))
    _common.header("Benchmark 4: API economy (a fleet of pods on one API key)")
    print(f"options: {dataclasses.asdict(opts)}; sim config {SIM_CONFIG}\n", flush=True)
    runs: list[FleetRun] = []
    failed: list[int] = []
    with _common.timed("benchmark 4"):
        for n in sizes:
            print(f"  N = {n}: starting {n} pod(s)", flush=True)
            try:
                runs.append(run_fleet(n, opts))
            except RuntimeError as exc:  # one N failing (a pod exited) still reports the others
                print(f"  N = {n} FAILED: {exc}", flush=True)
                failed.append(n)
        colds = cold_starts(args.cold_repeats, opts)
    if runs:
        _econ_report.report(runs, opts, args.plot)
    _econ_report.print_cold_starts(runs, colds, opts)
    if failed:
        raise SystemExit(f"failed for N = {', '.join(map(str, failed))}")


if __name__ == "__main__":
    _common.main_guard(main)
