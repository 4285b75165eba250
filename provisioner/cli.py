"""The ``provisioner`` command line: parse, call one function, map errors to exit codes.

This is the only place with a broad ``except`` and the only place that knows the exit codes: a
``ConfigError`` becomes one line on stderr and exit code 2, a refused API key 3, an nginx failure 4,
any other ``ProvisionerError`` (a taken ``ADMIN_PORT`` included) one line and exit code 1; nothing
prints a traceback at the user.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Final, Literal, TypeVar

import typer

from provisioner import blacklist, daemon, errors, logs, model, offer_report, rendering, wiring
from provisioner import offers as offers_mod
from provisioner import settings as settings_mod

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_CONFIG: Final = 2
EXIT_AUTH: Final = 3
EXIT_NGINX: Final = 4

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Rent a Vast.ai GPU for a Kubernetes pod and reverse-proxy to it with nginx.",
)

T = TypeVar("T")


def _fail(message: str, code: int) -> typer.Exit:
    print(f"provisioner: {message}", file=sys.stderr, flush=True)
    return typer.Exit(code)


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; turn our errors into one line and an exit code."""
    try:
        return fn()
    except errors.ConfigError as exc:
        raise _fail(str(exc), EXIT_CONFIG) from None
    except errors.AuthError as exc:
        raise _fail(str(exc), EXIT_AUTH) from None
    except errors.NginxError as exc:
        raise _fail(f"nginx: {exc}", EXIT_NGINX) from None
    except errors.ProvisionerError as exc:
        raise _fail(str(exc), EXIT_FAILURE) from None
    except OSError as exc:
        raise _fail(f"{exc.strerror or exc}", EXIT_FAILURE) from None


def _setup_logging(cfg: settings_mod.Settings) -> None:
    secrets = [cfg.vast_api_key.get_secret_value()]
    login = cfg.docker_login
    if login is not None:
        secrets.append(login.password.get_secret_value())
    token = cfg.upstream_auth_token
    if token is not None:
        secrets.append(token.get_secret_value())
    logs.setup_logging(pod=cfg.pod_name, fmt=cfg.log_format, debug=cfg.debug, secrets=secrets)


@app.command()
def run() -> None:
    """Provision this pod's instance and proxy to it until SIGTERM (configured by env vars)."""
    cfg = _guard(settings_mod.load_settings)
    _setup_logging(cfg)
    _guard(lambda: asyncio.run(daemon.run(cfg)))
    raise typer.Exit(EXIT_OK)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for scripts.")] = False,
    admin_url: Annotated[
        str | None, typer.Option(help="The pod's admin server (default: ADMIN_HOST:ADMIN_PORT on this host).")
    ] = None,
) -> None:
    """Show this pod's instance, upstream, health, bans and recent events (same env as `run`)."""
    from provisioner import status as status_mod  # noqa: PLC0415

    cfg = _guard(settings_mod.load_settings)
    report = _guard(lambda: asyncio.run(status_mod.gather_status(cfg, admin_url=admin_url)))
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(status_mod.render_table(report), end="")


@app.command()
def demo(
    check: Annotated[bool, typer.Option(help="Exit 0 once one request reaches the simulated GPU.")] = False,
    port: Annotated[int, typer.Option(help="Proxy port (a free one if taken).")] = 3000,
    boot_delay: Annotated[float, typer.Option(help="Simulated instance boot time, seconds.")] = 3.0,
    timeout: Annotated[float, typer.Option(help="With --check: give up after this many seconds.")] = 90.0,
) -> None:
    """Run against the built-in simulated Vast.ai: no API key, no Redis, no root."""
    from provisioner import demo as demo_mod  # noqa: PLC0415 - the simulator loads only here

    logs.setup_logging(pod="demo-pod-0", fmt="text")
    code = _guard(
        lambda: asyncio.run(
            demo_mod.run_demo(check=check, listen_port=port, boot_delay_s=boot_delay, timeout_s=timeout)
        )
    )
    raise typer.Exit(code)


@app.command()
def query(
    text: Annotated[str, typer.Argument(help="A search query, e.g. 'gpu_name=RTX_4090 num_gpus=1'.")],
    storage: Annotated[float, typer.Option(help="allocated_storage in GB.")] = 5.0,
) -> None:
    """Print the JSON search body that would be sent to Vast.ai for a query."""
    from provisioner.vast import query as query_mod  # noqa: PLC0415

    def build() -> dict[str, object]:
        return query_mod.search_body(query_mod.load_filter(text), allocated_storage=storage)

    body = _guard(build)
    print(json.dumps(body, indent=2))


@app.command()
def render(
    upstream: Annotated[
        list[str] | None, typer.Option(help="LISTEN=HOST:PORT, repeatable; none renders the 503 config.")
    ] = None,
    listen: Annotated[list[int] | None, typer.Option(help="Listen ports (default 3000).")] = None,
    max_body_size: Annotated[str, typer.Option()] = "10M",
    state_dir: Annotated[Path, typer.Option()] = Path("/tmp/provisioner/nginx"),
    timeout: Annotated[int, typer.Option(help="Upstream read/send timeout, seconds.")] = 600,
) -> None:
    """Print the nginx config the provisioner would write for the given upstreams."""

    def build() -> str:
        ups: dict[int, model.Upstream] = {}
        for item in upstream or []:
            lp, sep, target = item.partition("=")
            host, _, port = target.rpartition(":")
            if not sep or not lp.isdigit() or not port.isdigit() or not host:
                raise errors.ConfigError("--upstream", f"{item!r} is not LISTEN=HOST:PORT")
            ups[int(lp)] = model.Upstream(int(lp), host.strip("[]"), int(port))
        ports = sorted(set(listen or []) | set(ups)) or [3000]
        cfg = rendering.ProxyConfig(
            listeners=tuple(model.PortMap(p, p) for p in ports),
            state_dir=state_dir.resolve(),
            max_body_size=max_body_size,
            proxy_timeout_s=timeout,
        )
        return rendering.render_nginx_conf(cfg, ups or None, reason="no-upstream")

    print(_guard(build), end="")


@app.command()
def sim(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    boot_delay: Annotated[float, typer.Option(help="Seconds from rent to running.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Catalogue seed.")] = 7,
    rate_limits: Annotated[bool, typer.Option(help="Enforce Vast-like per-endpoint rate limits.")] = False,
    api_key: Annotated[str | None, typer.Option(help="Require exactly this key (default: any).")] = None,
    public_ip: Annotated[
        str, typer.Option(help="Address reported as the instances' public_ipaddr.")
    ] = "127.0.0.1",
    workload_host: Annotated[
        str, typer.Option(help="Address the simulated GPU workloads bind.")
    ] = "127.0.0.1",
) -> None:
    """Serve the simulated Vast.ai API (for local runs, docker-compose and tests)."""
    from provisioner.sim import app as sim_app  # noqa: PLC0415

    config = sim_app.SimConfig(
        seed=seed,
        boot_delay_s=boot_delay,
        rate_limits=rate_limits,
        api_key=api_key,
        public_ip=public_ip,
        workload_host=workload_host,
    )
    _guard(lambda: sim_app.run_sim(host, port, config))


@app.command()
def offers(
    top: Annotated[int, typer.Option(min=1, max=1000, help="How many offers to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, for scripts.")] = False,
) -> None:
    """Search Vast.ai now as this pod would: the top offers with their score parts, banned ones marked.

    Exits 1, saying which constraint removed the most offers, when no offer may be rented.
    """
    cfg = _guard(settings_mod.load_settings)
    survey = _guard(lambda: asyncio.run(offers_mod.survey_offers(cfg)))
    if survey.store_error:
        print(f"provisioner: warning: {survey.store_error}; bans are not marked", file=sys.stderr)
    shown = offer_report.shown_offers(survey.scored, top)
    first = survey.usable[0].offer.id if survey.usable else None
    reason = None if survey.usable else offer_report.explain_no_match(survey.scored, survey.relaxed)
    if as_json:
        rows = [offer_report.offer_row(s, i, offer_report.note_of(s, first)) for i, s in enumerate(shown, 1)]
        excluded = offer_report.exclusion_counts(survey.scored)
        usable = len(survey.usable)
        print(json.dumps({"offers": rows, "usable": usable, "excluded": excluded, "reason": reason}))
    elif shown:
        print(offer_report.render_offers(shown, first), end="")
    if reason is not None:
        raise _fail(reason, EXIT_FAILURE)


@app.command()
def reap(
    apply: Annotated[bool, typer.Option("--apply", help="Destroy the orphans (default: only log).")] = False,
    max_share: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Override REAP_MAX_SHARE for this run.")
    ] = None,
) -> None:
    """Destroy instances labelled REAP_LABEL_PREFIX... whose pod sent no heartbeat for REAP_GRACE_SECONDS.

    A dry run unless --apply. Needs VAST_API_KEY and the pods' Redis (BLACKLIST_REDIS_URL), not the
    pod's own settings. Exits 1 when it refuses (list failed, Redis unreachable, too many orphans).
    """
    from provisioner import reaper  # noqa: PLC0415

    cfg = _guard(settings_mod.load_reaper_settings)
    secret = [cfg.vast_api_key.get_secret_value()]
    logs.setup_logging(pod="reaper", fmt=cfg.log_format, debug=cfg.debug, secrets=secret)
    outcome = _guard(lambda: asyncio.run(reaper.run(cfg, apply=apply, max_share=max_share)))
    if outcome.problem is not None:
        raise _fail(outcome.problem, EXIT_FAILURE)


blacklist_app = typer.Typer(
    no_args_is_help=True, help="The shared host blacklist in BLACKLIST_REDIS_URL (same env as `run`)."
)
app.add_typer(blacklist_app, name="blacklist")


def _with_blacklist(cfg: settings_mod.Settings, action: Callable[[blacklist.Blacklist], Awaitable[T]]) -> T:
    """Run ``action(blacklist)`` against BLACKLIST_REDIS_URL; Redis errors become one line, exit 1."""

    async def go() -> T:
        async with wiring.connect_blacklist(cfg) as store:
            return await action(store)

    return _guard(lambda: asyncio.run(go()))


@blacklist_app.command("list")
def blacklist_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON, for scripts.")] = False,
) -> None:
    """Show every current ban: host or machine, reason, when, expiry, by which pod."""
    cfg = _guard(settings_mod.load_settings)
    bans = _with_blacklist(cfg, lambda store: store.bans())
    if as_json:
        print(json.dumps([dataclasses.asdict(b) for b in bans]))
        return
    if not bans:
        print("no bans")
        return
    now = time.time()
    print(f"{'kind':<8} {'id':>10} {'expires in':>11} {'by':<24} reason")
    for b in bans:
        print(f"{b.kind:<8} {b.ident:>10} {b.expires_at - now:>10.0f}s {b.by or '-':<24} {b.reason or '-'}")


@blacklist_app.command("ban")
def blacklist_ban(
    ident: Annotated[int, typer.Argument(metavar="HOST", help="Host id (a machine id with --machine).")],
    ttl: Annotated[int | None, typer.Option(min=1, help="Seconds; default: the ban TTL setting.")] = None,
    reason: Annotated[str, typer.Option(help="Why (shown by `blacklist list`).")] = "manual",
    machine: Annotated[bool, typer.Option("--machine", help="Ban one machine instead of a host.")] = False,
) -> None:
    """Ban a host (or one machine) for every pod sharing this Redis."""
    cfg = _guard(settings_mod.load_settings)
    kind: Literal["host", "machine"] = "machine" if machine else "host"
    _with_blacklist(cfg, lambda store: store.ban_id(kind, ident, reason, ttl))
    print(f"banned {kind} {ident} for {ttl or cfg.blacklist_ban_ttl_seconds}s: {reason}")


@blacklist_app.command("unban")
def blacklist_unban(
    ident: Annotated[int, typer.Argument(metavar="HOST", help="Host id (a machine id with --machine).")],
    machine: Annotated[bool, typer.Option("--machine", help="Unban one machine instead of a host.")] = False,
) -> None:
    """Lift the ban of a host (or one machine)."""
    cfg = _guard(settings_mod.load_settings)
    kind: Literal["host", "machine"] = "machine" if machine else "host"
    lifted = _with_blacklist(cfg, lambda store: store.unban(kind, ident))
    print(f"unbanned {kind} {ident}" if lifted else f"{kind} {ident} was not banned")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
