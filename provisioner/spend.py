"""The spend guard's arithmetic and what a spend reservation found (pure; ``fleet.py`` does the I/O).

``VAST_MAX_FLEET_DPH`` caps the $/h of every pod sharing one Redis: the other pods' live heartbeats
and reservations, plus what this pod still serves, plus the rental it is about to make.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

#: the spend guard counts a pod whose heartbeat is at most this old
HEARTBEAT_LIVE_S: Final = 120.0


class Beat(Protocol):
    """The part of a heartbeat the arithmetic reads."""

    @property
    def label(self) -> str: ...

    @property
    def dph(self) -> float: ...

    def age_s(self, now: float) -> float: ...


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a spend reservation found: the other pods' $/h and the amount reserved for this rental."""

    #: the other pods' live heartbeats plus their reservations; None: Redis unavailable (not checked)
    others: float | None
    #: the $/h reserved now; None: nothing fits (or not checked)
    amount: float | None = None
    #: another pod held the spend lock for longer than ``store.SPEND_LOCK_WAIT_S``: nothing checked
    busy: bool = False


#: the spend cap could not be checked (Redis unavailable)
UNCHECKED: Final = Reservation(None)
#: decides, from the other pods' $/h, what to reserve (None: nothing fits)
Decide = Callable[[float], float | None]


def fleet_dph(
    heartbeats: Iterable[Beat], *, now: float, exclude_label: str, live_s: float = HEARTBEAT_LIVE_S
) -> float:
    """The $/h of every other live pod: heartbeats at most ``live_s`` old, ``exclude_label`` left out."""
    return sum(beat.dph for beat in heartbeats if beat.label != exclude_label and beat.age_s(now) <= live_s)


def usd(value: float) -> str:
    return f"${value:.3f}/h"


def spend_block(cap: float, *, others: float, own: float, price: float) -> str | None:
    """Why renting at ``price`` would break the cap (the event's detail), or None when it fits."""
    total = others + own + price
    if total <= cap + 1e-9:
        return None
    parts = f"other pods {usd(others)}" + (f" + this pod {usd(own)}" if own else "")
    return (
        f"fleet would cost {usd(total)} > VAST_MAX_FLEET_DPH {usd(cap)} ({parts} + cheapest usable"
        f" offer {usd(price)}); waiting"
    )
