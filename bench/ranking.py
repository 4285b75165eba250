"""Benchmark 6: offer ranking time — ``selection.rank_offers`` on 10 000 offers (and how it scales).

    .venv/bin/python -m bench.ranking [--repeat 15]

Offers are the simulated marketplace's (``provisioner.sim.catalogue.build_catalogue``: 19 GPU models,
realistic prices, reliabilities, locations, bandwidths, hosts with several machines), parsed with
``model.Offer.from_api`` as the client parses a search answer. Two settings:

* ``defaults``: the default ``Criteria`` (no caps) and an empty ``Standing`` (no bans, no history);
* ``typical``: ``VAST_MAX_PRICE=1.0``, ``VAST_MIN_RELIABILITY=0.95``, ``VAST_PREFERRED_COUNTRIES=US,CA``,
  100 banned hosts and 100 banned machines, and reputation records for 1 000 hosts and 1 000 machines.

Each figure is the median of ``--repeat`` runs in this process (after one warm-up run); the parse time of
the search answer is shown beside it, since it is on the same path. Wall-clock time and this process's CPU
time (``time.process_time``) are both shown: on a machine shared with other work the wall-clock figures
include the time other processes held the CPU, the CPU-time ones do not.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from bench import _common
from provisioner import model, selection
from provisioner.sim import catalogue

SIZES = (100, 1_000, 2_500, 5_000, 10_000, 20_000)
HEADLINE = 10_000


def offers_of(n: int) -> tuple[list[dict[str, Any]], list[model.Offer]]:
    raw = [catalogue.price_offer(o, 20.0, "on-demand") for o in catalogue.build_catalogue(7, n, time.time())]
    return raw, [model.Offer.from_api(o) for o in raw]


def settings_for(offers: list[model.Offer]) -> dict[str, tuple[selection.Criteria, selection.Standing]]:
    rng = random.Random(11)
    hosts = sorted({o.host_id for o in offers if o.host_id is not None})
    machines = sorted({o.machine_id for o in offers if o.machine_id is not None})
    typical = selection.Criteria(
        ports_needed=1,
        disk_gb=20.0,
        max_price=1.0,
        min_reliability=0.95,
        preferred_countries=("US", "CA"),
    )
    standing = selection.Standing(
        banned_hosts=frozenset(rng.sample(hosts, min(100, len(hosts)))),
        banned_machines=frozenset(rng.sample(machines, min(100, len(machines)))),
        hosts={
            h: selection.Record(rng.uniform(0, 5), rng.uniform(0, 2))
            for h in rng.sample(hosts, min(1000, len(hosts)))
        },
        machines={
            m: selection.Record(rng.uniform(0, 5), rng.uniform(0, 2))
            for m in rng.sample(machines, min(1000, len(machines)))
        },
    )
    return {"defaults": (selection.Criteria(), selection.Standing()), "typical": (typical, standing)}


def timed_ms(fn: Any, repeat: int, cpu: list[float] | None = None) -> list[float]:
    """Wall-clock milliseconds of ``repeat`` calls (after a warm-up); CPU milliseconds go to ``cpu``."""
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - started) * 1000)
        if cpu is not None:
            cpu.append((time.process_time() - started_cpu) * 1000)
    return times


def run(repeat: int) -> list[dict[str, Any]]:
    rows = []
    for n in SIZES:
        raw, offers = offers_of(n)
        parse = timed_ms(lambda raw=raw: [model.Offer.from_api(o) for o in raw], max(3, repeat // 3))
        for name, (criteria, standing) in settings_for(offers).items():
            ranked = selection.rank_offers(offers, criteria, standing)
            cpu: list[float] = []
            times = timed_ms(
                lambda c=criteria, s=standing, o=offers: selection.rank_offers(o, c, s), repeat, cpu
            )
            rows.append(
                {
                    "n": n,
                    "setting": name,
                    "times_ms": times,
                    "cpu_ms": cpu,
                    "parse_ms": statistics.median(parse),
                    "rentable": len(ranked),
                }
            )
        print(f"  {n:>6} offers done", flush=True)
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    med = statistics.median
    headline = [r for r in rows if r["n"] == HEADLINE]
    print(f"{HEADLINE:,} offers, `selection.rank_offers`:\n")
    _common.print_table(
        [
            "setting",
            "offers",
            "rentable after checks",
            "median ms",
            "p95 ms",
            "min ms",
            "median CPU ms",
            "µs per offer",
            "parse ms (Offer.from_api)",
        ],
        [
            [
                r["setting"],
                r["n"],
                r["rentable"],
                med(r["times_ms"]),
                _common.percentile(r["times_ms"], 95),
                min(r["times_ms"]),
                med(r["cpu_ms"]),
                med(r["times_ms"]) * 1000 / r["n"],
                r["parse_ms"],
            ]
            for r in headline
        ],
    )
    print("scaling (median ms):\n")
    sizes = sorted({r["n"] for r in rows})
    settings = sorted({r["setting"] for r in rows})
    table_rows = []
    for n in sizes:
        row: list[Any] = [n]
        for s in settings:
            row.append(med(next(r["times_ms"] for r in rows if r["n"] == n and r["setting"] == s)))
        row.append(next(r["parse_ms"] for r in rows if r["n"] == n))
        table_rows.append(row)
    _common.print_table(["offers", *[f"rank, {s} ms" for s in settings], "parse ms"], table_rows, digits=2)
    plot(rows)


def plot(rows: list[dict[str, Any]]) -> None:
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    med = statistics.median
    for setting, color in (("defaults", "#1f77b4"), ("typical", "#ff7f0e")):
        pts = sorted((r["n"], med(r["times_ms"])) for r in rows if r["setting"] == setting)
        ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"rank_offers, {setting}", color=color
        )
    pts = sorted({(r["n"], r["parse_ms"]) for r in rows})
    ax.plot(
        [p[0] for p in pts],
        [p[1] for p in pts],
        marker="s",
        linestyle="--",
        color="#7f7f7f",
        label="Offer.from_api (parse)",
    )
    ax.axvline(HEADLINE, color="black", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offers")
    ax.set_ylabel("milliseconds (median)")
    ax.set_title("offer ranking time")
    ax.legend(fontsize=8)
    _common.save_plot(fig, "ranking.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per figure (default 15)")
    args = parser.parse_args()
    _common.header("Benchmark 6: offer ranking time")
    with _common.timed("benchmark 6"):
        rows = run(args.repeat)
    report(rows)


if __name__ == "__main__":
    _common.main_guard(main)
