"""The simulated Vast.ai API in-process (httpx.ASGITransport): wire shapes, operations, logs, errors.

The v1 list: test_sim_list.py; faults, the request log and the admin API: test_sim_admin.py (all three
use the fixtures and helpers of simkit.py).
"""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.applications import Starlette

from provisioner.sim.app import SimConfig, SimRuntime, running_sim
from provisioner.vast import wire
from tests.unit.simkit import (  # noqa: F401 (sim, client, runtime: fixtures)
    BASE,
    KEY,
    RENT_BODY,
    client,
    offers,
    q,
    rent,
    runtime,
    show,
    sim,
    wait_status,
)

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
    """Unknown routes are a web server's HTML 404 (a client path gone wrong, ``/instance/`` for
    ``/instances/``, must fail, never read as the JSON 404 that says an instance is gone); known
    routes with the wrong method are 405 JSON with Allow."""
    missing = await client.delete("/api/v0/instance/5/")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert not wire.is_gone(missing) and not wire.is_not_found(missing)
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
