"""The simulated world: offers being rented, instances and their time-driven state machine, host behaviours.

Time comes from an injectable clock, and nothing moves until `tick()` runs (the app ticks on every request and
from a background task; unit tests advance a `ManualClock` and tick). Each instance holds a queue of
scheduled transitions, applied in time order, each at its own scheduled time:

    rent ─> null ─(20 % of boot)─> loading ─(boot_delay_s + pull_delay_s)─> running ─(dies_after_s)─> exited
                                      └─> created (host oci_failure)   └ host never_boots: stays loading
    running ─stop─> stopped ─start─> loading ─> running
    running ─reboot─> rebooting ─> running (same HostPort, or a new one with remap)
    running ─recycle─> recycling ─> loading ─> running          any ─destroy─> gone ({"instances": null})
    admin: kill ─> exited · offline (workload down, stale ports) · unknown (no heartbeat, workload still up)

`ports` and `public_ipaddr` exist only while the container runs. Reaching `running` asks the `Backend` for
real listening ports (see workload.py); leaving it tells the backend to stop. The instance record and its
collaborators live in instance.py (re-exported here), the create-body checks in renting.py.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping
from typing import Any

from provisioner.sim import catalogue, docker, renting
from provisioner.sim.config import SIM_USER_ID, SimConfig
from provisioner.sim.instance import (
    OCI_FAILURE_MSG,
    Backend,
    Clock,
    FakeBackend,
    HostBehaviour,
    InstanceNotFound,
    LogRequest,
    ManualClock,
    RentError,
    SimInstance,
    StatusOverride,
)
from provisioner.sim.templates import TemplateStore

__all__ = [
    "OCI_FAILURE_MSG",
    "Backend",
    "Clock",
    "FakeBackend",
    "HostBehaviour",
    "InstanceNotFound",
    "ManualClock",
    "RentError",
    "SimInstance",
    "SimState",
    "StatusOverride",
]

_STOPPING = frozenset({"stopped", "exited", "created", "rebooting", "recycling", "offline"})


class SimState:
    """Offers, instances, templates and host behaviours, advanced by `tick()`."""

    def __init__(self, config: SimConfig, clock: Clock, backend: Backend) -> None:
        self.config = config
        self.clock = clock
        self.backend = backend
        self.rng = random.Random(config.seed + 1)
        now = clock()
        self.offers: dict[int, dict[str, Any]] = {
            o["id"]: o for o in catalogue.build_catalogue(config.seed, config.num_offers, now)
        }
        self.instances: dict[int, SimInstance] = {}
        self.hosts: dict[int, HostBehaviour] = {}
        #: behaviour given to the host of the next rental, whichever it is (``POST /_sim/hosts/next``)
        self.next_host: HostBehaviour | None = None
        self.templates = TemplateStore(clock, SIM_USER_ID)
        self.log_requests: dict[str, LogRequest] = {}
        self._next_instance_id = 31_400_000 + self.rng.randint(0, 99_999)

    # ---- offers -------------------------------------------------------------------------------

    def search_offers(self, query: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Offers matching a search body (§4); raises filters.FilterError on a bad query."""
        return catalogue.search(list(self.offers.values()), query)

    def take_offer(self, offer_id: int) -> None:
        """Someone else rents the offer (between our search and our rent)."""
        offer = self.offers.get(offer_id)
        if offer is None:
            raise KeyError(offer_id)
        offer.update(rented=True, rentable=False)

    def host(self, host_id: int) -> HostBehaviour:
        """The behaviour of a host (defaults: well behaved)."""
        return self.hosts.setdefault(host_id, HostBehaviour())

    # ---- renting ------------------------------------------------------------------------------

    def rent(self, offer_id: int, body: Mapping[str, Any]) -> SimInstance:
        """`PUT /asks/{id}/`: validate, consume the offer, create the instance (actual_status null)."""
        offer = self.offers.get(offer_id)
        renting.check_offer(offer, offer_id, body)
        assert offer is not None
        rental = renting.validate(offer, body, self.templates.resolve)
        now = self.clock()
        self._next_instance_id += self.rng.randint(1, 40)
        inst = SimInstance(
            id=self._next_instance_id,
            offer=catalogue.price_offer(offer, rental.disk_gb, "on-demand", bid=rental.price),
            created_at=now,
            label=rental.label,
            image=rental.image,
            env=rental.env,
            onstart=rental.onstart,
            runtype=rental.runtype,
            args=rental.args,
            disk_gb=rental.disk_gb,
            bid_price=rental.price,
            template=rental.template,
            ssh_port=self.rng.randint(10_000, 39_999),
        )
        offer.update(rented=True, rentable=False)
        if rental.template is not None:
            self.templates.count_rental(rental.template["id"])
        self.instances[inst.id] = inst
        inst.log(
            now, "daemon", f"Instance {inst.id} created on machine {offer['machine_id']} (ask {offer_id})."
        )
        if self.next_host is not None:
            self.hosts[inst.offer["host_id"]] = self.next_host
            self.next_host = None
        self._plan_start(inst, now, pull=True)
        return inst

    # ---- the state machine -------------------------------------------------------------------

    def tick(self) -> None:
        """Apply every transition that is due by now, each at its scheduled time."""
        now = self.clock()
        for inst in list(self.instances.values()):
            while inst.destroyed_at is None and inst.pending and inst.pending[0][0] <= now:
                at, status = inst.pending.pop(0)
                self._enter(inst, status, at)

    def _schedule(self, inst: SimInstance, at: float, status: str) -> None:
        inst.pending.append((at, status))
        inst.pending.sort(key=lambda item: item[0])

    def _plan_start(self, inst: SimInstance, now: float, *, pull: bool) -> None:
        """Schedule the way up to `running` (or the host's failure) from `now`."""
        behaviour = self.host(inst.offer["host_id"])
        boot = self.config.boot_delay_s + (behaviour.pull_delay_s if pull else 0.0)
        self._schedule(inst, now + 0.2 * boot, "loading")
        if behaviour.oci_failure:
            self._schedule(inst, now + boot, "created")
        elif not behaviour.never_boots:
            self._schedule(inst, now + boot, "running")

    def _enter(self, inst: SimInstance, status: str, at: float) -> None:
        """Side effects of reaching `status` at time `at`."""
        if status in _STOPPING:
            self._stop_container(inst)
        inst.actual_status = status
        if status == "loading":
            inst.status_msg = f"Pulling image {inst.image}"
            repo, tag = docker.split_image(inst.image)
            inst.log(at, "daemon", f"{tag}: Pulling from {repo}")
            inst.log(at, "daemon", f"Digest: sha256:{secrets.token_hex(32)}")
            inst.log(at, "daemon", f"Status: Downloaded newer image for {repo}:{tag}")
        elif status == "running":
            self._start_container(inst, at)
        elif status == "created":
            inst.status_msg = OCI_FAILURE_MSG
            inst.log(at, "daemon", OCI_FAILURE_MSG)
        elif status == "exited":
            inst.status_msg = "Exited (137): container process was killed"
            inst.log(at, "container", "Killed")
        elif status == "stopped":
            inst.status_msg = "stopped"
            inst.log(at, "daemon", f"Container C.{inst.id} stopped.")
        elif status in ("rebooting", "recycling"):
            inst.status_msg = f"{status} container C.{inst.id}"
            inst.log(at, "daemon", f"Container C.{inst.id} {status}.")
        elif status == "offline":
            inst.status_msg = "host offline: no heartbeat from machine"
        elif status == "unknown":
            inst.status_msg = "unknown: no recent heartbeat from host"

    def _start_container(self, inst: SimInstance, at: float) -> None:
        reuse = {} if inst.remap_next_start else inst.last_ports
        inst.remap_next_start = False
        try:
            served = self.backend.start(inst, inst.http_port_keys(), reuse)
        except OSError as exc:
            inst.actual_status = "created"
            inst.status_msg = (
                f"Error response from daemon: driver failed programming external connectivity: {exc}"
            )
            inst.log(at, "daemon", inst.status_msg)
            return
        ports = dict(served)
        for key in docker.port_keys(inst.env):
            if key not in ports:
                ports[key] = reuse.get(key) or self.rng.randint(30_000, 65_000)
        if "ssh" in inst.runtype:
            ports.setdefault("22/tcp", reuse.get("22/tcp") or self.rng.randint(30_000, 65_000))
        inst.host_ports = ports
        inst.last_ports = dict(ports)
        inst.running_since = at
        inst.status_msg = f"success, running {inst.image}/{inst.runtype}"
        mapping = ", ".join(f"{key}->{port}" for key, port in ports.items())
        inst.log(at, "daemon", f"Started container C.{inst.id}; port map: {mapping or '(none)'}")
        if inst.onstart:
            inst.log(at, "container", f"running onstart: {inst.onstart.splitlines()[0][:200]}")
        behaviour = self.host(inst.offer["host_id"])
        if behaviour.dies_after_s is not None:
            self._schedule(inst, at + behaviour.dies_after_s, "exited")

    def _stop_container(self, inst: SimInstance) -> None:
        if inst.host_ports is not None or inst.actual_status == "running":
            self.backend.stop(inst.id)
        inst.host_ports = None
        inst.running_since = None

    # ---- operations ---------------------------------------------------------------------------

    def get(self, instance_id: int) -> SimInstance:
        """The instance, destroyed or not, after applying due transitions."""
        self.tick()
        inst = self.instances.get(instance_id)
        if inst is None:
            raise InstanceNotFound(instance_id)
        return inst

    def live(self, instance_id: int) -> SimInstance:
        """The live (not destroyed) instance, after applying due transitions."""
        inst = self.get(instance_id)
        if inst.destroyed_at is not None:
            raise InstanceNotFound(instance_id)
        return inst

    def visible(self) -> list[SimInstance]:
        """Every live instance, after applying due transitions."""
        self.tick()
        return [i for i in self.instances.values() if i.destroyed_at is None]

    def set_label(self, instance_id: int, label: str | None) -> None:
        """`PUT /instances/{id}/ {"label": …}`."""
        self.live(instance_id).label = label

    def set_intended(self, instance_id: int, state: str) -> None:
        """`PUT /instances/{id}/ {"state": "stopped"|"running"}`."""
        inst = self.live(instance_id)
        now = self.clock()
        if inst.actual_status == "offline":
            inst.intended_status = state
            return
        if state == "stopped":
            if inst.intended_status != "stopped":
                inst.intended_status = "stopped"
                inst.pending.clear()
                self._schedule(inst, now + 0.1 * self.config.boot_delay_s, "stopped")
        else:
            stop_pending = any(status == "stopped" for _, status in inst.pending)
            inst.intended_status = "running"
            if stop_pending or inst.actual_status in ("stopped", "exited", "created"):
                inst.pending.clear()
                if inst.actual_status != "running":
                    self._plan_start(inst, now, pull=False)
        self.tick()

    def reboot(self, instance_id: int, *, remap: bool | None = None) -> None:
        """`PUT /instances/reboot/{id}/`: rebooting, then running (a new HostPort when remapped)."""
        inst = self.live(instance_id)
        if inst.actual_status == "offline":
            return
        now = self.clock()
        inst.pending.clear()
        inst.intended_status = "running"
        inst.remap_next_start = self.config.remap_on_reboot if remap is None else remap
        self._enter(inst, "rebooting", now)
        behaviour = self.host(inst.offer["host_id"])
        up_at = now + 0.5 * self.config.boot_delay_s
        if behaviour.oci_failure:
            self._schedule(inst, up_at, "created")
        elif not behaviour.never_boots:
            self._schedule(inst, up_at, "running")

    def recycle(self, instance_id: int) -> None:
        """`PUT /instances/recycle/{id}/`: recycling, then a fresh pull (loading), then running."""
        inst = self.live(instance_id)
        if inst.actual_status == "offline":
            return
        now = self.clock()
        inst.pending.clear()
        inst.intended_status = "running"
        self._enter(inst, "recycling", now)
        self._plan_start(inst, now, pull=True)

    def destroy(self, instance_id: int) -> None:
        """`DELETE /instances/{id}/`: the row disappears; the machine goes back on the market as a new ask."""
        inst = self.live(instance_id)
        now = self.clock()
        self._stop_container(inst)
        inst.pending.clear()
        inst.destroyed_at = now
        inst.intended_status = "stopped"
        inst.log(now, "daemon", f"Instance {inst.id} destroyed.")
        new_id = max(self.offers) + self.rng.randint(1, 5_000)
        self.offers[new_id] = catalogue.relist_offer(self.offers[inst.offer["id"]], new_id, now)

    def kill(self, instance_id: int) -> None:
        """Admin: the container dies (exited)."""
        inst = self.live(instance_id)
        inst.pending.clear()
        self._enter(inst, "exited", self.clock())

    def disconnect(self, instance_id: int, status: str) -> None:
        """Admin: the host goes `offline` (workload down, stale ports) or `unknown` (no heartbeat)."""
        inst = self.live(instance_id)
        inst.pending.clear()
        ports = inst.host_ports
        self._enter(inst, status, self.clock())
        if status == "offline":
            inst.host_ports = ports  # the API keeps reporting the last known mapping

    def override_status(self, instance_id: int, status: str | None, for_s: float | None) -> None:
        """Admin: report `status` as actual_status for `for_s` seconds (None: until cleared)."""
        inst = self.live(instance_id)
        now = self.clock()
        inst.status_override = StatusOverride(status, None if for_s is None else now + for_s)

    def clear_status_override(self, instance_id: int) -> None:
        """Admin: report the real actual_status again."""
        self.live(instance_id).status_override = None

    # ---- logs --------------------------------------------------------------------------------

    def request_logs(self, instance_id: int, tail: Any = None, grep: Any = None, daemon: bool = False) -> str:
        """`PUT /instances/request_logs/{id}/`: snapshot the log now; returns the result token."""
        inst = self.live(instance_id)
        text = docker.render_logs(inst.logs, tail=tail, grep=grep, daemon_only=daemon)
        token = secrets.token_hex(16)
        self.log_requests[token] = LogRequest(text=text, not_ready_left=self.config.logs_not_ready_count)
        return token

    def fetch_logs(self, token: str) -> tuple[int, str]:
        """`GET /logs-result/<token>.log`: (404, …) while not ready or unknown, then (200, text)."""
        request = self.log_requests.get(token)
        if request is None:
            return 404, "NoSuchKey: The specified key does not exist.\n"
        if request.not_ready_left > 0:
            request.not_ready_left -= 1
            return 404, "NoSuchKey: The specified key does not exist.\n"
        return 200, request.text
