"""One simulated instance and what it depends on: the clock, the container backend, host behaviours.

`SimInstance` is the record the state machine (state.py) moves and the wire (listing.py) renders.
A `StatusOverride` makes it report another `actual_status` for a while (a status string Vast never used,
or null) while its container keeps running (`POST /_sim/instances/{id}/status`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from provisioner.sim import docker

Clock = Callable[[], float]
OCI_FAILURE_MSG = (
    "Error response from daemon: OCI runtime create failed: runc create failed: unable to start container "
    "process: error during container init: error running hook #0: error running hook: exit status 1, "
    "stdout: , stderr: Auto-detected mode as 'legacy'\nnvidia-container-cli: initialization error: "
    "nvml error: driver/library version mismatch: unknown"
)


class ManualClock:
    """A clock for tests: starts at a fixed epoch and moves only when told to."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Backend(Protocol):
    """Runs an instance's container: real listening ports for its HTTP port keys."""

    def start(self, instance: SimInstance, keys: Sequence[str], reuse: Mapping[str, int]) -> dict[str, int]:
        """Serve `keys` ("8000/tcp"), preferring the host ports in `reuse`; returns key -> host port."""
        ...

    def stop(self, instance_id: int) -> None:
        """Stop serving at once (connections refused from now on)."""
        ...


class FakeBackend:
    """A backend without sockets: hands out port numbers and records what ran (for unit tests)."""

    def __init__(self) -> None:
        self.running: dict[int, dict[str, int]] = {}
        self.starts: list[int] = []
        self.stops: list[int] = []
        self._ports = itertools.count(41_000)

    def start(self, instance: SimInstance, keys: Sequence[str], reuse: Mapping[str, int]) -> dict[str, int]:
        ports = {key: reuse.get(key) or next(self._ports) for key in keys}
        self.running[instance.id] = ports
        self.starts.append(instance.id)
        return ports

    def stop(self, instance_id: int) -> None:
        if self.running.pop(instance_id, None) is not None:
            self.stops.append(instance_id)


@dataclass
class HostBehaviour:
    """How one host misbehaves (set with `POST /_sim/hosts/{host_id}`)."""

    never_boots: bool = False
    oci_failure: bool = False
    dies_after_s: float | None = None
    pull_delay_s: float = 0.0


class RentError(Exception):
    """A rejected rental, with the HTTP status and Vast's error body (§5)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("msg", ""))
        self.status = status
        self.body = body


class InstanceNotFound(Exception):
    """No live instance with that id."""


@dataclass(frozen=True)
class StatusOverride:
    """Report `status` as `actual_status` until `until` (None: until cleared), whatever the container does."""

    status: str | None
    until: float | None


@dataclass
class SimInstance:
    """One rented instance, live or destroyed."""

    id: int
    offer: dict[str, Any]
    created_at: float
    label: str | None
    image: str
    env: dict[str, str]
    onstart: str | None
    runtype: str
    args: list[str] | None
    disk_gb: float
    bid_price: float | None
    template: dict[str, Any] | None
    ssh_port: int
    actual_status: str | None = None
    intended_status: str = "running"
    status_msg: str | None = None
    host_ports: dict[str, int] | None = None
    last_ports: dict[str, int] = field(default_factory=dict)
    pending: list[tuple[float, str]] = field(default_factory=list)
    remap_next_start: bool = False
    destroyed_at: float | None = None
    running_since: float | None = None
    logs: list[tuple[float, str, str]] = field(default_factory=list)
    status_override: StatusOverride | None = None

    def log(self, at: float, source: str, text: str) -> None:
        """Append a log line; `source` is "daemon" (Vast's host agent) or "container"."""
        self.logs.append((at, source, text))

    def reported_status(self, now: float) -> str | None:
        """The `actual_status` the API reports at `now`: an active override, else the real one."""
        override = self.status_override
        if override is not None and (override.until is None or now < override.until):
            return override.status
        return self.actual_status

    def http_port_keys(self) -> list[str]:
        """The container ports the workload serves: every `-p` TCP mapping of the env."""
        return [key for key in docker.port_keys(self.env) if key.endswith("/tcp")]


@dataclass
class LogRequest:
    """A `request_logs` result waiting at its URL."""

    text: str
    not_ready_left: int
