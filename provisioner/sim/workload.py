"""The GPU workload: a real HTTP server per running instance, inside the sim's event loop.

Each running instance gets one uvicorn server listening on a fresh port per `-p` TCP mapping (bound to
`workload_host`, port 0, or its previous port when it comes back without a remap). It answers
`GET /health`, streams Server-Sent Events at `GET /stream?n=10&interval_ms=20`, echoes WebSocket messages at
`/ws`, and echoes every other request as JSON. Each request is written to the instance's log. Stopping
closes the listening sockets at once and aborts open connections, so the port refuses connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from provisioner.asgi import EmbeddedServer, bind_socket
from provisioner.sim.state import SimInstance

_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_MAX_EVENTS = 100_000


def server_config(
    app: ASGIApp, *, lifespan: Literal["on", "off"], ws: Literal["none", "websockets-sansio"]
) -> uvicorn.Config:
    """Quiet uvicorn settings shared by the sim API and the workloads (no logging config of their own)."""
    return uvicorn.Config(
        app,
        http="h11",
        ws=ws,
        lifespan=lifespan,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
        ws_ping_interval=None,
    )


def workload_app(instance: SimInstance, clock: Callable[[], float]) -> ASGIApp:
    """The ASGI app an instance's container serves; requests are logged into the instance's log.

    When the instance's env carries ``UPSTREAM_AUTH_HEADER`` and ``UPSTREAM_AUTH_TOKEN`` (the
    provisioner's shared secret for the proxy-to-instance hop), every request without that header
    and value is refused with 401, as a real workload should do (see the README).
    """
    auth_name = instance.env.get("UPSTREAM_AUTH_HEADER", "").strip().lower()
    auth_token = instance.env.get("UPSTREAM_AUTH_TOKEN", "")
    required = (auth_name.encode(), auth_token.encode()) if auth_name and auth_token else None
    inner = _routes(instance, auth_name)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await inner(scope, receive, send)
            return
        status = [101 if scope["type"] == "websocket" else 500]
        if required is not None and await _refused(required, scope, receive, send):
            client = scope.get("client") or ("-", 0)
            instance.log(clock(), "container", f"WARNING:  {client[0]}:{client[1]} refused: no upstream auth")
            return

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await inner(scope, receive, send_and_watch)
        finally:
            client = scope.get("client") or ("-", 0)
            verb = "WEBSOCKET" if scope["type"] == "websocket" else scope["method"]
            line = f'INFO:     {client[0]}:{client[1]} - "{verb} {scope["path"]} HTTP/1.1" {status[0]}'
            instance.log(clock(), "container", line)

    return app


def _routes(instance: SimInstance, auth_name: str) -> Starlette:
    """The workload's endpoints: /health, /stream (SSE), /ws (echo) and an echo of anything else."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "instance_id": instance.id, "label": instance.label})

    async def echo(request: Request) -> Response:
        body = await request.body()
        server = request.scope.get("server") or ("", 0)
        return JSONResponse(
            {
                "instance_id": instance.id,
                "label": instance.label,
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": {k: v for k, v in request.headers.items() if k != auth_name},
                "body_size": len(body),
                "port": server[1],
            }
        )

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/stream", _stream, methods=["GET"]),
            WebSocketRoute("/ws", _websocket_echo),
            Route("/{path:path}", echo, methods=_ALL_METHODS),
        ]
    )


async def _stream(request: Request) -> Response:
    """``n`` Server-Sent Events, ``interval_ms`` apart."""
    try:
        count = min(max(int(request.query_params.get("n", "10")), 0), _MAX_EVENTS)
        interval_s = max(float(request.query_params.get("interval_ms", "20")), 0.0) / 1000
    except ValueError:
        return JSONResponse({"error": "n and interval_ms must be numbers"}, status_code=400)

    async def events() -> AsyncIterator[str]:
        for i in range(count):
            if i:
                await asyncio.sleep(interval_s)
            yield f"data: {json.dumps({'i': i, 't': time.time()})}\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def _websocket_echo(websocket: WebSocket) -> None:
    """Echo every text or binary message until the client goes."""
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            elif message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])


async def _refused(required: tuple[bytes, bytes], scope: Scope, receive: Receive, send: Send) -> bool:
    """Answer 401 (or close a WebSocket) unless the request carries the shared-secret header."""
    if dict(scope["headers"]).get(required[0]) == required[1]:
        return False
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
    else:
        await JSONResponse({"error": "missing or wrong upstream auth header"}, 401)(scope, receive, send)
    return True


@dataclass
class _Workload:
    server: EmbeddedServer
    task: asyncio.Task[None]


class WorkloadManager:
    """The `Backend` of the real sim: one embedded uvicorn server per running instance."""

    def __init__(self, host: str, clock: Callable[[], float]) -> None:
        self.host = host
        self._clock = clock
        self._running: dict[int, _Workload] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def ports_of(self, instance_id: int) -> list[int]:
        """The ports an instance's workload listens on (empty when it is not running)."""
        workload = self._running.get(instance_id)
        if workload is None:
            return []
        servers = getattr(workload.server, "servers", [])
        return [s.getsockname()[1] for server in servers for s in (server.sockets or [])]

    def start(self, instance: SimInstance, keys: Sequence[str], reuse: Mapping[str, int]) -> dict[str, int]:
        """Bind a socket per key now (so the ports are known at once) and serve them in the background."""
        self.stop(instance.id)
        if not keys:
            return {}
        sockets: dict[str, socket.socket] = {}
        try:
            for key in keys:
                sockets[key] = self._bind(reuse.get(key, 0))
        except OSError:
            for sock in sockets.values():
                sock.close()
            raise
        ports = {key: sock.getsockname()[1] for key, sock in sockets.items()}
        now = self._clock()
        instance.log(now, "container", "INFO:     Started server process [1]")
        for key in keys:
            instance.log(now, "container", f"INFO:     Uvicorn running on http://0.0.0.0:{key.split('/')[0]}")
        server = EmbeddedServer(
            server_config(workload_app(instance, self._clock), lifespan="off", ws="websockets-sansio")
        )
        task = asyncio.get_running_loop().create_task(
            self._serve(server, list(sockets.values())), name=f"workload-{instance.id}"
        )
        self._running[instance.id] = _Workload(server, task)
        return ports

    def _bind(self, port: int) -> socket.socket:
        if port:
            with contextlib.suppress(OSError):
                return bind_socket(self.host, port)
        return bind_socket(self.host, 0)

    @staticmethod
    async def _serve(server: EmbeddedServer, sockets: list[socket.socket]) -> None:
        try:
            await server.serve(sockets=sockets)
        finally:
            for sock in sockets:
                sock.close()

    def stop(self, instance_id: int) -> None:
        """Stop listening now and cut open connections; the server task finishes in the background."""
        workload = self._running.pop(instance_id, None)
        if workload is None:
            return
        server = workload.server
        server.should_exit = True
        server.force_exit = True
        for listener in getattr(server, "servers", []):
            listener.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        for task in list(server.server_state.tasks):
            task.cancel()
        self._stopping.add(workload.task)
        workload.task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._stopping.discard(task)
        if not task.cancelled():
            task.exception()  # a workload that crashed on the way down has nothing left to report

    async def settle(self) -> None:
        """Wait until every stopped workload has fully shut down (cancelling any that hang for 5 s)."""
        pending = list(self._stopping)
        if not pending:
            return
        _, hung = await asyncio.wait(pending, timeout=5)
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)

    async def close(self) -> None:
        """Stop every workload and wait for them."""
        for instance_id in list(self._running):
            self.stop(instance_id)
        await self.settle()
