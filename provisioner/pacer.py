"""The pacer: every Vast.ai call on one API key waits for its endpoint's slot before it is sent.

Vast limits each key per endpoint as a minimum interval between calls (docs/vast-api.md §3.1), so the
budget belongs to the key, not to the pod. With Redis the pacer is fleet-wide: one Lua script per
call does ``slot = max(now, stored, now + floor)``, stores ``slot + interval`` and returns the
wait, atomically, on the Redis server's clock (``TIME``), so pod clock skew does not matter (needs
Redis >= 5, where scripts replicate their effects). Without Redis, or while it fails or answers
slower than ``deadline_s``, a per-process pacer applies the same rules; this process's own slots
are always mirrored locally and passed to Redis as a floor, so switching between the two never
sends two calls of this process closer than the interval. A 429 that still arrives moves the
endpoint's next slot for everyone (:meth:`Pacer.penalize`, or automatically when
``errors.RateLimited`` leaves ``async with pacer.slot(endpoint)``).

Redis keys: ``store.py``'s one key table (``D pace:<B>:<endpoint>[:penalty]``, ``P view:<B>:<F>``,
``P rentq:<B>``, ``P claim:<B>:<offer_id>``); ``B`` is the budget id (:func:`pacer.budget_id`), never
the API key.

``Failover`` (``failover.py``) is the outage guard the fleet modules share (``fleetview``,
``rentqueue``): pass one instance to all of them and an outage is logged once when it starts and
once when it ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, TypeAlias, TypeVar

from provisioner import errors, failover, store

log = logging.getLogger("provisioner.pacer")

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
#: the Redis client the fleet modules talk through (decode_responses=True; tests pass fakeredis)
Client: TypeAlias = failover.Client

DEFAULT_KEY_PREFIX: Final = store.DEFAULT_KEY_PREFIX
#: a slot key outlives its next free slot by this much, then expires (nothing to clean up)
SLOT_KEY_SLACK_MS: Final = 60_000
#: added to every interval: two calls sent exactly one interval apart may arrive closer than that
DEFAULT_MARGIN_S: Final = 0.05
#: a slot reached later than this (a stalled loop, a starved CPU) is given up for the next one, at
#: most twice in a row: sent late, the call would reach Vast too close to the one in the next slot
LATE_S: Final = 0.05
LATE_RETRIES: Final = 2
DEFAULT_DEADLINE_S: Final = failover.DEFAULT_DEADLINE_S
DEFAULT_RETRY_S: Final = failover.DEFAULT_RETRY_S
#: the outage guard the fleet modules share (``failover.py``; named here too, where they import it)
Failover = failover.Failover


class Endpoint(StrEnum):
    """The endpoint groups Vast limits separately (one budget each)."""

    LIST_INSTANCES = "list_instances"  # GET /api/v1/instances/
    SHOW_INSTANCE = "show_instance"  # GET /api/v0/instances/{id}/
    DESTROY = "destroy"  # DELETE /api/v0/instances/{id}/
    LABEL = "label"  # PUT /api/v0/instances/{id}/ (label, start, stop)
    TEMPLATE_SEARCH = "template_search"  # GET /api/v0/template/
    TEMPLATE_CREATE = "template_create"  # POST /api/v0/template/
    CREATE_INSTANCE = "create_instance"  # PUT /api/v0/asks/{id}/ (the rent)
    SEARCH_OFFERS = "search_offers"  # POST /api/v0/bundles/
    WHOAMI = "whoami"  # GET /api/v0/users/current
    LOGS = "logs"  # PUT /api/v0/instances/request_logs/{id}/
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Limit:
    """One endpoint's budget: the minimum interval between calls, and the least a 429 costs."""

    interval_s: float
    penalty_s: float


def _limit(interval_s: float, penalty_s: float | None = None) -> Limit:
    return Limit(interval_s, interval_s if penalty_s is None else penalty_s)


#: Vast's published minimum intervals (docs/vast-api.md §3.1); search offers is "10 per minute"
DEFAULT_LIMITS: Final[Mapping[Endpoint, Limit]] = MappingProxyType(
    {
        Endpoint.LIST_INSTANCES: _limit(1.0),
        Endpoint.SHOW_INSTANCE: _limit(2.0),
        Endpoint.DESTROY: _limit(3.0),
        Endpoint.LABEL: _limit(1.0),
        Endpoint.TEMPLATE_SEARCH: _limit(3.0),
        Endpoint.TEMPLATE_CREATE: _limit(1.0),
        Endpoint.CREATE_INSTANCE: _limit(4.5, penalty_s=12.0),
        Endpoint.SEARCH_OFFERS: _limit(6.0),
        Endpoint.WHOAMI: _limit(1.0),
        Endpoint.LOGS: _limit(1.0),
        Endpoint.OTHER: _limit(1.0),
    }
)


def limits_with(intervals_s: Mapping[str, float] | None = None) -> dict[Endpoint, Limit]:
    """The default limits with some intervals replaced (by endpoint name); a penalty never drops below."""
    limits = dict(DEFAULT_LIMITS)
    for name, interval_s in (intervals_s or {}).items():
        endpoint = Endpoint(name)
        if not interval_s >= 0 or interval_s == float("inf"):
            raise ValueError(f"{name}: interval must be a finite number >= 0, got {interval_s!r}")
        limits[endpoint] = Limit(interval_s, max(interval_s, limits[endpoint].penalty_s))
    return limits


def parse_intervals(text: str, variable: str = "VAST_PACE_INTERVALS") -> dict[str, float]:
    """``"create_instance=5,list_instances=1.5"`` as a mapping; a bad entry is a ``ConfigError``."""
    intervals: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in Endpoint.__members__.values():
            known = ", ".join(Endpoint)
            raise errors.ConfigError(variable, f"{item!r} is not <endpoint>=<seconds>; endpoints: {known}")
        try:
            intervals[name] = float(value)
            limits_with({name: intervals[name]})
        except ValueError as exc:
            raise errors.ConfigError(variable, f"{name}: {value.strip()!r} is not a number >= 0") from exc
    return intervals


def budget_id(api_key: str) -> str:
    """The name of a key's budget: 16 hex digits of a domain-separated SHA-256, never the key."""
    return hashlib.sha256(b"vast-pod-provisioner/budget:" + api_key.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Keys:
    """The pacer's Redis keys for one budget."""

    budget: str
    prefix: str = DEFAULT_KEY_PREFIX

    def slot(self, endpoint: Endpoint) -> str:
        return store.Keys(self.prefix).pace(self.budget, endpoint.value)

    def penalty(self, endpoint: Endpoint) -> str:
        """Until when a 429 holds the endpoint (unix ms, Redis clock): slots handed out before it came
        and falling inside it are taken again after it (``Pacer.acquire``)."""
        return self.slot(endpoint) + ":penalty"


@dataclass(frozen=True, slots=True)
class Slot:
    """A reserved slot: wait ``wait_s`` then send. ``at_s`` is on the Redis clock when ``fleet``."""

    endpoint: Endpoint
    wait_s: float
    at_s: float
    fleet: bool


class LocalPacer:
    """The same rules within one process: a next free slot per endpoint, on the local clock."""

    def __init__(self, limits: Mapping[Endpoint, Limit], *, margin_s: float, clock: Clock) -> None:
        self._limits = limits
        self._margin_s = margin_s
        self._clock = clock
        self._next: dict[Endpoint, float] = {}

    def interval_s(self, endpoint: Endpoint) -> float:
        return self._limits[endpoint].interval_s + self._margin_s

    def penalty_s(self, endpoint: Endpoint, retry_after_s: float | None) -> float:
        """How far a 429 moves the next slot: the server's hint or the endpoint's penalty, the longer."""
        return max(retry_after_s or 0.0, self._limits[endpoint].penalty_s) + self._margin_s

    def remaining_s(self, endpoint: Endpoint) -> float:
        """Seconds until the endpoint's next free slot (0 when free now)."""
        return max(self._next.get(endpoint, 0.0) - self._clock(), 0.0)

    def reserve(self, endpoint: Endpoint) -> Slot:
        """Take the next free slot (synchronous: atomic within the event loop)."""
        now = self._clock()
        at = max(now, self._next.get(endpoint, 0.0))
        self._next[endpoint] = at + self.interval_s(endpoint)
        return Slot(endpoint, at - now, at, fleet=False)

    def note(self, endpoint: Endpoint, wait_s: float) -> None:
        """Mirror a slot taken elsewhere (in Redis) that this process sends in ``wait_s``."""
        after = self._clock() + wait_s + self.interval_s(endpoint)
        self._next[endpoint] = max(self._next.get(endpoint, 0.0), after)

    def push(self, endpoint: Endpoint, wait_s: float) -> None:
        """No slot before ``wait_s`` from now."""
        self._next[endpoint] = max(self._next.get(endpoint, 0.0), self._clock() + wait_s)


# KEYS[1] slot key · ARGV: interval ms, floor wait ms, slack ms -> {wait ms, slot ms}
_ACQUIRE_LUA: Final = (
    store.LUA_NOW_MS
    + """
local stored = tonumber(redis.call('GET', KEYS[1])) or 0
local slot = math.max(now, stored, now + tonumber(ARGV[2]))
local nxt = slot + tonumber(ARGV[1])
local ttl = nxt - now + tonumber(ARGV[3])
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', string.format('%.0f', ttl))
return {slot - now, slot}
"""
)

# KEYS[1] slot key · ARGV: wait ms, slack ms -> {ms until the next free slot}
_PENALIZE_LUA: Final = (
    store.LUA_NOW_MS
    + """
local stored = tonumber(redis.call('GET', KEYS[1])) or 0
local target = now + tonumber(ARGV[1])
local ttl = string.format('%.0f', target - now + tonumber(ARGV[2]))
if target > stored then
  redis.call('SET', KEYS[1], string.format('%.0f', target), 'PX', ttl)
  stored = target
end
if target > (tonumber(redis.call('GET', KEYS[2])) or 0) then
  redis.call('SET', KEYS[2], string.format('%.0f', target), 'PX', ttl)
end
return {stored - now}
"""
)

# KEYS[1] a key holding unix ms -> {its value, 0 when absent}
_GET_LUA: Final = "return {tonumber(redis.call('GET', KEYS[1])) or 0}"

# KEYS[1] slot key -> {ms until the next free slot (may be negative: free now)}
_PEEK_LUA: Final = (
    store.LUA_NOW_MS
    + """
return {(tonumber(redis.call('GET', KEYS[1])) or 0) - now}
"""
)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class Pacer:
    """Paces every call on one API key: fleet-wide through Redis when given one, else per process."""

    def __init__(
        self,
        redis: Client | None,
        keys: Keys,
        *,
        limits: Mapping[Endpoint, Limit] = DEFAULT_LIMITS,
        margin_s: float = DEFAULT_MARGIN_S,
        failover: Failover | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._redis = redis
        self.keys = keys
        self.local = LocalPacer(limits, margin_s=margin_s, clock=clock)
        self.failover = failover or Failover(clock=clock)
        self._clock = clock
        self._sleep = sleep
        #: told each wait for a slot before it is slept (the daemon's liveness allows for it)
        self.on_wait: Callable[[float], None] | None = None

    def interval_s(self, endpoint: Endpoint) -> float:
        """The spacing the pacer keeps on this endpoint (the limit plus the margin)."""
        return self.local.interval_s(endpoint)

    async def _script(self, op: str, source: str, keys: Sequence[str], *args: int) -> list[Any]:
        return list(await self.failover.script(self._redis, op, source, keys, *args))

    async def reserve(self, endpoint: Endpoint) -> Slot:
        """Take the endpoint's next slot without waiting for it (fleet-wide when Redis answers)."""
        floor_ms = _ms(self.local.remaining_s(endpoint))
        args = (_ms(self.interval_s(endpoint)), floor_ms, SLOT_KEY_SLACK_MS)
        try:
            wait_ms, slot_ms = await self._script("pace", _ACQUIRE_LUA, [self.keys.slot(endpoint)], *args)
        except errors.StoreError:
            return self.local.reserve(endpoint)
        wait_s = int(wait_ms) / 1000
        self.local.note(endpoint, wait_s)
        return Slot(endpoint, wait_s, int(slot_ms) / 1000, fleet=True)

    async def acquire(self, endpoint: Endpoint) -> Slot:
        """Reserve the endpoint's next slot and sleep until it: the call may be sent on return. A slot
        reached more than ``LATE_S`` late (a slow reply or a late wake-up) is given up for the next one
        (``LATE_RETRIES``)."""
        retries = penalized = 0
        while True:
            # never early: the wait counts from the reply (Redis may have run the script late). But
            # the reply may have come late too (a loaded Redis, a busy loop): the slot may be that
            # much behind, which counts as lateness
            asked_at = self._clock()
            slot = await self.reserve(endpoint)
            replied_at = self._clock()
            due = replied_at + slot.wait_s
            if slot.wait_s > 0:
                if self.on_wait is not None:
                    self.on_wait(slot.wait_s)
                await self._sleep(slot.wait_s)
                if slot.fleet and penalized < LATE_RETRIES and await self._penalized(slot):
                    penalized += 1  # a 429 came while this pod slept towards its slot
                    continue
            late_s = self._clock() - due + (replied_at - asked_at)
            if late_s <= LATE_S or retries == LATE_RETRIES:
                return slot
            retries += 1
            log.debug("%s slot missed by %.2fs (a busy process); taking the next one", endpoint, late_s)

    @asynccontextmanager
    async def slot(self, endpoint: Endpoint) -> AsyncIterator[Slot]:
        """``async with pacer.slot(e): send()``; a ``RateLimited`` leaving the block penalizes ``e``."""
        taken = await self.acquire(endpoint)
        try:
            yield taken
        except errors.RateLimited as exc:
            await self.penalize(endpoint, exc.retry_after_s)
            raise

    async def penalize(self, endpoint: Endpoint, retry_after_s: float | None = None) -> float:
        """A 429 arrived: no slot for anyone before ``max(retry_after_s, penalty)``; returns the wait."""
        wait_s = self.local.penalty_s(endpoint, retry_after_s)
        self.local.push(endpoint, wait_s)
        try:
            keys = [self.keys.slot(endpoint), self.keys.penalty(endpoint)]
            (left_ms,) = await self._script("penalize", _PENALIZE_LUA, keys, _ms(wait_s), SLOT_KEY_SLACK_MS)
        except errors.StoreError:
            return self.local.remaining_s(endpoint)
        return max(int(left_ms) / 1000, self.local.remaining_s(endpoint))

    async def _penalized(self, slot: Slot) -> bool:
        """Whether a 429's penalty, come while this pod slept, covers its slot (then it takes another)."""
        try:
            (until_ms,) = await self._script("penalty", _GET_LUA, [self.keys.penalty(slot.endpoint)])
        except errors.StoreError:
            return False
        return int(until_ms) > round(slot.at_s * 1000)

    async def free_in_s(self, endpoint: Endpoint) -> float:
        """Seconds until the endpoint's next free slot, without taking it (for "wait, don't back off")."""
        local_s = self.local.remaining_s(endpoint)
        try:
            (left_ms,) = await self._script("peek", _PEEK_LUA, [self.keys.slot(endpoint)])
        except errors.StoreError:
            return local_s
        return max(int(left_ms) / 1000, local_s, 0.0)
