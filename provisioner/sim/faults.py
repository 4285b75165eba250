"""Test knobs on the request path: queued faults, and the answers they give.

Fault kinds (one fault answers one request; `count` requests in all, `count <= 0` means forever):
  answered without touching the world:
    429_text        429 text/plain "API requests too frequent: endpoint threshold=…"
    429_json        429 {"detail": "API requests too frequent endpoint threshold=…"}
    429_rate_limit  429 {"success": false, "error": "rate_limit_exceeded", "msg": …}
    search_quota    429 {"error": "search_quota_exceeded", …} with X-RateLimit-Reset (next UTC midnight)
    5xx             `status` (default 503): 500 as JSON, others as an nginx-style HTML page
    timeout         hold the request `delay_s` (default 30 s), then 504; nothing happens
    auth_error      `status` (default: the configured auth failure status; 401, 403 or 404) with the
                    auth_error body; the key stays valid for the next request
    edge_403        403 text/html "Access denied" page, as an edge proxy in front of the API answers
    error           `status` (default 400) {"success": false, "error": "injected_error", "msg": …}, or
                    `body` (a JSON object: a documented answer, e.g. 404 {"msg": "no_such_ask", ...})
  the world changes first:
    offer_taken     (rent) someone else rents the offer just before this request: 404 no_such_ask
  delayed:
    latency         sleep `delay_s` (default 1 s), then answer normally
  the request takes effect, then the answer is spoiled:
    succeeds_then_5xx, rent_succeeds_then_5xx            `status` (default 502) HTML page
    succeeds_then_timeout, rent_succeeds_then_timeout    hold `delay_s` (default 30 s), then 504
    malformed            200 with the JSON body cut in half
    list_null            200 with `instances` / `offers` / `templates` set to null
    wrong_content_type   the same body as `application/json; charset=utf-8`
  instance rows of a 200 list or show answer are spoiled (rowfaults.py; used up only by an answer
  holding a targeted row, or by any answer when the fault targets none):
    row_incomplete  the rows get `patch` (default: public_ipaddr, ports and actual_status null) and lose
                    the keys in `drop` (e.g. ["ports"])
    row_missing     the rows are left out (list: an empty page when every row goes; show: null)
Targets: `instance_id` picks the rows of that instance (row kinds) or requests naming it in the path
(other kinds); `label` picks rows with exactly that label (row kinds only).
`retry_after` adds a Retry-After header to the answer of any fault but `latency` and the row kinds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response

from provisioner.sim.ratelimits import RATE_RULES, threshold_figure

PRE_KINDS = frozenset(
    {
        "429_text",
        "429_json",
        "429_rate_limit",
        "search_quota",
        "5xx",
        "timeout",
        "auth_error",
        "edge_403",
        "error",
    }
)
POST_KINDS = frozenset(
    {
        "succeeds_then_5xx",
        "rent_succeeds_then_5xx",
        "succeeds_then_timeout",
        "rent_succeeds_then_timeout",
        "malformed",
        "list_null",
        "wrong_content_type",
    }
)
#: the world changes first: someone else rents the offer named in the rent request
WORLD_KINDS = frozenset({"offer_taken"})
#: instance rows of the answer are spoiled (rowfaults.py)
ROW_KINDS = frozenset({"row_incomplete", "row_missing"})
FAULT_KINDS = PRE_KINDS | POST_KINDS | WORLD_KINDS | ROW_KINDS | {"latency"}
#: what `row_incomplete` does when given neither `patch` nor `drop`
DEFAULT_ROW_PATCH: dict[str, Any] = {"public_ipaddr": None, "ports": None, "actual_status": None}
_FIELDS = frozenset(
    {
        "endpoint",
        "kind",
        "count",
        "status",
        "retry_after",
        "delay_s",
        "instance_id",
        "label",
        "patch",
        "drop",
        "body",
    }
)
_HTML_REASONS = {403: "Forbidden", 500: "Internal Server Error", 502: "Bad Gateway",
                 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}  # fmt: skip
AUTH_ERROR_BODY = {"success": False, "error": "auth_error", "msg": "Invalid user key"}


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer with `Content-Type: application/json` exactly (the real CLI compares the string)."""
    return Response(json.dumps(payload).encode(), status, headers, media_type="application/json")


def threshold_text(endpoint: str) -> str:
    """The `threshold=` figure Vast prints for an endpoint (its production interval)."""
    rule = RATE_RULES.get(endpoint)
    return threshold_figure(rule.threshold_s if rule is not None else 1.0)


@dataclass
class Fault:
    """One queued fault."""

    endpoint: str
    kind: str
    count: int = 1
    status: int | None = None
    retry_after: float | None = None
    delay_s: float | None = None
    instance_id: int | None = None
    label: str | None = None
    patch: dict[str, Any] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)
    #: the `error` kind's answer body (None: the generic injected_error one)
    body: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, raw: Any) -> Fault:
        """Validate a `POST /_sim/faults` item; raises ValueError."""
        if not isinstance(raw, dict):
            raise ValueError("a fault must be a JSON object")
        unknown = set(raw) - _FIELDS
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        kind = raw.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
        endpoint = raw.get("endpoint", "*")
        if not isinstance(endpoint, str) or not endpoint:
            raise ValueError("endpoint must be an endpoint name or '*'")
        count, status = raw.get("count", 1), raw.get("status")
        if not _is_int(count):
            raise ValueError("count must be an integer")
        if status is not None and (not _is_int(status) or not 100 <= status <= 599):
            raise ValueError("status must be an HTTP status code")
        for name in ("retry_after", "delay_s"):
            value = raw.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ValueError(f"{name} must be a non-negative number")
        fault = cls(endpoint, kind, count, status, raw.get("retry_after"), raw.get("delay_s"))
        _set_targets(fault, raw)
        body = raw.get("body")
        if body is not None and (kind != "error" or not isinstance(body, dict)):
            raise ValueError("body is a JSON object, for the error kind only")
        fault.body = body
        return fault

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def names(self, path_id: int | None) -> bool:
        """Whether a request for instance `path_id` (None: no instance in its path) may use this fault."""
        return self.instance_id is None or self.instance_id == path_id


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _set_targets(fault: Fault, raw: dict[str, Any]) -> None:
    """Validate and set `instance_id`, `label`, `patch` and `drop` (the last three for row kinds only)."""
    instance_id, label = raw.get("instance_id"), raw.get("label")
    patch, drop = raw.get("patch"), raw.get("drop")
    if instance_id is not None and not _is_int(instance_id):
        raise ValueError("instance_id must be an integer")
    if fault.kind not in ROW_KINDS and (label, patch, drop) != (None, None, None):
        raise ValueError(f"label, patch and drop are for the row kinds {sorted(ROW_KINDS)} only")
    if label is not None and not isinstance(label, str):
        raise ValueError("label must be a string")
    if patch is not None and not isinstance(patch, dict):
        raise ValueError("patch must be an object of field -> value")
    if drop is not None and (not isinstance(drop, list) or not all(isinstance(k, str) for k in drop)):
        raise ValueError("drop must be a list of field names")
    if fault.kind == "row_missing" and (patch or drop):
        raise ValueError("row_missing takes no patch or drop")
    fault.instance_id, fault.label = instance_id, label
    fault.patch = dict(patch or {})
    fault.drop = list(drop or [])
    if fault.kind == "row_incomplete" and not fault.patch and not fault.drop:
        fault.patch = dict(DEFAULT_ROW_PATCH)


class FaultQueue:
    """Faults waiting for their endpoint, first queued first used."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    def pending(self) -> list[dict[str, Any]]:
        return [f.as_dict() for f in self._faults]

    def take(self, endpoint: str, path_id: int | None = None) -> Fault | None:
        """The first request fault for `endpoint` (or `*`) and this request's instance, used up."""
        return self._take(lambda f: f.kind not in ROW_KINDS and f.names(path_id), endpoint)

    def take_rows(self, endpoint: str, applies: Callable[[Fault], bool]) -> Fault | None:
        """The first row fault for `endpoint` (or `*`) that `applies` to the answer, used up by this call."""
        return self._take(lambda f: f.kind in ROW_KINDS and applies(f), endpoint)

    def _take(self, wanted: Callable[[Fault], bool], endpoint: str) -> Fault | None:
        for fault in self._faults:
            if fault.endpoint in (endpoint, "*") and wanted(fault):
                if fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                return fault
        return None


def _retry_headers(fault: Fault) -> dict[str, str]:
    return {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}


def html_error(status: int, headers: dict[str, str] | None = None) -> Response:
    """The nginx-style error page a gateway returns for 5xx."""
    reason = _HTML_REASONS.get(status, "Error")
    title = f"{status} {reason}"
    page = f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
    page += "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    return Response(page.encode(), status, headers, media_type="text/html")


def rate_limited(endpoint: str, headers: dict[str, str] | None = None) -> Response:
    """Vast's plain-text 429."""
    text = f"API requests too frequent: endpoint threshold={threshold_text(endpoint)}"
    return Response(text.encode(), 429, headers, media_type="text/plain")


async def answer_before(fault: Fault, endpoint: str, auth_status: int) -> Response | None:
    """The answer of a fault that replaces the request (None: go on; `latency` sleeps first)."""
    headers = _retry_headers(fault)
    msg = f"API requests too frequent endpoint threshold={threshold_text(endpoint)}"
    if fault.kind == "latency":
        await asyncio.sleep(fault.delay_s if fault.delay_s is not None else 1.0)
        return None
    if fault.kind == "429_text":
        return rate_limited(endpoint, headers)
    if fault.kind == "429_json":
        return json_response({"detail": msg}, 429, headers)
    if fault.kind == "429_rate_limit":
        return json_response({"success": False, "error": "rate_limit_exceeded", "msg": msg}, 429, headers)
    if fault.kind == "search_quota":
        midnight = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        headers["X-RateLimit-Reset"] = str(int(midnight.timestamp()))
        body = {"success": False, "error": "search_quota_exceeded", "msg": "Daily search quota exceeded"}
        return json_response(body, 429, headers)
    if fault.kind == "5xx":
        status = fault.status or 503
        if status == 500:
            body = {"success": False, "error": "server_error", "msg": "Internal Server Error"}
            return json_response(body, 500, headers)
        return html_error(status, headers)
    if fault.kind == "timeout":
        await asyncio.sleep(fault.delay_s if fault.delay_s is not None else 30.0)
        return html_error(504, headers)
    if fault.kind == "auth_error":
        return json_response(AUTH_ERROR_BODY, fault.status or auth_status, headers)
    if fault.kind == "edge_403":
        return html_error(403, headers)
    if fault.kind == "error":
        body = fault.body or {"success": False, "error": "injected_error", "msg": "injected failure"}
        return json_response(body, fault.status or 400, headers)
    return None


async def spoil_after(fault: Fault, response: Response) -> Response:
    """The answer of a fault that lets the request take effect, then spoils its reply."""
    headers = _retry_headers(fault)
    if fault.kind in ("succeeds_then_5xx", "rent_succeeds_then_5xx"):
        return html_error(fault.status or 502, headers)
    if fault.kind in ("succeeds_then_timeout", "rent_succeeds_then_timeout"):
        await asyncio.sleep(fault.delay_s if fault.delay_s is not None else 30.0)
        return html_error(504, headers)
    body = bytes(response.body)
    if fault.kind == "malformed":
        return Response(body[: len(body) // 2], 200, headers, media_type="application/json")
    if fault.kind == "wrong_content_type":
        return Response(body, response.status_code, headers, media_type="application/json; charset=utf-8")
    if fault.kind == "list_null":
        try:
            payload = json.loads(body)
        except ValueError:
            return response
        if isinstance(payload, dict):
            for key in ("instances", "offers", "templates"):
                if key in payload:
                    payload[key] = None
        return json_response(payload, 200, headers)
    return response
