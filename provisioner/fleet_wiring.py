"""The Redis side, built from the settings: the blacklist (with the fleet's clock, ``redisclock``)
and the fleet on one API key (issue 13): the pacer, the shared instance view, the shared checks
(template, whoami, offer search) and the rent queue.

Fleet-wide in Redis when the command uses the pods' Redis (``BLACKLIST_ENABLED=true``; ``reap``
always), else per process; one ``pacer.Failover`` per process, so an outage is logged once.
``wiring.py`` calls these while it builds the Vast client and the reconciler.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from provisioner import (
    blacklist,
    errors,
    fleetshared,
    fleetview,
    pacer,
    redisclock,
    renting,
    rentqueue,
    store,
)
from provisioner.settings import RedisAccess, Settings, VastAccess
from provisioner.vast import client as vast_client

#: added to each pacer interval: requests of a loaded node reach Vast up to ~0.1 s apart from their slot
PACE_MARGIN_S: Final = 0.15


def build_blacklist(settings: RedisAccess, client: store.Client, owner: str) -> blacklist.Blacklist:
    """The Redis blacklist over a built client (``store.connect``); bans are recorded as ``owner``'s.

    Its clock, which the fleet record shares (``fleet.Fleet.over``), is the Redis server's
    (``redisclock``): the pods compare each other's stamps."""
    deadline_s = 4 * settings.blacklist_redis_timeout_seconds
    return blacklist.Blacklist(
        client,
        keys=store.Keys(settings.blacklist_key_prefix),
        ban_ttl_s=settings.blacklist_ban_ttl_seconds,
        restart_window_s=settings.blacklist_restart_ttl_seconds,
        restart_threshold=settings.blacklist_restart_threshold,
        half_life_s=settings.blacklist_reputation_half_life_seconds,
        owner=owner,
        deadline_s=deadline_s,
        clock=redisclock.RedisClock(client, deadline_s=deadline_s),
    )


@contextlib.asynccontextmanager
async def connect_blacklist(settings: RedisAccess, owner: str) -> AsyncIterator[blacklist.Blacklist]:
    """The blacklist at ``BLACKLIST_REDIS_URL`` (whatever ``BLACKLIST_ENABLED`` says); closed after.

    ``owner`` is who its bans are recorded as: the pod's name, or the operator of ``blacklist ban``.
    A Redis that answers and runs in cluster mode is a ``ConfigError`` (exit 2) here, at start-up, not
    a failure of every later multi-key call (the pacer's store, on the same URL, is not asked again).
    """
    client = store.connect(
        settings.blacklist_redis_url.get_secret_value(), timeout_s=settings.blacklist_redis_timeout_seconds
    )
    try:
        bans = build_blacklist(settings, client, owner)
        with contextlib.suppress(errors.StoreError):  # unreachable: measured again before it counts
            await redisclock.sync_if_due(bans.clock)
            await store.refuse_cluster(client, settings.blacklist_redis_timeout_seconds)  # ConfigError
        yield bans
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def open_blacklist(settings: Settings) -> AsyncIterator[blacklist.Blacklist | None]:
    """The blacklist when ``BLACKLIST_ENABLED``, else None (no Redis at all)."""
    if not settings.blacklist_enabled:
        yield None
        return
    async with connect_blacklist(settings, settings.pod_name) as store:
        yield store


def uses_fleet_store(access: VastAccess) -> bool:
    """Whether this command shares the pods' Redis: ``reap`` always, the others with ``BLACKLIST_ENABLED``."""
    return not isinstance(access, Settings) or access.blacklist_enabled


@contextlib.asynccontextmanager
async def open_fleet_store(access: VastAccess) -> AsyncIterator[store.Client | None]:
    """The pods' Redis for the fleet primitives when this command uses it (closed after), else None."""
    if not uses_fleet_store(access):
        yield None
        return
    client = store.connect(
        access.blacklist_redis_url.get_secret_value(), timeout_s=access.blacklist_redis_timeout_seconds
    )
    try:
        yield client
    finally:
        await client.aclose()


def build_pacer(
    access: VastAccess, redis: store.Client | None, failover: pacer.Failover | None = None
) -> pacer.Pacer:
    """The pacer of this API key: fleet-wide in ``redis`` (keys from a hash of the key), else per process.

    Its keys take the default prefix whatever ``BLACKLIST_KEY_PREFIX`` says: Vast limits the key, so
    deployments that share one Redis under their own prefixes, and one API key, share one budget.
    Intervals: Vast's published ones, ``VAST_PACE_INTERVALS`` applied (a bad one is ``ConfigError``: exit 2).
    """
    limits = pacer.limits_with(pacer.parse_intervals(access.vast_pace_intervals))
    keys = pacer.Keys(pacer.budget_id(access.vast_api_key.get_secret_value()))
    return pacer.Pacer(redis, keys, limits=limits, margin_s=PACE_MARGIN_S, failover=failover)


@dataclass(frozen=True)
class FleetKit:
    """The fleet primitives of one API key, sharing one Redis outage state (one log line per outage)."""

    pace: pacer.Pacer
    redis: store.Client | None
    failover: pacer.Failover

    def note_wait(self, seconds: float) -> None:
        """Tell the pacer's ``on_wait`` (the daemon's liveness) of a wait for the fleet's turn."""
        if self.pace.on_wait is not None:
            self.pace.on_wait(seconds)

    def account(self, vast: vast_client.VastClient, prefix: str) -> fleetshared.SharedAccount | None:
        """whoami once for the fleet when the pods share a Redis; None: each process asks itself."""
        budget = self.pace.keys.budget
        return fleetshared.SharedAccount.over(vast.whoami, self.redis, budget, prefix, self.failover)


@contextlib.asynccontextmanager
async def open_fleet_kit(access: VastAccess) -> AsyncIterator[FleetKit]:
    """``fleet_kit`` over ``open_fleet_store`` (the Redis closed after)."""
    async with open_fleet_store(access) as redis:
        yield fleet_kit(access, redis)


def fleet_kit(access: VastAccess, redis: store.Client | None) -> FleetKit:
    failover = pacer.Failover(
        deadline_s=max(pacer.DEFAULT_DEADLINE_S, access.blacklist_redis_timeout_seconds)
    )
    return FleetKit(build_pacer(access, redis, failover), redis, failover)


def build_fleet_parts(
    settings: Settings, vast: vast_client.VastClient, kit: FleetKit
) -> tuple[fleetview.OwnInstances, fleetshared.SharedChecks, renting.Turns]:
    """The shared instance view, the shared template check, and the rent queue with the shared search."""
    prefix, budget, failover = settings.blacklist_key_prefix, kit.pace.keys.budget, kit.failover
    view_keys = fleetview.Keys(budget, fleetview.label_prefix(settings.label), prefix)

    async def label_rows(label: str) -> list[dict[str, Any]]:
        return await vast.list_rows({"label": {"eq": label}})

    view = fleetview.FleetView(
        vast.list_rows, kit.redis, view_keys, fleetview.RAW, failover=failover, fetch_label=label_rows
    )
    # while Redis is away: this pod's own page at the pace of a pod without Redis (BOOT_POLL_SECONDS)
    lister = fleetview.OwnInstances(view, local_poll_s=settings.boot_poll_seconds)
    queue = rentqueue.RentQueue(kit.redis, rentqueue.Keys(budget, prefix), failover=failover)
    queue.on_wait = kit.note_wait  # a turn waited for is a deliberate wait, like a pacer slot
    search = fleetshared.SharedSearch(vast.search_rows, kit.redis, budget, prefix=prefix, failover=failover)
    checks = fleetshared.SharedChecks(kit.redis, budget, prefix=prefix, failover=failover)
    return lister, checks, renting.Turns(queue, settings.pod_name, search)
