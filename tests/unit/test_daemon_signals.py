"""A second signal: exit code 1 wherever it lands (the nginx drain included), nginx's whole process
group stopped (no worker outlives a killed master and keeps the proxy port)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from provisioner import daemon, errors, launch, wiring
from provisioner.settings import load_settings
from tests.unit.test_daemon import Account, Edge, FakeRec

SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)")
#: a master that starts a worker ignoring SIGTERM, prints the worker's pid once it is set up, sleeps
MASTER = """
import subprocess, sys, time
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); "
code += "time.sleep(60)"
worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
worker.stdout.readline()
print(worker.pid, flush=True)
time.sleep(60)
"""


class DrainingNginx:
    """nginx in its own session, as ``NginxProcess`` starts it; ``stop`` drains until it exits."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.draining = asyncio.Event()

    async def supervise(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def stop(self, *, drain_s: float) -> None:
        self.draining.set()
        await self.proc.wait()  # a drain ends when the connections close, or on a SIGTERM


async def _no_tls() -> None:
    return None


async def _until_dead(pid: int) -> None:
    """Returns once ``pid`` (not our child) has exited: its pidfd turns readable then."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    exited = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, exited.set)
    try:
        await exited.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


async def test_a_second_signal_during_the_nginx_drain_exits_1(
    env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task tree is over and nginx drains: a second signal stops nginx and run() ends in exit 1."""
    d = daemon.Daemon(load_settings(NGINX_DRAIN_SECONDS="30"), rng=Edge())
    exits: list[int] = []
    monkeypatch.setattr(daemon.os, "_exit", exits.append)
    nginx = DrainingNginx(await asyncio.create_subprocess_exec(*SLEEPER, start_new_session=True))
    rec = FakeRec()

    def nginx_process(stack: contextlib.AsyncExitStack) -> Any:
        d.nginx = nginx  # type: ignore[assignment]
        stack.push_async_callback(d._stop_nginx)
        return nginx

    async def nginx_started(*_: Any) -> None:
        return None

    async def opened(*_: Any) -> Any:
        return (Account(), rec)

    monkeypatch.setattr(daemon.wiring, "vast_tls", _no_tls)
    monkeypatch.setattr(d, "_nginx_process", nginx_process)
    monkeypatch.setattr(d, "_start_nginx", nginx_started)
    monkeypatch.setattr(d, "_open", opened)
    runner = asyncio.create_task(d.run())
    try:
        await asyncio.wait_for(d.ticked.wait(), 5)  # the first tick is over
        d.on_signal(signal.SIGTERM)
        await asyncio.wait_for(nginx.draining.wait(), 5)
        assert rec.clean_stops == 1, "the task tree had ended cleanly before the drain"
        d.on_signal(signal.SIGTERM)
        with pytest.raises(errors.ShutdownForced) as raised:
            await asyncio.wait_for(runner, 5)
        assert nginx.proc.returncode == -signal.SIGTERM, "nginx got SIGTERM: its drain cut short"
        assert launch.exit_for(raised.value).code == 1
    finally:
        for task in list(daemon._background):
            task.cancel()
        await asyncio.gather(*daemon._background, return_exceptions=True)
        await _kill_group(nginx.proc)
    assert exits == [], "the drain bound had not passed: the shutdown itself exited 1"


async def test_a_forced_exit_kills_nginx_workers_with_the_master(
    env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NGINX_DRAIN_SECONDS=0: the second signal SIGKILLs nginx's process group, workers included."""
    d = daemon.Daemon(load_settings(NGINX_DRAIN_SECONDS="0"))
    exits: list[int] = []
    monkeypatch.setattr(daemon.os, "_exit", exits.append)
    master = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MASTER, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    try:
        assert master.stdout is not None
        worker_pid = int(await asyncio.wait_for(master.stdout.readline(), 10))
        d.nginx = DrainingNginx(master)  # type: ignore[assignment]
        d.on_signal(signal.SIGTERM)
        d.on_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*daemon._background), 5)
        assert exits == [daemon.FORCED_EXIT_CODE]
        await asyncio.wait_for(_until_dead(worker_pid), 5)  # a worker left alive keeps the port
    finally:
        await _kill_group(master)


async def test_a_symlinked_nginx_conf_keeps_nginx_beside_the_rendered_paths(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """NGINX_CONFIG_PATH naming a symlink into another directory: the daemon gives nginx the config
    path in the resolved state directory, the one the rendered pid and temp paths are in, not the
    link's target (where nginx's pid file would never appear, and the start would time out). The
    paths only; nginx itself is not started here."""
    (tmp_path / "real").mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "real" / "nginx.conf").write_text("")
    (tmp_path / "state" / "nginx.conf").symlink_to(tmp_path / "real" / "nginx.conf")
    env.setenv("NGINX_CONFIG_PATH", str(tmp_path / "state" / "nginx.conf"))
    env.setenv("NGINX_BIN", "/bin/true")
    d = daemon.Daemon(load_settings())
    async with contextlib.AsyncExitStack() as stack:
        nginx = d._nginx_process(stack)
        assert nginx.config_path == (tmp_path / "state").resolve() / "nginx.conf"
        assert nginx.config_path.parent == wiring.proxy_config(d.settings).state_dir
        d.nginx = None  # nothing was started: nothing to stop
