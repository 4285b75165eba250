"""Renting one instance: the brakes, the rent lock, the spend cap, the search and the rent itself.

Called by the reconciler for the planner's ``Rent`` action. In order: the local rent brakes
(``rentguard``) may say "not yet"; with Redis, the label's rent lock is taken and the label listed
again under it (another process may just have rented); the search leaves out banned and avoided
hosts; the spend cap (``VAST_MAX_FLEET_DPH``) keeps only offers that fit; then the best offer is
rented, the next one tried when it vanished, and nothing retried when the outcome is unknown (the
next tick lists by label first).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from provisioner import errors, fleet, selection

if TYPE_CHECKING:
    from provisioner.reconciler import Reconciler

#: how long to hold off renting after a rent whose outcome is unknown
RENT_HOLD_S = 90.0
#: how many offers to try when they vanish between search and rent
MAX_OFFER_ATTEMPTS = 5


async def _within_spend_cap(rec: Reconciler, ranked: list[selection.Scored]) -> list[selection.Scored] | None:
    """The offers that keep the fleet within ``VAST_MAX_FLEET_DPH``; None (and why, once) if none.

    The fleet is every other live pod's heartbeat, plus the instance this pod still serves
    while it replaces it (make-before-break), plus this rental. Without Redis the cap cannot be
    checked: that is said once and the rental goes ahead.
    """
    cap = rec.max_fleet_dph
    if cap is None or rec.fleet is None:
        return ranked
    others = await rec.fleet.others_dph(rec.desired.label)
    if others is None:
        note_once(
            rec,
            "spend-cap-unchecked",
            "VAST_MAX_FLEET_DPH cannot be checked while Redis is unavailable; renting anyway",
        )
        return ranked
    serving = rec.state.serving
    own = (serving.dph_total or 0.0) if serving is not None else 0.0
    fitting = [c for c in ranked if fleet.spend_block(cap, others=others, own=own, price=_price(c)) is None]
    if fitting:
        rec.state.spend_noted = None
        return fitting
    cheapest = min(_price(c) for c in ranked)
    note_once(rec, "spend-cap", fleet.spend_block(cap, others=others, own=own, price=cheapest) or "")
    return None


def note_once(rec: Reconciler, kind: str, detail: str) -> None:
    """Record a spend-guard event once per distinct situation (not on every tick)."""
    if rec.state.spend_noted != detail:
        rec.state.spend_noted = detail
        rec.record(kind, detail, None, logging.WARNING, reason=kind)


async def rent(rec: Reconciler, reason: str) -> None:
    """Rent for ``reason``, unless a brake, the rent lock or the spend cap says not now."""
    if rec.state.template_pending:
        # an instance rented without the template would count as drifted once the hash is known
        note_once(rec, "rent-waits", "the template is not checked yet (API busy); renting waits for it")
        return
    # one Redis round trip: the bans go into the search (notin), the reputation into the ranking
    wait = rec.guard.wait_s(rec.clock())
    if wait > 0:
        if rec.state.backoff_noted_at == rec.guard.last_failure_at:
            return
        rec.state.backoff_noted_at = rec.guard.last_failure_at
        rec.record(
            "rent-backoff",
            f"{rec.guard.failures_in_a_row} rentals in a row failed before serving;"
            f" next rental in {wait:.0f}s",
            None,
            logging.WARNING,
        )
        return
    if rec.fleet is None:
        await _search_and_rent(rec, reason)
        return
    if not await rec.fleet.may_rent(rec.desired.label, rec.lock_token):
        note_once(rec, "rent-lock-held", "another process holds this label's rent lock; not renting")
        return
    try:
        # under the lock, look again: another process may have rented since this tick's list
        known = {i.id for i in rec.state.last_observation.instances} if rec.state.last_observation else set()
        fresh = [i for i in await rec.vast.list_by_label(rec.desired.label) if i.id not in known]
        if fresh:
            rec.record("rent-skipped", f"instance {fresh[0].id} appeared meanwhile; adopting it", fresh[0].id)
            return
        await _search_and_rent(rec, reason)
    finally:
        await rec.fleet.release_rent(rec.desired.label, rec.lock_token)


async def _search_and_rent(rec: Reconciler, reason: str) -> None:
    """Search with the bans left out, rank, and rent the best offer that is still there."""
    standing = await rec.bans.standing() if rec.bans is not None else selection.Standing()
    avoided = rec.guard.avoided(rec.clock())
    if avoided:
        standing = dataclasses.replace(standing, banned_hosts=standing.banned_hosts | avoided)
    offers = await rec.vast.search_offers(rec.search_body(standing))
    ranked = rec.choose_offers(offers, standing)
    if not ranked:
        rec.record(
            "no-offers", f"no usable offer ({len(offers)} returned by the search)", None, logging.WARNING
        )
        return
    affordable = await _within_spend_cap(rec, ranked)
    if affordable is None:
        return
    ranked = affordable
    for choice in ranked[:MAX_OFFER_ATTEMPTS]:
        offer = choice.offer
        request = rec.rent_request(rec.state.template_hash)
        if choice.bid_price is not None:
            request = dataclasses.replace(request, bid_price=choice.bid_price)
        try:
            new_id = await rec.vast.rent(offer.id, request)
        except errors.OfferGone:
            rec.record("offer-gone", f"offer {offer.id} was taken; trying the next", None, logging.WARNING)
            continue
        except errors.RentOutcomeUnknown as exc:
            rec.state.rent_hold_until = rec.clock() + RENT_HOLD_S
            rec.record(
                "rent-unknown",
                f"offer {offer.id}: {exc.reason}; listing by label before any new rental",
                None,
                logging.WARNING,
            )
            return
        rec.state.unconfirmed.add(new_id)
        rec.state.rent_prices[new_id] = _price(choice)
        rec.state.rent_hold_until = rec.clock() + RENT_HOLD_S
        rec.state.first_seen[new_id] = await rec.boot_started(new_id, rec.clock())
        bid = f" bid ${choice.bid_price:.4f}/h" if choice.bid_price is not None else ""
        rec.record(
            "rent",
            f"{reason}: offer {offer.id} host {offer.host_id} {offer.gpu_name}"
            f" ${choice.price_per_hour or offer.dph_total}/h score {choice.score:.3f}{bid}",
            new_id,
            reason=reason,
        )
        return
    rec.record("no-offers", "every offer tried was taken", None, logging.WARNING)


def _price(choice: selection.Scored) -> float:
    """What renting this offer adds to the fleet, $/h."""
    if choice.price_per_hour is not None:
        return choice.price_per_hour
    return choice.offer.dph_total or 0.0
