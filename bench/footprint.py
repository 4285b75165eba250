"""Benchmark 5: footprint — memory of the provisioner and its nginx, CPU seconds per idle hour.

    .venv/bin/python -m bench.footprint [--window 120]

One ``provisioner run`` against ``provisioner sim`` (loopback), production-default intervals
(``RECONCILE_INTERVAL_SECONDS=60``: one list call a minute; ``HEALTH_INTERVAL_SECONDS=5`` with
``VAST_HEALTH_PATH=/health``: one HTTP health check every 5 s) and no proxied traffic. Once the pod is
ready and has settled, for ``--window`` seconds: RSS and PSS (``/proc/<pid>/smaps_rollup``) of the
provisioner, of the nginx master and of its worker every 5 s, and CPU time (``utime + stime`` from
``/proc/<pid>/stat``, plus reaped children for the provisioner) at the start and the end of the window,
extrapolated to an hour. CPU time is counted in clock ticks (10 ms), so over 120 s the extrapolation is
good to about ±0.3 s per hour. Then 3 000 proxied requests (8 clients) through the pod's nginx to the sim's
GPU app, to show what traffic costs each process: nginx proxies, and the provisioner copies nginx's
JSON access log line by line from a pipe to its own stdout.

Then where the provisioner's memory goes: a fresh interpreter imports, one step at a time in the order
``provisioner run`` needs them, the libraries and modules the process loads, and reports what each
step adds to its RSS (``/proc/self/status``), plus what the daemon's two ``httpx`` clients add once
created (each loads a TLS context with the CA bundle). Most of an idle provisioner is imported code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _common, _httpclient, _procs

HZ = os.sysconf("SC_CLK_TCK")
LOAD_REQUESTS = 3000
#: import steps of ``provisioner run``, in the order it needs them: (label, modules imported)
IMPORT_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ssl (TLS for the Vast API)", ("ssl",)),
    ("asyncio", ("asyncio",)),
    ("pydantic + pydantic-settings (Settings)", ("pydantic", "pydantic_settings")),
    ("jinja2 (the nginx.conf template)", ("jinja2",)),
    ("click (uvicorn's and typer's command line)", ("click",)),
    ("httpx (with httpcore, h11, anyio, idna, certifi)", ("httpx",)),
    ("redis.asyncio (blacklist, fleet, rent lock)", ("redis.asyncio",)),
    ("tenacity", ("tenacity",)),
    ("typer (the CLI)", ("typer",)),
    ("starlette + uvicorn (admin server)", ("starlette.applications", "uvicorn")),
    ("prometheus-client (/metrics)", ("prometheus_client",)),
    ("provisioner's own modules", ("provisioner.cli", "provisioner.daemon", "provisioner.reconciler")),
)
_IMPORT_PROBE = """
import importlib, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
# as `provisioner` does first (launch.skip_httpx_cli): httpx's optional CLI (rich, pygments) stays out
sys.modules["httpx._main"] = None
rows = [["python itself", rss()]]
for label, modules in json.loads(sys.argv[1]):
    before = rss()
    for name in modules:
        importlib.import_module(name)
    rows.append([label, rss() - before])
import httpx
for label, verify in (
    ("the Vast API's httpx.AsyncClient (TLS context, CA bundle)", True),
    ("the health probes' httpx.AsyncClient (verify=False: no CA bundle)", False),
):
    before = rss()
    httpx.AsyncClient(verify=verify)
    rows.append([label, rss() - before])
rows.append(["total", rss()])
print(json.dumps(rows))
"""


def import_costs() -> list[list[Any]]:
    """[label, MiB] per import step of a fresh interpreter (see the module docstring), and the total."""
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, json.dumps(IMPORT_STEPS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows: list[list[Any]] = json.loads(out)
    return rows


def cpu_s(pid: int, *, children: bool = False) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / HZ


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def run(window_s: float, settle_s: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="vpp-bench-fp-"))
    started: list[_procs.Provisioner] = []
    try:
        with _procs.run_sim(workdir, boot_delay_s=2.0) as sim, _procs.provisioners(started):
            prov = _procs.start_provisioner(_procs.pod_env(sim, workdir, "bench-footprint"), workdir)
            started.append(prov)
            admin = int(prov.env["ADMIN_PORT"])
            _common.wait_for(
                lambda: _procs.http_status(admin, "/readyz") == 200, 60, "the pod to be ready", 0.2
            )
            time.sleep(settle_s)
            pids = prov.nginx_pids()
            roles = {
                prov.proc.pid: "provisioner",
                pids[0]: "nginx master",
                **{p: "nginx worker" for p in pids[1:]},
            }
            cpu0 = {pid: cpu_s(pid, children=role == "provisioner") for pid, role in roles.items()}
            calls0 = len(sim.requests())
            t0 = time.monotonic()
            samples: list[dict[str, Any]] = []
            while (elapsed := time.monotonic() - t0) < window_s:
                samples.append({"t": elapsed, **{str(pid): memory_kb(pid) for pid in roles}})
                time.sleep(min(5.0, max(0.0, window_s - elapsed)))
            elapsed = time.monotonic() - t0
            cpu1 = {pid: cpu_s(pid, children=role == "provisioner") for pid, role in roles.items()}
            samples.append({"t": elapsed, **{str(pid): memory_kb(pid) for pid in roles}})
            api_calls = len(sim.requests()) - calls0
            if prov.nginx_pids() != pids:
                print("  note: nginx's processes changed during the window (reload or restart)", flush=True)
            # then some traffic: what a proxied request costs each process (the provisioner copies
            # nginx's access log, one JSON line per request, from its pipe to its stdout)
            load_cpu0 = {pid: cpu_s(pid, children=role == "provisioner") for pid, role in roles.items()}
            _, load_wall_s, load_errors = asyncio.run(
                _httpclient.closed_loop(
                    "127.0.0.1", prov.listen_port, 8, LOAD_REQUESTS, "GET", "/v1/models", None
                )
            )
            load_cpu1 = {pid: cpu_s(pid, children=role == "provisioner") for pid, role in roles.items()}
            after_load = {str(pid): memory_kb(pid) for pid in roles}
            return {
                "window_s": elapsed,
                "roles": {str(pid): role for pid, role in roles.items()},
                "cpu_s": {str(pid): cpu1[pid] - cpu0[pid] for pid in roles},
                "samples": samples,
                "api_calls": api_calls,
                "load": {
                    "requests": LOAD_REQUESTS + 8,
                    "wall_s": load_wall_s,
                    "errors": load_errors,
                    "cpu_s": {str(pid): load_cpu1[pid] - load_cpu0[pid] for pid in roles},
                    "memory_kb": after_load,
                },
            }
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def report(result: dict[str, Any]) -> None:
    window = result["window_s"]
    per_hour = 3600 / window
    print(
        f"steady state, no proxied traffic, {window:.0f} s window; {result['api_calls']} API calls and "
        f"~{window / 5:.0f} health checks in the window\n"
    )
    rows = []
    totals = {"rss": 0.0, "pss": 0.0, "cpu": 0.0}
    for pid, role in result["roles"].items():
        rss = statistics.median(s[pid][0] for s in result["samples"]) / 1024
        pss = statistics.median(s[pid][1] for s in result["samples"]) / 1024
        peak = max(s[pid][0] for s in result["samples"]) / 1024
        cpu = result["cpu_s"][pid]
        rows.append([role, pid, rss, peak, pss, cpu, cpu * per_hour])
        totals["rss"] += rss
        totals["pss"] += pss
        totals["cpu"] += cpu
    rows.append(["total", "", totals["rss"], "", totals["pss"], totals["cpu"], totals["cpu"] * per_hour])
    _common.print_table(
        [
            "process",
            "pid",
            "RSS MiB",
            "RSS peak MiB",
            "PSS MiB",
            f"CPU s in {window:.0f} s",
            "CPU s per idle hour",
        ],
        rows,
        digits=2,
    )
    load = result["load"]
    print(
        f"then {load['requests']:,} proxied GETs (8 clients, loopback GPU app of the sim, "
        f"{load['requests'] / load['wall_s']:.0f} req/s, {load['errors']} errors):\n"
    )
    load_rows = []
    for pid, role in result["roles"].items():
        cpu = load["cpu_s"][pid]
        load_rows.append([role, cpu, cpu * 1000 / load["requests"] * 1000, load["memory_kb"][pid][0] / 1024])
    _common.print_table(
        ["process", "CPU s", "CPU ms per 1000 requests", "RSS after MiB"], load_rows, digits=2
    )
    plot(result)


def plot(result: dict[str, Any]) -> None:
    plt = _common.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    colors = {"provisioner": "#1f77b4", "nginx master": "#2ca02c", "nginx worker": "#98df8a"}
    per_hour = 3600 / result["window_s"]
    for pid, role in result["roles"].items():
        ts = [s["t"] for s in result["samples"]]
        ax1.plot(ts, [s[pid][0] / 1024 for s in result["samples"]], label=f"{role} RSS", color=colors[role])
        ax1.plot(
            ts,
            [s[pid][1] / 1024 for s in result["samples"]],
            label=f"{role} PSS",
            color=colors[role],
            linestyle="--",
        )
    ax1.set_xlabel("seconds into the steady-state window")
    ax1.set_ylabel("MiB")
    ax1.set_ylim(bottom=0)
    ax1.set_title("memory (solid: RSS, dashed: PSS)")
    ax1.legend(fontsize=8, ncol=3, loc="center right")
    roles = list(result["roles"].items())
    values = [result["cpu_s"][pid] * per_hour for pid, _ in roles]
    bars = ax2.bar(range(len(roles)), values, color=[colors[r] for _, r in roles])
    ax2.bar_label(bars, fmt="%.1f s", fontsize=8)
    ax2.set_xticks(range(len(roles)), [r.replace("nginx ", "nginx\n") for _, r in roles])
    ax2.set_ylabel("CPU seconds per idle hour")
    ax2.set_title("CPU, extrapolated to an hour")
    fig.suptitle(
        "provisioner run, idle and serving (defaults: reconcile every 60 s, health check every 5 s)",
        fontsize=10,
    )
    _common.save_plot(fig, "footprint.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--window", type=float, default=120.0, help="steady-state seconds measured (default 120)"
    )
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after ready (default 5)")
    args = parser.parse_args()
    _common.header("Benchmark 5: footprint (memory, CPU per idle hour)")
    with _common.timed("benchmark 5"):
        result = run(args.window, args.settle)
    report(result)
    print("where the provisioner's RSS goes: a fresh interpreter importing what `provisioner run` does\n")
    _common.print_table(["step", "RSS added MiB"], import_costs(), digits=1)


if __name__ == "__main__":
    _common.main_guard(main)
