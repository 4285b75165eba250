"""Redis: the connection, guarded calls, the rent lock, and every key and TTL in one table.

``P`` is ``BLACKLIST_KEY_PREFIX`` (default ``vastprov:``), so several deployments can share one Redis:

=========================  ==========  ==========================================  =======================
key                        type        holds                                       lifetime
=========================  ==========  ==========================================  =======================
``P ban:host:<host_id>``   string      JSON: reason, at, by (pod), instance_id     the ban TTL
``P ban:machine:<id>``     string      the same, for one machine                   the ban TTL
``P bans:host``            sorted set  host ids scored by ban expiry (unix s)      pruned on read
``P bans:machine``         sorted set  machine ids scored by ban expiry            pruned on read
``P boot:<instance_id>``   string      when the boot wait started (unix s)         ``BOOT_KEY_TTL_S``
``P restarts:<instance>``  sorted set  one member per adopting process start       the restart window
``P events``               sorted set  reputation events (JSON) scored by time     6 half-lives
``P heartbeat:<label>``    string      JSON: label, pod, at, instance ids, dph     ``HEARTBEAT_TTL_S``
``P heartbeats``           sorted set  labels scored by their latest heartbeat     pruned past the TTL
``P heartbeats:since``     string      when the first heartbeat was written here   no expiry
``P rentlock:<label>``     string      the token of the process that may rent      ``RENT_LOCK_TTL_S``
``P rentmark:<label>``     string      ``started|done:<ms>``: the label's latest   ``RENT_MARK_TTL_S``
                                       rent, Redis clock (``rentmark.py``)
``P spendlock``            string      the token of the pod checking the spend cap ``SPEND_LOCK_TTL_S``
``P spend:<label>``        string      JSON: pod, dph, at: $/h reserved for a rent ``SPEND_RESERVE_TTL_S``
``P spends``               sorted set  labels scored by their reservation's expiry pruned on read
``P cleanstop:<instance>`` string      the pod that stopped cleanly while it ran   the restart window
``P reaped:<label>``       string      JSON: at, instance_id: the reaper's last    ``REAPED_TTL_S``
                                       destroy for the label (``reapmarks.py``)
``D pace:<B>:<endpoint>``  string      the endpoint's next free slot, unix ms on   the slot + ``pacer.
                                       the Redis clock (``pacer.py``); ``D`` is    SLOT_KEY_SLACK_MS``
                                       the default prefix ``vastprov:``, whatever
                                       ``P`` is: the budget is the API key's
``D pace:<B>:<endpoint>:`` string      until when a 429 holds the endpoint (unix   as its slot key
``penalty``                            ms, Redis clock): a slot inside it, given
                                       before it came, is taken again after it
``P view:<B>:<F>``         hash        ``at`` (ms, Redis clock: when the list was  ``fleetview.VIEW_TTL
                                       requested), ``items`` (JSON rows)           _MS``
``P view:<B>:<F>:lock``    string      the token of the pod listing now            the view's lock TTL
``P view:<B>:check:<n>``   hash        a shared check's value: the template hash   as ``view:``; trusted
                                       (``template:<creator>:<digest>``), the      ``CHECK_TTL_S``
                                       account id (``whoami``)
``P view:<B>:search:<d>``  hash        one offer search's rows (``d``: digest of   as ``view:``; fresh
                                       the body), shared by the rental queue       ``SEARCH_MAX_AGE_S``
``P rentq:<B>``            sorted set  pods queued to rent, by join time (ms)      pruned; 2 x member TTL
``P rentq:<B>:beats``      sorted set  the same pods, by their latest beat         pruned; 2 x member TTL
``P claim:<B>:<offer_id>`` string      the pod renting that offer                  ``rentqueue`` claim TTL
=========================  ==========  ==========================================  =======================

``B`` is the budget id, a truncated SHA-256 of the API key (``pacer.budget_id``; never the key),
``F`` the fleet's label prefix (``fleetview.label_prefix``: ``k8s_pod=`` for the default labels).
The last eight rows are the fleet primitives of issue 13 (``pacer.py``, ``fleetview.py``,
``rentqueue.py``); their ``Keys`` classes build the names through :class:`Keys` below.

The ban TTL is ``BLACKLIST_BAN_TTL_SECONDS``, the restart window ``BLACKLIST_RESTART_TTL_SECONDS``
(``blacklist.py`` owns those records and the clean-stop marks; ``fleet.py`` the heartbeats and the
spend reservations).

The spend cap (``VAST_MAX_FLEET_DPH``) is a reservation: under the fleet-wide ``spendlock`` (the
same redis-py ``Lock``, held only to read, decide and write) a pod adds up the other pods' live
heartbeats and reservations, and reserves the $/h of the offers it may rent before the rent call.
The reservation is deleted in the MULTI/EXEC of the first heartbeat that counts the rental, or at
once when nothing was rented; a crashed pod's reservation expires after ``SPEND_RESERVE_TTL_S``.

The rent lock is redis-py's ``Lock``: ``SET NX PX`` with this process's token to take it, and Lua
scripts that check the token to renew (``reacquire``) and to release it, so only its holder ever
extends or deletes it. ``fleetguard.GuardedFleet.rent_lock`` renews it every ``RENT_LOCK_RENEW_S`` while held
and bounds the locked section by ``RENT_SECTION_S``, shorter than the TTL.

The rent mark (``rentmark.py``) lets a renter trust the list its tick already made instead of
listing again under the lock.

Errors: every redis-py (or socket, or timeout) failure becomes ``errors.StoreError`` in
:func:`run_redis`. :class:`Outage` is the shared "Redis is down" state of the guarded adapters the
reconciler uses: their calls never raise, answer a neutral default during an outage, log it once
when it starts and once when it ends, and try Redis again with a backoff (``backoff.exponential_s``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    LockNotOwnedError,
    MovedError,
    RedisError,
    TryAgainError,
)

from provisioner import backoff, errors

log = logging.getLogger("provisioner.store")

DEFAULT_KEY_PREFIX: Final = "vastprov:"
#: how long a boot start is kept; far longer than any sensible BLACKLIST_BAN_AFTER_SECONDS
BOOT_KEY_TTL_S: Final = 2 * 24 * 3600
#: a heartbeat (and its index entry) is kept this long after it was written
HEARTBEAT_TTL_S: Final = 7 * 24 * 3600
#: how long a rent lock holds without renewal: longer than a search plus a rent, shorter than a boot
RENT_LOCK_TTL_S: Final = 90.0
#: the holder renews its rent lock this often while it works under it
RENT_LOCK_RENEW_S: Final = 30.0
#: the work under the rent lock (list again, search, rent) is cut off after this; below the TTL
RENT_SECTION_S: Final = 75.0
#: a rent mark is kept this long: longer than any list a renter may still be holding
RENT_MARK_TTL_S: Final = 3600.0
#: a list trusts the rents that were done this long before it was requested (Vast's list lag)
RENT_MARK_LAG_MS: Final = 5_000
#: the fleet-wide spend lock is held only to read, decide and reserve: it expires after this
SPEND_LOCK_TTL_S: Final = 10.0
#: how long a pod waits for the spend lock before it holds its rental for a tick
SPEND_LOCK_WAIT_S: Final = 5.0
#: a spend reservation outlives a rent call and the hold after an unknown outcome
SPEND_RESERVE_TTL_S: Final = 120.0
#: while Redis is down, try it again after this (seconds)
OUTAGE_RETRY_S: Final = 2.0

#: the start of every Lua script that times anything: ``now``, the Redis server's clock in ms (the
#: fleet's one clock, whatever the pods' clocks say)
LUA_NOW_MS: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"""

#: the Redis client the adapters talk through (``connect`` builds one; tests pass fakeredis)
Client: TypeAlias = aioredis.Redis
BanKind = Literal["host", "machine"]
T = TypeVar("T")
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Keys:
    """Every key name, under one prefix (the table above)."""

    prefix: str = DEFAULT_KEY_PREFIX

    def ban(self, kind: BanKind, ident: int) -> str:
        return f"{self.prefix}ban:{kind}:{ident}"

    def ban_index(self, kind: BanKind) -> str:
        return f"{self.prefix}bans:{kind}"

    def boot(self, instance_id: int) -> str:
        return f"{self.prefix}boot:{instance_id}"

    def restarts(self, instance_id: int) -> str:
        return f"{self.prefix}restarts:{instance_id}"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    def heartbeat(self, label: str) -> str:
        return f"{self.prefix}heartbeat:{label}"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}heartbeats"

    @property
    def since(self) -> str:
        return f"{self.prefix}heartbeats:since"

    def rent_lock(self, label: str) -> str:
        return f"{self.prefix}rentlock:{label}"

    def rent_mark(self, label: str) -> str:
        return f"{self.prefix}rentmark:{label}"

    @property
    def spend_lock(self) -> str:
        return f"{self.prefix}spendlock"

    def spend(self, label: str) -> str:
        return f"{self.prefix}spend:{label}"

    @property
    def spends(self) -> str:
        return f"{self.prefix}spends"

    def reaped(self, label: str) -> str:
        return f"{self.prefix}reaped:{label}"

    def clean_stop(self, instance_id: int) -> str:
        return f"{self.prefix}cleanstop:{instance_id}"

    def pace(self, budget: str, endpoint: str) -> str:
        return f"{self.prefix}pace:{budget}:{endpoint}"

    def view(self, budget: str, fleet: str) -> str:
        return f"{self.prefix}view:{budget}:{fleet}"

    def rent_queue(self, budget: str) -> str:
        return f"{self.prefix}rentq:{budget}"

    def claim(self, budget: str, offer_id: int) -> str:
        return f"{self.prefix}claim:{budget}:{offer_id}"


def connect(url: str, *, timeout_s: float) -> Client:
    """A Redis client with short socket timeouts and one immediate reconnect, no backoff.

    redis-py's default retries (10, with exponential backoff) would stall a reconcile tick for
    seconds on every call while Redis is down.
    """
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        decode_responses=True,
    )


async def run_redis(op: str, fn: Callable[[], Awaitable[T]], deadline_s: float) -> T:
    """Run one Redis exchange within the deadline; map every failure to ``StoreError`` (the one place)."""
    try:
        async with asyncio.timeout(deadline_s):
            return await fn()
    except TimeoutError as exc:
        raise errors.StoreError(f"redis {op}: no answer within {deadline_s:g}s") from exc
    except (RedisError, OSError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, _CLUSTER_ERRORS) or any(word in detail for word in _CLUSTER_WORDS):
            cluster = f"BLACKLIST_REDIS_URL names a Redis Cluster node; {CLUSTER_UNSUPPORTED}"
            raise errors.StoreError(f"redis {op}: {type(exc).__name__} {detail}: {cluster}") from exc
        raise errors.StoreError(f"redis {op}: {detail}") from exc


#: what a Redis Cluster node answers a client that is not cluster-aware (a pipeline's error names
#: the command's in its message)
_CLUSTER_ERRORS = (MovedError, AskError, ClusterDownError, ClusterCrossSlotError, TryAgainError)
_CLUSTER_WORDS = ("CROSSSLOT", "MOVED ", "CLUSTERDOWN")
CLUSTER_UNSUPPORTED = (
    "cluster mode is not supported (the fleet's keys and scripts span hash slots): use a single Redis,"
    " or a managed one with cluster mode disabled"
)


async def refuse_cluster(client: Client, deadline_s: float) -> None:
    """``ConfigError`` when the server runs in cluster mode (``INFO cluster``: ``cluster_enabled:1``),
    which would fail every multi-key call at run time; ``StoreError`` when it cannot be asked."""
    info = await run_redis("info cluster", lambda: client.info("cluster"), deadline_s)
    if str(info.get("cluster_enabled", 0)) == "1":
        raise errors.ConfigError(
            "BLACKLIST_REDIS_URL", f"the server runs in cluster mode; {CLUSTER_UNSUPPORTED}"
        )


def json_object(raw: Any) -> dict[str, Any]:
    """A stored JSON object, or {} for anything else (missing, corrupt, foreign): values in a shared
    Redis are read, never trusted."""
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_url(url: str) -> str:
    """``host:port/db`` of a Redis URL, without credentials (for logs and messages)."""
    rest = url.split("://", 1)[-1]
    return rest.rsplit("@", 1)[-1] or url.split("://", 1)[0]


class Outage:
    """Guarded calls: ``call`` never raises, and a Redis outage is logged once when it starts and ends.

    While Redis fails, ``call`` answers its ``default`` without trying Redis until the retry time:
    ``retry_s`` after the first failure, doubling up to ``retry_cap_s`` (default: ``retry_s``, a
    fixed interval) on each further one. Adapters sharing one ``Outage`` share one log line.
    """

    def __init__(
        self,
        *,
        where: str = "redis",
        retry_s: float = OUTAGE_RETRY_S,
        retry_cap_s: float | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.where = where
        self.retry_s = retry_s
        self.retry_cap_s = retry_s if retry_cap_s is None else retry_cap_s
        self._clock = clock
        self._down_since: float | None = None
        self._failures = 0
        self._retry_at = 0.0

    async def call(self, fn: Callable[[], Awaitable[T]], default: T, *, always: bool = False) -> T:
        """``await fn()``, or ``default`` when it fails or Redis is down (not tried before the retry time).

        ``always``: try it even then. For the calls a rental depends on (the spend cap's reservation,
        the rent lock): one failed call elsewhere a moment before must not let a rental skip them;
        only Redis failing them now does (fail-open).
        """
        now = self._clock()
        if self._down_since is not None and now < self._retry_at and not always:
            return default
        try:
            result = await fn()
        except errors.StoreError as exc:
            self._failures += 1
            wait = backoff.exponential_s(self._failures, start_s=self.retry_s, cap_s=self.retry_cap_s)
            self._retry_at = now + wait
            if self._down_since is None:
                self._down_since = now
                log.warning(
                    "Redis at %s is unavailable (%s); provisioning continues without bans",
                    self.where,
                    exc,
                    extra={"event": "store-unavailable"},
                )
            return default
        if self._down_since is not None:
            log.warning(
                "Redis at %s is back after %.0fs; bans and reputation are used again",
                self.where,
                now - self._down_since,
                extra={"event": "store-recovered"},
            )
            self._down_since = None
            self._failures = 0
        return result


class RentLock:
    """The per-label rent lock on redis-py's ``Lock``; every call raises ``StoreError`` on failure."""

    def __init__(self, client: Client, keys: Keys, *, deadline_s: float = 2.0) -> None:
        self._redis = client
        self.keys = keys
        self._deadline_s = deadline_s

    def _lock(self, label: str, token: str, ttl_s: float) -> Lock:
        lock = Lock(
            self._redis, self.keys.rent_lock(label), timeout=ttl_s, blocking=False, thread_local=False
        )
        lock.local.token = token.encode()
        return lock

    async def take(self, label: str, token: str, ttl_s: float = RENT_LOCK_TTL_S) -> bool:
        """True when ``token`` holds the label's lock now: newly taken (SET NX PX), or already its own."""
        lock = self._lock(label, token, ttl_s)

        async def go() -> bool:
            if await lock.acquire(token=token):
                return True
            return await self._reacquire(lock)

        return await run_redis("rent lock", go, self._deadline_s)

    async def renew(self, label: str, token: str, ttl_s: float = RENT_LOCK_TTL_S) -> bool:
        """Reset the lock's TTL if ``token`` still holds it (Lua); False when it is lost."""
        lock = self._lock(label, token, ttl_s)
        return await run_redis("rent lock renew", lambda: self._reacquire(lock), self._deadline_s)

    async def release(self, label: str, token: str) -> None:
        """Delete the lock if ``token`` still holds it (Lua); another holder's lock is left alone."""
        lock = self._lock(label, token, RENT_LOCK_TTL_S)

        async def go() -> None:
            try:
                await lock.release()
            except LockNotOwnedError:
                log.debug("rent lock of %s: not ours any more, nothing to release", label)

        await run_redis("rent unlock", go, self._deadline_s)

    @staticmethod
    async def _reacquire(lock: Lock) -> bool:
        try:
            await lock.reacquire()
        except LockNotOwnedError:
            return False
        return True
