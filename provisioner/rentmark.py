"""The rent mark: lets a renter under the rent lock trust the list its tick already made.

Without it every rental listed its label again under the lock, and that list waited one list
interval (1 s) behind the tick's own. Under the lock, the renter writes ``started`` before its first
rent call and ``done`` once the outcome is known (rented, or nothing rented); an unknown outcome
leaves ``started``. A later renter of the label, holding the lock, may skip its list when
:func:`list_covers_rents`: the list was requested on the Redis clock after the latest ``done`` (plus
``store.RENT_MARK_LAG_MS``), and no rent is ``started`` without an outcome. Key and TTL:
``store.py``'s table (``P rentmark:<label>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from provisioner.store import (
    LUA_NOW_MS,
    RENT_MARK_LAG_MS,
    RENT_MARK_TTL_S,
    Client,
    Keys,
    run_redis,
)

# KEYS: mark · ARGV: state, ttl ms -> the Redis clock's now (ms)
_MARK_LUA: Final = (
    LUA_NOW_MS
    + """
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. now, 'PX', ARGV[2])
return now
"""
)

# KEYS: mark -> {the Redis clock's now (ms), the mark or false}
_READ_MARK_LUA: Final = LUA_NOW_MS + "\nreturn {now, redis.call('GET', KEYS[1])}\n"


@dataclass(frozen=True, slots=True)
class RentMark:
    """The label's latest rent: ``started`` (outcome not known yet, or never) or ``done``, and when."""

    done: bool
    at_ms: int

    @classmethod
    def parse(cls, raw: object) -> RentMark | None:
        """``done:<ms>`` or ``started:<ms>``; anything else is None (and counts as a rent in flight)."""
        state, _, at = raw.partition(":") if isinstance(raw, str) else ("", "", "")
        if state not in ("started", "done") or not at.isdigit():
            return None
        return cls(state == "done", int(at))


def list_covers_rents(raw_mark: object, listed_at_ms: int, now_ms: int) -> bool:
    """Whether a list requested at ``listed_at_ms`` (Redis clock) shows every rent of the label: no
    mark (none within ``RENT_MARK_TTL_S``, and the list is well younger than that), or the latest
    rent was done ``RENT_MARK_LAG_MS`` before the list was requested. A rent started without a known
    outcome, or a mark that does not parse, is never covered."""
    if now_ms - listed_at_ms > RENT_MARK_TTL_S * 1000 / 2:
        return False
    if raw_mark is None:
        return True
    mark = RentMark.parse(raw_mark)
    return mark is not None and mark.done and mark.at_ms + RENT_MARK_LAG_MS < listed_at_ms


class RentMarks:
    """The per-label rent marks (the table above); every call raises ``StoreError`` on failure."""

    def __init__(self, client: Client, keys: Keys, *, deadline_s: float = 2.0) -> None:
        self._redis = client
        self.keys = keys
        self._deadline_s = deadline_s

    async def mark(self, label: str, *, done: bool) -> None:
        """Record that a rent of ``label`` starts now (``done=False``) or that its outcome is known."""
        state, ttl_ms = "done" if done else "started", round(RENT_MARK_TTL_S * 1000)
        key = self.keys.rent_mark(label)
        await run_redis(
            "rent mark", lambda: self._redis.eval(_MARK_LUA, 1, key, state, ttl_ms), self._deadline_s
        )

    async def covers(self, label: str, listed_at_ms: int) -> bool:
        """Whether a list requested at ``listed_at_ms`` (Redis clock) shows every rent of ``label``."""
        key = self.keys.rent_mark(label)
        now_ms, raw = await run_redis(
            "rent mark", lambda: self._redis.eval(_READ_MARK_LUA, 1, key), self._deadline_s
        )
        return list_covers_rents(raw, listed_at_ms, int(now_ms))
