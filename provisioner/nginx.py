"""The nginx child process: test a config, write it atomically, start, reload, restart, drain.

``NginxProcess`` owns one nginx master running in the foreground (``daemon off``)
in its own session, so a terminal's Ctrl-C reaches only us and shutdown stays
ours to order (``stop`` drains), and so that orphaned workers of a master that
died can be found and killed by process group.

Everything nginx writes lives in the state directory, the directory of
``config_path``: the config, its temp copies, the pid file and nginx's temp
directories (nginx creates those itself, also on ``nginx -t``).

nginx's stdout and stderr are pipes of ours, copied to our stdout and stderr by
``nginx_output`` (the access log in whole-line batches; stderr line by line, its
tail kept for error messages). The access log is written to ``/dev/stdout``,
which nginx opens itself: that works on a pipe we own, but not on a stdout
inherited from elsewhere when it belongs to another user (non-root container,
``su``) or is a socket (systemd's journal).

Only asyncio subprocesses here; config writes (with fsync) run in a thread,
while the tiny reads of the pid file and of ``/proc`` are done in place. A file
that cannot be written in the state directory is ``NginxError`` (``config_file``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import signal
import time
from pathlib import Path

from provisioner import config_file, errors, nginx_output

log = logging.getLogger(__name__)

#: Must match the ``pid`` directive ``rendering`` writes: ``<state dir>/nginx.pid``.
PID_FILE_NAME = "nginx.pid"
#: the access-log pipe's size (Linux's default ceiling, /proc/sys/fs/pipe-max-size)
ACCESS_LOG_PIPE_BYTES = 1024 * 1024
#: Pauses before restarts after successive crashes; the last one repeats.
RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)

_POLL_S = 0.02


class NginxProcess:
    """One supervised nginx master process and the config file it reads."""

    def __init__(
        self,
        binary: str,
        config_path: Path,
        *,
        restart_limit: int = 5,
        restart_window_s: float = 60.0,
        stop_timeout_s: float = 20.0,
        start_timeout_s: float = 15.0,
    ) -> None:
        self.binary = binary
        self.config_path = Path(config_path).absolute()
        self.state_dir = self.config_path.parent
        self.pid_path = self.state_dir / PID_FILE_NAME
        self.restart_limit = restart_limit
        self.restart_window_s = restart_window_s
        self.stop_timeout_s = stop_timeout_s
        self.start_timeout_s = start_timeout_s
        #: successful SIGHUP reloads sent
        self.reloads = 0
        #: times ``supervise`` brought a dead nginx back
        self.restarts = 0
        self._config: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._pipe_tasks: list[asyncio.Task[None]] = []
        self._stderr = nginx_output.ErrorLog()
        self._started = False
        self._lock = asyncio.Lock()
        self._stopping = False
        #: this process's claim on the state directory (``config_file.claim``), from start to stop
        self._claim: int | None = None

    # ------------------------------------------------------------ state

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def config(self) -> str | None:
        """The config nginx runs (or will at its next start); None after a failed reload: unknown."""
        return self._config

    # ------------------------------------------------------------ config

    async def test_config(self, text: str) -> None:
        """Run ``nginx -t`` on ``text``; raise ``NginxError`` with nginx's complaint if it fails."""
        path = await asyncio.to_thread(config_file.write_temp, self.config_path, text)
        try:
            argv = [self.binary, "-t", "-q", "-e", "stderr", "-p", f"{self.state_dir}/", "-c", str(path)]
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            except OSError as exc:
                raise errors.NginxError(f"cannot run {self.binary}: {exc}") from exc
            try:
                async with asyncio.timeout(self.start_timeout_s):
                    out, err = await proc.communicate()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise errors.NginxError("nginx -t did not finish") from None
        finally:
            await asyncio.to_thread(config_file.remove, path)
        if proc.returncode != 0:
            message = nginx_output.summary((err + out).decode(errors="replace").splitlines(), path)
            raise errors.NginxError(f"nginx rejected the config: {message}")

    async def apply(self, text: str) -> bool:
        """Make ``text`` the running config: test, swap atomically, reload. False if it already is.

        Returns once the reload has taken effect: new workers accept connections and
        the old ones have stopped accepting (they finish their open requests and
        streams in the background). Where ``/proc`` cannot tell, it returns right
        after the signal. With no nginx running, only the file is swapped; the next
        start uses it. ``NginxError`` if nginx refuses the config or does not reload.
        """
        async with self._lock:
            if text == self._config:
                return False
            await self.test_config(text)
            previous = self._config
            await asyncio.to_thread(config_file.write_atomic, self.config_path, text)
            self._config = text
            if self.is_running:
                try:
                    await self._reload()
                except errors.NginxError:
                    # the old file back, for a restart. What nginx runs is unknown (a fork that failed
                    # mid-reload leaves no worker): the next apply reloads, a workerless nginx restarts
                    self._config = None
                    if previous is not None:
                        await asyncio.to_thread(config_file.write_atomic, self.config_path, previous)
                    if (proc := self._proc) is not None and await _left_workerless(proc.pid):
                        log.error("nginx has no worker after the failed reload; restarting it")
                        await self._kill(proc)  # ``supervise`` starts it again, on the old file
                    raise
                self.reloads += 1
            return True

    # ------------------------------------------------------------ lifecycle

    async def start(self, text: str) -> None:
        """Test and write ``text``, then start nginx and wait until it listens."""
        async with self._lock:
            if self.is_running:
                raise errors.NginxError(f"nginx is already running (pid {self.pid})")
            self._stopping = False
            if self._claim is None:
                self._claim = await asyncio.to_thread(config_file.claim, self.config_path)
            await self.test_config(text)
            await asyncio.to_thread(config_file.write_atomic, self.config_path, text)
            self._config = text
            self._started = True
            await self._spawn()

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart nginx whenever it dies until ``stop`` is set; give up if it keeps dying.

        Raises ``NginxError`` when more than ``restart_limit`` deaths happen within
        ``restart_window_s``.
        """
        crashes: collections.deque[float] = collections.deque()
        detail = "not running"
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set() and not self._stopping:
                proc = self._proc
                if proc is not None and proc.returncode is None:
                    exit_wait = asyncio.ensure_future(proc.wait())
                    await asyncio.wait({exit_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    if not exit_wait.done():
                        exit_wait.cancel()
                        await asyncio.gather(exit_wait, return_exceptions=True)
                        return
                    if stop.is_set() or self._stopping:
                        return
                    await self._reap()
                    detail = f"exit status {proc.returncode}{self._stderr.reason(self.config_path)}"
                elif not self._started:
                    raise errors.NginxError("nginx was never started; nothing to supervise")
                delay = self._restart_delay(crashes, detail)
                log.warning("nginx is down (%s); restarting in %g s", detail, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await asyncio.shield(stop_wait)
                if stop.is_set():
                    return
                async with self._lock:
                    if self._stopping or self.is_running:
                        continue
                    try:
                        await self._spawn()
                    except errors.NginxError as exc:
                        detail = str(exc)
                        continue
                    self.restarts += 1
                    log.warning("nginx restarted (pid %s)", self.pid)
        finally:
            stop_wait.cancel()
            await asyncio.gather(stop_wait, return_exceptions=True)

    async def stop(self, *, drain_s: float) -> None:
        """Graceful stop: SIGQUIT (finish open requests) for ``drain_s``, then SIGTERM, then SIGKILL.

        Safe to call twice, or when nginx never started.
        """
        self._stopping = True
        async with self._lock:
            proc = self._proc
            if proc is not None and proc.returncode is None:
                for sig, grace_s in (
                    (signal.SIGQUIT, drain_s),
                    (signal.SIGTERM, self.stop_timeout_s),
                    (signal.SIGKILL, self.stop_timeout_s),
                ):
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(grace_s, 0.0)):
                            await proc.wait()
                    if proc.returncode is not None:
                        break
            await self._reap()
            if self._claim is not None:
                os.close(self._claim)
                self._claim = None

    # ------------------------------------------------------------ internals

    def _restart_delay(self, crashes: collections.deque[float], detail: str) -> float:
        """Count a death; the pause before the restart, or ``NginxError`` if nginx keeps dying."""
        now = time.monotonic()
        crashes.append(now)
        while crashes and crashes[0] < now - self.restart_window_s:
            crashes.popleft()
        if len(crashes) > self.restart_limit:
            raise errors.NginxError(
                f"nginx keeps dying: {len(crashes)} times in {self.restart_window_s:g} s; last: {detail}"
            )
        return RESTART_BACKOFF_S[min(len(crashes), len(RESTART_BACKOFF_S)) - 1]

    async def _spawn(self) -> None:
        """Start nginx on the config file and wait until it listens (the pid file names it)."""
        await asyncio.to_thread(config_file.remove, self.pid_path)
        self._stderr = nginx_output.ErrorLog()
        argv = [self.binary, "-e", "stderr", "-p", f"{self.state_dir}/", "-c", str(self.config_path)]
        argv += ["-g", "daemon off;"]
        # Pipes of our own, not asyncio's PIPE: with asyncio's, Process.wait() (Python 3.11)
        # also waits for the pipes to close, which workers orphaned by a killed master keep
        # open; with ours, wait() returns when the master exits.
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        # ~4,000 access-log lines of slack (64 KiB by default): a moment's stall of our loop, or of
        # the container's stdout, does not block nginx's workers on their log writes
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(out_write, fcntl.F_SETPIPE_SZ, ACCESS_LOG_PIPE_BYTES)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_write,
                stderr=err_write,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(out_read)
            os.close(err_read)
            raise errors.NginxError(f"cannot run {self.binary}: {exc}") from exc
        finally:
            os.close(out_write)
            os.close(err_write)
        self._proc = proc
        self._pipe_tasks = [
            asyncio.create_task(nginx_output.copy_access_log(out_read)),
            asyncio.create_task(self._stderr.follow(err_read)),
        ]
        deadline = time.monotonic() + self.start_timeout_s
        while proc.returncode is None:
            # the pid file is written once the sockets are bound; then wait for a worker to accept
            if self._pid_file_names(proc.pid) and _accepting_workers(proc.pid) != set():
                return
            if time.monotonic() > deadline:
                await self._kill(proc)
                raise errors.NginxError(f"nginx did not start listening within {self.start_timeout_s:g} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL_S):
                    await proc.wait()
        await self._reap()
        raise errors.NginxError(
            f"nginx exited at start with status {proc.returncode}{self._stderr.reason(self.config_path)}"
        )

    async def _reload(self) -> None:
        """SIGHUP the master; wait until only new workers accept, or nginx reports an error."""
        proc = self._proc
        assert proc is not None
        before = _accepting_workers(proc.pid)
        errors_before = self._stderr.error_count
        with contextlib.suppress(ProcessLookupError):  # died just now: noticed below
            proc.send_signal(signal.SIGHUP)
        if before is None:
            return
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            await asyncio.sleep(_POLL_S / 2)
            if proc.returncode is not None:
                raise errors.NginxError(
                    f"nginx exited while reloading{self._stderr.reason(self.config_path)}"
                )
            if failures := self._stderr.errors_since(errors_before, master=proc.pid):
                summary = nginx_output.summary(failures, self.config_path)
                raise errors.NginxError(f"nginx did not reload: {summary}")
            now = _accepting_workers(proc.pid)
            if now is None or (now and not now & before):
                return
            if time.monotonic() > deadline:
                reason = self._stderr.reason(self.config_path)
                raise errors.NginxError(
                    f"nginx did not finish reloading within {self.start_timeout_s:g} s{reason}"
                )

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        await self._reap()

    async def _reap(self) -> None:
        """After the master exited: kill workers it left behind, drain the pipe readers."""
        proc = self._proc
        if proc is None or proc.returncode is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        tasks, self._pipe_tasks = self._pipe_tasks, []
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.stop_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _pid_file_names(self, pid: int) -> bool:
        try:
            return self.pid_path.read_text().strip() == str(pid)
        except OSError:
            return False


async def _left_workerless(master_pid: int, watch_s: float = 1.0) -> bool:
    """After a failed reload: nginx has no worker accepting (the old ones told to quit, no new one
    forked), seen within ``watch_s`` while the old ones retitle; False where ``/proc`` cannot tell."""
    for _ in range(round(watch_s / _POLL_S)):
        if _accepting_workers(master_pid) == set():
            return True
        await asyncio.sleep(_POLL_S)
    return False


def _accepting_workers(master_pid: int) -> set[int] | None:
    """Pids of the master's workers still accepting connections; None where ``/proc`` cannot tell.

    A worker told to quit closes its listening sockets and retitles itself
    "worker process is shutting down" in the same step, so the title tells.
    """
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    except OSError:
        return None
    accepting: set[int] = set()
    for child in children:
        try:
            title = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        if b"worker process" in title and b"shutting down" not in title:
            accepting.add(int(child))
    return accepting
