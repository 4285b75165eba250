"""Small fakes shared by the unit tests."""

from __future__ import annotations

from typing import Any

import fakeredis

#: a fixed "now" far from the epoch, so that ages and TTLs are never negative by accident
T0 = 1_800_000_000.0


class Clock:
    """A settable clock: ``clock.now += 5`` moves time for everything that was given it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


#: how far the clock of :class:`SkewedRedis` runs ahead of this machine's unless told otherwise
REDIS_AHEAD_S = 3600.0


class SkewedRedis(fakeredis.FakeAsyncRedis):
    """A Redis whose clock (``TIME``) runs ``skew_s`` ahead of this machine's (fakeredis answers with
    this machine's time), so that the Redis clock can be told from this machine's in assertions."""

    skew_s = REDIS_AHEAD_S

    async def time(self) -> Any:
        seconds, micros = await super().time()
        return int(seconds) + int(self.skew_s), micros
