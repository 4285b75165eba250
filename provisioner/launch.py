"""How ``provisioner`` commands end, and ``provisioner run`` itself, without typer.

The only place with a broad ``except`` and the only place that knows the exit codes: a
``ConfigError`` becomes one line on stderr and exit code 2, a refused API key 3, an nginx failure 4,
any other ``ProvisionerError`` (a taken ``ADMIN_PORT`` included) one line and exit code 1, each also
when it is the only error a task group raised; none of them prints a traceback at the user. ``cli.py``
(the typer app) and ``__main__.py`` (the console script, which sends ``provisioner run`` here without
building the typer app) both end through it. It imports only the error tree; each step imports what
it needs when it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar

from provisioner import errors

if TYPE_CHECKING:
    from provisioner import settings

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_CONFIG: Final = 2
EXIT_AUTH: Final = 3
EXIT_NGINX: Final = 4

T = TypeVar("T")


def fail(message: str, code: int) -> SystemExit:
    """Print ``provisioner: message`` on stderr; the caller raises what this returns."""
    print(f"provisioner: {message}", file=sys.stderr, flush=True)
    return SystemExit(code)


def guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; turn our errors into one line and an exit code.

    An error of ours that leaves a task group alone (inside an ``ExceptionGroup``, nested or not) is
    reported like the bare error; any other exception, or several at once, propagates unchanged.
    """
    try:
        return fn()
    except (errors.ProvisionerError, OSError) as exc:
        raise exit_for(exc) from None
    except BaseExceptionGroup as group:
        sole = sole_error(group)
        if sole is None:
            raise
        raise exit_for(sole) from None


def exit_for(exc: errors.ProvisionerError | OSError) -> SystemExit:
    """One line on stderr for ``exc``; the ``SystemExit`` with its exit code, for the caller to raise."""
    if isinstance(exc, errors.ConfigError):
        return fail(str(exc), EXIT_CONFIG)
    if isinstance(exc, errors.AuthError):
        return fail(str(exc), EXIT_AUTH)
    if isinstance(exc, errors.NginxError):
        return fail(f"nginx: {exc}", EXIT_NGINX)
    if isinstance(exc, errors.ProvisionerError):
        return fail(str(exc), EXIT_FAILURE)
    where = f": {exc.filename}" if exc.filename else ""
    return fail(f"{exc.strerror or exc}{where}", EXIT_FAILURE)


def sole_error(group: BaseExceptionGroup[BaseException]) -> errors.ProvisionerError | OSError | None:
    """The one error of ours in ``group`` (nested one-error groups looked through), else None."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, errors.ProvisionerError | OSError) else None


def arun(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run`` of ``make()`` under ``guard`` (asyncio is imported only by commands that need it)."""
    import asyncio  # noqa: PLC0415

    return guard(lambda: asyncio.run(make()))


def load_settings() -> settings.Settings:
    from provisioner import settings as settings_mod  # noqa: PLC0415

    return guard(settings_mod.load_settings)


def setup_logging(cfg: settings.Settings) -> None:
    from provisioner import logs  # noqa: PLC0415

    secrets = [cfg.vast_api_key.get_secret_value()]
    login = cfg.docker_login
    if login is not None:
        secrets.append(login.password.get_secret_value())
    token = cfg.upstream_auth_token
    if token is not None:
        secrets.append(token.get_secret_value())
    logs.setup_logging(pod=cfg.pod_name, fmt=cfg.log_format, debug=cfg.debug, secrets=secrets)


def run() -> None:
    """``provisioner run``: provision this pod's instance and proxy to it until SIGTERM."""
    cfg = load_settings()
    setup_logging(cfg)
    from provisioner import daemon  # noqa: PLC0415

    arun(lambda: daemon.run(cfg))


def skip_httpx_cli() -> None:
    """``import httpx`` loads its optional CLI (rich, pygments: 3 MiB resident, docs/performance.md §5)
    when they are installed; a ``None`` in ``sys.modules`` makes it fall back to its no-extra stub."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: "not importable"
