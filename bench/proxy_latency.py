"""Benchmark 1: the proxy at serving concurrency — direct vs ours vs our earlier config, and /healthz.

    .venv/bin/python -m bench.proxy_latency [--one-way-ms 25] [--delay-method auto|netns|line|relay]
                                            [--duration 1.5] [--rounds 10] [--quick] [--no-pin]
                                            [--nginx-workers 1] [--repeat 1] [--only burst]

Part 1, the sweep (``bench._sweep``): a GPU app behind an emulated network delay (``bench._network``:
the simulated GPU app behind netns + tc netem, else the light GPU emulator ``bench._linegpu``, which
holds its own output for the round trip; the output says which). nginx runs on CPUs apart from the
client and the GPU (``bench._cpus``; the output says where). Four paths:

* ``direct``   client -> delayed GPU
* ``l4``       client -> nginx as a plain TCP pass-through (``stream`` module) on the proxy's CPU ->
  delayed GPU: the control. The CPU placement changes how the client's and the GPU's work interleave
  on their shared CPU, for any path through another CPU; ``ours - l4`` is what HTTP proxying adds
* ``ours``     client -> nginx with the config ``render_nginx_conf`` writes now -> delayed GPU
* ``earlier``  client -> nginx with the config it wrote before issue 14 (``bench._proxies.earlier_conf``:
  ``keepalive 32``) -> delayed GPU

Closed-loop clients (1, 16, 64, 256) sending single requests (``POST`` 1 KB, echoed) or opening token
streams (SSE; time to the first event), and bursts (64 and 256 requests at once after 1 s idle), each
with p50, p99 and the TCP connections the GPU accepted during the measured part.

Part 2 (``bench._healthz_load``): ``/healthz`` latency on a loop that also runs ``NginxProcess`` (and so
copies nginx's access log) while the proxy carries 2,000 requests/s, then as many as the clients manage,
against the same load sent straight to the upstream; with CPU per request of that process and of nginx's
worker. Only 127.0.0.1; the whole run takes about 2 minutes.

``--repeat N`` runs the sweep N times and ends with how many passes met the target per cell, and the
spread of ours - direct and ours - L4: one pass's p99 of a cell is a handful of requests. ``--only``
runs some kinds of cells (``single``, ``stream``, ``burst``) and skips part 2 and the plot.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import _common, _cpus, _healthz_load, _network, _sweep

LEVELS = [1, 16, 64, 256]
BURSTS = [64, 256]
KINDS = ("single", "stream", "burst")
HEALTHZ_RATES = [2000.0, 0.0]
HEALTHZ_CLIENTS = 32
#: the issue's target: ours within this many ms of direct at p50 and p99
TARGET_MS = 2.0


def _stats(r: dict[str, Any]) -> tuple[float, float]:
    lat = r["latencies_s"]
    return _common.percentile(lat, 50) * 1000, _common.percentile(lat, 99) * 1000


def _cells(results: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, dict[str, Any]]]:
    """The results per cell (kind, clients), in the order they ran, each by path."""
    cells: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["kind"], r["clients"]), {})[r["path"]] = r
    return cells


def _met(paths: dict[str, dict[str, Any]]) -> bool:
    """The issue's target for one cell: ours within ``TARGET_MS`` of direct at p50 and p99, 0 new."""
    (dp50, dp99), (op50, op99) = _stats(paths["direct"]), _stats(paths["ours"])
    within = op50 - dp50 <= TARGET_MS and op99 - dp99 <= TARGET_MS
    return within and paths["ours"]["new_upstream"] == 0


def report_sweep(results: list[dict[str, Any]], note: str) -> None:
    print(f"delay: {note}\n")
    rows = []
    for (kind, clients), paths in _cells(results).items():
        d, l4, o, e = (paths[p] for p in _sweep.PATHS)
        (dp50, dp99), (lp50, lp99), (op50, op99), (ep50, ep99) = (_stats(r) for r in (d, l4, o, e))
        rows.append(
            [
                kind,
                clients,
                len(o["latencies_s"]),
                f"{dp50:.1f} / {dp99:.1f}",
                f"{op50:.1f} / {op99:.1f}",
                f"{ep50:.1f} / {ep99:.1f}",
                f"{lp50:.1f} / {lp99:.1f}",
                f"{op50 - dp50:+.1f} / {op99 - dp99:+.1f}",
                f"{op50 - lp50:+.1f} / {op99 - lp99:+.1f}",
                o["new_upstream"],
                e["new_upstream"],
                d["errors"] + l4["errors"] + o["errors"] + e["errors"],
                "met" if _met(paths) else "missed",
            ]
        )
    columns = [
        "load",
        "clients",
        "requests (ours)",
        "direct p50 / p99 ms",
        "ours p50 / p99 ms",
        "earlier p50 / p99 ms",
        "L4 control p50 / p99 ms",
        "ours − direct p50 / p99 ms",
        "ours − L4 p50 / p99 ms",
        "new upstream conns, ours",
        "… earlier",
        "errors",
        f"ours ≤ direct + {TARGET_MS:g} ms, 0 new",
    ]
    print("stream rows: time to the first event; burst rows: all requests of the measured bursts\n")
    _common.print_table(columns, rows)


def _spread(values: list[float]) -> str:
    return f"{min(values):+.1f} … {_common.percentile(values, 50):+.1f} … {max(values):+.1f}"


def report_repeats(passes: list[list[dict[str, Any]]]) -> None:
    """Per cell over every pass: how many met the target, and the spread of ours − direct and
    ours − L4 (min … median … max)."""
    per_pass = [_cells(results) for results in passes]
    rows = []
    for cell in per_pass[0]:
        runs = [cells[cell] for cells in per_pass]
        diffs: dict[str, list[list[float]]] = {"direct": [[], []], "l4": [[], []]}
        for paths in runs:
            ours = _stats(paths["ours"])
            for base, (p50s, p99s) in diffs.items():
                other = _stats(paths[base])
                p50s.append(ours[0] - other[0])
                p99s.append(ours[1] - other[1])
        met = sum(_met(paths) for paths in runs)
        new = sum(paths["ours"]["new_upstream"] for paths in runs)
        rows.append([*cell, f"{met} of {len(runs)}", new, *(_spread(v) for d in diffs.values() for v in d)])
    print(f"\nthe same cells over {len(passes)} passes (min … median … max, ms)\n")
    columns = [
        "load",
        "clients",
        f"passes ours ≤ direct + {TARGET_MS:g} ms, 0 new",
        "new upstream conns, ours, all passes",
        "ours − direct p50",
        "ours − direct p99",
        "ours − L4 p50",
        "ours − L4 p99",
    ]
    _common.print_table(columns, rows)


def report_healthz(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        probes = r["probes_s"]
        rows.append(
            [
                f"{r['rate']:.0f}" if r["rate"] else "max",
                r["path"],
                r["requests"] / r["wall_s"],
                _common.percentile(probes, 50) * 1000,
                _common.percentile(probes, 99) * 1000,
                max(probes) * 1000 if probes else float("nan"),
                r["probe_failures"],
                r["cpu_pod_s"] / max(r["requests"], 1) * 1e6,
                r["cpu_nginx_s"] / max(r["requests"], 1) * 1e6,
                r["errors"],
            ]
        )
    print(
        f"/healthz under load: {HEALTHZ_CLIENTS} clients, GETs to a fast upstream on loopback; "
        "the loop pod's CPU includes answering the probes\n"
    )
    columns = [
        "offered req/s",
        "path",
        "req/s",
        "/healthz p50 ms",
        "/healthz p99 ms",
        "/healthz max ms",
        "probe failures",
        "loop pod CPU µs/req",
        "nginx worker CPU µs/req",
        "errors",
    ]
    _common.print_table(columns, rows)


def plot(results: list[dict[str, Any]], subtitle: str) -> None:
    plt = _common.pyplot()
    colors = {"direct": "#555555", "l4": "#aaaaaa", "ours": "#1f77b4", "earlier": "#d62728"}
    cells = list(dict.fromkeys((r["kind"], r["clients"]) for r in results))
    by = {(r["kind"], r["clients"], r["path"]): r for r in results}
    labels = [f"{kind}\n{clients}" for kind, clients in cells]
    fig, axes = plt.subplots(3, 1, figsize=(12, 10), sharex=True)
    width = 0.2
    for ax, (title, index) in zip(axes, (("p50 ms", 0), ("p99 ms", 1)), strict=False):
        for i, name in enumerate(_sweep.PATHS):
            xs = [j + (i - 1.5) * width for j in range(len(cells))]
            values = [_stats(by[(k, c, name)])[index] for k, c in cells]
            ax.bar(xs, values, width, label=name, color=colors[name])
        ax.set_ylabel(title)
        ax.legend(loc="upper left")
    ax = axes[2]
    for i, name in enumerate(_sweep.PATHS):
        xs = [j + (i - 1.5) * width for j in range(len(cells))]
        bars = ax.bar(xs, [by[(k, c, name)]["new_upstream"] for k, c in cells], width, color=colors[name])
        ax.bar_label(bars, fontsize=7)
    ax.set_ylabel("new upstream TCP conns")
    ax.set_xticks(range(len(cells)), labels)
    ax.set_xlabel(
        "load (single requests, token streams: time to first event, bursts after 1 s idle) and clients"
    )
    fig.suptitle(
        f"direct vs L4 control vs ours vs the earlier config (keepalive 32); {subtitle}", fontsize=10
    )
    _common.save_plot(fig, "proxy_latency.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one-way-ms", type=float, default=25.0, help="emulated delay each way (default 25)")
    parser.add_argument("--delay-method", choices=_network.METHODS, default="auto")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per steady cell (default 1.5)")
    # 10, not 3: a burst's p50 and p99 come from one burst's requests, which share its fate (how the
    # client's sending and nginx's work interleave that time); three bursts left a cell to one bad burst
    parser.add_argument("--rounds", type=int, default=10, help="measured bursts per burst cell (default 10)")
    parser.add_argument("--quick", action="store_true", help="a few short cells only (smoke test)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="passes of the sweep, each reported, then a summary (default 1)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=KINDS,
        help="only these sweep cells (repeatable); skips the /healthz part",
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="nginx on CPUs apart from the client and the GPU emulator (bench/_cpus.py; default on)",
    )
    parser.add_argument(
        "--nginx-workers",
        type=int,
        default=1,
        help="NGINX_WORKER_PROCESSES for ours (default 1, the product's default); give it CPUs to match",
    )
    args = parser.parse_args()
    levels, bursts, duration = (LEVELS, BURSTS, args.duration) if not args.quick else ([1, 16], [16], 0.4)
    _common.header("Benchmark 1: the proxy at serving concurrency (direct vs ours vs earlier config)")
    with (
        _common.timed("benchmark 1"),
        _network.delayed_gpu(args.one_way_ms, args.delay_method, args.pin) as gpu,
    ):
        print(f"delay method: {gpu.method}\n", flush=True)
        passes = []
        for n in range(args.repeat):
            if args.repeat > 1:
                print(f"pass {n + 1} of {args.repeat}", flush=True)
            passes.append(
                gpu.run_inner(
                    "bench._sweep:measure",
                    levels=levels,
                    bursts=bursts,
                    duration_s=duration,
                    rounds=args.rounds if not args.quick else 1,
                    idle_s=1.0,
                    pin=args.pin,
                    workers=args.nginx_workers,
                    kinds=tuple(args.only or KINDS),
                )
            )
        method, note = gpu.method, gpu.note
    workers = f"ours with {args.nginx_workers} nginx worker(s)"
    for n, sweep in enumerate(passes):
        if len(passes) > 1:
            print(f"\npass {n + 1} of {len(passes)}")
        report_sweep(sweep, f"{note}\nCPUs: {_cpus.describe(args.pin)}; {workers}")
    if len(passes) > 1:
        report_repeats(passes)
    if args.only:  # a part of the sweep: no /healthz part, and the full sweep's plot is kept
        return
    report_healthz(_healthz_load.measure(3.0 if not args.quick else 1.0, HEALTHZ_CLIENTS, HEALTHZ_RATES))
    plot(passes[0], f"{2 * args.one_way_ms:g} ms RTT emulated by {_network.EMULATORS[method]}")


if __name__ == "__main__":
    _common.main_guard(main)
