"""The score of an offer (pure): five parts in [0, 1], weighted. Higher is better::

    score = w_price·P + w_reliability·R + w_reputation·H + w_country·C + w_bandwidth·B

* ``P`` price: cheapest usable price ÷ this offer's price (1 for the cheapest, 0.5 at twice the price);
  the price is ``dph_total``, or bid + storage for interruptible rentals;
* ``R`` reliability: ``1 − 10·(1 − reliability)`` clamped (0.99 → 0.9, 0.95 → 0.5, ≤ 0.90 → 0);
* ``H`` reputation: ``(g + 1) / (g + b + 2)`` where ``g`` and ``b`` are the decayed good and bad
  weights of the host's record plus its machine's record (a host without history scores 0.5; see
  ``reputation.py``);
* ``C`` country: ``(n − i) / n`` for the i-th (0-based) of n preferred countries, 0 for any other;
* ``B`` bandwidth: ``log10(1 + inet_down) / 3`` clamped (10 Mb/s → 0.35, 100 → 0.67, ≥ 999 → 1).

The weights come from ``VAST_SCORE_WEIGHTS`` (default ``price=1,reliability=1,reputation=1,
country=0.5,bandwidth=0.25``).

``selection.py`` decides which offers may be rented and orders them by this score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

from provisioner import model, reputation


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


class Parts(NamedTuple):
    """The score parts, each in [0, 1], before weighting (a tuple: one is built per offer, fast)."""

    price: float
    reliability: float
    reputation: float
    country: float
    bandwidth: float


class Scored(NamedTuple):
    """An offer with its score, parts, effective price and bid; ``excluded`` says why it may not be rented."""

    offer: model.Offer
    score: float
    parts: Parts
    price_per_hour: float | None
    bid_price: float | None = None
    excluded: str | None = None


def reliability_part(reliability: float | None) -> float:
    if reliability is None:
        return 0.0
    return _clamp(1.0 - 10.0 * (1.0 - reliability))


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


Scorer = Callable[[model.Offer, float | None, float | None, str | None], Scored]


def scorer(
    w: Weights,
    preferred: Sequence[str],
    hosts: Mapping[int, reputation.Record],
    machines: Mapping[int, reputation.Record],
    cheapest: float,
) -> Scorer:
    """The function scoring one offer (with its bid, price and exclusion) against the cheapest price.

    The parts are those of the module docstring (:func:`reliability_part` ...), written inline:
    ``selection.rank_offers`` runs this on every offer of every search answer.
    """
    has_history = bool(hosts or machines)
    country_parts: dict[str | None, float] = {}  # per geolocation text: few distinct values
    log10 = math.log10

    def score(offer: model.Offer, bid: float | None, price: float | None, excluded: str | None) -> Scored:
        price_p = cheapest / price if price and price > 0 and cheapest < math.inf else 0.0
        price_p = 1.0 if price_p > 1.0 else price_p
        rel = offer.reliability
        rel_p = 0.0 if rel is None else 1.0 - 10.0 * (1.0 - rel)
        rel_p = 0.0 if rel_p < 0.0 else 1.0 if rel_p > 1.0 else rel_p
        down = offer.inet_down
        bw_p = 0.0 if down is None or down <= 0 else log10(1.0 + down) / 3.0
        bw_p = 1.0 if bw_p > 1.0 else bw_p
        rep = 0.5
        if has_history:
            host, machine = offer.host_id, offer.machine_id
            rep = reputation.reputation_part(
                None if host is None else hosts.get(host), None if machine is None else machines.get(machine)
            )
        country = 0.0
        if preferred:
            country = country_parts.get(offer.geolocation, -1.0)
            if country < 0:
                country = country_parts[offer.geolocation] = country_part(offer.country, preferred)
        total = w.price * price_p + w.reliability * rel_p + w.reputation * rep + w.country * country
        total += w.bandwidth * bw_p
        return Scored(offer, total, Parts(price_p, rel_p, rep, country, bw_p), price, bid, excluded)

    return score
