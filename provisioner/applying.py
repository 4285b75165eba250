"""Applying a plan: each planner action performed through one adapter, and the state kept in step.

``Serve`` renders the nginx config for the instance and makes the previous one drain; ``Unserve``
renders the 503 page; ``Ban`` writes the blacklist; ``Destroy`` destroys (after a drain) and feeds
the local rent brakes; ``Rent`` hands the rental to the renter and applies its outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from provisioner import errors, events, model, planning, rendering, renting, tracking, upstream_health
from provisioner.vast import client as vast_client

log = logging.getLogger("provisioner.reconciler")

#: destroy reasons that mean the rental failed (when the instance never served)
_FAILED_BOOTS = frozenset({"dead", "boot-timeout", "unhealthy"})


class ProxyPort(Protocol):
    """The part of ``NginxProcess`` the reconciler needs."""

    async def apply(self, text: str) -> bool: ...


class Executor:
    """Performs a plan's actions on the reconciler's state (``state``) through the adapters."""

    def __init__(
        self,
        *,
        label: str,
        vast: vast_client.VastClient,
        proxy: ProxyPort,
        health: upstream_health.Checker,
        bans: tracking.HostBans | None,
        renter: renting.Renter,
        proxy_config: rendering.ProxyConfig,
        drain_s: float,
        state: tracking.ReconcilerState,
        clock: Callable[[], float],
        emit: Callable[[events.Event, int], None],
    ) -> None:
        self.label = label
        self.vast = vast
        self.proxy = proxy
        self.health = health
        self.bans = bans
        self.renter = renter
        self.proxy_config = proxy_config
        self.drain_s = drain_s
        self.state = state
        self.clock = clock
        self.emit = emit

    def record(
        self,
        kind: events.EventKind,
        detail: str,
        instance_id: int | None = None,
        level: int = logging.INFO,
        *,
        reason: str | None = None,
    ) -> None:
        """Emit an event as of now (the reconciler records its own events through this too)."""
        self.emit(events.Event(self.clock(), kind, detail, instance_id, reason), level)

    async def boot_started(self, instance_id: int, now: float) -> float:
        """When this instance's boot wait began; kept in Redis so that it survives restarts."""
        return now if self.bans is None else await self.bans.boot_started(instance_id, now)

    async def boot_done(self, instance_id: int) -> None:
        """This instance showed its endpoints: its stored boot start is over."""
        if self.bans is not None:
            await self.bans.boot_done(instance_id)

    async def apply(self, plan: planning.Plan) -> None:
        """Apply the actions in order; a 503 page whose reason alone changes (nothing is served) is
        rendered while the rest runs, so its nginx test and reload (~0.1 s) do not hold back a cold
        start's rent. Its error, if any, is raised once the rest is done.

        A destroy the API refuses does not hold back the rest (the rental of a replacement above
        all): it is retried next tick, and its error is raised once the rest is done.
        """
        page: asyncio.Task[None] | None = None
        refused: errors.VastError | None = None
        try:
            for action in plan.actions:
                if isinstance(action, planning.Unserve) and self.state.serving is None and page is None:
                    page = asyncio.create_task(self._unserve(action.reason))
                elif isinstance(action, planning.Destroy):
                    refused = await self._destroy_or_carry_on(action) or refused
                else:
                    await self._apply(action)
        finally:
            if page is not None:
                await page
        if refused is not None:
            raise refused

    async def _destroy_or_carry_on(self, action: planning.Destroy) -> errors.VastError | None:
        try:
            await self._destroy(action.instance, action.reason)
        except errors.AuthError:
            raise
        except errors.VastError as exc:
            log.warning(
                "destroying instance %s failed, retried next tick: %s",
                action.instance.id,
                exc,
                extra={"event": "destroy-failed", "instance_id": action.instance.id},
            )
            return exc
        return None

    async def _apply(self, action: planning.Action) -> None:
        if isinstance(action, planning.Serve):
            await self._serve(action.instance, bridge=action.bridge)
        elif isinstance(action, planning.Unserve):
            await self._unserve(action.reason)
        elif isinstance(action, planning.Ban):
            await self._ban(action.instance, action.reason)
        elif isinstance(action, planning.Rent):
            await self._rent(action.reason)

    async def _serve(self, instance: model.Instance, *, bridge: bool = False) -> None:
        upstreams = self.health.upstreams(instance)
        text = rendering.render_nginx_conf(self.proxy_config, upstreams)
        self.state.page_reason = None
        changed = await self.proxy.apply(text)
        previous = self.state.serving
        self.state.serving = instance
        self.state.upstreams = upstreams
        if not bridge:  # a bridge is the old spec: whether the new one rents well is still open
            self.renter.became_ready()
        if previous is not None and previous.id != instance.id and self.drain_s > 0:
            self.state.tracked[previous.id].draining_until = self.clock() + self.drain_s
        if changed or previous is None or previous.id != instance.id:
            where = ", ".join(f"{lp}->{u.host}:{u.port}" for lp, u in sorted(upstreams.items()))
            self.record(events.EventKind.SERVE, where, instance.id)

    async def _unserve(self, reason: str) -> None:
        if self.state.serving is None and self.state.page_reason == reason:
            return
        if self.state.serving is not None:
            self.record(events.EventKind.UNSERVE, reason, self.state.serving.id, logging.WARNING)
        self.state.serving = None
        await self.render_unavailable(reason)

    async def render_unavailable(self, reason: str) -> None:
        self.state.unserve_reason = reason
        self.state.upstreams = {}
        # the page counts as in place only once nginx took it: after a failed reload nginx still
        # proxies to what it served before, and the next tick must render the page again
        self.state.page_reason = None
        await self.proxy.apply(rendering.render_nginx_conf(self.proxy_config, None, reason=reason))
        self.state.page_reason = reason

    async def _ban(self, instance: model.Instance, reason: str) -> None:
        if self.bans is not None:
            await self.bans.ban(instance, reason)
        detail = f"host {instance.host_id}: {reason}"
        self.record(events.EventKind.BAN, detail, instance.id, reason=reason)

    async def _destroy(self, instance: model.Instance, reason: str) -> None:
        record = self.state.tracked.get(instance.id)
        until = record.draining_until if record is not None else 0.0
        if reason != "dead" and self.clock() < until:
            log.info(
                "instance %s drains for %.0fs more before it is destroyed (%s)",
                instance.id,
                until - self.clock(),
                reason,
                extra={"instance_id": instance.id},
            )
            return
        gone = await self.vast.destroy_instance(instance.id)
        # counted once, after the destroy: a refused DELETE retried every tick (or a list that still
        # shows it) must not count one failed rental as many
        first = record is None or not record.destroyed
        if record is not None:
            record.unconfirmed = False
            record.destroyed = True
        if first and not (record is not None and record.ever_ready) and reason in _FAILED_BOOTS:
            self.renter.failed_before_ready(instance.host_id, self.clock())
        if first and reason == "dead" and self.bans is not None:
            await self.bans.record(instance, "death")
        detail = reason + ("" if gone else " (already gone)")
        self.record(events.EventKind.DESTROY, detail, instance.id, logging.WARNING, reason=reason)
        if self.state.serving is not None and self.state.serving.id == instance.id:
            self.state.serving = None

    async def _rent(self, reason: str) -> None:
        """Hand the rental to the renter and apply its outcome."""
        state = self.state
        obs = state.last_observation
        serving = state.serving
        ask = renting.Ask(
            label=self.label,
            reason=reason,
            template_hash=state.template_hash,
            template_pending=state.template_pending,
            known_ids=frozenset(i.id for i in obs.instances) if obs is not None else frozenset(),
            own_dph=(serving.dph_total or 0.0) if serving is not None else 0.0,
            now=self.clock(),
            listed_at_ms=state.listed_at_ms,
        )
        outcome = await self.renter.rent(ask)
        state.waiting_reason = outcome.why
        state.spend_reserved = state.spend_reserved or outcome.reserved
        if outcome.result is renting.Result.RENTED and outcome.instance_id is not None:
            record = state.tracked[outcome.instance_id]
            record.unconfirmed = record.rented_here = True
            record.rent_price = outcome.price_per_hour
            state.rent_hold_until = self.clock() + renting.RENT_HOLD_S
            record.first_seen = await self.boot_started(outcome.instance_id, self.clock())
        elif outcome.result is renting.Result.UNKNOWN:
            state.rent_hold_until = self.clock() + renting.RENT_HOLD_S
        for note in outcome.notes:
            self.emit(note.event, note.level)
