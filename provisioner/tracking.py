"""What the reconciler remembers between ticks: its state, and one ``Tracked`` record per instance.

A record lives while its instance is listed, or while it is a rental the list has not shown yet
(``unconfirmed``); forgetting an instance is one ``pop``. Also here: the reputation bookkeeping
over those records (adoptions counted against the restart threshold, time to ready, runs of
failed health checks), written through the blacklist adapter. The time is passed in.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from provisioner import events, model, planning

#: how many events the reconciler keeps (the newest)
EVENTS_KEPT = 50


class HostBans(Protocol):
    """The part of the blacklist the reconciler needs (optional); ``blacklist.Guarded`` never raises."""

    async def ban(self, instance: model.Instance, reason: str) -> None: ...

    async def boot_started(self, instance_id: int, at: float) -> float: ...

    async def boot_done(self, instance_id: int) -> None: ...

    async def adopted(self, instance: model.Instance) -> str | None: ...

    async def record(self, instance: model.Instance, kind: str, value: float = 0.0) -> None: ...

    async def mark_clean_stop(self, instance_ids: Iterable[int]) -> None: ...


@dataclass
class Tracked:
    """Everything known about one instance beyond what the latest list says."""

    #: when its boot wait began (kept in Redis across restarts); None until a list shows it
    first_seen: float | None = None
    #: the latest health check of its upstream (None: not checked)
    healthy: bool | None = None
    unhealthy_since: float | None = None
    #: why it must be replaced regardless (restart threshold), until it is gone
    condemned: str | None = None
    #: this process saw it booting / recorded its time to ready / recorded its current health failure
    seen_booting: bool = False
    ready_recorded: bool = False
    failing_recorded: bool = False
    #: its endpoints were up (its boot clock restarts if it loses them)
    were_ready: bool = False
    #: it served at least once (a failure before that counts against the host)
    ever_ready: bool = False
    #: it answered its health check since its boot clock (re)started: only then does a failing check
    #: count as unhealthy (before, the app may still be loading: the boot timeout applies)
    answered: bool = False
    #: no longer served: its open requests finish until then, before a destroy
    draining_until: float = 0.0
    #: the $/h it was rented at (the heartbeat counts it before a list shows it)
    rent_price: float | None = None
    #: rented (or maybe rented) by this process and not shown by a list yet
    unconfirmed: bool = False
    #: rented by this process (so with its upstream secret, when it has one)
    rented_here: bool = False
    #: destroyed by this process (its absence from the next list is expected, not doubted)
    destroyed: bool = False
    #: since when an odd list answer about it is doubted (the last known entry stands in)
    doubted_since: float | None = None

    def boots_again(self, now: float) -> None:
        """It was up and lost its endpoints (reboot, recycle): its boot clock starts now, and what its
        health checks said before is over (a failure from before must not count against the new boot)."""
        self.were_ready, self.first_seen, self.answered = False, now, False
        self.healthy, self.unhealthy_since, self.failing_recorded = None, None, False


class Tracker:
    """The records by instance id, and the per-id maps the planner and the views read."""

    def __init__(self) -> None:
        self.records: dict[int, Tracked] = {}

    def __getitem__(self, instance_id: int) -> Tracked:
        """The record of ``instance_id``, created empty when there is none."""
        return self.records.setdefault(instance_id, Tracked())

    def get(self, instance_id: int) -> Tracked | None:
        return self.records.get(instance_id)

    def note_health(self, instance_id: int, ok: bool, now: float) -> bool | None:
        """Store a health result; returns the previous one (None: never checked)."""
        record = self[instance_id]
        was = record.healthy
        record.healthy = ok
        if ok:
            record.unhealthy_since = None
            record.answered = True
        elif record.unhealthy_since is None:
            record.unhealthy_since = now
        return was

    def unconfirmed(self) -> list[int]:
        return sorted(iid for iid, t in self.records.items() if t.unconfirmed)

    def forget_unlisted(self, listed: Iterable[int]) -> None:
        """Drop every instance the list no longer shows; an unconfirmed rental keeps only its price."""
        shown = set(listed)
        for iid, record in list(self.records.items()):
            if iid in shown:
                continue
            if record.unconfirmed:
                self.records[iid] = Tracked(rent_price=record.rent_price, unconfirmed=True, rented_here=True)
            else:
                del self.records[iid]

    def first_seen(self) -> dict[int, float]:
        return {i: t.first_seen for i, t in self.records.items() if t.first_seen is not None}

    def healthy(self) -> dict[int, bool]:
        return {i: t.healthy for i, t in self.records.items() if t.healthy is not None}

    def unhealthy_since(self) -> dict[int, float]:
        return {i: t.unhealthy_since for i, t in self.records.items() if t.unhealthy_since is not None}

    def answered(self) -> frozenset[int]:
        return frozenset(i for i, t in self.records.items() if t.answered)

    def condemned(self) -> dict[int, str]:
        return {i: t.condemned for i, t in self.records.items() if t.condemned is not None}

    def spend(self, listed: Mapping[int, model.Instance]) -> tuple[list[int], float]:
        """The pod's instances and their $/h: ``listed`` (the latest list), plus rentals not shown yet."""
        priced = {
            i: t.rent_price
            for i, t in self.records.items()
            if t.rent_price is not None and (i in listed or t.unconfirmed)
        }
        ids = sorted(set(listed) | set(priced))
        dph = 0.0
        for iid in ids:
            known = listed[iid].dph_total if iid in listed else None
            dph += known if known is not None else priced.get(iid, 0.0)
        return ids, dph


@dataclass
class ReconcilerState:
    """The reconciler's memory between ticks, besides the per-instance records."""

    template_hash: str | None = None
    #: the template is not checked yet (the API was busy): renting waits for it
    template_pending: bool = False
    #: why no rental happens although one is wanted (spend cap, rent brakes, template, no offer)
    waiting_reason: str | None = None
    #: a rental's $/h is reserved in Redis until the next heartbeat counts it
    spend_reserved: bool = False
    serving: model.Instance | None = None
    upstreams: dict[int, model.Upstream] = field(default_factory=dict)
    unserve_reason: str = "starting"
    #: the reason of the 503 page nginx has taken; None while it serves an upstream, or after a failed
    #: reload left it serving the config before
    page_reason: str | None = None
    #: no new rental before this (a rental not shown by a list yet, or an unknown outcome)
    rent_hold_until: float = 0.0
    phase: planning.Phase = planning.Phase.RENTING
    last_plan: planning.Plan | None = None
    last_tick_at: float = 0.0
    last_list_ok_at: float = 0.0
    #: when the tick's list was requested, ms on the Redis clock (None: not from the fleet's view)
    listed_at_ms: int | None = None
    #: the soonest the next tick lists (``fleetview.OwnList.min_poll_s``: Redis away)
    min_poll_s: float = 0.0
    #: a rental of this process was listed without its upstream secret: the listed env is not judged
    auth_env_distrusted: bool = False
    last_observation: planning.Observation | None = None
    #: when the last boot progress line was logged
    last_progress_at: float = 0.0
    #: whether this process has counted the instances it adopted at start (restart counting)
    adoptions_counted: bool = False
    tracked: Tracker = field(default_factory=Tracker)
    events: collections.deque[events.Event] = field(
        default_factory=lambda: collections.deque(maxlen=EVENTS_KEPT)
    )


async def count_adoptions(
    bans: HostBans, tracker: Tracker, adopted: Iterable[model.Instance]
) -> list[model.Instance]:
    """Count this process start against each adopted instance; returns those now condemned."""
    condemned = []
    for inst in adopted:
        reason = await bans.adopted(inst)
        if reason is not None:
            tracker[inst.id].condemned = reason
            condemned.append(inst)
    return condemned


async def record_outcomes(
    bans: HostBans,
    tracker: Tracker,
    instances: Iterable[model.Instance],
    desired: model.DesiredSpec,
    now: float,
) -> None:
    """Reputation: the time to ready of boots this process watched, and each run of failed checks."""
    for inst in instances:
        record = tracker[inst.id]
        if not planning.has_endpoints(inst, desired):
            record.seen_booting = True
        if record.healthy and record.seen_booting and not record.ready_recorded:
            record.ready_recorded = True
            started = record.first_seen if record.first_seen is not None else now
            await bans.record(inst, "ready", now - started)
        if record.healthy:
            record.failing_recorded = False
        elif (
            record.unhealthy_since is not None
            and record.answered
            and not record.failing_recorded
            and not inst.is_dead
        ):
            # a dead instance's death is recorded when it is destroyed, not twice; one that never
            # answered since its boot is still loading (a boot that never ends is a boot timeout)
            record.failing_recorded = True
            await bans.record(inst, "health-fail")


def distrust_auth_env(
    state: ReconcilerState, instances: dict[int, model.Instance], desired: model.DesiredSpec
) -> str | None:
    """Clear ``rented_without_auth`` in ``instances`` (in place) once the list has shown a rental of this
    process without the upstream secret it was rented with: that list does not echo a rental's env,
    and judging by it would replace every instance, each replacement too. Returns the warning to log,
    the first time."""
    said = None
    if desired.auth_tag is not None and not state.auth_env_distrusted:
        mine = {iid for iid, record in state.tracked.records.items() if record.rented_here}
        suspect = [i.id for i in instances.values() if i.rented_without_auth and i.id in mine]
        if suspect:
            state.auth_env_distrusted = True
            said = (
                f"instance {suspect[0]}, rented here with the upstream secret, is listed without it:"
                " the listed environment is not judged for auth-drift from now on"
            )
    if state.auth_env_distrusted:
        for iid, inst in instances.items():
            instances[iid] = dataclasses.replace(inst, rented_without_auth=False)
    return said
