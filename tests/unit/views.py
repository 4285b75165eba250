"""Typed stand-ins for what ``runtime.Runtime`` reads: a reconciler view, a reconciler that shows it,
an nginx with counters. They satisfy the protocols of ``runtime.py``, so mypy checks their use."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from provisioner import planning
from provisioner.reconciler import ReconcilerView
from provisioner.settings import Settings


def make_view(**changes: Any) -> ReconcilerView:
    """A view before the first tick, with ``changes`` applied."""
    base = ReconcilerView(
        phase=None,
        last_tick_at=0.0,
        last_list_ok_at=0.0,
        serving=None,
        serving_healthy=None,
        unserve_reason="starting",
        upstreams={},
        last_plan=None,
        last_observation=None,
        first_seen={},
        template_pending=False,
        events=(),
    )
    return dataclasses.replace(base, **changes)


def view_after(desired: Any, observation: planning.Observation, **changes: Any) -> ReconcilerView:
    """A view after one tick that saw ``observation`` (the plan is the real planner's)."""
    plan = planning.plan(desired, observation, planning.Policy())
    return make_view(
        phase=plan.phase,
        last_tick_at=observation.now,
        last_observation=observation,
        last_plan=plan,
        **changes,
    )


class Shows:
    """A reconciler as the readers see it: only ``view()``."""

    def __init__(self, view: ReconcilerView) -> None:
        self.current = view

    def view(self) -> ReconcilerView:
        return self.current


@dataclass
class FakeNginx:
    """The nginx state the readers show."""

    is_running: bool = True
    reloads: int = 0
    restarts: int = 0


def pod_settings() -> Settings:
    """A valid pod's settings, without the environment."""
    return Settings(
        pod_name="vast-pod-0",
        vast_api_key=SecretStr("k3y-abcdef"),
        vast_template_name="whisper",
        vast_template_image="ghcr.io/acme/whisper:1.2",
    )
