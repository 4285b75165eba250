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
from typing import Any, Final

import httpx

from provisioner import errors, fleet_wiring, model, planning, rendering, runtime, upstream_health, wiring
from provisioner.runtime import SOURCE_ADMIN
from provisioner.settings import Settings, load_settings
from provisioner.vast import client as vast_client

SOURCE_VAST: Final = "vast-api"
ADMIN_TIMEOUT_S: Final = 3.0


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


def settings_or_problem() -> tuple[Settings | None, errors.ConfigError | None]:
    """The pod's settings, or why they did not load (``--admin-url`` may do without them)."""
    try:
        return load_settings(), None
    except errors.ConfigError as exc:
        return None, exc


async def from_blacklist(settings: Settings) -> list[dict[str, Any]]:
    """Every current ban in the shared blacklist (``StoreError`` when Redis does not answer)."""
    async with fleet_wiring.connect_blacklist(settings, settings.pod_name) as store:
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


async def from_admin(http: httpx.AsyncClient, base_url: str) -> dict[str, Any] | str:
    """The running pod's own report, or why its admin server gave none (naming the URL)."""
    url = base_url.rstrip("/") + "/status"
    try:
        response = await http.get(url, timeout=ADMIN_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"{url}: {type(exc).__name__}: {exc}".rstrip(": ")
    if response.status_code != 200:
        return f"{url} answered {response.status_code}"
    try:
        report = response.json()
    except ValueError:
        report = None
    if not isinstance(report, dict):
        return f"{url} answered something that is not a status report"
    report["source"] = SOURCE_ADMIN
    report["source_detail"] = url
    return report


async def from_vast(
    settings: Settings,
    vast: vast_client.VastClient,
    *,
    now: float | None = None,
    admin_error: str | None = None,
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
        upstreams, upstream_healthy = await probe_upstream(settings, focus)
    rows = [runtime.instance_row(i, now) for i in listed]
    return {
        "source": SOURCE_VAST,
        "source_detail": f"{settings.vast_api_url} (instances labelled {settings.label!r})",
        "pod": settings.pod_name,
        "label": settings.label,
        "phase": None,
        "ready": None,
        "ready_reason": "the admin server did not answer",
        "admin_error": admin_error,
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


async def probe_upstream(
    settings: Settings, focus: model.Instance
) -> tuple[list[dict[str, Any]], bool | None]:
    """The focus instance's upstreams and whether they answer, checked as the reconciler checks them:
    the address must pass ``check_upstream_ip`` and the probe carries ``UPSTREAM_AUTH_HEADER``."""
    raw_host = (focus.public_ipaddr or "").strip()
    ports = [(pm.listen_port, focus.host_port(pm.container_port)) for pm in settings.port_maps]
    upstreams: list[dict[str, Any]] = [{"listen_port": lp, "host": raw_host, "port": p} for lp, p in ports]
    try:
        host = rendering.check_upstream_ip(raw_host, allow_private=settings.vast_allow_private_upstreams)
    except errors.NginxError:
        return upstreams, False
    if any(p is None for _, p in ports):
        return upstreams, False
    async with wiring.health_http(settings) as http:
        healthy = await upstream_health.probe(
            http, host, [int(p) for _, p in ports if p is not None], settings.vast_health_path
        )
    return upstreams, healthy


async def gather_status(
    settings: Settings | None,
    *,
    admin_url: str | None = None,
    settings_problem: errors.ConfigError | None = None,
) -> dict[str, Any]:
    """The admin server's report, else the Vast API's.

    Without ``settings`` (the pod's settings did not load: ``settings_problem``) only ``admin_url`` is
    asked; when it does not answer either, ``ProvisionerError`` says both.
    """
    if settings is None:
        if admin_url is None:
            raise settings_problem or errors.ConfigError("POD_NAME", "the pod's settings are needed")
        async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT_S) as http:
            answer = await from_admin(http, admin_url)
        if isinstance(answer, str):
            raise errors.ProvisionerError(
                f"the admin server did not answer ({answer}), and the Vast API cannot be asked "
                f"instead without the pod's settings ({settings_problem})"
            )
        return answer
    async with wiring.vast_http(settings) as http:
        answer = await from_admin(http, admin_url or admin_base_url(settings))
    if isinstance(answer, str):
        async with wiring.open_vast(settings) as vast:  # paced with the pods when they share a Redis
            answer = await from_vast(settings, vast, admin_error=answer)
    if settings.blacklist_enabled:
        try:
            answer["bans"] = await from_blacklist(settings)
            answer["bans_source"] = "blacklist"
        except errors.StoreError as exc:
            answer["bans_error"] = str(exc)
    return answer


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
        why = report.get("admin_error") or "the pod's admin server did not answer"
        lines.append(f"phase       unknown (no provisioner answers: {why})")
    lines += _instance_lines(report)
    lines += _cost_and_ban_lines(report)
    if report.get("last_error"):
        lines.append(f"last error  {report['last_error']}")
    lines += _instances_table(report)
    lines += _events_table(report)
    return "\n".join(lines) + "\n"


def _instance_lines(report: Mapping[str, Any]) -> list[str]:
    """The focus instance and its upstream."""
    lines: list[str] = []
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
    elif report.get("source") == SOURCE_ADMIN:
        lines.append("upstream    none (nginx answers 503)")
    else:
        lines.append("upstream    none (the provisioner's admin endpoint is unreachable: no proxy is known)")
    return lines


def _cost_and_ban_lines(report: Mapping[str, Any]) -> list[str]:
    """The cost rate and the bans (with their table)."""
    lines: list[str] = []
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
    return lines


def _instances_table(report: Mapping[str, Any]) -> list[str]:
    """Every instance, when there is more than the focus one."""
    lines: list[str] = []
    inst = report.get("instance")
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
    return lines


def _events_table(report: Mapping[str, Any]) -> list[str]:
    """The recent events."""
    lines: list[str] = []
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
    return lines
