"""Benchmark 1's measurements: a concurrency sweep and bursts, direct vs ours vs our earlier config.

Runs where the client lives (``bench._network.DelayedGpu.run_inner``). Every cell opens its client
connections first and keeps them (clients with keepalive, as inference clients are), warms up, then
resets the GPU app's connection counter, measures, and reads the counter: ``new_upstream`` is the number
of TCP connections the GPU accepted during the measured part, each of which cost a handshake (one RTT).

* steady cells: ``clients`` closed-loop clients for ``duration_s``; ``single`` requests (``POST`` 1 KB,
  echoed) or token ``stream`` s (SSE, ``STREAM_EVENTS`` events ``STREAM_INTERVAL_MS`` apart; the latency
  is the time to the first event);
* burst cells: ``clients`` requests sent at the same moment, ``rounds`` times, each after ``idle_s``
  of silence (the first burst, a warm-up, is not counted).
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path
from typing import Any

from bench import _common, _cpus, _httpclient, _proxies

#: ``l4``: a plain TCP pass-through on the proxy's CPU, the control for what the CPU placement itself
#: does to a path through that CPU (``ours`` minus ``l4`` is what HTTP proxying adds)
PATHS = ("direct", "l4", "ours", "earlier")
BODY = json.dumps({"model": "bench", "prompt": "lorem ipsum " * 80, "max_tokens": 16}).encode()
TARGET = "/v1/completions"
STREAM_EVENTS = 8
STREAM_INTERVAL_MS = 10
STREAM_TARGET = f"/stream?n={STREAM_EVENTS}&interval_ms={STREAM_INTERVAL_MS}"
WARMUP_S = 0.6


async def _counter(gpu: tuple[str, int], action: str) -> int:
    """Reset the GPU app's connection counter, or read it."""
    if action == "reset":
        await _httpclient.get_json(*gpu, "/_bench/reset", "POST")
        return 0
    counts: Any = await _httpclient.get_json(*gpu, "/_bench/connections")
    return int(counts["connections"])


async def _steady(
    target: tuple[str, int], gpu: tuple[str, int], clients: int, duration_s: float, stream: bool
) -> tuple[_httpclient.Cell, int]:
    stream_target = STREAM_TARGET if stream else None
    body = None if stream else BODY
    conns = await _httpclient.open_all(*target, clients)
    try:
        await _httpclient.run_for(conns, WARMUP_S, TARGET, body, stream_target)
        await _counter(gpu, "reset")
        cell = await _httpclient.run_for(conns, duration_s, TARGET, body, stream_target)
        return cell, await _counter(gpu, "read")
    finally:
        await _httpclient.close_all(conns)


async def _bursts(
    target: tuple[str, int], gpu: tuple[str, int], clients: int, rounds: int, idle_s: float
) -> tuple[_httpclient.Cell, int]:
    conns = await _httpclient.open_all(*target, clients)
    try:
        await _httpclient.burst(conns, TARGET, BODY)  # warm-up: fills a pool that can hold it
        await _counter(gpu, "reset")
        total = _httpclient.Cell()
        for _ in range(rounds):
            await asyncio.sleep(idle_s)
            cell = await _httpclient.burst(conns, TARGET, BODY)
            total.latencies_s += cell.latencies_s
            total.errors += cell.errors
            total.wall_s += cell.wall_s
        return total, await _counter(gpu, "read")
    finally:
        await _httpclient.close_all(conns)


def _record(name: str, kind: str, clients: int, cell: _httpclient.Cell, new: int) -> dict[str, Any]:
    """One cell's figures (printed as they come, so a long run shows progress)."""
    p50 = _common.percentile(cell.latencies_s, 50) * 1000
    p99 = _common.percentile(cell.latencies_s, 99) * 1000
    print(
        f"  {kind:6} {name:8} c={clients:<3} n={len(cell.latencies_s):<5} "
        f"p50={p50:6.1f} p99={p99:6.1f} ms new={new} err={cell.errors}",
        flush=True,
    )
    return {
        "path": name,
        "kind": kind,
        "clients": clients,
        "latencies_s": cell.latencies_s,
        "wall_s": cell.wall_s,
        "errors": cell.errors,
        "new_upstream": new,
    }


def _start_proxies(
    state: Path, host: str, port: int, pin: bool, workers: int
) -> tuple[list[_proxies.Nginx], dict[str, int]]:
    """Ours (with ``workers`` nginx workers), the earlier config and the L4 control, each on a port of
    its own, on the proxy's CPUs."""
    confs = {
        "ours": partial(_proxies.ours_conf, workers=workers),
        "earlier": _proxies.earlier_conf,
        "l4": _proxies.passthrough_conf,
    }
    started: list[_proxies.Nginx] = []
    ports: dict[str, int] = {}
    try:
        for name, conf in confs.items():
            ports[name] = _common.free_port()
            text = conf(state / name, ports[name], host, port)
            started.append(_proxies.Nginx(text, state / name, [ports[name]]))
            _cpus.pin("proxy", started[-1].pids(), pin)
    except BaseException:
        for nginx in started:
            nginx.stop()
        raise
    return started, ports


def measure(
    host: str,
    port: int,
    workdir: str,
    levels: list[int],
    bursts: list[int],
    duration_s: float,
    rounds: int,
    idle_s: float,
    pin: bool = True,
    workers: int = 1,
    kinds: tuple[str, ...] = ("single", "stream", "burst"),
) -> list[dict[str, Any]]:
    """Start the proxies, run every cell of ``kinds`` on every path; the raw figures.

    With ``pin``, this process (the client) and the nginx run on CPUs of their own (``bench._cpus``).
    """
    results: list[dict[str, Any]] = []
    with _cpus.as_role("client", pin):
        started, ports = _start_proxies(Path(workdir), host, port, pin, workers)
        targets = {"direct": (host, port), **{name: ("127.0.0.1", p) for name, p in ports.items()}}
        try:
            steady = [kind for kind in ("single", "stream") if kind in kinds]
            cells: list[tuple[str, int]] = [(kind, c) for kind in steady for c in levels]
            cells += [("burst", n) for n in bursts if "burst" in kinds]
            for kind, clients in cells:
                for name in PATHS:
                    if kind == "burst":
                        run = _bursts(targets[name], (host, port), clients, rounds, idle_s)
                    else:
                        run = _steady(targets[name], (host, port), clients, duration_s, kind == "stream")
                    cell, new = _common.run_async(run)
                    results.append(_record(name, kind, clients, cell, new))
        finally:
            for nginx in started:
                nginx.stop()
    return results
