"""``provisioner status``: this pod's instance, upstream, health, bans and recent events, at a glance.

Two sources, tried in order:

1. the running pod's admin server (``GET :ADMIN_PORT/status``): everything the daemon knows,
   including health, readiness, cost and recent events;
2. the Vast.ai API (list by this pod's label) when the admin server does not answer: the
   instances, their upstream (probed directly) and cost rate; no events, no readiness.

Bans come from the shared blacklist in Redis when ``BLACKLIST_ENABLED`` (every current ban:
they all keep this pod's rentals away), else from the ban events the running pod recorded.

The report is one JSON object (``--json``) or a readable table; it always says which source
it came from. ``snapshot`` builds the admin server's answer from the daemon's state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import httpx

from provisioner import errors, model, planning, upstream_health
from provisioner.vast import client as vast_client

if TYPE_CHECKING:
    from provisioner.daemon import Runtime
    from provisioner.reconciler import ReconcilerView
    from provisioner.settings import Settings

SOURCE_ADMIN: Final = "admin"
SOURCE_VAST: Final = "vast-api"
#: how many recent events the report carries
EVENTS_SHOWN: Final = 20
ADMIN_TIMEOUT_S: Final = 3.0
_RANK: Final = {"healthy": 0, "ready": 1, "booting": 2}


# ---------------------------------------------------------------- the daemon's side


def focus_instance(state: ReconcilerView | None) -> model.Instance | None:
    """The instance this pod is about: the served one, else the one it keeps booting (latest tick)."""
    if state is None:
        return None
    if state.serving is not None:
        return state.serving
    plan, obs = state.last_plan, state.last_observation
    if plan is None or obs is None:
        return None
    kept = [i for i in obs.instances if plan.verdicts.get(i.id, ("", ""))[0] in _RANK]
    kept.sort(key=lambda i: (_RANK[plan.verdicts[i.id][0]], i.id))
    return kept[0] if kept else None


def instance_row(
    inst: model.Instance,
    now: float,
    *,
    served: bool = False,
    verdict: str | None = None,
    first_seen: float | None = None,
) -> dict[str, Any]:
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


def snapshot(
    runtime: Runtime, *, ready: tuple[bool, str], health: tuple[bool, str], now: float | None = None
) -> dict[str, Any]:
    """The admin server's ``/status``: the daemon's state as plain JSON values."""
    now = time.time() if now is None else now
    settings = runtime.settings
    rec: Any = runtime.reconciler
    state: ReconcilerView | None = rec.view() if rec is not None else None
    focus = focus_instance(state)
    instances: list[dict[str, Any]] = []
    upstreams: list[dict[str, Any]] = []
    upstream_healthy: bool | None = None
    events: list[dict[str, Any]] = []
    phase = "starting"
    if state is not None:
        if state.phase is not None:
            phase = str(state.phase)
        obs, plan = state.last_observation, state.last_plan
        serving_id = state.serving.id if state.serving is not None else None
        for inst in obs.instances if obs is not None else ():
            verdict = plan.verdicts.get(inst.id, ("", ""))[0] if plan is not None else None
            row = instance_row(
                inst,
                now,
                served=inst.id == serving_id,
                verdict=verdict or None,
                first_seen=state.first_seen.get(inst.id),
            )
            instances.append(row)
        upstreams = [
            {"listen_port": lp, "host": up.host, "port": up.port}
            for lp, up in sorted(state.upstreams.items())
        ]
        if serving_id is not None:
            upstream_healthy = state.serving_healthy
        events = [
            {"at": e.at, "kind": e.kind, "detail": e.detail, "instance_id": e.instance_id, "reason": e.reason}
            for e in list(state.events)[-EVENTS_SHOWN:]
        ]
    metrics: Any = getattr(runtime, "metrics", None)
    focus_row = next((row for row in instances if focus is not None and row["id"] == focus.id), None)
    if focus is not None and focus_row is None:
        focus_row = instance_row(focus, now, served=True)
    return {
        "source": SOURCE_ADMIN,
        "pod": settings.pod_name,
        "label": settings.label,
        "phase": phase,
        "ready": ready[0],
        "ready_reason": ready[1],
        "healthy": health[0],
        "health_reason": health[1],
        "instance": focus_row,
        "instances": instances,
        "upstreams": upstreams,
        "upstream_healthy": upstream_healthy,
        "cost_per_hour": metrics.cost.dollars_per_hour if metrics is not None else None,
        "accrued_cost": metrics.cost.dollars() if metrics is not None else None,
        "bans": [ban_from_event(e) for e in events if e["kind"] == "ban"],
        "bans_source": "events",
        "events": events,
        "last_error": runtime.last_error,
        "started_at": runtime.started_at,
        "generated_at": now,
    }


# ---------------------------------------------------------------- the command's side


def admin_base_url(settings: Settings) -> str:
    """Where this pod's admin server answers, seen from the same host (a wildcard bind -> loopback)."""
    host = settings.admin_host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.admin_port}"


def ban_from_event(event: Mapping[str, Any]) -> dict[str, Any]:
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


async def from_blacklist(settings: Settings) -> list[dict[str, Any]]:
    """Every current ban in the shared blacklist (``StoreError`` when Redis does not answer)."""
    from provisioner import daemon  # noqa: PLC0415 - the daemon imports this module

    async with daemon.connect_blacklist(settings) as store:
        records = await store.bans()
    return [
        {
            "kind": b.kind,
            "id": b.ident,
            "reason": b.reason,
            "by": b.by,
            "instance_id": b.instance_id,
            "at": b.at,
            "expires_at": b.expires_at,
            "detail": None,
        }
        for b in records
    ]


async def from_admin(http: httpx.AsyncClient, base_url: str) -> dict[str, Any] | None:
    """The running pod's own report, or None when its admin server does not answer."""
    url = base_url.rstrip("/") + "/status"
    try:
        response = await http.get(url, timeout=ADMIN_TIMEOUT_S)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        report = response.json()
    except ValueError:
        return None
    if not isinstance(report, dict):
        return None
    report["source"] = SOURCE_ADMIN
    report["source_detail"] = url
    return report


async def from_vast(
    settings: Settings, vast: vast_client.VastClient, *, now: float | None = None
) -> dict[str, Any]:
    """What the Vast.ai API shows for this pod's label; the focus instance's upstream is probed directly."""
    listed = await vast.list_by_label(settings.label)
    now = time.time() if now is None else now
    desired = settings.desired_spec()
    ranked = sorted(listed, key=lambda i: (0 if planning.has_endpoints(i, desired) else 1, i.id))
    focus = next((i for i in ranked if not i.is_dead), None)
    upstreams: list[dict[str, Any]] = []
    upstream_healthy: bool | None = None
    if focus is not None and planning.has_endpoints(focus, desired):
        host = (focus.public_ipaddr or "").strip()
        for pm in desired.ports:
            port = focus.host_port(pm.container_port)
            upstreams.append({"listen_port": pm.listen_port, "host": host, "port": port})
        async with httpx.AsyncClient(timeout=3.0) as http:
            ports = [int(u["port"]) for u in upstreams]
            upstream_healthy = await upstream_health.probe(http, host, ports, settings.vast_health_path)
    rows = [instance_row(i, now) for i in listed]
    return {
        "source": SOURCE_VAST,
        "source_detail": f"{settings.vast_api_url} (instances labelled {settings.label!r})",
        "pod": settings.pod_name,
        "label": settings.label,
        "phase": None,
        "ready": None,
        "ready_reason": "the admin server did not answer",
        "healthy": None,
        "health_reason": None,
        "instance": next((r for r in rows if focus is not None and r["id"] == focus.id), None),
        "instances": rows,
        "upstreams": upstreams,
        "upstream_healthy": upstream_healthy,
        "cost_per_hour": sum(i.dph_total or 0.0 for i in listed),
        "accrued_cost": None,
        "bans": None,
        "bans_source": None,
        "events": [],
        "last_error": None,
        "started_at": None,
        "generated_at": now,
    }


async def gather_status(settings: Settings, *, admin_url: str | None = None) -> dict[str, Any]:
    """The admin server's report, else the Vast API's."""
    timeout = httpx.Timeout(30.0, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
        report = await from_admin(http, admin_url or admin_base_url(settings))
        if report is None:
            vast = vast_client.VastClient(http, settings.vast_api_key, base_url=settings.vast_api_url)
            report = await from_vast(settings, vast)
    if settings.blacklist_enabled:
        try:
            report["bans"] = await from_blacklist(settings)
            report["bans_source"] = "blacklist"
        except errors.StoreError as exc:
            report["bans_error"] = str(exc)
    return report


# ---------------------------------------------------------------- rendering


def _money(value: Any, digits: int = 3) -> str:
    return f"${value:.{digits}f}" if isinstance(value, int | float) else "-"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def _yes_no(value: Any, yes: str = "yes", no: str = "no") -> str:
    return "-" if value is None else (yes if value else no)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "  ") -> list[str]:
    rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return [indent + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]


def _when(at: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, int | float) else "-"


def _ban_table(bans: Sequence[Mapping[str, Any]], now: Any) -> list[str]:
    if not bans:
        return []
    rows = []
    for b in bans:
        left = "-"
        if isinstance(b.get("expires_at"), int | float) and isinstance(now, int | float):
            left = _duration(b["expires_at"] - now)
        what = f"{b.get('kind')} {b['id']}" if b.get("id") is not None else (b.get("detail") or "-")
        rows.append(
            [what, b.get("reason") or "-", b.get("by") or "-", str(b.get("instance_id") or "-"), left]
        )
    return _table(["BANNED", "REASON", "BY", "INSTANCE", "EXPIRES IN"], rows, indent="            ")


def render_table(report: Mapping[str, Any]) -> str:
    """The report for people: key facts first, then instances and recent events as tables."""
    lines = [
        f"pod         {report.get('pod')}   (label {report.get('label')})",
        f"source      {report.get('source')}: {report.get('source_detail', '-')}",
    ]
    if report.get("source") == SOURCE_ADMIN:
        ready = "ready" if report.get("ready") else f"not ready: {report.get('ready_reason')}"
        lines.append(f"phase       {report.get('phase')} ({ready})")
        health = "ok" if report.get("healthy") else f"unhealthy: {report.get('health_reason')}"
        lines.append(f"process     {health}")
    else:
        lines.append("phase       unknown (the pod's admin server did not answer)")
    inst = report.get("instance")
    if inst:
        gpus = f"{inst.get('num_gpus') or '?'}x {inst.get('gpu_name') or '?'}"
        status = inst.get("actual_status") or "provisioning"
        msg = f" ({inst['status_msg']})" if inst.get("status_msg") else ""
        lines.append(
            f"instance    {inst['id']}  {status}{msg}  host {inst.get('host_id') or '-'}  "
            f"machine {inst.get('machine_id') or '-'}  {gpus}  {_money(inst.get('dph_total'))}/h  "
            f"up {_duration(inst.get('uptime_s'))}"
        )
    else:
        lines.append("instance    none")
    ups = report.get("upstreams") or []
    if ups:
        where = ", ".join(f"{u['listen_port']} -> {u['host']}:{u['port']}" for u in ups)
        health = _yes_no(report.get("upstream_healthy"), "healthy", "failing")
        lines.append(f"upstream    {where}  ({health})")
    else:
        lines.append("upstream    none (nginx answers 503)")
    cost = f"{_money(report.get('cost_per_hour'))}/h now"
    if report.get("accrued_cost") is not None:
        cost += f", {_money(report.get('accrued_cost'), 4)} since the provisioner started"
    lines.append(f"cost        {cost}")
    bans = report.get("bans")
    where = {"blacklist": "in the shared blacklist", "events": "by this pod (no blacklist)"}.get(
        str(report.get("bans_source")), ""
    )
    if report.get("bans_error"):
        lines.append(f"bans        blacklist unavailable: {report['bans_error']}")
    if bans is None:
        lines.append("bans        unknown (no blacklist, and the pod's admin server did not answer)")
    elif not bans:
        lines.append(f"bans        none {where}".rstrip())
    else:
        lines.append(f"bans        {len(bans)} {where}")
    lines += _ban_table(bans or [], report.get("generated_at"))
    if report.get("last_error"):
        lines.append(f"last error  {report['last_error']}")
    instances = report.get("instances") or []
    if len(instances) > 1 or (instances and not inst):
        lines += ["", "instances"]
        lines += _table(
            ["ID", "STATUS", "VERDICT", "HOST", "MACHINE", "GPU", "$/H", "UP"],
            [
                [
                    str(i["id"]) + (" *" if i.get("served") else ""),
                    i.get("actual_status") or "-",
                    i.get("verdict") or "-",
                    str(i.get("host_id") or "-"),
                    str(i.get("machine_id") or "-"),
                    i.get("gpu_name") or "-",
                    _money(i.get("dph_total")),
                    _duration(i.get("uptime_s")),
                ]
                for i in instances
            ],
        )
    events = report.get("events") or []
    lines += ["", "recent events" if events else "recent events: none"]
    if events:
        lines += _table(
            ["TIME", "EVENT", "INSTANCE", "DETAIL"],
            [
                [_when(e.get("at")), e.get("kind", ""), str(e.get("instance_id") or "-"), e.get("detail", "")]
                for e in events
            ],
        )
    return "\n".join(lines) + "\n"
