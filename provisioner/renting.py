"""Renting one instance: the brakes, the rent lock, the spend cap, the search and the rent itself.

The reconciler hands the planner's ``Rent`` action to a :class:`Renter` as an :class:`Ask` (label,
reason, template hash, the ids it knows, what this pod spends, now) and applies the
:class:`Outcome` it gets back: a rented id and price, a hold after an unknown outcome, or nothing
(with the events to record). The renter never touches the reconciler's state.

In order: the rent brakes (``rentguard``) or a list, search or rent slot far off (``FAR_SLOT_S``)
may say "not yet"; with Redis, the label's rent lock is taken and, unless the label's rent mark
shows no rent since the tick's list was requested, the label is listed again under it (another
process may just have rented); the search leaves out banned and avoided hosts; the spend cap
(``VAST_MAX_FLEET_DPH``) keeps only offers that fit and reserves their $/h in Redis before the rent
call (``fleet.Fleet.reserve``: pods starting together see each other's rentals); then the best
offer is rented, the next one tried when it vanished, and nothing retried when the outcome is
unknown (the next tick lists by label first). A reservation is released when nothing was rented; a
rental's stays until the heartbeat counts it (``Outcome.reserved``), and an unknown outcome's until
its TTL. The names it speaks in (``Ask``, ``Outcome``, ``RentSpec``, the protocols) live in
``rentterms.py`` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import AsyncIterator

from provisioner import errors, events, pacer, rentguard, rentqueue, selection, spendcheck
from provisioner.rentterms import (
    Ask,
    Note,
    OfferChooser,
    OfferSearch,
    Outcome,
    RentBans,
    RentFleet,
    RentSpec,
    Result,
    SearchBody,
    Turns,
)
from provisioner.vast import client as vast_client

__all__ = [
    "Ask",
    "Note",
    "OfferChooser",
    "OfferSearch",
    "Outcome",
    "RentBans",
    "RentFleet",
    "RentSpec",
    "Renter",
    "Result",
    "SearchBody",
    "Turns",
]

#: how long to hold off renting after a rent (until a list shows it) or a rent whose outcome is unknown
RENT_HOLD_S = 90.0
#: how many offers to try when they vanish between search and rent
MAX_OFFER_ATTEMPTS = 5
#: offers refused with a 4xx in one rental before the refusal is raised: one may be about that offer
#: (the next is tried, so one bad offer cannot wedge the pod), two in a row are about the request
MAX_REFUSALS = 2
#: a list, search or rent slot further off (a quota 429 moved it) is not slept for under the lock: a hold
FAR_SLOT_S = 10.0
_RENT_SLOTS = (pacer.Endpoint.SEARCH_OFFERS, pacer.Endpoint.CREATE_INSTANCE)
#: the figures in a note ($/h, seconds): a note said once per situation ignores them
_FIGURES = re.compile(r"\d+(?:\.\d+)?")


class Renter:
    """Rents for the reconciler; keeps the local brakes and what it has already said."""

    def __init__(
        self,
        vast: vast_client.VastClient,
        spec: RentSpec,
        *,
        bans: RentBans | None = None,
        fleet: RentFleet | None = None,
        guard: rentguard.RentGuard | None = None,
        turns: Turns | None = None,
    ) -> None:
        self.vast = vast
        self.turns = turns
        #: where this pod stands in the rental queue while it waits (for ``/readyz``), else None
        self.position: rentqueue.Position | None = None
        self.spec = spec
        self.bans = bans
        self.fleet = fleet
        self.guard = guard or rentguard.RentGuard()
        #: the situation last said by a once-per-situation note (spend cap, lock, template)
        self._noted: str | None = None
        #: the failure whose rent back-off was last said (said once per failure)
        self._backoff_noted_at = -1.0
        #: since when every search found no usable offer (None: the last one found some)
        self._no_offers_since: float | None = None
        #: this turn's rental once the API answered it with an id, and whether its $/h is reserved:
        #: a cut of the turn after that (the section bound) still reports it
        self._rented_now: Outcome | None = None

    # ------------------------------------------------------------ what the reconciler reports

    def failed_before_ready(self, host_id: int | None, now: float) -> None:
        """An instance of ours died or timed out without ever serving (the rent brakes count it)."""
        self.guard.failed_before_ready(host_id, now)

    def became_ready(self) -> None:
        """An instance served: the streak of failed rentals is over."""
        self.guard.became_ready()

    # ------------------------------------------------------------ renting

    async def rent(self, ask: Ask) -> Outcome:
        """Rent for ``ask.reason``, unless a brake, the rent lock or the spend cap says not now."""
        if ask.template_pending:
            # an instance rented without the template would count as drifted once the hash is known
            text = "the template is not checked yet (API busy); renting waits for it"
            return self._held(ask, events.EventKind.RENT_WAITS, text)
        wait = self.guard.wait_s(ask.now)
        if wait > 0:
            failed = self.guard.failures_in_a_row
            why = f"rent brakes: {failed} rentals failed before serving; next in {wait:.0f}s"
            return Outcome(Result.HELD, notes=self._backoff_note(ask, wait), why=why)
        if self.fleet is None:
            return await self._search_and_rent(ask)
        async with self._turn():
            return await self._rent_in_turn(ask, self.fleet)

    async def _far_slot_s(self, *ends: pacer.Endpoint) -> float:
        """Seconds until the latest of the key's next slots for ``ends`` (0 unpaced)."""
        return max([await self.vast.pacer.free_in_s(e) for e in ends]) if self.vast.pacer else 0.0

    @property
    def queue_line(self) -> str | None:
        """``queued for rental (position k of n)`` while waiting for a turn behind other pods."""
        return self.position.line if self.position is not None and self.position.k > 1 else None

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """This pod's turn in the fleet's rental queue (at once without one)."""
        if self.turns is None:
            yield
            return
        try:
            async with self.turns.queue.turn(self.turns.pod, self._note_position):
                self.position = None
                yield
        finally:
            self.position = None

    def _note_position(self, position: rentqueue.Position) -> None:
        self.position = position if position.k > 1 else None

    async def _rent_in_turn(self, ask: Ask, pods: RentFleet) -> Outcome:
        self._rented_now = None
        try:
            async with pods.rent_lock(ask.label) as held:
                if not held:
                    text = "another process holds this label's rent lock; not renting"
                    return self._held(ask, events.EventKind.RENT_LOCK_HELD, text)
                return await self._rent_locked(ask, pods)
        except TimeoutError:
            if self._rented_now is not None:  # cut off after the API named the new instance
                return self._rented_now
            # cut off under the lock: a rent may be in flight, so it counts as unknown
            text = "the rent took longer than its bound; listing by label before any new rental"
            return Outcome(Result.UNKNOWN, notes=(_note(ask, events.EventKind.RENT_UNKNOWN, text),))

    async def _rent_locked(self, ask: Ask, pods: RentFleet) -> Outcome:
        # under the lock, list the label again (one page, not the fleet's view) unless its rent mark
        # says no rent happened since the tick's list; not while the list's slot is far off (a hold)
        covered = ask.listed_at_ms is not None and await pods.list_covers_rents(ask.label, ask.listed_at_ms)
        if not covered:
            if (far := await self._far_slot_s(pacer.Endpoint.LIST_INSTANCES)) > FAR_SLOT_S:
                text = f"the key's instance list is rate limited; next slot in {far:.0f}s"
                return self._held(ask, events.EventKind.RENT_WAITS, text)
            fresh = [i for i in await self.vast.list_by_label(ask.label) if i.id not in ask.known_ids]
            if fresh:
                text = f"instance {fresh[0].id} appeared meanwhile; adopting it"
                note = _note(ask, events.EventKind.RENT_SKIPPED, text, fresh[0].id, level=logging.INFO)
                return Outcome(Result.SKIPPED, notes=(note,))
        return await self._search_and_rent(ask)

    def _backoff_note(self, ask: Ask, wait: float) -> tuple[Note, ...]:
        if self._backoff_noted_at == self.guard.last_failure_at:
            return ()
        self._backoff_noted_at = self.guard.last_failure_at
        failed = self.guard.failures_in_a_row
        text = f"{failed} rentals in a row failed before serving; next rental in {wait:.0f}s"
        return (_note(ask, events.EventKind.RENT_BACKOFF, text, reason=None),)

    def _held(self, ask: Ask, kind: events.EventKind, detail: str) -> Outcome:
        """Hold, saying why once per distinct situation (not on every tick)."""
        situation = f"{kind}:{_FIGURES.sub('#', detail)}"  # the same situation with other $/h or seconds
        if self._noted == situation:
            return Outcome(Result.HELD, why=detail)
        self._noted = situation
        return Outcome(Result.HELD, notes=(_note(ask, kind, detail, reason=str(kind)),), why=detail)

    async def _search_and_rent(self, ask: Ask) -> Outcome:
        """Search (bans left out), rank, rent the best offer still there; hold while a slot is far off."""
        if (far := await self._far_slot_s(*_RENT_SLOTS)) > FAR_SLOT_S:
            text = f"the key's offer search or rent is rate limited; next slot in {far:.0f}s"
            return self._held(ask, events.EventKind.RENT_WAITS, text)
        standing = await self.bans.standing() if self.bans is not None else selection.Standing()
        avoided = self.guard.avoided(ask.now)
        if avoided:
            standing = dataclasses.replace(standing, banned_hosts=standing.banned_hosts | avoided)
        body = self.spec.search_body(standing)
        search = self.turns.search if self.turns is not None else None
        offers = await (search.offers(body) if search is not None else self.vast.search_offers(body))
        ranked = self.spec.choose_offers(offers, standing)
        if not ranked:
            return self._no_offers(ask, f"no usable offer ({len(offers)} returned by the search)")
        self._no_offers_since = None
        notes: list[Note] = []
        fit = await self._within_spend_cap(ask, ranked, notes)
        if fit.offers is None:
            return Outcome(Result.HELD, notes=tuple(notes), why=fit.why)
        try:
            outcome = await self._rent_marked(ask, fit.offers, notes, reserved=fit.reserved)
        except errors.VastError:
            # a 429, a refused key, a second refusal: nothing was rented (an unknown outcome is
            # returned, not raised), so the $/h reserved for it must not count for the other pods
            if fit.reserved and self.fleet is not None:
                await self.fleet.release_reservation(ask.label)
            raise
        # a rental's reservation stays until its heartbeat counts it (``outcome.reserved``), an unknown
        # rent's until its TTL; any other outcome rented nothing
        if fit.reserved and self.fleet is not None and outcome.result not in (Result.RENTED, Result.UNKNOWN):
            await self.fleet.release_reservation(ask.label)
        return outcome

    def _no_offers(self, ask: Ask, text: str) -> Outcome:
        """No offer to rent: said on every try, with how long it lasts and where to look."""
        since = self._no_offers_since = self._no_offers_since or ask.now
        lasting = f" for {ask.now - since:.0f}s" if ask.now > since else ""
        detail = f"{text}{lasting}; `provisioner offers` shows every offer and what excludes it"
        return Outcome(Result.NO_OFFERS, notes=(_note(ask, events.EventKind.NO_OFFERS, detail),), why=detail)

    async def _rent_marked(
        self, ask: Ask, ranked: list[selection.Scored], notes: list[Note], *, reserved: bool = False
    ) -> Outcome:
        """``_rent_best`` between the label's rent marks: ``started`` before, ``done`` once the outcome
        is known, a Vast error (nothing rented) included; an unknown outcome or a cut leaves ``started``:
        the next renter lists again."""
        if self.fleet is None:
            return await self._rent_best(ask, ranked, notes, reserved)
        await self.fleet.mark_rent(ask.label, done=False)
        try:
            outcome = await self._rent_best(ask, ranked, notes, reserved)
        except errors.VastError:
            await self.fleet.mark_rent(ask.label, done=True)
            raise
        if outcome.result is not Result.UNKNOWN:
            await self.fleet.mark_rent(ask.label, done=True)
        return outcome

    async def _rent_best(
        self, ask: Ask, ranked: list[selection.Scored], notes: list[Note], reserved: bool = False
    ) -> Outcome:
        """Rent the first offer still there; an unknown outcome stops at once (never rent twice)."""
        tried: set[int] = set()
        refusals = 0
        for _ in range(MAX_OFFER_ATTEMPTS):
            choice = await self._pick(ranked, tried)
            if choice is None:
                break
            offer = choice.offer
            tried.add(offer.id)
            request = self.spec.rent_request(ask.template_hash)
            if choice.bid_price is not None:
                request = dataclasses.replace(request, bid_price=choice.bid_price)
            try:
                new_id = await self.vast.rent(offer.id, request)
            except errors.OfferGone:
                await self._retire(offer.id)
                text = f"offer {offer.id} was taken; trying the next"
                notes.append(_note(ask, events.EventKind.OFFER_GONE, text))
                continue
            except errors.VastRejected as exc:
                await self._retire(offer.id)
                refusals += 1
                if refusals >= MAX_REFUSALS:
                    raise
                text = f"offer {offer.id} refused: {exc.reason}; trying the next"
                notes.append(_note(ask, events.EventKind.OFFER_REFUSED, text))
                continue
            except errors.RentOutcomeUnknown as exc:
                text = f"offer {offer.id}: {exc.reason}; listing by label before any new rental"
                notes.append(_note(ask, events.EventKind.RENT_UNKNOWN, text))
                return Outcome(Result.UNKNOWN, notes=tuple(notes))
            except errors.VastError:
                # a 429 or a refused key: not rented, and still rentable for the other pods
                if self.turns is not None:
                    await self.turns.queue.release(self.turns.pod, offer.id)
                raise
            self._rented_now = dataclasses.replace(_rented(ask, choice, new_id, notes), reserved=reserved)
            await self._retire(offer.id)
            return self._rented_now
        text = "every offer tried was taken" if tried else "every usable offer is claimed by another pod"
        notes.append(_note(ask, events.EventKind.NO_OFFERS, text))
        return Outcome(Result.NO_OFFERS, notes=tuple(notes), why=text)

    async def _retire(self, offer_id: int) -> None:
        """A rented or vanished offer is picked by no pod again while the shared search may list it."""
        if self.turns is not None:
            await self.turns.queue.retire(offer_id)

    async def _pick(self, ranked: list[selection.Scored], tried: set[int]) -> selection.Scored | None:
        """The best offer not tried yet that no other pod claimed (claimed for this pod in the queue)."""
        left = [c for c in ranked if c.offer.id not in tried]
        if self.turns is None or not left:
            return left[0] if left else None
        picked = await self.turns.queue.pick(self.turns.pod, [c.offer.id for c in left])
        return next((c for c in left if c.offer.id == picked), None)

    async def _within_spend_cap(
        self, ask: Ask, ranked: list[selection.Scored], notes: list[Note]
    ) -> spendcheck.Fit:
        """The offers the spend cap lets through (``spendcheck``), their $/h reserved; or none and why.
        A situation is said once; a reservation ends it."""
        cap = self.spec.max_fleet_dph
        if cap is None or self.fleet is None:
            return spendcheck.Fit(ranked)
        fit = await spendcheck.within_cap(self.fleet, cap, ask.label, ask.own_dph, ranked, MAX_OFFER_ATTEMPTS)
        if fit.say is not None:
            notes.extend(self._held(ask, *fit.say).notes)
        elif fit.reserved:
            self._noted = None
        return fit


def _rented(ask: Ask, choice: selection.Scored, new_id: int, notes: list[Note]) -> Outcome:
    offer = choice.offer
    bid = f" bid ${choice.bid_price:.4f}/h" if choice.bid_price is not None else ""
    text = (
        f"{ask.reason}: offer {offer.id} host {offer.host_id} {offer.gpu_name}"
        f" ${choice.price_per_hour or offer.dph_total}/h score {choice.score:.3f}{bid}"
    )
    notes.append(_note(ask, events.EventKind.RENT, text, new_id, level=logging.INFO, reason=ask.reason))
    return Outcome(Result.RENTED, new_id, spendcheck.price(choice), tuple(notes))


def _note(
    ask: Ask,
    kind: events.EventKind,
    detail: str,
    instance_id: int | None = None,
    *,
    level: int = logging.WARNING,
    reason: str | None = None,
) -> Note:
    return Note(events.Event(ask.now, kind, detail, instance_id, reason), level)
