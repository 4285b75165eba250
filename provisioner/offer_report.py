"""Why no offer may be rented, and the offers table: what ``provisioner offers`` and the run log show.

Pure (no I/O): the caller runs the searches. :func:`relaxations` gives the search filter with one
constraint dropped at a time, so that counting the offers each returns shows which constraint
removes the most; :func:`explain_no_match` says so in one line. :func:`shown_offers`,
:func:`render_offers` and :func:`offer_row` present ``selection.score_offers``' result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from provisioner import selection


@dataclass(frozen=True, slots=True)
class Relaxation:
    """The search filter with one constraint dropped, to see how many offers that constraint removes."""

    field: str
    source: str
    constraint: Mapping[str, Any]
    filter: Mapping[str, Any]


#: filter fields never dropped when diagnosing (dropping ``rentable`` lists offers nobody can rent)
_NOT_RELAXED: Final = frozenset({"rentable", "rented", "external", "host_id", "machine_id"})


def relaxations(full_filter: Mapping[str, Any], criteria: selection.Criteria, limit: int) -> list[Relaxation]:
    """Up to ``limit`` filters, each ``full_filter`` without one field; the settings' fields come first."""
    ours = selection.constraints(criteria)
    names = [n for n in full_filter if n not in _NOT_RELAXED]
    names = [n for n in names if n in ours] + [n for n in names if n not in ours]
    result = []
    for name in names[:limit]:
        source = selection.CONSTRAINT_SOURCES[name] if name in ours else "VAST_SEARCH_QUERY"
        reduced = {k: v for k, v in full_filter.items() if k != name}
        result.append(Relaxation(name, source, full_filter[name], reduced))
    return result


def exclusion_counts(scored: Iterable[selection.Scored]) -> dict[str, int]:
    """How many offers each exclusion reason removed, most first."""
    counts: dict[str, int] = {}
    for s in scored:
        if s.excluded is not None:
            counts[s.excluded] = counts.get(s.excluded, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------- presentation (``provisioner offers``)


def shown_offers(scored: Iterable[selection.Scored], top: int) -> list[selection.Scored]:
    """The best ``top`` offers that are rentable or excluded only by a ban (those get marked)."""
    kept = [s for s in scored if s.excluded is None or s.excluded in selection.BAN_EXCLUSIONS]
    kept.sort(key=lambda s: (-s.score, s.offer.id))
    return kept[:top]


def note_of(scored: selection.Scored, first_usable_id: int | None) -> str:
    if scored.excluded == "banned-host":
        return "BANNED host"
    if scored.excluded == "banned-machine":
        return "BANNED machine"
    return "rents next" if scored.offer.id == first_usable_id else ""


def offer_row(scored: selection.Scored, rank: int, note: str) -> dict[str, Any]:
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
        "parts": {name: round(value, 4) for name, value in scored.parts._asdict().items()},
        "banned": scored.excluded in selection.BAN_EXCLUSIONS,
        "note": note,
    }


def render_offers(shown: Sequence[selection.Scored], first_usable_id: int | None) -> str:
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


def explain_no_match(scored: Sequence[selection.Scored], relaxed: Sequence[tuple[Relaxation, int]]) -> str:
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
