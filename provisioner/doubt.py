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

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from provisioner import model, planning

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
    shown = await show(instance_id)
    if shown is not None and shown.label != label:
        shown = None  # relabelled: not ours any more
    return Finding(instance_id, shown, odd)


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


def expected_ids(previous: Iterable[model.Instance], served: model.Instance | None) -> list[int]:
    """The instances the pod expects to see listed again: last tick's, plus the served one."""
    ids = {inst.id for inst in previous}
    if served is not None:
        ids.add(served.id)
    return sorted(ids)
