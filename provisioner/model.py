"""Plain data the rest of the code agrees on: offers, instances, templates, upstreams.

Frozen dataclasses, plus tolerant parsers from the Vast.ai JSON shapes
(``docs/vast-api.md`` §5.3, §7.3, §9): nulls and missing fields become
``None``, ``public_ipaddr`` is stripped, ``HostPort`` strings become ints.
A value of the wrong *type* where we need it raises ``VastBadResponse``.
No I/O here.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from provisioner import errors

#: the longest ban (10 years, seconds): Redis keeps expiries in ms below 2**63; a longer one failed half-way
MAX_BAN_TTL_S = 10 * 365 * 24 * 3600

# ---------------------------------------------------------------- coercion


def _num(raw: Mapping[str, Any], key: str, call: str) -> float | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            parsed = float(value.strip())
        except ValueError:
            raise errors.VastBadResponse(call, f"field {key!r} is not a number") from None
        return parsed if math.isfinite(parsed) else None
    raise errors.VastBadResponse(call, f"field {key!r} is not a number")


def _int(raw: Mapping[str, Any], key: str, call: str) -> int | None:
    value = _num(raw, key, call)
    return None if value is None else int(value)


def _str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _env_of(extra_env: Any) -> Mapping[str, Any]:
    """An instance's ``extra_env``: a list of ``[key, value]`` pairs (what Vast sends), or a dict
    (tolerated); empty when absent or of another shape."""
    if isinstance(extra_env, Mapping):
        return {str(k): v for k, v in extra_env.items()}
    if isinstance(extra_env, list):
        return {str(p[0]): p[1] for p in extra_env if isinstance(p, list | tuple) and len(p) == 2}
    return {}


def _env_value(env: Mapping[str, Any], name: str) -> str | None:
    value = env.get(name)
    return None if value is None else str(value).strip() or None


def _rented_without_auth(env: Mapping[str, Any]) -> bool:
    """The env is a whole rental's (it maps a port: ``-p N:N``, as each of ours does) and carries no
    upstream secret (neither the tag nor the token). A missing or partial env tells nothing: False."""
    mapped = any(key.startswith("-p ") for key in env)
    return mapped and AUTH_TAG_ENV not in env and AUTH_TOKEN_ENV not in env


def _required_int(raw: Mapping[str, Any], key: str, call: str) -> int:
    value = _int(raw, key, call)
    if value is None:
        raise errors.VastBadResponse(call, f"missing field {key!r}")
    return value


_COUNTRY_RE = re.compile(r"(?:^|[,\s])([A-Z]{2})\s*$")


def country_of(geolocation: str | None) -> str | None:
    """The trailing two-letter country code of a Vast ``geolocation`` ("Texas, US" -> "US")."""
    if not geolocation:
        return None
    match = _COUNTRY_RE.search(geolocation.strip())
    return match.group(1) if match else None


# ---------------------------------------------------------------- offers


@dataclass(frozen=True, slots=True)
class Offer:
    """One rentable machine offer from ``POST /api/v0/bundles/``."""

    id: int
    host_id: int | None = None
    machine_id: int | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    dph_total: float | None = None
    dph_base: float | None = None
    storage_cost: float | None = None
    min_bid: float | None = None
    reliability: float | None = None
    inet_down: float | None = None
    inet_up: float | None = None
    geolocation: str | None = None
    direct_port_count: int | None = None
    cuda_max_good: float | None = None
    verified: bool | None = None
    datacenter: bool | None = None

    @property
    def country(self) -> str | None:
        return country_of(self.geolocation)

    @classmethod
    def from_api(cls, raw: Any, call: str = "search offers") -> Offer:
        if not isinstance(raw, Mapping):
            raise errors.VastBadResponse(call, "offer is not an object")
        verification = raw.get("verification")
        verified = raw.get("verified")
        hosting_type = _int(raw, "hosting_type", call)
        return cls(
            id=_required_int(raw, "id", call),
            host_id=_int(raw, "host_id", call),
            machine_id=_int(raw, "machine_id", call),
            gpu_name=_str(raw, "gpu_name"),
            num_gpus=_int(raw, "num_gpus", call),
            dph_total=_num(raw, "dph_total", call),
            dph_base=_num(raw, "dph_base", call),
            storage_cost=_num(raw, "storage_cost", call),
            min_bid=_num(raw, "min_bid", call),
            reliability=_num(raw, "reliability", call),
            inet_down=_num(raw, "inet_down", call),
            inet_up=_num(raw, "inet_up", call),
            geolocation=_str(raw, "geolocation"),
            direct_port_count=_int(raw, "direct_port_count", call),
            cuda_max_good=_num(raw, "cuda_max_good", call),
            verified=bool(verified) if verified is not None else (verification == "verified" or None),
            datacenter=None if hosting_type is None else hosting_type == 1,
        )


# ---------------------------------------------------------------- instances

#: the instance's environment variable naming the upstream secret it was rented with (a fingerprint)
AUTH_TAG_ENV = "UPSTREAM_AUTH_TAG"
#: the upstream secret itself, in the rental's env beside the header name (``UPSTREAM_AUTH_HEADER``)
AUTH_TOKEN_ENV = "UPSTREAM_AUTH_TOKEN"  # noqa: S105 - a variable name, not a secret
#: actual_status values from which an instance never reaches ``running`` (docs/vast-api.md §7.4).
DEAD_STATUSES = frozenset({"exited", "offline", "unknown", "destroyed", "terminated", "stopped", "frozen"})
#: every actual_status value Vast is known to use (docs/vast-api.md §7.4); ``null`` means provisioning.
KNOWN_STATUSES = DEAD_STATUSES | {"created", "loading", "running", "rebooting", "recycling", "restarting"}
#: words in ``status_msg`` that mean the container failed to start.
FAILURE_MARKERS = (
    "oci runtime",
    "error response from daemon",
    "failed to",
    "no such image",
    "manifest unknown",
)


def _parse_ports(raw: Any) -> dict[int, int]:
    """``{"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}]}`` -> ``{8000: 41234}`` (tcp only)."""
    if not isinstance(raw, Mapping):
        # null/absent until running; the docs' schema even types it as an array: no ports yet
        return {}
    result: dict[int, int] = {}
    for key, bindings in raw.items():
        container, _, proto = str(key).partition("/")
        if proto not in ("", "tcp") or not container.isdigit():
            continue
        if not isinstance(bindings, list) or not bindings:
            continue
        first = bindings[0]
        if not isinstance(first, Mapping):
            continue
        host_port = str(first.get("HostPort") or "").strip()
        if host_port.isdigit() and 0 < int(host_port) < 65536:
            result[int(container)] = int(host_port)
    return result


@dataclass(frozen=True, slots=True)
class Instance:
    """A rented instance as seen through ``GET /api/v1/instances/`` or ``/api/v0/instances/{id}/``."""

    id: int
    label: str | None = None
    actual_status: str | None = None
    intended_status: str | None = None
    cur_state: str | None = None
    status_msg: str | None = None
    image_uuid: str | None = None
    template_hash_id: str | None = None
    host_id: int | None = None
    machine_id: int | None = None
    public_ipaddr: str | None = None
    ports: Mapping[int, int] = field(default_factory=dict)
    dph_total: float | None = None
    start_date: float | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    geolocation: str | None = None
    #: ``UPSTREAM_AUTH_TAG`` from its environment (``extra_env``): which upstream secret it was
    #: rented with; None when it was rented without one or the list left the environment out
    auth_tag: str | None = None
    #: its listed environment is a whole rental's and carries no upstream secret: rented without auth
    rented_without_auth: bool = False

    @property
    def failed_to_start(self) -> bool:
        msg = (self.status_msg or "").lower()
        return self.actual_status == "created" and any(marker in msg for marker in FAILURE_MARKERS)

    @property
    def is_dead(self) -> bool:
        """It will never serve again: replace it."""
        return self.actual_status in DEAD_STATUSES or self.failed_to_start

    @property
    def is_running(self) -> bool:
        return self.actual_status == "running"

    @property
    def status_unknown(self) -> bool:
        """An ``actual_status`` Vast was never seen to use: neither booting nor dead, just unknown."""
        return self.actual_status is not None and self.actual_status not in KNOWN_STATUSES

    def host_port(self, container_port: int) -> int | None:
        return self.ports.get(container_port)

    @classmethod
    def from_api(cls, raw: Any, call: str = "list instances") -> Instance:
        if not isinstance(raw, Mapping):
            raise errors.VastBadResponse(call, "instance is not an object")
        status = _str(raw, "actual_status")
        env = _env_of(raw.get("extra_env"))
        return cls(
            id=_required_int(raw, "id", call),
            label=_str(raw, "label"),
            actual_status=status.lower() if status else None,
            intended_status=_str(raw, "intended_status"),
            cur_state=_str(raw, "cur_state"),
            status_msg=_str(raw, "status_msg"),
            image_uuid=_str(raw, "image_uuid"),
            template_hash_id=_str(raw, "template_hash_id"),
            host_id=_int(raw, "host_id", call),
            machine_id=_int(raw, "machine_id", call),
            public_ipaddr=_str(raw, "public_ipaddr"),
            ports=_parse_ports(raw.get("ports")),
            dph_total=_num(raw, "dph_total", call),
            start_date=_num(raw, "start_date", call),
            gpu_name=_str(raw, "gpu_name"),
            num_gpus=_int(raw, "num_gpus", call),
            geolocation=_str(raw, "geolocation"),
            auth_tag=_env_value(env, AUTH_TAG_ENV),
            rented_without_auth=_rented_without_auth(env),
        )


# ---------------------------------------------------------------- templates


@dataclass(frozen=True, slots=True)
class Template:
    """A Vast.ai template; ``hash_id`` changes whenever its content does."""

    id: int
    hash_id: str
    name: str
    image: str | None = None
    tag: str | None = None
    env: str | None = None
    onstart: str | None = None
    private: bool | None = None
    creator_id: int | None = None

    @classmethod
    def from_api(cls, raw: Any, call: str = "templates") -> Template:
        if not isinstance(raw, Mapping):
            raise errors.VastBadResponse(call, "template is not an object")
        hash_id = _str(raw, "hash_id")
        name = raw.get("name")
        if not hash_id:
            raise errors.VastBadResponse(call, "template has no 'hash_id'")
        if not isinstance(name, str):
            raise errors.VastBadResponse(call, "template has no 'name'")
        private = raw.get("private")
        return cls(
            id=_required_int(raw, "id", call),
            hash_id=hash_id,
            name=name,
            image=_str(raw, "image"),
            tag=_str(raw, "tag"),
            env=raw.get("env") if isinstance(raw.get("env"), str) else None,
            onstart=raw.get("onstart") if isinstance(raw.get("onstart"), str) else None,
            private=bool(private) if private is not None else None,
            creator_id=_int(raw, "creator_id", call),
        )


# ---------------------------------------------------------------- desired state and proxying


@dataclass(frozen=True, slots=True)
class PortMap:
    """One proxied port: nginx listens on ``listen_port``, forwarding to ``container_port`` remotely."""

    listen_port: int
    container_port: int


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where one listener forwards to right now: ``host:port`` on the instance's public address."""

    listen_port: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """The content our private template must hold."""

    name: str
    image: str
    tag: str | None
    env: str  # docker-flag form: "-p 8000:8000 -e KEY=value"
    onstart: str | None
    disk_gb: float


@dataclass(frozen=True, slots=True)
class DesiredSpec:
    """What this pod wants rented, derived from the settings; no secrets in here."""

    label: str
    image: str
    template: TemplateSpec
    ports: tuple[PortMap, ...]
    env: Mapping[str, str]
    onstart: str | None
    disk_gb: float
    #: the fingerprint of the upstream secret (``UPSTREAM_AUTH_HEADER``), not the secret; None without
    auth_tag: str | None = None

    @property
    def container_ports(self) -> tuple[int, ...]:
        return tuple(sorted({p.container_port for p in self.ports}))


def upstream_secret(api_key: str, label: str) -> str:
    """The per-pod secret of ``UPSTREAM_AUTH_HEADER``: stable per pod (so an adopted instance still
    matches after a restart) and derived from the API key, which the workload never sees."""
    return hmac.new(api_key.encode(), b"upstream-auth:" + label.encode(), hashlib.sha256).hexdigest()[:40]


def auth_tag(secret: str) -> str:
    """``AUTH_TAG_ENV``'s value: which secret an instance was rented with, so one rented with another
    (a rotated key) is replaced. Not the secret: a one-way hash of a 160-bit HMAC."""
    return hashlib.sha256(b"upstream-auth-tag:" + secret.encode()).hexdigest()[:16]


def normalize_image(image: str | None) -> str:
    """Compare image references tolerantly: ``nginx`` == ``docker.io/library/nginx:latest``."""
    if not image:
        return ""
    ref = image.strip()
    digest = ""
    if "@" in ref:
        ref, _, digest = ref.partition("@")
        digest = "@" + digest
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
            break
    if ref.startswith("library/"):
        ref = ref[len("library/") :]
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last and not digest:
        ref += ":latest"
    return ref + digest
