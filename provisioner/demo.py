"""``provisioner demo``: the simulated Vast.ai and the provisioner in one process, no key needed.

Starts the simulator, points a provisioner at it with a local nginx (bound to 127.0.0.1 only), and
prints the URL to curl.
Ports are stable from run to run: the proxy keeps ``--port`` (3000), the admin server 8081 and the
simulator 8765 whenever nginx or our servers could bind them (probed with ``SO_REUSEADDR``, as they
bind, so a socket of the previous run in TIME_WAIT does not move them); only a port another process
listens on moves to a free one. Once the first request reaches the simulated GPU it prints the
admin URL and one ``export`` line, so that ``provisioner status`` and ``provisioner offers`` in
another shell talk to this demo. The API key in it is the demo's fixed fake (the simulator accepts
any key): it is not a secret. Everything nginx writes lives in a ``provisioner-demo-*`` temporary
directory, removed on exit. With ``check=True`` the demo stops after that first answer (exit 0),
which makes it a smoke test for a fresh checkout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import shutil
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path

import httpx

from provisioner import asgi, daemon, errors, settings
from provisioner.sim import app as sim_app

log = logging.getLogger("provisioner.demo")

ADMIN_PORT = 8081
SIM_PORT = 8765
#: not a secret: the simulator accepts any key, and this one is printed on purpose
DEMO_API_KEY = "demo-key-not-secret"
LOCAL_HOST = "127.0.0.1"
#: the address the demo's nginx binds (NGINX_LISTEN_ADDRESS): loopback, nothing outside this machine sees it
NGINX_HOST = LOCAL_HOST


def free_port(preferred: int | None = None, host: str = LOCAL_HOST) -> int:
    """``preferred`` if a listener could bind it on ``host`` now, else any free port.

    The probe sets ``SO_REUSEADDR`` like nginx and uvicorn do, so a connection of an earlier run
    still in TIME_WAIT does not count as taken; a socket another process listens on does.
    """
    if preferred:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, preferred))
            except OSError:
                pass
            else:
                return preferred
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def demo_environment(sim_port: int, listen_port: int, admin_port: int) -> dict[str, str]:
    """The pod's settings as environment variables: what ``status`` and ``offers`` need to reach it."""
    return {
        "POD_NAME": "demo-pod-0",
        "VAST_API_KEY": DEMO_API_KEY,
        "VAST_API_URL": f"http://{LOCAL_HOST}:{sim_port}",
        "VAST_TEMPLATE_NAME": "demo-gpu-workload",
        "VAST_TEMPLATE_IMAGE": "vastai/demo-workload:1.0",
        "VAST_SEARCH_QUERY": "gpu_name=RTX_4090 num_gpus=1 reliability>0.95",
        "VAST_HEALTH_PATH": "/health",
        "VAST_ALLOW_PRIVATE_UPSTREAMS": "true",
        "NGINX_LISTEN_PORT": str(listen_port),
        "NGINX_LISTEN_ADDRESS": NGINX_HOST,
        "ADMIN_HOST": LOCAL_HOST,
        "ADMIN_PORT": str(admin_port),
    }


def export_line(environment: Mapping[str, str]) -> str:
    """One shell line that sets ``environment`` (``eval``-able: every value quoted)."""
    return "export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in environment.items())


async def run_demo(*, check: bool, listen_port: int, boot_delay_s: float, timeout_s: float) -> int:
    """Run the demo until a signal (or, with ``check``, until the first answer); 0 on success."""
    workdir = Path(tempfile.mkdtemp(prefix="provisioner-demo-"))
    try:
        return await _run_in(workdir, check, listen_port, boot_delay_s, timeout_s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _run_in(workdir: Path, check: bool, listen_port: int, boot_delay_s: float, timeout_s: float) -> int:
    sim_sock = asgi.bind_socket(LOCAL_HOST, free_port(SIM_PORT))
    sim_port = sim_sock.getsockname()[1]
    config = sim_app.SimConfig(boot_delay_s=boot_delay_s)
    server, task = await asgi.start_server(sim_app.create_app(config), sim_sock, lifespan="on")
    try:
        environment = demo_environment(sim_port, free_port(listen_port, NGINX_HOST), free_port(ADMIN_PORT))
        cfg = settings.load_settings(
            **{name.lower(): value for name, value in environment.items()},
            nginx_config_path=workdir / "nginx" / "nginx.conf",
            boot_poll_seconds=1.0,
            health_interval_seconds=2.0,
            nginx_drain_seconds=1,
        )
        url = f"http://{LOCAL_HOST}:{cfg.nginx_listen_port}/"
        print(f"simulated Vast.ai on {environment['VAST_API_URL']}; proxy on {url} (starting)", flush=True)
        proc = daemon.Daemon(cfg)
        proc.install_signal_handlers()
        runner = asyncio.create_task(proc.run())
        if not check:
            announcer = asyncio.create_task(_announce_when_ready(url, environment, runner))
            try:
                await runner
                return 0
            finally:
                announcer.cancel()
        try:
            answer = await _first_answer(url, runner, timeout_s)
        finally:
            proc.stop.set()
            await runner
        print(json.dumps(answer, indent=2), flush=True)
        _announce(url, environment)
        print("demo check passed: a request through the proxy reached the simulated GPU", flush=True)
        return 0
    finally:
        await asgi.stop_server(server, task)


async def _announce_when_ready(url: str, environment: Mapping[str, str], runner: asyncio.Task[None]) -> None:
    """Print the next steps once the proxy serves (or say that it does not yet, after a long wait)."""
    try:
        await _first_answer(url, runner, timeout_s=600.0)
    except errors.ProvisionerError as exc:
        if not runner.done():
            log.warning("%s; the demo keeps trying", exc)
        return
    _announce(url, environment)


def _announce(url: str, environment: Mapping[str, str]) -> None:
    """Print what the user can do now that the proxy serves: curl, the admin URL, the CLI's env."""
    admin = f"http://{environment['ADMIN_HOST']}:{environment['ADMIN_PORT']}"
    lines = [
        f"ready: curl {url}   (SSE: curl -N '{url}stream?n=5')",
        f"admin: {admin}/readyz  {admin}/status  {admin}/metrics",
        f"status from any shell: provisioner status --admin-url {admin}",
        "to run `provisioner status` or `provisioner offers` against this demo in another shell, paste",
        "(the key is the demo's fake, not a secret; no Redis here, so `blacklist` has nothing to show):",
        f"  {export_line(environment)}",
    ]
    print("\n".join(lines), flush=True)


async def _first_answer(url: str, runner: asyncio.Task[None], timeout_s: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with httpx.AsyncClient(timeout=5.0) as http:
        while loop.time() < deadline:
            if runner.done():
                runner.result()  # raises what ended it
                raise errors.ProvisionerError("the provisioner stopped before the first answer")
            with contextlib.suppress(httpx.HTTPError):
                response = await http.get(url)
                if response.status_code == 200:
                    body = response.json()
                    if isinstance(body, dict) and "instance_id" in body:
                        return body
            await asyncio.sleep(0.5)
    raise errors.ProvisionerError(f"no answer from the simulated GPU through {url} within {timeout_s:.0f}s")
