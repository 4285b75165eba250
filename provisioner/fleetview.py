"""The shared instance view: one instance list for the whole fleet per interval, kept in Redis.

client-go's shared informer, on the Redis the pods already share: instead of every pod listing
every instance on the key, a view no older than the caller's ``max_age_s`` is read from Redis, and
a stale one is refreshed once for everyone (single flight): the first pod to find it stale takes a
short lock (``SET NX PX`` with a token), lists, and publishes; the others poll until the new
version is there (or until the lock expires, if its holder died) instead of listing themselves.
Freshness check and lock are one Lua script, so a pod that finds the view stale after another pod
has just refreshed it reads the new view rather than listing again.

Ages are on the Redis clock (``TIME``), and a view's time is when its list was *requested* (the
lock was taken), so "the list is younger than my rent lock" holds whatever the pods' clocks say:
a caller that must see every rent after some moment passes ``newer_than_ms``.

The list call is passed in (``fetch``), so the view is generic over the payload: a :class:`Codec`
says how to read an item's label and how to turn it into JSON and back. Only items whose label
starts with the fleet's prefix are kept. Without Redis, or while it fails, each pod keeps its own
view (it lists itself, once per ``max_age_s``, single flight within the process), and only its own
label when ``fetch_label`` is given: one page, not the whole account. :class:`OwnInstances` also tells
the reconciler to poll no faster than a pod without Redis would (``local_poll_s``) while its list is
its own: an outage costs the key what pods without Redis spend, not every pod listing at the shared
view's pace.

Redis keys: ``store.py``'s one key table (``D pace:<B>:<endpoint>[:penalty]``, ``P view:<B>:<F>``,
``P rentq:<B>``, ``P claim:<B>:<offer_id>``); ``B`` is the budget id (:func:`pacer.budget_id`), never
the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from provisioner import errors, model, pacer, store

log = logging.getLogger("provisioner.fleetview")

T = TypeVar("T")

#: a view nobody refreshed for this long is dropped (its content is useless by then)
VIEW_TTL_MS: Final = 3_600_000
#: the lock a refreshing pod holds: longer than a paced list call, short enough if its holder dies
DEFAULT_LOCK_TTL_S: Final = 20.0
#: how often a waiting pod looks for the new version
DEFAULT_POLL_S: Final = 0.05


@dataclass(frozen=True, slots=True)
class Keys:
    """The view's Redis keys for one budget and one fleet (label prefix)."""

    budget: str
    fleet: str
    prefix: str = pacer.DEFAULT_KEY_PREFIX

    @property
    def view(self) -> str:
        return store.Keys(self.prefix).view(self.budget, self.fleet)

    @property
    def lock(self) -> str:
        return f"{self.view}:lock"


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """How to read an item's label and turn it into JSON and back (``decode`` raises on a foreign value)."""

    label_of: Callable[[T], str | None]
    encode: Callable[[T], Any]
    decode: Callable[[Any], T]


def _raw_label(item: dict[str, Any]) -> str | None:
    label = item.get("label")
    return label if isinstance(label, str) else None


def _raw_decode(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"not an instance object: {type(value).__name__}")
    return value


#: raw instance JSON as the v1 list returns it
RAW: Final[Codec[dict[str, Any]]] = Codec(label_of=_raw_label, encode=lambda item: item, decode=_raw_decode)


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[T]):
    """What a read saw: the items, their age, and whether they came from the fleet's view."""

    items: tuple[T, ...]
    age_s: float
    shared: bool
    fetched: bool
    #: when the list was requested, unix ms on the Redis clock (None: a local list)
    at_ms: int | None = None


# KEYS: view, lock · ARGV: max age ms, token, lock ttl ms, newer than ms (-1: any)
# -> {1, now, at, items} fresh | {2, now} the lock is ours: list | {0, now} someone else is listing
_TRY_LUA: Final = (
    store.LUA_NOW_MS
    + """
local at = tonumber(redis.call('HGET', KEYS[1], 'at'))
-- a view stamped in the future (a Redis restored on a clock behind, a clock stepped back) is stale
if at and at <= now and now - at <= tonumber(ARGV[1]) and at > tonumber(ARGV[4]) then
  return {1, now, at, redis.call('HGET', KEYS[1], 'items')}
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {2, now}
end
return {0, now}
"""
)

# KEYS: view, lock · ARGV: token, at ms, items JSON, view ttl ms. A newer view is never overwritten,
# but one stamped in the Redis clock's future is (it would otherwise stand until the clock got there).
_PUBLISH_LUA: Final = (
    store.LUA_NOW_MS
    + """
local stored = tonumber(redis.call('HGET', KEYS[1], 'at')) or -1
if stored > now then stored = -1 end
if tonumber(ARGV[2]) > stored then
  redis.call('HSET', KEYS[1], 'at', ARGV[2], 'items', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""
)

# KEYS: lock · ARGV: token
_RELEASE_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _Stale(Exception):
    """The shared view could not be used (corrupt, or nobody published in time): list locally."""


class FleetView(Generic[T]):
    """The fleet's instances, listed once per ``max_age_s`` for all pods on one Redis."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Sequence[T]]],
        redis: pacer.Client | None,
        keys: Keys,
        codec: Codec[T],
        *,
        lock_ttl_s: float = DEFAULT_LOCK_TTL_S,
        poll_s: float = DEFAULT_POLL_S,
        failover: pacer.Failover | None = None,
        fetch_label: Callable[[str], Awaitable[Sequence[T]]] | None = None,
        clock: pacer.Clock = time.monotonic,
        sleep: pacer.Sleep = asyncio.sleep,
    ) -> None:
        self._fetch = fetch
        self._fetch_label = fetch_label
        self._redis = redis
        self.keys = keys
        self._codec = codec
        self._lock_ttl_s = lock_ttl_s
        self._poll_s = poll_s
        self.failover = failover or pacer.Failover(clock=clock)
        self._clock = clock
        self._sleep = sleep
        self._local_lock = asyncio.Lock()
        #: per-process lists while Redis is away: the whole fleet's (key None) or one label's
        self._local: dict[str | None, tuple[float, tuple[T, ...]]] = {}
        #: how many times this process called ``fetch`` (the fleet's list calls, from this pod)
        self.fetches = 0

    async def get(
        self, max_age_s: float, *, label: str | None = None, newer_than_ms: int | None = None
    ) -> Snapshot[T]:
        """The fleet's instances (only ``label``'s when given), listed no more than ``max_age_s`` ago
        and, when ``newer_than_ms`` is given, after that shared view (a pod polling a boot asks for
        the list after the one it saw: one list per interval for the fleet, however many poll)."""
        max_age_s = max(max_age_s, 0.0)
        if self._redis is not None:
            after = -1 if newer_than_ms is None else newer_than_ms
            try:
                return self._only(await self._shared(max_age_s, after), label)
            except (errors.StoreError, _Stale):
                pass
        by_label = label if self._fetch_label is not None else None
        snap = await self._local_get(max_age_s, by_label)
        return self._only(snap, label)

    def _only(self, snap: Snapshot[T], label: str | None) -> Snapshot[T]:
        if label is None:
            return snap
        own = tuple(i for i in snap.items if self._codec.label_of(i) == label)
        return dataclasses.replace(snap, items=own)

    def _ours(self, items: Sequence[T]) -> tuple[T, ...]:
        return tuple(i for i in items if (self._codec.label_of(i) or "").startswith(self.keys.fleet))

    async def _local_get(self, max_age_s: float, label: str | None) -> Snapshot[T]:
        async with self._local_lock:
            kept = self._local.get(label)
            if kept is not None and self._clock() - kept[0] <= max_age_s:
                return Snapshot(kept[1], self._clock() - kept[0], shared=False, fetched=False)
            at = self._clock()
            items = await self._list(label)
            self._local[label] = (at, items)
            return Snapshot(items, self._clock() - at, shared=False, fetched=True)

    async def _list(self, label: str | None = None) -> tuple[T, ...]:
        self.fetches += 1
        if label is not None and self._fetch_label is not None:
            return self._ours(await self._fetch_label(label))
        return self._ours(await self._fetch())

    async def _script(self, op: str, source: str, keys: Sequence[str], *args: str | int) -> list[Any]:
        result = await self.failover.script(self._redis, op, source, keys, *args)
        return list(result) if isinstance(result, list) else [result]

    async def _shared(self, max_age_s: float, newer_than_ms: int) -> Snapshot[T]:
        token = secrets.token_hex(8)
        deadline = self._clock() + self._lock_ttl_s + 1.0
        args = (round(max_age_s * 1000), token, round(self._lock_ttl_s * 1000), newer_than_ms)
        while True:
            state = await self._script("view", _TRY_LUA, (self.keys.view, self.keys.lock), *args)
            if state[0] == 1:
                return self._decoded(state)
            if state[0] == 2:
                return await self._refresh(token, at_ms=int(state[1]))
            if self._clock() >= deadline:
                log.warning("Nobody published the shared instance view in time; listing here")
                raise _Stale
            await self._sleep(self._poll_s)

    def _decoded(self, state: list[Any]) -> Snapshot[T]:
        now_ms, at_ms, raw = int(state[1]), int(state[2]), state[3]
        try:
            items = tuple(self._codec.decode(v) for v in json.loads(raw))
        except (TypeError, ValueError, KeyError) as exc:
            log.warning("The shared instance view is unreadable (%s); listing here", exc)
            raise _Stale from exc
        return Snapshot(self._ours(items), (now_ms - at_ms) / 1000, shared=True, fetched=False, at_ms=at_ms)

    async def _refresh(self, token: str, at_ms: int) -> Snapshot[T]:
        """We hold the lock: list, publish, release (the lock is released on failure too)."""
        lock = (self.keys.lock,)
        started = self._clock()
        try:
            items = await self._list()
        except BaseException:
            with contextlib.suppress(errors.StoreError):  # else the lock expires by itself
                await self._script("view-release", _RELEASE_LUA, lock, token)
            raise
        payload = json.dumps([self._codec.encode(i) for i in items], separators=(",", ":"))
        keys = (self.keys.view, self.keys.lock)
        with contextlib.suppress(errors.StoreError):  # this pod still has its list; the others list again
            await self._script("view-publish", _PUBLISH_LUA, keys, token, at_ms, payload, VIEW_TTL_MS)
        return Snapshot(items, self._clock() - started, shared=True, fetched=True, at_ms=at_ms)


# ---------------------------------------------------------------- what the reconciler and the daemon use


def label_prefix(label: str) -> str:
    """The labels a pod's shared view keeps: ``k8s_pod=web-0`` -> ``k8s_pod=``; without ``=``, the label."""
    head, sep, _ = label.partition("=")
    return head + sep if sep else label


@dataclass(frozen=True, slots=True)
class OwnList:
    """A pod's instances from the fleet's view, and when that list was requested (Redis clock ms;
    None: a local list): a renter trusts it under the rent lock when no rent happened since."""

    instances: list[model.Instance]
    at_ms: int | None = None
    #: the soonest the next tick should list: the pace of a pod without Redis while this list was the
    #: pod's own (Redis away), 0 while the fleet shares one
    min_poll_s: float = 0.0


class InstanceLister(Protocol):
    """What the reconciler lists through (:class:`OwnInstances`, or a fake in tests)."""

    async def own(self, label: str, max_age_s: float, *, newer_than_ms: int | None = None) -> OwnList: ...


class OwnInstances:
    """The reconciler's list, read from the fleet's view: this pod's rows (exact label), parsed."""

    def __init__(self, view: FleetView[dict[str, Any]], local_poll_s: float = 0.0) -> None:
        self.view = view
        self.local_poll_s = local_poll_s

    async def own(self, label: str, max_age_s: float, *, newer_than_ms: int | None = None) -> OwnList:
        """``label``'s instances as listed no more than ``max_age_s`` ago, and after ``newer_than_ms``
        when given (a malformed row raises)."""
        snap = await self.view.get(max_age_s, label=label, newer_than_ms=newer_than_ms)
        found = {i.id: i for i in (model.Instance.from_api(row, "list instances") for row in snap.items)}
        own = sorted(found.values(), key=lambda i: i.id)
        return OwnList(own, snap.at_ms, 0.0 if snap.shared else self.local_poll_s)
