"""The simulator's fault queue, request log and admin API, in-process (httpx.ASGITransport)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from provisioner.sim.app import SimRuntime
from tests.unit.simkit import (  # noqa: F401 (sim, client, runtime: fixtures)
    BASE,
    KEY,
    RENT_BODY,
    client,
    counts,
    fault,
    offers,
    q,
    rent,
    runtime,
    sim,
    wait_status,
)

# ---- faults and rate limits ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "status", "content_type", "check"),
    [
        pytest.param(
            {"kind": "429_text"},
            429,
            "text/plain",
            "API requests too frequent: endpoint threshold=1.0",
            id="429_text",
        ),
        pytest.param({"kind": "429_json"}, 429, "application/json", '"detail"', id="429_json"),
        pytest.param(
            {"kind": "429_rate_limit"}, 429, "application/json", "rate_limit_exceeded", id="429_rate_limit"
        ),
        pytest.param(
            {"kind": "search_quota"}, 429, "application/json", "search_quota_exceeded", id="search_quota"
        ),
        pytest.param({"kind": "5xx", "status": 502}, 502, "text/html", "502 Bad Gateway", id="5xx-502"),
        pytest.param({"kind": "5xx", "status": 500}, 500, "application/json", "server_error", id="5xx-500"),
        pytest.param({"kind": "timeout", "delay_s": 0.05}, 504, "text/html", "504", id="timeout"),
        pytest.param({"kind": "auth_error"}, 401, "application/json", "auth_error", id="auth_error"),
        pytest.param({"kind": "error", "status": 404}, 404, "application/json", "injected_error", id="error"),
        pytest.param({"kind": "malformed"}, 200, "application/json", '{"', id="malformed"),
        pytest.param({"kind": "list_null"}, 200, "application/json", '"instances": null', id="list_null"),
        pytest.param(
            {"kind": "wrong_content_type"}, 200, "application/json; charset=utf-8", "{", id="wrong_ct"
        ),
        pytest.param(
            {"kind": "latency", "delay_s": 0.05}, 200, "application/json", '"instances"', id="latency"
        ),
    ],
)
async def test_fault_kinds(
    client: httpx.AsyncClient, spec: dict[str, Any], status: int, content_type: str, check: str
) -> None:
    """Each fault kind answers the next list call as documented, once; the call after it is normal."""
    await fault(client, endpoint="list", retry_after=2, **spec)
    response = await client.get("/api/v1/instances/")
    assert response.status_code == status
    if ";" in content_type:
        assert response.headers["content-type"] == content_type
    else:
        assert response.headers["content-type"].startswith(content_type)
    assert check in response.text
    if spec["kind"] != "latency":  # latency answers normally
        assert response.headers["retry-after"] == "2"
    if spec["kind"] == "malformed":
        with pytest.raises(ValueError):
            json.loads(response.text)
    if spec["kind"] == "search_quota":
        assert int(response.headers["x-ratelimit-reset"]) > 0
    after = await client.get("/api/v1/instances/")
    assert after.status_code == 200
    assert after.headers["content-type"] == "application/json"


@pytest.mark.parametrize("kind", ["rent_succeeds_then_5xx", "rent_succeeds_then_timeout"])
async def test_rent_succeeds_then_fails(client: httpx.AsyncClient, kind: str) -> None:
    """The rental exists although the answer was a 5xx or a (short) timeout: the double-rent trap."""
    await fault(client, endpoint="rent", kind=kind, delay_s=0.05)
    offer_id = (await offers(client, limit=1))[0]["id"]
    response = await client.put(f"/api/v0/asks/{offer_id}/", json={**RENT_BODY, "label": "trap"})
    assert response.status_code in (502, 504)
    rows = (
        await client.get("/api/v1/instances/", params={"select_filters": q({"label": {"eq": "trap"}})})
    ).json()
    assert len(rows["instances"]) == 1


async def test_timeout_has_no_effect(client: httpx.AsyncClient) -> None:
    """A plain timeout fault answers 504 after the delay and does not rent."""
    await fault(client, endpoint="rent", kind="timeout", delay_s=0.05)
    offer_id = (await offers(client, limit=1))[0]["id"]
    assert (await client.put(f"/api/v0/asks/{offer_id}/", json=RENT_BODY)).status_code == 504
    assert (await client.get("/api/v1/instances/")).json()["instances"] == []


async def test_fault_count_and_endpoint_matching(client: httpx.AsyncClient) -> None:
    """A fault hits its endpoint (or any: "*"), `count` times (0: forever); DELETE /_sim/faults clears."""
    await fault(client, endpoint="show", kind="5xx", count=2)
    assert (await client.get("/api/v1/instances/")).status_code == 200
    assert [(await client.get("/api/v0/instances/1/")).status_code for _ in range(3)] == [503, 503, 200]
    await fault(client, endpoint="*", kind="error", count=0)
    assert (await client.get("/api/v0/users/current")).status_code == 400
    assert (await client.get("/api/v1/instances/")).status_code == 400
    assert (await client.delete("/_sim/faults")).status_code == 200
    assert (await client.get("/api/v1/instances/")).status_code == 200
    bad = await client.post("/_sim/faults", json={"endpoint": "list", "kind": "gremlins"})
    assert bad.status_code == 400


async def test_an_error_fault_can_answer_a_documented_body(client: httpx.AsyncClient) -> None:
    """`body` replaces the generic injected_error answer (an object, and for the error kind only)."""
    documented = {"success": False, "error": "no_such_instance", "msg": "Instance 7 not found."}
    await fault(client, endpoint="show", kind="error", status=404, body=documented)
    answer = await client.get("/api/v0/instances/7/")
    assert (answer.status_code, answer.json()) == (404, documented)
    for bad in ({"kind": "error", "body": ["not", "an", "object"]}, {"kind": "5xx", "body": {"a": 1}}):
        assert (await client.post("/_sim/faults", json={"endpoint": "show", **bad})).status_code == 400


async def test_request_log_counts(client: httpx.AsyncClient) -> None:
    """The request log names each call's endpoint and status; admin calls are not logged; DELETE clears it."""
    await client.get("/api/v1/instances/")
    await client.get("/api/v1/instances/")
    await client.get("/api/v0/instances/7/")
    await client.get("/api/v0/nowhere")
    assert await counts(client) == {"list": 2, "show": 1, "unknown": 1}
    entries = (await client.get("/_sim/requests", params={"endpoint": "show"})).json()["requests"]
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [("GET", "/api/v0/instances/7/", 200)]
    await client.delete("/_sim/requests")
    assert await counts(client) == {}


async def test_admin_state_and_hosts(client: httpx.AsyncClient) -> None:
    """/_sim/state lists destroyed instances with destroyed_at; a host with oci_failure lands in created."""
    offer = (await offers(client, limit=1))[0]
    host = await client.post(f"/_sim/hosts/{offer['host_id']}", json={"oci_failure": True})
    assert host.json()["host"]["oci_failure"] is True
    instance_id = await rent(client, offer_id=offer["id"])
    failed = await wait_status(client, instance_id, "created")
    assert "OCI runtime create failed" in failed["status_msg"]
    await client.delete(f"/api/v0/instances/{instance_id}/")
    state = (await client.get("/_sim/state")).json()
    (row,) = [r for r in state["instances"] if r["id"] == instance_id]
    assert row["destroyed_at"] is not None
    assert next(o for o in state["offers"] if o["id"] == offer["id"])["rented"] is True
    assert (await client.post("/_sim/hosts/1", json={"sometimes": True})).status_code == 400


async def test_admin_config(client: httpx.AsyncClient, runtime: SimRuntime) -> None:
    """POST /_sim/config changes knobs at run time and rejects unknown fields or wrong types."""
    changed = (await client.post("/_sim/config", json={"boot_delay_s": 5, "logs_not_ready_count": 0})).json()
    assert changed["config"]["boot_delay_s"] == 5.0
    assert runtime.state.config.boot_delay_s == 5.0
    assert (await client.post("/_sim/config", json={"boot_delay": 1})).status_code == 400
    assert (await client.post("/_sim/config", json={"rate_limits": "yes"})).status_code == 400


async def test_offer_taken_fault_rents_the_offer_away_first(client: httpx.AsyncClient) -> None:
    """The offer_taken fault lets someone else rent the offer just before our rent: 404 no_such_ask."""
    offer_id = (await offers(client, limit=1))[0]["id"]
    await client.post("/_sim/faults", json={"endpoint": "rent", "kind": "offer_taken"})
    response = await client.put(f"/api/v0/asks/{offer_id}/", json={**RENT_BODY, "label": "k8s_pod=a"})
    assert response.status_code == 404
    assert "no_such_ask" in response.json()["msg"]
    assert offer_id not in [o["id"] for o in await offers(client)]
    assert await rent(client) > 0, "the next offer still rents"


async def test_next_host_behaviour_applies_to_the_next_rental_only(
    client: httpx.AsyncClient, runtime: SimRuntime
) -> None:
    """POST /_sim/hosts/next gives the next rental's host (whichever it is) a behaviour, once."""
    assert (await client.post("/_sim/hosts/next", json={"oci_failure": True})).status_code == 200
    first = await rent(client)
    second = await rent(client, label="k8s_pod=b")
    inst = runtime.state.instances
    assert runtime.state.host(inst[first].offer["host_id"]).oci_failure
    assert (
        inst[first].offer["host_id"] == inst[second].offer["host_id"]
        or not runtime.state.host(inst[second].offer["host_id"]).oci_failure
    )
    assert runtime.state.next_host is None


async def test_an_instance_destroyed_while_its_kill_settles_is_answered_not_a_500(
    client: httpx.AsyncClient, runtime: SimRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod under test may destroy the instance it saw die before the kill's answer is built."""
    instance_id = await rent(client)

    async def pod_destroys_it_meanwhile() -> None:
        runtime.state.destroy(instance_id)

    monkeypatch.setattr(runtime, "settle", pod_destroys_it_meanwhile)
    answer = await client.post(f"/_sim/instances/{instance_id}/kill")
    assert answer.status_code == 200, answer.text
    assert answer.json()["instance"]["id"] == instance_id
    missing = await client.post("/_sim/instances/999999999/kill")
    assert missing.status_code == 404
