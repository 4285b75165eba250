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
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from provisioner import asgi, status

if TYPE_CHECKING:
    from provisioner.daemon import Runtime

#: the loop counts as stuck when it has not come round for this long (seconds)
STALL_AFTER_S = 300.0


def health(runtime: Runtime, now: float) -> tuple[bool, str]:
    """Liveness: the loop came round recently and nginx is running."""
    nginx = runtime.nginx
    if nginx is None or not nginx.is_running:
        return False, "nginx is not running"
    interval = max(runtime.settings.reconcile_interval_seconds * 3, STALL_AFTER_S)
    if runtime.loop_heartbeat_at and now - runtime.loop_heartbeat_at > interval:
        return False, f"the reconcile loop has not run for {now - runtime.loop_heartbeat_at:.0f}s"
    return True, "ok"


def readiness(runtime: Runtime) -> tuple[bool, str]:
    """Readiness: a healthy upstream is being served."""
    if runtime.stopping:
        return False, "shutting down"
    rec = runtime.reconciler
    if rec is None:
        return False, "starting"
    if runtime.nginx is None or not runtime.nginx.is_running:
        return False, "nginx is not running"
    view = rec.view()
    serving = view.serving
    if serving is None:
        return False, str(view.unserve_reason)
    if view.serving_healthy is False:
        return False, "upstream failing its health check"
    return True, "ok"


def create_app(runtime: Runtime) -> Starlette:
    async def healthz(request: Request) -> JSONResponse:
        ok, reason = health(runtime, time.time())
        return JSONResponse({"status": "ok" if ok else "unhealthy", "reason": reason}, 200 if ok else 503)

    async def readyz(request: Request) -> JSONResponse:
        ok, reason = readiness(runtime)
        rec = runtime.reconciler
        body: dict[str, Any] = {"status": "ready" if ok else "not-ready", "reason": reason}
        serving = rec.view().serving if rec is not None else None
        if serving is not None:
            body["instance_id"] = serving.id
        return JSONResponse(body, 200 if ok else 503)

    async def metrics(request: Request) -> Response:
        registry = runtime.metrics.registry if runtime.metrics is not None else None
        if registry is None:
            return Response("no metrics yet\n", 503, media_type="text/plain")
        return Response(generate_latest(registry), 200, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status_json(request: Request) -> JSONResponse:
        now = time.time()
        report = status.snapshot(runtime, ready=readiness(runtime), health=health(runtime, now), now=now)
        return JSONResponse(report)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/status", status_json),
        ]
    )


async def start(runtime: Runtime, host: str, port: int) -> tuple[asgi.EmbeddedServer, asyncio.Task[None]]:
    sock = asgi.bind_socket(host, port)
    return await asgi.start_server(create_app(runtime), sock)


async def stop(handle: tuple[asgi.EmbeddedServer, asyncio.Task[None]]) -> None:
    await asgi.stop_server(*handle)
