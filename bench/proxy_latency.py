"""Benchmark 1: latency and throughput to a remote GPU — direct, through our nginx, through the baseline.

    .venv/bin/python -m bench.proxy_latency [--one-way-ms 25] [--delay-method auto|netns|relay] [--quick]

The simulated GPU app (``bench._gpu``) sits behind an emulated network delay (``bench._network``: netns +
tc netem, else a delaying relay; the output says which). Three paths to it:

* ``direct``    client -> delayed GPU
* ``ours``      client -> nginx with the config ``render_nginx_conf`` writes -> delayed GPU
* ``baseline``  client -> nginx with the earlier implementation's config (``bench._proxies``) -> delayed GPU

Closed-loop clients (1, then 16) on keepalive connections send ``POST /v1/completions`` with a 1 KB
JSON body; the GPU echoes it. The client's keepalive is on everywhere, so the differences come from the
proxy's hop to the GPU. The GPU app counts the TCP connections it accepts during the measured requests
(``new upstream TCP conns``: after a warm-up that lets a proxy fill its keepalive pool; each client's one
untimed first request is included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from bench import _common, _httpclient, _network, _proxies

PATHS = ("direct", "ours", "baseline")
BODY = json.dumps({"model": "bench", "prompt": "lorem ipsum " * 80, "max_tokens": 16}).encode()
TARGET = "/v1/completions"


def measure(host: str, port: int, workdir: str, plan: list[list[int]]) -> list[dict[str, Any]]:
    """Run where the client lives: start both nginx configs, load each path, return the raw figures."""
    state = Path(workdir)
    ours_port, base_port = _common.free_port(), _common.free_port()
    targets = {"direct": (host, port), "ours": ("127.0.0.1", ours_port), "baseline": ("127.0.0.1", base_port)}
    started: list[_proxies.Nginx] = []
    results: list[dict[str, Any]] = []
    try:
        conf = _proxies.ours_conf(state / "ours", ours_port, host, port)
        started.append(_proxies.Nginx(conf, state / "ours", [ours_port]))
        conf = _proxies.baseline_conf(state / "baseline", [(base_port, False)], host, port)
        started.append(_proxies.Nginx(conf, state / "baseline", [base_port]))
        for concurrency, total in plan:
            for name in PATHS:
                h, p = targets[name]
                warmup = max(3 * concurrency, 10)
                asyncio.run(_httpclient.closed_loop(h, p, concurrency, warmup, "POST", TARGET, BODY))
                asyncio.run(_httpclient.get_json(host, port, "/_bench/reset", "POST"))
                latencies, wall_s, errors = asyncio.run(
                    _httpclient.closed_loop(h, p, concurrency, total, "POST", TARGET, BODY)
                )
                counts: Any = asyncio.run(_httpclient.get_json(host, port, "/_bench/connections"))
                results.append(
                    {
                        "path": name,
                        "concurrency": concurrency,
                        "requests": total,
                        "latencies_s": latencies,
                        "wall_s": wall_s,
                        "errors": errors,
                        "upstream_connections": counts["connections"],
                        "upstream_requests": counts["requests"],
                    }
                )
                p50 = _common.percentile(latencies, 50) * 1000
                print(f"  {name:9} c={concurrency:<3} n={total:<5} p50={p50:6.1f} ms", flush=True)
    finally:
        for nginx in started:
            nginx.stop()
    return results


def report(results: list[dict[str, Any]], method: str, note: str, one_way_ms: float) -> None:
    rtt_ms = 2 * one_way_ms
    print(f"delay: {note}\n")
    rows = []
    by: dict[tuple[str, int], dict[str, float]] = {}
    for r in results:
        lat = r["latencies_s"]
        p50, p99 = _common.percentile(lat, 50) * 1000, _common.percentile(lat, 99) * 1000
        rps = r["requests"] / r["wall_s"]
        by[(r["path"], r["concurrency"])] = {"p50": p50, "p99": p99, "rps": rps}
        rows.append(
            [
                r["path"],
                r["concurrency"],
                r["requests"],
                p50,
                p99,
                sum(lat) / len(lat) * 1000,
                rps,
                r["upstream_connections"],
                r["errors"],
            ]
        )
    columns = [
        "path",
        "clients",
        "requests",
        "p50 ms",
        "p99 ms",
        "mean ms",
        "req/s",
        "new upstream TCP conns",
        "errors",
    ]
    _common.print_table(columns, rows)
    comparison = []
    for c in sorted({r["concurrency"] for r in results}):
        d, o, b = by[("direct", c)], by[("ours", c)], by[("baseline", c)]
        comparison.append(
            [
                c,
                o["p50"] - d["p50"],
                o["p99"] - d["p99"],
                b["p50"] - o["p50"],
                (b["p50"] - o["p50"]) / rtt_ms,
                o["rps"] / b["rps"],
                "met" if o["p50"] - d["p50"] <= 1.0 else "missed",
            ]
        )
    print(
        f"targets: ours within 1 ms of direct at p50; "
        f"about one RTT ({rtt_ms:g} ms) faster than the baseline\n"
    )
    _common.print_table(
        [
            "clients",
            "ours − direct p50 ms",
            "ours − direct p99 ms",
            "baseline − ours p50 ms",
            "… in RTTs",
            "ours/baseline req/s",
            "≤ 1 ms target",
        ],
        comparison,
        digits=2,
    )
    plot(results, f"{rtt_ms:g} ms RTT emulated by {'tc netem' if method == 'netns' else 'a delaying relay'}")


def plot(results: list[dict[str, Any]], subtitle: str) -> None:
    plt = _common.pyplot()
    colors = {"direct": "#555555", "ours": "#1f77b4", "baseline": "#d62728"}
    levels = sorted({r["concurrency"] for r in results})
    fig, axes = plt.subplots(1, len(levels) + 1, figsize=(5 * (len(levels) + 1), 4.2))
    for ax, c in zip(axes, levels, strict=False):
        for r in (r for r in results if r["concurrency"] == c):
            lat = sorted(x * 1000 for x in r["latencies_s"])
            ys = [(i + 1) / len(lat) for i in range(len(lat))]
            ax.plot(lat, ys, label=r["path"], color=colors[r["path"]], linewidth=1.8)
        ax.set_title(f"latency CDF, {c} client{'s' if c > 1 else ''}")
        ax.set_xlabel("request latency (ms)")
        ax.set_ylabel("fraction of requests")
        ax.legend(loc="lower right")
    ax = axes[-1]
    width = 0.27
    for i, name in enumerate(PATHS):
        values = [
            next(r["requests"] / r["wall_s"] for r in results if r["path"] == name and r["concurrency"] == c)
            for c in levels
        ]
        xs = [j + (i - 1) * width for j in range(len(levels))]
        bars = ax.bar(xs, values, width, label=name, color=colors[name])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(levels)), [f"{c} client{'s' if c > 1 else ''}" for c in levels])
    ax.set_ylabel("requests/s")
    ax.set_title("throughput")
    ax.legend()
    fig.suptitle(f"POST 1 KB JSON to the simulated GPU; {subtitle}", fontsize=10)
    _common.save_plot(fig, "proxy_latency.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one-way-ms", type=float, default=25.0, help="emulated delay each way (default 25)")
    parser.add_argument("--delay-method", choices=("auto", "netns", "relay"), default="auto")
    parser.add_argument("--quick", action="store_true", help="a few requests only (smoke test)")
    args = parser.parse_args()
    plan = [[1, 40], [16, 200]] if args.quick else [[1, 300], [16, 2000]]
    _common.header("Benchmark 1: proxy latency and throughput (direct vs ours vs baseline)")
    with _common.timed("benchmark 1"), _network.delayed_gpu(args.one_way_ms, args.delay_method) as gpu:
        print(f"delay method: {gpu.method}\n", flush=True)
        results = gpu.run_inner("bench.proxy_latency:measure", plan=plan)
        method, note = gpu.method, gpu.note
    report(results, method, note, args.one_way_ms)


if __name__ == "__main__":
    _common.main_guard(main)
