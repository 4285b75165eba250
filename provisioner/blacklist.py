"""The shared host blacklist and reputation record in Redis (keys and TTLs: ``store.py``'s table).

Every multi-key update is one MULTI/EXEC transaction: a ban writes its record, its index entry
and a reputation event together; the restart counter trims the window, adds this start and
counts in one transaction, so concurrent starts never lose a count.

Restart counting (``BLACKLIST_RESTART_THRESHOLD``): only starts that follow a crash count. A
process that stops cleanly (SIGTERM) marks its instances (``cleanstop``); the next start that
adopts one uses the mark up instead of counting. More counted starts in the window than the
threshold condemn the instance: it is replaced make-before-break, and its host is not banned.
Reading the bans and the reputation for a rental is one round trip (:meth:`Blacklist.standing`).

Expiry: the detail keys expire by Redis TTL; the indexes are scored by expiry time on the
writer's clock and pruned on every read: the ``clock`` given (``fleet_wiring`` gives the fleet's
one clock, ``redisclock.RedisClock``); so is a boot wait's start, moved to and from this machine's.
Reputation events older than ``EVENT_HORIZON_HALF_LIVES`` half-lives are dropped, and only the
newest ``EVENTS_MAX`` are kept.

Errors: ``Blacklist`` raises ``errors.StoreError`` (the CLI reports it); :class:`Guarded` is what
the reconciler uses: it never raises and answers "no bans" while Redis is down (``store.Outage``).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from provisioner import model, redisclock, selection, store

log = logging.getLogger("provisioner.blacklist")

#: reputation events older than this many half-lives weigh < 2 % and are dropped
EVENT_HORIZON_HALF_LIVES: Final = 6.0
#: at most this many reputation events are kept (the newest)
EVENTS_MAX: Final = 20_000
#: the reason recorded when the restart threshold bans a host
RESTART_REASON: Final = "restart-threshold"

BanKind = store.BanKind
BAN_KINDS: Final[tuple[BanKind, ...]] = ("host", "machine")
T = TypeVar("T")
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class BanRecord:
    """One ban as ``blacklist list`` shows it."""

    kind: BanKind
    ident: int
    expires_at: float
    reason: str | None = None
    at: float | None = None
    by: str | None = None
    instance_id: int | None = None


class Blacklist:
    """Bans, boot starts, restart counts and reputation in Redis. Every failure raises ``StoreError``."""

    def __init__(
        self,
        client: store.Client,
        *,
        keys: store.Keys | None = None,
        ban_ttl_s: int = 604_800,
        restart_window_s: int = 3600,
        restart_threshold: int = 5,
        half_life_s: float = 3 * 24 * 3600.0,
        owner: str = "",
        deadline_s: float = 2.0,
        clock: Clock = time.time,
    ) -> None:
        self._redis = client
        self.keys = keys or store.Keys()
        self.ban_ttl_s = ban_ttl_s
        self.restart_window_s = restart_window_s
        self.restart_threshold = restart_threshold
        self.half_life_s = half_life_s
        self.owner = owner
        self._deadline_s = deadline_s
        self._clock = clock

    @property
    def client(self) -> store.Client:
        """The Redis client (sibling adapters such as ``fleet.Fleet`` share it)."""
        return self._redis

    @property
    def deadline_s(self) -> float:
        return self._deadline_s

    @property
    def clock(self) -> Clock:
        return self._clock

    async def _run(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        return await store.run_redis(op, fn, self._deadline_s)

    async def _transaction(self, op: str, queue: Callable[[Any], None]) -> list[Any]:
        """Queue commands with ``queue(pipe)`` and run them as one MULTI/EXEC."""

        async def go() -> list[Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                queue(pipe)
                result: list[Any] = await pipe.execute()
                return result

        return await self._run(op, go)

    # ------------------------------------------------------------ bans

    def _queue_ban(
        self, pipe: Any, kind: BanKind, ident: int, reason: str, ttl_s: int, instance_id: int | None
    ) -> None:
        now = self._clock()
        record = {"reason": reason, "at": now, "by": self.owner or None, "instance_id": instance_id}
        pipe.set(self.keys.ban(kind, ident), json.dumps(record), ex=ttl_s)
        pipe.zadd(self.keys.ban_index(kind), {str(ident): now + ttl_s})

    def _queue_event(self, pipe: Any, event: selection.Event, instance_id: int | None) -> None:
        member = {
            "k": event.kind,
            "h": event.host_id,
            "m": event.machine_id,
            "v": round(event.value, 3),
            "i": instance_id,
            "n": secrets.token_hex(4),  # two equal events stay two members
        }
        horizon = self._clock() - EVENT_HORIZON_HALF_LIVES * self.half_life_s
        pipe.zadd(self.keys.events, {json.dumps(member, separators=(",", ":")): event.at})
        pipe.zremrangebyscore(self.keys.events, "-inf", horizon)
        pipe.zremrangebyrank(self.keys.events, 0, -(EVENTS_MAX + 1))

    async def ban(self, instance: model.Instance, reason: str) -> None:
        """Ban the instance's host and machine for the ban TTL, and note a ``ban`` reputation event."""
        ids = (instance.host_id, instance.machine_id)
        targets = [(kind, ident) for kind, ident in zip(BAN_KINDS, ids, strict=True) if ident is not None]
        if not targets:
            return
        event = selection.Event(self._clock(), "ban", instance.host_id, instance.machine_id)

        def queue(pipe: Any) -> None:
            for kind, ident in targets:
                self._queue_ban(pipe, kind, ident, reason, self.ban_ttl_s, instance.id)
            self._queue_event(pipe, event, instance.id)

        await self._transaction("ban", queue)

    async def ban_id(self, kind: BanKind, ident: int, reason: str, ttl_s: int | None = None) -> None:
        """Ban one host or machine by id (operators); a new ban replaces an older one."""
        ttl = ttl_s if ttl_s is not None else self.ban_ttl_s
        await self._transaction("ban", lambda pipe: self._queue_ban(pipe, kind, ident, reason, ttl, None))

    async def unban(self, kind: BanKind, ident: int) -> bool:
        """Lift a ban; True when there was one."""

        def queue(pipe: Any) -> None:
            pipe.delete(self.keys.ban(kind, ident))
            pipe.zrem(self.keys.ban_index(kind), str(ident))

        deleted, removed = await self._transaction("unban", queue)
        return bool(deleted or removed)

    def _queue_read_bans(self, pipe: Any, now: float) -> None:
        for kind in BAN_KINDS:
            pipe.zremrangebyscore(self.keys.ban_index(kind), "-inf", now)
            pipe.zrangebyscore(self.keys.ban_index(kind), f"({now!r}", "+inf", withscores=True)

    async def bans(self) -> list[BanRecord]:
        """Every current ban with its details, hosts first, then by expiry; its times on this
        machine's clock (stored on the fleet's: ``redisclock.lead_s``)."""
        now = self._clock()
        lead = redisclock.lead_s(self._clock)
        result = await self._transaction("list bans", lambda pipe: self._queue_read_bans(pipe, now))
        found: list[tuple[BanKind, int, float]] = []
        for kind, rows in zip(BAN_KINDS, (result[1], result[3]), strict=True):
            found.extend((kind, ident, expires) for ident, expires in _ids_with_scores(rows))
        if not found:
            return []
        names = [self.keys.ban(kind, ident) for kind, ident, _ in found]
        details = await self._run("list bans", lambda: self._redis.mget(names))
        records = []
        for (kind, ident, expires), raw in zip(found, details, strict=True):
            info = store.json_object(raw)
            at = _opt(info.get("at"), float)
            records.append(
                BanRecord(
                    kind=kind,
                    ident=ident,
                    expires_at=expires - lead,
                    reason=_opt(info.get("reason"), str),
                    at=None if at is None else at - lead,
                    by=_opt(info.get("by"), str),
                    instance_id=_opt(info.get("instance_id"), int),
                )
            )
        return records

    async def standing(self) -> selection.Standing:
        """Bans and reputation records, in one round trip (what a rental needs)."""
        now = self._clock()
        horizon = now - EVENT_HORIZON_HALF_LIVES * self.half_life_s

        def queue(pipe: Any) -> None:
            self._queue_read_bans(pipe, now)
            pipe.zremrangebyscore(self.keys.events, "-inf", horizon)
            pipe.zrangebyscore(self.keys.events, horizon, "+inf", withscores=True)

        result = await self._transaction("read bans", queue)
        hosts, machines = selection.summarize_events(_events(result[5]), now, self.half_life_s)
        return selection.Standing(
            banned_hosts=frozenset(i for i, _ in _ids_with_scores(result[1])),
            banned_machines=frozenset(i for i, _ in _ids_with_scores(result[3])),
            hosts=hosts,
            machines=machines,
        )

    # ------------------------------------------------------------ boot waits and restarts

    async def boot_started(self, instance_id: int, at: float) -> float:
        """When the boot wait of this instance started: the stored time, else ``at`` (now stored).
        ``at`` and the answer are on this machine's clock, the stored time on the fleet's (a pod that
        restarts on another node reads it)."""
        key = self.keys.boot(instance_id)
        lead = redisclock.lead_s(self._clock)

        def queue(pipe: Any) -> None:
            pipe.set(key, repr(float(at + lead)), nx=True, ex=store.BOOT_KEY_TTL_S)
            pipe.get(key)

        _, stored = await self._transaction("boot start", queue)
        started = _opt(stored, float)
        return at if started is None else started - lead

    async def boot_done(self, instance_id: int) -> None:
        """It showed its endpoints: a boot wait after a later adoption (a restart) starts then, not at
        the rental, as a reboot seen in-process does."""
        await self._transaction("boot done", lambda pipe: pipe.delete(self.keys.boot(instance_id)))

    async def count_adoption(self, instance_id: int) -> int:
        """Count one process start adopting this instance; return the starts inside the sliding window."""
        now = self._clock()
        key = self.keys.restarts(instance_id)

        def queue(pipe: Any) -> None:
            pipe.zremrangebyscore(key, "-inf", now - self.restart_window_s)
            pipe.zadd(key, {f"{now!r}:{secrets.token_hex(4)}": now})
            pipe.zcard(key)
            pipe.expire(key, self.restart_window_s)

        result = await self._transaction("count restart", queue)
        return int(result[2])

    async def mark_clean_stop(self, instance_ids: Iterable[int]) -> None:
        """This process stops cleanly (SIGTERM) while it has these instances: the next start that
        adopts one of them is not a crash, and is not counted (the mark lasts the restart window)."""
        ids = sorted(set(instance_ids))
        if not ids:
            return
        record = json.dumps({"by": self.owner or None, "at": self._clock()})

        def queue(pipe: Any) -> None:
            for iid in ids:
                pipe.set(self.keys.clean_stop(iid), record, ex=self.restart_window_s)

        await self._transaction("clean stop", queue)

    async def _take_clean_stop(self, instance_id: int) -> bool:
        """Whether the previous process stopped cleanly with this instance; the mark is used up."""
        key = self.keys.clean_stop(instance_id)

        def queue(pipe: Any) -> None:
            pipe.get(key)
            pipe.delete(key)

        stored, _ = await self._transaction("clean stop", queue)
        return stored is not None

    async def adopted(self, instance: model.Instance) -> str | None:
        """A process start adopted ``instance``: count it, unless the previous process stopped cleanly.

        Returns the reason to replace the instance (more counted starts in the window than the
        threshold), or None. Nothing is banned: a restart of our own process says nothing about the
        host, so the instance is replaced (make-before-break) and its host stays eligible.
        """
        if await self._take_clean_stop(instance.id):
            log.info(
                "adopted instance %s after a clean stop (not counted as a restart)",
                instance.id,
                extra={"event": "adopt", "instance_id": instance.id},
            )
            return None
        count = await self.count_adoption(instance.id)
        if count <= self.restart_threshold:
            log.info(
                "adopted instance %s (start %d of at most %d in %ss)",
                instance.id,
                count,
                self.restart_threshold,
                self.restart_window_s,
                extra={"event": "adopt", "instance_id": instance.id},
            )
            return None
        return RESTART_REASON

    # ------------------------------------------------------------ reputation

    async def record(self, instance: model.Instance, kind: str, value: float = 0.0) -> None:
        """Add a reputation event (``ready`` with seconds to ready, ``health-fail``, ``death``)."""
        if kind not in selection.EVENT_KINDS:
            raise ValueError(f"unknown reputation event {kind!r}")
        if instance.host_id is None and instance.machine_id is None:
            return
        event = selection.Event(self._clock(), kind, instance.host_id, instance.machine_id, value)
        await self._transaction("record", lambda pipe: self._queue_event(pipe, event, instance.id))


class Guarded:
    """The blacklist as the reconciler uses it: it never raises, and a Redis outage only costs the bans.

    While Redis fails (``outage``, shared with the fleet adapter), every call returns its neutral
    answer: no bans, the local boot start, no restart count.
    """

    def __init__(self, blacklist: Blacklist, outage: store.Outage | None = None) -> None:
        self.blacklist = blacklist
        self.outage = outage or store.Outage()

    async def _safely(self, fn: Callable[[], Awaitable[T]], default: T) -> T:
        return await self.outage.call(fn, default)

    async def ban(self, instance: model.Instance, reason: str) -> None:
        await self._safely(lambda: self.blacklist.ban(instance, reason), None)

    async def standing(self) -> selection.Standing:
        return await self._safely(self.blacklist.standing, selection.Standing())

    async def boot_started(self, instance_id: int, at: float) -> float:
        return await self._safely(lambda: self.blacklist.boot_started(instance_id, at), at)

    async def boot_done(self, instance_id: int) -> None:
        await self._safely(lambda: self.blacklist.boot_done(instance_id), None)

    async def adopted(self, instance: model.Instance) -> str | None:
        return await self._safely(lambda: self.blacklist.adopted(instance), None)

    async def mark_clean_stop(self, instance_ids: Iterable[int]) -> None:
        await self._safely(lambda: self.blacklist.mark_clean_stop(instance_ids), None)

    async def record(self, instance: model.Instance, kind: str, value: float = 0.0) -> None:
        await self._safely(lambda: self.blacklist.record(instance, kind, value), None)


# ---------------------------------------------------------------- parsing what Redis holds


def _ids_with_scores(rows: Iterable[Any]) -> list[tuple[int, float]]:
    found = []
    for member, score in rows:
        text = member.decode() if isinstance(member, bytes) else str(member)
        if text.isdigit():
            found.append((int(text), float(score)))
    return found


def _events(rows: Iterable[Any]) -> list[selection.Event]:
    events = []
    for member, score in rows:
        data = store.json_object(member)
        kind = data.get("k")
        if kind not in selection.EVENT_KINDS:
            continue
        events.append(
            selection.Event(
                at=float(score),
                kind=str(kind),
                host_id=_opt(data.get("h"), int),
                machine_id=_opt(data.get("m"), int),
                value=_opt(data.get("v"), float) or 0.0,
            )
        )
    return events


def _opt(value: Any, kind: Callable[[Any], T]) -> T | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None
