"""``provisioner demo``: the simulated Vast.ai and the provisioner in one process, no key needed.

Starts the simulator on a free local port, points a provisioner at it with a
local nginx, and prints the URL to curl. With ``check=True`` it waits until
one request through the proxy reaches the simulated GPU, prints the answer
and stops (exit 0), which makes it a smoke test for a fresh checkout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import tempfile
from pathlib import Path

import httpx

from provisioner import asgi, daemon, errors, settings
from provisioner.sim import app as sim_app

log = logging.getLogger("provisioner.demo")


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free on 127.0.0.1, else any free port."""
    if preferred:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", preferred))
            except OSError:
                pass
            else:
                return preferred
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def run_demo(*, check: bool, listen_port: int, boot_delay_s: float, timeout_s: float) -> int:
    sim_sock = asgi.bind_socket("127.0.0.1", 0)
    sim_port = sim_sock.getsockname()[1]
    config = sim_app.SimConfig(boot_delay_s=boot_delay_s)
    server, task = await asgi.start_server(sim_app.create_app(config), sim_sock, lifespan="on")
    workdir = Path(tempfile.mkdtemp(prefix="provisioner-demo-"))
    port = free_port(listen_port)
    admin_port = free_port(None)
    try:
        cfg = settings.load_settings(
            pod_name="demo-pod-0",
            vast_api_key="demo-key-not-secret",
            vast_api_url=f"http://127.0.0.1:{sim_port}",
            vast_template_name="demo-gpu-workload",
            vast_template_image="vastai/demo-workload:1.0",
            vast_search_query="gpu_name=RTX_4090 num_gpus=1 reliability>0.95",
            nginx_config_path=workdir / "nginx" / "nginx.conf",
            nginx_listen_port=port,
            admin_port=admin_port,
            admin_host="127.0.0.1",
            vast_allow_private_upstreams=True,
            vast_health_path="/health",
            boot_poll_seconds=1.0,
            health_interval_seconds=2.0,
            nginx_drain_seconds=1,
        )
        url = f"http://127.0.0.1:{port}/"
        print(f"simulated Vast.ai on http://127.0.0.1:{sim_port}; proxy on {url}", flush=True)
        print(f"try: curl {url}   (readiness: curl http://127.0.0.1:{admin_port}/readyz)", flush=True)
        proc = daemon.Daemon(cfg)
        proc.install_signal_handlers()
        runner = asyncio.create_task(proc.run())
        if not check:
            await runner
            return 0
        try:
            answer = await _first_answer(url, runner, timeout_s)
        finally:
            proc.stop.set()
            await runner
        print(json.dumps(answer, indent=2), flush=True)
        print("demo check passed: a request through the proxy reached the simulated GPU", flush=True)
        return 0
    finally:
        await asgi.stop_server(server, task)


async def _first_answer(url: str, runner: asyncio.Task[None], timeout_s: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with httpx.AsyncClient(timeout=5.0) as http:
        while loop.time() < deadline:
            if runner.done():
                runner.result()  # raises what ended it
                raise errors.ProvisionerError("the provisioner stopped early")
            with contextlib.suppress(httpx.HTTPError):
                response = await http.get(url)
                if response.status_code == 200:
                    body = response.json()
                    if isinstance(body, dict) and "instance_id" in body:
                        return body
            await asyncio.sleep(0.5)
    raise errors.ProvisionerError(f"no answer from the simulated GPU through {url} within {timeout_s:.0f}s")
