"""Test knobs on the request path: queued faults, Vast-like rate limits and the request log.

Fault kinds (one fault answers one request; `count` requests in all, `count <= 0` means forever):
  answered without touching the world:
    429_text        429 text/plain "API requests too frequent endpoint threshold=…"
    429_json        429 {"detail": "API requests too frequent endpoint threshold=…"}
    429_rate_limit  429 {"success": false, "error": "rate_limit_exceeded", "msg": …}
    search_quota    429 {"error": "search_quota_exceeded", …} with X-RateLimit-Reset (next UTC midnight)
    5xx             `status` (default 503): 500 as JSON, others as an nginx-style HTML page
    timeout         hold the request `delay_s` (default 30 s), then 504; nothing happens
    auth_error      `status` (default: the configured auth failure status) with the auth_error body
    error           `status` (default 400) {"success": false, "error": "injected_error", "msg": …}
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
`retry_after` adds a Retry-After header to the answer of any fault but `latency`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response

PRE_KINDS = frozenset(
    {"429_text", "429_json", "429_rate_limit", "search_quota", "5xx", "timeout", "auth_error", "error"}
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
FAULT_KINDS = PRE_KINDS | POST_KINDS | WORLD_KINDS | {"latency"}
# Endpoint name -> (calls allowed, per seconds): minimum intervals from vast-api.md §2.3; search is 10/minute.
RATE_RULES: dict[str, tuple[int, float]] = {
    "search": (10, 60.0),
    "rent": (1, 4.5),
    "list": (1, 1.0),
    "show": (1, 2.0),
    "destroy": (1, 3.0),
    "manage": (1, 1.0),
    "reboot": (1, 1.0),
    "recycle": (1, 1.0),
    "template_get": (1, 3.0),
}
_HTML_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Temporarily Unavailable",
                 504: "Gateway Time-out"}  # fmt: skip
AUTH_ERROR_BODY = {"success": False, "error": "auth_error", "msg": "Invalid user key"}


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer with `Content-Type: application/json` exactly (the real CLI compares the string)."""
    return Response(json.dumps(payload).encode(), status, headers, media_type="application/json")


def threshold_text(endpoint: str) -> str:
    """The `threshold=` figure Vast prints for an endpoint."""
    calls, period = RATE_RULES.get(endpoint, (1, 1.0))
    return f"{period / calls:g}"


@dataclass
class Fault:
    """One queued fault."""

    endpoint: str
    kind: str
    count: int = 1
    status: int | None = None
    retry_after: float | None = None
    delay_s: float | None = None

    @classmethod
    def from_json(cls, raw: Any) -> Fault:
        """Validate a `POST /_sim/faults` item; raises ValueError."""
        if not isinstance(raw, dict):
            raise ValueError("a fault must be a JSON object")
        unknown = set(raw) - {"endpoint", "kind", "count", "status", "retry_after", "delay_s"}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        kind = raw.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
        endpoint = raw.get("endpoint", "*")
        if not isinstance(endpoint, str) or not endpoint:
            raise ValueError("endpoint must be an endpoint name or '*'")
        count, status = raw.get("count", 1), raw.get("status")
        if not isinstance(count, int) or isinstance(count, bool):
            raise ValueError("count must be an integer")
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            raise ValueError("status must be an HTTP status code")
        for name in ("retry_after", "delay_s"):
            value = raw.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ValueError(f"{name} must be a non-negative number")
        retry_after, delay_s = raw.get("retry_after"), raw.get("delay_s")
        return cls(endpoint, kind, count, status, retry_after, delay_s)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    def take(self, endpoint: str) -> Fault | None:
        """The first fault for `endpoint` (or `*`), used up by this call."""
        for fault in self._faults:
            if fault.endpoint in (endpoint, "*"):
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
    text = f"API requests too frequent endpoint threshold={threshold_text(endpoint)}"
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
    if fault.kind == "error":
        body = {"success": False, "error": "injected_error", "msg": "injected failure"}
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


class RateLimiter:
    """Per identity and endpoint: at most `calls` per `period` seconds (scaled by the config)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], deque[float]] = {}

    def allow(self, identity: str, endpoint: str, scale: float, now: float | None = None) -> bool:
        """Record the call and say whether it is within the limit (rejected calls are not counted)."""
        rule = RATE_RULES.get(endpoint)
        if rule is None:
            return True
        calls, period = rule[0], rule[1] * scale
        now = time.monotonic() if now is None else now
        seen = self._seen.setdefault((identity, endpoint), deque())
        while seen and now - seen[0] >= period:
            seen.popleft()
        if len(seen) >= calls:
            return False
        seen.append(now)
        return True


class RequestLog:
    """What the sim was asked: method, path, endpoint name, status, time (bounded)."""

    def __init__(self, size: int = 20_000) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)

    def record(self, method: str, path: str, endpoint: str, status: int, query: str) -> None:
        self._entries.append(
            {
                "method": method,
                "path": path,
                "endpoint": endpoint,
                "status": status,
                "ts": time.time(),
                "query": query,
            }
        )

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries)

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for entry in self._entries:
            result[entry["endpoint"]] = result.get(entry["endpoint"], 0) + 1
        return result

    def clear(self) -> None:
        self._entries.clear()
