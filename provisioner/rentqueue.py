"""The fair rental queue: pods that need an instance rent one after another, each a different offer.

Vast allows one rent per 4.5 s per key, and without order every pod picks the same best offer: 37
rent calls for 12 rentals in issue 13's measurement. Here pods that need an instance join one
queue per API key (ordered by when they joined, on the Redis clock); the head rents (its call
still takes the pacer's ``create_instance`` slot), then leaves, and the next pod's turn comes.
Each pod picks its offer through :meth:`RentQueue.pick`: the first of its ranked offers that no
other pod holds a claim on, claimed in the same script, so no two pods race for one ask.

A pod that dies leaves the queue by itself: every join and poll is also a heartbeat, and entries
whose heartbeat is older than ``member_ttl_s`` are pruned by whoever looks next. While a pod
holds its turn (:meth:`RentQueue.turn`) a background task keeps beating. Claims expire after
``claim_ttl_s``. Without Redis, or while it fails, the queue and the claims are per process
(the pod is alone in its own queue).

Redis keys: ``store.py``'s one key table (``D pace:<B>:<endpoint>[:penalty]``, ``P view:<B>:<F>``,
``P rentq:<B>``, ``P claim:<B>:<offer_id>``); ``B`` is the budget id (:func:`pacer.budget_id`), never
the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from provisioner import errors, pacer, store

log = logging.getLogger("provisioner.rentqueue")

#: a queued pod that has not been seen for this long is gone (it died or lost its Redis)
DEFAULT_MEMBER_TTL_S: Final = 30.0
#: a claim outlives any rent attempt; the offer is gone or free again by then
DEFAULT_CLAIM_TTL_S: Final = 120.0
#: how often a queued pod polls for its turn (and beats)
DEFAULT_POLL_S: Final = 0.25


@dataclass(frozen=True, slots=True)
class Keys:
    """The queue's Redis keys for one budget."""

    budget: str
    prefix: str = pacer.DEFAULT_KEY_PREFIX

    @property
    def queue(self) -> str:
        return store.Keys(self.prefix).rent_queue(self.budget)

    @property
    def beats(self) -> str:
        return f"{self.queue}:beats"

    def claim(self, offer_id: int) -> str:
        return store.Keys(self.prefix).claim(self.budget, offer_id)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a pod stands: ``k`` of ``n`` (1 is renting now); ``shared`` when the fleet's queue."""

    k: int
    n: int
    shared: bool

    @property
    def line(self) -> str:
        """The log and ``/readyz`` wording."""
        return f"queued for rental (position {self.k} of {self.n})"


# KEYS: queue, beats · ARGV: pod, member ttl ms, join (1) or look (0) -> {k or 0, n}
_POSITION_LUA: Final = (
    store.LUA_NOW_MS
    + """
local ttl = tonumber(ARGV[2])
local cutoff = '(' .. string.format('%.0f', now - ttl)
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)) do
  redis.call('ZREM', KEYS[1], gone)
  redis.call('ZREM', KEYS[2], gone)
end
if ARGV[3] == '1' then redis.call('ZADD', KEYS[1], 'NX', now, ARGV[1]) end
local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if not rank then return {0, n} end
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
redis.call('PEXPIRE', KEYS[2], 2 * ttl)
return {rank + 1, n}
"""
)

# KEYS: queue, beats · ARGV: pod
_LEAVE_LUA: Final = """
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
"""

# KEYS: claim keys in preference order · ARGV: pod, claim ttl ms -> index of the claimed one, 0 if none
_PICK_LUA: Final = """
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if not holder or holder == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    return i
  end
end
return 0
"""

#: the holder of a claim on an offer that was rented (or found gone): nobody picks it, this pod included,
#: while a shared search (cached for less than the claim's TTL) may still list it
RETIRED: Final = "<rented>"

# KEYS: claim key · ARGV: the retired marker, TTL ms
_RETIRE_LUA: Final = """
return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
"""

# KEYS: claim key · ARGV: pod
_RELEASE_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LocalQueue:
    """The same queue and claims within one process, on the local clock."""

    def __init__(self, *, member_ttl_s: float, clock: pacer.Clock) -> None:
        self._ttl_s = member_ttl_s
        self._clock = clock
        self._joined: dict[str, float] = {}
        self._beat: dict[str, float] = {}
        self._claims: dict[int, tuple[str, float]] = {}

    def position(self, pod: str, *, join: bool) -> Position | None:
        now = self._clock()
        for gone in [p for p, at in self._beat.items() if at < now - self._ttl_s]:
            self.leave(gone)
        if join:
            self._joined.setdefault(pod, now)
        if pod not in self._joined:
            return None
        self._beat[pod] = now
        order = sorted(self._joined, key=lambda p: (self._joined[p], p))
        return Position(order.index(pod) + 1, len(order), shared=False)

    def leave(self, pod: str) -> None:
        self._joined.pop(pod, None)
        self._beat.pop(pod, None)

    def pick(self, pod: str, offer_ids: Sequence[int], ttl_s: float) -> int | None:
        now = self._clock()
        for offer_id in offer_ids:
            holder, until = self._claims.get(offer_id, (pod, now))
            if holder == pod or until <= now:
                self._claims[offer_id] = (pod, now + ttl_s)
                return offer_id
        return None

    def release(self, pod: str, offer_id: int) -> None:
        if self._claims.get(offer_id, ("", 0.0))[0] == pod:
            del self._claims[offer_id]

    def retire(self, offer_id: int, ttl_s: float) -> None:
        self._claims[offer_id] = (RETIRED, self._clock() + ttl_s)


class RentQueue:
    """One rental queue and one set of offer claims per API key, in Redis when given one."""

    def __init__(
        self,
        redis: pacer.Client | None,
        keys: Keys,
        *,
        member_ttl_s: float = DEFAULT_MEMBER_TTL_S,
        claim_ttl_s: float = DEFAULT_CLAIM_TTL_S,
        poll_s: float = DEFAULT_POLL_S,
        failover: pacer.Failover | None = None,
        clock: pacer.Clock = time.monotonic,
        sleep: pacer.Sleep = asyncio.sleep,
    ) -> None:
        self._redis = redis
        self.keys = keys
        self._member_ttl_s = member_ttl_s
        self._claim_ttl_s = claim_ttl_s
        self._poll_s = poll_s
        self.failover = failover or pacer.Failover(clock=clock)
        self._sleep = sleep
        self.local = LocalQueue(member_ttl_s=member_ttl_s, clock=clock)
        #: told each poll's wait before it is slept: waiting for the turn is no stall (the daemon's
        #: liveness allows for it, as for a pacer slot; the back of a long queue waits minutes)
        self.on_wait: Callable[[float], None] | None = None

    async def _script(self, op: str, source: str, keys: Sequence[str], *args: str | int) -> Any:
        return await self.failover.script(self._redis, op, source, keys, *args)

    async def _position(self, pod: str, *, join: bool) -> Position | None:
        args = (pod, round(self._member_ttl_s * 1000), "1" if join else "0")
        try:
            k, n = await self._script("rentq", _POSITION_LUA, (self.keys.queue, self.keys.beats), *args)
        except errors.StoreError:
            return self.local.position(pod, join=join)
        return Position(int(k), int(n), shared=True) if int(k) else None

    async def join(self, pod: str) -> Position:
        """Join the queue (keeping the place already held) and beat; returns where the pod stands."""
        position = await self._position(pod, join=True)
        assert position is not None  # joined just now
        return position

    async def position(self, pod: str) -> Position | None:
        """Where the pod stands (a beat too), or None when it is not queued (for ``/readyz``)."""
        return await self._position(pod, join=False)

    async def leave(self, pod: str) -> None:
        """Leave the queue (after renting, or giving up); a pod that dies is pruned instead."""
        self.local.leave(pod)
        with contextlib.suppress(errors.StoreError):
            await self._script("rentq-leave", _LEAVE_LUA, (self.keys.queue, self.keys.beats), pod)

    async def wait_turn(self, pod: str, on_position: Callable[[Position], None] | None = None) -> Position:
        """Join, then poll until the pod is first; a new position is logged and given to ``on_position``."""
        last: Position | None = None
        while True:
            position = await self.join(pod)
            if position != last:
                if position.k > 1:
                    log.info(position.line, extra={"event": "rent-queued", "position": position.k})
                if on_position is not None:
                    on_position(position)
                last = position
            if position.k == 1:
                return position
            if self.on_wait is not None:
                self.on_wait(self._poll_s)
            await self._sleep(self._poll_s)

    async def _keep_beating(self, pod: str) -> None:
        while True:
            await self._sleep(self._member_ttl_s / 3)
            await self.join(pod)

    @contextlib.asynccontextmanager
    async def turn(
        self, pod: str, on_position: Callable[[Position], None] | None = None
    ) -> AsyncIterator[Position]:
        """``async with queue.turn(pod):`` search, ``pick``, rent; the pod leaves the queue on exit."""
        try:
            position = await self.wait_turn(pod, on_position)
            beating = asyncio.create_task(self._keep_beating(pod))
            try:
                yield position
            finally:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
        finally:
            await self.leave(pod)

    async def pick(self, pod: str, offer_ids: Sequence[int]) -> int | None:
        """Claim the first of ``offer_ids`` (best first) that no other pod claimed; None if all are."""
        if not offer_ids:
            return None
        keys = [self.keys.claim(i) for i in offer_ids]
        try:
            index = int(await self._script("claim", _PICK_LUA, keys, pod, round(self._claim_ttl_s * 1000)))
        except errors.StoreError:
            return self.local.pick(pod, offer_ids, self._claim_ttl_s)
        return offer_ids[index - 1] if index else None

    async def retire(self, offer_id: int) -> None:
        """The offer was rented (or is gone): no pod picks it again while its claim lives."""
        self.local.retire(offer_id, self._claim_ttl_s)
        with contextlib.suppress(errors.StoreError):
            await self._script(
                "claim-retire",
                _RETIRE_LUA,
                (self.keys.claim(offer_id),),
                RETIRED,
                round(self._claim_ttl_s * 1000),
            )

    async def release(self, pod: str, offer_id: int) -> None:
        """Give a claim back (the rent failed for a reason that leaves the offer rentable)."""
        self.local.release(pod, offer_id)
        with contextlib.suppress(errors.StoreError):
            await self._script("claim-release", _RELEASE_LUA, (self.keys.claim(offer_id),), pod)
