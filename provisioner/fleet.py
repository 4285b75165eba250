"""The fleet record in Redis: one heartbeat per pod, and the per-label rent lock (keys: ``store.py``).

Pods sharing one Redis (``BLACKLIST_ENABLED=true``) each write a heartbeat under their label; the
reaper (``reaper.py``) reads them to tell live pods from gone ones, and the spend guard
(``VAST_MAX_FLEET_DPH``) adds up their $/h before each rental. ``P`` is ``BLACKLIST_KEY_PREFIX``,
the blacklist's prefix.

The rent lock keeps two processes that share a label (a botched manual start beside the pod) from
renting at once: ``store.RentLock`` (redis-py's ``Lock``: SET NX PX with a per-process token, Lua
renew and release), held from just before the holder checks its list until its rent attempt is
over, renewed meanwhile, then released (a crashed holder blocks the label only for
``RENT_LOCK_TTL_S``). The work under it is bounded by ``RENT_SECTION_S`` (shorter than the TTL): past
it, it is cancelled. Under the lock the holder trusts its tick's list only when the label's rent mark
(``rentmark.RentMarks``) says no rent happened since that list was requested; else it lists again.

A heartbeat is one MULTI/EXEC (SET with TTL, ZADD, prune of the index, SET NX of ``since``): one
round trip, written after every reconcile tick and at least every ``HEARTBEAT_INTERVAL_S`` by the
daemon. It is kept for a week (``HEARTBEAT_TTL_S``) although it is stale after a minute or two:
a stale heartbeat is evidence that this Redis is the one the pods use (the reaper refuses to act
on an empty one), and it says when its pod was last seen. ``heartbeats:since`` is set by the
first heartbeat written to an empty Redis: when it is younger than the grace, Redis was flushed or
restarted and some live pods may not have written theirs yet, so the reaper refuses.

The spend cap is a reservation (:meth:`Fleet.reserve`): under the fleet-wide spend lock a pod adds
up the other pods' live heartbeats and spend reservations, decides which offers fit, and reserves
their $/h before its rent call; pods starting together therefore see each other's rentals before
any heartbeat shows them. The reservation goes in the MULTI/EXEC of the heartbeat that first
counts the rental (``beat(..., settle=True)``), at once when nothing was rented, or by its TTL.

Two readings of "alive": the spend guard counts a heartbeat younger than ``HEARTBEAT_LIVE_S``;
the reaper keeps an instance whose label's heartbeat is younger than ``REAP_GRACE_SECONDS``. Both
ages are on the fleet's one clock, a ``redisclock.RedisClock``: the daemon stamps a heartbeat's
``at`` (and ``since``) with the blacklist's, measured again before a heartbeat when it is due
(``fleetguard.GuardedFleet``); the reaper measures its own.

:class:`Fleet` raises ``StoreError`` (the reaper needs to know); ``fleetguard.GuardedFleet`` is what
the reconciler uses: it never raises and shares the blacklist's outage state (``store.Outage``), so
one Redis outage is logged once. The pure helpers (:func:`fleet_dph`, :func:`spend_block`) hold
the spend guard's arithmetic.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeGuard, TypeVar

from redis.asyncio.lock import Lock
from redis.exceptions import LockNotOwnedError

from provisioner import blacklist, rentmark, spend, store
from provisioner.spend import UNCHECKED, Decide, Reservation, fleet_dph, spend_block, usd

__all__ = ["UNCHECKED", "Decide", "Reservation", "fleet_dph", "spend_block", "usd"]

log = logging.getLogger("provisioner.fleet")

HEARTBEAT_TTL_S: Final = store.HEARTBEAT_TTL_S
#: the daemon writes a heartbeat at least this often, whatever the reconcile interval
HEARTBEAT_INTERVAL_S: Final = 20.0
#: the spend guard counts a pod whose heartbeat is at most this old
HEARTBEAT_LIVE_S: Final = spend.HEARTBEAT_LIVE_S
RENT_LOCK_TTL_S: Final = store.RENT_LOCK_TTL_S

T = TypeVar("T")
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One pod's latest sign of life: its label, pod name, instances and what they cost."""

    label: str
    pod: str
    at: float
    instance_ids: tuple[int, ...] = ()
    dph: float = 0.0

    def age_s(self, now: float) -> float:
        """Seconds since it was written (never negative: a clock ahead of ours counts as now)."""
        return max(now - self.at, 0.0)

    def to_json(self) -> str:
        data = {
            "label": self.label,
            "pod": self.pod,
            "at": self.at,
            "instance_ids": list(self.instance_ids),
            "dph": round(self.dph, 6),
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: Any) -> Heartbeat | None:
        """The heartbeat in ``raw``, or None when it is not one (a foreign or corrupt value)."""
        data = store.json_object(raw)
        label, pod, at, dph = data.get("label"), data.get("pod"), data.get("at"), data.get("dph", 0.0)
        ids = data.get("instance_ids", [])
        if not isinstance(label, str) or not isinstance(pod, str) or not _number(at) or not _number(dph):
            return None
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            return None
        return cls(label=label, pod=pod, at=float(at), instance_ids=tuple(ids), dph=float(dph))


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Fleet:
    """Heartbeats in Redis. Every failure raises ``StoreError``."""

    def __init__(
        self,
        client: store.Client,
        *,
        keys: store.Keys | None = None,
        deadline_s: float = 2.0,
        clock: Clock = time.time,
    ) -> None:
        self._redis = client
        self.keys = keys or store.Keys()
        self._deadline_s = deadline_s
        self._clock = clock
        self._lock = store.RentLock(client, self.keys, deadline_s=deadline_s)
        #: the label's latest rent (``rentmark.RentMarks``): lets a renter trust its tick's list
        self.marks = rentmark.RentMarks(client, self.keys, deadline_s=deadline_s)

    @property
    def clock(self) -> Clock:
        return self._clock

    @classmethod
    def over(cls, bans: blacklist.Blacklist) -> Fleet:
        """The fleet record on the blacklist's Redis client, prefix, deadline and clock."""
        return cls(bans.client, keys=bans.keys, deadline_s=bans.deadline_s, clock=bans.clock)

    async def _run(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        return await store.run_redis(op, fn, self._deadline_s)

    async def beat(self, heartbeat: Heartbeat, *, settle: bool = False) -> None:
        """Store ``heartbeat`` under its label (one MULTI/EXEC), and prune the index.

        ``settle``: the heartbeat counts the rental its label had reserved $/h for; the reservation
        goes in the same transaction (never counted twice, never missing).
        """
        horizon = self._clock() - HEARTBEAT_TTL_S

        async def go() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.heartbeat(heartbeat.label), heartbeat.to_json(), ex=HEARTBEAT_TTL_S)
                pipe.zadd(self.keys.heartbeats, {heartbeat.label: heartbeat.at})
                pipe.zremrangebyscore(self.keys.heartbeats, "-inf", horizon)
                pipe.set(self.keys.since, repr(heartbeat.at), nx=True)
                if settle:
                    pipe.delete(self.keys.spend(heartbeat.label))
                    pipe.zrem(self.keys.spends, heartbeat.label)
                await pipe.execute()

        await self._run("heartbeat", go)

    async def reserve(
        self, label: str, pod: str, decide: Decide, *, live_s: float = HEARTBEAT_LIVE_S
    ) -> Reservation:
        """Under the fleet-wide spend lock: the others' $/h (live heartbeats and reservations), then
        ``decide``'s amount reserved for ``label`` (TTL ``store.SPEND_RESERVE_TTL_S``)."""
        lock = Lock(
            self._redis,
            self.keys.spend_lock,
            timeout=store.SPEND_LOCK_TTL_S,
            blocking=True,
            blocking_timeout=store.SPEND_LOCK_WAIT_S,
            thread_local=False,
        )

        async def go() -> Reservation:
            if not await lock.acquire():
                return Reservation(None, busy=True)
            try:
                return await self._reserve_locked(label, pod, decide, live_s)
            finally:
                with contextlib.suppress(LockNotOwnedError):
                    await lock.release()

        return await store.run_redis("spend reservation", go, self._deadline_s + store.SPEND_LOCK_WAIT_S)

    async def _reserve_locked(self, label: str, pod: str, decide: Decide, live_s: float) -> Reservation:
        now = self._clock()
        beats = await self.heartbeats()
        others = fleet_dph(beats.values(), now=now, exclude_label=label, live_s=live_s)
        others += await self.reserved(exclude_label=label)
        amount = decide(others)
        if amount is None:
            return Reservation(others)
        ttl_s = store.SPEND_RESERVE_TTL_S
        record = json.dumps({"pod": pod, "dph": round(amount, 6), "at": now}, separators=(",", ":"))

        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.spend(label), record, px=int(ttl_s * 1000))
                pipe.zadd(self.keys.spends, {label: now + ttl_s})
                await pipe.execute()

        await self._run("spend reservation", write)
        return Reservation(others, amount)

    async def reserved(self, *, exclude_label: str | None = None) -> float:
        """The $/h the pods reserved for rentals no heartbeat counts yet (expired ones pruned)."""
        now = self._clock()

        async def index() -> list[Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(self.keys.spends, "-inf", now)
                pipe.zrangebyscore(self.keys.spends, now, "+inf")
                result: list[Any] = await pipe.execute()
                return result

        labels = [_text(x) for x in (await self._run("read reservations", index))[1]]
        names = [self.keys.spend(x) for x in labels if x != exclude_label]
        if not names:
            return 0.0
        raws: list[Any] = await self._run("read reservations", lambda: self._redis.mget(names))
        total = 0.0
        for raw in raws:
            dph = store.json_object(raw).get("dph")
            total += float(dph) if _number(dph) else 0.0
        return total

    async def release_reservation(self, label: str) -> None:
        """Drop ``label``'s reservation: its rent call rented nothing."""

        async def go() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.keys.spend(label))
                pipe.zrem(self.keys.spends, label)
                await pipe.execute()

        await self._run("release reservation", go)

    async def take_rent_lock(self, label: str, token: str, ttl_s: float = RENT_LOCK_TTL_S) -> bool:
        """True when this process (``token``) holds the label's rent lock, newly taken or already its own."""
        return await self._lock.take(label, token, ttl_s)

    async def renew_rent_lock(self, label: str, token: str, ttl_s: float = RENT_LOCK_TTL_S) -> bool:
        """Reset the lock's TTL if ``token`` still holds it; False when it was lost."""
        return await self._lock.renew(label, token, ttl_s)

    async def release_rent_lock(self, label: str, token: str) -> None:
        """Drop the label's rent lock if this process (``token``) still holds it."""
        await self._lock.release(label, token)

    async def heartbeats(self) -> dict[str, Heartbeat]:
        """Every kept heartbeat, by label (two round trips: the index, then the records)."""
        horizon = self._clock() - HEARTBEAT_TTL_S
        labels: list[Any] = await self._run(
            "read heartbeats", lambda: self._redis.zrangebyscore(self.keys.heartbeats, horizon, "+inf")
        )
        if not labels:
            return {}
        names = [self.keys.heartbeat(_text(label)) for label in labels]
        raws: list[Any] = await self._run("read heartbeats", lambda: self._redis.mget(names))
        found: dict[str, Heartbeat] = {}
        for raw in raws:
            beat = Heartbeat.from_json(raw)
            if beat is not None:
                found[beat.label] = beat
        return found

    async def tracked_since(self) -> float | None:
        """When the first heartbeat was written to this Redis (None: never, or the key is gone)."""
        raw = await self._run("read heartbeats", lambda: self._redis.get(self.keys.since))
        try:
            return float(_text(raw)) if raw is not None else None
        except ValueError:
            return None

    async def heartbeat(self, label: str) -> Heartbeat | None:
        """The heartbeat of one label (the reaper reads it again right before a destroy)."""
        raw = await self._run("read heartbeat", lambda: self._redis.get(self.keys.heartbeat(label)))
        beat = Heartbeat.from_json(raw)
        return beat if beat is not None and beat.label == label else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
