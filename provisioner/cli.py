"""The ``provisioner`` command line (typer): parse, call one function, end through ``launch``.

``launch.py`` knows the exit codes and turns our errors into one line and a code; ``provisioner run``
reaches it without this module (``__main__.py``). Start-up is short (``--help``, a config error:
docs/performance.md): this module imports only typer, the error tree and ``launch``; each command
imports what it needs when it runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

import typer

from provisioner import errors, launch, model
from provisioner.launch import EXIT_CONFIG, EXIT_FAILURE, arun, fail, guard

if TYPE_CHECKING:
    from provisioner import blacklist

# rich_markup_mode=None: click's plain help (re-wrapped paragraphs, no "<bool>" type tags on flags),
# and rich is never imported
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Rent a Vast.ai GPU for a Kubernetes pod and reverse-proxy to it with nginx.",
)

T = TypeVar("T")


@app.command()
def run() -> None:
    """Provision this pod's instance and proxy to it until SIGTERM (configured by env vars)."""
    launch.run()  # `provisioner run` itself skips typer (__main__.py); this serves `run --help` and tests


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for scripts.")] = False,
    admin_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="The pod's admin server (default: ADMIN_HOST:ADMIN_PORT on this host). With it, the "
            "pod's settings are needed only when that server does not answer.",
        ),
    ] = None,
) -> None:
    """Show this pod's instance, upstream, health, bans and recent events (same env as `run`)."""
    from provisioner import status as status_mod  # noqa: PLC0415

    if admin_url is not None and (why := _bad_url(admin_url)) is not None:
        raise fail(f"--admin-url: {why}", EXIT_CONFIG)
    cfg, problem = status_mod.settings_or_problem()
    if problem is not None and admin_url is None:
        raise fail(str(problem), EXIT_CONFIG)
    report = arun(lambda: status_mod.gather_status(cfg, admin_url=admin_url, settings_problem=problem))
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(status_mod.render_table(report), end="")


def _bad_url(url: str) -> str | None:
    """Why ``url`` is no http(s) URL with a valid port, or None."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        return f"{url!r} is not a valid URL ({exc})"
    return None if parts.scheme in ("http", "https") and parts.hostname else f"{url!r} is not an http(s) URL"


@app.command()
def demo(
    check: Annotated[bool, typer.Option(help="Exit 0 once one request reaches the simulated GPU.")] = False,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Proxy port (a free one if taken).")] = 3000,
    boot_delay: Annotated[float, typer.Option(help="Simulated instance boot time, seconds.")] = 3.0,
    timeout: Annotated[float, typer.Option(help="With --check: give up after this many seconds.")] = 90.0,
) -> None:
    """Run against the built-in simulated Vast.ai: no API key, no Redis, no root."""
    from provisioner import demo as demo_mod  # noqa: PLC0415 - the simulator loads only here
    from provisioner import logs  # noqa: PLC0415

    logs.setup_logging(pod="demo-pod-0", fmt="text")
    code = arun(
        lambda: demo_mod.run_demo(check=check, listen_port=port, boot_delay_s=boot_delay, timeout_s=timeout)
    )
    raise typer.Exit(code)


@app.command()
def query(
    text: Annotated[
        str | None,
        typer.Argument(
            metavar="QUERY",
            help="A search query, e.g. 'gpu_name=RTX_4090 num_gpus=1' (--as-run: VAST_SEARCH_QUERY).",
        ),
    ] = None,
    storage: Annotated[
        float | None, typer.Option(help="allocated_storage in GB (default 5; --as-run uses VAST_DISK_GB).")
    ] = None,
    as_run: Annotated[
        bool,
        typer.Option(
            "--as-run",
            help="Print the body `run` sends now: the query with VAST_DISK_GB, the price, reliability, "
            "port and host filters and the bans (BLACKLIST_ENABLED). Needs the pod's settings.",
        ),
    ] = False,
) -> None:
    """Print the JSON search body that would be sent to Vast.ai for a query."""
    if as_run:
        if storage is not None:
            raise fail("--storage: not with --as-run (the body uses VAST_DISK_GB)", EXIT_CONFIG)
        body = _as_run_body(text)
    elif text is None:
        raise fail("query: give a query, or --as-run for the body `run` sends", EXIT_CONFIG)
    else:
        from provisioner.vast import query as query_mod  # noqa: PLC0415

        size = 5.0 if storage is None else storage
        body = guard(lambda: query_mod.search_body(query_mod.load_filter(text), allocated_storage=size))
    print(json.dumps(body, indent=2))


def _as_run_body(text: str | None) -> dict[str, object]:
    """What ``run`` sends for the current settings (``text`` replacing ``VAST_SEARCH_QUERY``)."""
    from provisioner import offers as offers_mod  # noqa: PLC0415
    from provisioner import settings as settings_mod  # noqa: PLC0415

    overrides = {} if text is None else {"vast_search_query": text}
    cfg = guard(lambda: settings_mod.load_settings(**overrides))
    body, store_error = arun(lambda: offers_mod.search_body_now(cfg))
    if store_error:
        print(f"provisioner: warning: {store_error}; the bans are left out", file=sys.stderr)
    return dict(body)


@app.command()
def render(
    upstream: Annotated[
        list[str] | None,
        typer.Option(metavar="LISTEN=HOST:PORT", help="Repeatable; none renders the 503 config."),
    ] = None,
    listen: Annotated[
        list[int] | None, typer.Option(metavar="PORT", help="Listen ports (default 3000).")
    ] = None,
    max_body_size: Annotated[str, typer.Option(metavar="SIZE")] = "10M",
    state_dir: Annotated[Path, typer.Option(metavar="DIR")] = Path("/tmp/provisioner/nginx"),
    timeout: Annotated[int, typer.Option(metavar="SECONDS", help="Upstream read/send timeout.")] = 600,
) -> None:
    """Print the nginx config the provisioner would write for the given upstreams."""
    from provisioner import model, rendering  # noqa: PLC0415

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

    print(guard(build), end="")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def sim(ctx: typer.Context) -> None:
    """Serve the simulated Vast.ai API (docker-compose, tests); `provisioner sim --help` for its flags."""
    from provisioner.sim import app as sim_app  # noqa: PLC0415

    # one parser, the simulator's own (as `python -m provisioner.sim`); 8765 as docker-compose and the README
    raise typer.Exit(sim_app.main(ctx.args, default_port=8765))


@app.command()
def offers(
    top: Annotated[int, typer.Option(min=1, max=1000, help="How many offers to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, for scripts.")] = False,
) -> None:
    """Search Vast.ai now as this pod would: the top offers with their score parts, banned ones marked.

    Exits 1, saying which constraint removed the most offers, when no offer may be rented.
    """
    from provisioner import offer_report  # noqa: PLC0415
    from provisioner import offers as offers_mod  # noqa: PLC0415

    cfg = launch.load_settings()
    survey = arun(lambda: offers_mod.survey_offers(cfg))
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
        raise fail(reason, EXIT_FAILURE)


@app.command()
def reap(
    apply: Annotated[bool, typer.Option("--apply", help="Destroy the orphans (default: only log).")] = False,
    max_share: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Override REAP_MAX_SHARE for this run.")
    ] = None,
) -> None:
    """Destroy instances labelled REAP_LABEL_PREFIX... whose pod sent no heartbeat for REAP_GRACE_SECONDS.

    A dry run unless --apply. Needs VAST_API_KEY and the pods' Redis (BLACKLIST_REDIS_URL), not the pod's
    own settings. With REAP_CHECK_PODS it keeps an orphan whose pod still exists in Kubernetes. Exits 1
    when it refuses (list failed, Redis unreachable, too many orphans, Kubernetes did not say).
    """
    from provisioner import logs, reaper  # noqa: PLC0415
    from provisioner import settings as settings_mod  # noqa: PLC0415

    cfg = guard(settings_mod.load_reaper_settings)
    secret = [cfg.vast_api_key.get_secret_value()]
    logs.setup_logging(pod="reaper", fmt=cfg.log_format, debug=cfg.debug, secrets=secret)
    outcome = arun(lambda: reaper.run(cfg, apply=apply, max_share=max_share))
    if outcome.problem is not None:
        raise fail(outcome.problem, EXIT_FAILURE)


blacklist_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="The shared host blacklist in BLACKLIST_REDIS_URL. Needs only the Redis settings "
    "(BLACKLIST_REDIS_URL, BLACKLIST_KEY_PREFIX, BLACKLIST_REDIS_TIMEOUT_SECONDS), not the pod's.",
)
app.add_typer(blacklist_app, name="blacklist")

#: host and machine ids are positive integers (``blacklist ban -- -5`` is refused)
_Ident = Annotated[
    int, typer.Argument(metavar="HOST", min=1, max=2**53, help="Host id (a machine id with --machine).")
]


def _with_blacklist(owner: str, action: Callable[[blacklist.Blacklist], Awaitable[T]]) -> T:
    """Run ``action(blacklist)`` against BLACKLIST_REDIS_URL; Redis errors become one line, exit 1."""
    from provisioner import fleet_wiring  # noqa: PLC0415
    from provisioner import settings as settings_mod  # noqa: PLC0415

    cfg = guard(settings_mod.load_redis_access)

    async def go() -> T:
        async with fleet_wiring.connect_blacklist(cfg, owner) as store:
            return await action(store)

    return arun(go)


@blacklist_app.command("list")
def blacklist_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON, for scripts.")] = False,
) -> None:
    """Show every current ban: host or machine, reason, when, expiry, by which pod or operator."""
    import dataclasses  # noqa: PLC0415
    import time  # noqa: PLC0415

    bans = _with_blacklist("", lambda store: store.bans())
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


def operator_name(given: str | None) -> str:
    """Who a manual ban is recorded as: ``operator:<--operator, else $USER, else "unknown">``."""
    name = (given or os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown").strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise errors.ConfigError("--operator", "must be 1-64 printable characters")
    return f"operator:{name}"


@blacklist_app.command("ban")
def blacklist_ban(
    ident: _Ident,
    ttl: Annotated[
        int | None, typer.Option(min=1, max=model.MAX_BAN_TTL_S, help="Seconds (BLACKLIST_BAN_TTL_SECONDS).")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (shown by `blacklist list`).")] = "manual",
    machine: Annotated[bool, typer.Option("--machine", help="Ban one machine instead of a host.")] = False,
    operator: Annotated[
        str | None, typer.Option(help="Who bans (recorded as operator:NAME; default $USER).")
    ] = None,
) -> None:
    """Ban a host (or one machine) for every pod sharing this Redis."""
    kind: Literal["host", "machine"] = "machine" if machine else "host"
    owner = guard(lambda: operator_name(operator))
    ban_ttl = _with_blacklist(owner, lambda store: _ban(store, kind, ident, reason, ttl))
    print(f"banned {kind} {ident} for {ban_ttl}s: {reason} (by {owner})")


async def _ban(store: blacklist.Blacklist, kind: Literal["host", "machine"], ident: int, reason: str,
               ttl: int | None) -> int:  # fmt: skip
    await store.ban_id(kind, ident, reason, ttl)
    return ttl or store.ban_ttl_s


@blacklist_app.command("unban")
def blacklist_unban(
    ident: _Ident,
    machine: Annotated[bool, typer.Option("--machine", help="Unban one machine instead of a host.")] = False,
) -> None:
    """Lift the ban of a host (or one machine)."""
    kind: Literal["host", "machine"] = "machine" if machine else "host"
    lifted = _with_blacklist("", lambda store: store.unban(kind, ident))
    print(f"unbanned {kind} {ident}" if lifted else f"{kind} {ident} was not banned")
