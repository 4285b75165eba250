"""Instances on the wire: the row shape of docs/vast-api.md §7.3 and the v1 list query of §7.1.

Rows always carry a numeric `start_date` and a list `extra_env` (the official SDK crashes otherwise),
`public_ipaddr` with Vast's trailing newline, and `ports` with string HostPorts (null unless running).
The list filters and orders only stored columns (computed ones such as `dph_total` are a 400),
caps `limit` at 25 (≤0 means 5) and pages with an opaque keyset `next_token`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from typing import Any

from provisioner.sim import filters
from provisioner.sim.state import SimInstance

MAX_PAGE = 25
# Stored contract columns the v1 list can filter and order on.
STORED_COLUMNS = frozenset(
    {
        "id", "label", "actual_status", "intended_status", "cur_state", "next_state", "status_msg",
        "image_uuid", "image_runtype", "template_id", "template_hash_id", "template_name", "machine_id",
        "host_id", "bundle_id", "gpu_name", "verification", "geolocation", "start_date", "end_date",
        "disk_space", "hosting_type", "is_bid", "onstart", "ssh_host", "ssh_port",
    }
)  # fmt: skip


class ListError(ValueError):
    """A rejected list query: (error code, message) answered as 400."""

    def __init__(self, error: str, msg: str) -> None:
        super().__init__(msg)
        self.error = error


def instance_row(inst: SimInstance, now: float, public_ip: str) -> dict[str, Any]:
    """The instance object as `GET /instances/{id}/` and the v1 list return it."""
    return {
        **_contract_fields(inst, now),
        **_network_fields(inst, public_ip),
        **_billing_fields(inst, now),
        **_hardware_fields(inst),
    }


def _contract_fields(inst: SimInstance, now: float) -> dict[str, Any]:
    """Identity, status, image and template of the contract."""
    offer = inst.offer
    template = inst.template or {}
    cur_state = "stopped" if inst.intended_status == "stopped" else "running"
    return {
        "id": inst.id,
        "label": inst.label,
        "actual_status": inst.reported_status(now),
        "intended_status": inst.intended_status,
        "cur_state": cur_state,
        "next_state": inst.intended_status,
        "status_msg": inst.status_msg,
        "image_uuid": inst.image,
        "image_args": list(inst.args or []),
        "image_runtype": inst.runtype,
        "extra_env": [[key, value] for key, value in inst.env.items()],
        "onstart": inst.onstart,
        "jupyter_token": f"{inst.id:x}{offer['machine_id']:x}".rjust(32, "0"),
        "template_id": template.get("id"),
        "template_hash_id": template.get("hash_id"),
        "template_name": template.get("name"),
        "machine_id": offer["machine_id"],
        "host_id": offer["host_id"],
        "bundle_id": offer["bundle_id"],
        "hosting_type": offer["hosting_type"],
    }


def _network_fields(inst: SimInstance, public_ip: str) -> dict[str, Any]:
    """Address and ports: `public_ipaddr` and `ports` only while the container runs."""
    offer = inst.offer
    running = inst.host_ports is not None
    ports = (
        {key: [{"HostIp": "0.0.0.0", "HostPort": str(port)}] for key, port in inst.host_ports.items()}
        if inst.host_ports is not None
        else None
    )
    direct_start = 40_000 + (offer["machine_id"] % 200) * 100
    direct_count = int(offer["direct_port_count"])
    return {
        "public_ipaddr": f"{public_ip}\n" if running else None,
        "local_ipaddrs": f"10.{inst.id % 250}.{offer['machine_id'] % 250}.2 172.17.0.1 \n",
        "ports": ports,
        "direct_port_start": direct_start if running and direct_count else -1,
        "direct_port_end": direct_start + direct_count - 1 if running and direct_count else -1,
        "direct_port_count": direct_count,
        "static_ip": offer["static_ip"],
        "machine_dir_ssh_port": direct_start if direct_count else None,
        "ssh_host": f"ssh{inst.id % 9 + 1}.vast.ai",
        "ssh_port": inst.ssh_port,
        "ssh_idx": str(inst.id % 9 + 1),
    }


def _billing_fields(inst: SimInstance, now: float) -> dict[str, Any]:
    """Prices and times."""
    offer = inst.offer
    uptime_s = now - inst.running_since if inst.running_since is not None else 0.0
    return {
        "dph_total": offer["dph_total"],
        "dph_base": offer["dph_base"],
        "min_bid": offer["min_bid"],
        "is_bid": inst.bid_price is not None,
        "storage_cost": offer["storage_cost"],
        "storage_total_cost": offer["storage_total_cost"],
        "inet_up_cost": offer["inet_up_cost"],
        "inet_down_cost": offer["inet_down_cost"],
        "start_date": inst.created_at,
        "end_date": offer["end_date"],
        "duration": now - inst.created_at,
        "uptime_mins": round(uptime_s / 60, 2),
        "client_run_time": round(now - inst.created_at, 3),
        "host_run_time": round(now - inst.created_at, 3),
        "time_remaining": None,
    }


def _hardware_fields(inst: SimInstance) -> dict[str, Any]:
    """The machine and its live usage figures."""
    offer = inst.offer
    running = inst.host_ports is not None
    return {
        "gpu_name": offer["gpu_name"],
        "num_gpus": offer["num_gpus"],
        "gpu_ram": offer["gpu_ram"],
        "gpu_totalram": offer["gpu_total_ram"],
        "gpu_util": 37.5 if running else 0.0,
        "gpu_temp": 61.0 if running else None,
        "gpu_arch": offer["gpu_arch"],
        "gpu_frac": offer["gpu_frac"],
        "cpu_name": offer["cpu_name"],
        "cpu_cores": offer["cpu_cores"],
        "cpu_cores_effective": offer["cpu_cores_effective"],
        "cpu_ram": offer["cpu_ram"],
        "cpu_util": 2.5 if running else 0.0,
        "mem_usage": 0.4 if running else 0.0,
        "mem_limit": offer["cpu_ram"] / 1024,
        "vmem_usage": 1.2 if running else 0.0,
        "disk_space": inst.disk_gb,
        "disk_usage": 1.6,
        "disk_util": round(1.6 / inst.disk_gb, 4),  # a fraction (the CLI multiplies by 100)
        "disk_name": offer["disk_name"],
        "inet_up": offer["inet_up"],
        "inet_down": offer["inet_down"],
        "cuda_max_good": offer["cuda_max_good"],
        "driver_version": offer["driver_version"],
        "os_version": offer["os_version"],
        "geolocation": offer["geolocation"],
        "country_code": filters.country_code(offer["geolocation"]),
        "verification": offer["verification"],
        "reliability2": offer["reliability2"],
        "rentable": True,
        "external": offer["external"],
        "volume_info": [],
        "logo": offer["logo"],
        "webpage": offer["webpage"],
        "search": offer["search"],
        "instance": offer["instance"],
    }


def _json_param(params: Mapping[str, str], name: str, default: Any) -> Any:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise ListError("invalid_request", f"{name} is not valid JSON") from None


def _parse_order(raw: Any) -> tuple[list[str], list[bool]]:
    if not isinstance(raw, list):
        raise ListError("invalid_request", "order_by must be a list of {col, dir} objects")
    columns: list[str] = []
    descending: list[bool] = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("col"), str):
            raise ListError("invalid_request", f"invalid order_by entry {item!r}")
        col, direction = item["col"], str(item.get("dir", "asc")).lower()
        if col not in STORED_COLUMNS:
            raise ListError("invalid_request", f"Invalid order_by column: {col}")
        if direction not in ("asc", "desc"):
            raise ListError("invalid_request", f"Invalid order_by direction: {direction}")
        columns.append(col)
        descending.append(direction == "desc")
    if "id" not in columns:
        columns.append("id")
        descending.append(False)
    return columns, descending


def _parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return MAX_PAGE
    try:
        limit = int(float(raw))
    except ValueError:
        raise ListError("invalid_request", "limit must be an integer") from None
    return 5 if limit <= 0 else min(limit, MAX_PAGE)


def _encode_token(values: Sequence[Any]) -> str:
    blob = json.dumps({"values": list(values)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(blob).decode().rstrip("=")


def _decode_token(token: str, width: int) -> list[Any]:
    try:
        blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        values = json.loads(blob)["values"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ListError("invalid_token", "Invalid after_token") from None
    if not isinstance(values, list) or len(values) != width:
        raise ListError("invalid_token", "Invalid after_token")
    return values


def list_instances(rows: Sequence[Mapping[str, Any]], params: Mapping[str, str]) -> dict[str, Any]:
    """`GET /api/v1/instances/` over the live rows: filter, order, page, project; raises ListError."""
    try:
        conditions = filters.parse_filters(
            _json_param(params, "select_filters", {}), allowed=lambda c: c in STORED_COLUMNS
        )
    except filters.FilterError as exc:
        raise ListError("invalid_request", str(exc)) from None
    columns, descending = _parse_order(_json_param(params, "order_by", [{"col": "id", "dir": "asc"}]))
    limit = _parse_limit(params.get("limit"))
    select_cols = _json_param(params, "select_cols", ["*"])
    if not isinstance(select_cols, list) or not all(isinstance(c, str) for c in select_cols):
        raise ListError("invalid_request", "select_cols must be a list of column names")
    matched = filters.sort_rows([r for r in rows if filters.row_matches(r, conditions)], columns, descending)
    start = 0
    if params.get("after_token"):
        after = _decode_token(params["after_token"], len(columns))
        while start < len(matched):
            key = [matched[start].get(c) for c in columns]
            if filters.compare_keys(key, after, descending) > 0:
                break
            start += 1
    page = matched[start : start + limit]
    has_more = start + limit < len(matched)
    next_token = _encode_token([page[-1].get(c) for c in columns]) if page and has_more else None
    label_counts: dict[str, int] = {}
    for row in matched:
        label = row.get("label") or ""
        label_counts[label] = label_counts.get(label, 0) + 1
    if "*" not in select_cols:
        page = [{c: row.get(c) for c in select_cols} for row in page]
    return {
        "success": True,
        "instances_found": len(page),
        "total_instances": len(matched),
        "label_counts": label_counts,
        "next_token": next_token,
        "instances": [dict(r) for r in page],
    }
