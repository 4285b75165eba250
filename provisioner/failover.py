"""The outage guard the fleet modules share (the pacer, ``fleetview``, ``rentqueue``, ``fleetshared``).

:class:`Failover` runs each Redis exchange under a deadline and maps every failure to
``errors.StoreError``; after one it skips Redis for a while (each caller then works per pod) and
logs the outage once when it starts and once when it ends. Pass one instance to all of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeAlias, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from provisioner import errors

#: the pacer's logger: the outage lines have always come from there
log = logging.getLogger("provisioner.pacer")

T = TypeVar("T")
Clock = Callable[[], float]
#: the Redis client the fleet modules talk through (decode_responses=True; tests pass fakeredis)
Client: TypeAlias = aioredis.Redis

#: a Redis exchange slower than this counts as a failure (the call is paced locally instead)
DEFAULT_DEADLINE_S: Final = 0.5
#: while Redis is down, try it again at most this often
DEFAULT_RETRY_S: Final = 2.0


class Failover:
    """Runs Redis exchanges under a deadline; during an outage fails fast and logs it once.

    Every failure (redis-py, socket, timeout) becomes ``errors.StoreError``. After one, Redis is
    skipped (the call raises at once) for ``retry_s``, then tried again.
    """

    def __init__(
        self,
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
        retry_s: float = DEFAULT_RETRY_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self.deadline_s = deadline_s
        self.retry_s = retry_s
        self._clock = clock
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def available(self) -> bool:
        """False during an outage."""
        return self._down_since is None

    async def call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` within the deadline, or ``StoreError`` (at once while Redis is known down)."""
        now = self._clock()
        if self._down_since is not None and now < self._retry_at:
            raise errors.StoreError(f"redis {op}: skipped while Redis is down")
        try:
            async with asyncio.timeout(self.deadline_s):
                result = await fn()
        except (TimeoutError, RedisError, OSError) as exc:
            self._retry_at = now + self.retry_s
            if self._down_since is None:
                self._down_since = now
                log.warning(
                    "Redis failed (%s: %s); pacing, the instance view and the rent queue are per pod"
                    " until it returns",
                    op,
                    type(exc).__name__ if isinstance(exc, TimeoutError) else _first_line(exc),
                    extra={"event": "fleet-store-unavailable"},
                )
            raise errors.StoreError(f"redis {op}: {type(exc).__name__}") from exc
        if self._down_since is not None:
            log.warning(
                "Redis is back after %.0fs; pacing, the instance view and the rent queue are fleet-wide",
                now - self._down_since,
                extra={"event": "fleet-store-recovered"},
            )
            self._down_since = None
        return result

    async def script(
        self, redis: Client | None, op: str, source: str, keys: Sequence[str], *args: str | int
    ) -> Any:
        """Run one Lua script (EVAL) through :meth:`call`; ``StoreError`` when there is no Redis."""
        if redis is None:
            raise errors.StoreError(f"redis {op}: no redis")
        return await self.call(op, lambda: redis.eval(source, len(keys), *keys, *args))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
