"""The simulated Vast.ai API in-process (httpx.ASGITransport): wire shapes, errors, paging, logs, admin."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from provisioner.sim.app import SimConfig, SimRuntime, running_sim

KEY = "test-key"
BASE = "http://sim.test"
RENT_BODY = {"image": "nginx", "env": {"-p 8000:8000": "1"}, "disk": 20, "runtype": "args"}


@pytest.fixture
async def sim() -> AsyncIterator[tuple[httpx.AsyncClient, SimRuntime, Starlette]]:
    """A client on an in-process sim with a 0.2 s boot."""
    async with running_sim(SimConfig(boot_delay_s=0.2)) as (app, runtime):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as client:
            yield client, runtime, app


@pytest.fixture
def client(sim: tuple[httpx.AsyncClient, SimRuntime, Starlette]) -> httpx.AsyncClient:
    return sim[0]


@pytest.fixture
def runtime(sim: tuple[httpx.AsyncClient, SimRuntime, Starlette]) -> SimRuntime:
    return sim[1]


def q(value: Any) -> str:
    """JSON-encode a query value as the official client does (quote_plus of json.dumps happens in httpx)."""
    return json.dumps(value)


async def offers(client: httpx.AsyncClient, **query: Any) -> list[dict[str, Any]]:
    response = await client.post("/api/v0/bundles/", json=query)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["offers"]
    return result


async def rent(client: httpx.AsyncClient, label: str = "k8s_pod=a", offer_id: int | None = None) -> int:
    if offer_id is None:
        offer_id = (await offers(client, limit=1))[0]["id"]
    response = await client.put(f"/api/v0/asks/{offer_id}/", json={**RENT_BODY, "label": label})
    assert response.status_code == 200, response.text
    instance_id: int = response.json()["new_contract"]
    return instance_id


async def show(client: httpx.AsyncClient, instance_id: int) -> dict[str, Any] | None:
    response = await client.get(f"/api/v0/instances/{instance_id}/", params={"owner": "me"})
    assert response.status_code == 200
    row: dict[str, Any] | None = response.json()["instances"]
    return row


async def wait_status(client: httpx.AsyncClient, instance_id: int, wanted: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            row = await show(client, instance_id)
            if row is not None and row["actual_status"] == wanted:
                return row
            await asyncio.sleep(0.05)


async def fault(client: httpx.AsyncClient, **body: Any) -> None:
    response = await client.post("/_sim/faults", json=body)
    assert response.status_code == 200, response.text


async def counts(client: httpx.AsyncClient) -> dict[str, int]:
    result: dict[str, int] = (await client.get("/_sim/requests")).json()["counts"]
    return result


# ---- wire shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v0/users/current", "/api/v0/users/current/"])
async def test_whoami(client: httpx.AsyncClient, path: str) -> None:
    """whoami answers on both path forms with the user id and the key used, as exactly application/json."""
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body["id"], int)
    assert body["api_key"] == KEY
    assert {"email", "balance", "credit", "key_id"} <= set(body)


async def test_gpu_names_need_no_auth(client: httpx.AsyncClient) -> None:
    """The CLI's parser-time gpu_names fetch works without a key."""
    response = await client.get("/api/v0/gpu_names/unique/", headers={"Authorization": ""})
    assert response.status_code == 200
    assert "RTX 4090" in response.json()["gpu_names"]


async def test_search_post_get_and_put_agree(client: httpx.AsyncClient) -> None:
    """POST /bundles/ (flat body), GET /bundles/?q= and PUT /search/asks/ ({"q": …}) give the same offers."""
    query = {
        "gpu_name": {"eq": "RTX 4090"},
        "num_gpus": {"eq": "1"},
        "order": [["dph_total", "asc"]],
        "limit": 5,
    }
    posted = await offers(client, **query)
    got = (await client.get("/api/v0/bundles/", params={"q": q(query)})).json()["offers"]
    put = (await client.put("/api/v0/search/asks/", json={"select_cols": ["*"], "q": query})).json()["offers"]
    assert [o["id"] for o in posted] == [o["id"] for o in got] == [o["id"] for o in put]
    assert len(posted) == 5
    assert all(o["gpu_name"] == "RTX 4090" and o["num_gpus"] == 1 for o in posted)


async def test_search_works_without_a_key(client: httpx.AsyncClient) -> None:
    """Search is allowed with no key (gpuhunt does that)."""
    response = await client.post("/api/v0/bundles/", json={"limit": 2}, headers={"Authorization": ""})
    assert response.status_code == 200
    assert len(response.json()["offers"]) == 2


async def test_search_prices_for_allocated_storage(client: httpx.AsyncClient) -> None:
    """dph_total includes allocated_storage GB at storage_cost per GB-month."""
    for o in await offers(client, allocated_storage=100, limit=10):
        assert o["dph_total"] == pytest.approx(o["dph_base"] + 100 * o["storage_cost"] / 720, abs=1e-5)


async def test_search_bad_type_is_400(client: httpx.AsyncClient) -> None:
    """An unknown search type is 400 invalid_request."""
    response = await client.post("/api/v0/bundles/", json={"type": "spot"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_rent_and_show_shapes(client: httpx.AsyncClient) -> None:
    """Create returns new_contract; show returns the ★ fields, ports only once running, IP with a newline."""
    offer = (await offers(client, gpu_name={"eq": "RTX 4090"}, limit=1))[0]
    response = await client.put(
        f"/api/v0/asks/{offer['id']}/",
        json={**RENT_BODY, "label": "k8s_pod=a", "env": {"-p 8000:8000": "1", "A": "b"}},
    )
    assert response.headers["content-type"] == "application/json"
    created = response.json()
    assert created["success"] is True
    instance_id = created["new_contract"]
    row = await show(client, instance_id)
    assert row is not None
    assert row["actual_status"] in (None, "loading"), (
        "not running yet (null moves to loading at 20 % of the boot)"
    )
    assert row["ports"] is None
    assert row["public_ipaddr"] is None
    assert row["intended_status"] == "running"
    assert isinstance(row["start_date"], float)
    assert row["extra_env"] == [["-p 8000:8000", "1"], ["A", "b"]]
    stars = {
        "id", "label", "actual_status", "intended_status", "cur_state", "status_msg", "image_uuid",
        "image_runtype", "template_id", "template_hash_id", "machine_id", "host_id", "dph_total", "gpu_name",
        "num_gpus", "geolocation", "direct_port_start", "direct_port_end", "ssh_host", "ssh_port",
        "disk_space", "public_ipaddr", "ports", "start_date", "extra_env",
    }  # fmt: skip
    assert stars <= set(row)
    assert (row["machine_id"], row["host_id"], row["gpu_name"]) == (
        offer["machine_id"],
        offer["host_id"],
        "RTX 4090",
    )
    running = await wait_status(client, instance_id, "running")
    assert running["public_ipaddr"] == "127.0.0.1\n"
    binding = running["ports"]["8000/tcp"][0]
    assert binding["HostIp"] == "0.0.0.0"
    assert isinstance(binding["HostPort"], str)
    assert int(binding["HostPort"]) > 0
    assert running["direct_port_start"] != int(binding["HostPort"])


async def test_second_rent_is_404_and_410_with_cancel_unavail(client: httpx.AsyncClient) -> None:
    """A consumed offer answers 404 no_such_ask (with ask_id), or 410 when cancel_unavail is true."""
    offer_id = (await offers(client, limit=1))[0]["id"]
    await rent(client, offer_id=offer_id)
    again = await client.put(f"/api/v0/asks/{offer_id}/", json=RENT_BODY)
    assert again.status_code == 404
    assert again.json()["ask_id"] == offer_id
    assert "no_such_ask" in again.json()["msg"]
    gone = await client.put(f"/api/v0/asks/{offer_id}/", json={**RENT_BODY, "cancel_unavail": True})
    assert gone.status_code == 410
    assert gone.json()["error"] == "no_such_ask"


async def test_offer_taken_between_search_and_rent(client: httpx.AsyncClient) -> None:
    """/_sim/offers/{id}/take makes the next rent of that offer a 404."""
    offer_id = (await offers(client, limit=1))[0]["id"]
    assert (await client.post(f"/_sim/offers/{offer_id}/take")).status_code == 200
    assert offer_id not in [o["id"] for o in await offers(client, limit=500)]
    assert (await client.put(f"/api/v0/asks/{offer_id}/", json=RENT_BODY)).status_code == 404


# ---- v1 list ------------------------------------------------------------------------------------------


async def test_label_filter_and_pagination(client: httpx.AsyncClient) -> None:
    """Over 65 instances, a label filter pages ≤25 at a time with next_token and returns each match once."""
    ids: dict[str, list[int]] = {"a": [], "b": []}
    for offer in await offers(client, limit=65):
        label = "k8s_pod=a" if len(ids["a"]) < 62 else "k8s_pod=b"
        ids["a" if label.endswith("a") else "b"].append(await rent(client, label, offer["id"]))
    seen: list[int] = []
    params: dict[str, Any] = {
        "select_filters": q({"label": {"eq": "k8s_pod=a"}}),
        "order_by": q([{"col": "id", "dir": "asc"}]),
        "limit": 25,
    }
    pages = 0
    while True:
        body = (await client.get("/api/v1/instances/", params=params)).json()
        pages += 1
        assert body["success"] is True
        assert len(body["instances"]) <= 25
        assert body["instances_found"] == len(body["instances"])
        assert body["total_instances"] == 62
        assert body["label_counts"] == {"k8s_pod=a": 62}
        seen += [row["id"] for row in body["instances"]]
        if not body["next_token"]:
            break
        params["after_token"] = body["next_token"]
    assert pages == 3
    assert seen == sorted(ids["a"])
    everything = (await client.get("/api/v1/instances/", params={"limit": 100})).json()
    assert len(everything["instances"]) == 25
    assert everything["label_counts"] == {"k8s_pod=a": 62, "k8s_pod=b": 3}
    assert len((await client.get("/api/v1/instances/", params={"limit": 0})).json()["instances"]) == 5


async def test_list_filters_and_order(client: httpx.AsyncClient) -> None:
    """in / neq / gt filter stored columns; order_by desc works; select_cols projects (unknown: null)."""
    # a long boot keeps every instance at actual_status null for the whole test, however slow the machine
    assert (await client.post("/_sim/config", json={"boot_delay_s": 120})).status_code == 200
    made = [await rent(client, label) for label in ("x", "y", "z")]
    params = {
        "select_filters": q({"label": {"in": ["x", "z"]}}),
        "order_by": q([{"col": "id", "dir": "desc"}]),
    }
    rows = (await client.get("/api/v1/instances/", params=params)).json()["instances"]
    assert [r["id"] for r in rows] == [made[2], made[0]]
    params = {"select_filters": q({"label": {"neq": "x"}, "id": {"gt": made[0]}})}
    assert [
        r["id"] for r in (await client.get("/api/v1/instances/", params=params)).json()["instances"]
    ] == made[1:]
    params = {"select_cols": q(["id", "label", "no_such_col"])}
    projected = (await client.get("/api/v1/instances/", params=params)).json()["instances"][0]
    assert projected == {"id": made[0], "label": "x", "no_such_col": None}
    null_status = {"select_filters": q({"actual_status": {"in": [None]}})}
    assert len((await client.get("/api/v1/instances/", params=null_status)).json()["instances"]) == 3


@pytest.mark.parametrize(
    ("params", "error"),
    [
        pytest.param(
            {"select_filters": q({"dph_total": {"lt": 1}})}, "invalid_request", id="computed-dph_total"
        ),
        pytest.param(
            {"select_filters": q({"num_gpus": {"eq": 1}})}, "invalid_request", id="computed-num_gpus"
        ),
        pytest.param({"select_filters": q({"label": {"like": "x"}})}, "invalid_request", id="bad-op"),
        pytest.param({"select_filters": "{not json"}, "invalid_request", id="bad-json"),
        pytest.param(
            {"order_by": q([{"col": "dph_total", "dir": "asc"}])}, "invalid_request", id="bad-order"
        ),
        pytest.param({"after_token": "garbage!"}, "invalid_token", id="bad-token"),
    ],
)
async def test_bad_list_queries_are_400(
    client: httpx.AsyncClient, params: dict[str, str], error: str
) -> None:
    """Computed columns, unknown operators, bad JSON, bad order and bad tokens are 400s."""
    response = await client.get("/api/v1/instances/", params=params)
    assert response.status_code == 400
    assert response.json()["error"] == error


async def test_v0_list_is_gone(client: httpx.AsyncClient) -> None:
    """GET /api/v0/instances/ answers 410 deprecated_endpoint."""
    response = await client.get("/api/v0/instances/", params={"owner": "me"})
    assert response.status_code == 410
    assert response.json()["error"] == "deprecated_endpoint"


# ---- instance operations ------------------------------------------------------------------------------


async def test_label_stop_start(client: httpx.AsyncClient) -> None:
    """PUT label and state: label changes at once, stop reaches stopped, start reaches running again."""
    instance_id = await rent(client)
    await wait_status(client, instance_id, "running")
    labelled = await client.put(f"/api/v0/instances/{instance_id}/", json={"label": "new"})
    assert labelled.json()["success"] is True
    assert (await show(client, instance_id) or {})["label"] == "new"
    assert (
        await client.put(f"/api/v0/instances/{instance_id}/", json={"state": "stopped"})
    ).status_code == 200
    stopped = await wait_status(client, instance_id, "stopped")
    assert stopped["ports"] is None
    assert stopped["intended_status"] == "stopped"
    await client.put(f"/api/v0/instances/{instance_id}/", json={"state": "running"})
    await wait_status(client, instance_id, "running")
    bad = await client.put(f"/api/v0/instances/{instance_id}/", json={"state": "paused"})
    assert bad.status_code == 400
    missing = await client.put("/api/v0/instances/1/", json={"label": "x"})
    assert missing.status_code == 404
    assert missing.json()["error"] == "no_such_instance"


async def test_destroy_twice(client: httpx.AsyncClient) -> None:
    """DELETE → {"success": true}; then show → {"instances": null}; a second DELETE → 404 not_found."""
    instance_id = await rent(client)
    first = await client.request("DELETE", f"/api/v0/instances/{instance_id}/", json={})
    assert first.json() == {"success": True}
    assert await show(client, instance_id) is None
    second = await client.delete(f"/api/v0/instances/{instance_id}/")
    assert second.status_code == 404
    assert second.json() == {"success": False, "error": "not_found", "msg": "Instance not found"}


async def test_reboot_and_recycle(client: httpx.AsyncClient) -> None:
    """reboot → rebooting → running; recycle → recycling → running; unknown ids are 400."""
    instance_id = await rent(client)
    await wait_status(client, instance_id, "running")
    assert (await client.put(f"/api/v0/instances/reboot/{instance_id}/", json={})).json() == {"success": True}
    assert (await show(client, instance_id) or {})["actual_status"] == "rebooting"
    await wait_status(client, instance_id, "running")
    assert (await client.put(f"/api/v0/instances/recycle/{instance_id}/", json={})).json() == {
        "success": True
    }
    assert (await show(client, instance_id) or {})["actual_status"] == "recycling"
    await wait_status(client, instance_id, "running")
    assert (await client.put("/api/v0/instances/reboot/1/", json={})).status_code == 400
    assert (await client.put("/api/v0/instances/recycle/1/", json={})).json()["error"] == "invalid_id"


async def test_logs_flow(sim: tuple[httpx.AsyncClient, SimRuntime, Starlette]) -> None:
    """request_logs gives a result_url on this host: no auth needed, 404 once, then text honouring tail."""
    client = sim[0]
    instance_id = await rent(client)
    await wait_status(client, instance_id, "running")
    response = await client.put(f"/api/v0/instances/request_logs/{instance_id}/", json={"tail": "3"})
    url = response.json()["result_url"]
    assert re.fullmatch(r"http://sim\.test/logs-result/[0-9a-f]{32}\.log", url)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim[2])) as anonymous:  # no Authorization
        assert (await anonymous.get(url)).status_code == 404
        ready = await anonymous.get(url)
    assert ready.status_code == 200
    assert ready.headers["content-type"].startswith("text/plain")
    assert len(ready.text.splitlines()) == 3
    missing = await client.put("/api/v0/instances/request_logs/1/", json={})
    assert missing.status_code == 404
    assert missing.json()["error"] == "invalid_id"


async def test_templates(client: httpx.AsyncClient) -> None:
    """Create (32-hex hash), identical create reuses, search, v1 edit keeps the old hash rentable, delete."""
    body = {"name": "k8s-nginx", "image": "nginx", "tag": "latest", "env": "-p 8000:8000", "runtype": "args"}
    created = (await client.post("/api/v0/template/", json=body)).json()
    template = created["template"]
    assert re.fullmatch(r"[0-9a-f]{32}", template["hash_id"])
    assert created["success"] is True
    again = (await client.post("/api/v0/template/", json=body)).json()["template"]
    assert again["id"] == template["id"]
    params = {"select_cols": q(["*"]), "select_filters": q({"name": {"eq": "k8s-nginx"}})}
    found = (await client.get("/api/v0/template/", params=params)).json()
    assert found["success"] is True
    assert found["templates_found"] == 1
    assert found["templates"][0]["hash_id"] == template["hash_id"]
    edited = (
        await client.put("/api/v1/template/", json={**body, "id": template["id"], "tag": "1.27"})
    ).json()
    new_hash = edited["template"]["hash_id"]
    assert new_hash != template["hash_id"]
    offer_id = (await offers(client, limit=1))[0]["id"]
    old = await client.put(
        f"/api/v0/asks/{offer_id}/", json={"template_hash_id": template["hash_id"], "env": {}}
    )
    assert old.status_code == 200
    row = await show(client, old.json()["new_contract"])
    assert row is not None
    assert (row["template_hash_id"], row["image_uuid"]) == (template["hash_id"], "nginx:latest")
    in_place = (await client.put("/api/v0/template/", json={"hash_id": new_hash, "tag": "1.28"})).json()
    assert in_place["template"]["id"] == template["id"]
    assert in_place["template"]["hash_id"] != new_hash
    deleted = await client.request("DELETE", "/api/v0/template/", json={"template_id": template["id"]})
    assert deleted.json()["success"] is True
    gone = await client.request(
        "DELETE", "/api/v0/template/", json={"hash_id": in_place["template"]["hash_id"]}
    )
    assert gone.status_code == 404
    assert (await client.post("/api/v0/template/", json={"image": "nginx"})).status_code == 400


# ---- errors -------------------------------------------------------------------------------------------


async def test_key_checks() -> None:
    """With api_key set: a wrong key is 401 auth_error (or 404 if set so), ?api_key= works, none is 401."""
    async with (
        running_sim(SimConfig(api_key="right")) as (app, _),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c,
    ):
        wrong = await c.get("/api/v0/users/current", headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        assert wrong.json() == {"success": False, "error": "auth_error", "msg": "Invalid user key"}
        assert (await c.get("/api/v0/users/current")).status_code == 401
        assert (await c.get("/api/v0/users/current", params={"api_key": "right"})).status_code == 200
        assert (
            await c.get("/api/v1/instances/", headers={"Authorization": "Bearer right"})
        ).status_code == 200
        wrong_search = await c.post("/api/v0/bundles/", json={}, headers={"Authorization": "Bearer wrong"})
        assert wrong_search.status_code == 401
        await c.post("/_sim/config", json={"auth_failure_status": 404})
        as_404 = await c.get("/api/v0/users/current", headers={"Authorization": "Bearer wrong"})
        assert as_404.status_code == 404
        assert as_404.json()["error"] == "auth_error"


async def test_any_key_is_accepted_by_default(client: httpx.AsyncClient) -> None:
    """Without a configured key, any non-empty key passes and a missing one is 401."""
    assert (
        await client.get("/api/v0/users/current", headers={"Authorization": "Bearer whatever"})
    ).status_code == 200
    assert (await client.get("/api/v0/users/current", headers={"Authorization": ""})).status_code == 401


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'])
async def test_malformed_json_is_400(client: httpx.AsyncClient, raw: bytes) -> None:
    """A body that is not a JSON object is 400 invalid_request "Invalid json body"."""
    response = await client.put("/api/v0/asks/1/", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "msg": "Invalid json body"}


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    """Unknown routes are 404 JSON; known routes with the wrong method are 405 JSON with Allow."""
    missing = await client.get("/api/v0/nothing/here/")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json()["success"] is False
    wrong = await client.delete("/api/v0/bundles/")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/json"
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "POST"}


@pytest.mark.parametrize(
    "path",
    [
        "/api/v0/users/current",
        "/api/v1/instances/",
        "/api/v0/template/",
        "/api/v0/instances/1/",
        "/_sim/state",
    ],
)
async def test_content_type_is_exactly_json(client: httpx.AsyncClient, path: str) -> None:
    """Every JSON answer says `application/json` with no charset (the real CLI compares the string)."""
    response = await client.get(path)
    assert response.headers["content-type"] == "application/json"


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
