"""Is the remote app answering? One check, shared by the reconciler and ``provisioner status``.

``VAST_HEALTH_PATH`` (when set) must answer below 500 on the first port; every other port (and
the first one, without a health path) must accept a TCP connection. :class:`Checker` checks an
instance as the proxy would reach it: its address validated (``rendering.check_upstream_ip``:
public only, unless allowed) and its ports mapped, through the ``http`` client it was given (which
carries ``UPSTREAM_AUTH_HEADER``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from provisioner import errors, model, rendering

log = logging.getLogger("provisioner.upstream_health")


async def tcp_connects(host: str, port: int, timeout_s: float = 3.0) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def probe(http: httpx.AsyncClient, host: str, ports: Sequence[int], health_path: str | None) -> bool:
    """The upstream at ``host`` answers on every port (the health path on the first one)."""
    shown = f"[{host}]" if ":" in host else host
    for i, port in enumerate(ports):
        if i == 0 and health_path:
            try:
                response = await http.get(f"http://{shown}:{port}{health_path}")
            except httpx.HTTPError:
                return False
            if response.status_code >= 500:
                return False
        elif not await tcp_connects(host, port):
            return False
    return True


@dataclass(frozen=True)
class Checker:
    """Where an instance's listeners go, and whether it answers there."""

    #: the client for ``health_path`` (it carries ``UPSTREAM_AUTH_HEADER``)
    http: httpx.AsyncClient
    ports: tuple[model.PortMap, ...]
    health_path: str | None = None
    allow_private: bool = False

    def upstreams(self, instance: model.Instance) -> dict[int, model.Upstream]:
        """Listen port -> public ip:host port; the address is validated (no injection, public only)."""
        host = rendering.check_upstream_ip(instance.public_ipaddr or "", allow_private=self.allow_private)
        result: dict[int, model.Upstream] = {}
        for pm in self.ports:
            port = instance.host_port(pm.container_port)
            if port is None:
                raise errors.VastBadResponse("list instances", f"port {pm.container_port} is not mapped")
            result[pm.listen_port] = model.Upstream(pm.listen_port, host, port)
        return result

    async def check(self, instance: model.Instance) -> bool:
        """The remote app answers: ``health_path`` below 500, or a TCP connect to every port."""
        try:
            upstreams = self.upstreams(instance)
        except errors.ProvisionerError as exc:
            log.warning("instance %s has no usable upstream: %s", instance.id, exc)
            return False
        first = next(iter(upstreams.values()))
        ports = [up.port for up in upstreams.values()]
        return await probe(self.http, first.host, ports, self.health_path)
