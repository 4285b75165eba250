"""Pure offer selection: the filter sent to Vast, the same checks on the answer, and a documented score.

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

**The score** (:func:`rank_offers`). Higher is better::

    score = w_price·P + w_reliability·R + w_reputation·H + w_country·C + w_bandwidth·B

each part in [0, 1]:

* ``P`` price: cheapest usable price ÷ this offer's price (1 for the cheapest, 0.5 at twice the price);
  the price is ``dph_total``, or bid + storage for interruptible rentals;
* ``R`` reliability: ``1 − 10·(1 − reliability)`` clamped (0.99 → 0.9, 0.95 → 0.5, ≤ 0.90 → 0);
* ``H`` reputation: ``(g + 1) / (g + b + 2)`` where ``g`` and ``b`` are the decayed good and bad
  weights of the host's record plus its machine's record (a host without history scores 0.5; see
  :func:`summarize_events`);
* ``C`` country: ``(n − i) / n`` for the i-th (0-based) of n preferred countries, 0 for any other;
* ``B`` bandwidth: ``log10(1 + inet_down) / 3`` clamped (10 Mb/s → 0.35, 100 → 0.67, ≥ 999 → 1).

The weights come from ``VAST_SCORE_WEIGHTS`` (default ``price=1,reliability=1,reputation=1,
country=0.5,bandwidth=0.25``). Ties go to the lower offer id, so the order is deterministic.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

from provisioner import model
from provisioner.vast import query

HOURS_PER_MONTH: Final = 30 * 24
#: Vast accepts a bid between these ($/h, vast-api.md §5)
MIN_BID: Final = 0.001
MAX_BID: Final = 128.0
#: at most this many ids in one ``notin`` list; the client-side check covers any others
MAX_NOTIN: Final = 2000
#: ``ready`` events needed before time-to-ready is judged against their median
MIN_READY_SAMPLES: Final = 3

# Bad weight per reputation event kind (a ``ready`` event is one good, plus up to one bad when slow).
EVENT_BAD_WEIGHTS: Final[Mapping[str, float]] = {
    "ready": 0.0,
    "health-fail": 0.25,
    "death": 1.0,
    "ban": 2.0,
}
EVENT_KINDS: Final = frozenset(EVENT_BAD_WEIGHTS)

# ---------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Weights:
    """The weight of each score part (``VAST_SCORE_WEIGHTS``)."""

    price: float = 1.0
    reliability: float = 1.0
    reputation: float = 1.0
    country: float = 0.5
    bandwidth: float = 0.25

    @classmethod
    def parse(cls, text: str) -> Weights:
        """``"price=1,reliability=2"`` -> weights; unnamed parts keep their default. Raises ValueError."""
        names = [f.name for f in fields(cls)]
        values: dict[str, float] = {}
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            name, sep, number = item.partition("=")
            name = name.strip().lower()
            if not sep or name not in names:
                raise ValueError(f"{item!r} is not name=weight with a name among {', '.join(names)}")
            try:
                weight = float(number)
            except ValueError:
                raise ValueError(f"{item!r}: the weight is not a number") from None
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{item!r}: a weight must be a finite number >= 0")
            values[name] = weight
        return cls(**values)


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
class Record:
    """A decayed reputation record: weights of good and bad outcomes."""

    good: float = 0.0
    bad: float = 0.0


@dataclass(frozen=True, slots=True)
class Standing:
    """What the shared blacklist says now: banned ids and reputation records per host and machine."""

    banned_hosts: frozenset[int] = frozenset()
    banned_machines: frozenset[int] = frozenset()
    hosts: Mapping[int, Record] = field(default_factory=dict)
    machines: Mapping[int, Record] = field(default_factory=dict)

    def without_bans(self) -> Standing:
        return Standing(hosts=self.hosts, machines=self.machines)


@dataclass(frozen=True, slots=True)
class Event:
    """An outcome on a host: ``ready`` (``value``: seconds to ready), ``health-fail``, ``death``, ``ban``."""

    at: float
    kind: str
    host_id: int | None
    machine_id: int | None = None
    value: float = 0.0


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Parts:
    """The score parts, each in [0, 1], before weighting."""

    price: float
    reliability: float
    reputation: float
    country: float
    bandwidth: float


@dataclass(frozen=True, slots=True)
class Scored:
    """An offer with its score, parts, effective price and bid; ``excluded`` says why it may not be rented."""

    offer: model.Offer
    score: float
    parts: Parts
    price_per_hour: float | None
    bid_price: float | None = None
    excluded: str | None = None


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
    return extra


#: which setting adds which field (for messages); fields not listed come from ``VAST_SEARCH_QUERY``
CONSTRAINT_SOURCES: Final[Mapping[str, str]] = {
    "direct_port_count": "the proxied ports",
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


def reliability_part(reliability: float | None) -> float:
    if reliability is None:
        return 0.0
    return _clamp(1.0 - 10.0 * (1.0 - reliability))


def reputation_part(host: Record | None, machine: Record | None) -> float:
    good = (host.good if host else 0.0) + (machine.good if machine else 0.0)
    bad = (host.bad if host else 0.0) + (machine.bad if machine else 0.0)
    return (good + 1.0) / (good + bad + 2.0)


def country_part(country: str | None, preferred: Sequence[str]) -> float:
    if not preferred or country is None:
        return 0.0
    try:
        index = preferred.index(country)
    except ValueError:
        return 0.0
    return (len(preferred) - index) / len(preferred)


def bandwidth_part(inet_down: float | None) -> float:
    if inet_down is None or inet_down <= 0:
        return 0.0
    return _clamp(math.log10(1.0 + inet_down) / 3.0)


def _clamp(value: float) -> float:
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value


def score_offers(
    offers: Iterable[model.Offer], criteria: Criteria, standing: Standing | None = None
) -> list[Scored]:
    """Every offer scored, with ``excluded`` set on those that may not be rented.

    Order: rentable offers by score (best first), then excluded ones by score; ties by offer id.
    """
    standing = standing or Standing()
    weights = criteria.weights
    preferred = criteria.preferred_countries
    hosts, machines = standing.hosts, standing.machines
    staged: list[tuple[model.Offer, float | None, float | None, str | None]] = []
    cheapest = math.inf
    for offer in offers:
        bid = bid_for(offer, criteria) if criteria.interruptible else None
        price = price_of(offer, criteria, bid)
        excluded = exclusion(offer, criteria, standing, price)
        if excluded is None and price is not None and 0 < price < cheapest:
            cheapest = price
        staged.append((offer, bid, price, excluded))
    result: list[Scored] = []
    for offer, bid, price, excluded in staged:
        price_p = _clamp(cheapest / price) if price and price > 0 and cheapest < math.inf else 0.0
        parts = Parts(
            price=price_p,
            reliability=reliability_part(offer.reliability),
            reputation=reputation_part(
                hosts.get(offer.host_id) if offer.host_id is not None else None,
                machines.get(offer.machine_id) if offer.machine_id is not None else None,
            ),
            country=country_part(offer.country, preferred),
            bandwidth=bandwidth_part(offer.inet_down),
        )
        score = (
            weights.price * parts.price
            + weights.reliability * parts.reliability
            + weights.reputation * parts.reputation
            + weights.country * parts.country
            + weights.bandwidth * parts.bandwidth
        )
        result.append(Scored(offer, score, parts, price, bid, excluded))
    result.sort(key=lambda s: (s.excluded is not None, -s.score, s.offer.id))
    return result


def rank_offers(
    offers: Iterable[model.Offer], criteria: Criteria, standing: Standing | None = None
) -> list[Scored]:
    """The offers this pod may rent, best first (see the module docstring for the score)."""
    return [s for s in score_offers(offers, criteria, standing) if s.excluded is None]


# ---------------------------------------------------------------- reputation


def decay(age_s: float, half_life_s: float) -> float:
    """The weight left of an event ``age_s`` old: halves every ``half_life_s``."""
    return float(0.5 ** (max(age_s, 0.0) / half_life_s))


def summarize_events(
    events: Iterable[Event], now: float, half_life_s: float
) -> tuple[dict[int, Record], dict[int, Record]]:
    """Per-host and per-machine decayed records from the shared event log.

    Each event weighs ``0.5 ** (age / half_life)``. ``ready`` adds one good and, once at least
    ``MIN_READY_SAMPLES`` ready events exist, ``min(1, ttr / median − 1)`` bad when it took longer
    than the median time to ready (a slow image pull). ``health-fail`` adds 0.25 bad, ``death`` 1,
    ``ban`` 2.
    """
    items = list(events)
    times = [e.value for e in items if e.kind == "ready" and e.value > 0]
    median = statistics.median(times) if len(times) >= MIN_READY_SAMPLES else None
    hosts: dict[int, list[float]] = {}
    machines: dict[int, list[float]] = {}
    for event in items:
        weight = decay(now - event.at, half_life_s)
        good = 1.0 if event.kind == "ready" else 0.0
        bad = EVENT_BAD_WEIGHTS.get(event.kind, 0.0)
        if event.kind == "ready" and median and event.value > median:
            bad = min(1.0, event.value / median - 1.0)
        for ident, table in ((event.host_id, hosts), (event.machine_id, machines)):
            if ident is None:
                continue
            acc = table.setdefault(ident, [0.0, 0.0])
            acc[0] += good * weight
            acc[1] += bad * weight
    return (
        {k: Record(g, b) for k, (g, b) in hosts.items()},
        {k: Record(g, b) for k, (g, b) in machines.items()},
    )


# ---------------------------------------------------------------- diagnosis


@dataclass(frozen=True, slots=True)
class Relaxation:
    """The search filter with one constraint dropped, to see how many offers that constraint removes."""

    field: str
    source: str
    constraint: Mapping[str, Any]
    filter: Mapping[str, Any]


#: filter fields never dropped when diagnosing (dropping ``rentable`` lists offers nobody can rent)
_NOT_RELAXED: Final = frozenset({"rentable", "rented", "external", "host_id", "machine_id"})


def relaxations(full_filter: Mapping[str, Any], criteria: Criteria, limit: int) -> list[Relaxation]:
    """Up to ``limit`` filters, each ``full_filter`` without one field; the settings' fields come first."""
    ours = constraints(criteria)
    names = [n for n in full_filter if n not in _NOT_RELAXED]
    names = [n for n in names if n in ours] + [n for n in names if n not in ours]
    result = []
    for name in names[:limit]:
        source = CONSTRAINT_SOURCES[name] if name in ours else "VAST_SEARCH_QUERY"
        reduced = {k: v for k, v in full_filter.items() if k != name}
        result.append(Relaxation(name, source, full_filter[name], reduced))
    return result


def exclusion_counts(scored: Iterable[Scored]) -> dict[str, int]:
    """How many offers each exclusion reason removed, most first."""
    counts: dict[str, int] = {}
    for s in scored:
        if s.excluded is not None:
            counts[s.excluded] = counts.get(s.excluded, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------- presentation (``provisioner offers``)


def shown_offers(scored: Iterable[Scored], top: int) -> list[Scored]:
    """The best ``top`` offers that are rentable or excluded only by a ban (those get marked)."""
    kept = [s for s in scored if s.excluded is None or s.excluded in BAN_EXCLUSIONS]
    kept.sort(key=lambda s: (-s.score, s.offer.id))
    return kept[:top]


def note_of(scored: Scored, first_usable_id: int | None) -> str:
    if scored.excluded == "banned-host":
        return "BANNED host"
    if scored.excluded == "banned-machine":
        return "BANNED machine"
    return "rents next" if scored.offer.id == first_usable_id else ""


def offer_row(scored: Scored, rank: int, note: str) -> dict[str, Any]:
    """One offer as ``offers --json`` prints it."""
    o = scored.offer
    return {
        "rank": rank,
        "offer_id": o.id,
        "host_id": o.host_id,
        "machine_id": o.machine_id,
        "gpu_name": o.gpu_name,
        "num_gpus": o.num_gpus,
        "price_per_hour": scored.price_per_hour,
        "bid_price": scored.bid_price,
        "country": o.country,
        "reliability": o.reliability,
        "inet_down": o.inet_down,
        "score": round(scored.score, 4),
        "parts": {f.name: round(getattr(scored.parts, f.name), 4) for f in fields(scored.parts)},
        "banned": scored.excluded in BAN_EXCLUSIONS,
        "note": note,
    }


def render_offers(shown: Sequence[Scored], first_usable_id: int | None) -> str:
    """A plain-text table of offers with their score parts (banned ones marked)."""
    header = (
        f"{'#':>3} {'offer':>10} {'host':>7} {'machine':>8} {'gpu':<16} {'$/h':>8} {'cc':<3}"
        f" {'score':>6} {'price':>5} {'rel':>5} {'rep':>5} {'ctry':>5} {'bw':>5}  note"
    )
    lines = [header]
    for rank, s in enumerate(shown, 1):
        o, p = s.offer, s.parts
        gpu = f"{o.num_gpus or '?'}x {o.gpu_name or '?'}"[:16]
        price = f"{s.price_per_hour:.4f}" if s.price_per_hour is not None else "?"
        lines.append(
            f"{rank:>3} {o.id:>10} {o.host_id or '?':>7} {o.machine_id or '?':>8} {gpu:<16} {price:>8}"
            f" {o.country or '?':<3} {s.score:>6.3f} {p.price:>5.2f} {p.reliability:>5.2f}"
            f" {p.reputation:>5.2f} {p.country:>5.2f} {p.bandwidth:>5.2f}  {note_of(s, first_usable_id)}"
        )
    return "\n".join(lines) + "\n"


def explain_no_match(scored: Sequence[Scored], relaxed: Sequence[tuple[Relaxation, int]]) -> str:
    """One line on why no offer may be rented: the exclusions, or the constraint that removed the most."""
    if scored:
        counts = ", ".join(f"{n} {reason}" for reason, n in exclusion_counts(scored).items())
        return f"no offer may be rented: the search returned {len(scored)}, all excluded ({counts})"
    if not relaxed:
        return "no offer matches the search, which has no constraint to drop: check VAST_SEARCH_QUERY"
    best, most = relaxed[0]
    checked = ", ".join(f"{r.field}: {n}" for r, n in relaxed)
    if most == 0:
        return (
            "no offer matches, and dropping any single constraint does not help "
            f"(offers without each: {checked}); widen VAST_SEARCH_QUERY"
        )
    return (
        f"no offer matches: {best.source} ({best.field} {_constraint_text(best.constraint)}) removes the "
        f"most; without it the search returns {most} offers (offers without each: {checked})"
    )


def _constraint_text(constraint: Mapping[str, Any]) -> str:
    return " ".join(f"{op} {value}" for op, value in constraint.items())
