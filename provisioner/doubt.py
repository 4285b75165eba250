"""Distrust one list answer that contradicts what the pod knows: confirm before acting on it.

A single list page can be wrong (a glitch, a lagging replica): an instance listed last tick may be
missing, or the served instance may come back without its address, its ports or its status. Acting
on that answer would unserve a healthy instance (503s), restart its boot clock, or rent a second
instance. So such an entry is confirmed first: the instance is shown directly
(``GET /instances/{id}/``), and for the served one the health check of its last known upstream
has the last word. While it answers, the last known entry stands in for the odd one (the proxy
keeps its upstreams); a served instance that both the list and ``show`` say is gone is believed
once it stops answering, or after ``GONE_DOUBT_S`` at the latest.

Statuses that explain a loss of endpoints (``loading``, ``rebooting``, ``exited``, ...) are
trusted at once: only answers that do not explain it (``null`` status, ``running`` without an
address or a port, a status Vast was never seen to use) are doubted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from provisioner import model, planning, tracking

log = logging.getLogger("provisioner.reconciler")

#: how long a served instance that the list and ``show`` call gone may keep serving while it answers
GONE_DOUBT_S = 60.0

Show = Callable[[int], Awaitable[model.Instance | None]]
Check = Callable[[model.Instance], Awaitable[bool]]


def oddity(entry: model.Instance | None, desired: model.DesiredSpec) -> str | None:
    """Why ``entry`` contradicts an instance known to be up (None: it does not)."""
    if entry is None:
        return "missing from the list"
    if planning.has_endpoints(entry, desired):
        return None
    if entry.actual_status is None:
        return "listed with status null"
    if not (entry.is_running or entry.status_unknown):
        return None  # a status that explains it: loading, rebooting, exited, ...
    if not entry.public_ipaddr:
        return "listed without an address"
    missing = [p for p in desired.container_ports if entry.host_port(p) is None]
    return f"listed without port {', '.join(map(str, missing))}"


@dataclass(frozen=True)
class Finding:
    """What confirming one doubted entry concluded; ``entry`` is what the tick should see (None: gone)."""

    instance_id: int
    entry: model.Instance | None
    odd: str
    #: the last known entry stands in, on the health check's word
    kept: bool = False


async def confirm(
    instance_id: int,
    listed: model.Instance | None,
    label: str,
    desired: model.DesiredSpec,
    show: Show,
) -> Finding | None:
    """Show a doubted entry; None when it is not doubted, else what ``show`` says (may still be odd)."""
    odd = oddity(listed, desired)
    if odd is None:
        return None
    return Finding(instance_id, await show_own(show, instance_id, label), odd)


async def settle_served(
    finding: Finding, served: model.Instance, desired: model.DesiredSpec, check: Check, gone_for_s: float
) -> Finding:
    """The served instance: when ``show`` is odd too, its health check decides (last known entry stays)."""
    if oddity(finding.entry, desired) is None:
        return finding
    if finding.entry is None and gone_for_s > GONE_DOUBT_S:
        return finding
    if await check(served):
        return Finding(finding.instance_id, served, finding.odd, kept=True)
    return finding


async def show_own(show: Show, instance_id: int, label: str) -> model.Instance | None:
    """The instance as ``show`` sees it; None when it is gone or carries another label (not ours)."""
    shown = await show(instance_id)
    return shown if shown is not None and shown.label == label else None


def expected_ids(previous: Iterable[model.Instance], served: model.Instance | None) -> list[int]:
    """The instances the pod expects to see listed again: last tick's, plus the served one."""
    ids = {inst.id for inst in previous}
    if served is not None:
        ids.add(served.id)
    return sorted(ids)


@dataclass(frozen=True)
class Sources:
    """Where a doubted entry is confirmed: ``show`` (the Vast client) and the upstream health check."""

    show: Show
    check: Check


async def confirm_expected(
    state: tracking.ReconcilerState,
    instances: dict[int, model.Instance],
    now: float,
    desired: model.DesiredSpec,
    sources: Sources,
) -> list[tuple[int, str]]:
    """Confirm every expected instance the list (``instances``, corrected in place) contradicts.

    Returns the doubts that began now (instance id, detail): the reconciler records them.
    """
    served = state.serving
    previous = state.last_observation.instances if state.last_observation is not None else ()
    began: list[tuple[int, str]] = []
    for iid in expected_ids(previous, served):
        record = state.tracked.get(iid)
        is_served = served is not None and served.id == iid
        if (record is not None and record.destroyed) or (iid in instances and not is_served):
            continue
        finding = await confirm(iid, instances.get(iid), desired.label, desired, sources.show)
        if finding is None:
            if record is not None:
                record.doubted_since = None
            continue
        if served is not None and is_served:
            since = record.doubted_since if record is not None and record.doubted_since else now
            finding = await settle_served(finding, served, desired, sources.check, now - since)
        if _apply(finding, state.tracked[iid], instances, now):
            began.append((iid, f"{finding.odd}, but it answers: still served on its last known address"))
    return began


def _apply(
    finding: Finding, record: tracking.Tracked, instances: dict[int, model.Instance], now: float
) -> bool:
    """Put what was confirmed into ``instances``; True when a doubt episode begins."""
    iid = finding.instance_id
    if finding.entry is None:
        instances.pop(iid, None)
        record.doubted_since = None
        log.warning("instance %s was %s and show confirms it is gone", iid, finding.odd)
        return False
    instances[iid] = finding.entry
    if not finding.kept:
        record.doubted_since = None
        log.info("instance %s was %s once; show lists it: the list answer is ignored", iid, finding.odd)
        return False
    if record.doubted_since is not None:
        return False
    record.doubted_since = now
    return True
