"""``provisioner offers``: search Vast.ai now as this pod would, and say why nothing matched.

Every offer is scored (banned ones kept, to be marked); when no offer may be rented, the search is
repeated with each constraint dropped in turn to find the one that removed the most offers. The
rendering of the table and the reason text live in ``selection.py``; the exit code in ``cli.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from provisioner import errors, fleet_wiring, offer_report, selection, wiring
from provisioner.settings import Settings
from provisioner.vast import client as vast_client
from provisioner.vast import query

#: at most this many extra searches to find the constraint that removed the most offers
MAX_DIAGNOSIS_SEARCHES: Final = 6


@dataclass
class OfferSurvey:
    """What ``provisioner offers`` shows: every offer scored, and why nothing matched when so."""

    scored: list[selection.Scored]
    body: Mapping[str, object]
    #: when no offer may be rented: (constraint dropped, offers the search returns without it)
    relaxed: list[tuple[offer_report.Relaxation, int]]
    #: set when the blacklist could not be read (offers are then not marked)
    store_error: str | None = None

    @property
    def usable(self) -> list[selection.Scored]:
        return [s for s in self.scored if s.excluded is None]


async def read_standing(settings: Settings) -> tuple[selection.Standing, str | None]:
    """The bans and reputation from the blacklist when enabled; the error text when Redis failed."""
    async with fleet_wiring.open_blacklist(settings) as bans:
        if bans is None:
            return selection.Standing(), None
        try:
            return await bans.standing(), None
        except errors.StoreError as exc:
            return selection.Standing(), str(exc)


async def search_body_now(settings: Settings) -> tuple[Mapping[str, object], str | None]:
    """The search body ``run`` would send now (``provisioner query --as-run``): the settings' filter
    with the cost controls, the ports and the current bans; the error text when Redis failed."""
    standing, store_error = await read_standing(settings)
    return wiring.build_search_body(settings)(standing), store_error


async def survey_offers(settings: Settings) -> OfferSurvey:
    """Search Vast now as this pod would, scoring every offer; banned ones are kept, to be marked.

    The search leaves the ``notin`` ban lists out (one search instead of two), so banned offers can
    be shown; the ban check then marks them. When no offer may be rented, the search is repeated
    with each constraint dropped in turn (at most ``MAX_DIAGNOSIS_SEARCHES`` more searches).
    """
    criteria = wiring.build_criteria(settings)
    standing, store_error = await read_standing(settings)
    base = settings.search_filter()
    body = selection.search_body(base, criteria, standing.without_bans())
    async with wiring.open_vast(settings) as vast:
        scored = selection.score_offers(await vast.search_offers(body), criteria, standing)
        relaxed = [] if scored else await diagnose(vast, base, criteria, str(body["type"]))
    return OfferSurvey(scored, body, relaxed, store_error)


async def diagnose(
    vast: vast_client.VastClient, base: Mapping[str, object], criteria: selection.Criteria, offer_type: str
) -> list[tuple[offer_report.Relaxation, int]]:
    """Each constraint dropped in turn, with how many offers the search then returns (most first)."""
    full = selection.search_filter(base, criteria, selection.Standing())
    relaxed: list[tuple[offer_report.Relaxation, int]] = []
    for option in offer_report.relaxations(full, criteria, MAX_DIAGNOSIS_SEARCHES):
        wider = query.search_body(option.filter, offer_type=offer_type, allocated_storage=criteria.disk_gb)
        relaxed.append((option, len(await vast.search_offers(wider))))
    relaxed.sort(key=lambda item: -item[1])
    return relaxed
