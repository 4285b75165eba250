"""The Vast client against the simulated Vast.ai over real HTTP: every call and the error paths."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from provisioner import errors, model
from provisioner.sim.app import SimConfig, serving_sim
from provisioner.sim.faults import Fault
from provisioner.sim.runtime import SimRuntime
from provisioner.vast import query
from provisioner.vast.client import RentRequest, RetryPolicy, VastClient

pytestmark = pytest.mark.integration

KEY = SecretStr("client-test-key-123456")
FAST_RETRY = RetryPolicy(attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05, retry_after_cap_s=2.0)
SPEC = model.TemplateSpec(
    name="client-test", image="vastai/test-workload", tag="1.0", env="-p 8000:8000", onstart=None, disk_gb=20
)


def request(label: str, template_hash: str | None = None) -> RentRequest:
    return RentRequest(
        image="vastai/test-workload:1.0",
        env={"MODEL": "tiny"},
        ports=[8000],
        label=label,
        disk_gb=20,
        template_hash_id=template_hash,
    )


@pytest.fixture
async def sim() -> AsyncIterator[tuple[VastClient, SimRuntime, httpx.AsyncClient, str]]:
    """A client on a real socket to an in-loop simulator with a 0.3 s boot."""
    async with (
        serving_sim(SimConfig(boot_delay_s=0.3, api_key=KEY.get_secret_value())) as (url, runtime),
        httpx.AsyncClient(timeout=5.0) as http,
    ):
        yield VastClient(http, KEY, base_url=url, retry=FAST_RETRY), runtime, http, url


async def offers(vast: VastClient, text: str = "num_gpus=1") -> list[model.Offer]:
    return await vast.search_offers(query.search_body(query.load_filter(text)))


async def test_whoami_search_rent_show_label_destroy(sim: Any) -> None:
    """The whole instance life cycle over HTTP, as the provisioner uses it."""
    vast, *_ = sim
    user = await vast.whoami()
    assert "api_key" not in user and isinstance(user.get("id"), int)
    found = await offers(vast, "gpu_name=RTX_4090 num_gpus=1")
    assert found and all(o.gpu_name == "RTX 4090" for o in found)
    iid = await vast.rent(found[0].id, request("k8s_pod=client-a"))
    shown = await vast.show_instance(iid)
    assert shown is not None and shown.label == "k8s_pod=client-a" and shown.ports == {}
    for _ in range(50):
        shown = await vast.show_instance(iid)
        if shown is not None and shown.is_running:
            break
        await asyncio.sleep(0.1)
    assert shown is not None and shown.is_running
    assert shown.public_ipaddr == "127.0.0.1", "whitespace stripped"
    assert isinstance(shown.host_port(8000), int)
    assert [i.id for i in await vast.list_by_label("k8s_pod=client-a")] == [iid]
    assert await vast.list_by_label("k8s_pod=client-b") == []
    assert await vast.destroy_instance(iid) is True
    assert await vast.destroy_instance(iid) is False, "already gone is not an error"
    assert await vast.show_instance(iid) is None


async def test_list_follows_pages(sim: Any) -> None:
    """A label with 60 instances comes back whole through next_token pages of at most 25."""
    vast, runtime, *_ = sim
    ids = {await vast.rent(o.id, request("k8s_pod=many")) for o in (await offers(vast, "num_gpus>=1"))[:60]}
    assert len(ids) == 60
    listed = await vast.list_by_label("k8s_pod=many")
    assert {i.id for i in listed} == ids
    assert runtime.requests.counts()["list"] >= 3


async def test_templates_create_find_update(sim: Any) -> None:
    """A template is created, found by name, and updated to a new hash that is read back."""
    vast, *_ = sim
    user = await vast.whoami()
    assert await vast.find_template(SPEC.name, user["id"]) is None
    created = await vast.create_template(SPEC, creator_id=user["id"])
    found = await vast.find_template(SPEC.name, user["id"])
    assert found is not None and found.hash_id == created.hash_id
    updated = await vast.update_template(created, replace(SPEC, env="-p 8000:8000 -e MODEL=big"))
    assert updated.hash_id != created.hash_id
    again = await vast.find_template(SPEC.name, user["id"])
    assert again is not None and again.hash_id == updated.hash_id and "MODEL=big" in (again.env or "")
    iid = await vast.rent((await offers(vast))[0].id, request("k8s_pod=t", updated.hash_id))
    shown = await vast.show_instance(iid)
    assert shown is not None and shown.template_hash_id == updated.hash_id


async def test_logs_through_result_url(sim: Any) -> None:
    """request_logs returns the container's log text fetched from result_url."""
    vast, *_ = sim
    iid = await vast.rent((await offers(vast))[0].id, request("k8s_pod=logs"))
    text = await vast.request_logs(iid, tail=50, poll_interval_s=0.05)
    assert str(iid) in text


async def test_error_paths(sim: Any) -> None:
    """Bad key, vanished offer, rent with a lost answer, retried 5xx and 429 map to our errors."""
    vast, runtime, http, url = sim
    bad = VastClient(http, SecretStr("wrong-key-000"), base_url=url, retry=FAST_RETRY)
    with pytest.raises(errors.AuthError) as caught:
        await bad.whoami()
    assert "wrong-key-000" not in str(caught.value)

    first, second = (await offers(vast))[:2]
    runtime.state.take_offer(first.id)
    with pytest.raises(errors.OfferGone):
        await vast.rent(first.id, request("k8s_pod=err"))

    runtime.faults.add(Fault.from_json({"endpoint": "rent", "kind": "rent_succeeds_then_5xx"}))
    with pytest.raises(errors.RentOutcomeUnknown):
        await vast.rent(second.id, request("k8s_pod=err"))
    assert len(await vast.list_by_label("k8s_pod=err")) == 1, "the rent happened; listing shows it"

    runtime.faults.add(Fault.from_json({"endpoint": "list", "kind": "5xx", "count": 2}))
    runtime.faults.add(
        Fault.from_json({"endpoint": "list", "kind": "429_text", "count": 1, "retry_after": 0})
    )
    assert len(await vast.list_by_label("k8s_pod=err")) == 1, "retried through 5xx and 429"

    runtime.faults.add(Fault.from_json({"endpoint": "list", "kind": "list_null", "count": 1}))
    with pytest.raises(errors.VastBadResponse):
        await vast.list_by_label("k8s_pod=err")
    assert runtime.requests.counts().get("v0_list", 0) == 0, "the deprecated v0 list is never called"


@pytest.mark.parametrize(
    ("endpoint", "status", "body", "outcome"),
    [
        pytest.param(
            "rent",
            404,
            {
                "success": False,
                "error": "invalid_args",
                "msg": "error 404/3603: no_such_ask Instance type by id 1234567 is not available.",
                "ask_id": 1234567,
            },
            errors.OfferGone,
            id="rent-404-no-such-ask",
        ),
        pytest.param(
            "rent",
            403,
            {
                "success": False,
                "error": "invalid_args",
                "msg": "Offer 1234567 is not your own. Hosts can only rent their own machines.",
            },
            errors.VastRejected,
            id="rent-403-not-your-own",
        ),
        pytest.param(
            "show",
            404,
            {"success": False, "error": "no_such_instance", "msg": "Instance 12345 not found."},
            None,
            id="show-404-gone",
        ),
        pytest.param(
            "whoami",
            404,
            {"msg": "Session expired. Please log in again."},
            errors.AuthError,
            id="session-expired",
        ),
    ],
)
async def test_documented_error_answers_map_to_our_errors(
    sim: Any, endpoint: str, status: int, body: dict[str, Any], outcome: type[Exception] | None
) -> None:
    """The answers vast-api.md documents (§5, §6, §12), sent over HTTP by the simulator's error fault:
    an offer taken (404 form) is OfferGone, a refused one VastRejected, a gone instance None, a 404
    "Session expired" an auth failure (on a client whose key has not worked yet: one that had is
    retried, by design)."""
    vast, runtime, *_ = sim
    offer_id = (await offers(vast))[0].id if endpoint != "whoami" else 0
    iid = await vast.rent(offer_id, request("k8s_pod=documented")) if endpoint == "show" else 0
    runtime.faults.add(
        Fault.from_json({"endpoint": endpoint, "kind": "error", "status": status, "body": body})
    )
    calls = {
        "rent": lambda: vast.rent(offer_id, request("k8s_pod=documented")),
        "show": lambda: vast.show_instance(iid),
        "whoami": vast.whoami,
    }
    if outcome is None:
        assert await calls[endpoint]() is None
        return
    with pytest.raises(outcome):
        await calls[endpoint]()
