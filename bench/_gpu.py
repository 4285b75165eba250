"""The simulated GPU's HTTP app (``provisioner.sim.workload``) as a process of its own, for benchmarks.

``python -m bench._gpu --host H --port P`` serves the same app a simulated instance serves (echo, ``/health``,
SSE ``/stream``, WebSocket ``/ws``) with the sim's uvicorn settings, and prints ``ready <port>`` once it
listens. It counts the TCP connections it accepts and the requests it serves, so a benchmark can show
how many connections each proxy opened to the "remote" GPU:

- ``GET /_bench/connections``  ``{"connections": n, "requests": m}`` since the last reset (the asking
  connection and request not included)
- ``POST /_bench/reset``       start counting again
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import time

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from provisioner.asgi import EmbeddedServer
from provisioner.sim.state import SimInstance
from provisioner.sim.workload import server_config, workload_app

#: connections accepted since the last reset
_accepted = [0]


class _CountingH11(H11Protocol):
    """uvicorn's h11 protocol (what the sim uses), counting accepted connections."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _accepted[0] += 1
        super().connection_made(transport)


class _QuietInstance(SimInstance):
    """A simulated instance whose request log is dropped (a benchmark sends tens of thousands)."""

    def log(self, at: float, source: str, text: str) -> None:
        return None


def build_app() -> ASGIApp:
    instance = _QuietInstance(
        id=1,
        offer={},
        created_at=time.time(),
        label="k8s_pod=bench-0",
        image="vastai/test-workload:1.0",
        env={},
        onstart=None,
        runtype="args",
        args=None,
        disk_gb=20.0,
        bid_price=None,
        template=None,
        ssh_port=0,
        actual_status="running",
    )
    inner = workload_app(instance, time.time)
    requests = [0]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/_bench/"):
            if scope["method"] == "POST" and scope["path"] == "/_bench/reset":
                _accepted[0] = 0
                requests[0] = 0
            # the asking connection was accepted after the reset
            body = json.dumps({"connections": max(0, _accepted[0] - 1), "requests": requests[0]}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] in ("http", "websocket"):
            requests[0] += 1
        await inner(scope, receive, send)

    return app


def listen_tcp(host: str, port: int) -> socket.socket:
    """Like the sim's ``bind_socket``, but created with ``IPPROTO_TCP``.

    asyncio turns TCP_NODELAY on only for sockets whose ``proto`` is ``IPPROTO_TCP``; the sim's
    ``bind_socket`` makes them with proto 0, so its connections keep Nagle's algorithm, and across a
    real link (veth) each keepalive request then waits ~40 ms for a delayed ACK. A real inference
    server started by uvicorn with ``--host/--port`` gets TCP_NODELAY, so the benchmark does too.
    """
    sock = socket.socket(
        socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def serve(host: str, port: int) -> None:
    sock = listen_tcp(host, port)
    config = server_config(build_app(), lifespan="off", ws="websockets-sansio")
    config.http = _CountingH11  # h11 as in the sim, counting connections
    server = EmbeddedServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
        await asyncio.sleep(0.01)
    print(f"ready {sock.getsockname()[1]}", flush=True)
    await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
