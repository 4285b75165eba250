"""The fleet's one wall clock: this machine's clock corrected to the Redis server's (``TIME``).

Pods compare each other's stamps: the reaper and the spend guard read a heartbeat's ``at`` against
their own ``now``, bans and spend reservations are indexed by expiry time, and ``heartbeats:since``
tells a flushed Redis. Stamped with each pod's own clock, a pod whose clock runs ten minutes behind
looks ten minutes silent to the others (its $/h drops out of the spend guard; the reaper needs a
second read to keep its instance), and one running ahead looks alive after it died. Stamped with
:class:`RedisClock`, every pod writes and reads on the Redis server's clock, to within half a round
trip, whatever its own clock says. (The Lua scripts read ``TIME`` themselves: ``store.LUA_NOW_MS``.)

The offset is measured by one ``TIME`` call when the Redis connection opens
(``fleet_wiring.connect_blacklist``; a failure there is left to the next try) and again when it is
older than ``RESYNC_S``, before a heartbeat, a spend reservation or a read of the fleet's spend
(``fleetguard.GuardedFleet``); the reaper measures it when it starts. Until a sync succeeds it is the
local clock; a failed sync keeps the last offset, and so does a slow one once an offset is known.
Local time still drives everything that is only this process's business (timeouts, intervals:
``time.monotonic``), and the reaper compares Vast's times (``start_date``) with its own clock.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from provisioner import store

log = logging.getLogger("provisioner.redisclock")

#: measure the offset again when the last measurement is older than this (a drifting clock moves a
#: few ms an hour; a stepped one is caught within this)
RESYNC_S: Final = 300.0
#: a ``TIME`` answer slower than this round trip says little about when it was taken: it does not
#: replace a known offset (the first one is still better than none: off by at most half of it)
MAX_SYNC_RTT_S: Final = 0.5
#: an offset beyond this is logged as a warning (the pod's clock is off; NTP is not running?)
WARN_OFFSET_S: Final = 5.0


class RedisClock:
    """Unix seconds on the clock of the Redis server behind ``client``: call it like ``time.time``."""

    def __init__(
        self,
        client: store.Client,
        *,
        deadline_s: float = 2.0,
        local: store.Clock = time.time,
        monotonic: store.Clock = time.monotonic,
        resync_s: float = RESYNC_S,
    ) -> None:
        self._client = client
        self.deadline_s = deadline_s
        self._local = local
        self._monotonic = monotonic
        self.resync_s = resync_s
        #: Redis time minus local time, seconds (0 until the first sync)
        self.offset_s = 0.0
        self._synced_at: float | None = None

    def __call__(self) -> float:
        return self._local() + self.offset_s

    @property
    def synced(self) -> bool:
        return self._synced_at is not None

    def due(self) -> bool:
        """Never measured, or the last measurement is older than ``resync_s``."""
        return self._synced_at is None or self._monotonic() - self._synced_at >= self.resync_s

    async def sync(self) -> None:
        """Measure the offset with one ``TIME`` call; raises ``StoreError`` when Redis fails."""
        sent = self._local()
        sent_mono = self._monotonic()
        seconds, micros = await store.run_redis("time", self._client.time, self.deadline_s)
        rtt = self._monotonic() - sent_mono
        if rtt > MAX_SYNC_RTT_S and self._synced_at is not None:
            log.debug("redis TIME took %.3fs; the clock offset is kept at %.3fs", rtt, self.offset_s)
            self._synced_at = self._monotonic()  # the known offset is better; try again when due
            return
        offset = int(seconds) + int(micros) / 1e6 - (sent + rtt / 2)
        if abs(offset) >= WARN_OFFSET_S and (self._synced_at is None or abs(self.offset_s) < WARN_OFFSET_S):
            log.warning(
                "this machine's clock is %.1fs %s the Redis server's; fleet records use the Redis clock",
                abs(offset),
                "behind" if offset > 0 else "ahead of",
                extra={"event": "clock-offset", "offset_s": round(offset, 3)},
            )
        self.offset_s = offset
        self._synced_at = self._monotonic()


def lead_s(clock: store.Clock) -> float:
    """How far ``clock`` runs ahead of this machine's: a :class:`RedisClock`'s offset, else 0. A time
    stored on the fleet's clock minus this is a time on this machine's (``time.time``)."""
    return clock.offset_s if isinstance(clock, RedisClock) else 0.0


def due(clock: store.Clock) -> bool:
    """Whether ``clock`` is a :class:`RedisClock` due a measurement (any other clock never is)."""
    return isinstance(clock, RedisClock) and clock.due()


async def sync_if_due(clock: store.Clock) -> None:
    """Measure ``clock`` when :func:`due`; raises ``StoreError`` when Redis fails."""
    if isinstance(clock, RedisClock) and clock.due():
        await clock.sync()
