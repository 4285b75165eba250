"""The admin HTTP server on ``ADMIN_PORT``: probes, metrics and status.

``/healthz`` says the process is healthy: the reconcile loop is ticking and
nginx runs. It stays 200 while an instance boots, so a slow rental never gets
the pod killed. ``/readyz`` says a healthy upstream is being served; 503 with
the reason otherwise (the health loop turns it 503 within
``HEALTH_INTERVAL_SECONDS`` when the served instance stops answering).
``/metrics`` is the Prometheus text format of the process's own registry
(``provisioner.metrics``); ``/status`` is the JSON report ``provisioner status``
shows. Served by starlette + uvicorn inside the daemon's loop, loaded only when the
port starts serving (``AdminPort``): the first Vast calls of a start do not wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import socket
import time
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from provisioner import errors, listen, runtime
from provisioner.runtime import Runtime

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request

    from provisioner import asgi


def create_app(state: Runtime, registry: CollectorRegistry | None) -> Starlette:
    """The four routes over ``state`` (read at each request) and the process's metrics ``registry``."""
    from starlette.applications import Starlette  # noqa: PLC0415 - loaded when serving starts
    from starlette.responses import JSONResponse, Response  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    async def healthz(request: Request) -> JSONResponse:
        ok, reason = runtime.health(state, time.time())
        return JSONResponse({"status": "ok" if ok else "unhealthy", "reason": reason}, 200 if ok else 503)

    async def readyz(request: Request) -> JSONResponse:
        ok, reason = runtime.readiness(state)
        view = state.view()
        body: dict[str, object] = {"status": "ready" if ok else "not-ready", "reason": reason}
        if view is not None and view.serving is not None:
            body["instance_id"] = view.serving.id
        return JSONResponse(body, 200 if ok else 503)

    async def metrics(request: Request) -> Response:
        if registry is None:
            return Response("no metrics yet\n", 503, media_type="text/plain")
        return Response(generate_latest(registry), 200, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status_json(request: Request) -> JSONResponse:
        return JSONResponse(runtime.snapshot(state, time.time()))

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/status", status_json),
        ]
    )


def _load_server() -> None:
    """Import uvicorn and starlette (what `create_app` and `AdminPort` use)."""
    for name in ("provisioner.asgi", "starlette.applications", "starlette.responses", "starlette.routing"):
        importlib.import_module(name)


#: getaddrinfo's answers that the name itself is wrong (no such name, no IPv4 address for it)
_NO_SUCH_NAME = frozenset(
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY") if hasattr(socket, name)
)


class AdminPort:
    """``ADMIN_PORT``, bound at once (a taken port ends the start before any Vast call) and served a
    moment later (`serve_after`); a probe that comes in between waits in the socket's backlog. It
    serves `create_app` over ``state`` and ``registry``."""

    def __init__(self, host: str, port: int, state: Runtime, registry: CollectorRegistry | None) -> None:
        self.host, self.port = host, port
        self.state, self.registry = state, registry
        try:
            self.sock = listen.bind_socket(host, port)
        except OSError as exc:
            raise self._host_error(exc) or self._error(exc) from None
        self.handle: tuple[asgi.EmbeddedServer, asyncio.Task[None]] | None = None

    def _host_error(self, exc: OSError) -> errors.ConfigError | None:
        """``ADMIN_HOST``'s fault (exit 2): a name that does not resolve, an address not on this machine."""
        if isinstance(exc, socket.gaierror) and exc.errno in _NO_SUCH_NAME:  # EAI_AGAIN may pass: exit 1
            return errors.ConfigError("ADMIN_HOST", f"cannot resolve {self.host!r}: {exc.strerror or exc}")
        if exc.errno == errno.EADDRNOTAVAIL:
            return errors.ConfigError("ADMIN_HOST", f"{self.host} is not an address of this machine")
        return None

    def _error(self, exc: OSError) -> errors.AdminServerError:
        return errors.AdminServerError(self.host, self.port, exc.strerror or str(exc))

    async def serve_after(self, ready: asyncio.Event, within_s: float) -> None:
        """Serve once ``ready`` is set, at the latest after ``within_s``: loading uvicorn and starlette
        (~0.1 s of CPU) then does not hold back what ``ready`` waits for (the first tick's Vast calls)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await ready.wait()
        # loaded on a thread: the loop keeps turning (a paced call is not held 0.1 s past its slot)
        await asyncio.to_thread(_load_server)
        from provisioner import asgi  # noqa: PLC0415 - loaded just now

        try:
            self.handle = await asgi.start_server(create_app(self.state, self.registry), self.sock)
        except OSError as exc:
            raise self._error(exc) from None

    async def close(self) -> None:
        """Stop serving (when it started) and close the port."""
        if self.handle is not None:
            from provisioner import asgi  # noqa: PLC0415 - loaded already: it started the server

            await asgi.stop_server(*self.handle)
        self.sock.close()
