"""The simulated Vast.ai as an ASGI app, and the ways to run it (in-process, on a port, as a command).

Every request goes through one pipeline: match the route (with or without the trailing slash; 404 or 405
as JSON otherwise) → advance the state machine → a queued fault may answer instead → rate limits (when
enabled; ratelimits.py) → auth (Bearer header or `?api_key=`) → JSON body (`{}` when empty; 400 "Invalid
json body") → the handler → a row fault may spoil instance rows (rowfaults.py) → a fault may spoil the
answer → the request log. `/_sim/` admin routes skip all but the handler.

    create_app(config) -> Starlette            serve with any ASGI server; the lifespan runs the ticker
    running_sim(config) -> (app, runtime)      in-process use with httpx.ASGITransport (no lifespan there)
    serving_sim(config, host, port)            served by uvicorn in the caller's loop -> (base_url, runtime)
    serve(config, host, port) / run_sim(...)   the `provisioner sim` command (SIGINT/SIGTERM stop it cleanly)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from provisioner.asgi import EmbeddedServer, bind_socket
from provisioner.sim import ratelimits
from provisioner.sim.admin import ADMIN_ROUTES
from provisioner.sim.config import SimConfig
from provisioner.sim.faults import (
    AUTH_ERROR_BODY,
    POST_KINDS,
    WORLD_KINDS,
    answer_before,
    json_response,
    spoil_after,
)
from provisioner.sim.routes import API_ROUTES
from provisioner.sim.rowfaults import spoil_rows
from provisioner.sim.runtime import SimRuntime
from provisioner.sim.state import Clock
from provisioner.sim.wire import ApiError, Call, RouteSpec, invalid_request
from provisioner.sim.workload import server_config

__all__ = ["SimConfig", "SimRuntime", "create_app", "main", "run_sim", "running_sim", "serve", "serving_sim"]

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: endpoints whose path `{id}` is an instance id (a fault's `instance_id` matches it)
_INSTANCE_ENDPOINTS = frozenset({"show", "manage", "destroy", "reboot", "recycle", "logs_request"})


def _api_key(request: Request) -> str | None:
    """The key a request carries: `Authorization: Bearer …`, else `?api_key=`."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and header[7:].strip():
        return header[7:].strip()
    return request.query_params.get("api_key") or None


def _no_route(request: Request, allowed: set[str]) -> Response:
    """404 (an HTML page) for an unknown path, 405 (with Allow) for a known path and another method."""
    if allowed:
        body = {"success": False, "error": "method_not_allowed", "msg": "Method Not Allowed"}
        return json_response(body, 405, {"Allow": ", ".join(sorted(allowed))})
    # a web server's page, not an API answer: a client path gone wrong must fail, not read as "this
    # instance is gone" (a JSON 404 is one of the ways Vast says that)
    return Response(f"<h1>Not Found</h1><p>{request.url.path}</p>", 404, media_type="text/html")


class Dispatcher:
    """The request pipeline over the route table."""

    def __init__(self, runtime: SimRuntime, routes: Sequence[RouteSpec]) -> None:
        self.runtime = runtime
        self.routes = list(routes)

    def _match(self, method: str, path: str) -> tuple[RouteSpec | None, dict[str, str], set[str]]:
        allowed: set[str] = set()
        for spec in self.routes:
            found = spec.pattern.fullmatch(path)
            if found is None:
                continue
            if method in spec.methods:
                return spec, found.groupdict(), allowed
            allowed |= spec.methods
        return None, {}, allowed

    async def dispatch(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        spec, params, allowed = self._match(request.method, path)
        if spec is None:
            response = _no_route(request, allowed)
            self._log(request, "unknown", response)
            return response
        if spec.admin:
            return await self._handle(spec, request, params)
        self.runtime.state.tick()
        response = await self._api(spec, request, params)
        self._log(request, spec.endpoint, response)
        return response

    async def _api(self, spec: RouteSpec, request: Request, params: dict[str, str]) -> Response:
        """Faults, rate limits, auth and the handler, in that order."""
        path_id = params.get("id", "")
        fault = self.runtime.faults.take(
            spec.endpoint,
            int(path_id) if path_id.isdigit() and spec.endpoint in _INSTANCE_ENDPOINTS else None,
        )
        if fault is not None and fault.kind in WORLD_KINDS and "id" in params:
            with contextlib.suppress(KeyError, ValueError):
                self.runtime.state.take_offer(int(params["id"]))
        elif fault is not None and fault.kind not in POST_KINDS:
            early = await answer_before(fault, spec.endpoint, self.runtime.config.auth_failure_status)
            if early is not None:
                return early
        client_ip = request.client.host if request.client else "-"
        limited = self.runtime.limits.enforce(
            self.runtime.config, spec.endpoint, _api_key(request), client_ip, self.runtime.clock()
        )
        if limited is not None:
            return limited
        response = spoil_rows(self.runtime.faults, spec.endpoint, await self._handle(spec, request, params))
        if fault is not None and fault.kind in POST_KINDS and response.status_code < 400:
            response = await spoil_after(fault, response)
        return response

    async def _handle(self, spec: RouteSpec, request: Request, params: dict[str, str]) -> Response:
        key = _api_key(request)
        if spec.auth != "none" and (key is not None or spec.auth == "required"):
            expected = self.runtime.config.api_key
            if key is None or (expected is not None and key != expected):
                return json_response(AUTH_ERROR_BODY, self.runtime.config.auth_failure_status)
        body: dict[str, Any] = {}
        if request.method in _BODY_METHODS:
            raw = await request.body()
            if raw.strip():
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
                if not isinstance(parsed, dict):
                    return invalid_request("Invalid json body")
                body = parsed
        try:
            return await spec.handler(Call(self.runtime, request, params, body, key))
        except ApiError as exc:
            return exc.response

    def _log(self, request: Request, endpoint: str, response: Response) -> None:
        self.runtime.requests.record(
            request.method, request.url.path, endpoint, response.status_code, request.url.query
        )


def create_app(config: SimConfig | None = None, *, runtime: SimRuntime | None = None) -> Starlette:
    """The simulated Vast.ai; `app.state.runtime` is its `SimRuntime`."""
    sim = runtime or SimRuntime(config or SimConfig())
    dispatcher = Dispatcher(sim, [*ADMIN_ROUTES, *API_ROUTES])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sim.start()
        try:
            yield
        finally:
            await sim.stop()

    app = Starlette(routes=[Route("/{path:path}", dispatcher.dispatch, methods=_METHODS)], lifespan=lifespan)
    app.state.runtime = sim
    return app


@contextlib.asynccontextmanager
async def running_sim(
    config: SimConfig | None = None, *, clock: Clock | None = None
) -> AsyncIterator[tuple[Starlette, SimRuntime]]:
    """The app and its runtime, ticking in this loop, for `httpx.ASGITransport(app=app)`; cleans up after."""
    runtime = SimRuntime(config or SimConfig(), clock)
    app = create_app(runtime=runtime)
    await runtime.start()
    try:
        yield app, runtime
    finally:
        await runtime.stop()


@contextlib.asynccontextmanager
async def serving_sim(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[str, SimRuntime]]:
    """The sim served over real HTTP by uvicorn in this loop; yields its base URL and runtime."""
    runtime = SimRuntime(config or SimConfig())
    sock = bind_socket(host, port)
    server = EmbeddedServer(server_config(create_app(runtime=runtime), lifespan="on", ws="none"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="sim-api")
    try:
        while not server.started:
            if task.done():
                await task
                raise RuntimeError("the simulated Vast.ai stopped while starting")
            await asyncio.sleep(0.01)
        yield f"http://{_url_host(host)}:{sock.getsockname()[1]}", runtime
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)
        sock.close()
        await runtime.stop()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM (a second one skips the graceful wait); prints one line when listening."""
    runtime = SimRuntime(config)
    sock = bind_socket(host, port)
    server = EmbeddedServer(server_config(create_app(runtime=runtime), lifespan="on", ws="none"))
    loop = asyncio.get_running_loop()

    def request_exit() -> None:
        server.force_exit = server.should_exit
        server.should_exit = True

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, request_exit)
            installed.append(sig)
    print(f"simulated Vast.ai listening on http://{_url_host(host)}:{sock.getsockname()[1]}", flush=True)
    try:
        await server.serve(sockets=[sock])
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        sock.close()
        await runtime.stop()


def run_sim(host: str, port: int, config: SimConfig) -> None:
    """Blocking: serve the simulated Vast.ai on host:port until SIGINT or SIGTERM."""
    asyncio.run(serve(config, host, port))


def _parser(default_port: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="provisioner sim", description="Serve a simulated Vast.ai API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port, help=f"default {default_port}")
    parser.add_argument("--boot-delay", type=float, default=SimConfig.boot_delay_s, help="seconds to running")
    parser.add_argument("--seed", type=int, default=SimConfig.seed)
    parser.add_argument("--num-offers", type=int, default=SimConfig.num_offers)
    parser.add_argument(
        "--rate-limits", action="store_true", help="answer 429 like Vast's per-endpoint limits"
    )
    parser.add_argument("--rate-limit-scale", type=float, default=1.0, help="multiply every interval")
    parser.add_argument(
        "--rate-limit-override",
        action="append",
        default=[],
        metavar="ENDPOINT=SECONDS",
        help="one endpoint's interval (0: no limit); repeatable",
    )
    parser.add_argument(
        "--rate-limit-body",
        default=SimConfig.rate_limit_body,
        choices=sorted(ratelimits.BODY_MODES),
        help="the 429 body form",
    )
    parser.add_argument("--rate-limit-retry-after", action="store_true", help="send Retry-After with 429s")
    parser.add_argument("--rate-limit-penalties", action="store_true", help="model create's penalty 12")
    parser.add_argument("--api-key", default=None, help="require exactly this key (default: accept any)")
    parser.add_argument("--public-ip", default=SimConfig.public_ip, help="address reported in public_ipaddr")
    parser.add_argument("--workload-host", default=SimConfig.workload_host, help="where workloads listen")
    return parser


def _overrides(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, float]:
    result: dict[str, float] = {}
    for item in items:
        endpoint, _, seconds = item.partition("=")
        try:
            result[endpoint.strip()] = float(seconds)
        except ValueError:
            parser.error(f"--rate-limit-override wants ENDPOINT=SECONDS, got {item!r}")
    return result


def main(argv: Sequence[str] | None = None, *, default_port: int = 18765) -> int:
    """`python -m provisioner.sim --port N [--boot-delay S] [--seed N] [--rate-limits …] [--api-key K]`."""
    parser = _parser(default_port)
    args = parser.parse_args(argv)
    try:
        config = SimConfig(
            seed=args.seed,
            num_offers=args.num_offers,
            boot_delay_s=args.boot_delay,
            api_key=args.api_key,
            public_ip=args.public_ip,
            rate_limits=args.rate_limits,
            rate_limit_scale=args.rate_limit_scale,
            rate_limit_overrides=_overrides(parser, args.rate_limit_override),
            rate_limit_body=args.rate_limit_body,
            rate_limit_retry_after=args.rate_limit_retry_after,
            rate_limit_penalties=args.rate_limit_penalties,
            workload_host=args.workload_host,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        run_sim(args.host, args.port, config)
    except OSError as exc:  # the address is taken (or not ours): one line naming it, exit 1
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        where = f"{args.host}:{args.port}"
        print(f"{parser.prog}: --port: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
