"""A reconciler built from the pod's settings, wired to fakes, for unit tests that drive ticks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from provisioner import planning, reconciler, wiring
from provisioner.settings import load_settings
from provisioner.vast import client as vast_client
from tests.fakes import Clock

BASE = "http://vast.test"


class FakeProxy:
    """Accepts every nginx config."""

    async def apply(self, text: str) -> bool:
        return True


def make_reconciler(
    env: pytest.MonkeyPatch,
    http: httpx.AsyncClient,
    clock: Clock,
    *,
    bans: Any = None,
    fleet: Any = None,
    **extra_env: str,
) -> reconciler.Reconciler:
    """The settings from ``env`` (plus ``extra_env``), the Vast API at ``BASE`` through ``http``."""
    for key, value in extra_env.items():
        env.setenv(key, value)
    settings = load_settings()
    return reconciler.Reconciler(
        vast=vast_client.VastClient(http, settings.vast_api_key, base_url=BASE),
        proxy=FakeProxy(),
        proxy_config=wiring.proxy_config(settings),
        desired=settings.desired_spec(),
        policy=planning.Policy(boot_timeout_s=settings.boot_timeout_seconds),
        search_body=wiring.build_search_body(settings),
        choose_offers=wiring.build_chooser(settings),
        rent_request=wiring.build_rent_request(settings),
        health_http=http,
        allow_private_upstreams=settings.vast_allow_private_upstreams,
        bans=bans,
        fleet=fleet,
        max_fleet_dph=settings.vast_max_fleet_dph,
        clock=clock,
    )
