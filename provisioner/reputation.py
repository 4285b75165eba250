"""Host reputation (pure): outcomes on hosts and machines, decayed into good and bad weights.

The shared blacklist (``blacklist.py``) stores each outcome as a :class:`HostEvent` and reads them
back; :func:`summarize_events` turns them into one :class:`Record` per host and per machine, and
:func:`reputation_part` into the ``H`` part of an offer's score (``selection.py``). No I/O, no clock:
``now`` comes in.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

#: ``ready`` events needed before time-to-ready is judged against their median
MIN_READY_SAMPLES: Final = 3

# Bad weight per event kind (a ``ready`` event is one good, plus up to one bad when slow).
EVENT_BAD_WEIGHTS: Final[Mapping[str, float]] = {
    "ready": 0.0,
    "health-fail": 0.25,
    "death": 1.0,
    "ban": 2.0,
}
EVENT_KINDS: Final = frozenset(EVENT_BAD_WEIGHTS)


@dataclass(frozen=True, slots=True)
class Record:
    """A decayed reputation record: weights of good and bad outcomes."""

    good: float = 0.0
    bad: float = 0.0


@dataclass(frozen=True, slots=True)
class HostEvent:
    """An outcome on a host: ``ready`` (``value``: seconds to ready), ``health-fail``, ``death``, ``ban``."""

    at: float
    kind: str
    host_id: int | None
    machine_id: int | None = None
    value: float = 0.0


def reputation_part(host: Record | None, machine: Record | None) -> float:
    """``(g + 1) / (g + b + 2)`` over the host's and the machine's records: 0.5 without history."""
    good = (host.good if host else 0.0) + (machine.good if machine else 0.0)
    bad = (host.bad if host else 0.0) + (machine.bad if machine else 0.0)
    return (good + 1.0) / (good + bad + 2.0)


def decay(age_s: float, half_life_s: float) -> float:
    """The weight left of an event ``age_s`` old: halves every ``half_life_s``."""
    return float(0.5 ** (max(age_s, 0.0) / half_life_s))


def summarize_events(
    events: Iterable[HostEvent], now: float, half_life_s: float
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
