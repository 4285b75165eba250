"""nginx configuration text from the listeners, the current upstreams and a few knobs.

Pure: no I/O, no clock, no randomness; the same inputs always give the same text,
so the caller can compare texts to decide whether a reload is needed.

Every value that reaches the config is validated first, so that nothing a
remote API or an operator hands us can smuggle an nginx directive in: upstream
hosts must be IP address literals, ports integers in 1-65535, sizes and header
values from small alphabets. A violation raises ``errors.NginxError``.

A listener with an upstream proxies to it (HTTP/1.1, keepalive to the upstream,
WebSocket upgrades, no buffering so server-sent events flow as produced, no
retries on another upstream), its idle pool sized to ``max_concurrency`` so that after
warm-up no request waits for a new connection to the GPU, a round trip away. A listener
without one answers every request with
``503``, a short JSON body and ``Retry-After``, so probes fail and clients get a
clear answer.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import errors, model

if TYPE_CHECKING:
    import jinja2

#: File name of nginx's pid file inside the state directory (``NginxProcess`` reads it too).
PID_FILE_NAME = "nginx.pid"
#: nginx's temp directories, all inside the state directory (nginx creates them).
TEMP_DIR_NAMES = ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp")

_TEMPLATE_NAME = "nginx.conf.j2"
BODY_SIZE_RE = re.compile(r"[0-9]{1,9}[kKmMgG]?")
_REASON_RE = re.compile(r"[a-z0-9_ .:-]{1,64}")
_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
# printable ASCII, minus the characters that end or interpolate an nginx string
_HEADER_VALUE_RE = re.compile(r"[ !#%&(-:<-\[\]-z|~]{0,4096}")
_STATE_DIR_RE = re.compile(r"/[A-Za-z0-9._+,:=@~/-]*")
#: headers the proxy sets itself; ``upstream_headers`` may not override them.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "connection",
        "upgrade",
        "keep-alive",
        "te",
        "transfer-encoding",
        "content-length",
        "proxy",
        "x-real-ip",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
    }
)
_FALLBACK_REASON = "unavailable"
#: upper bounds of ``max_concurrency`` and ``worker_processes`` (settings validates against them too)
MAX_CONCURRENCY_LIMIT = 4096
WORKER_PROCESSES_LIMIT = 64
#: upstream connections are recycled after this many requests or this long (nginx: 1000 and 1h);
#: high, as the upstream is one GPU server and every new connection costs a round trip to it
UPSTREAM_KEEPALIVE_REQUESTS = 100_000
UPSTREAM_KEEPALIVE_TIME = "12h"


@dataclass(frozen=True)
class ProxyConfig:
    """Everything about the proxy that does not change while the pod lives."""

    listeners: tuple[model.PortMap, ...]
    #: nginx's prefix: pid file and temp directories live here (an emptyDir in Kubernetes).
    state_dir: Path
    #: ``client_max_body_size``: ``10M``, ``512k``, ``0`` (no limit).
    max_body_size: str
    #: upstream read and send timeout; long, inference requests are slow.
    proxy_timeout_s: int
    connect_timeout_s: int = 10
    #: ``Retry-After`` on the 503 (and 502/504) answers.
    retry_after_s: int = 10
    #: idle keepalive connections to each upstream kept per worker; 0 disables keepalive
    #: (``Connection: close`` upstream, as nginx >= 1.29.7 keeps connections alive by default).
    #: None: ``max_concurrency``, so that after warm-up no request waits for a TCP handshake.
    keepalive: int | None = None
    #: None: derived from ``max_concurrency`` (see ``derived_worker_connections``).
    worker_connections: int | None = None
    #: expected peak of concurrent requests through the pod; sizes the pool and the connection limits.
    max_concurrency: int = 256
    #: nginx worker processes; each keeps its own upstream pool.
    worker_processes: int = 1
    #: how long an idle upstream connection stays in the pool; below the upstream server's own idle
    #: timeout (uvicorn's default is 5 s) so that nginx, not the server, closes idle connections.
    upstream_keepalive_timeout_s: int = 4
    #: the hard limit on open files nginx's workers may raise theirs to (``RLIMIT_NOFILE``);
    #: None: no cap. Above it, an unprivileged worker's ``setrlimit`` fails with an ``[alert]``.
    max_open_files: int | None = None
    access_log: bool = True
    #: extra headers set on every proxied request (e.g. a shared secret); an empty value removes it.
    upstream_headers: Mapping[str, str] = field(default_factory=dict)
    #: the address every listener binds; an IPv6 literal listens on IPv6 only.
    listen_address: str = "0.0.0.0"


def check_upstream_ip(host: str, *, allow_private: bool) -> str:
    """``host`` normalised (``2001:DB8::1`` -> ``2001:db8::1``) if it is an IP literal we may proxy to.

    Hostnames are always rejected: nginx would resolve them once at start-up and a
    name is a place to hide directives. Unless ``allow_private``, only global
    (public) unicast addresses pass; multicast and unspecified never do.
    """
    if not isinstance(host, str) or "%" in host:
        raise errors.NginxError(f"upstream host {host!r} is not an IP address")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise errors.NginxError(f"upstream host {host!r} is not an IP address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_multicast or addr.is_unspecified:
        raise errors.NginxError(f"upstream host {host!r} is not a unicast address")
    if not allow_private and (
        not addr.is_global or addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved
    ):
        raise errors.NginxError(f"upstream host {host!r} is not a public address")
    return str(addr)


def render_nginx_conf(
    cfg: ProxyConfig,
    upstreams: Mapping[int, model.Upstream] | None,
    *,
    reason: str = "starting",
) -> str:
    """A complete nginx.conf: listeners with an upstream proxy to it, the others answer 503 JSON.

    ``upstreams`` maps a listen port to where it forwards now; ``reason`` goes into
    the 503 body (anything outside ``[a-z0-9_ .:-]{1,64}`` becomes ``unavailable``).
    """
    context = _context(cfg, upstreams or {}, reason)
    return _environment().get_template(_TEMPLATE_NAME).render(context)


# ---------------------------------------------------------------- validation


def _context(cfg: ProxyConfig, upstreams: Mapping[int, model.Upstream], reason: str) -> dict[str, Any]:
    state_dir = _state_dir(cfg.state_dir)
    listen_host = _listen_host(cfg.listen_address)
    listeners = _listeners(cfg.listeners)
    ports = {m.listen_port for m in listeners}
    targets: dict[int, str] = {}
    for listen_port, upstream in upstreams.items():
        _port(listen_port, "upstream listen port")
        if listen_port not in ports:
            raise errors.NginxError(f"upstream for port {listen_port}, which is not a listener")
        if not isinstance(upstream, model.Upstream) or upstream.listen_port != listen_port:
            raise errors.NginxError(f"upstream for port {listen_port} does not name that port")
        ip = check_upstream_ip(upstream.host, allow_private=True)
        host = f"[{ip}]" if ":" in ip else ip
        targets[listen_port] = f"{host}:{_port(upstream.port, 'upstream port')}"
    servers = [
        {
            "listen": f"{listen_host}:{m.listen_port}",
            "upstream_name": f"listener_{m.listen_port}",
            "target": targets.get(m.listen_port),
        }
        for m in listeners
    ]
    return {
        "state_dir": state_dir,
        "keepalive_requests": UPSTREAM_KEEPALIVE_REQUESTS,
        "keepalive_time": UPSTREAM_KEEPALIVE_TIME,
        "pid_path": f"{state_dir}/{PID_FILE_NAME}",
        "temp_paths": [(name.removesuffix("_temp"), f"{state_dir}/{name}") for name in TEMP_DIR_NAMES],
        **_connection_limits(cfg),
        "access_log": bool(cfg.access_log),
        "max_body_size": _body_size(cfg.max_body_size),
        "proxy_timeout_s": _int(cfg.proxy_timeout_s, "proxy_timeout_s", 1, 86400),
        "connect_timeout_s": _int(cfg.connect_timeout_s, "connect_timeout_s", 1, 75),
        "retry_after_s": _int(cfg.retry_after_s, "retry_after_s", 0, 86400),
        "upstream_headers": _headers(cfg.upstream_headers),
        "reason": reason if isinstance(reason, str) and _REASON_RE.fullmatch(reason) else _FALLBACK_REASON,
        "servers": servers,
    }


def derived_worker_connections(max_concurrency: int) -> int:
    """``worker_connections`` for a peak of ``max_concurrency`` requests: at least 1024.

    Each proxied request holds two connections (client and upstream); the rest is room for
    idle client keepalive connections and the idle upstream pool. Per worker, as nginx counts
    it, since one worker may accept most of the clients.
    """
    return max(1024, 4 * max_concurrency)


def _connection_limits(cfg: ProxyConfig) -> dict[str, int]:
    """Worker count, connection and file limits, and the upstream pool, from ``max_concurrency``."""
    concurrency = _int(cfg.max_concurrency, "max_concurrency", 1, MAX_CONCURRENCY_LIMIT)
    keepalive = concurrency if cfg.keepalive is None else _int(cfg.keepalive, "keepalive", 0, 65535)
    connections = derived_worker_connections(concurrency)
    if cfg.worker_connections is not None:
        connections = _int(cfg.worker_connections, "worker_connections", 16, 65535)
    cap = None if cfg.max_open_files is None else _int(cfg.max_open_files, "max_open_files", 64, 2**62)
    return {
        "worker_processes": _int(cfg.worker_processes, "worker_processes", 1, WORKER_PROCESSES_LIMIT),
        "worker_connections": connections,
        # one descriptor per connection, twice over for log files, temp files and slack
        "worker_rlimit_nofile": min(2 * connections, cap) if cap is not None else 2 * connections,
        "keepalive": keepalive,
        "upstream_keepalive_timeout_s": _int(
            cfg.upstream_keepalive_timeout_s, "upstream_keepalive_timeout_s", 1, 3600
        ),
    }


def _int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.NginxError(f"{what} must be an integer in {low}-{high}, not {value!r}")
    return value


def _port(value: object, what: str) -> int:
    return _int(value, what, 1, 65535)


def _listeners(listeners: tuple[model.PortMap, ...]) -> tuple[model.PortMap, ...]:
    if not listeners:
        raise errors.NginxError("no listeners: nginx needs at least one port to listen on")
    seen: set[int] = set()
    for m in listeners:
        if not isinstance(m, model.PortMap):
            raise errors.NginxError(f"listener {m!r} is not a PortMap")
        _port(m.listen_port, "listen port")
        _port(m.container_port, "container port")
        if m.listen_port in seen:
            raise errors.NginxError(f"listen port {m.listen_port} appears twice")
        seen.add(m.listen_port)
    return listeners


def _listen_host(address: str) -> str:
    problem = errors.NginxError(f"listen address {address!r} is not an IP address")
    if not isinstance(address, str) or "%" in address:
        raise problem
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        raise problem from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)  # nginx cannot bind ::ffff:a.b.c.d (EINVAL); the IPv4 form binds
    return f"[{addr}]" if addr.version == 6 else str(addr)


def _state_dir(path: Path) -> str:
    text = path.as_posix() if isinstance(path, Path) else ""
    if not _STATE_DIR_RE.fullmatch(text) or "/../" in f"{text}/":
        raise errors.NginxError(
            f"state directory {str(path)!r} must be an absolute path of letters, digits and ._+,:=@~/- only"
        )
    return text.rstrip("/") or ""


def _body_size(value: str) -> str:
    if not isinstance(value, str) or not BODY_SIZE_RE.fullmatch(value):
        raise errors.NginxError(f"max body size {value!r} must look like 10M, 512k, 1G or 0")
    return value


def _headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    result: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in sorted(headers.items()):
        if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name):
            raise errors.NginxError(f"upstream header name {name!r} must be 1-64 letters, digits or '-'")
        if name.lower() in RESERVED_HEADERS:
            raise errors.NginxError(f"upstream header {name!r} is set by the proxy itself")
        if name.lower() in seen:
            raise errors.NginxError(f"upstream header {name!r} appears twice")
        seen.add(name.lower())
        if not isinstance(value, str) or not _HEADER_VALUE_RE.fullmatch(value):
            raise errors.NginxError(
                f"upstream header {name!r}: the value must be printable ASCII without quotes, "
                "backslash, ';', '{', '}' or '$'"
            )
        result.append((name, value))
    return result


@functools.cache
def _environment() -> jinja2.Environment:
    # imported here: the settings import this module, and a config error or --help needs no jinja2
    import jinja2  # noqa: PLC0415

    # nginx config, not HTML: no autoescape; every value is validated before it gets here
    return jinja2.Environment(
        loader=jinja2.PackageLoader("provisioner.templates", "."),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
