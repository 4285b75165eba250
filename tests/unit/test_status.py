"""`provisioner status`: which instance a pod is about, and the readable table."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator

import fakeredis
import httpx
import pytest
import respx

from provisioner import errors, fleet_wiring, model, pacer, planning, runtime, status
from provisioner.reconciler import ReconcilerView
from provisioner.settings import load_settings
from tests.unit.views import make_view, view_after

DESIRED = model.DesiredSpec(
    label="k8s_pod=vast-pod-0",
    image="vastai/test:1",
    template=model.TemplateSpec(
        name="t", image="vastai/test", tag="1", env="-p 8000:8000", onstart=None, disk_gb=20
    ),
    ports=(model.PortMap(3000, 8000),),
    env={},
    onstart=None,
    disk_gb=20,
)


def inst(iid: int, status_: str | None, *, mapped: bool = False) -> model.Instance:
    return model.Instance(
        id=iid,
        label=DESIRED.label,
        actual_status=status_,
        image_uuid=DESIRED.image,
        public_ipaddr="203.0.113.7" if mapped else None,
        ports={8000: 40000 + iid} if mapped else {},
    )


def state_after(*instances: model.Instance, healthy: dict[int, bool] | None = None) -> ReconcilerView:
    obs = planning.Observation(now=1000.0, instances=instances, template_hash=None, healthy=healthy or {})
    return view_after(DESIRED, obs)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        pytest.param(None, None, id="no-reconciler"),
        pytest.param(make_view(), None, id="no-tick-yet"),
        pytest.param(state_after(), None, id="renting"),
        pytest.param(state_after(inst(5, "loading")), 5, id="booting"),
        pytest.param(
            state_after(inst(5, "loading"), inst(6, "running", mapped=True)), 6, id="ready-over-booting"
        ),
        pytest.param(state_after(inst(5, "exited")), None, id="dead-is-not-kept"),
    ],
)
def test_focus_instance(state: ReconcilerView | None, expected: int | None) -> None:
    """The pod is about its served instance, else the one it keeps booting; dead ones never."""
    focus = runtime.focus_instance(state)
    assert (focus.id if focus is not None else None) == expected


def test_focus_prefers_the_served_instance() -> None:
    """While a replacement boots, the served (drifted) instance stays the focus."""
    state = dataclasses.replace(state_after(inst(5, "loading")), serving=inst(4, "running", mapped=True))
    focus = runtime.focus_instance(state)
    assert focus is not None and focus.id == 4


def report(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "source": "admin",
        "source_detail": "http://127.0.0.1:8081/status",
        "pod": "vast-pod-0",
        "label": "k8s_pod=vast-pod-0",
        "phase": "booting",
        "ready": False,
        "ready_reason": "booting",
        "healthy": True,
        "health_reason": "ok",
        "instance": None,
        "instances": [],
        "upstreams": [],
        "upstream_healthy": None,
        "cost_per_hour": 0.0,
        "accrued_cost": 0.0,
        "bans": [],
        "bans_source": "events",
        "events": [],
        "last_error": None,
        "generated_at": 10_000.0,
    }
    base.update(changes)
    return base


def test_table_while_booting() -> None:
    """Booting: not ready with the reason, no upstream (nginx answers 503), no events yet."""
    text = status.render_table(report())
    assert "phase       booting (not ready: booting)" in text
    assert "instance    none" in text
    assert "upstream    none (nginx answers 503)" in text
    assert "recent events: none" in text


def test_table_with_instances_and_blacklist_bans() -> None:
    """Two instances get a table with the served one starred; blacklist bans are listed with expiry."""
    rows = [
        {"id": 4, "actual_status": "running", "verdict": "drifted", "served": True, "host_id": 14,
         "machine_id": 24, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_total": 0.4, "uptime_s": 7300.0},
        {"id": 5, "actual_status": "loading", "verdict": "booting", "served": False, "host_id": 15,
         "machine_id": 25, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_total": 0.5, "uptime_s": 65.0},
    ]  # fmt: skip
    bans = [
        {"kind": "host", "id": 99, "reason": "boot-timeout", "by": "vast-pod-1", "instance_id": 31,
         "at": 9000.0, "expires_at": 10_000.0 + 3 * 86400 + 3600, "detail": None},
    ]  # fmt: skip
    text = status.render_table(
        report(
            instance=rows[0], instances=rows, bans=bans, bans_source="blacklist", phase="serving", ready=True
        )
    )
    assert "instance    4  running  host 14  machine 24  1x RTX 4090  $0.400/h  up 2h01m" in text
    assert "bans        1 in the shared blacklist" in text
    assert "host 99  boot-timeout  vast-pod-1  31        3d01h" in text
    assert "4 *" in text and "booting" in text and "1m05s" in text


def test_table_from_the_vast_api() -> None:
    """From the Vast API: the phase is unknown and bans are unknown without the blacklist."""
    text = status.render_table(
        report(source="vast-api", source_detail="x", phase=None, ready=None, bans=None, bans_source=None)
    )
    assert "phase       unknown (no provisioner answers: the pod's admin server did not answer)" in text
    assert "bans        unknown" in text


def test_table_without_a_provisioner_says_the_admin_endpoint_is_unreachable() -> None:
    """No provisioner at all: the table names the admin URL that failed, never "nginx answers 503"."""
    why = "http://127.0.0.1:8081/status: ConnectError: All connection attempts failed"
    text = status.render_table(report(source="vast-api", source_detail="x", phase=None, admin_error=why))
    assert f"phase       unknown (no provisioner answers: {why})" in text
    assert "upstream    none (the provisioner's admin endpoint is unreachable: no proxy is known)" in text
    assert "503" not in text


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_from_admin_names_the_url_it_could_not_reach() -> None:
    """An admin server that does not answer gives the reason with its URL, not just 'no report'."""
    url = f"http://127.0.0.1:{_closed_port()}"
    async with httpx.AsyncClient() as http:
        answer = await status.from_admin(http, url)
    assert isinstance(answer, str)
    assert answer.startswith(f"{url}/status: ConnectError")


async def test_status_with_admin_url_needs_no_pod_settings() -> None:
    """Without the pod's settings, --admin-url alone gives the running pod's report."""
    served = report(pod="vast-pod-3")

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/status"
        return httpx.Response(200, json=served)

    problem = errors.ConfigError("POD_NAME", "is required and not set")
    with respx.mock(assert_all_called=True) as mock:
        mock.get("http://pod-3.example:8081/status").mock(side_effect=answer)
        got = await status.gather_status(
            None, admin_url="http://pod-3.example:8081", settings_problem=problem
        )
    assert got["pod"] == "vast-pod-3"
    assert got["source"] == "admin"
    assert got["source_detail"] == "http://pod-3.example:8081/status"


async def test_status_without_settings_or_admin_answer_says_both() -> None:
    """No settings and no admin answer: one error naming the URL that failed and the missing settings."""
    url = f"http://127.0.0.1:{_closed_port()}"
    problem = errors.ConfigError("POD_NAME", "is required and not set")
    with pytest.raises(errors.ProvisionerError) as caught:
        await status.gather_status(None, admin_url=url, settings_problem=problem)
    message = str(caught.value)
    assert f"{url}/status: ConnectError" in message
    assert "POD_NAME" in message


async def test_the_vast_fallback_is_paced_with_the_pods(env: pytest.MonkeyPatch) -> None:
    """With the pods' Redis configured, status's own Vast calls take their slots in the fleet's pacer."""
    shared = fakeredis.FakeAsyncRedis(decode_responses=True)

    @contextlib.asynccontextmanager
    async def fleet_store(access: object) -> AsyncIterator[fakeredis.FakeAsyncRedis]:
        yield shared

    env.setattr(fleet_wiring, "open_fleet_store", fleet_store)
    env.setenv("BLACKLIST_ENABLED", "true")
    env.setenv("BLACKLIST_REDIS_URL", f"redis://127.0.0.1:{_closed_port()}/0")
    env.setenv("ADMIN_PORT", str(_closed_port()))
    settings = load_settings()
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        mock.get(url__regex=r".*/api/v1/instances/.*").respond(json={"instances": [], "next_token": None})
        answer = await status.gather_status(settings)
    assert answer["source"] == "vast-api"
    budget = pacer.budget_id(settings.vast_api_key.get_secret_value())
    assert await shared.exists(f"vastprov:pace:{budget}:list_instances") == 1
    await shared.aclose()
