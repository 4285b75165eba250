"""The Vast.ai API routes of docs/vast-api.md §11, with their wire shapes."""

from __future__ import annotations

import json
import secrets
from typing import Any

from starlette.responses import Response

from provisioner.sim import catalogue, filters, listing
from provisioner.sim.config import SIM_USER_ID
from provisioner.sim.faults import json_response
from provisioner.sim.state import InstanceNotFound, RentError, SimInstance
from provisioner.sim.templates import TemplateError
from provisioner.sim.wire import ApiError, Call, RouteSpec, invalid_request, route, vast_error

_INT = r"(?P<id>[^/]+)"


def _row(call: Call, inst: SimInstance) -> dict[str, Any]:
    return listing.instance_row(inst, call.runtime.clock(), call.runtime.config.public_ip)


def _live(call: Call, instance_id: int, status: int, error: str, msg: str) -> SimInstance:
    try:
        return call.runtime.state.live(instance_id)
    except InstanceNotFound:
        raise ApiError(vast_error(status, error, msg)) from None


async def whoami(call: Call) -> Response:
    """`GET /users/current`: the account, including the key it was called with."""
    return json_response(
        {
            "id": SIM_USER_ID,
            "key_id": 1001,
            "username": "sim-user",
            "fullname": "Simulated User",
            "email": "sim-user@example.com",
            "email_verified": True,
            "balance": 0.0,
            "credit": 250.0,
            "balance_threshold": 5.0,
            "balance_threshold_enabled": False,
            "can_pay": True,
            "has_billing": True,
            "host_agreement_accepted": False,
            "paypal_email": None,
            "ssh_key": "",
            "sid": secrets.token_hex(8),
            "user": "sim-user",
            "api_key": call.identity,
        }
    )


async def gpu_names(call: Call) -> Response:
    """`GET /gpu_names/unique/` (unauthenticated; the CLI fetches it when building its parser)."""
    return json_response({"gpu_names": catalogue.gpu_names()})


def _search(call: Call, query: Any) -> Response:
    try:
        offers = call.runtime.state.search_offers(query)
    except filters.FilterError as exc:
        return invalid_request(str(exc))
    return json_response({"offers": offers})


async def search_post(call: Call) -> Response:
    """`POST /bundles/` with the query as a flat JSON body (1.9.1)."""
    return _search(call, call.body)


async def search_get(call: Call) -> Response:
    """`GET /bundles/?q=<json>` (the legacy form)."""
    raw = call.query("q")
    if not raw:
        return _search(call, {})
    try:
        return _search(call, json.loads(raw))
    except json.JSONDecodeError:
        return invalid_request("Invalid json in q")


async def search_asks(call: Call) -> Response:
    """`PUT /search/asks/` with `{"q": …, "select_cols": …}` (`search offers --new`)."""
    query = call.body.get("q", {})
    return _search(call, query)


async def rent(call: Call) -> Response:
    """`PUT /asks/{id}/`: create an instance from an offer."""
    offer_id = call.int_param("id")
    try:
        inst = call.runtime.state.rent(offer_id, call.body)
    except RentError as exc:
        return json_response(exc.body, exc.status)
    return json_response(
        {"success": True, "new_contract": inst.id, "instance_api_key": secrets.token_hex(32)}
    )


async def list_v1(call: Call) -> Response:
    """`GET /api/v1/instances/`: filtered, ordered, paginated."""
    rows = [_row(call, inst) for inst in call.runtime.state.visible()]
    try:
        return json_response(listing.list_instances(rows, call.request.query_params))
    except listing.ListError as exc:
        return invalid_request(str(exc), exc.error)


async def list_v0(call: Call) -> Response:
    """`GET /api/v0/instances/`: deprecated, as for a growing set of real accounts."""
    msg = "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead."
    return vast_error(410, "deprecated_endpoint", msg)


async def instance_filters(call: Call) -> Response:
    """`GET /instances/filters/`: the distinct (status, verification, gpu) combinations (CLI table header)."""
    combos = {
        (row["actual_status"], row["verification"], row["gpu_name"])
        for row in (_row(call, inst) for inst in call.runtime.state.visible())
    }
    found = [{"actual_status": a, "verification": v, "gpu_name": g} for a, v, g in sorted(combos, key=str)]
    return json_response({"filters": found})


async def show(call: Call) -> Response:
    """`GET /instances/{id}/`: `{"instances": {…}}`, or `{"instances": null}` when gone."""
    instance_id = call.int_param("id")
    try:
        inst = call.runtime.state.live(instance_id)
    except InstanceNotFound:
        return json_response({"instances": None})
    return json_response({"instances": _row(call, inst)})


async def manage(call: Call) -> Response:
    """`PUT /instances/{id}/` with `label` and/or `state`."""
    instance_id = call.int_param("id")
    label, state = call.body.get("label"), call.body.get("state")
    if "label" not in call.body and state is None:
        return vast_error(400, "invalid_args", "At least one of label or state is required.")
    if label is not None and (not isinstance(label, str) or len(label) > 1024):
        return vast_error(400, "label_too_long", "Label must be a string of at most 1024 characters.")
    if state is not None and state not in ("running", "stopped"):
        return vast_error(400, "invalid_args", f"Invalid state {state!r}: use running or stopped.")
    _live(call, instance_id, 404, "no_such_instance", f"Instance {instance_id} not found.")
    result: dict[str, Any] = {"success": True}
    if "label" in call.body:
        call.runtime.state.set_label(instance_id, label)
        result["msg"] = f"label for {instance_id} set to '{label}'"
    if state is not None:
        call.runtime.state.set_intended(instance_id, state)
    return json_response(result)


async def destroy(call: Call) -> Response:
    """`DELETE /instances/{id}/`; a second DELETE is a 404 not_found."""
    instance_id = call.int_param("id")
    _live(call, instance_id, 404, "not_found", "Instance not found")
    call.runtime.state.destroy(instance_id)
    return json_response({"success": True})


async def reboot(call: Call) -> Response:
    """`PUT /instances/reboot/{id}/`: rebooting, then running."""
    instance_id = call.int_param("id")
    inst = _live(call, instance_id, 400, "invalid_args", f"Instance {instance_id} not found.")
    if inst.intended_status == "stopped":
        return vast_error(400, "invalid_args", f"Instance {instance_id} is stopped; start it instead.")
    call.runtime.state.reboot(instance_id)
    return json_response({"success": True})


async def recycle(call: Call) -> Response:
    """`PUT /instances/recycle/{id}/`: recycling, a fresh pull, then running."""
    instance_id = call.int_param("id", error="invalid_id")
    _live(call, instance_id, 400, "invalid_id", f"Instance {instance_id} not found.")
    call.runtime.state.recycle(instance_id)
    return json_response({"success": True})


async def logs_request(call: Call) -> Response:
    """`PUT /instances/request_logs/{id}/`: a `result_url` on this server, fetched without auth."""
    instance_id = call.int_param("id", error="invalid_id")
    _live(call, instance_id, 404, "invalid_id", "Invalid instance id.")
    body = call.body
    daemon = str(body.get("daemon_logs", "")).lower() == "true"
    token = call.runtime.state.request_logs(instance_id, body.get("tail"), body.get("filter"), daemon)
    base = str(call.request.base_url).rstrip("/")
    return json_response(
        {"success": True, "result_url": f"{base}/logs-result/{token}.log", "msg": "Logs are being uploaded."}
    )


async def logs_result(call: Call) -> Response:
    """`GET /logs-result/<token>.log`: 404 while "uploading", then the text."""
    status, text = call.runtime.state.fetch_logs(call.params["token"])
    return Response(text.encode(), status, media_type="text/plain")


def _template_error(exc: TemplateError) -> Response:
    return json_response(exc.body, exc.status)


async def template_get(call: Call) -> Response:
    """`GET /template/?select_filters=…`: your templates and public ones."""
    try:
        raw_filters = json.loads(call.query("select_filters") or "{}")
        raw_order = call.query("order_by")
        order = json.loads(raw_order) if raw_order and raw_order[:1] in '[{"' else raw_order
    except json.JSONDecodeError:
        return invalid_request("select_filters and order_by must be JSON")
    try:
        found = call.runtime.state.templates.search(raw_filters, order)
    except filters.FilterError as exc:
        return invalid_request(str(exc))
    return json_response({"success": True, "templates_found": len(found), "templates": found})


async def template_post(call: Call) -> Response:
    """`POST /template/`: create, or find the caller's template with identical content."""
    try:
        template, created = call.runtime.state.templates.create(call.body)
    except TemplateError as exc:
        return _template_error(exc)
    msg = (
        f"Template Created Successfully! New Template ID: {template['id']}"
        if created
        else f"Existing template found. Template ID: {template['id']}"
    )
    return json_response({"success": True, "msg": msg, "template": template})


async def template_put_v0(call: Call) -> Response:
    """`PUT /api/v0/template/`: edit in place (same id, new hash)."""
    try:
        template = call.runtime.state.templates.edit_in_place(call.body)
    except TemplateError as exc:
        return _template_error(exc)
    return json_response({"success": True, "msg": "Template updated.", "template": template})


async def template_put_v1(call: Call) -> Response:
    """`PUT /api/v1/template/`: a new version (new hash; the old one still rents)."""
    try:
        template = call.runtime.state.templates.new_version(call.body)
    except TemplateError as exc:
        return _template_error(exc)
    return json_response({"success": True, "msg": "Template updated.", "template": template})


async def template_delete(call: Call) -> Response:
    """`DELETE /template/` with `template_id` or `hash_id`."""
    try:
        deleted = call.runtime.state.templates.delete(call.body)
    except TemplateError as exc:
        return _template_error(exc)
    return json_response({"success": True, "msg": f"Template {deleted} deleted."})


# Order matters: the fixed sub-paths of /instances/ come before /instances/{id}/.
API_ROUTES: list[RouteSpec] = [
    route("whoami", "GET", r"/api/v0/users/current", whoami),
    route("gpu_names", "GET", r"/api/v0/gpu_names/unique", gpu_names, auth="none"),
    route("search", "POST", r"/api/v0/bundles", search_post, auth="optional"),
    route("search", "GET", r"/api/v0/bundles", search_get, auth="optional"),
    route("search", "PUT", r"/api/v0/search/asks", search_asks, auth="optional"),
    route("rent", "PUT", rf"/api/v0/asks/{_INT}", rent),
    route("list", "GET", r"/api/v1/instances", list_v1),
    route("v0_list", "GET", r"/api/v0/instances", list_v0),
    route("instance_filters", "GET", r"/api/v0/instances/filters", instance_filters),
    route("reboot", "PUT", rf"/api/v0/instances/reboot/{_INT}", reboot),
    route("recycle", "PUT", rf"/api/v0/instances/recycle/{_INT}", recycle),
    route("logs_request", "PUT", rf"/api/v0/instances/request_logs/{_INT}", logs_request),
    route("show", "GET", rf"/api/v0/instances/{_INT}", show),
    route("manage", "PUT", rf"/api/v0/instances/{_INT}", manage),
    route("destroy", "DELETE", rf"/api/v0/instances/{_INT}", destroy),
    route("template_get", "GET", r"/api/v0/template", template_get),
    route("template_post", "POST", r"/api/v0/template", template_post),
    route("template_put", "PUT", r"/api/v0/template", template_put_v0),
    route("template_put", "PUT", r"/api/v1/template", template_put_v1),
    route("template_delete", "DELETE", r"/api/v0/template", template_delete),
    route("logs_result", "GET", r"/logs-result/(?P<token>[0-9A-Za-z_-]+)\.log", logs_result, auth="none"),
]
