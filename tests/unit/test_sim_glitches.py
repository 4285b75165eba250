"""The sim's glitch knobs of issue 16: odd list rows, missing rows, one-off 401/403, unknown statuses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from provisioner.sim.app import SimConfig, SimRuntime, running_sim
from provisioner.sim.state import ManualClock

KEY = "glitch-key"
BASE = "http://sim.test"
BOOT_S = 10.0
RENT_BODY = {"image": "nginx", "env": {"-p 8000:8000": "1"}, "disk": 20, "runtype": "args"}


@dataclass
class Sim:
    """A client on an in-process sim on a fake clock, with two running instances labelled a and b."""

    client: httpx.AsyncClient
    runtime: SimRuntime
    clock: ManualClock
    ids: dict[str, int]

    async def fault(self, **spec: Any) -> httpx.Response:
        return await self.client.post("/_sim/faults", json=spec)

    async def rows(self, label: str | None = None) -> list[dict[str, Any]]:
        params = {"select_filters": json.dumps({"label": {"eq": label}})} if label else {}
        response = await self.client.get("/api/v1/instances/", params=params)
        assert response.status_code == 200
        rows: list[dict[str, Any]] = response.json()["instances"]
        return rows

    async def page(self) -> dict[str, Any]:
        page: dict[str, Any] = (await self.client.get("/api/v1/instances/")).json()
        return page

    async def show(self, label: str) -> dict[str, Any] | None:
        response = await self.client.get(f"/api/v0/instances/{self.ids[label]}/")
        row: dict[str, Any] | None = response.json()["instances"]
        return row


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    clock = ManualClock()
    async with running_sim(SimConfig(boot_delay_s=BOOT_S), clock=clock) as (app, runtime):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as client:
            offers = (await client.post("/api/v0/bundles/", json={"limit": 2})).json()["offers"]
            ids = {}
            for label, offer in zip("ab", offers, strict=True):
                rented = await client.put(f"/api/v0/asks/{offer['id']}/", json={**RENT_BODY, "label": label})
                ids[label] = rented.json()["new_contract"]
            clock.advance(BOOT_S + 1)
            sim = Sim(client, runtime, clock, ids)
            assert [r["actual_status"] for r in await sim.rows()] == ["running", "running"]
            yield sim


def healthy(row: dict[str, Any] | None) -> bool:
    return (
        row is not None
        and row["actual_status"] == "running"
        and row["public_ipaddr"] is not None
        and bool(row["ports"])
    )


async def test_row_incomplete_spoils_the_targeted_row_once(sim: Sim) -> None:
    """By default the label's row loses public_ipaddr, ports and actual_status in one list; b is intact."""
    assert (await sim.fault(endpoint="list", kind="row_incomplete", label="a")).status_code == 200
    rows = {r["label"]: r for r in await sim.rows()}
    assert (rows["a"]["public_ipaddr"], rows["a"]["ports"], rows["a"]["actual_status"]) == (None, None, None)
    assert healthy(rows["b"])
    assert all(healthy(r) for r in await sim.rows()), "the next list is whole again"


async def test_row_incomplete_patch_drop_and_count(sim: Sim) -> None:
    """`patch` sets fields, `drop` removes keys, `count` spoils that many answers (show answers too)."""
    await sim.fault(
        endpoint="*", kind="row_incomplete", instance_id=sim.ids["b"], patch={"ports": []}, count=2
    )
    await sim.fault(endpoint="show", kind="row_incomplete", label="a", drop=["ports", "public_ipaddr"])
    assert [r["ports"] for r in await sim.rows("b")] == [[]]
    shown_b = await sim.show("b")
    assert shown_b is not None and shown_b["ports"] == []
    shown_a = await sim.show("a")
    assert shown_a is not None and "ports" not in shown_a and "public_ipaddr" not in shown_a
    assert shown_a["actual_status"] == "running"
    assert healthy(await sim.show("a")) and healthy(await sim.show("b"))


async def test_targeted_fault_waits_for_an_answer_holding_its_row(sim: Sim) -> None:
    """A fault aimed at label a is not used up by a list that does not contain a (e.g. another pod's)."""
    await sim.fault(endpoint="list", kind="row_missing", label="a")
    assert [r["label"] for r in await sim.rows("b")] == ["b"]
    assert len((await sim.client.get("/_sim/faults")).json()["faults"]) == 1
    assert await sim.rows("a") == []
    assert [r["label"] for r in await sim.rows("a")] == ["a"]


async def test_row_missing_gives_a_consistent_page_without_the_row(sim: Sim) -> None:
    """A 200 list without the row: instances_found, total_instances and label_counts agree with the page."""
    whole = await sim.page()
    await sim.fault(endpoint="list", kind="row_missing", instance_id=sim.ids["a"])
    page = await sim.page()
    assert [r["label"] for r in page["instances"]] == ["b"]
    assert (page["instances_found"], page["total_instances"]) == (1, whole["total_instances"] - 1)
    assert page["label_counts"] == {"b": 1}
    await sim.fault(endpoint="list", kind="row_missing")
    empty = await sim.page()
    assert (empty["instances"], empty["instances_found"], empty["label_counts"]) == ([], 0, {})
    assert len((await sim.page())["instances"]) == 2


async def test_row_missing_on_show_is_instances_null(sim: Sim) -> None:
    """A show answer without the row is `{"instances": null}` (as for a destroyed instance), once."""
    await sim.fault(endpoint="show", kind="row_missing", instance_id=sim.ids["a"])
    assert healthy(await sim.show("b"))
    assert await sim.show("a") is None
    assert healthy(await sim.show("a"))
    assert sim.ids["a"] in [r["id"] for r in (await sim.client.get("/_sim/state")).json()["instances"]]
    await sim.fault(endpoint="show", kind="row_missing")
    gone = await sim.client.get("/api/v0/instances/12345/")
    assert gone.json() == {"instances": None}, "an unknown id stays null, not an empty list"


@pytest.mark.parametrize("status", [401, 403])
async def test_one_off_auth_error_leaves_the_key_valid(sim: Sim, status: int) -> None:
    """An auth_error fault answers 401 or 403 once (any endpoint with "*"); the same key works right after."""
    await sim.fault(endpoint="*", kind="auth_error", status=status)
    refused = await sim.client.get("/api/v1/instances/")
    assert refused.status_code == status
    assert refused.json() == {"success": False, "error": "auth_error", "msg": "Invalid user key"}
    assert len(await sim.rows()) == 2
    assert (await sim.client.get("/api/v0/users/current")).status_code == 200


async def test_edge_403_is_an_html_denial(sim: Sim) -> None:
    """edge_403 answers like an edge proxy: 403 text/html, not Vast's JSON; the next call is normal."""
    await sim.fault(endpoint="list", kind="edge_403")
    denied = await sim.client.get("/api/v1/instances/")
    assert denied.status_code == 403
    assert denied.headers["content-type"].startswith("text/html")
    assert "403 Forbidden" in denied.text
    assert len(await sim.rows()) == 2


async def test_instance_id_targets_requests_naming_it(sim: Sim) -> None:
    """A request fault with instance_id hits only calls whose path names that instance."""
    await sim.fault(endpoint="show", kind="5xx", instance_id=sim.ids["a"])
    assert healthy(await sim.show("b"))
    assert (await sim.client.get(f"/api/v0/instances/{sim.ids['a']}/")).status_code == 503
    assert healthy(await sim.show("a"))


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "5xx", "label": "a"},
        {"kind": "row_missing", "patch": {"ports": None}},
        {"kind": "row_incomplete", "drop": "ports"},
        {"kind": "row_incomplete", "patch": []},
        {"kind": "row_missing", "instance_id": "a"},
        {"kind": "row_missing", "label": 5},
    ],
)
async def test_bad_row_fault_specs_are_400(sim: Sim, spec: dict[str, Any]) -> None:
    """Targets and patches are checked: label/patch/drop only on row kinds, with the right types."""
    assert (await sim.fault(endpoint="list", **spec)).status_code == 400
    assert (await sim.client.get("/_sim/faults")).json()["faults"] == []


async def test_status_override_for_a_while(sim: Sim) -> None:
    """An instance reports a status Vast never used for `for_s` seconds, still serving; then running again."""
    instance_id = sim.ids["a"]
    answer = await sim.client.post(
        f"/_sim/instances/{instance_id}/status", json={"actual_status": "hibernating_v2", "for_s": 30}
    )
    assert answer.status_code == 200
    assert answer.json()["instance"]["actual_status"] == "hibernating_v2"
    row = await sim.show("a")
    assert row is not None and row["actual_status"] == "hibernating_v2"
    assert row["public_ipaddr"] is not None and row["ports"], "the container keeps running"
    flt = json.dumps({"actual_status": {"eq": "hibernating_v2"}})
    listed = (await sim.client.get("/api/v1/instances/", params={"select_filters": flt})).json()
    assert [r["id"] for r in listed["instances"]] == [instance_id]
    state = {r["id"]: r for r in (await sim.client.get("/_sim/state")).json()["instances"]}
    assert state[instance_id]["real_status"] == "running"
    sim.clock.advance(29.9)
    assert (await sim.show("a") or {})["actual_status"] == "hibernating_v2"
    sim.clock.advance(0.1)
    assert healthy(await sim.show("a"))


async def test_status_override_null_until_cleared(sim: Sim) -> None:
    """`actual_status: null` without for_s lasts until DELETE /_sim/instances/{id}/status."""
    path = f"/_sim/instances/{sim.ids['b']}/status"
    assert (await sim.client.post(path, json={"actual_status": None})).status_code == 200
    sim.clock.advance(3600)
    assert (await sim.show("b") or {})["actual_status"] is None
    assert healthy(await sim.show("a"))
    assert (await sim.client.delete(path)).status_code == 200
    assert healthy(await sim.show("b"))


@pytest.mark.parametrize(
    ("target", "body", "status"),
    [
        ("a", {}, 400),
        ("a", {"actual_status": 3}, 400),
        ("a", {"actual_status": "x", "for_s": 0}, 400),
        ("a", {"actual_status": "x", "until": 5}, 400),
        ("999", {"actual_status": "x"}, 404),
    ],
)
async def test_bad_status_overrides(sim: Sim, target: str, body: dict[str, Any], status: int) -> None:
    """The status knob rejects a missing or non-string status, a non-positive for_s, unknown fields, ids."""
    instance_id = sim.ids.get(target, target)
    answer = await sim.client.post(f"/_sim/instances/{instance_id}/status", json=body)
    assert answer.status_code == status
    assert healthy(await sim.show("a"))
