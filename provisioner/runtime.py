"""The running daemon's state as the readers see it: the typed ``Runtime`` and ``health()``,
``readiness()``, ``snapshot()``.

The daemon fills a ``Runtime``; the admin server, the metrics collector and ``/status`` only read
it, through the functions here. The reconciler is read through ``Reconciler.view()`` alone (a
frozen ``ReconcilerView``), never through its internal state. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from provisioner import model, planning
from provisioner.reconciler import ReconcilerView
from provisioner.settings import Settings

#: the loop counts as stuck when it has not come round for this long (seconds)
STALL_AFTER_S: Final = 300.0
#: how many recent events ``/status`` carries
EVENTS_SHOWN: Final = 20
SOURCE_ADMIN: Final = "admin"
#: verdicts of instances this pod keeps, best first (the focus of ``status`` and the log context)
_KEPT_RANK: Final = {"healthy": 0, "ready": 1, "booting": 2}

#: one JSON value of a report row (the admin server's and ``provisioner status``'s)
JsonRow = dict[str, object]


class ReconcilerReader(Protocol):
    """The only part of the reconciler the readers use."""

    def view(self) -> ReconcilerView: ...


class ProxyState(Protocol):
    """What the readers need of the nginx process."""

    @property
    def is_running(self) -> bool: ...

    @property
    def reloads(self) -> int: ...

    @property
    def restarts(self) -> int: ...


class CostReading(Protocol):
    """The accrued-cost meter (``metrics.CostMeter``)."""

    @property
    def dollars_per_hour(self) -> float: ...

    def dollars(self) -> float: ...


class Reconciles(Protocol):
    """What the loops call on the reconciler (``reconciler.Reconciler``)."""

    @property
    def has_fleet(self) -> bool: ...

    async def tick(self) -> planning.Plan: ...

    async def ensure_template(self, creator_id: int | None) -> str: ...

    def mark_template_pending(self) -> None: ...

    async def beat(self) -> None: ...

    def log_progress_if_quiet(self, quiet_s: float) -> None: ...

    async def probe_serving(self) -> bool | None: ...

    def view(self) -> ReconcilerView: ...

    async def note_clean_stop(self) -> None: ...


class KeyCheck(Protocol):
    """The Vast call that checks the key and names the account (``VastClient.whoami``)."""

    async def whoami(self) -> dict[str, Any]: ...


@dataclass
class Runtime:
    """What the admin server, the metrics and ``/status`` read while the daemon runs."""

    settings: Settings
    reconciler: ReconcilerReader | None = None
    nginx: ProxyState | None = None
    cost: CostReading | None = None
    started_at: float = 0.0
    loop_heartbeat_at: float = 0.0
    #: the loop rests on purpose until then (a rate-limit slot hours away): no stall before it
    resting_until: float = 0.0
    prepared: bool = False
    stopping: bool = False
    last_error: str | None = None

    def view(self) -> ReconcilerView | None:
        """The reconciler's view, or None before it is built."""
        return self.reconciler.view() if self.reconciler is not None else None


def health(runtime: Runtime, now: float) -> tuple[bool, str]:
    """Liveness: nginx is running and the loop came round recently, or rests on purpose (however
    long: a daily search quota) and is not overdue from that rest; a wedged loop still fails."""
    nginx = runtime.nginx
    if nginx is None or not nginx.is_running:
        return False, "nginx is not running"
    interval = max(runtime.settings.reconcile_interval_seconds * 3, STALL_AFTER_S)
    due = max(runtime.loop_heartbeat_at, runtime.resting_until)
    if runtime.loop_heartbeat_at and now - due > interval:
        return False, f"the reconcile loop has not run for {now - runtime.loop_heartbeat_at:.0f}s"
    return True, "ok"


def readiness(runtime: Runtime) -> tuple[bool, str]:
    """Readiness: a healthy upstream is being served."""
    if runtime.stopping:
        return False, "shutting down"
    view = runtime.view()
    if view is None:
        return False, _with_last_error("starting", runtime)
    if runtime.nginx is None or not runtime.nginx.is_running:
        return False, "nginx is not running"
    if view.serving is None:
        why = view.waiting_reason  # what holds the rental back (spend cap, rent brakes, template)
        reason = view.rental_queue or (f"{view.unserve_reason}: {why}" if why else view.unserve_reason)
        return False, _with_last_error(reason, runtime)
    if view.serving_healthy is False:
        return False, "upstream failing its health check"
    return True, "ok"


def _with_last_error(reason: str, runtime: Runtime) -> str:
    """``reason``, and the last failed tick's error while one is unresolved (it names the URL or file)."""
    return f"{reason} (last error: {runtime.last_error})" if runtime.last_error else reason


def phase_name(view: ReconcilerView | None) -> str:
    """The pod's phase as shown (``starting`` until the first successful tick)."""
    if view is None or view.phase is None or not view.last_tick_at:
        return "starting"
    return str(view.phase)


def verdict_of(view: ReconcilerView, instance_id: int) -> str | None:
    """The latest plan's verdict on one instance (its name), or None."""
    plan = view.last_plan
    if plan is None or instance_id not in plan.verdicts:
        return None
    return str(plan.verdicts[instance_id][0]) or None


def kept_summary(view: ReconcilerView | None) -> str:
    """What a shutdown leaves running: this pod's instances (the pod may only be restarting)."""
    seen = view.last_observation if view is not None else None
    ids = sorted(i.id for i in seen.instances) if seen is not None else []
    return f"instance {', '.join(map(str, ids))} is kept" if ids else "no instance to keep"


def focus_instance(view: ReconcilerView | None) -> model.Instance | None:
    """The instance this pod is about: the served one, else the one it keeps booting (latest tick)."""
    if view is None:
        return None
    if view.serving is not None:
        return view.serving
    obs = view.last_observation
    if view.last_plan is None or obs is None:
        return None
    kept = [(_KEPT_RANK[v], i.id, i) for i in obs.instances if (v := verdict_of(view, i.id)) in _KEPT_RANK]
    return min(kept, key=lambda item: item[:2])[2] if kept else None


def instance_row(
    inst: model.Instance,
    now: float,
    *,
    served: bool = False,
    verdict: str | None = None,
    first_seen: float | None = None,
) -> JsonRow:
    """One instance as plain JSON values."""
    started = inst.start_date or first_seen
    return {
        "id": inst.id,
        "actual_status": inst.actual_status,
        "status_msg": inst.status_msg,
        "verdict": verdict,
        "served": served,
        "host_id": inst.host_id,
        "machine_id": inst.machine_id,
        "gpu_name": inst.gpu_name,
        "num_gpus": inst.num_gpus,
        "dph_total": inst.dph_total,
        "geolocation": inst.geolocation,
        "public_ipaddr": (inst.public_ipaddr or "").strip() or None,
        "start_date": inst.start_date,
        "uptime_s": round(max(now - started, 0.0), 1) if started else None,
        "image": inst.image_uuid,
    }


def ban_from_event(event: Mapping[str, object]) -> JsonRow:
    """A ``ban`` event as a ban row (without the blacklist the ban lives only in this event)."""
    return {
        "kind": "host",
        "id": None,
        "reason": event.get("reason"),
        "by": None,
        "instance_id": event.get("instance_id"),
        "at": event.get("at"),
        "expires_at": None,
        "detail": event.get("detail"),
    }


def _instance_rows(view: ReconcilerView, now: float) -> list[JsonRow]:
    obs = view.last_observation
    serving_id = view.serving.id if view.serving is not None else None
    return [
        instance_row(
            inst,
            now,
            served=inst.id == serving_id,
            verdict=verdict_of(view, inst.id),
            first_seen=view.first_seen.get(inst.id),
        )
        for inst in (obs.instances if obs is not None else ())
    ]


def _event_rows(view: ReconcilerView) -> list[JsonRow]:
    return [
        {
            "at": e.at,
            "kind": str(e.kind),
            "detail": e.detail,
            "instance_id": e.instance_id,
            "reason": e.reason,
        }
        for e in view.events[-EVENTS_SHOWN:]
    ]


def snapshot(runtime: Runtime, now: float) -> JsonRow:
    """The admin server's ``/status``: the daemon's state as plain JSON values."""
    settings, view, cost = runtime.settings, runtime.view(), runtime.cost
    focus = focus_instance(view)
    instances = _instance_rows(view, now) if view is not None else []
    events = _event_rows(view) if view is not None else []
    upstreams: list[JsonRow] = []
    upstream_healthy: bool | None = None
    if view is not None:
        upstreams = [
            {"listen_port": lp, "host": up.host, "port": up.port} for lp, up in sorted(view.upstreams.items())
        ]
        upstream_healthy = view.serving_healthy
    focus_row = next((row for row in instances if focus is not None and row["id"] == focus.id), None)
    if focus is not None and focus_row is None:
        focus_row = instance_row(focus, now, served=True)
    ready, health_now = readiness(runtime), health(runtime, now)
    return {
        "source": SOURCE_ADMIN,
        "pod": settings.pod_name,
        "label": settings.label,
        "phase": phase_name(view),
        "ready": ready[0],
        "ready_reason": ready[1],
        "healthy": health_now[0],
        "health_reason": health_now[1],
        "instance": focus_row,
        "instances": instances,
        "upstreams": upstreams,
        "upstream_healthy": upstream_healthy,
        "cost_per_hour": cost.dollars_per_hour if cost is not None else None,
        "accrued_cost": cost.dollars() if cost is not None else None,
        "bans": [ban_from_event(e) for e in events if e["kind"] == "ban"],
        "bans_source": "events",
        "events": events,
        "last_error": runtime.last_error,
        "started_at": runtime.started_at,
        "generated_at": now,
    }
