"""What a route handler sees and returns: the `Call`, the route table entry, and Vast's error answers."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from provisioner.sim.faults import json_response
from provisioner.sim.runtime import SimRuntime


class ApiError(Exception):
    """Raised by a handler to answer at once with `response`."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


@dataclass
class Call:
    """One API request, parsed: path parameters, JSON body (`{}` when absent) and the caller's key."""

    runtime: SimRuntime
    request: Request
    params: dict[str, str]
    body: dict[str, Any]
    identity: str | None

    def query(self, name: str) -> str | None:
        """A form-decoded query parameter (`+` is a space)."""
        return self.request.query_params.get(name)

    def int_param(self, name: str, error: str = "invalid_args") -> int:
        """A numeric path parameter, or a 400 in Vast's shape."""
        raw = self.params.get(name, "")
        if not raw.isdigit():
            raise ApiError(vast_error(400, error, f"invalid {name}: {raw!r}"))
        return int(raw)


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class RouteSpec:
    """A route: endpoint name (for faults, limits and the request log), methods, path regex, handler."""

    endpoint: str
    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler
    auth: str = "required"  # "required", "optional" (checked only when a key is sent) or "none"
    admin: bool = False


def route(
    endpoint: str, methods: str, path: str, handler: Handler, *, auth: str = "required", admin: bool = False
) -> RouteSpec:
    """A route whose `path` is a regex without the trailing slash (both forms are accepted)."""
    return RouteSpec(endpoint, frozenset(methods.split()), re.compile(path), handler, auth, admin)


def vast_error(status: int, error: str, msg: str, **extra: Any) -> Response:
    """Vast's usual error body `{"success": false, "error": …, "msg": …}`."""
    return json_response({"success": False, "error": error, "msg": msg, **extra}, status)


def invalid_request(msg: str, error: str = "invalid_request") -> Response:
    """The 400 of search and list (`{"error": "invalid_request", "msg": …}`, no `success`)."""
    return json_response({"error": error, "msg": msg}, 400)
