"""The simulator's v1 instance list in-process: label filters, order, pagination, bad queries, v0's 410."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.unit.simkit import client, offers, q, rent, sim  # noqa: F401 (sim, client: fixtures)

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
