"""One reconcile tick: observe Vast and the upstream, ask the planner, apply the plan.

The reconciler holds the little state that outlives a tick (what nginx
serves, health history, an unconfirmed rental) and performs the planner's
actions through the adapters it was given: the Vast client, the nginx
process and, when enabled, the blacklist. It never decides anything itself
beyond "the list failed, so plan nothing this tick".
"""

from __future__ import annotations

import collections
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from provisioner import (
    errors,
    events,
    model,
    planning,
    rendering,
    rentguard,
    renting,
    selection,
    upstream_health,
)
from provisioner.vast import client as vast_client

log = logging.getLogger("provisioner.reconciler")


class ProxyPort(Protocol):
    """The part of ``NginxProcess`` the reconciler needs."""

    async def apply(self, text: str) -> bool: ...


class HostBans(Protocol):
    """The part of the blacklist the reconciler needs (optional); ``blacklist.Guarded`` never raises."""

    async def ban(self, instance: model.Instance, reason: str) -> None: ...

    async def standing(self) -> selection.Standing: ...

    async def boot_started(self, instance_id: int, at: float) -> float: ...

    async def adopted(self, instance: model.Instance) -> str | None: ...

    async def record(self, instance: model.Instance, kind: str, value: float = 0.0) -> None: ...


class FleetPort(Protocol):
    """The pods' shared heartbeats (optional); ``fleet.GuardedFleet`` never raises."""

    async def beat(self, label: str, instance_ids: Sequence[int], dph: float) -> None: ...

    async def others_dph(self, label: str) -> float | None: ...

    async def may_rent(self, label: str, token: str) -> bool: ...

    async def release_rent(self, label: str, token: str) -> None: ...


#: THROWAWAY (H12edge): the shared record of events.py (interfaces.md); H12core's version wins at merge
Event = events.Event


@dataclass
class ReconcilerState:
    template_hash: str | None = None
    #: the daemon has not checked the template yet (the API was busy): renting waits for it
    template_pending: bool = False
    serving: model.Instance | None = None
    upstreams: dict[int, model.Upstream] = field(default_factory=dict)
    unserve_reason: str = "starting"
    healthy: dict[int, bool] = field(default_factory=dict)
    unhealthy_since: dict[int, float] = field(default_factory=dict)
    first_seen: dict[int, float] = field(default_factory=dict)
    rent_hold_until: float = 0.0
    #: ids we rented (or may have rented) that a list has not shown yet
    unconfirmed: set[int] = field(default_factory=set)
    phase: planning.Phase = planning.Phase.RENTING
    last_plan: planning.Plan | None = None
    last_tick_at: float = 0.0
    last_list_ok_at: float = 0.0
    #: the latest successful observation (what ``status`` and the metrics show)
    last_observation: planning.Observation | None = None
    #: when the last boot progress line was logged
    last_progress_at: float = 0.0
    #: whether this process has counted the instances it adopted at start (restart counting)
    adoptions_counted: bool = False
    #: instance id -> why it must be replaced (restart threshold), until it is gone
    condemned: dict[int, str] = field(default_factory=dict)
    #: instances seen booting by this process, and those whose ready / health failure is recorded
    seen_booting: set[int] = field(default_factory=set)
    ready_recorded: set[int] = field(default_factory=set)
    failing_recorded: set[int] = field(default_factory=set)
    #: instances that had their endpoints up (their boot clock restarts if they lose them)
    were_ready: set[int] = field(default_factory=set)
    #: instances that served at least once (a failure before that counts against the host)
    ever_ready: set[int] = field(default_factory=set)
    #: instance id -> until when it drains (no longer served, open requests finishing)
    draining_until: dict[int, float] = field(default_factory=dict)
    #: the failure whose rent back-off was last logged (log it once per failure)
    backoff_noted_at: float = -1.0
    #: instance id -> the $/h it was rented at (the heartbeat counts it before a list shows it)
    rent_prices: dict[int, float] = field(default_factory=dict)
    #: the spend-cap situation last logged (logged once per distinct situation)
    spend_noted: str | None = None
    events: collections.deque[Event] = field(default_factory=lambda: collections.deque(maxlen=50))


@dataclass(frozen=True)
class ReconcilerView:
    """THROWAWAY (H12edge): the read-only view of /work/coord/interfaces.md; H12core's wins at merge."""

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


Clock = Callable[[], float]
#: the search body for the current bans and reputation
SearchBody = Callable[[selection.Standing], Mapping[str, Any]]
#: the offers that may be rented, best first
OfferChooser = Callable[[list[model.Offer], selection.Standing], list[selection.Scored]]


class Reconciler:
    """Observe -> plan -> apply, one tick at a time."""

    def __init__(
        self,
        *,
        vast: vast_client.VastClient,
        proxy: ProxyPort,
        proxy_config: rendering.ProxyConfig,
        desired: model.DesiredSpec,
        policy: planning.Policy,
        search_body: SearchBody,
        rent_request: Callable[[str | None], vast_client.RentRequest],
        health_http: httpx.AsyncClient,
        health_path: str | None = None,
        allow_private_upstreams: bool = False,
        bans: HostBans | None = None,
        choose_offers: OfferChooser,
        clock: Clock = time.time,
        on_event: Callable[[Event], None] | None = None,
        drain_s: float = 0.0,
        guard: rentguard.RentGuard | None = None,
        fleet: FleetPort | None = None,
        max_fleet_dph: float | None = None,
    ) -> None:
        self.vast = vast
        self.proxy = proxy
        self.proxy_config = proxy_config
        self.desired = desired
        self.policy = policy
        self.search_body = search_body
        self.rent_request = rent_request
        self.health_http = health_http
        self.health_path = health_path
        self.allow_private = allow_private_upstreams
        self.bans = bans
        self.choose_offers = choose_offers
        self.clock = clock
        self.on_event = on_event
        #: how long an instance that stopped being served keeps its connections before a destroy
        self.drain_s = drain_s
        self.guard = guard or rentguard.RentGuard()
        #: this process's token for the per-label rent lock in Redis
        self.lock_token = secrets.token_hex(8)
        #: heartbeats and the spend guard (``VAST_MAX_FLEET_DPH``), when Redis is configured
        self.fleet = fleet
        self.max_fleet_dph = max_fleet_dph
        self.state = ReconcilerState()

    # ------------------------------------------------------------ read-only surface (THROWAWAY, H12edge)

    def view(self) -> ReconcilerView:
        """What runtime/admin/metrics/status read (interfaces.md); H12core's version wins at merge."""
        st = self.state
        serving = st.serving
        return ReconcilerView(
            phase=st.phase if st.last_tick_at else None,
            last_tick_at=st.last_tick_at,
            last_list_ok_at=st.last_list_ok_at,
            serving=serving,
            serving_healthy=st.healthy.get(serving.id) if serving is not None else None,
            unserve_reason=st.unserve_reason,
            upstreams=dict(st.upstreams),
            last_plan=st.last_plan,
            last_observation=st.last_observation,
            first_seen=dict(st.first_seen),
            template_pending=st.template_pending,
            events=tuple(st.events),
        )

    def mark_template_pending(self) -> None:
        """The template is not checked yet (the API was busy): renting waits for it."""
        self.state.template_pending = True

    @property
    def has_fleet(self) -> bool:
        return self.fleet is not None

    # ------------------------------------------------------------ events

    def record(
        self,
        kind: str,
        detail: str,
        instance_id: int | None = None,
        level: int = logging.INFO,
        *,
        reason: str | None = None,
    ) -> None:
        event = Event(self.clock(), events.EventKind(kind), detail, instance_id, reason)
        self.state.events.append(event)
        log.log(level, "%s: %s", kind, detail, extra={"event": kind, "instance_id": instance_id})
        if self.on_event is not None:
            self.on_event(event)

    # ------------------------------------------------------------ template

    async def ensure_template(self, creator_id: int | None) -> str:
        """Create or update our private template so it holds the desired content; return its hash."""
        spec = self.desired.template
        existing = await self.vast.find_template(spec.name, creator_id)
        if existing is None:
            template = await self.vast.create_template(spec, creator_id=creator_id)
            self.record("template-created", f"{spec.name} hash={template.hash_id}")
        elif _template_matches(existing, spec):
            template = existing
            log.info("template %s is current (hash=%s)", spec.name, template.hash_id)
        else:
            template = await self.vast.update_template(existing, spec)
            self.record("template-updated", f"{spec.name} hash {existing.hash_id} -> {template.hash_id}")
        self.state.template_hash = template.hash_id
        self.state.template_pending = False
        return template.hash_id

    # ------------------------------------------------------------ proxy

    async def render_unavailable(self, reason: str) -> None:
        self.state.unserve_reason = reason
        self.state.upstreams = {}
        await self.proxy.apply(rendering.render_nginx_conf(self.proxy_config, None, reason=reason))

    def upstreams_for(self, instance: model.Instance) -> dict[int, model.Upstream]:
        """Listen port -> public ip:host port; the address is validated (no injection, public only)."""
        host = rendering.check_upstream_ip(instance.public_ipaddr or "", allow_private=self.allow_private)
        result: dict[int, model.Upstream] = {}
        for pm in self.desired.ports:
            port = instance.host_port(pm.container_port)
            if port is None:
                raise errors.VastBadResponse("list instances", f"port {pm.container_port} is not mapped")
            result[pm.listen_port] = model.Upstream(pm.listen_port, host, port)
        return result

    # ------------------------------------------------------------ health

    async def check_health(self, instance: model.Instance) -> bool:
        """The remote app answers: ``VAST_HEALTH_PATH`` below 500, or a TCP connect to every port."""
        try:
            upstreams = self.upstreams_for(instance)
        except errors.ProvisionerError as exc:
            log.warning("instance %s has no usable upstream: %s", instance.id, exc)
            return False
        first = next(iter(upstreams.values()))
        ports = [up.port for up in upstreams.values()]
        return await upstream_health.probe(self.health_http, first.host, ports, self.health_path)

    def note_health(self, instance_id: int, ok: bool) -> None:
        now = self.clock()
        was = self.state.healthy.get(instance_id)
        self.state.healthy[instance_id] = ok
        if ok:
            self.state.unhealthy_since.pop(instance_id, None)
        else:
            self.state.unhealthy_since.setdefault(instance_id, now)
        if was is not None and was != ok:
            self.record("health", "upstream healthy" if ok else "upstream failing", instance_id)

    async def probe_serving(self) -> bool | None:
        """Health-check what nginx serves now; None when nothing is served."""
        serving = self.state.serving
        if serving is None:
            return None
        ok = await self.check_health(serving)
        self.note_health(serving.id, ok)
        return ok

    # ------------------------------------------------------------ observe

    async def observe(self) -> planning.Observation:
        """List our instances (a failure raises: never conclude 'none' from a failed list)."""
        now = self.clock()
        listed = await self.vast.list_by_label(self.desired.label)
        foreign = [i.id for i in listed if i.label != self.desired.label]
        if foreign:
            raise errors.VastBadResponse("list instances", f"label filter returned other labels: {foreign}")
        self.state.last_list_ok_at = now
        instances = {i.id: i for i in listed}
        if not self.state.adoptions_counted:
            # this process start adopts whatever the first successful list shows
            self.state.adoptions_counted = True
            await self._count_adoptions(listed)
        # A rental the list does not show yet (lag) is looked up directly, and until it is seen
        # (or the hold expires) no new rental happens: never two rentals for one pod.
        for iid in sorted(self.state.unconfirmed):
            seen = instances.get(iid)
            if seen is None:
                shown = await self.vast.show_instance(iid)
                if shown is not None and shown.label == self.desired.label:
                    instances[iid] = seen = shown
            if seen is not None:
                self.state.unconfirmed.discard(iid)
                if not self.state.unconfirmed:
                    self.state.rent_hold_until = 0.0
            elif now >= self.state.rent_hold_until:
                self.state.unconfirmed.discard(iid)
        for iid in instances:
            if iid not in self.state.first_seen:
                self.state.first_seen[iid] = await self.boot_started(iid, now)
        for iid in list(self.state.first_seen):
            if iid not in instances:
                self.state.first_seen.pop(iid, None)
                self.state.healthy.pop(iid, None)
                self.state.unhealthy_since.pop(iid, None)
                self.state.condemned.pop(iid, None)
                self.state.seen_booting.discard(iid)
                self.state.ready_recorded.discard(iid)
                self.state.failing_recorded.discard(iid)
                self.state.were_ready.discard(iid)
                self.state.ever_ready.discard(iid)
                self.state.draining_until.pop(iid, None)
        for inst in instances.values():
            if planning.has_endpoints(inst, self.desired) and not inst.is_dead:
                self.state.were_ready.add(inst.id)
                self.note_health(inst.id, await self.check_health(inst))
                if self.state.healthy.get(inst.id):
                    self.state.ever_ready.add(inst.id)
            elif inst.id in self.state.were_ready and not inst.is_dead:
                # it was up and is booting again (reboot, recycle): its boot deadline starts now
                self.state.were_ready.discard(inst.id)
                self.state.first_seen[inst.id] = now
        await self._record_outcomes(instances.values(), now)
        return planning.Observation(
            now=now,
            instances=tuple(instances.values()),
            template_hash=self.state.template_hash,
            serving_id=self.state.serving.id if self.state.serving else None,
            healthy=dict(self.state.healthy),
            first_seen=dict(self.state.first_seen),
            unhealthy_since=dict(self.state.unhealthy_since),
            rent_hold_until=self.state.rent_hold_until,
            condemned=dict(self.state.condemned),
        )

    # ------------------------------------------------------------ blacklist bookkeeping

    async def boot_started(self, instance_id: int, now: float) -> float:
        """When this instance's boot wait began; kept in Redis so that it survives restarts."""
        return now if self.bans is None else await self.bans.boot_started(instance_id, now)

    async def _count_adoptions(self, adopted: list[model.Instance]) -> None:
        """Count this start against each adopted instance; one restarted too often is condemned."""
        if self.bans is None:
            return
        for inst in adopted:
            reason = await self.bans.adopted(inst)
            if reason is not None:
                self.state.condemned[inst.id] = reason
                detail = f"host {inst.host_id}: {reason}"
                self.record("condemn", detail, inst.id, logging.WARNING, reason=reason)

    async def _record_outcomes(self, instances: Iterable[model.Instance], now: float) -> None:
        """Reputation: the time to ready of boots this process watched, and each run of failed checks."""
        if self.bans is None:
            return
        state = self.state
        for inst in instances:
            iid, healthy = inst.id, state.healthy.get(inst.id)
            if not planning.has_endpoints(inst, self.desired):
                state.seen_booting.add(iid)
            if healthy and iid in state.seen_booting and iid not in state.ready_recorded:
                state.ready_recorded.add(iid)
                await self.bans.record(inst, "ready", now - state.first_seen.get(iid, now))
            if healthy:
                state.failing_recorded.discard(iid)
            elif iid in state.unhealthy_since and iid not in state.failing_recorded and not inst.is_dead:
                # a dead instance's death is recorded when it is destroyed, not twice
                state.failing_recorded.add(iid)
                await self.bans.record(inst, "health-fail")

    # ------------------------------------------------------------ tick

    async def tick(self) -> planning.Plan:
        """Observe, plan and apply once. Vast errors propagate to the loop, which backs off."""
        observation = await self.observe()
        self.state.last_observation = observation
        plan = planning.plan(self.desired, observation, self.policy)
        self._log_progress(plan, observation)
        await self.apply(plan)
        await self.beat()
        self.state.last_plan = plan
        self.state.phase = plan.phase
        self.state.last_tick_at = self.clock()
        return plan

    # ------------------------------------------------------------ heartbeat and spend guard

    def own_spend(self) -> tuple[list[int], float]:
        """This pod's instances and their $/h: the latest list, plus rentals it does not show yet."""
        obs = self.state.last_observation
        listed = {i.id: i for i in obs.instances} if obs is not None else {}
        prices = self.state.rent_prices
        for iid in [i for i in prices if i not in listed and i not in self.state.unconfirmed]:
            del prices[iid]
        ids = sorted(set(listed) | set(prices))
        dph = 0.0
        for iid in ids:
            known = listed[iid].dph_total if iid in listed else None
            dph += known if known is not None else prices.get(iid, 0.0)
        return ids, dph

    async def beat(self) -> None:
        """Write this pod's heartbeat (the reaper and the other pods' spend guards read it)."""
        if self.fleet is not None:
            ids, dph = self.own_spend()
            await self.fleet.beat(self.desired.label, ids, dph)

    def log_progress_if_quiet(self, quiet_s: float) -> None:
        """Repeat the progress line (elapsed as of now) when none was logged for ``quiet_s``.

        Ticks log progress themselves; this covers long poll intervals and failing ticks, so the
        log is never silent for long while this pod has no healthy instance.
        """
        now = self.clock()
        plan, obs = self.state.last_plan, self.state.last_observation
        serving = plan is not None and plan.phase is planning.Phase.SERVING
        if serving or now - self.state.last_progress_at < quiet_s:
            return
        if plan is None or obs is None:
            self.state.last_progress_at = now
            log.info("no successful reconcile tick yet: %s", self.state.unserve_reason)
            return
        if not self._log_progress(plan, obs, now):
            self.state.last_progress_at = now
            log.info(
                "%s: %s; last successful list %.0fs ago",
                plan.phase,
                self.state.unserve_reason,
                now - self.state.last_list_ok_at,
            )

    def _log_progress(self, plan: planning.Plan, obs: planning.Observation, now: float | None = None) -> bool:
        """One line per booting or ready instance; True when any was logged."""
        logged = False
        for inst in obs.instances:
            verdict, _ = plan.verdicts.get(inst.id, ("?", ""))
            if verdict in ("booting", "ready"):
                started = obs.first_seen.get(inst.id, obs.now)
                log.info(
                    "instance %s %s: status=%s msg=%s elapsed=%.0fs",
                    inst.id,
                    verdict,
                    inst.actual_status,
                    inst.status_msg,
                    (obs.now if now is None else now) - started,
                    extra={"instance_id": inst.id, "actual_status": inst.actual_status},
                )
                logged = True
        if logged:
            self.state.last_progress_at = obs.now if now is None else now
        return logged

    async def apply(self, plan: planning.Plan) -> None:
        for action in plan.actions:
            if isinstance(action, planning.Serve):
                await self._serve(action.instance)
            elif isinstance(action, planning.Unserve):
                if self.state.serving is not None or self.state.unserve_reason != action.reason:
                    if self.state.serving is not None:
                        self.record("unserve", action.reason, self.state.serving.id, logging.WARNING)
                    self.state.serving = None
                    await self.render_unavailable(action.reason)
            elif isinstance(action, planning.Ban):
                if self.bans is not None:
                    await self.bans.ban(action.instance, action.reason)
                self.record(
                    "ban",
                    f"host {action.instance.host_id}: {action.reason}",
                    action.instance.id,
                    reason=action.reason,
                )
            elif isinstance(action, planning.Destroy):
                until = self.state.draining_until.get(action.instance.id, 0.0)
                if action.reason != "dead" and self.clock() < until:
                    log.info(
                        "instance %s drains for %.0fs more before it is destroyed (%s)",
                        action.instance.id,
                        until - self.clock(),
                        action.reason,
                        extra={"instance_id": action.instance.id},
                    )
                    continue
                if action.instance.id not in self.state.ever_ready and action.reason in _FAILED_BOOTS:
                    self.guard.failed_before_ready(action.instance.host_id, self.clock())
                gone = await self.vast.destroy_instance(action.instance.id)
                self.state.unconfirmed.discard(action.instance.id)
                if action.reason == "dead" and self.bans is not None:
                    await self.bans.record(action.instance, "death")
                self.record(
                    "destroy",
                    f"{action.reason}" + ("" if gone else " (already gone)"),
                    action.instance.id,
                    logging.WARNING,
                    reason=action.reason,
                )
                if self.state.serving is not None and self.state.serving.id == action.instance.id:
                    self.state.serving = None
            elif isinstance(action, planning.Rent):
                await renting.rent(self, action.reason)

    async def _serve(self, instance: model.Instance) -> None:
        upstreams = self.upstreams_for(instance)
        text = rendering.render_nginx_conf(self.proxy_config, upstreams)
        changed = await self.proxy.apply(text)
        previous = self.state.serving
        self.state.serving = instance
        self.state.upstreams = upstreams
        self.guard.became_ready()
        if previous is not None and previous.id != instance.id and self.drain_s > 0:
            self.state.draining_until[previous.id] = self.clock() + self.drain_s
        if changed or previous is None or previous.id != instance.id:
            where = ", ".join(f"{lp}->{u.host}:{u.port}" for lp, u in sorted(upstreams.items()))
            self.record("serve", where, instance.id)


#: destroy reasons that mean the rental failed (when the instance never served)
_FAILED_BOOTS = frozenset({"dead", "boot-timeout", "unhealthy"})


def _template_matches(existing: model.Template, spec: model.TemplateSpec) -> bool:
    return (
        existing.image == spec.image
        and (existing.tag or None) == (spec.tag or None)
        and (existing.env or "") == spec.env
        and (existing.onstart or None) == (spec.onstart or None)
    )
