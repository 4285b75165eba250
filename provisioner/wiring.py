"""Everything built from ``Settings``: the HTTP clients, the adapters and the reconciler.

The one place where configuration becomes objects, so that nothing below it reads ``Settings``:

* ``vast_http``: the ONE factory of the Vast.ai HTTP client (every command), ``open_vast`` the client;
* ``health_http``: the upstream-probe client (``UPSTREAM_AUTH_HEADER`` set), reconciler and ``status``;
* ``proxy_config``, ``build_*``: the values the planner, the renter and the renderer take;
* ``build_reconciler`` assembles the reconciler in ONE function (the daemon and the unit tests share
  it); the Redis side (the blacklist, the fleet on one API key) is built by ``fleet_wiring.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

import httpx
from pydantic import SecretStr

from provisioner import (
    applying,
    blacklist,
    events,
    fleet,
    fleet_wiring,
    fleetguard,
    model,
    pacer,
    planning,
    reconciler,
    remote_logs,
    rendering,
    renting,
    runtime,
    selection,
    store,
    upstream_health,
)
from provisioner.settings import Settings, VastAccess
from provisioner.vast import client as vast_client
from provisioner.vast import wire as vast_wire

#: connecting to the Vast.ai API never waits longer than this, whatever VAST_API_TIMEOUT_SECONDS says
VAST_CONNECT_TIMEOUT_S: Final = 10.0
#: one probe of the served upstream (a health path request or a TCP connect)
HEALTH_TIMEOUT_S: Final = 3.0
#: the longest an unhealthy served instance is kept before it is replaced (seconds)
UNHEALTHY_TIMEOUT_CAP_S: Final = 300.0
#: BOOT_POLL_SECONDS unset, shared view: 0.9 s +-15 % jitter < 1.15 s list spacing (a pod takes every list)
SHARED_BOOT_POLL_S: Final = 0.9

A = TypeVar("A")
B = TypeVar("B")
#: the search body for the current bans and reputation
SearchBody = Callable[[selection.Standing], Mapping[str, object]]
#: the offers that may be rented, best first
Chooser = Callable[[list[model.Offer], selection.Standing], list[selection.Scored]]


# ---------------------------------------------------------------- HTTP clients


def vast_http(access: VastAccess, tls: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    """The Vast.ai API's HTTP client: ``VAST_API_TIMEOUT_SECONDS`` a request, no redirects, CAs ``tls``."""
    timeout_s = access.vast_api_timeout_seconds
    timeout = httpx.Timeout(timeout_s, connect=min(VAST_CONNECT_TIMEOUT_S, timeout_s))
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, verify=tls or True)


async def vast_tls() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's CAs, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``) in a worker
    thread: loading the CAs (30-60 ms, GIL released) overlaps ``run``'s other start-up steps."""
    return await asyncio.to_thread(httpx.create_ssl_context)


def vast_over(
    access: VastAccess,
    http: httpx.AsyncClient,
    observer: vast_client.CallObserver | None = None,
    *,
    pace: pacer.Pacer | None = None,
) -> vast_client.VastClient:
    """The Vast.ai client over `vast_http`'s; each call waits for its `pace` slot (default: per process)."""
    return vast_client.VastClient(
        http,
        access.vast_api_key,
        base_url=access.vast_api_url,
        observer=observer,
        pacer=pace or fleet_wiring.build_pacer(access, None),
    )


@contextlib.asynccontextmanager
async def open_vast(
    access: VastAccess, observer: vast_client.CallObserver | None = None, *, redis: store.Client | None = None
) -> AsyncIterator[vast_client.VastClient]:
    """A Vast.ai client on its own ``vast_http`` client, closed after; paced fleet-wide through ``redis``
    (or through a Redis client of its own when the command uses the pods' Redis)."""
    async with contextlib.AsyncExitStack() as stack:
        if redis is None:
            redis = await stack.enter_async_context(fleet_wiring.open_fleet_store(access))
        http = await stack.enter_async_context(vast_http(access))
        yield vast_over(access, http, observer, pace=fleet_wiring.build_pacer(access, redis))


def upstream_auth_headers(settings: Settings) -> dict[str, str]:
    """``UPSTREAM_AUTH_HEADER: <per-pod secret>`` for the proxy and the health checks, or nothing."""
    token = settings.upstream_auth_token
    if settings.upstream_auth_header is None or token is None:
        return {}
    return {settings.upstream_auth_header: token.get_secret_value()}


def health_http(settings: Settings) -> httpx.AsyncClient:
    """The client that probes upstreams (the reconciler's health checks and ``status``).

    The probes speak plain HTTP to the instance's address (``upstream_health``), so the client loads no
    CA bundle (``verify=False``): 0.8 MiB less resident memory, and nothing is ever verified over TLS here.
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(HEALTH_TIMEOUT_S),
        headers=upstream_auth_headers(settings),
        verify=False,  # noqa: S501
    )


# ---------------------------------------------------------------- values for the core


def proxy_config(settings: Settings) -> rendering.ProxyConfig:
    """What the nginx config is rendered from (listeners, state dir, limits, the upstream header)."""
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
        listen_address=settings.nginx_listen_address,
    )


def open_files_hard_limit() -> int | None:
    """How far nginx's workers may raise their open-file limit (None: unlimited)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


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
        preferred_countries=settings.vast_preferred_countries,
        interruptible=settings.vast_interruptible,
        bid_multiplier=settings.vast_bid_multiplier,
        weights=settings.vast_score_weights,
    )


def build_search_body(settings: Settings) -> SearchBody:
    """The search body for the current bans: the user's filter, the cost controls, the ports, ``notin``."""
    base = settings.search_filter()
    criteria = build_criteria(settings)

    def body(standing: selection.Standing) -> Mapping[str, object]:
        return selection.search_body(base, criteria, standing)

    return body


def build_chooser(settings: Settings) -> Chooser:
    """The ranking: offers that may be rented, best first."""
    criteria = build_criteria(settings)

    def choose(offers: list[model.Offer], standing: selection.Standing) -> list[selection.Scored]:
        return selection.rank_offers(offers, criteria, standing)

    return choose


def build_rent_request(settings: Settings) -> Callable[[str | None], vast_client.RentRequest]:
    """The rent request for a template hash; the upstream secret and registry login ride along."""
    desired = settings.desired_spec()
    login = settings.docker_login
    # the shared secret goes to the instance with each rental, never into the template
    env = dict(desired.env)
    for name, value in upstream_auth_headers(settings).items():
        env["UPSTREAM_AUTH_HEADER"] = name
        env[model.AUTH_TOKEN_ENV] = value
    # the secret's fingerprint too: an instance rented with another secret (a rotated key) is replaced
    env |= {model.AUTH_TAG_ENV: desired.auth_tag} if desired.auth_tag else {}

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


def build_policy(settings: Settings) -> planning.Policy:
    """The planner's timing rules."""
    return planning.Policy(
        boot_timeout_s=settings.boot_timeout_seconds,
        unhealthy_timeout_s=min(settings.boot_timeout_seconds, UNHEALTHY_TIMEOUT_CAP_S),
        steady_interval_s=settings.reconcile_interval_seconds,
        boot_interval_s=boot_poll_s(settings),
    )


def boot_poll_s(settings: Settings) -> float:
    """``BOOT_POLL_SECONDS``; unset, 0.9 s with the shared view (the fleet lists once per interval
    however many pods boot) and the old 5 s without it (each pod would list on its own)."""
    if "boot_poll_seconds" in settings.model_fields_set or not fleet_wiring.uses_fleet_store(settings):
        return settings.boot_poll_seconds
    return SHARED_BOOT_POLL_S


# ---------------------------------------------------------------- the reconciler


@dataclass(frozen=True)
class Clients:
    """What the reconciler is built over: made (and closed) by the caller."""

    vast: vast_client.VastClient
    proxy: applying.ProxyPort
    health_http: httpx.AsyncClient
    store: blacklist.Blacklist | None = None
    #: the fleet primitives; with a Redis the reconciler lists through the shared view and rents in turn
    kit: fleet_wiring.FleetKit | None = None


async def open_clients(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    proxy: applying.ProxyPort,
    tls: Awaitable[ssl.SSLContext],
    observer: vast_client.CallObserver | None = None,
) -> tuple[Clients, fleet_wiring.FleetKit]:
    """``run``'s clients, closed by ``stack``: Vast's (CAs from ``tls``, `vast_tls` loading while Redis
    connects; paced by the fleet kit), the upstream health client, the blacklist, the fleet kit."""

    async def others() -> tuple[httpx.AsyncClient, blacklist.Blacklist | None, fleet_wiring.FleetKit]:
        health = await stack.enter_async_context(health_http(settings))
        bans = await stack.enter_async_context(fleet_wiring.open_blacklist(settings))
        return health, bans, await stack.enter_async_context(fleet_wiring.open_fleet_kit(settings))

    context, (health, bans, kit) = await both(tls, others())
    api_http = await stack.enter_async_context(vast_http(settings, context))
    vast = vast_over(settings, api_http, observer, pace=kit.pace)
    rent = build_rent_request(settings)(None)  # its secrets are scrubbed from every error, rented or not
    vast.add_secrets(*vast_wire.rent_secrets(rent.image_login, rent.env))
    return Clients(vast=vast, proxy=proxy, health_http=health, store=bans, kit=kit), kit


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both at once, both finished whatever happens (nothing half-started behind an exit stack);
    ``first``'s error wins, as when they ran one after the other."""
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    await asyncio.wait(tasks)
    for exc in [task.exception() for task in tasks]:  # every one retrieved, the first raised
        if exc is not None:
            raise exc
    return tasks[0].result(), tasks[1].result()


def remote_log_streamer(
    settings: Settings,
    vast: vast_client.VastClient,
    rec: runtime.ReconcilerReader,
    on_lines: Callable[[int], None],
) -> remote_logs.RemoteLogStreamer:
    """``REMOTE_LOGS``: the streamer of the focus instance's container log, while it runs."""

    def target() -> int | None:
        focus = runtime.focus_instance(rec.view())
        return focus.id if focus is not None and focus.is_running else None

    interval_s, tail = settings.remote_logs_interval_seconds, settings.remote_logs_tail
    return remote_logs.RemoteLogStreamer(vast, target, interval_s=interval_s, tail=tail, on_lines=on_lines)


def health_checker(settings: Settings, http: httpx.AsyncClient) -> upstream_health.Checker:
    """The upstream check the reconciler and ``status`` share (address rules; auth header via ``http``)."""
    return upstream_health.Checker(
        http=http,
        ports=settings.port_maps,
        health_path=settings.vast_health_path,
        allow_private=settings.vast_allow_private_upstreams,
    )


def build_reconciler(
    settings: Settings,
    clients: Clients,
    *,
    on_event: Callable[[events.Event], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> reconciler.Reconciler:
    """The reconciler for this pod (the one place that knows its constructor)."""
    guarded = None
    pods = None
    if clients.store is not None:
        # the blacklist and the heartbeats share one Redis and one outage state (logged once)
        outage = store.Outage(where=store.describe_url(settings.blacklist_redis_url.get_secret_value()))
        guarded = blacklist.Guarded(clients.store, outage)
        pods = fleetguard.GuardedFleet(fleet.Fleet.over(clients.store), outage, pod=settings.pod_name)
    spec = renting.RentSpec(
        search_body=build_search_body(settings),
        choose_offers=build_chooser(settings),
        rent_request=build_rent_request(settings),
        max_fleet_dph=settings.vast_max_fleet_dph,
    )
    lister = checks = turns = None
    if clients.kit is not None and clients.kit.redis is not None:
        lister, checks, turns = fleet_wiring.build_fleet_parts(settings, clients.vast, clients.kit)
    adapters = reconciler.Adapters(
        vast=clients.vast,
        proxy=clients.proxy,
        health=health_checker(settings, clients.health_http),
        bans=guarded,
        fleet=pods,
        lister=lister,
        checks=checks,
    )
    config = reconciler.ReconcilerConfig(
        desired=settings.desired_spec(),
        proxy_config=proxy_config(settings),
        policy=build_policy(settings),
        drain_s=float(settings.nginx_drain_seconds),
    )
    renter = renting.Renter(clients.vast, spec, bans=guarded, fleet=pods, turns=turns)
    return reconciler.Reconciler(adapters, renter, config, clock=clock or time.time, on_event=on_event)
