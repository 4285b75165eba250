"""Is the remote app answering? One check, shared by the reconciler and ``provisioner status``.

``VAST_HEALTH_PATH`` (when set) must answer below 500 on the first port; every other port (and
the first one, without a health path) must accept a TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import httpx


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
