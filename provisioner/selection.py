"""Pure offer selection: the filter sent to Vast, the same checks on the answer, the bid and the order.

No I/O, no clock: the shared blacklist's view (bans and reputation) comes in as a
``Standing``, the settings as ``Criteria``.

**The filter** (:func:`search_body`). The user's ``VAST_SEARCH_QUERY`` plus the cost
controls, each tightening (never loosening) what the query says:

=========================  =====================================================
``VAST_MAX_PRICE``         ``dph_total lte`` (Vast includes the storage for the
                           ``allocated_storage`` we send, i.e. ``VAST_DISK_GB``)
``VAST_MIN_RELIABILITY``   ``reliability gte``
``VAST_MIN_INET_DOWN``     ``inet_down gte`` (Mb/s)
``VAST_MIN_CUDA``          ``cuda_max_good gte``
``VAST_VERIFIED_ONLY``     ``verified eq true``
``VAST_DATACENTER_ONLY``   ``hosting_type gte 1`` (as SkyPilot sends it)
proxied ports              ``direct_port_count gte <number of container ports>``
banned hosts / machines    ``host_id notin [...]`` / ``machine_id notin [...]``
``VAST_INTERRUPTIBLE``     ``"type": "bid"`` (the body, not the filter)
=========================  =====================================================

Preferred countries are *not* filtered on: they only rank, so any other country
remains a fallback.

**The checks** (:func:`exclusion`). The answer is checked again against all of the
above (defence in depth: a server may ignore a filter, a ``notin`` list may be cut).
An offer with an unknown price is refused when a price cap is set.

**The bid** (:func:`bid_for`). With ``VAST_INTERRUPTIBLE`` the bid is
``min_bid × VAST_BID_MULTIPLIER``, lowered so that bid + storage stays within
``VAST_MAX_PRICE``; an offer whose ``min_bid`` alone would break the cap is refused.

**The score** (``scoring.py``): higher is better; :func:`rank_offers` orders the rentable offers by
it, ties to the lower offer id, so the order is deterministic.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from provisioner import model, reputation, scoring
from provisioner.vast import query

# Names other modules import from here (blacklist.py, daemon.py, renting.py ...), kept stable; ``Event``
# is ``reputation.HostEvent`` under its old name (``events.Event`` is the reconciler's).
Record = reputation.Record
Weights = scoring.Weights
Parts = scoring.Parts
Scored = scoring.Scored
Event = reputation.HostEvent
EVENT_KINDS = reputation.EVENT_KINDS
summarize_events = reputation.summarize_events

HOURS_PER_MONTH: Final = 30 * 24
#: Vast accepts a bid between these ($/h, docs/vast-api.md §6.1)
MIN_BID: Final = 0.001
MAX_BID: Final = 128.0
#: at most this many ids in one ``notin`` list; the client-side check covers any others
MAX_NOTIN: Final = 2000

# ---------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Criteria:
    """What this pod may rent and how it prefers offers (from the settings)."""

    ports_needed: int = 1
    disk_gb: float = 20.0
    max_price: float | None = None
    min_reliability: float | None = None
    min_inet_down: float | None = None
    min_cuda: float | None = None
    verified_only: bool = False
    datacenter_only: bool = False
    preferred_countries: tuple[str, ...] = ()
    interruptible: bool = False
    bid_multiplier: float = 1.2
    weights: Weights = field(default_factory=Weights)


@dataclass(frozen=True, slots=True)
class Standing:
    """What the shared blacklist says now: banned ids and reputation records per host and machine."""

    banned_hosts: frozenset[int] = frozenset()
    banned_machines: frozenset[int] = frozenset()
    hosts: Mapping[int, Record] = field(default_factory=dict)
    machines: Mapping[int, Record] = field(default_factory=dict)

    def without_bans(self) -> Standing:
        return Standing(hosts=self.hosts, machines=self.machines)


# ---------------------------------------------------------------- the filter


def constraints(criteria: Criteria) -> dict[str, dict[str, Any]]:
    """The filter fields the settings add to the user's query (bans not included)."""
    extra: dict[str, dict[str, Any]] = {"direct_port_count": {"gte": criteria.ports_needed}}
    if criteria.max_price is not None:
        extra["dph_total"] = {"lte": criteria.max_price}
    if criteria.min_reliability is not None:
        extra["reliability"] = {"gte": criteria.min_reliability}
    if criteria.min_inet_down is not None:
        extra["inet_down"] = {"gte": criteria.min_inet_down}
    if criteria.min_cuda is not None:
        extra["cuda_max_good"] = {"gte": criteria.min_cuda}
    if criteria.verified_only:
        extra["verified"] = {"eq": True}
    if criteria.datacenter_only:
        extra["hosting_type"] = {"gte": 1}
    # allocated_storage only prices the disk (vast-api.md §4.2): an offer with less would refuse the rent
    extra["disk_space"] = {"gte": criteria.disk_gb}
    return extra


#: which setting adds which field (for messages); fields not listed come from ``VAST_SEARCH_QUERY``
CONSTRAINT_SOURCES: Final[Mapping[str, str]] = {
    "direct_port_count": "the proxied ports",
    "disk_space": "VAST_DISK_GB",
    "dph_total": "VAST_MAX_PRICE",
    "reliability": "VAST_MIN_RELIABILITY",
    "inet_down": "VAST_MIN_INET_DOWN",
    "cuda_max_good": "VAST_MIN_CUDA",
    "verified": "VAST_VERIFIED_ONLY",
    "hosting_type": "VAST_DATACENTER_ONLY",
}


def search_filter(base: Mapping[str, Any], criteria: Criteria, standing: Standing) -> dict[str, Any]:
    """The user's filter tightened by the settings, with banned hosts and machines as ``notin``.

    A bound the query already sets is kept when it is stricter (``dph_total lte 0.3`` beats a
    ``VAST_MAX_PRICE`` of 0.5). ``notin`` lists are merged with any the query has, because
    ``query.merge_filters`` replaces a list rather than extending it.
    """
    extra = _tighten(base, constraints(criteria))
    for name, banned in (("host_id", standing.banned_hosts), ("machine_id", standing.banned_machines)):
        if banned:
            extra[name] = {"notin": _notin(base.get(name), banned)}
    return query.merge_filters(base, extra)


def search_body(base: Mapping[str, Any], criteria: Criteria, standing: Standing) -> dict[str, Any]:
    """The ``POST /api/v0/bundles/`` body for this pod (priced for ``VAST_DISK_GB``, bid or on-demand)."""
    return query.search_body(
        search_filter(base, criteria, standing),
        offer_type="bid" if criteria.interruptible else "on-demand",
        allocated_storage=criteria.disk_gb,
    )


def _tighten(base: Mapping[str, Any], extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    for name, ops in extra.items():
        existing = base.get(name)
        tightened = dict(ops)
        if isinstance(existing, Mapping):
            for op, ours in ops.items():
                theirs = _as_float(existing.get(op))
                if theirs is None or isinstance(ours, bool):
                    continue
                if op in ("lte", "lt"):
                    tightened[op] = min(theirs, float(ours))
                elif op in ("gte", "gt"):
                    tightened[op] = max(theirs, float(ours))
        result[name] = tightened
    return result


def _notin(existing: Any, banned: Iterable[int]) -> list[Any]:
    listed = list(existing.get("notin", [])) if isinstance(existing, Mapping) else []
    seen = {str(item) for item in listed}
    ours = sorted(i for i in banned if str(i) not in seen)
    return (listed + ours)[:MAX_NOTIN]


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------- checks and bids


def storage_per_hour(offer: model.Offer, disk_gb: float) -> float:
    """The storage part of the hourly price for ``disk_gb`` ($/GB/month ÷ 720); 0 when unknown."""
    if offer.storage_cost is None:
        return 0.0
    return offer.storage_cost * disk_gb / HOURS_PER_MONTH


def bid_for(offer: model.Offer, criteria: Criteria) -> float | None:
    """The bid for an interruptible rental, or None when none fits under the price cap."""
    if offer.min_bid is None or offer.min_bid <= 0:
        return None
    bid = offer.min_bid * criteria.bid_multiplier
    if criteria.max_price is not None:
        bid = min(bid, criteria.max_price - storage_per_hour(offer, criteria.disk_gb))
    bid = min(bid, MAX_BID)
    if bid < offer.min_bid or bid < MIN_BID:
        return None
    return bid


def price_of(offer: model.Offer, criteria: Criteria, bid: float | None) -> float | None:
    """What the rental costs per hour: ``dph_total``, or bid + storage when interruptible."""
    if criteria.interruptible:
        return None if bid is None else bid + storage_per_hour(offer, criteria.disk_gb)
    return offer.dph_total


def exclusion(offer: model.Offer, criteria: Criteria, standing: Standing, price: float | None) -> str | None:
    """Why this offer may not be rented (a short code), or None. Unknown values pass, except price."""
    if offer.host_id is not None and offer.host_id in standing.banned_hosts:
        return "banned-host"
    if offer.machine_id is not None and offer.machine_id in standing.banned_machines:
        return "banned-machine"
    if offer.direct_port_count is not None and offer.direct_port_count < criteria.ports_needed:
        return "too-few-ports"
    if criteria.interruptible and price is None:
        return "no-bid-under-cap"
    if criteria.max_price is not None and (price is None or price > criteria.max_price + 1e-9):
        return "over-price"
    if _below(offer.reliability, criteria.min_reliability):
        return "low-reliability"
    if _below(offer.inet_down, criteria.min_inet_down):
        return "slow-network"
    if _below(offer.cuda_max_good, criteria.min_cuda):
        return "old-cuda"
    if criteria.verified_only and offer.verified is False:
        return "unverified"
    if criteria.datacenter_only and offer.datacenter is False:
        return "not-datacenter"
    return None


def _below(value: float | None, floor: float | None) -> bool:
    return floor is not None and value is not None and value < floor


BAN_EXCLUSIONS: Final = frozenset({"banned-host", "banned-machine"})

# ---------------------------------------------------------------- the score


def score_offers(
    offers: Iterable[model.Offer], criteria: Criteria, standing: Standing | None = None
) -> list[Scored]:
    """Every offer scored, with ``excluded`` set on those that may not be rented.

    Order: rentable offers by score (best first), then excluded ones by score; ties by offer id.
    """
    scored = _score_all(offers, criteria, standing or Standing(), keep_excluded=True)
    return [s for s in scored if s.excluded is None] + [s for s in scored if s.excluded is not None]


def rank_offers(
    offers: Iterable[model.Offer], criteria: Criteria, standing: Standing | None = None
) -> list[Scored]:
    """The offers this pod may rent, best first (see the module docstring for the score)."""
    return _score_all(offers, criteria, standing or Standing(), keep_excluded=False)


def _score_all(
    offers: Iterable[model.Offer], criteria: Criteria, standing: Standing, *, keep_excluded: bool
) -> list[Scored]:
    """Offers scored, best first (ties by offer id); excluded ones scored only when kept."""
    staged = []
    cheapest = math.inf
    for offer in offers:
        bid = bid_for(offer, criteria) if criteria.interruptible else None
        price = price_of(offer, criteria, bid)
        excluded = exclusion(offer, criteria, standing, price)
        if excluded is None:
            if price is not None and 0 < price < cheapest:
                cheapest = price
        elif not keep_excluded:
            continue
        staged.append((offer, bid, price, excluded))
    score = scoring.scorer(
        criteria.weights, criteria.preferred_countries, standing.hosts, standing.machines, cheapest
    )
    result = [score(*item) for item in staged]
    # two stable sorts with C-level keys: by id, then by score (best first, equal scores keep id order)
    result.sort(key=_OFFER_ID)
    result.sort(key=_SCORE, reverse=True)
    return result


_OFFER_ID = operator.attrgetter("offer.id")
_SCORE = operator.attrgetter("score")
