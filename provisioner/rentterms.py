"""The renter's vocabulary: what the reconciler asks (:class:`Ask`), what it gets back
(:class:`Outcome`, :class:`Result`, :class:`Note`), what a rental is made of (:class:`RentSpec`,
:class:`Turns`) and the parts of the fleet it uses (the ``Protocol`` classes). ``renting.py`` holds
the renter itself and re-exports these names; values and types only, no I/O.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from provisioner import events, model, rentqueue, selection, spend
from provisioner.vast import client as vast_client

#: the search body for the current bans and reputation
SearchBody = Callable[[selection.Standing], Mapping[str, Any]]
#: the offers that may be rented, best first
OfferChooser = Callable[[list[model.Offer], selection.Standing], list[selection.Scored]]


class RentBans(Protocol):
    """The part of the blacklist a rental reads (``blacklist.Guarded`` never raises)."""

    async def standing(self) -> selection.Standing: ...


class OfferSearch(Protocol):
    """The fleet's shared offer search (``fleetshared.SharedSearch``)."""

    async def offers(self, body: Mapping[str, Any]) -> list[model.Offer]: ...


@dataclasses.dataclass(frozen=True)
class Turns:
    """The fleet's rental queue (``rentqueue``): pods rent one after another, each its own offer."""

    queue: rentqueue.RentQueue
    pod: str
    search: OfferSearch | None = None


class RentFleet(Protocol):
    """The part of the fleet record a rental uses (``fleetguard.GuardedFleet`` never raises)."""

    async def reserve(self, label: str, decide: spend.Decide) -> spend.Reservation: ...

    async def release_reservation(self, label: str) -> None: ...

    def rent_lock(self, label: str) -> contextlib.AbstractAsyncContextManager[bool]: ...

    async def mark_rent(self, label: str, *, done: bool) -> None: ...

    async def list_covers_rents(self, label: str, listed_at_ms: int) -> bool: ...


@dataclasses.dataclass(frozen=True)
class RentSpec:
    """What to search for and how to rent it: values and pure functions only."""

    search_body: SearchBody
    choose_offers: OfferChooser
    rent_request: Callable[[str | None], vast_client.RentRequest]
    max_fleet_dph: float | None = None


@dataclasses.dataclass(frozen=True)
class Ask:
    """One rental the planner asked for, with what the renter needs to know of the pod."""

    label: str
    reason: str
    template_hash: str | None
    #: the template is not checked yet (API busy): renting waits for it
    template_pending: bool
    #: the instance ids this tick's list showed (a new one under the lock was rented meanwhile)
    known_ids: frozenset[int]
    #: $/h of the instance this pod serves now (make-before-break: it still bills)
    own_dph: float
    now: float
    #: when this tick's list was requested, ms on the Redis clock (None: not from the fleet's view)
    listed_at_ms: int | None = None


class Result(enum.Enum):
    RENTED = "rented"  # instance_id and price_per_hour are set
    UNKNOWN = "unknown"  # the rent may have happened: hold, list by label before any new rental
    HELD = "held"  # a brake, the lock, the spend cap or the template said not now
    SKIPPED = "skipped"  # an instance appeared meanwhile: adopt it
    NO_OFFERS = "no-offers"


@dataclasses.dataclass(frozen=True)
class Note:
    """An event to record, with its log level."""

    event: events.Event
    level: int = logging.INFO


@dataclasses.dataclass(frozen=True)
class Outcome:
    result: Result
    instance_id: int | None = None
    price_per_hour: float | None = None
    notes: tuple[Note, ...] = ()
    #: why nothing was rented although one is wanted (for ``/readyz`` and the progress line)
    why: str | None = None
    #: $/h stays reserved in Redis for this rental until a heartbeat counts it (``beat(settle=True)``)
    reserved: bool = False
