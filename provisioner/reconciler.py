"""One reconcile tick: observe Vast and the upstream, ask the planner, apply the plan.

The reconciler holds the little state that outlives a tick (what nginx serves, one ``Tracked``
record per instance, an unconfirmed rental) and performs the planner's actions through the
adapters it was given: the Vast client, the nginx process, the upstream health checker and, when
enabled, the blacklist and the fleet record. A ``Rent`` goes to the renter (``renting.py``), whose
outcome it applies. It never decides anything itself beyond "the list failed, so plan nothing
this tick". Readers (admin, metrics, status) see it only through :meth:`Reconciler.view`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from provisioner import (
    applying,
    doubt,
    errors,
    events,
    fleetshared,
    fleetview,
    model,
    planning,
    progress,
    rendering,
    renting,
    tracking,
    upstream_health,
)
from provisioner.vast import client as vast_client

log = logging.getLogger("provisioner.reconciler")

Clock = Callable[[], float]


class FleetPort(Protocol):
    """The pods' shared heartbeats (optional); ``fleetguard.GuardedFleet`` never raises."""

    async def beat(
        self, label: str, instance_ids: Sequence[int], dph: float, *, settle: bool = False
    ) -> None: ...


@dataclass(frozen=True)
class Adapters:
    """The outside systems the reconciler talks to."""

    vast: vast_client.VastClient
    proxy: applying.ProxyPort
    health: upstream_health.Checker
    bans: tracking.HostBans | None = None
    fleet: FleetPort | None = None
    #: the fleet's shared instance view (``fleetview.OwnInstances``); None: list by label here
    lister: fleetview.InstanceLister | None = None
    #: the fleet's shared checks; None: this process checks the template itself
    checks: fleetshared.SharedChecks | None = None


@dataclass(frozen=True)
class ReconcilerConfig:
    """Values only (wiring derives them from the settings)."""

    desired: model.DesiredSpec
    proxy_config: rendering.ProxyConfig
    policy: planning.Policy
    #: how long an instance that stopped being served keeps its connections before a destroy
    drain_s: float = 0.0


@dataclass(frozen=True)
class ReconcilerView:
    """What the readers (admin, metrics, status) may see; a snapshot, never the live state."""

    phase: planning.Phase | None
    last_tick_at: float
    last_list_ok_at: float
    serving: model.Instance | None
    serving_healthy: bool | None
    unserve_reason: str
    upstreams: Mapping[int, model.Upstream]
    last_plan: planning.Plan | None
    last_observation: planning.Observation | None
    first_seen: Mapping[int, float]
    template_pending: bool
    events: tuple[events.Event, ...]
    #: why this pod rents nothing although it needs an instance (spend cap, rent brakes, template)
    waiting_reason: str | None = None
    #: ``queued for rental (position k of n)`` while this pod waits for its turn to rent
    rental_queue: str | None = None


class Reconciler:
    """Observe -> plan -> apply, one tick at a time."""

    def __init__(
        self,
        adapters: Adapters,
        renter: renting.Renter,
        config: ReconcilerConfig,
        *,
        clock: Clock = time.time,
        on_event: Callable[[events.Event], None] | None = None,
    ) -> None:
        self.adapters = adapters
        self.vast = adapters.vast
        self.renter = renter
        self.config = config
        self.desired = config.desired
        self.policy = config.policy
        self.clock = clock
        self.on_event = on_event
        self.state = tracking.ReconcilerState()
        self.executor = applying.Executor(
            label=config.desired.label,
            vast=adapters.vast,
            proxy=adapters.proxy,
            health=adapters.health,
            bans=adapters.bans,
            renter=renter,
            proxy_config=config.proxy_config,
            drain_s=config.drain_s,
            state=self.state,
            clock=clock,
            emit=self._emit,
        )

    # ------------------------------------------------------------ what the daemon and readers use

    @property
    def has_fleet(self) -> bool:
        return self.adapters.fleet is not None

    def mark_template_pending(self) -> None:
        """The template could not be checked yet (API busy): serve what exists, rent nothing."""
        self.state.template_pending = True

    def view(self) -> ReconcilerView:
        return dataclasses.replace(view_of(self.state), rental_queue=self.renter.queue_line)

    async def note_clean_stop(self) -> None:
        """The process stops cleanly (SIGTERM): the next start adopting these instances is no crash
        and does not count toward the restart threshold. The daemon calls this on shutdown."""
        obs = self.state.last_observation
        ids = {i.id for i in obs.instances} if obs is not None else set()
        ids.update(self.state.tracked.unconfirmed())
        if self.adapters.bans is not None and ids:
            await self.adapters.bans.mark_clean_stop(ids)

    # ------------------------------------------------------------ events

    def _emit(self, event: events.Event, level: int) -> None:
        self.state.events.append(event)
        log.log(
            level,
            "%s: %s",
            event.kind,
            event.detail,
            extra={"event": str(event.kind), "instance_id": event.instance_id},
        )
        if self.on_event is not None:
            self.on_event(event)

    # ------------------------------------------------------------ template

    async def ensure_template(self, creator_id: int | None) -> str:
        """The template's hash, checked once for the fleet (the shared check) or by this pod."""
        checks = self.adapters.checks
        if checks is None:
            hash_id = await self._check_template(creator_id)
        else:
            digest = hashlib.sha256(repr(self.desired.template).encode()).hexdigest()[:16]
            compute = lambda: self._check_template(creator_id)  # noqa: E731
            hash_id = await checks.once(f"template:{creator_id}:{digest}", compute, fleetshared.CHECK_TTL_S)
        self.state.template_hash = hash_id
        self.state.template_pending = False
        return hash_id

    async def _check_template(self, creator_id: int | None) -> str:
        """Create or update our private template so it holds the desired content; return its hash."""
        spec = self.desired.template
        existing = await self.vast.find_template(spec.name, creator_id)
        if existing is None:
            template = await self.vast.create_template(spec, creator_id=creator_id)
            self.executor.record(events.EventKind.TEMPLATE_CREATED, f"{spec.name} hash={template.hash_id}")
        elif _template_matches(existing, spec):
            template = existing
            log.info("template %s is current (hash=%s)", spec.name, template.hash_id)
        else:
            template = await self.vast.update_template(existing, spec)
            detail = f"{spec.name} hash {existing.hash_id} -> {template.hash_id}"
            self.executor.record(events.EventKind.TEMPLATE_UPDATED, detail)
        return template.hash_id

    # ------------------------------------------------------------ health

    def note_health(self, instance_id: int, ok: bool) -> None:
        was = self.state.tracked.note_health(instance_id, ok, self.clock())
        if was is not None and was != ok:
            detail = "upstream healthy" if ok else "upstream failing"
            self.executor.record(events.EventKind.HEALTH, detail, instance_id)

    async def probe_serving(self) -> bool | None:
        """Health-check what nginx serves now; None when nothing is served."""
        serving = self.state.serving
        if serving is None:
            return None
        ok = await self.adapters.health.check(serving)
        self.note_health(serving.id, ok)
        return ok

    # ------------------------------------------------------------ observe

    async def observe(self) -> planning.Observation:
        """List our instances (a failure raises: never conclude 'none' from a failed list)."""
        now = self.clock()
        listed = await self._list_own()
        foreign = [i.id for i in listed if i.label != self.desired.label]
        if foreign:
            raise errors.VastBadResponse("list instances", f"label filter returned other labels: {foreign}")
        self.state.last_list_ok_at = now
        instances = {i.id: i for i in listed}
        if not self.state.adoptions_counted:
            # this process start adopts whatever the first successful list shows
            self.state.adoptions_counted = True
            await self._count_adoptions(listed)
        await self._confirm_rentals(instances, now)
        await self._confirm_doubts(instances, now)
        tracked = self.state.tracked
        for iid in instances:
            if tracked[iid].first_seen is None:
                tracked[iid].first_seen = await self.executor.boot_started(iid, now)
        tracked.forget_unlisted(instances)
        if (distrust := tracking.distrust_auth_env(self.state, instances, self.desired)) is not None:
            self.executor.record(events.EventKind.LIST_DOUBTED, distrust, None, logging.WARNING)
        await self._check_listed(instances.values(), now)
        if self.adapters.bans is not None:
            await tracking.record_outcomes(self.adapters.bans, tracked, instances.values(), self.desired, now)
        return planning.Observation(
            now=now,
            instances=tuple(instances.values()),
            template_hash=self.state.template_hash,
            serving_id=self.state.serving.id if self.state.serving else None,
            healthy=tracked.healthy(),
            first_seen=tracked.first_seen(),
            unhealthy_since=tracked.unhealthy_since(),
            answered=tracked.answered(),
            rent_hold_until=self.state.rent_hold_until,
            condemned=tracked.condemned(),
        )

    async def _list_own(self) -> list[model.Instance]:
        """Our instances: from the fleet's view, no older than this pod's poll interval and newer than
        the list it saw last tick (a booting pod sees every list the fleet makes), else listed."""
        if self.adapters.lister is None:
            return await self.vast.list_by_label(self.desired.label)
        plan, label = self.state.last_plan, self.desired.label
        max_age_s = self.policy.boot_interval_s if plan is None else plan.next_check_s
        listed = await self.adapters.lister.own(label, max_age_s, newer_than_ms=self.state.listed_at_ms)
        self.state.listed_at_ms, self.state.min_poll_s = listed.at_ms, listed.min_poll_s
        return listed.instances

    async def _confirm_rentals(self, instances: dict[int, model.Instance], now: float) -> None:
        """A rental the list does not show yet (lag) is looked up directly; until it is seen (or the
        hold expires) no new rental happens: never two rentals for one pod."""
        tracked = self.state.tracked
        for iid in tracked.unconfirmed():
            seen = instances.get(iid)
            if seen is None:
                seen = await doubt.show_own(self.vast.show_instance, iid, self.desired.label)
                if seen is not None:
                    instances[iid] = seen
            if seen is not None:
                tracked[iid].unconfirmed = False
                if not tracked.unconfirmed():
                    self.state.rent_hold_until = 0.0
            elif now >= self.state.rent_hold_until:
                tracked[iid].unconfirmed = False

    async def _confirm_doubts(self, instances: dict[int, model.Instance], now: float) -> None:
        """Confirm what contradicts what the pod knows before the tick believes it (``doubt.py``)."""
        sources = doubt.Sources(self.vast.show_instance, self.adapters.health.check)
        for iid, detail in await doubt.confirm_expected(self.state, instances, now, self.desired, sources):
            self.executor.record(events.EventKind.LIST_DOUBTED, detail, iid, logging.WARNING)

    async def _check_listed(self, instances: Iterable[model.Instance], now: float) -> None:
        """Health-check each instance with endpoints; one that lost them restarts its boot clock."""
        for inst in instances:
            record = self.state.tracked[inst.id]
            if planning.has_endpoints(inst, self.desired) and not inst.is_dead:
                if not record.were_ready:
                    # up: if a restart adopts it booting again, its boot clock starts then, not at
                    # the rental hours ago (else a healthy instance would be banned and destroyed)
                    await self.executor.boot_done(inst.id)
                record.were_ready = True
                self.note_health(inst.id, await self.adapters.health.check(inst))
                if record.healthy:
                    record.ever_ready = True
            elif record.were_ready and not inst.is_dead:
                record.boots_again(now)  # reboot, recycle: its boot deadline starts now

    # ------------------------------------------------------------ blacklist bookkeeping

    async def _count_adoptions(self, adopted: list[model.Instance]) -> None:
        """Count this start against each adopted instance; one restarted too often is condemned."""
        if self.adapters.bans is None:
            return
        for inst in await tracking.count_adoptions(self.adapters.bans, self.state.tracked, adopted):
            reason = self.state.tracked[inst.id].condemned
            detail = f"{reason}: replaced make-before-break (host {inst.host_id} not banned)"
            self.executor.record(events.EventKind.CONDEMN, detail, inst.id, logging.WARNING, reason=reason)

    # ------------------------------------------------------------ tick

    async def tick(self) -> planning.Plan:
        """Observe, plan and apply once. Vast errors propagate to the loop, which backs off."""
        observation = await self.observe()
        self.state.last_observation = observation
        plan = planning.plan(self.desired, observation, self.policy)
        if plan.next_check_s < self.state.min_poll_s:  # Redis away: the pace of a pod without it
            plan = dataclasses.replace(plan, next_check_s=self.state.min_poll_s)
        self._log_progress(plan, observation)
        if not any(isinstance(action, planning.Rent) for action in plan.actions):
            self.state.waiting_reason = None
        await self.executor.apply(plan)
        await self.beat()
        self.state.last_plan = plan
        self.state.phase = plan.phase
        self.state.last_tick_at = self.clock()
        return plan

    # ------------------------------------------------------------ heartbeat

    def own_spend(self) -> tuple[list[int], float]:
        """This pod's instances and their $/h: the latest list, plus rentals it does not show yet."""
        obs = self.state.last_observation
        listed = {i.id: i for i in obs.instances} if obs is not None else {}
        return self.state.tracked.spend(listed)

    async def beat(self) -> None:
        """Write this pod's heartbeat (the reaper and the other pods' spend guards read it)."""
        if self.adapters.fleet is not None:
            ids, dph = self.own_spend()
            settle, self.state.spend_reserved = self.state.spend_reserved, False
            await self.adapters.fleet.beat(self.desired.label, ids, dph, settle=settle)

    # ------------------------------------------------------------ progress lines

    def log_progress_if_quiet(self, quiet_s: float) -> None:
        """Repeat the progress line when none was logged for ``quiet_s`` (``progress.log_if_quiet``)."""
        progress.log_if_quiet(log, self.state, self.clock(), quiet_s)

    def _log_progress(self, plan: planning.Plan, obs: planning.Observation) -> None:
        if progress.log_instances(log, plan, obs, obs.now):
            self.state.last_progress_at = obs.now


def view_of(state: tracking.ReconcilerState) -> ReconcilerView:
    """A snapshot of ``state`` for the readers."""
    serving = state.serving
    record = state.tracked.get(serving.id) if serving is not None else None
    return ReconcilerView(
        phase=state.phase if state.last_tick_at else None,
        last_tick_at=state.last_tick_at,
        last_list_ok_at=state.last_list_ok_at,
        serving=serving,
        serving_healthy=record.healthy if record is not None else None,
        unserve_reason=state.unserve_reason,
        upstreams=dict(state.upstreams),
        last_plan=state.last_plan,
        last_observation=state.last_observation,
        first_seen=state.tracked.first_seen(),
        template_pending=state.template_pending,
        events=tuple(state.events),
        waiting_reason=state.waiting_reason,
    )


def _template_matches(existing: model.Template, spec: model.TemplateSpec) -> bool:
    return (
        existing.image == spec.image
        and (existing.tag or None) == (spec.tag or None)
        and (existing.env or "") == spec.env
        and (existing.onstart or None) == (spec.onstart or None)
    )
