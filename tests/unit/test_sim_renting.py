"""The simulated Vast.ai's rentals, templates and logs on a fake clock (renting.py, templates.py)."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.sim.config import SimConfig
from provisioner.sim.state import FakeBackend, ManualClock, RentError, SimState
from provisioner.sim.templates import TemplateError, content_hash
from tests.unit.test_sim_state import BOOT_S, advance, boot, first_offer, row


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def state(clock: ManualClock) -> SimState:
    return SimState(SimConfig(boot_delay_s=BOOT_S), clock, FakeBackend())


def test_rental_consumes_the_offer(state: SimState) -> None:
    """Renting marks the offer rented; a second rent is Vast's 404 no_such_ask, or 410 with cancel_unavail."""
    offer = first_offer(state)
    state.rent(offer["id"], {"image": "nginx"})
    assert offer["rented"] is True
    assert offer["rentable"] is False
    with pytest.raises(RentError) as first:
        state.rent(offer["id"], {"image": "nginx"})
    assert first.value.status == 404
    assert first.value.body["error"] == "invalid_args"
    assert "no_such_ask" in first.value.body["msg"]
    assert first.value.body["ask_id"] == offer["id"]
    with pytest.raises(RentError) as second:
        state.rent(offer["id"], {"image": "nginx", "cancel_unavail": True})
    assert second.value.status == 410
    assert second.value.body["error"] == "no_such_ask"


def test_taken_offer_cannot_be_rented(state: SimState) -> None:
    """An offer someone else took answers 404."""
    offer = first_offer(state)
    state.take_offer(offer["id"])
    with pytest.raises(RentError) as caught:
        state.rent(offer["id"], {"image": "nginx"})
    assert caught.value.status == 404


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param({"env": {}}, "invalid_args", id="no-image"),
        pytest.param({"image": "nginx", "env": "-p 8000:8000"}, "invalid_args", id="env-string"),
        pytest.param({"image": "nginx", "disk": 100_000}, "invalid_args", id="disk-too-big"),
        pytest.param({"image": "nginx", "price": 0.0001}, "invalid_price", id="bid-too-low"),
        pytest.param({"image": "nginx", "template_hash_id": "0" * 32}, "invalid_args", id="unknown-template"),
    ],
)
def test_bad_rentals_are_400(state: SimState, body: dict[str, Any], error: str) -> None:
    """Invalid create bodies are a 400 with ask_id, and leave the offer rentable."""
    offer = first_offer(state)
    with pytest.raises(RentError) as caught:
        state.rent(offer["id"], body)
    assert caught.value.status == 400
    assert caught.value.body["error"] == error
    assert offer["rented"] is False


def test_template_env_is_merged_under_the_request_env(state: SimState, clock: ManualClock) -> None:
    """With template_hash_id, the template's env string is the base and the request's env dict wins by key."""
    template, _ = state.templates.create(
        {"name": "t", "image": "nginx", "tag": "1.25", "env": "-p 8000:8000 -e A=1 -e B=2", "runtype": "args"}
    )
    instance_id = state.rent(
        first_offer(state)["id"],
        {"template_hash_id": template["hash_id"], "env": {"B": "x", "-p 9000:9000": "1"}},
    ).id
    inst = state.live(instance_id)
    assert inst.env == {"-p 8000:8000": "1", "A": "1", "B": "x", "-p 9000:9000": "1"}
    assert inst.image == "nginx:1.25"
    advance(state, clock, BOOT_S)
    shown = row(state, instance_id)
    assert set(shown["ports"]) == {"8000/tcp", "9000/tcp"}
    assert shown["template_hash_id"] == template["hash_id"]
    assert shown["template_id"] == template["id"]


def test_template_hash_follows_content(state: SimState) -> None:
    """hash_id is a 32-hex md5 of the content: identical content reuses the template, other content not."""
    body = {"name": "k8s-nginx", "image": "nginx", "env": "-p 8000:8000"}
    first, created = state.templates.create(body)
    assert created
    assert len(first["hash_id"]) == 32
    assert int(first["hash_id"], 16) >= 0
    assert first["hash_id"] == content_hash(body)
    again, created_again = state.templates.create(dict(body))
    assert not created_again
    assert again["id"] == first["id"]
    other, _ = state.templates.create({**body, "env": "-p 9000:9000"})
    assert other["hash_id"] != first["hash_id"]
    assert other["id"] != first["id"]


def test_template_edits_change_the_hash(state: SimState) -> None:
    """v0 edits in place (old hash gone); v1 makes a new version and the old hash still resolves to rent."""
    template, _ = state.templates.create({"name": "t", "image": "nginx"})
    v1 = state.templates.new_version({**template, "image": "nginx:1.27"})
    assert v1["id"] == template["id"]
    assert v1["hash_id"] != template["hash_id"]
    assert state.templates.resolve(template["hash_id"]) is not None
    v0 = state.templates.edit_in_place({"hash_id": v1["hash_id"], "image": "nginx:1.28"})
    assert v0["id"] == template["id"]
    assert v0["hash_id"] not in (template["hash_id"], v1["hash_id"])
    assert state.templates.resolve(v1["hash_id"]) is None
    assert state.templates.resolve(v0["hash_id"]) is not None


def test_template_search_and_delete(state: SimState) -> None:
    """Search sees own and public templates with filters; delete by hash_id or id, then 404."""
    mine, _ = state.templates.create({"name": "mine", "image": "nginx"})
    names = {t["name"] for t in state.templates.search({}, None)}
    assert {"mine", "vLLM", "PyTorch (Vast)"} <= names
    assert [t["id"] for t in state.templates.search({"name": {"eq": "mine"}}, None)] == [mine["id"]]
    assert [t["name"] for t in state.templates.search({"private": {"eq": True}}, None)] == ["mine"]
    assert state.templates.delete({"hash_id": mine["hash_id"]}) == mine["id"]
    with pytest.raises(TemplateError) as caught:
        state.templates.delete({"template_id": mine["id"]})
    assert caught.value.status == 404


def test_logs_snapshot_tail_and_not_ready(state: SimState, clock: ManualClock) -> None:
    """request_logs snapshots the log; its result is 404 once (the default), then the last `tail` lines."""
    instance_id = boot(state, clock)
    token = state.request_logs(instance_id, tail="2")
    assert state.fetch_logs(token)[0] == 404
    code, text = state.fetch_logs(token)
    assert code == 200
    assert len(text.splitlines()) == 2
    full = state.request_logs(instance_id)
    assert state.fetch_logs(full)[0] == 404
    _, everything = state.fetch_logs(full)
    assert "Pulling from library/nginx" in everything
    assert "Started container" in everything
    assert state.fetch_logs("nope")[0] == 404


def test_bid_rental_is_priced_at_the_bid(state: SimState) -> None:
    """An interruptible rental (price set) costs its bid plus storage, and is marked is_bid."""
    offer = first_offer(state)
    bid = round(offer["min_bid"] + 0.01, 4)
    instance_id = state.rent(offer["id"], {"image": "nginx", "disk": 30, "price": bid}).id
    shown = row(state, instance_id)
    assert shown["is_bid"] is True
    assert shown["dph_total"] == pytest.approx(bid + 30 * offer["storage_cost"] / 720, abs=1e-5)


def test_instances_keep_the_template_hash_they_launched_with(state: SimState) -> None:
    """Editing a template changes its hash, not the template_hash_id of instances launched before (drift)."""
    template, _ = state.templates.create({"name": "t", "image": "nginx", "env": "-p 8000:8000"})
    instance_id = state.rent(first_offer(state)["id"], {"template_hash_id": template["hash_id"]}).id
    edited = state.templates.new_version({**template, "env": "-p 8000:8000 -e MODEL=x"})
    assert edited["hash_id"] != template["hash_id"]
    assert row(state, instance_id)["template_hash_id"] == template["hash_id"]
    in_place = state.templates.edit_in_place({"hash_id": edited["hash_id"], "env": "-p 8000:8000 -e MODEL=y"})
    assert row(state, instance_id)["template_hash_id"] == template["hash_id"] != in_place["hash_id"]
