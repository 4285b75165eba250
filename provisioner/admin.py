"""The admin HTTP server on ``ADMIN_PORT``: probes, metrics and status.

``/healthz`` says the process is healthy: the reconcile loop is ticking and
nginx runs. It stays 200 while an instance boots, so a slow rental never gets
the pod killed. ``/readyz`` says a healthy upstream is being served; 503 with
the reason otherwise (the health loop turns it 503 within
``HEALTH_INTERVAL_SECONDS`` when the served instance stops answering).
``/metrics`` is the Prometheus text format of the process's own registry
(``provisioner.metrics``); ``/status`` is the JSON report ``provisioner status``
shows. Served by starlette + uvicorn inside the daemon's loop.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from provisioner import asgi, runtime
from provisioner.runtime import Runtime


def create_app(state: Runtime, registry: CollectorRegistry | None) -> Starlette:
    """The four routes over ``state`` (read at each request) and the process's metrics ``registry``."""

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


async def start(
    state: Runtime, registry: CollectorRegistry | None, host: str, port: int
) -> tuple[asgi.EmbeddedServer, asyncio.Task[None]]:
    """Bind ``host:port`` (``OSError`` when taken) and serve the admin app in this loop."""
    sock = asgi.bind_socket(host, port)
    return await asgi.start_server(create_app(state, registry), sock)


async def stop(handle: tuple[asgi.EmbeddedServer, asyncio.Task[None]]) -> None:
    await asgi.stop_server(*handle)
