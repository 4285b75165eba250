"""Benchmark 3: provisioning overhead — process start to the first proxied 200, cold and warm.

    .venv/bin/python -m bench.provisioning [--boot-delay 3] [--cold 3] [--warm 5]

``provisioner run`` against ``provisioner sim --boot-delay S`` on loopback, production-default intervals
(``BOOT_POLL_SECONDS=5``, ``RECONCILE_INTERVAL_SECONDS=60``, ``HEALTH_INTERVAL_SECONDS=5``) and
``VAST_HEALTH_PATH=/health``. The clock starts just before the process is spawned and stops at the first
``GET /health`` through the pod's nginx that the GPU app answers 200 (polled every 10 ms on fresh
connections).

* cold: a new pod (no instance): whoami, template, list, search, rent, wait for the instance to boot
  (``S`` seconds in the sim), notice it at the next poll, health-check it, reload nginx. Overhead =
  total − S. The phases come from the sim's request log.
* warm: the same pod restarted (SIGTERM, wait for exit, start again) while its instance runs: the new
  process adopts the instance (whoami, template, list, health check, reload). Includes Python start-up.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _common, _procs

POLL_S = 0.01


def _first_200(prov: _procs.Provisioner, timeout_s: float) -> tuple[float | None, float]:
    """(first time nginx answered anything, first 200 from the GPU app) in wall-clock seconds."""
    first_answer: float | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _procs.http_status(prov.listen_port, "/health", timeout_s=1.0)
        now = time.time()
        if status is not None and first_answer is None:
            first_answer = now
        if status == 200:
            return first_answer, now
        if prov.proc.poll() is not None:
            raise RuntimeError(f"provisioner exited with {prov.proc.returncode}: see {prov.log_path}")
        time.sleep(POLL_S)
    raise RuntimeError(f"no 200 through the proxy within {timeout_s:g}s; see {prov.log_path}")


def _python_startup() -> float:
    """Median wall time of ``provisioner --help`` (interpreter start + imports of the CLI)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([_common.PROVISIONER, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _calls(sim: _procs.Sim, since: float, until: float) -> list[dict[str, Any]]:
    return [e for e in sim.requests() if since <= e["ts"] <= until]


def cold_run(
    sim: _procs.Sim, workdir: Path, pod: str, boot_delay_s: float, started: list[_procs.Provisioner]
) -> dict[str, Any]:
    prov = _procs.start_provisioner(_procs.pod_env(sim, workdir, pod), workdir, "-cold")
    started.append(prov)
    nginx_up, ok_at = _first_200(prov, 60 + boot_delay_s)
    calls = _calls(sim, prov.started_at, ok_at)
    rent = next(e for e in calls if e["endpoint"] == "rent" and e["status"] == 200)
    instance = next(i for i in sim.state()["instances"] if i["label"] == prov.label and not i["destroyed_at"])
    running_at = instance["start_date"] + boot_delay_s
    seen = next((e["ts"] for e in calls if e["endpoint"] == "list" and e["ts"] >= running_at), ok_at)
    t0 = prov.started_at
    return {
        "pod": pod,
        "total_s": ok_at - t0,
        "overhead_s": ok_at - t0 - boot_delay_s,
        "nginx_up_s": (nginx_up or ok_at) - t0,
        "phases": {
            "process start → first API call": calls[0]["ts"] - t0,
            "API calls (cold: whoami, template, list, search, rent)": rent["ts"] - calls[0]["ts"],
            "simulated boot": running_at - rent["ts"],
            "waiting for the next poll": seen - running_at,
            "health check, nginx reload, first 200": ok_at - seen,
        },
        "calls": [e["endpoint"] for e in calls],
        "prov": prov,
    }


def warm_run(
    sim: _procs.Sim, workdir: Path, env: dict[str, str], started: list[_procs.Provisioner]
) -> dict[str, Any]:
    prov = _procs.start_provisioner(env, workdir, "-warm")
    started.append(prov)
    nginx_up, ok_at = _first_200(prov, 60)
    calls = _calls(sim, prov.started_at, ok_at)
    t0 = prov.started_at
    first_api = calls[0]["ts"] if calls else ok_at
    last_api = calls[-1]["ts"] if calls else ok_at
    return {
        "total_s": ok_at - t0,
        "nginx_up_s": (nginx_up or ok_at) - t0,
        "phases": {
            "process start → first API call": first_api - t0,
            "API calls (warm: whoami, template, list)": last_api - first_api,
            "health check, nginx reload, first 200": ok_at - last_api,
        },
        "calls": [e["endpoint"] for e in calls],
        "prov": prov,
    }


def run(
    boot_delay_s: float, colds: int, warms: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    workdir = Path(tempfile.mkdtemp(prefix="vpp-bench-prov-"))
    started: list[_procs.Provisioner] = []
    cold: list[dict[str, Any]] = []
    warm: list[dict[str, Any]] = []
    try:
        startup = _python_startup()
        with _procs.run_sim(workdir, boot_delay_s=boot_delay_s) as sim, _procs.provisioners(started):
            for i in range(colds):
                result = cold_run(sim, workdir, f"bench-cold-{i}", boot_delay_s, started)
                cold.append(result)
                print(
                    f"  cold {i}: {result['total_s']:.2f}s total, {result['overhead_s']:.2f}s overhead",
                    flush=True,
                )
                if i < colds - 1:
                    result["prov"].stop()
            env = dict(cold[-1]["prov"].env)
            cold[-1]["prov"].stop()
            for i in range(warms):
                _common.wait_for(
                    lambda: not _common.port_open("127.0.0.1", int(env["NGINX_LISTEN_PORT"])),
                    30,
                    "the old nginx to exit",
                )
                result = warm_run(sim, workdir, env, started)
                warm.append(result)
                print(f"  warm {i}: {result['total_s']:.2f}s", flush=True)
                result["prov"].stop()
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return cold, warm, startup


def report(
    cold: list[dict[str, Any]], warm: list[dict[str, Any]], startup_s: float, boot_delay_s: float
) -> None:
    med = statistics.median
    print(
        f"simulated boot delay: {boot_delay_s:g} s; BOOT_POLL_SECONDS=5 (default); "
        f"`provisioner --help` takes {startup_s:.2f} s\n"
    )
    rows = []
    for kind, runs in (("cold (rent)", cold), ("warm (adopt)", warm)):
        totals = [r["total_s"] for r in runs]
        over = [r.get("overhead_s", r["total_s"]) for r in runs]
        rows.append(
            [
                kind,
                len(runs),
                med(totals),
                min(totals),
                max(totals),
                med(over),
                med([r["nginx_up_s"] for r in runs]),
            ]
        )
    _common.print_table(
        [
            "start",
            "runs",
            "total median s",
            "min s",
            "max s",
            "overhead median s",
            "nginx answering (503) after s",
        ],
        rows,
        digits=2,
    )
    print("where the time goes (median of the runs):\n")
    phase_rows = []
    for kind, runs in (("cold", cold), ("warm", warm)):
        for phase in runs[0]["phases"]:
            phase_rows.append([kind, phase, med([r["phases"][phase] for r in runs])])
    _common.print_table(["start", "phase", "seconds"], phase_rows, digits=2)
    print(
        "API calls per start: "
        + "; ".join(
            f"{kind}: {', '.join(runs[-1]['calls'])}" for kind, runs in (("cold", cold), ("warm", warm))
        )
        + "\n"
    )
    warm_med = med([r["total_s"] for r in warm])
    cold_excl = med([r["overhead_s"] - r["phases"]["waiting for the next poll"] for r in cold])
    print("targets:\n")
    _common.print_table(
        ["figure", "measured s", "target", "verdict"],
        [
            ["warm start to first 200 (median)", warm_med, "< 1.5 s", "met" if warm_med < 1.5 else "missed"],
            ["cold overhead (median, incl. poll wait)", med([r["overhead_s"] for r in cold]), "–", "–"],
            ["cold overhead without the poll wait", cold_excl, "–", "–"],
        ],
        digits=2,
    )
    plot(cold, warm, boot_delay_s)


def plot(cold: list[dict[str, Any]], warm: list[dict[str, Any]], boot_delay_s: float) -> None:
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.4))
    palette = {
        "process start → first API call": "#9467bd",
        "API calls (cold: whoami, template, list, search, rent)": "#1f77b4",
        "API calls (warm: whoami, template, list)": "#17becf",
        "simulated boot": "#c7c7c7",
        "waiting for the next poll": "#ff7f0e",
        "health check, nginx reload, first 200": "#2ca02c",
    }
    rows = [(f"cold #{i}", r) for i, r in enumerate(cold)] + [(f"warm #{i}", r) for i, r in enumerate(warm)]
    seen: set[str] = set()
    for y, (_name, r) in enumerate(rows):
        left = 0.0
        for phase, seconds in r["phases"].items():
            label = phase if phase not in seen else None
            seen.add(phase)
            ax.barh(y, seconds, left=left, color=palette[phase], label=label, height=0.6)
            left += seconds
        ax.text(left + 0.05, y, f"{left:.2f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [n for n, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the process was spawned")
    ax.set_title(
        f"provisioner run → first proxied 200 (simulated boot {boot_delay_s:g} s, BOOT_POLL_SECONDS=5)"
    )
    ax.legend(fontsize=8, loc="lower right")
    _common.save_plot(fig, "provisioning.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--boot-delay", type=float, default=3.0, help="simulated boot, seconds (default 3)")
    parser.add_argument("--cold", type=int, default=3, help="cold starts (default 3)")
    parser.add_argument("--warm", type=int, default=5, help="warm restarts (default 5)")
    args = parser.parse_args()
    _common.header("Benchmark 3: provisioning overhead (cold and warm)")
    with _common.timed("benchmark 3"):
        cold, warm, startup = run(args.boot_delay, args.cold, args.warm)
    report(cold, warm, startup, args.boot_delay)


if __name__ == "__main__":
    _common.main_guard(main)
