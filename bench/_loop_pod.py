"""The provisioner's event loop under proxied traffic: ``NginxProcess`` and a ``/healthz`` in one loop.

``python -m bench._loop_pod --state DIR --listen PORT --upstream-port P --admin-port A`` starts nginx
through the provisioner's own ``provisioner.nginx.NginxProcess`` (so nginx's access log reaches this
process's stdout the way it reaches the provisioner's: through ``NginxProcess``'s copier) with the config
``render_nginx_conf`` writes, proxying to 127.0.0.1:P, and serves ``GET /healthz`` with the admin
server's stack (``provisioner.asgi``: uvicorn inside the same loop). It prints ``ready <admin port>`` and
runs until SIGTERM. A benchmark loads the proxy and times ``/healthz``: the probe waits for whatever else
the loop is doing, which is what a kubelet's liveness probe sees.

It stands in for ``provisioner run`` because the simulated GPU behind a real pod is a Python app that
serves a few hundred requests per second on this machine, far below the rates to test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from provisioner import asgi, model, nginx, rendering
from provisioner.settings import find_nginx_binary


async def serve(state: Path, listen: int, upstream_port: int, admin_port: int) -> None:
    binary = find_nginx_binary()
    if binary is None:
        raise SystemExit("no nginx binary")
    proc = nginx.NginxProcess(binary, state / "nginx.conf")
    cfg = rendering.ProxyConfig(
        listeners=(model.PortMap(listen, 8000),),
        state_dir=state,
        max_body_size="10M",
        proxy_timeout_s=600,
        listen_address="127.0.0.1",
    )
    await proc.start(
        rendering.render_nginx_conf(cfg, {listen: model.Upstream(listen, "127.0.0.1", upstream_port)})
    )

    async def healthz(request: Request) -> JSONResponse:
        ok = proc.is_running
        return JSONResponse({"status": "ok" if ok else "unhealthy"}, 200 if ok else 503)

    server, task = await asgi.start_server(
        Starlette(routes=[Route("/healthz", healthz)]), asgi.bind_socket("127.0.0.1", admin_port)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # "ready" on stderr: stdout carries nginx's access log, as in the provisioner
    print(f"ready {admin_port}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await asgi.stop_server(server, task)
        await proc.stop(drain_s=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--admin-port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.state, args.listen, args.upstream_port, args.admin_port))


if __name__ == "__main__":
    main()
