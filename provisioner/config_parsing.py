"""Pure parsers of the env var values ``settings.py`` stores parsed (no I/O, no environment access).

Each ``parse_*`` takes the raw text of one variable and returns its parsed value, or raises
``ValueError`` with a message that never echoes a secret; ``settings.py`` names the variable.
Each ``check_*`` validates one plain value and returns it (normalised where said). The one error
mapping of ``Settings`` and ``ReaperSettings`` (``check_required``, ``config_error``) lives here too.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import redis.connection
from pydantic import AliasChoices, SecretStr, ValidationError

from provisioner import errors, imageref, model, rendering, selection
from provisioner.vast import query

_T = TypeVar("_T")

#: env vars named ``VAST_ENV_<NAME>`` become env ``NAME`` in the remote container.
#: Vast accepts a label of at most 256 characters at create time (docs/vast-api.md §6.1).
MAX_LABEL_LEN: Final = 256
_HEALTH_PATH_RE: Final = re.compile(r"^/[A-Za-z0-9._~/\-%]*$")
_POD_NAME_RE: Final = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$")
_ENV_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Vast's limit on the onstart script (characters)
MAX_ONSTART_LEN: Final = 4000
_TEMPLATE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\- ]{0,127}$")
_KEY_PREFIX_RE: Final = re.compile(r"^[A-Za-z0-9:_.\-{}]{1,64}$")
_COUNTRY_CODE_RE: Final = re.compile(r"^[A-Z]{2}$")
_REGISTRY_RE: Final = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[A-Za-z0-9._\-/]*)?")
_CONFIG_PATH_RE: Final = re.compile(r"[A-Za-z0-9._+,:=@~/\-]+")
_HEADER_RE: Final = re.compile(r"[A-Za-z0-9-]{1,64}")
#: a DNS host name (RFC 1123): dot-separated labels of letters, digits and inner hyphens
_HOST_NAME_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


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


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """``VAST_SEARCH_QUERY``: the text as given and the filter it parses to (``vast/query.py``)."""

    text: str
    filter: Mapping[str, Any] = field(default_factory=dict)


def parse_docker_login(value: str) -> DockerLogin:
    """Parse ``-u USER -p PASS [REGISTRY]``; the error never echoes the value (it holds a password)."""
    try:
        words = shlex.split(value)
    except ValueError:
        raise ValueError("unbalanced quotes; expected '-u USER -p PASSWORD [REGISTRY]'") from None
    user = password = None
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
    registry = rest[0] if rest else None
    if registry is not None and not _REGISTRY_RE.fullmatch(registry):
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


def parse_weights(value: str) -> selection.Weights:
    """``VAST_SCORE_WEIGHTS`` (``price=1,reliability=2``); unnamed parts keep their default."""
    return selection.Weights.parse(value)


def parse_search_query(value: str) -> SearchQuery:
    """``VAST_SEARCH_QUERY``: a CLI query or a JSON filter (``vast/query.py``)."""
    try:
        return SearchQuery(value, query.load_filter(value))
    except errors.QueryError as exc:
        raise ValueError(exc.problem) from None


def split_image(reference: str) -> tuple[str, str | None]:
    """``repo/name:tag`` -> (``repo/name``, ``tag``); a digest or no tag gives ``None``."""
    if "@" in reference:
        return reference, None
    head, _, last = reference.rpartition("/")
    if ":" in last:
        name, _, tag = last.partition(":")
        return (f"{head}/{name}" if head else name), tag
    return reference, None


# ---------------------------------------------------------------- checks of plain values


def check_pod_name(value: str) -> str:
    if not _POD_NAME_RE.fullmatch(value):
        raise ValueError("must be a DNS-style name (lower-case letters, digits, '-' and '.')")
    return value


def check_api_key(value: SecretStr) -> SecretStr:
    key = value.get_secret_value()
    if not key.strip():
        raise ValueError("is empty")
    if any(c.isspace() or not c.isprintable() for c in key):
        raise ValueError("contains white space or control characters")
    if not key.isascii():  # it goes in an HTTP header, which carries ASCII only
        raise ValueError("contains characters outside ASCII")
    return value


def check_api_url(value: str) -> str:
    """An http(s) URL (its port a number in range) without credentials, query or fragment; the trailing
    slash removed."""
    if value != value.strip():
        raise ValueError("has white space around it")
    try:
        parts = urlsplit(value)
        _ = parts.port  # parsed only when read: "host:abc" or a port above 65535 raises here
    except ValueError as exc:  # urllib's words name only the bad part ("Port out of range 0-65535")
        raise ValueError(f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL such as https://console.vast.ai")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("must not carry credentials, a query or a fragment")
    return value.rstrip("/")


def check_redis_url(value: SecretStr) -> SecretStr:
    """A redis://, rediss:// or unix:// URL; surrounding white space removed."""
    text = value.get_secret_value().strip()
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis://, rediss:// or unix:// URL such as redis://redis:6379/10")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("names no host")
    try:
        redis.connection.parse_url(text)  # type: ignore[no-untyped-call]  # options, database
        _ = parts.port
    except ValueError as exc:  # redis-py's words, without the URL (it may hold a password)
        raise ValueError(f"does not parse: {str(exc).replace(text, '<url>')}") from None
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ValueError(f"names database {db!r}: it must be a number, as in redis://redis:6379/10")
    return SecretStr(text)


def check_key_prefix(value: str) -> str:
    if not _KEY_PREFIX_RE.fullmatch(value):
        raise ValueError("must be 1-64 letters, digits or : _ . - { }")
    return value


def check_template_name(value: str) -> str:
    if not _TEMPLATE_NAME_RE.fullmatch(value):
        raise ValueError("must be 1-128 letters, digits, spaces, '.', '_' or '-'")
    return value


def check_image(value: str) -> str:
    """A Docker image reference (``imageref`` follows the distribution/reference grammar)."""
    return imageref.validate(value)


def check_health_path(value: str) -> str:
    if not _HEALTH_PATH_RE.fullmatch(value) or len(value) > 512:
        raise ValueError("must be a plain URL path starting with '/'")
    return value


def check_body_size(value: str) -> str:
    """An nginx size such as ``10M``; surrounding white space removed."""
    if not rendering.BODY_SIZE_RE.fullmatch(value.strip()):
        raise ValueError("must be a size such as 10M, 512k or 1G")
    return value.strip()


def check_config_path(value: Path) -> Path:
    """Every path nginx reads is derived from this one: it stays free of characters nginx parses."""
    if not _CONFIG_PATH_RE.fullmatch(str(value)) or value.name in ("", ".", ".."):
        raise ValueError("must be a file path of letters, digits and . _ + , : = @ ~ / -")
    return value


def check_auth_header(value: str) -> str:
    if not _HEADER_RE.fullmatch(value) or value.lower() in rendering.RESERVED_HEADERS:
        raise ValueError("must be a header name (letters, digits, '-') not already set by the proxy")
    return value


# ---------------------------------------------------------------- validator builders (settings.py)


def blank_is_none(parse: Callable[[Any], _T]) -> Callable[[Any], _T | None]:
    """A validator for an optional value: None, blank text or an empty secret are unset."""

    def validate(value: Any) -> _T | None:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parse(value)

    return validate


def parsed(kind: type[_T], parse: Callable[[str], _T]) -> Callable[[Any], _T]:
    """A validator that parses text and keeps an already parsed value."""

    def validate(value: Any) -> _T:
        if isinstance(value, kind):
            return value
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            raise ValueError("must be text")
        return parse(value)

    return validate


def blank_to_none(value: Any) -> Any:
    """An optional number's value: blank text is unset."""
    return None if isinstance(value, str) and not value.strip() else value


def check_ip_address(value: str) -> str:
    """An IPv4 or IPv6 address (``NGINX_LISTEN_ADDRESS``: nginx binds it, so no host names)."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError("is not an IP address (e.g. 0.0.0.0, 127.0.0.1 or ::)") from None


def check_host(value: str) -> str:
    """An IP address (an IPv6 one with or without brackets, stored bare and normalised) or a host name."""
    text = value.strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if len(text) > 253 or not _HOST_NAME_RE.fullmatch(text) or text.replace(".", "").isdigit():
        raise ValueError("is not an IP address (0.0.0.0, 127.0.0.1, ::1) or a host name")
    return text


def is_env_name(name: str) -> bool:
    """A valid env var name (the part after ``VAST_ENV_``)."""
    return bool(_ENV_NAME_RE.fullmatch(name))


def check_onstart(value: str | None) -> str | None:
    """The onstart script within Vast's limit; empty means none."""
    if value is not None and len(value) > MAX_ONSTART_LEN:
        raise ValueError(f"is longer than Vast's {MAX_ONSTART_LEN}-character limit")
    return value or None


def check_label(label: str) -> str:
    """A Vast label: printable, at most ``MAX_LABEL_LEN``, no surrounding white space."""
    if len(label) > MAX_LABEL_LEN:
        raise ValueError(f"is {len(label)} characters; Vast allows {MAX_LABEL_LEN}")
    if any(not c.isprintable() for c in label):
        raise ValueError("contains control characters")
    if label != label.strip() or not label:
        raise ValueError("must not be empty or start or end with white space")
    return label


def check_label_prefix(value: str) -> str:
    if not value or value != value.strip():
        raise ValueError("must not be empty or start or end with white space")
    if len(value) > MAX_LABEL_LEN or any(not c.isprintable() for c in value):
        raise ValueError(f"must be at most {MAX_LABEL_LEN} printable characters")
    return value


# ---------------------------------------------------------------- the one error mapping (settings.py)


def config_error(exc: ValidationError, fields: Mapping[str, Any]) -> errors.ConfigError:
    """The first validation error as ``ConfigError`` naming its env var (one line, no value echoed)."""
    first = exc.errors()[0]
    message = _first_line(str(first.get("msg", "is invalid")))
    loc = tuple(first.get("loc", ()))
    if not loc and ":" in message and message.split(":", 1)[0].isupper():
        variable, _, problem = message.partition(":")
        return errors.ConfigError(variable.strip(), problem.strip())
    if first.get("type") == "missing":
        message = "is required and not set"
    return errors.ConfigError(_env_name(loc, fields), message)


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
