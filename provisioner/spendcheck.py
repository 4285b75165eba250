"""The spend cap at rent time: which ranked offers keep the fleet within ``VAST_MAX_FLEET_DPH``.

The fleet is every other live pod's heartbeat and reservation, plus the instance this pod still
serves while it replaces it (make-before-break), plus this rental. The check reserves the $/h of
the offers it lets through in Redis (``fleet.Fleet.reserve``) before the rent call, so pods starting
together see each other's rentals. Without Redis the cap cannot be checked: the rental goes ahead
and the renter says so. The renter (``renting.py``) says the situations this returns, once each.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from provisioner import events, selection, spend


class Reserver(Protocol):
    """The part of the fleet record the check uses (``fleetguard.GuardedFleet`` never raises)."""

    async def reserve(self, label: str, decide: spend.Decide) -> spend.Reservation: ...


class Fit(NamedTuple):
    """What the cap lets through: the offers (None: none, ``why``), whether their $/h is reserved,
    and a situation for the renter to say (once per situation)."""

    offers: list[selection.Scored] | None
    why: str | None = None
    reserved: bool = False
    say: tuple[events.EventKind, str] | None = None


async def within_cap(
    fleet: Reserver, cap: float, label: str, own_dph: float, ranked: list[selection.Scored], limit: int
) -> Fit:
    """The first ``limit`` offers of ``ranked`` that fit under ``cap``, their largest $/h reserved."""
    fitting: list[selection.Scored] = []

    def decide(others: float) -> float | None:
        fitting[:] = [
            c for c in ranked if spend.spend_block(cap, others=others, own=own_dph, price=price(c)) is None
        ]
        return max((price(c) for c in fitting[:limit]), default=None)

    found = await fleet.reserve(label, decide)
    if found.busy:
        text = "another pod is checking the fleet's spend (VAST_MAX_FLEET_DPH); renting next tick"
        return Fit(None, text, say=(events.EventKind.SPEND_CAP, text))
    if found.others is None:
        text = "VAST_MAX_FLEET_DPH cannot be checked while Redis is unavailable; renting anyway"
        return Fit(ranked, say=(events.EventKind.SPEND_CAP_UNCHECKED, text))
    if found.amount is not None:
        return Fit(fitting[:limit], reserved=True)
    cheapest = min(price(c) for c in ranked)
    text = spend.spend_block(cap, others=found.others, own=own_dph, price=cheapest) or ""
    return Fit(None, text, say=(events.EventKind.SPEND_CAP, text))


def price(choice: selection.Scored) -> float:
    """What renting this offer adds to the fleet, $/h."""
    if choice.price_per_hour is not None:
        return choice.price_per_hour
    return choice.offer.dph_total or 0.0
