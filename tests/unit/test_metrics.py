"""Metrics: the call observer, event-derived counters, the cost integral and the scrape-time collector."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import respx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from provisioner import metrics, model, planning
from provisioner import nginx as nginx_mod
from provisioner.events import Event, EventKind
from provisioner.reconciler import ReconcilerView
from provisioner.runtime import Runtime
from provisioner.settings import Settings
from provisioner.vast.client import RetryPolicy, VastClient
from tests.unit.views import Shows, make_view

BASE = "http://vast.test"


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sample(m: metrics.Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def settings() -> Settings:
    return Settings(
        pod_name="vast-pod-0",
        vast_api_key=SecretStr("k3y-abcdef"),
        vast_template_name="whisper",
        vast_template_image="ghcr.io/acme/whisper:1.2",
    )


def running(iid: int, dph: float, **kw: object) -> model.Instance:
    return model.Instance(
        id=iid,
        label="k8s_pod=vast-pod-0",
        actual_status="running",
        host_id=10 + iid,
        machine_id=20 + iid,
        gpu_name="RTX 4090",
        num_gpus=1,
        dph_total=dph,
        public_ipaddr="203.0.113.7",
        ports={8000: 40000 + iid},
        **kw,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------- the call observer


@pytest.mark.parametrize(
    ("call", "status", "label", "error"),
    [
        pytest.param("list instances", 200, "200", False, id="ok"),
        pytest.param("search offers", 429, "429", True, id="rate-limited"),
        pytest.param("rent", 502, "502", True, id="server-error"),
        pytest.param("whoami", None, "transport", True, id="no-answer"),
        pytest.param("fetch logs", 404, "404", False, id="log-upload-not-there-yet"),
        pytest.param("show instance", 404, "404", True, id="client-error"),
    ],
)
def test_observer_counts_requests_and_errors(call: str, status: int | None, label: str, error: bool) -> None:
    """Every request is counted by call and status; only failures count as errors, log polls excepted."""
    m = metrics.Metrics()
    observer = metrics.VastCallObserver(m)
    observer.request_done(call, status, 0.2)
    name = metrics.call_label(call)
    assert sample(m, "vastprov_vast_api_requests_total", call=name, status=label) == 1
    assert sample(m, "vastprov_vast_api_request_duration_seconds_count", call=name) == 1
    assert sample(m, "vastprov_vast_api_request_duration_seconds_sum", call=name) == pytest.approx(0.2)
    errors_seen = sample(m, "vastprov_vast_api_errors_total", call=name, status=label)
    assert errors_seen == (1 if error else None)


def test_observer_sums_rate_limit_waits() -> None:
    """Rate-limit waits add up in seconds per call."""
    m = metrics.Metrics()
    observer = metrics.VastCallObserver(m)
    observer.rate_limit_wait("search offers", 1.5)
    observer.rate_limit_wait("search offers", 2.0)
    assert sample(m, "vastprov_vast_rate_limit_wait_seconds_total", call="search_offers") == 3.5


@respx.mock(base_url=BASE, assert_all_called=True)
async def test_observer_wired_into_the_client(respx_mock: respx.MockRouter) -> None:
    """Through a real VastClient: a 429 then a 200 count two requests, one error and the Retry-After wait."""
    respx_mock.get("/api/v0/users/current").mock(
        side_effect=[
            httpx.Response(429, text="slow down", headers={"Retry-After": "2"}),
            httpx.Response(200, json={"id": 1}),
        ]
    )
    m = metrics.Metrics()
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    async with httpx.AsyncClient() as http:
        vast = VastClient(
            http,
            SecretStr("k3y-0123456789"),
            base_url=BASE,
            retry=RetryPolicy(attempts=3, jitter=0.0),
            observer=metrics.VastCallObserver(m),
            sleep=fake_sleep,
        )
        await vast.whoami()
    expected = 2.0 + RetryPolicy().initial_backoff_s  # Retry-After plus the first backoff step
    assert waits == [expected]
    assert sample(m, "vastprov_vast_api_requests_total", call="whoami", status="429") == 1
    assert sample(m, "vastprov_vast_api_requests_total", call="whoami", status="200") == 1
    assert sample(m, "vastprov_vast_api_errors_total", call="whoami", status="429") == 1
    assert sample(m, "vastprov_vast_rate_limit_wait_seconds_total", call="whoami") == expected


# ---------------------------------------------------------------- events


def test_events_become_rentals_replacements_bans_and_time_to_ready() -> None:
    """rent/destroy/ban events count by reason; the first serve after a rent observes the time to ready."""
    m = metrics.Metrics()
    m.on_event(Event(100.0, EventKind("rent"), "none: offer 1", 7, reason="none"))
    m.on_event(Event(190.0, EventKind("serve"), "3000->203.0.113.7:40007", 7))
    m.on_event(Event(250.0, EventKind("serve"), "3000->203.0.113.7:40008 (port remapped)", 7))
    m.on_event(Event(300.0, EventKind("ban"), "host 17: boot-timeout", 8, reason="boot-timeout"))
    m.on_event(Event(300.0, EventKind("destroy"), "boot-timeout", 8, reason="boot-timeout"))
    m.on_event(Event(400.0, EventKind("destroy"), "image-drift (already gone)", 7, reason="image-drift"))
    m.on_event(
        Event(500.0, EventKind("condemn"), "restart-threshold: replaced", 9, reason="restart-threshold")
    )
    assert sample(m, "vastprov_rentals_total") == 1
    assert sample(m, "vastprov_time_to_ready_seconds_count") == 1, "only the first serve of a rental"
    assert sample(m, "vastprov_time_to_ready_seconds_sum") == 90.0
    assert sample(m, "vastprov_replacements_total", reason="boot-timeout") == 1
    assert sample(m, "vastprov_replacements_total", reason="image-drift") == 1
    assert sample(m, "vastprov_bans_total", reason="boot-timeout") == 1
    assert sample(m, "vastprov_bans_total", reason="restart-threshold") is None, "a condemn bans nothing"
    assert sample(m, "vastprov_events_total", kind="condemn") == 1
    assert sample(m, "vastprov_events_total", kind="serve") == 2


def test_serving_an_adopted_instance_is_not_a_time_to_ready() -> None:
    """An instance this process did not rent (adopted after a restart) gives no time-to-ready sample."""
    m = metrics.Metrics()
    m.on_event(Event(10.0, EventKind("serve"), "3000->203.0.113.7:40001", 1))
    assert sample(m, "vastprov_time_to_ready_seconds_count") == 0


def test_an_instance_destroyed_before_ready_gives_no_time_to_ready() -> None:
    """A rental destroyed before it served never yields a time-to-ready sample, even if its id comes back."""
    m = metrics.Metrics()
    m.on_event(Event(0.0, EventKind("rent"), "none", 5, reason="none"))
    m.on_event(Event(50.0, EventKind("destroy"), "dead", 5, reason="dead"))
    m.on_event(Event(60.0, EventKind("serve"), "x", 5))
    assert sample(m, "vastprov_time_to_ready_seconds_count") == 0


# ---------------------------------------------------------------- cost


def test_cost_integrates_the_rate_over_time() -> None:
    """$/h integrated over time: rate changes at each list, a destroy stops the meter for that instance."""
    clock = FakeClock()
    meter = metrics.CostMeter(clock)
    assert meter.dollars() == 0.0
    meter.set_rates({1: 0.50})
    clock.now = 1800.0
    assert meter.dollars() == pytest.approx(0.25)
    meter.set_rates({1: 0.50, 2: 1.00})  # a replacement boots beside the served instance
    assert meter.dollars_per_hour == 1.5
    clock.now = 3600.0
    meter.drop(1)
    assert meter.dollars() == pytest.approx(0.25 + 0.75)
    clock.now = 7200.0
    assert meter.dollars() == pytest.approx(1.0 + 1.0)
    meter.set_rates({})
    clock.now = 10800.0
    assert meter.dollars() == pytest.approx(2.0), "nothing accrues without instances"


def test_cost_never_decreases_when_the_clock_steps_back() -> None:
    """The accrued cost is a counter: a clock step back adds nothing and takes nothing away."""
    clock = FakeClock(100.0)
    meter = metrics.CostMeter(clock)
    meter.set_rates({1: 3600.0})
    clock.now = 101.0
    assert meter.dollars() == pytest.approx(1.0)
    clock.now = 50.0
    assert meter.dollars() == pytest.approx(1.0)


# ---------------------------------------------------------------- the scrape


def scrape(m: metrics.Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(m.registry).decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((dict(s.labels), s.value))
    return found


def runtime_with(view: ReconcilerView | None, tmp_path: Path) -> Runtime:
    runtime = Runtime(settings=settings())
    runtime.reconciler = Shows(view) if view is not None else None
    runtime.nginx = nginx_mod.NginxProcess("nginx", tmp_path / "nginx.conf")
    return runtime


def test_every_documented_series_is_exposed(tmp_path: Path) -> None:
    """A fresh process exposes every documented metric name, before anything happened."""
    m = metrics.Metrics()
    m.bind(runtime_with(None, tmp_path))
    names = set(scrape(m))
    expected = {
        "vastprov_instance_state",
        "vastprov_ready",
        "vastprov_instances",
        "vastprov_cost_per_hour_dollars",
        "vastprov_cost_dollars_total",
        "vastprov_last_reconcile_timestamp_seconds",
        "vastprov_nginx_up",
        "vastprov_nginx_reloads_total",
        "vastprov_nginx_restarts_total",
        "vastprov_rentals_total",
        "vastprov_time_to_ready_seconds_count",
        "vastprov_remote_log_lines_total",
    }
    assert expected <= names, expected - names
    state = {labels["state"]: value for labels, value in scrape(m)["vastprov_instance_state"]}
    assert state == {"starting": 1, "renting": 0, "booting": 0, "serving": 0, "waiting": 0}


def test_scrape_reads_phase_instances_and_nginx_counters(tmp_path: Path) -> None:
    """At scrape time: the phase is one-hot, each listed instance has an info series, nginx counters show."""
    served, booting = running(7, 0.40), running(8, 0.30, start_date=1.0)
    observation = planning.Observation(now=1234.0, instances=(served, booting), template_hash=None)
    view = make_view(
        phase=planning.Phase.SERVING, last_tick_at=1234.0, serving=served, last_observation=observation
    )
    runtime = runtime_with(view, tmp_path)
    nginx = nginx_mod.NginxProcess("nginx", tmp_path / "nginx.conf")
    nginx.reloads, nginx.restarts = 3, 1
    runtime.nginx = nginx
    m = metrics.Metrics()
    m.bind(runtime)
    m.note_instances(observation.instances)
    found = scrape(m)
    phase = {labels["state"]: value for labels, value in found["vastprov_instance_state"]}
    assert phase["serving"] == 1 and sum(phase.values()) == 1
    info = {labels["instance_id"]: labels for labels, _ in found["vastprov_instance_info"]}
    assert info["7"]["served"] == "true" and info["8"]["served"] == "false"
    assert info["7"] | {"served": ""} == {
        "instance_id": "7",
        "host_id": "17",
        "machine_id": "27",
        "gpu_name": "RTX 4090",
        "status": "running",
        "served": "",
    }
    assert found["vastprov_instances"] == [({}, 2.0)]
    assert found["vastprov_cost_per_hour_dollars"] == [({}, pytest.approx(0.70))]
    assert found["vastprov_nginx_reloads_total"] == [({}, 3.0)]
    assert found["vastprov_nginx_restarts_total"] == [({}, 1.0)]
    assert found["vastprov_nginx_up"] == [({}, 0.0)], "this nginx was never started"
    assert found["vastprov_ready"] == [({}, 0.0)], "not ready while nginx is down"
    assert found["vastprov_last_reconcile_timestamp_seconds"] == [({}, 1234.0)]


def test_each_process_has_its_own_registry() -> None:
    """Two Metrics objects never share series (no global default registry)."""
    a, b = metrics.Metrics(), metrics.Metrics()
    a.rentals.inc()
    assert sample(a, "vastprov_rentals_total") == 1
    assert sample(b, "vastprov_rentals_total") == 0
