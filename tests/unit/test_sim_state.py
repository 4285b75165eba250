"""The simulated Vast.ai's world model: instance state machine on a fake clock, rentals, templates, logs."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.sim import listing
from provisioner.sim.config import SimConfig
from provisioner.sim.state import (
    OCI_FAILURE_MSG,
    FakeBackend,
    InstanceNotFound,
    ManualClock,
    RentError,
    SimState,
)
from provisioner.sim.templates import TemplateError, content_hash

BOOT_S = 10.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def state(clock: ManualClock, backend: FakeBackend) -> SimState:
    return SimState(SimConfig(boot_delay_s=BOOT_S), clock, backend)


def first_offer(state: SimState, gpu: str = "RTX 4090") -> dict[str, Any]:
    return next(
        o for o in state.offers.values() if o["gpu_name"] == gpu and o["rentable"] and not o["rented"]
    )


def rent(state: SimState, **body: Any) -> int:
    offer = first_offer(state)
    body = {"image": "nginx", "env": {"-p 8000:8000": "1"}, "disk": 20, "label": "k8s_pod=a", **body}
    return state.rent(offer["id"], body).id


def status(state: SimState, instance_id: int) -> str | None:
    return state.live(instance_id).actual_status


def row(state: SimState, instance_id: int) -> dict[str, Any]:
    return listing.instance_row(state.live(instance_id), state.clock(), "127.0.0.1")


def advance(state: SimState, clock: ManualClock, seconds: float) -> None:
    clock.advance(seconds)
    state.tick()


def boot(state: SimState, clock: ManualClock, **body: Any) -> int:
    instance_id = rent(state, **body)
    advance(state, clock, BOOT_S)
    assert status(state, instance_id) == "running"
    return instance_id


def test_rent_goes_null_then_loading_then_running(state: SimState, clock: ManualClock) -> None:
    """A rental starts with actual_status null, is loading after 20 % of the boot delay, running after it."""
    instance_id = rent(state)
    assert status(state, instance_id) is None
    assert state.live(instance_id).intended_status == "running"
    advance(state, clock, 0.2 * BOOT_S)
    assert status(state, instance_id) == "loading"
    advance(state, clock, 0.8 * BOOT_S - 0.01)
    assert status(state, instance_id) == "loading"
    advance(state, clock, 0.01)
    assert status(state, instance_id) == "running"


def test_ports_and_public_ip_only_once_running(
    state: SimState, clock: ManualClock, backend: FakeBackend
) -> None:
    """ports / public_ipaddr are null until running; then a string HostPort per -p key, IP with a newline."""
    instance_id = rent(
        state, env={"-p 8000:8000": "1", "-p 9000:9000/udp": "1", "FOO": "bar"}, runtype="args"
    )
    advance(state, clock, 0.5 * BOOT_S)
    before = row(state, instance_id)
    assert before["ports"] is None
    assert before["public_ipaddr"] is None
    assert before["direct_port_start"] == -1
    advance(state, clock, 0.5 * BOOT_S)
    after = row(state, instance_id)
    assert set(after["ports"]) == {"8000/tcp", "9000/udp"}
    assert after["ports"]["8000/tcp"] == [
        {"HostIp": "0.0.0.0", "HostPort": str(backend.running[instance_id]["8000/tcp"])}
    ]
    assert after["public_ipaddr"] == "127.0.0.1\n"
    assert after["extra_env"] == [["-p 8000:8000", "1"], ["-p 9000:9000/udp", "1"], ["FOO", "bar"]]
    assert isinstance(after["start_date"], float)


def test_ssh_runtype_adds_port_22(state: SimState, clock: ManualClock) -> None:
    """An ssh runtype also maps 22/tcp, as the CLI's default create does."""
    instance_id = boot(state, clock, runtype="ssh")
    assert set(row(state, instance_id)["ports"]) == {"8000/tcp", "22/tcp"}


def test_stop_then_start(state: SimState, clock: ManualClock, backend: FakeBackend) -> None:
    """Stop: intended stopped at once, actual stopped shortly after with no ports; start brings it back."""
    instance_id = boot(state, clock)
    port = backend.running[instance_id]["8000/tcp"]
    state.set_intended(instance_id, "stopped")
    assert state.live(instance_id).intended_status == "stopped"
    assert status(state, instance_id) == "running"
    advance(state, clock, 0.1 * BOOT_S)
    assert status(state, instance_id) == "stopped"
    assert row(state, instance_id)["ports"] is None
    assert row(state, instance_id)["cur_state"] == "stopped"
    assert instance_id not in backend.running
    state.set_intended(instance_id, "running")
    advance(state, clock, BOOT_S)
    assert status(state, instance_id) == "running"
    assert backend.running[instance_id]["8000/tcp"] == port


def test_start_cancels_a_pending_stop(state: SimState, clock: ManualClock) -> None:
    """A start that arrives before the stop took effect keeps the instance running."""
    instance_id = boot(state, clock)
    state.set_intended(instance_id, "stopped")
    state.set_intended(instance_id, "running")
    advance(state, clock, BOOT_S)
    assert status(state, instance_id) == "running"


@pytest.mark.parametrize(("remap", "same_port"), [(False, True), (True, False)], ids=["no-remap", "remap"])
def test_reboot(
    state: SimState, clock: ManualClock, backend: FakeBackend, remap: bool, same_port: bool
) -> None:
    """Reboot: rebooting with no ports, then running on the same HostPort, or a new one when remapped."""
    instance_id = boot(state, clock)
    old_port = backend.running[instance_id]["8000/tcp"]
    state.reboot(instance_id, remap=remap)
    assert status(state, instance_id) == "rebooting"
    assert row(state, instance_id)["ports"] is None
    advance(state, clock, 0.5 * BOOT_S)
    assert status(state, instance_id) == "running"
    assert (backend.running[instance_id]["8000/tcp"] == old_port) is same_port


def test_recycle_pulls_again(state: SimState, clock: ManualClock) -> None:
    """Recycle: recycling, then loading (a fresh pull), then running."""
    instance_id = boot(state, clock)
    state.recycle(instance_id)
    assert status(state, instance_id) == "recycling"
    advance(state, clock, 0.2 * BOOT_S)
    assert status(state, instance_id) == "loading"
    advance(state, clock, 0.8 * BOOT_S)
    assert status(state, instance_id) == "running"


def test_destroy_removes_the_instance(state: SimState, clock: ManualClock, backend: FakeBackend) -> None:
    """Destroy stops the workload; the instance is gone for show/list; the machine comes back as a new ask."""
    instance_id = boot(state, clock)
    inst = state.live(instance_id)
    offer_id, machine_id = inst.offer["id"], inst.offer["machine_id"]
    state.destroy(instance_id)
    assert instance_id not in backend.running
    with pytest.raises(InstanceNotFound):
        state.live(instance_id)
    assert instance_id not in [i.id for i in state.visible()]
    assert state.instances[instance_id].destroyed_at == clock.now
    assert state.offers[offer_id]["rented"] is True
    relisted = [o for o in state.offers.values() if o["machine_id"] == machine_id and not o["rented"]]
    assert len(relisted) == 1
    assert relisted[0]["id"] != offer_id


def test_oci_failure_host(state: SimState, clock: ManualClock) -> None:
    """A host with oci_failure lands in `created` with Docker's OCI message and no ports."""
    offer = first_offer(state)
    state.host(offer["host_id"]).oci_failure = True
    instance_id = state.rent(offer["id"], {"image": "nginx", "env": {"-p 8000:8000": "1"}}).id
    advance(state, clock, 2 * BOOT_S)
    assert status(state, instance_id) == "created"
    assert "OCI runtime create failed" in (state.live(instance_id).status_msg or "")
    assert state.live(instance_id).status_msg == OCI_FAILURE_MSG
    assert row(state, instance_id)["ports"] is None


def test_dies_after(state: SimState, clock: ManualClock, backend: FakeBackend) -> None:
    """A host with dies_after_s runs that long, then the container has exited and its workload is gone."""
    offer = first_offer(state)
    state.host(offer["host_id"]).dies_after_s = 30.0
    instance_id = state.rent(offer["id"], {"image": "nginx", "env": {"-p 8000:8000": "1"}}).id
    advance(state, clock, BOOT_S + 29)
    assert status(state, instance_id) == "running"
    advance(state, clock, 1)
    assert status(state, instance_id) == "exited"
    assert instance_id not in backend.running
    assert row(state, instance_id)["ports"] is None


def test_dies_after_applies_in_one_big_clock_jump(state: SimState, clock: ManualClock) -> None:
    """Transitions apply at their own times, so one long jump still walks through running to exited."""
    offer = first_offer(state)
    state.host(offer["host_id"]).dies_after_s = 5.0
    instance_id = state.rent(offer["id"], {"image": "nginx"}).id
    advance(state, clock, 1_000)
    assert status(state, instance_id) == "exited"


def test_never_boots(state: SimState, clock: ManualClock) -> None:
    """A host that never boots leaves the instance loading for good."""
    offer = first_offer(state)
    state.host(offer["host_id"]).never_boots = True
    instance_id = state.rent(offer["id"], {"image": "nginx"}).id
    advance(state, clock, 100 * BOOT_S)
    assert status(state, instance_id) == "loading"


def test_pull_delay_adds_to_the_boot(state: SimState, clock: ManualClock) -> None:
    """A host's pull delay adds to the boot delay."""
    offer = first_offer(state)
    state.host(offer["host_id"]).pull_delay_s = 20.0
    instance_id = state.rent(offer["id"], {"image": "nginx"}).id
    advance(state, clock, BOOT_S + 19)
    assert status(state, instance_id) == "loading"
    advance(state, clock, 1)
    assert status(state, instance_id) == "running"


def test_offline_keeps_stale_ports_but_stops_the_workload(
    state: SimState, clock: ManualClock, backend: FakeBackend
) -> None:
    """offline: the API still reports the old ports, but nothing answers there."""
    instance_id = boot(state, clock)
    state.disconnect(instance_id, "offline")
    assert status(state, instance_id) == "offline"
    assert row(state, instance_id)["ports"] is not None
    assert instance_id not in backend.running
    advance(state, clock, 100)
    assert status(state, instance_id) == "offline"


def test_unknown_keeps_the_workload(state: SimState, clock: ManualClock, backend: FakeBackend) -> None:
    """unknown (no heartbeat): the status changes, the container keeps serving."""
    instance_id = boot(state, clock)
    state.disconnect(instance_id, "unknown")
    assert status(state, instance_id) == "unknown"
    assert instance_id in backend.running


def test_kill_exits(state: SimState, clock: ManualClock, backend: FakeBackend) -> None:
    """kill: exited at once, workload stopped, intended still running."""
    instance_id = boot(state, clock)
    state.kill(instance_id)
    assert status(state, instance_id) == "exited"
    assert state.live(instance_id).intended_status == "running"
    assert instance_id not in backend.running


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
