"""A reconciler built from the pod's settings, wired to fakes, for unit tests that drive ticks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from provisioner import planning, reconciler, renting, upstream_health, wiring
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
    vast = vast_client.VastClient(http, settings.vast_api_key, base_url=BASE)
    desired = settings.desired_spec()
    spec = renting.RentSpec(
        search_body=wiring.build_search_body(settings),
        choose_offers=wiring.build_chooser(settings),
        rent_request=wiring.build_rent_request(settings),
        max_fleet_dph=settings.vast_max_fleet_dph,
    )
    health = upstream_health.Checker(http, desired.ports, allow_private=settings.vast_allow_private_upstreams)
    return reconciler.Reconciler(
        reconciler.Adapters(vast, FakeProxy(), health, bans=bans, fleet=fleet),
        renting.Renter(vast, spec, bans=bans, fleet=fleet),
        reconciler.ReconcilerConfig(
            desired=desired,
            proxy_config=wiring.proxy_config(settings),
            policy=planning.Policy(boot_timeout_s=settings.boot_timeout_seconds),
        ),
        clock=clock,
    )
