"""Shared plumbing for the benchmarks: paths, machine facts, statistics, tables, plots, clean exits.

Benchmarks print markdown tables (pasted as is into ``docs/performance.md``) and save PNG plots under
``docs/img/``. They measure; they never assert on timings.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
IMG_DIR = ROOT / "docs" / "img"
BIN = Path(sys.executable).parent
PROVISIONER = str(BIN / "provisioner")
T = TypeVar("T")


# ---------------------------------------------------------------- clean exits


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM/SIGHUP, so that every ``finally`` cleans up as on Ctrl-C."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise Terminated(128 + signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP unwind the stack like Ctrl-C does (SIGINT already raises KeyboardInterrupt)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def main_guard(fn: Callable[[], None]) -> None:
    """Run a benchmark's main: clean-up happens in its ``finally`` blocks; Ctrl-C exits 130 quietly."""
    install_signal_handlers()
    try:
        fn()
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("\nterminated; everything started was stopped", file=sys.stderr)
        raise


# ---------------------------------------------------------------- processes


def stop_process(proc: subprocess.Popen[Any], *, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    """Signal one process we started, wait, then SIGKILL it (and its process group if it leads one)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)


def kill_pid_file_group(pid_file: Path) -> None:
    """Kill the process group led by the pid in ``pid_file`` (an nginx master we caused to start)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; RuntimeError with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, ValueError) as exc:
            last, value = exc, None
        if value:
            return value
        time.sleep(interval_s)
    raise RuntimeError(f"timed out after {timeout_s:g}s waiting for {what} (last error: {last})")


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


# ---------------------------------------------------------------- machine


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def _cpu_ticks_by_pid() -> dict[int, tuple[str, int]]:
    result: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = (entry / "stat").read_text()
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2 :].split()
            result[int(entry.name)] = (comm, int(fields[11]) + int(fields[12]))
    return result


def machine_ticks() -> tuple[int, int]:
    """(all, idle) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values), values[3] + values[4]


def busy_processes(interval_s: float = 1.0, min_cpu_pct: float = 5.0) -> tuple[float, list[str]]:
    """CPU busy % of the whole machine over ``interval_s``, and the processes using it (not us)."""
    try:
        before, (all0, idle0) = _cpu_ticks_by_pid(), machine_ticks()
        time.sleep(interval_s)
        after, (all1, idle1) = _cpu_ticks_by_pid(), machine_ticks()
    except OSError:
        return float("nan"), []
    hz = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    busy = []
    for pid, (comm, ticks) in after.items():
        if pid != me and pid in before:
            pct = (ticks - before[pid][1]) / hz / interval_s * 100
            if pct >= min_cpu_pct:
                busy.append((pct, f"{comm} {pct:.0f}%"))
    busy_pct = 100.0 * (1 - (idle1 - idle0) / max(1, all1 - all0))
    return busy_pct, [text for _, text in sorted(busy, reverse=True)[:6]]


def code_version() -> str:
    """The commit benchmarked, and whether the working tree had uncommitted changes to the product."""
    head = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "provisioner"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
    return f"commit {head}" + (" + uncommitted changes in provisioner/" if status.strip() else "")


def machine_summary() -> str:
    from provisioner.settings import find_nginx_binary

    nginx = find_nginx_binary()
    nginx_version = _first_line([nginx, "-v"]).replace("nginx version: ", "") if nginx else "none"
    busy_pct, busy = busy_processes()
    return (
        f"code: {code_version()}; "
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {nginx_version}; load average {load_average()}; "
        f"CPU busy {busy_pct:.0f}% over the last second before the start"
        + (f" (other processes: {', '.join(busy)})" if busy else " (no other busy process)")
    )


def header(title: str) -> None:
    print(f"\n## {title}\n", flush=True)
    print(machine_summary() + "\n", flush=True)


# ---------------------------------------------------------------- statistics and tables


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (numpy's default); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> str:
    """A markdown table; numbers right-aligned, floats with ``digits`` decimals."""
    cells = [[fmt(v, digits) for v in row] for row in rows]
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) or row[i] == "" for row in rows)
        for i in range(len(columns))
    ]
    align = ["---:" if numeric[i] else "---" for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> None:
    print(table(columns, rows, digits) + "\n", flush=True)


# ---------------------------------------------------------------- event loops


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, on uvloop where it is installed (``.[bench]``).

    For the load client: uvloop roughly halves its CPU per request, so on a machine with few cores the
    figures are the proxy's, not the load generator's queueing. Not for anything that must wait exactly:
    uvloop's clock moves in whole milliseconds (the GPU emulator stays on asyncio's loop for that).
    """
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(main)
    return uvloop.run(main)


# ---------------------------------------------------------------- plots


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 10, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def save_plot(fig: Any, name: str) -> Path:
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    path = IMG_DIR / name
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot saved: {path.relative_to(ROOT)}\n", flush=True)
    return path


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    print(f"({label}: {time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)
