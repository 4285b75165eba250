"""What settings read beside their own fields: the required variables, and ``VAST_ENV_*``.

``check_required`` names every required variable that is unset or blank in one ``ConfigError``.
``remote_env`` turns ``VAST_ENV_<NAME>`` into the remote container's ``<NAME>``; the names the
provisioner itself sets there (its upstream secret and its tag) are refused, since a user's value
would be overwritten or would make every instance look rented with another secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from provisioner import errors
from provisioner.config_parsing import is_env_name

#: env vars named ``VAST_ENV_<NAME>`` become env ``NAME`` in the remote container.
REMOTE_ENV_PREFIX: Final = "VAST_ENV_"
#: what the provisioner sets in the remote environment itself (``wiring.rent_request``)
RESERVED_REMOTE_ENV: Final = frozenset({"UPSTREAM_AUTH_HEADER", "UPSTREAM_AUTH_TOKEN", "UPSTREAM_AUTH_TAG"})


def check_required(names: tuple[str, ...], overrides: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """Every required variable that is unset or blank, named in one ``ConfigError``."""
    unset = [n for n in names if n.lower() not in overrides and n not in env]
    empty = [n for n in names if n.lower() not in overrides and n in env and not env[n].strip()]
    if len(unset) + len(empty) == 1:
        name = (unset or empty)[0]
        raise errors.ConfigError(name, "is required and not set" if unset else "is empty")
    if unset and not empty:
        raise errors.ConfigError(", ".join(unset), "are required and not set")
    if unset or empty:
        problems = [f"{n} is not set" for n in unset] + [f"{n} is empty" for n in empty]
        raise errors.ConfigError(", ".join(unset + empty), "are required: " + "; ".join(problems))


def remote_env(environ: Mapping[str, str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in environ.items():
        if not key.startswith(REMOTE_ENV_PREFIX):
            continue
        name = key[len(REMOTE_ENV_PREFIX) :]
        if not is_env_name(name):
            raise errors.ConfigError(key, "the part after VAST_ENV_ is not a valid env var name")
        if name in RESERVED_REMOTE_ENV:
            raise errors.ConfigError(key, f"{name} is set by the provisioner itself (UPSTREAM_AUTH_HEADER)")
        if len(value) > 256 or len(name) > 256:
            raise errors.ConfigError(key, "Vast allows at most 256 characters per env key and value")
        result[name] = value
    return result
