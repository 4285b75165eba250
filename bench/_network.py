"""A "remote" GPU behind an emulated network delay, and a place to run the client and the proxies.

Three methods; ``auto`` takes the first that works of ``netns`` and ``line``:

``netns``  two network namespaces created here (``vppb<pid>p``: the pod, where the client and nginx run;
           ``vppb<pid>g``: the GPU), joined by a veth pair with private addresses that exist only inside
           them, and ``tc netem`` delaying each direction. Needs root, ``ip``, ``tc`` and a kernel with
           netem. Nothing outside the two namespaces is touched; both are deleted afterwards, after every
           process started in them has been stopped.
``line``   ``bench._linegpu`` on loopback: a light GPU emulator (one asyncio process, 30-60 µs per
           request) that holds everything it writes for one round trip, and a new connection's first
           answer for one more (the handshake). Cheap enough that 256 clients through nginx fit on two
           cores.
``relay``  the simulated GPU app (``bench._gpu``, uvicorn) on loopback behind ``bench._relay``, a TCP
           relay that holds each chunk for the one-way delay in each direction (and one round trip for
           a new connection's handshake). ~300 µs of Python per request in the two: on few cores the
           emulator, not the proxy, sets the latency from 64 clients up. Only on request.

The measuring code runs in the pod's namespace: in a subprocess (``ip netns exec ... python -m
bench._inner``) for ``netns``, in this process for ``line`` and ``relay``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import _common, _cpus

POD_ADDR = "10.201.0.1"
GPU_ADDR = "10.201.0.2"
GPU_PORT = 8000
METHODS = ("auto", "netns", "line", "relay")
#: what emulates the delay, per method, for captions
EMULATORS = {"netns": "tc netem", "line": "the light GPU emulator", "relay": "a delaying relay"}


@dataclass
class DelayedGpu:
    method: str
    note: str
    host: str
    port: int
    workdir: Path
    pod_ns: str | None = None
    #: the GPU side's processes (the GPU app, the relay), for CPU pinning
    pids: tuple[int, ...] = ()

    def run_inner(self, target: str, **kwargs: Any) -> Any:
        """Call ``module:function(host=, port=, workdir=, **kwargs)`` where the client lives; its result."""
        kwargs = {"host": self.host, "port": self.port, "workdir": str(self.workdir), **kwargs}
        if self.pod_ns is None:
            module, func = target.split(":")
            return getattr(importlib.import_module(module), func)(**kwargs)
        out = self.workdir / f"inner-{time.monotonic_ns()}.json"
        argv = [
            "ip",
            "netns",
            "exec",
            self.pod_ns,
            sys.executable,
            "-m",
            "bench._inner",
            target,
            json.dumps(kwargs),
        ]
        proc = subprocess.Popen([*argv, str(out)], cwd=_common.ROOT)
        try:
            code = proc.wait()
        finally:
            _common.stop_process(proc, sig=signal.SIGINT, timeout_s=20)
        if code != 0:
            raise RuntimeError(f"the measurement in namespace {self.pod_ns} failed (exit {code})")
        return json.loads(out.read_text())


def _start_reporting(argv: list[str], log_path: Path, what: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start a helper that prints ``ready <port>``; return it and the port."""
    with log_path.open("wb") as err:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=_common.ROOT
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline().decode(errors="replace").strip()
            if line.startswith("ready "):
                return proc, int(line.split()[1])
            if not line and proc.poll() is not None:
                break
    _common.stop_process(proc)
    raise RuntimeError(f"{what} did not start: {log_path.read_text(errors='replace')[-2000:]}")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def _ns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=20, check=False)
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def _delete_namespace(ns: str) -> None:
    """Stop what still runs in our namespace (all started by us), then delete it."""
    for sig, pause in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 0.3)):
        pids = _ns_pids(ns)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if pids:
            time.sleep(pause)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20, check=False)


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install iproute2)"
    return None


@contextlib.contextmanager
def _netns_setup(one_way_ms: float, workdir: Path) -> Iterator[DelayedGpu]:
    pod, gpu = f"vppb{os.getpid()}p", f"vppb{os.getpid()}g"
    procs: list[subprocess.Popen[bytes]] = []
    created: list[str] = []
    try:
        for ns in (pod, gpu):
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("link", "add", "vppb0", "netns", pod, "type", "veth", "peer", "name", "vppb1", "netns", gpu)
        for ns, dev, addr in ((pod, "vppb0", POD_ADDR), (gpu, "vppb1", GPU_ADDR)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip(
                "netns",
                "exec",
                ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "netem",
                "delay",
                f"{one_way_ms:g}ms",
            )
        argv = ["ip", "netns", "exec", gpu, sys.executable, "-m", "bench._gpu", "--host", GPU_ADDR]
        proc, port = _start_reporting([*argv, "--port", str(GPU_PORT)], workdir / "gpu.log", "the GPU app")
        procs.append(proc)
        note = (
            f"tc netem: {one_way_ms:g} ms each way ({2 * one_way_ms:g} ms RTT) on a veth pair between two "
            "network namespaces (client and nginx in one, the GPU app in the other)"
        )
        yield DelayedGpu("netns", note, GPU_ADDR, port, workdir, pod_ns=pod, pids=(proc.pid,))
    finally:
        for proc in procs:
            _common.stop_process(proc)
        for ns in created:
            _delete_namespace(ns)


@contextlib.contextmanager
def _relay_setup(one_way_ms: float, workdir: Path, why: str) -> Iterator[DelayedGpu]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        gpu, gpu_port = _start_reporting(
            [sys.executable, "-m", "bench._gpu", "--host", "127.0.0.1", "--port", "0"],
            workdir / "gpu.log",
            "the GPU app",
        )
        procs.append(gpu)
        argv = [
            sys.executable,
            "-m",
            "bench._relay",
            "--target-port",
            str(gpu_port),
            "--one-way-ms",
            f"{one_way_ms:g}",
        ]
        relay, relay_port = _start_reporting(argv, workdir / "relay.log", "the delaying relay")
        procs.append(relay)
        note = (
            f"delaying TCP relay on loopback: {one_way_ms:g} ms per direction per chunk "
            f"({2 * one_way_ms:g} ms RTT, plus one RTT for each new connection's handshake); "
            f"netns/netem not used: {why}"
        )
        yield DelayedGpu("relay", note, "127.0.0.1", relay_port, workdir, pids=(gpu.pid, relay.pid))
    finally:
        for proc in reversed(procs):
            _common.stop_process(proc)


@contextlib.contextmanager
def _line_setup(one_way_ms: float, workdir: Path, why: str) -> Iterator[DelayedGpu]:
    argv = [sys.executable, "-m", "bench._linegpu", "--one-way-ms", f"{one_way_ms:g}"]
    gpu, port = _start_reporting(argv, workdir / "gpu.log", "the light GPU emulator")
    try:
        note = (
            f"light GPU emulator on loopback holding its output {2 * one_way_ms:g} ms "
            f"({2 * one_way_ms:g} ms RTT, plus one RTT before a new connection's first answer: "
            f"the handshake); netns/netem not used: {why}"
        )
        yield DelayedGpu("line", note, "127.0.0.1", port, workdir, pids=(gpu.pid,))
    finally:
        _common.stop_process(gpu)


@contextlib.contextmanager
def delayed_gpu(one_way_ms: float = 25.0, method: str = "auto", pin: bool = True) -> Iterator[DelayedGpu]:
    """The GPU app behind ``one_way_ms`` of delay each way; ``method``: auto, netns, line or relay.

    With ``pin``, the GPU side runs on the CPUs ``bench._cpus`` gives the GPU.
    """
    workdir = Path(tempfile.mkdtemp(prefix="vpp-bench-"))
    try:
        why = f"--delay-method {method}" if method in {"line", "relay"} else _netns_unavailable()
        if why is None:
            entered = False
            try:
                with _netns_setup(one_way_ms, workdir) as setup:
                    entered = True
                    _cpus.pin("gpu", setup.pids, pin)
                    yield setup
                return
            except subprocess.CalledProcessError as exc:
                if entered:
                    raise
                why = f"`{' '.join(exc.cmd)}` failed: {(exc.stderr or '').strip() or exc.returncode}"
        if method == "netns":
            raise RuntimeError(f"network namespaces with netem are not available: {why}")
        fallback = "relay" if method == "relay" else "line"
        print(f"(netns/netem not used: {why}; using {EMULATORS[fallback]})", file=sys.stderr, flush=True)
        with (_relay_setup if fallback == "relay" else _line_setup)(one_way_ms, workdir, why) as setup:
            _cpus.pin("gpu", setup.pids, pin)
            yield setup
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
