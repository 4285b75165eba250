"""Tables, targets and the plot of benchmark 4 (``bench/api_economy.py``): a fleet on one API key.

Reads the ``FleetRun`` records the benchmark collected (the sim's counters at three moments, the request
log, the sim's instances, each pod's serving time and /proc figures) and prints markdown tables.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any

from bench import _common

if TYPE_CHECKING:
    from bench.api_economy import FleetRun, Options, Snapshot

MIB = 1024.0
LOST_RACE_STATUSES = ("404", "410")


def diff_counts(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, Counter[str]]:
    """Per endpoint, calls per HTTP status in ``b`` minus ``a`` (endpoints with no call left out)."""
    result: dict[str, Counter[str]] = {}
    for endpoint, statuses in b.items():
        before = a.get(endpoint, {})
        c = +Counter({s: v - before.get(s, 0) for s, v in statuses.items()})
        if c:
            result[endpoint] = c
    return result


def busy_pct(a: Snapshot, b: Snapshot) -> float:
    (all0, idle0), (all1, idle1) = a.cpu_total, b.cpu_total
    return 100.0 * (1 - (idle1 - idle0) / max(1, all1 - all0))


def total(counts: dict[str, Counter[str]], status: str | None = None) -> int:
    return sum(c[status] if status else sum(c.values()) for c in counts.values())


def analyse(run: FleetRun, opts: Options) -> dict[str, Any]:
    s0, s1, s2 = run.snaps
    boot, steady = (
        diff_counts(s0.status_counts, s1.status_counts),
        diff_counts(s1.status_counts, s2.status_counts),
    )
    steady_s = s2.at - s1.at
    serving = [p.serving_at - p.prov.started_at for p in run.pods if p.serving_at is not None]
    rent = boot.get("rent", Counter()) + steady.get("rent", Counter())
    live = [i for i in run.instances if i.get("destroyed_at") is None]
    per_label = Counter(str(i.get("label")) for i in live)
    return {
        "n": run.n,
        "serving": len(serving),
        "all_serving_s": max(serving) if len(serving) == run.n else float("nan"),
        "median_serving_s": statistics.median(serving) if serving else float("nan"),
        "target_s": opts.target_s(run.n),
        "boot": boot,
        "steady": steady,
        "steady_s": steady_s,
        "boot_429": total(boot, "429"),
        "steady_429": total(steady, "429"),
        "steady_per_h": total(steady) * 3600 / steady_s if steady_s > 0 else float("nan"),
        "rent_calls": sum(rent.values()),
        "rent_ok": rent["200"],
        "lost_races": sum(rent[s] for s in LOST_RACE_STATUSES),
        "live": len(live),
        "duplicates": sum(c - 1 for c in per_label.values() if c > 1),
        "first_call_s": min((e["ts"] for e in run.calls), default=float("nan")) - run.t_start,
        "busy_boot": busy_pct(s0, s1),
        "busy_steady": busy_pct(s1, s2),
    }


def report(runs: list[FleetRun], opts: Options, plot_name: str) -> None:
    stats = [analyse(r, opts) for r in runs]
    print(
        f"one sim (rate limits on, every endpoint) + one redis-server per N, one API key; simulated boot "
        f"{opts.boot_delay_s:g} s; steady window {opts.steady_s:g} s; boot phase capped at "
        f"{opts.boot_cap:g} × target\n"
    )
    print("fleet (serving = first 200 through the pod's nginx):\n")
    rows = [
        [
            s["n"],
            f"{s['serving']}/{s['n']}",
            s["all_serving_s"],
            s["target_s"],
            s["median_serving_s"],
            s["boot_429"],
            s["steady_429"],
            s["steady_per_h"],
            f"{s['rent_calls']} / {s['rent_ok']}",
            s["lost_races"],
            f"{s['live']} ({s['duplicates']} dup)",
        ]
        for s in stats
    ]
    _common.print_table(
        [
            "pods",
            "serving",
            "all serving s",
            "target s",
            "median s",
            "429 boot",
            "429 steady",
            "steady calls/h (fleet)",
            "rent calls / rentals",
            "lost races",
            "instances",
        ],
        rows,
    )
    print_endpoints(stats)
    print_footprint(runs, stats)
    print_targets(stats)
    plot(runs, stats, opts, plot_name)


def print_endpoints(stats: list[dict[str, Any]]) -> None:
    endpoints = sorted({e for s in stats for phase in ("boot", "steady") for e in s[phase]})
    rows = []
    for ep in endpoints:
        row: list[Any] = [ep]
        for s in stats:
            for phase in ("boot", "steady"):
                c = s[phase].get(ep, Counter())
                row.append(f"{sum(c.values())} ({c['429']})" if c else "–")
        rows.append(row)
    cols = ["endpoint"] + [f"N={s['n']} {phase}" for s in stats for phase in ("boot", "steady")]
    print("calls per endpoint (of which 429), boot phase and steady window, whole fleet:\n")
    _common.print_table(cols, rows)


def print_footprint(runs: list[FleetRun], stats: list[dict[str, Any]]) -> None:
    rows = []
    for run, s in zip(runs, stats, strict=True):
        steady_h = s["steady_s"] / 3600
        s1, s2 = run.snaps[1], run.snaps[2]
        rows.append(
            [
                run.n,
                statistics.mean(p.rss_prov_kb for p in run.pods) / MIB,
                max(p.rss_prov_kb for p in run.pods) / MIB,
                statistics.mean(p.rss_nginx_kb for p in run.pods) / MIB,
                statistics.mean(p.cpu_boot_s for p in run.pods if p.serving_at is not None)
                if s["serving"]
                else float("nan"),
                statistics.mean(p.cpu_idle_s for p in run.pods) / steady_h,
                (s2.side_cpu_s["sim"] - s1.side_cpu_s["sim"]) / steady_h,
                run.side_rss_kb["sim"] / MIB,
                run.side_rss_kb["redis"] / MIB,
                s["first_call_s"],
                s["busy_boot"],
                s["busy_steady"],
            ]
        )
    print("footprint per pod (provisioner + its nginx; /proc), and the machine:\n")
    _common.print_table(
        [
            "pods",
            "provisioner RSS MiB mean",
            "max",
            "nginx RSS MiB",
            "CPU s to serve",
            "CPU s per idle hour",
            "sim CPU s/h (steady)",
            "sim RSS MiB",
            "redis RSS MiB",
            "first API call s",
            "machine busy % boot",
            "busy % steady",
        ],
        rows,
    )


def print_targets(stats: list[dict[str, Any]]) -> None:
    rows: list[list[Any]] = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    for s in stats:
        n = s["n"]
        t = s["all_serving_s"]
        rows.append([f"N={n}: every pod serves within {s['target_s']:g} s", t, verdict(t <= s["target_s"])])
        n429 = s["boot_429"] + s["steady_429"]
        rows.append([f"N={n}: 0 × 429 (boot + steady)", n429, verdict(n429 == 0)])
        rows.append(
            [f"N={n}: steady calls ≤ 120/h (fleet)", s["steady_per_h"], verdict(s["steady_per_h"] <= 120)]
        )
    print("targets (issue 13):\n")
    _common.print_table(["target", "measured", "verdict"], rows, digits=1)


def cold_phases(run: FleetRun, boot_s: float) -> list[float] | None:
    """One single-pod start's cold overhead by phase, from the sim's call log: exec to the first
    call, to the rent call, the boot's end to the next list (the one that sees it running), and that
    list to the first 200 through the proxy (nginx's reload and the benchmark's 0.02 s poll)."""
    pod = run.pods[0]
    t0 = pod.prov.started_at
    rents = [c["ts"] - t0 for c in run.calls if c["method"] == "PUT" and "/asks/" in c["path"]]
    if pod.serving_at is None or not run.calls or not rents:
        return None
    running = rents[0] + boot_s
    lists = [c["ts"] - t0 for c in run.calls if "/v1/instances" in c["path"] and c["ts"] - t0 >= running]
    if not lists:
        return None
    first = run.calls[0]["ts"] - t0
    overhead = pod.serving_at - t0 - boot_s
    return [first, rents[0], lists[0] - running, pod.serving_at - t0 - lists[0], overhead]


def print_cold_starts(runs: list[FleetRun], colds: list[FleetRun], opts: Options) -> None:
    """The cold overhead at N = 1 over every single-pod start of this run (the sweep's and the
    repeats'): each by phase, the median, and the target's verdict on the median."""
    starts = [r for r in runs if r.n == 1] + colds
    overheads = [
        p.serving_at - p.prov.started_at - opts.boot_delay_s
        for r in starts
        for p in r.pods
        if p.serving_at is not None
    ]
    if not overheads:
        return
    median = statistics.median(overheads)
    print(
        f"cold overhead beyond the boot, N = 1, {len(overheads)} starts (s): "
        + ", ".join(f"{o:.2f}" for o in overheads)
        + f"; median {median:.2f}, min {min(overheads):.2f}, max {max(overheads):.2f}\n"
    )
    phases = [row for r in starts if (row := cold_phases(r, opts.boot_delay_s)) is not None]
    if phases:
        rows = [[f"start {i + 1}", *row] for i, row in enumerate(phases)]
        rows.append(["median", *(statistics.median(col) for col in zip(*phases, strict=True))])
        cols = [
            "start",
            "exec → first call",
            "exec → rent",
            "boot end → next list",
            "list → first 200",
            "overhead",
        ]
        print("the cold overhead by phase (s; the boot runs from the rent call):\n")
        _common.print_table(cols, rows, digits=2)
    verdict = "met" if median <= 1.0 else "missed"
    _common.print_table(
        ["target", "measured", "verdict"],
        [[f"N=1: cold overhead beyond the boot ≤ 1 s (median of {len(overheads)})", median, verdict]],
        digits=2,
    )


COLORS = {
    "list": "#1f77b4",
    "search": "#ff7f0e",
    "rent": "#2ca02c",
    "whoami": "#9467bd",
    "template_get": "#8c564b",
    "template_post": "#e377c2",
    "show": "#17becf",
    "destroy": "#bcbd22",
}


def plot(runs: list[FleetRun], stats: list[dict[str, Any]], opts: Options, name: str) -> None:
    plt = _common.pyplot()
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 3.2 * len(runs)), squeeze=False)
    for ax, run, s in zip(axes[:, 0], runs, stats, strict=True):
        plot_one(ax, run, s)
    fig.suptitle(
        f"Vast API calls per 5 s seen by the simulator "
        f"(rate limits on, one key, boot {opts.boot_delay_s:g} s)",
        fontsize=10,
    )
    _common.save_plot(fig, name)


def plot_one(ax: Any, run: FleetRun, s: dict[str, Any], bin_s: float = 5.0) -> None:
    t0, t_end = run.t_start, run.snaps[2].at
    nbins = int((t_end - t0) // bin_s) + 1
    xs = [i * bin_s for i in range(nbins)]
    ok: dict[str, list[int]] = {}
    refused = [0] * nbins
    for e in run.calls:
        i = min(nbins - 1, max(0, int((e["ts"] - t0) // bin_s)))
        if e["status"] == 429:
            refused[i] += 1
        else:
            ok.setdefault(e["endpoint"], [0] * nbins)[i] += 1
    bottom = [0] * nbins
    for ep in sorted(ok, key=lambda k: (k != "list", k)):
        ax.bar(
            xs, ok[ep], bin_s * 0.9, bottom=bottom, align="edge", label=ep, color=COLORS.get(ep, "#7f7f7f")
        )
        bottom = [b + c for b, c in zip(bottom, ok[ep], strict=True)]
    if any(refused):
        ax.bar(xs, refused, bin_s * 0.9, bottom=bottom, align="edge", label="429", color="#d62728")
    ax.axvline(run.snaps[1].at - t0, color="grey", linestyle="--", linewidth=1)
    ready = sorted(p.serving_at - t0 for p in run.pods if p.serving_at is not None)
    ax2 = ax.twinx()
    ax2.step([0, *ready], range(len(ready) + 1), where="post", color="black", linewidth=1.2, label="serving")
    ax2.axvline(s["target_s"], color="black", linestyle=":", linewidth=1, label="target")
    ax2.set_ylim(0, max(1, run.n) * 1.05)
    ax2.set_ylabel("pods serving")
    ax2.grid(False)
    ax.set_title(
        f"N={run.n}: all serving {_common.fmt(s['all_serving_s'])} s (target {s['target_s']:g}); "
        f"429: {s['boot_429']} boot, {s['steady_429']} steady; steady {s['steady_per_h']:.0f} calls/h",
        fontsize=9,
    )
    ax.set_xlabel("seconds since the pods were started (dashed: end of the boot phase)")
    ax.set_ylabel("calls per 5 s")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right", ncol=2)
