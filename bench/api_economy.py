"""Benchmark 4: API economy — Vast API calls per pod to boot and per pod-hour in steady state, 1 and 20 pods.

    .venv/bin/python -m bench.api_economy [--duration 180] [--boot-delay 10] [--pods 20]

Two simulators with ``--rate-limits`` (Vast's per-endpoint minimum intervals, per API key; a call over
the limit is answered 429 and logged). One pod's provisioner talks to the first, ``--pods`` provisioners
to the second, all started at the same moment (the StatefulSet in ``k8s/`` uses ``podManagementPolicy:
Parallel``) and sharing one API key, as pods sharing one Secret do. Production-default intervals, in real
time: ``BOOT_POLL_SECONDS=5``, ``RECONCILE_INTERVAL_SECONDS=60``, ``HEALTH_INTERVAL_SECONDS=5`` (no API
call). Each pod's ``/readyz`` is polled (not an API call) to split its calls into boot and steady state.

Counting, from the simulators' request logs: list calls carry the pod's label, so they are attributed
per pod; the other calls (whoami, template, search, rent, …) are not, and are shared out per pod.
Steady state is measured per tick, not per wall-clock window (a 60 s period in a 2–3 minute run gives
each pod only two or three ticks): calls per pod-hour = calls per steady tick × 3600 / the observed
median interval between a pod's ticks. Boot calls are counted per boot (they happen once per instance).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import _common, _procs

DEFAULT_DURATION_S = 170.0


def run(duration_s: float, boot_delay_s: float, pods: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="vpp-bench-api-"))
    started: list[_procs.Provisioner] = []
    try:
        with (
            _procs.run_sim(workdir, boot_delay_s=boot_delay_s, rate_limits=True, name="sim-1") as sim1,
            _procs.run_sim(workdir, boot_delay_s=boot_delay_s, rate_limits=True, name="sim-n") as simn,
            _procs.provisioners(started),
        ):
            groups: dict[int, tuple[_procs.Sim, list[_procs.Provisioner]]] = {1: (sim1, [])}
            if pods != 1:
                groups[pods] = (simn, [])
            envs = [
                (n, _procs.pod_env(sim, workdir, f"bench-{n}x-{i}"))
                for n, (sim, _) in groups.items()
                for i in range(n)
            ]
            ready_at: dict[str, float] = {}
            # the single pod first, alone (its boot is not slowed down by 20 others starting), then the group
            t_start = time.time()
            for n, env in envs:
                if n == 1:
                    prov = _procs.start_provisioner(env, workdir)
                    started.append(prov)
                    groups[n][1].append(prov)
            single = started[0]
            admin = int(single.env["ADMIN_PORT"])
            _common.wait_for(
                lambda: _procs.http_status(admin, "/readyz") == 200, 90, "the single pod to be ready", 0.2
            )
            ready_at[single.pod] = time.time()
            print(
                f"  single pod ready after {ready_at[single.pod] - t_start:.1f}s; starting {pods} pods",
                flush=True,
            )
            t_group = time.time()
            for n, env in envs:
                if n != 1:
                    prov = _procs.start_provisioner(env, workdir)
                    started.append(prov)
                    groups[n][1].append(prov)
            deadline = t_group + duration_s
            next_note = t_group + 30
            while time.time() < deadline:
                for prov in started:
                    if (
                        prov.pod not in ready_at
                        and _procs.http_status(int(prov.env["ADMIN_PORT"]), "/readyz") == 200
                    ):
                        ready_at[prov.pod] = time.time()
                    if prov.proc.poll() is not None:
                        raise RuntimeError(
                            f"{prov.pod} exited with {prov.proc.returncode}; see {prov.log_path}"
                        )
                if time.time() >= next_note:
                    print(
                        f"  {time.time() - t_group:4.0f}s: {len(ready_at) - 1}/{pods} pods ready",
                        flush=True,
                    )
                    next_note += 30
                time.sleep(0.5)
            t_end = time.time()
            result: dict[str, Any] = {"t_start": t_start, "t_end": t_end, "groups": {}}
            for n, (sim, provs) in groups.items():
                t_from = t_start if n == 1 else t_group
                calls = [e for e in sim.requests() if t_from <= e["ts"] <= t_end]
                result["groups"][n] = {
                    "t_start": t_from,
                    "calls": calls,
                    "pods": {
                        p.pod: {"label": p.label, "started_at": p.started_at, "ready_at": ready_at.get(p.pod)}
                        for p in provs
                    },
                }
            return result
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def analyse(group: dict[str, Any], t_end: float) -> dict[str, Any]:
    calls, pods = group["calls"], group["pods"]
    by_label = {info["label"]: name for name, info in pods.items()}
    n = len(pods)
    ready = [info["ready_at"] for info in pods.values() if info["ready_at"] is not None]
    all_ready_at = max(ready) if len(ready) == n else None
    boot_calls: Counter[str] = Counter()
    steady_calls: Counter[str] = Counter()
    boot_429: Counter[str] = Counter()
    steady_429: Counter[str] = Counter()
    steady_list_ok: dict[str, list[float]] = {name: [] for name in pods}
    for e in calls:
        pod = by_label.get(_procs.label_of_list_call(e) or "")
        if pod is not None:
            r = pods[pod]["ready_at"]
            steady = r is not None and e["ts"] > r
        else:
            steady = all_ready_at is not None and e["ts"] > all_ready_at
        (steady_calls if steady else boot_calls)[e["endpoint"]] += 1
        if e["status"] == 429:
            (steady_429 if steady else boot_429)[e["endpoint"]] += 1
        if steady and pod is not None and e["endpoint"] == "list" and e["status"] == 200:
            steady_list_ok[pod].append(e["ts"])
    intervals = [b - a for ts in steady_list_ok.values() for a, b in itertools.pairwise(ts)]
    ticks = sum(len(ts) for ts in steady_list_ok.values())
    per_tick = sum(steady_calls.values()) / ticks if ticks else float("nan")
    median_interval = statistics.median(intervals) if intervals else float("nan")
    steady_time_h = (
        sum(max(0.0, t_end - info["ready_at"]) for info in pods.values() if info["ready_at"]) / 3600
    )
    boot_times = [info["ready_at"] - info["started_at"] for info in pods.values() if info["ready_at"]]
    return {
        "pods": n,
        "ready": len(ready),
        "boot_s_median": statistics.median(boot_times) if boot_times else float("nan"),
        "boot_s_max": max(boot_times) if boot_times else float("nan"),
        "boot_calls": boot_calls,
        "boot_429": boot_429,
        "steady_calls": steady_calls,
        "steady_429": steady_429,
        "ticks": ticks,
        "intervals": intervals,
        "per_tick": per_tick,
        "median_interval_s": median_interval,
        "per_pod_hour": per_tick * 3600 / median_interval if intervals else float("nan"),
        "per_pod_hour_window": sum(steady_calls.values()) / steady_time_h if steady_time_h else float("nan"),
        "steady_time_h": steady_time_h,
    }


def report(result: dict[str, Any], boot_delay_s: float, plot_name: str) -> None:
    t_end = result["t_end"]
    run_s = t_end - max(g["t_start"] for g in result["groups"].values())
    print(
        f"run: the single pod alone until ready, then the group for {run_s:.0f} s, in real time; "
        f"simulated boot {boot_delay_s:g} s; rate limits on (per API key, shared by every pod of a "
        "group); BOOT_POLL_SECONDS=5, RECONCILE_INTERVAL_SECONDS=60 (defaults)\n"
    )
    stats = {n: analyse(g, t_end) for n, g in result["groups"].items()}
    rows = []
    for n, s in stats.items():
        boot_total = sum(s["boot_calls"].values())
        rows.append(
            [
                n,
                f"{s['ready']}/{s['pods']}",
                s["boot_s_median"],
                s["boot_s_max"],
                boot_total / s["pods"],
                boot_total / s["pods"] / s["boot_s_median"] * 3600,
                ", ".join(f"{k} {v / s['pods']:.1f}" for k, v in sorted(s["boot_calls"].items())),
                sum(s["boot_429"].values()),
            ]
        )
    print("boot (start to ready, per pod):\n")
    _common.print_table(
        [
            "pods",
            "ready",
            "boot median s",
            "boot max s",
            "calls per pod",
            "… per pod-hour of boot",
            "per endpoint, per pod",
            "429s",
        ],
        rows,
    )
    rows = []
    for n, s in stats.items():
        rows.append(
            [
                n,
                s["ticks"],
                s["median_interval_s"],
                s["per_tick"],
                s["per_pod_hour"],
                s["per_pod_hour_window"],
                ", ".join(f"{k} {v}" for k, v in sorted(s["steady_calls"].items())) or "–",
                sum(s["steady_429"].values()),
            ]
        )
    print("steady state (after each pod was ready):\n")
    _common.print_table(
        [
            "pods",
            "ticks seen",
            "median tick interval s",
            "calls per tick",
            "calls per pod-hour",
            "window count per pod-hour",
            "calls (all pods)",
            "429s",
        ],
        rows,
        digits=2,
    )
    all_429 = {n: s["boot_429"] + s["steady_429"] for n, s in stats.items()}
    print(
        "429 answers by endpoint: "
        + "; ".join(f"{n} pod(s): {dict(c) or 'none'}" for n, c in all_429.items())
        + "\n"
    )
    verdict_rows = []
    for n, s in stats.items():
        ok = s["per_pod_hour"] <= 60.5
        verdict_rows.append(
            [f"{n} pod(s): steady calls per pod-hour ≤ 60", s["per_pod_hour"], "met" if ok else "missed"]
        )
        total_429 = sum(all_429[n].values())
        verdict_rows.append(
            [f"{n} pod(s): no 429 from the rate limits", total_429, "met" if total_429 == 0 else "missed"]
        )
    print("targets:\n")
    _common.print_table(["target", "measured", "verdict"], verdict_rows, digits=1)
    plot(result, stats, boot_delay_s, plot_name)


def plot(result: dict[str, Any], stats: dict[int, Any], boot_delay_s: float, name: str) -> None:
    plt = _common.pyplot()
    groups = result["groups"]
    fig, axes = plt.subplots(1, len(groups), figsize=(7.5 * len(groups), 4.4), squeeze=False)
    bin_s = 5.0
    colors = {
        "list": "#1f77b4",
        "search": "#ff7f0e",
        "rent": "#2ca02c",
        "whoami": "#9467bd",
        "template_get": "#8c564b",
        "template_post": "#e377c2",
        "show": "#17becf",
        "destroy": "#bcbd22",
    }
    for ax, (n, group) in zip(axes[0], groups.items(), strict=False):
        calls = group["calls"]
        t0 = group["t_start"]
        nbins = int((result["t_end"] - t0) // bin_s) + 1
        endpoints = sorted({e["endpoint"] for e in calls}, key=lambda k: (k != "list", k))
        bottom = [0] * nbins
        xs = [i * bin_s for i in range(nbins)]
        for ep in endpoints:
            counts = [0] * nbins
            for e in calls:
                if e["endpoint"] == ep and e["status"] != 429:
                    counts[int((e["ts"] - t0) // bin_s)] += 1
            ax.bar(
                xs,
                counts,
                bin_s * 0.9,
                bottom=bottom,
                align="edge",
                label=ep,
                color=colors.get(ep, "#7f7f7f"),
            )
            bottom = [b + c for b, c in zip(bottom, counts, strict=False)]
        rejected = [0] * nbins
        for e in calls:
            if e["status"] == 429:
                rejected[int((e["ts"] - t0) // bin_s)] += 1
        if any(rejected):
            ax.bar(
                xs,
                rejected,
                bin_s * 0.9,
                bottom=bottom,
                align="edge",
                label="429 (any endpoint)",
                color="#d62728",
            )
        ready = sorted(info["ready_at"] - t0 for info in group["pods"].values() if info["ready_at"])
        ax2 = ax.twinx()
        ax2.step(
            [0, *ready], range(len(ready) + 1), where="post", color="black", linewidth=1.2, label="pods ready"
        )
        ax2.set_ylim(0, max(1, len(group["pods"])) * 1.05)
        ax2.set_ylabel("pods ready")
        ax2.grid(False)
        s = stats[n]
        ax.set_title(
            f"{n} pod{'s' if n > 1 else ''}: {sum(s['boot_calls'].values()) / n:.1f} calls/pod to boot, "
            f"{s['per_pod_hour']:.0f} calls/pod-hour steady",
            fontsize=10,
        )
        ax.set_xlabel("seconds since the pod(s) were started")
        ax.set_ylabel(f"API calls per {bin_s:g} s")
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(handles + h2, labels + l2, fontsize=8, loc="upper right")
    fig.suptitle(
        f"Vast API calls seen by the simulator (rate limits on, simulated boot {boot_delay_s:g} s)",
        fontsize=10,
    )
    _common.save_plot(fig, name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        help=f"seconds to run the group after starting it (default {DEFAULT_DURATION_S:g})",
    )
    parser.add_argument("--boot-delay", type=float, default=10.0, help="simulated boot, seconds (default 10)")
    parser.add_argument("--pods", type=int, default=20, help="pods in the large group (default 20)")
    args = parser.parse_args()
    _common.header("Benchmark 4: API economy (calls per pod, boot and steady state)")
    with _common.timed("benchmark 4"):
        result = run(args.duration, args.boot_delay, args.pods)
    default = (args.duration, args.boot_delay, args.pods) == (DEFAULT_DURATION_S, 10.0, 20)
    report(result, args.boot_delay, "api_economy.png" if default else f"api_economy-{args.duration:g}s.png")


if __name__ == "__main__":
    _common.main_guard(main)
