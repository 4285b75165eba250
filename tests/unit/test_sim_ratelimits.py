"""The sim's Vast-like rate limits (docs/vast-api.md §3.1) on a fake clock: intervals, bodies, knobs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from provisioner.sim.app import SimConfig, SimRuntime, main, running_sim
from provisioner.sim.state import ManualClock

KEY = "rate-key"
BASE = "http://sim.test"


@dataclass
class Sim:
    """A client on an in-process sim whose clock moves only when told to."""

    client: httpx.AsyncClient
    runtime: SimRuntime
    clock: ManualClock

    async def configure(self, **changes: Any) -> httpx.Response:
        return await self.client.post("/_sim/config", json=changes)


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    """Rate limits on at production intervals, time frozen."""
    clock = ManualClock()
    async with running_sim(SimConfig(rate_limits=True), clock=clock) as (app, runtime):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as client:
            yield Sim(client, runtime, clock)


# (endpoint name, method, path, seconds between calls): §2.3's figures, and ~1 s for the ones it omits
ENDPOINTS = [
    ("list", "GET", "/api/v1/instances/", 1.0),
    ("show", "GET", "/api/v0/instances/5/", 2.0),
    ("destroy", "DELETE", "/api/v0/instances/5/", 3.0),
    ("manage", "PUT", "/api/v0/instances/5/", 1.0),
    ("reboot", "PUT", "/api/v0/instances/reboot/5/", 1.0),
    ("recycle", "PUT", "/api/v0/instances/recycle/5/", 1.0),
    ("rent", "PUT", "/api/v0/asks/5/", 4.5),
    ("template_get", "GET", "/api/v0/template/", 3.0),
    ("whoami", "GET", "/api/v0/users/current", 1.0),
    ("template_post", "POST", "/api/v0/template/", 1.0),
    ("template_put", "PUT", "/api/v1/template/", 1.0),
    ("template_delete", "DELETE", "/api/v0/template/", 1.0),
    ("logs_request", "PUT", "/api/v0/instances/request_logs/5/", 1.0),
    ("instance_filters", "GET", "/api/v0/instances/filters/", 1.0),
    ("gpu_names", "GET", "/api/v0/gpu_names/unique/", 1.0),
]


async def call(sim: Sim, method: str, path: str, key: str = KEY) -> httpx.Response:
    """One API call (a JSON body `{}` on body methods, as the official client sends)."""
    body = b"{}" if method in ("POST", "PUT", "DELETE") else None
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return await sim.client.request(method, path, content=body, headers=headers)


@pytest.mark.parametrize(("endpoint", "method", "path", "interval"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
async def test_each_endpoint_has_its_minimum_interval(
    sim: Sim, endpoint: str, method: str, path: str, interval: float
) -> None:
    """A 2nd call inside the endpoint's interval is a 429 naming that threshold; at the interval it passes."""
    assert (await call(sim, method, path)).status_code != 429
    refused = await call(sim, method, path)
    assert refused.status_code == 429
    assert f"threshold={interval!r}" in refused.text
    sim.clock.advance(interval - 0.01)
    assert (await call(sim, method, path)).status_code == 429
    sim.clock.advance(0.01)
    assert (await call(sim, method, path)).status_code != 429
    rules = (await sim.client.get("/_sim/rate_limits")).json()["rules"]
    assert rules[endpoint]["interval_s"] == interval
    assert (rules[endpoint]["accepted"], rules[endpoint]["refused"]) == (2, 2)


async def test_search_is_ten_per_minute_per_ip(sim: Sim) -> None:
    """Search offers allows 10 calls in any 60 s per client IP (another key on that IP shares the budget)."""
    for _ in range(10):
        assert (await sim.client.post("/api/v0/bundles/", json={"limit": 1})).status_code == 200
    assert (await sim.client.post("/api/v0/bundles/", json={"limit": 1})).status_code == 429
    other = await call(sim, "POST", "/api/v0/bundles/", key="another-key")
    assert other.status_code == 429
    assert "threshold=6.0" in other.text
    sim.clock.advance(59.9)
    assert (await sim.client.get("/api/v0/bundles/")).status_code == 429
    sim.clock.advance(0.1)
    assert (await sim.client.get("/api/v0/bundles/")).status_code == 200


async def test_budgets_are_per_key_and_per_endpoint(sim: Sim) -> None:
    """Another API key, or another endpoint, has its own slot; the logs' result URL (S3) is never limited."""
    assert (await call(sim, "GET", "/api/v0/instances/5/")).status_code == 200
    assert (await call(sim, "GET", "/api/v0/instances/5/")).status_code == 429
    assert (await call(sim, "GET", "/api/v0/instances/5/", key="second-key")).status_code == 200
    assert (await call(sim, "GET", "/api/v1/instances/")).status_code == 200
    for _ in range(3):
        assert (await sim.client.get("/logs-result/abc.log")).status_code == 404


async def test_refused_calls_do_not_take_a_slot(sim: Sim) -> None:
    """The interval runs from the last accepted call: a refusal in between does not push the next slot."""
    assert (await call(sim, "GET", "/api/v0/instances/5/")).status_code == 200
    sim.clock.advance(1.0)
    assert (await call(sim, "GET", "/api/v0/instances/5/")).status_code == 429
    sim.clock.advance(1.0)
    assert (await call(sim, "GET", "/api/v0/instances/5/")).status_code == 200


async def test_off_by_default_and_switchable(sim: Sim) -> None:
    """With rate_limits off no call is refused, however fast."""
    await sim.configure(rate_limits=False)
    assert [(await call(sim, "PUT", "/api/v0/asks/5/")).status_code for _ in range(3)] == [404] * 3
    assert SimConfig().rate_limits is False


FORMS = {
    "text": ("text/plain", "API requests too frequent: endpoint threshold=2.0"),
    "text_bare": ("text/plain", "API requests too frequent"),
    "json": ("application/json", '{"detail": "API requests too frequent endpoint threshold=2.0"}'),
    "rate_limit_exceeded": (
        "application/json",
        '{"success": false, "error": "rate_limit_exceeded", '
        '"msg": "API requests too frequent endpoint threshold=2.0"}',
    ),
}


@pytest.mark.parametrize("form", sorted(FORMS))
async def test_body_forms(sim: Sim, form: str) -> None:
    """`rate_limit_body` picks one of Vast's 429 forms: plain text with or without threshold, or JSON."""
    await sim.configure(rate_limit_body=form)
    await call(sim, "GET", "/api/v0/instances/5/")
    refused = await call(sim, "GET", "/api/v0/instances/5/")
    content_type, text = FORMS[form]
    assert refused.status_code == 429
    assert refused.headers["content-type"].split(";")[0] == content_type
    assert refused.text == text
    assert "retry-after" not in refused.headers  # Vast sends none (§2.3)


async def test_documented_forms_per_endpoint(sim: Sim) -> None:
    """By default create answers JSON `detail`, destroy `rate_limit_exceeded` and the others plain text."""
    assert SimConfig().rate_limit_body == "documented"
    bodies = {}
    for name, method, path in (
        ("rent", "PUT", "/api/v0/asks/5/"),
        ("destroy", "DELETE", "/api/v0/instances/5/"),
        ("list", "GET", "/api/v1/instances/"),
    ):
        await call(sim, method, path)
        bodies[name] = (await call(sim, method, path)).text
    assert json.loads(bodies["rent"]) == {"detail": "API requests too frequent endpoint threshold=4.5"}
    assert json.loads(bodies["destroy"])["error"] == "rate_limit_exceeded"
    assert bodies["list"] == "API requests too frequent: endpoint threshold=1.0"


async def test_alternate_cycles_through_every_form(sim: Sim) -> None:
    """`alternate` answers successive refusals in turn with each form, so a client meets all of them."""
    await sim.configure(rate_limit_body="alternate")
    await call(sim, "GET", "/api/v0/instances/5/")
    seen = [(await call(sim, "GET", "/api/v0/instances/5/")).text for _ in range(5)]
    assert seen == [FORMS[f][1] for f in ("text", "json", "rate_limit_exceeded", "text_bare", "text")]


async def test_scale_and_overrides(sim: Sim) -> None:
    """The scale multiplies every interval (and the threshold shown); overrides set one endpoint's rule."""
    await sim.configure(rate_limit_scale=0.1, rate_limit_overrides={"list": 5, "whoami": 0, "show": [2, 10]})
    await call(sim, "PUT", "/api/v0/asks/5/")
    refused = await call(sim, "PUT", "/api/v0/asks/5/")
    assert "threshold=0.45" in refused.text
    sim.clock.advance(0.45)
    assert (await call(sim, "PUT", "/api/v0/asks/5/")).status_code == 404
    assert [(await call(sim, "GET", "/api/v0/users/current")).status_code for _ in range(3)] == [200] * 3
    assert [(await call(sim, "GET", "/api/v0/instances/5/")).status_code for _ in range(3)] == [200, 200, 429]
    await call(sim, "GET", "/api/v1/instances/")
    sim.clock.advance(0.49)
    assert (await call(sim, "GET", "/api/v1/instances/")).status_code == 429
    sim.clock.advance(0.01)
    assert (await call(sim, "GET", "/api/v1/instances/")).status_code == 200
    rules = (await sim.client.get("/_sim/rate_limits")).json()["rules"]
    assert rules["show"]["calls"] == 2
    assert rules["show"]["period_s"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "changes",
    [
        {"rate_limit_overrides": {"list": -1}},
        {"rate_limit_overrides": {"list": [0, 5]}},
        {"rate_limit_overrides": {"list": "fast"}},
        {"rate_limit_overrides": []},
        {"rate_limit_overrides": {"lists": 1}},
        {"rate_limit_body": "html"},
        {"rate_limit_scale": -1},
    ],
)
async def test_bad_knobs_are_400(sim: Sim, changes: dict[str, Any]) -> None:
    """A bad override, body mode or scale is rejected with 400 and changes nothing."""
    before = (await sim.client.get("/_sim/config")).json()["config"]
    assert (await sim.configure(**changes)).status_code == 400
    assert (await sim.client.get("/_sim/config")).json()["config"] == before


async def test_retry_after_knob(sim: Sim) -> None:
    """With rate_limit_retry_after a 429 says in whole seconds (rounded up) when the next slot opens."""
    await sim.configure(rate_limit_retry_after=True)
    await call(sim, "DELETE", "/api/v0/instances/5/")
    sim.clock.advance(0.5)
    refused = await call(sim, "DELETE", "/api/v0/instances/5/")
    assert refused.headers["retry-after"] == "3"  # 2.5 s left
    sim.clock.advance(1.6)
    assert (await call(sim, "DELETE", "/api/v0/instances/5/")).headers["retry-after"] == "1"


async def test_penalty_pushes_create_out(sim: Sim) -> None:
    """With rate_limit_penalties a refused create blocks create for the doc's penalty (12 s) from then."""
    await sim.configure(rate_limit_penalties=True, rate_limit_retry_after=True)
    await call(sim, "PUT", "/api/v0/asks/5/")
    sim.clock.advance(1.0)
    refused = await call(sim, "PUT", "/api/v0/asks/5/")
    assert refused.headers["retry-after"] == "12"
    sim.clock.advance(11.9)
    assert (await call(sim, "PUT", "/api/v0/asks/5/")).status_code == 429
    sim.clock.advance(12.0)
    assert (await call(sim, "PUT", "/api/v0/asks/5/")).status_code == 404
    await call(sim, "GET", "/api/v1/instances/")
    sim.clock.advance(0.5)
    assert (await call(sim, "GET", "/api/v1/instances/")).status_code == 429
    sim.clock.advance(0.5)
    assert (await call(sim, "GET", "/api/v1/instances/")).status_code == 200, "no penalty on list"


async def test_counters_of_429_per_endpoint(sim: Sim) -> None:
    """The admin API counts 429s per endpoint (limits apart from injected faults); DELETE resets them."""
    for _ in range(3):
        await call(sim, "GET", "/api/v1/instances/")
    await call(sim, "GET", "/api/v0/instances/5/")
    await sim.client.post("/_sim/faults", json={"endpoint": "whoami", "kind": "429_json"})
    await call(sim, "GET", "/api/v0/users/current")
    limits = (await sim.client.get("/_sim/rate_limits")).json()
    assert limits["refused"] == {"list": 2}
    assert limits["enabled"] is True and limits["body"] == "documented"
    logged = (await sim.client.get("/_sim/requests")).json()
    assert logged["count_429"] == {"list": 2, "whoami": 1}
    assert logged["status_counts"]["list"] == {"200": 1, "429": 2}
    assert logged["status_counts"]["show"] == {"200": 1}
    assert (await sim.client.delete("/_sim/rate_limits")).status_code == 200
    assert (await sim.client.get("/_sim/rate_limits")).json()["refused"] == {}
    assert (await call(sim, "GET", "/api/v1/instances/")).status_code == 200, "a fresh budget"


def test_command_line_knobs_are_checked() -> None:
    """`provisioner sim` rejects a bad body mode or override with a usage error (exit 2) before serving."""
    for argv in (["--rate-limit-body", "html"], ["--rate-limit-override", "list=fast"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    with pytest.raises(ValueError, match="rate_limit_overrides"):
        SimConfig(rate_limit_overrides={"list": -2})
