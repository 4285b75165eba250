"""Which CPUs the parts of benchmark 1 run on: the proxy apart from its clients and its GPU.

In a deployment the clients are other pods and the GPU is another machine; only nginx runs in the pod.
On a machine with few cores, a load generator and a GPU emulator that share nginx's core make the
proxied path queue behind them, on top of the proxy's own cost: that is the benchmark machine's figure,
not the proxy's. So, by role:

* 3 CPUs or more: the client on the first, the GPU on the second, the proxies on the rest;
* 2 CPUs: the client and the GPU on the first, the proxies on the second (the direct path leaves the
  second idle; both paths pay the same for the shared first);
* 1 CPU: no pinning.

``--no-pin`` on ``bench.proxy_latency`` turns it off.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

ROLES = ("client", "gpu", "proxy")
#: the CPUs this process could use when it started (``as_role`` narrows its own set later); none
#: where the OS has no affinity calls (macOS), and then nothing is pinned
_AVAILABLE = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def plan() -> dict[str, set[int]]:
    """Role -> CPUs, from the CPUs this process could use at its start; empty if nothing to separate."""
    cpus = _AVAILABLE
    if len(cpus) < 2:
        return {}
    if len(cpus) == 2:
        return {"client": {cpus[0]}, "gpu": {cpus[0]}, "proxy": {cpus[1]}}
    return {"client": {cpus[0]}, "gpu": {cpus[1]}, "proxy": set(cpus[2:])}


def pin(role: str, pids: Iterable[int], enabled: bool = True) -> None:
    """Move ``pids`` (0: this process) onto the CPUs of ``role``; a vanished process is skipped."""
    cpus = plan().get(role) if enabled else None
    if not cpus:
        return
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cpus)
        except ProcessLookupError:
            continue
        except OSError as exc:  # e.g. a cpuset that does not allow those CPUs
            raise RuntimeError(f"cannot pin pid {pid} to CPUs {sorted(cpus)}: {exc}; try --no-pin") from exc


@contextlib.contextmanager
def as_role(role: str, enabled: bool = True) -> Iterator[None]:
    """This process on the CPUs of ``role`` for the block (what it starts inherits them); then as before."""
    if not plan().get(role) or not enabled:
        yield
        return
    before = os.sched_getaffinity(0)
    pin(role, [0])
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def describe(enabled: bool = True) -> str:
    """One line for the report."""
    placement = plan() if enabled else {}
    if not placement:
        why = "--no-pin" if not enabled else "one CPU, or no affinity calls on this OS"
        return f"no CPU pinning ({why}): the client, the GPU emulator and nginx share the CPUs"
    names = {"client": "the client", "gpu": "the GPU emulator", "proxy": "nginx"}
    by_cpus: dict[str, list[str]] = {}
    for role in ROLES:
        cpus = ",".join(str(c) for c in sorted(placement[role]))
        by_cpus.setdefault(cpus, []).append(names[role])
    parts = [f"{' and '.join(roles)} on CPU {cpus}" for cpus, roles in by_cpus.items()]
    return "pinned: " + "; ".join(parts) + " (in a deployment only nginx runs in the pod)"
