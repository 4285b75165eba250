"""Benchmark 2: server-sent events through the proxies — time to first event and gaps between events.

    .venv/bin/python -m bench.streaming [--one-way-ms 25] [--delay-method auto|netns|line|relay] [--quick]

Same set-up as benchmark 1 (``bench.proxy_latency``): a GPU app behind an emulated network delay (one
stream at a time, so no CPU pinning), reached directly, through our nginx config and through the earlier
implementation's config. Each
stream is ``GET /stream?n=50&interval_ms=20`` (an event every 20 ms), one stream after another on a
keepalive client connection. The GPU app writes ``X-Accel-Buffering: no`` on its streams, which nginx
honours even with ``proxy_buffering on``; many inference servers do not send it, so a fourth path,
``baseline (no X-Accel)``, is the baseline config told to ignore that header (``proxy_ignore_headers``).
One short untimed stream per path comes first (the GPU app's first stream ever is ~20 ms slower).

Per path: time from sending the request to the first complete event (TTFE), the gaps between events at
the client (ideal: 20 ms), and the delivery lag (receive time minus the time the GPU wrote into the event).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench import _common, _httpclient, _network, _proxies

PATHS = ("direct", "ours", "baseline", "baseline (no X-Accel)")
EVENTS = 50
INTERVAL_MS = 20


async def _streams(host: str, port: int, count: int) -> list[dict[str, Any]]:
    conn = _httpclient.Connection(host, port)
    try:
        await conn.request("GET", "/health")  # untimed: the client's connection is set up
        await conn.stream("/stream?n=2&interval_ms=0")  # untimed: the app's first stream is slower
        results = []
        for _ in range(count):
            result = await conn.stream(f"/stream?n={EVENTS}&interval_ms={INTERVAL_MS}")
            results.append(
                {
                    "status": result.status,
                    "sent_at": result.sent_at,
                    "event_at": result.event_at,
                    "lag_s": result.lag_s,
                }
            )
        return results
    finally:
        await conn.close()


def measure(host: str, port: int, workdir: str, streams: int) -> dict[str, list[dict[str, Any]]]:
    """Run where the client lives: both nginx configs up, ``streams`` streams per path."""
    state = Path(workdir)
    ours_port, base_port, raw_port = (_common.free_port() for _ in range(3))
    targets = {
        "direct": (host, port),
        "ours": ("127.0.0.1", ours_port),
        "baseline": ("127.0.0.1", base_port),
        "baseline (no X-Accel)": ("127.0.0.1", raw_port),
    }
    started: list[_proxies.Nginx] = []
    try:
        started.append(
            _proxies.Nginx(
                _proxies.ours_conf(state / "ours", ours_port, host, port), state / "ours", [ours_port]
            )
        )
        conf = _proxies.baseline_conf(state / "baseline", [(base_port, False), (raw_port, True)], host, port)
        started.append(_proxies.Nginx(conf, state / "baseline", [base_port, raw_port]))
        results = {}
        for name in PATHS:
            results[name] = _common.run_async(_streams(*targets[name], streams))
            ttfe = [(s["event_at"][0] - s["sent_at"]) * 1000 for s in results[name] if s["event_at"]]
            print(
                f"  {name:22} {streams} streams, TTFE p50 {_common.percentile(ttfe, 50):6.1f} ms", flush=True
            )
        return results
    finally:
        for nginx in started:
            nginx.stop()


def _figures(streams: list[dict[str, Any]]) -> dict[str, Any]:
    ttfe = [(s["event_at"][0] - s["sent_at"]) * 1000 for s in streams if s["event_at"]]
    gaps = [(b - a) * 1000 for s in streams for a, b in zip(s["event_at"], s["event_at"][1:], strict=False)]
    lags = [x * 1000 for s in streams for x in s["lag_s"]]
    events = sum(len(s["event_at"]) for s in streams)
    return {
        "ttfe": ttfe,
        "gaps": gaps,
        "lags": lags,
        "events": events,
        "bad": sum(s["status"] != 200 for s in streams),
    }


def report(results: dict[str, list[dict[str, Any]]], method: str, note: str, one_way_ms: float) -> None:
    print(f"delay: {note}\n")
    figs = {name: _figures(streams) for name, streams in results.items()}
    rows = []
    for name, f in figs.items():
        p = _common.percentile
        rows.append(
            [
                name,
                len(results[name]),
                f["events"],
                p(f["ttfe"], 50),
                p(f["ttfe"], 99),
                p(f["gaps"], 50),
                p(f["gaps"], 99),
                max(f["gaps"]) if f["gaps"] else float("nan"),
                p(f["lags"], 50),
                p(f["lags"], 99),
            ]
        )
    _common.print_table(
        [
            "path",
            "streams",
            "events",
            "TTFE p50 ms",
            "TTFE p99 ms",
            "gap p50 ms",
            "gap p99 ms",
            "gap max ms",
            "lag p50 ms",
            "lag p99 ms",
        ],
        rows,
    )
    d, o = figs["direct"], figs["ours"]
    p = _common.percentile
    checks: list[list[Any]] = [
        ["TTFE p50", p(o["ttfe"], 50) - p(d["ttfe"], 50)],
        ["TTFE p99", p(o["ttfe"], 99) - p(d["ttfe"], 99)],
        ["gap p99", p(o["gaps"], 99) - p(d["gaps"], 99)],
        ["lag p50", p(o["lags"], 50) - p(d["lags"], 50)],
        ["lag p99", p(o["lags"], 99) - p(d["lags"], 99)],
    ]
    for row in checks:
        row.append("met" if row[1] <= 5.0 else "missed")
    print("target: ours within 5 ms of direct (negative: ours was faster)\n")
    _common.print_table(["figure", "ours − direct ms", "within 5 ms"], checks, digits=2)
    plot(
        results,
        figs,
        f"{2 * one_way_ms:g} ms RTT emulated by {_network.EMULATORS[method]}",
    )


def plot(results: dict[str, list[dict[str, Any]]], figs: dict[str, Any], subtitle: str) -> None:
    plt = _common.pyplot()
    colors = {
        "direct": "#555555",
        "ours": "#1f77b4",
        "baseline": "#d62728",
        "baseline (no X-Accel)": "#ff9896",
    }
    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    labels = [n.replace(" (", "\n(") for n in names]
    ax = axes[0]
    p50 = [_common.percentile(figs[n]["ttfe"], 50) for n in names]
    p99 = [_common.percentile(figs[n]["ttfe"], 99) for n in names]
    bars = ax.bar(range(len(names)), p50, 0.6, color=[colors[n] for n in names], label="p50")
    ax.scatter(range(len(names)), p99, marker="_", s=400, color="black", label="p99", zorder=3)
    ax.bar_label(bars, fmt="%.0f ms", fontsize=8, padding=9)
    ax.set_xticks(range(len(names)), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("time to first event (ms, log scale)")
    ax.set_title("time to first event")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    box = ax.boxplot([figs[n]["gaps"] for n in names], patch_artist=True, widths=0.6, whis=(1, 99), sym=".")
    for patch, name in zip(box["boxes"], names, strict=False):
        patch.set_facecolor(colors[name])
    ax.axhline(INTERVAL_MS, color="black", linestyle=":", linewidth=1, label=f"sent every {INTERVAL_MS} ms")
    ax.set_xticks(range(1, len(names) + 1), labels, fontsize=8)
    ax.set_ylim(bottom=-2)
    ax.set_ylabel("gap between events at the client (ms)")
    ax.set_title("gaps between events (whiskers: p1–p99)")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[2]
    for name in names:
        s = results[name][len(results[name]) // 2]
        xs = [(t - s["sent_at"]) * 1000 for t in s["event_at"]]
        ax.plot(xs, range(1, len(xs) + 1), marker=".", markersize=3, label=name, color=colors[name])
    ax.set_xlabel("time since the request was sent (ms)")
    ax.set_ylabel("events received")
    ax.set_title("one stream, event by event")
    ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"SSE, {EVENTS} events every {INTERVAL_MS} ms; {subtitle}", fontsize=10)
    _common.save_plot(fig, "streaming.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one-way-ms", type=float, default=25.0, help="emulated delay each way (default 25)")
    parser.add_argument("--delay-method", choices=_network.METHODS, default="auto")
    parser.add_argument("--streams", type=int, default=15, help="streams per path (default 15)")
    parser.add_argument("--quick", action="store_true", help="3 streams per path (smoke test)")
    args = parser.parse_args()
    _common.header("Benchmark 2: streaming (SSE) time to first event and gaps")
    with (
        _common.timed("benchmark 2"),
        _network.delayed_gpu(args.one_way_ms, args.delay_method, pin=False) as gpu,
    ):
        print(f"delay method: {gpu.method}\n", flush=True)
        results = gpu.run_inner("bench.streaming:measure", streams=3 if args.quick else args.streams)
        method, note = gpu.method, gpu.note
    report(results, method, note, args.one_way_ms)


if __name__ == "__main__":
    _common.main_guard(main)
