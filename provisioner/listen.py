"""The listening socket of an embedded HTTP server, bound before the server (and uvicorn) is loaded.

``run`` binds ``ADMIN_PORT`` at once, so a taken port ends the start before any Vast call, and serves
on it a moment later (``daemon.py``); a probe that comes in between waits in the backlog.
"""

from __future__ import annotations

import socket


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, so that asyncio sets TCP_NODELAY on accepted connections (with protocol 0 it does
    # not, and a response's head and body wait on a delayed ACK: ~40 ms per keepalive request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
