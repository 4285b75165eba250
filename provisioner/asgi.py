"""Serving ASGI apps inside our own event loop (admin endpoints, the demo's simulator).

uvicorn's ``Server.serve`` installs its own SIGINT/SIGTERM handlers and
re-raises the signal on exit; inside the provisioner the daemon owns the
signals, so the embedded server must leave them alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from provisioner.listen import bind_socket

__all__ = ["EmbeddedServer", "bind_socket", "start_server", "stop_server"]


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that never touches signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def start_server(
    app: ASGIApp, sock: socket.socket, *, lifespan: str = "off"
) -> tuple[EmbeddedServer, asyncio.Task[None]]:
    """Serve ``app`` on ``sock`` in the running loop; returns the server and its task once it is started."""
    # log_config=None: uvicorn's own lines go through our (JSON) root logger, not its text handlers
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan=lifespan,  # type: ignore[arg-type]
        access_log=False,
        log_config=None,
        ws="none",  # no websocket routes: the websockets library stays unloaded
    )
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the server stopped while starting")
        await asyncio.sleep(0.01)
    return server, task


async def stop_server(server: EmbeddedServer, task: asyncio.Task[None], timeout_s: float = 5.0) -> None:
    """Ask the server to exit and wait for it (forcing after ``timeout_s``)."""
    server.should_exit = True
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout_s)
    except TimeoutError:
        server.force_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 2.0)
