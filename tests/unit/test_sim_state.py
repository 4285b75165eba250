"""The simulated Vast.ai's world model: the instance state machine on a fake clock.

Rentals, templates and logs: test_sim_renting.py (it reuses the helpers here).
"""

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
    SimState,
)

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
