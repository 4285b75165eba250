"""The test-only admin API under `/_sim/` (no auth, not in the request log, never faulted).

- GET    /_sim/requests[?endpoint=name]  {"requests": [{method, path, endpoint, status, ts, query}],
                                          "counts": {endpoint: n}, "status_counts": {endpoint: {status: n}},
                                          "count_429": {endpoint: n}} (counters are not bounded by the log)
- DELETE /_sim/requests                  clear the request log and its counters
- GET    /_sim/rate_limits               the limits in force (config knobs, each endpoint's calls,
                                          period_s, interval_s, penalty_s, scope, accepted, refused) and
                                          "refused": {endpoint: n} (429s from the limits alone, not faults)
- DELETE /_sim/rate_limits               forget every slot and counter (a fresh budget for every key)
- GET    /_sim/state                     every instance (destroyed ones too, with destroyed_at), offers,
                                          templates, hosts, faults, config
- GET    /_sim/faults                    the queued faults
- POST   /_sim/faults                    one fault, or {"faults": [...]}: {"endpoint", "kind", "count",
                                          "status", "retry_after", "delay_s", "instance_id", "label",
                                          "patch", "drop"} (faults.py lists the kinds and targets)
- DELETE /_sim/faults                    drop every queued fault
- POST   /_sim/hosts/{host_id}           {"never_boots", "oci_failure", "dies_after_s", "pull_delay_s"}
                                        (host_id "next": the host of the next rental, whichever it is)
- POST   /_sim/instances/{id}/status     {"actual_status": "hibernating_v2" | null, "for_s": 10 | null}:
                                          report that status (null: until cleared) while the container runs
- DELETE /_sim/instances/{id}/status     report the real status again
- POST   /_sim/instances/{id}/{action}   kill | offline | unknown | reboot ({"remap": true}: a new port)
- POST   /_sim/offers/{id}/take          someone else rents the offer
- GET    /_sim/config, POST /_sim/config read or change SimConfig fields at run time
"""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.responses import Response

from provisioner.sim import listing
from provisioner.sim.faults import Fault, json_response
from provisioner.sim.state import HostBehaviour, InstanceNotFound
from provisioner.sim.wire import ApiError, Call, RouteSpec, route, vast_error


def _bad(msg: str) -> ApiError:
    return ApiError(vast_error(400, "invalid_request", msg))


async def requests_get(call: Call) -> Response:
    """The request log, optionally for one endpoint, with counts per endpoint."""
    entries = call.runtime.requests.entries()
    wanted = call.query("endpoint")
    if wanted:
        entries = [e for e in entries if e["endpoint"] == wanted]
    log = call.runtime.requests
    return json_response(
        {
            "requests": entries,
            "counts": log.counts(),
            "status_counts": log.status_counts(),
            "count_429": log.count_429(),
        }
    )


async def requests_delete(call: Call) -> Response:
    """Forget every logged request."""
    call.runtime.requests.clear()
    return json_response({"success": True})


async def state_get(call: Call) -> Response:
    """The whole world, for assertions."""
    runtime = call.runtime
    state = runtime.state
    state.tick()
    now = runtime.clock()
    instances = [
        {
            **listing.instance_row(inst, now, runtime.config.public_ip),
            "destroyed_at": inst.destroyed_at,
            "offer_id": inst.offer["id"],
            "pending": [[at, status] for at, status in inst.pending],
            "workload_ports": runtime.workloads.ports_of(inst.id),
            "log_lines": len(inst.logs),
            "real_status": inst.actual_status,
            "status_override": dataclasses.asdict(inst.status_override) if inst.status_override else None,
        }
        for inst in state.instances.values()
    ]
    offers = [
        {k: o[k] for k in ("id", "machine_id", "host_id", "gpu_name", "num_gpus", "rentable", "rented")}
        for o in state.offers.values()
    ]
    return json_response(
        {
            "now": now,
            "config": runtime.config.as_dict(),
            "instances": instances,
            "offers": offers,
            "templates": state.templates.all_rows(),
            "hosts": {str(h): dataclasses.asdict(b) for h, b in state.hosts.items()},
            "faults": runtime.faults.pending(),
        }
    )


async def faults_get(call: Call) -> Response:
    """The queued faults."""
    return json_response({"faults": call.runtime.faults.pending()})


async def faults_post(call: Call) -> Response:
    """Queue one fault (an object) or several (`{"faults": [...]}`)."""
    items = call.body.get("faults", [call.body])
    if not isinstance(items, list):
        raise _bad("faults must be a list")
    try:
        parsed = [Fault.from_json(item) for item in items]
    except ValueError as exc:
        raise _bad(str(exc)) from None
    for fault in parsed:
        call.runtime.faults.add(fault)
    return json_response({"success": True, "faults": call.runtime.faults.pending()})


async def faults_delete(call: Call) -> Response:
    """Drop every queued fault."""
    call.runtime.faults.clear()
    return json_response({"success": True})


_HOST_FLAGS = ("never_boots", "oci_failure")
_HOST_SECONDS = ("dies_after_s", "pull_delay_s")


def _host_value(name: str, value: Any) -> Any:
    """A validated host behaviour value."""
    if name in _HOST_FLAGS:
        if not isinstance(value, bool):
            raise _bad(f"{name} must be true or false")
        return value
    if name not in _HOST_SECONDS:
        raise _bad(f"unknown host field {name!r}; known: {sorted(_HOST_FLAGS + _HOST_SECONDS)}")
    if value is None and name == "dies_after_s":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _bad(f"{name} must be a non-negative number of seconds")
    return float(value)


async def host_post(call: Call) -> Response:
    """Merge behaviour flags into a host (from its next boot on); host "next": the next rental's host."""
    values = {name: _host_value(name, value) for name, value in call.body.items()}
    if call.params["host_id"] == "next":
        pending = HostBehaviour(**values)
        call.runtime.state.next_host = pending
        return json_response({"success": True, "host_id": "next", "host": dataclasses.asdict(pending)})
    host_id = call.int_param("host_id", error="invalid_request")
    behaviour = call.runtime.state.host(host_id)
    for name, value in values.items():
        setattr(behaviour, name, value)
    return json_response({"success": True, "host_id": host_id, "host": dataclasses.asdict(behaviour)})


async def instance_action(call: Call) -> Response:
    """kill / offline / unknown / reboot an instance; answers once its workload has settled."""
    instance_id = call.int_param("id", error="invalid_request")
    action = call.params["action"]
    state = call.runtime.state
    try:
        if action == "kill":
            state.kill(instance_id)
        elif action in ("offline", "unknown"):
            state.disconnect(instance_id, action)
        elif action == "reboot":
            remap = call.body.get("remap", False)
            if not isinstance(remap, bool):
                raise _bad("remap must be true or false")
            state.reboot(instance_id, remap=remap)
        else:
            raise _bad(f"unknown action {action!r}: use kill, offline, unknown or reboot")
    except InstanceNotFound:
        raise _no_instance(instance_id) from None
    await call.runtime.settle()
    return _instance_answer(call, instance_id)


async def status_post(call: Call) -> Response:
    """Report another actual_status (a string Vast never used, or null) for `for_s` s or until cleared."""
    instance_id = call.int_param("id", error="invalid_request")
    if "actual_status" not in call.body:
        raise _bad('give "actual_status" (a string or null) and optionally "for_s"')
    status, for_s = call.body["actual_status"], call.body.get("for_s")
    if status is not None and not isinstance(status, str):
        raise _bad("actual_status must be a string or null")
    if for_s is not None and (isinstance(for_s, bool) or not isinstance(for_s, int | float) or for_s <= 0):
        raise _bad("for_s must be a positive number of seconds or null")
    unknown = set(call.body) - {"actual_status", "for_s"}
    if unknown:
        raise _bad(f"unknown fields {sorted(unknown)}")
    try:
        call.runtime.state.override_status(instance_id, status, None if for_s is None else float(for_s))
    except InstanceNotFound:
        raise _no_instance(instance_id) from None
    return _instance_answer(call, instance_id)


async def status_delete(call: Call) -> Response:
    """Report the real actual_status again."""
    instance_id = call.int_param("id", error="invalid_request")
    try:
        call.runtime.state.clear_status_override(instance_id)
    except InstanceNotFound:
        raise _no_instance(instance_id) from None
    return _instance_answer(call, instance_id)


def _instance_answer(call: Call, instance_id: int) -> Response:
    """The instance's row after the action; also when it was destroyed while its workload settled (the
    pod under test replacing the instance it saw die), which is what the action led to, not an error."""
    try:
        inst = call.runtime.state.get(instance_id)
    except InstanceNotFound:
        raise _no_instance(instance_id) from None
    row = listing.instance_row(inst, call.runtime.clock(), call.runtime.config.public_ip)
    return json_response({"success": True, "instance": row})


def _no_instance(instance_id: int) -> ApiError:
    return ApiError(vast_error(404, "not_found", f"Instance {instance_id} not found"))


async def rate_limits_get(call: Call) -> Response:
    """The rate limits in force and how many calls each endpoint had accepted and refused."""
    config = call.runtime.config
    limits = call.runtime.limits
    return json_response(
        {
            "enabled": config.rate_limits,
            "scale": config.rate_limit_scale,
            "body": config.rate_limit_body,
            "retry_after": config.rate_limit_retry_after,
            "penalties": config.rate_limit_penalties,
            "overrides": config.rate_limit_overrides,
            "rules": limits.rules(config.rate_limit_scale),
            "refused": dict(limits.limiter.refused),
        }
    )


async def rate_limits_delete(call: Call) -> Response:
    """A fresh budget for every key: forget every slot and counter."""
    call.runtime.limits.limiter.reset()
    return json_response({"success": True})


async def offer_take(call: Call) -> Response:
    """Mark an offer rented by someone else."""
    offer_id = call.int_param("id", error="invalid_request")
    try:
        call.runtime.state.take_offer(offer_id)
    except KeyError:
        raise ApiError(vast_error(404, "not_found", f"Offer {offer_id} not found")) from None
    return json_response({"success": True})


async def config_get(call: Call) -> Response:
    """The current config."""
    return json_response({"config": call.runtime.config.as_dict()})


async def config_post(call: Call) -> Response:
    """Change config fields at run time."""
    changes: dict[str, Any] = dict(call.body)
    try:
        config = call.runtime.update_config(changes)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return json_response({"success": True, "config": config.as_dict()})


_ID = r"(?P<id>[^/]+)"
ADMIN_ROUTES: list[RouteSpec] = [
    route("admin", "GET", r"/_sim/requests", requests_get, auth="none", admin=True),
    route("admin", "DELETE", r"/_sim/requests", requests_delete, auth="none", admin=True),
    route("admin", "GET", r"/_sim/state", state_get, auth="none", admin=True),
    route("admin", "GET", r"/_sim/faults", faults_get, auth="none", admin=True),
    route("admin", "POST", r"/_sim/faults", faults_post, auth="none", admin=True),
    route("admin", "DELETE", r"/_sim/faults", faults_delete, auth="none", admin=True),
    route("admin", "POST", r"/_sim/hosts/(?P<host_id>[^/]+)", host_post, auth="none", admin=True),
    route("admin", "GET", r"/_sim/rate_limits", rate_limits_get, auth="none", admin=True),
    route("admin", "DELETE", r"/_sim/rate_limits", rate_limits_delete, auth="none", admin=True),
    route("admin", "POST", rf"/_sim/instances/{_ID}/status", status_post, auth="none", admin=True),
    route("admin", "DELETE", rf"/_sim/instances/{_ID}/status", status_delete, auth="none", admin=True),
    route(
        "admin",
        "POST",
        rf"/_sim/instances/{_ID}/(?P<action>[^/]+)",
        instance_action,
        auth="none",
        admin=True,
    ),
    route("admin", "POST", rf"/_sim/offers/{_ID}/take", offer_take, auth="none", admin=True),
    route("admin", "GET", r"/_sim/config", config_get, auth="none", admin=True),
    route("admin", "POST", r"/_sim/config", config_post, auth="none", admin=True),
]
