"""Helpers of the glitch scenarios (issue 16): a traffic poller, the sim's counters, bans and invariants.

Everything here looks only at what the product shows from outside: answers through the proxy, the
simulator's admin API (instances, request counters), `provisioner blacklist list`, and process exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests import fault_report
from tests.procs import Provisioner, Sim, cli

#: how often the poller asks the proxy (the issue: "every ~50 ms")
POLL_INTERVAL_S = 0.05


@dataclass(frozen=True)
class Sample:
    """One request through the proxy: when (s since the poller started), what came back."""

    at: float
    status: int | None  # None: no HTTP answer (connection refused, reset, timeout)
    instance_id: int | None
    error: str = ""
    upstream_ok: bool | None = None  # asked only when the proxy failed: did the instance answer itself?

    @property
    def ok(self) -> bool:
        return self.status == 200

    def describe(self) -> str:
        what = str(self.status) if self.status is not None else f"no answer ({self.error})"
        upstream = {True: "instance answered directly", False: "instance silent", None: "instance not asked"}
        return f"t={self.at:.2f}s {what}, {upstream[self.upstream_ok]}"


@dataclass
class TrafficPoller:
    """A thread asking ``proxy_url``/whoami every 50 ms (fresh connection each time) and keeping every answer.

    When the proxy does not answer 200, the instances in ``upstream_urls`` are asked directly at once: a
    failure while one of them answers is the product's fault, not the instance's.
    """

    proxy_url: str
    upstream_urls: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=2.0, limits=limits) as http:
            while not self._stop.is_set():
                began = time.monotonic()
                self.samples.append(self._ask(http, began - self._t0))
                self._stop.wait(max(0.0, POLL_INTERVAL_S - (time.monotonic() - began)))

    def _ask(self, http: httpx.Client, at: float) -> Sample:
        try:
            response = http.get(self.proxy_url + "/whoami")
        except httpx.HTTPError as exc:
            return Sample(at, None, None, type(exc).__name__, self._upstream_answers(http))
        if response.status_code != 200:
            return Sample(at, response.status_code, None, "", self._upstream_answers(http))
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            return Sample(at, 200, int(response.json()["instance_id"]))
        return Sample(at, 200, None)

    def _upstream_answers(self, http: httpx.Client) -> bool | None:
        if not self.upstream_urls:
            return None
        for url in self.upstream_urls:
            with contextlib.suppress(httpx.HTTPError):
                if http.get(url + "/whoami").status_code == 200:
                    return True
        return False

    def failures(self, after: float = 0.0) -> list[Sample]:
        """Answers other than 200 (from ``after`` s on) while the instance answered (or was not asked)."""
        return [s for s in list(self.samples) if s.at >= after and not s.ok and s.upstream_ok is not False]

    def first_ok(self) -> Sample | None:
        return next((s for s in list(self.samples) if s.ok), None)

    def served_ids(self) -> list[int]:
        """The instances that answered through the proxy, in order, each run of repeats folded."""
        ids: list[int] = []
        for s in list(self.samples):
            if s.instance_id is not None and (not ids or ids[-1] != s.instance_id):
                ids.append(s.instance_id)
        return ids

    def summary(self, bad: list[Sample]) -> str:
        """A short account of the failed answers: how many, the window, the first few."""
        if not bad:
            return "no failed answer"
        head = "; ".join(s.describe() for s in bad[:3])
        return (
            f"{len(bad)} of {len(self.samples)} answers failed between t={bad[0].at:.2f}s and"
            f" t={bad[-1].at:.2f}s (first: {head})"
        )


@contextlib.contextmanager
def polling(proxy_url: str, upstream_urls: Iterable[str] = ()) -> Iterator[TrafficPoller]:
    """A running TrafficPoller, stopped on exit."""
    poller = TrafficPoller(proxy_url, list(upstream_urls))
    poller.start()
    try:
        yield poller
    finally:
        poller.stop()


# ---------------------------------------------------------------- the simulator, seen from outside


def row(sim: Sim, instance_id: int) -> dict[str, Any]:
    """The sim's own row of an instance (never faulted), destroyed or not."""
    rows = [r for r in sim.instances(include_destroyed=True) if r["id"] == instance_id]
    assert rows, f"the simulator knows no instance {instance_id}"
    return rows[0]


def upstream_url(sim: Sim, instance_id: int) -> str:
    """Where the instance's workload answers directly (bypassing the proxy)."""
    ports = row(sim, instance_id).get("workload_ports") or []
    assert ports, f"instance {instance_id} has no workload port in the simulator"
    return f"http://127.0.0.1:{ports[0]}"


def destroyed_ids(sim: Sim) -> set[int]:
    return {int(r["id"]) for r in sim.instances(include_destroyed=True) if r.get("destroyed_at")}


def live_dph(sim: Sim) -> float:
    """The fleet's live $/h: every instance not destroyed, whoever rented it."""
    return sum(float(r.get("dph_total") or 0.0) for r in sim.instances())


def wait_faults_used(sim: Sim, timeout_s: float = 30.0) -> None:
    """Until the queued faults are used up (they fire on the calls the pod makes itself)."""
    deadline = time.monotonic() + timeout_s
    while sim.admin("GET", "/faults").get("faults"):
        assert time.monotonic() < deadline, f"the injected faults were not used within {timeout_s}s"
        time.sleep(0.05)


def top_offer_prices(env: dict[str, str], top: int = 500) -> list[float]:
    """$/h of the offers this pod would consider, best ranked first (`provisioner offers --json`)."""
    result = cli(env, "offers", "--json", "--top", str(top))
    assert result.returncode == 0, result.stderr
    return [float(o["price_per_hour"]) for o in json.loads(result.stdout)["offers"]]


def bans(env: dict[str, str]) -> list[dict[str, Any]]:
    """The bans in Redis as `provisioner blacklist list --json` prints them."""
    result = cli(env, "blacklist", "list", "--json")
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, Any]] = json.loads(result.stdout)
    return listed


def kill_orphan_nginx(prov: Provisioner) -> None:
    """After a SIGKILL the process's nginx lives on in its own session: stop it, as the kubelet would."""
    try:
        pid = prov.nginx_pid()
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    time.sleep(0.3)


def crash(prov: Provisioner) -> None:
    """SIGKILL, as an OOM kill would: no clean stop is recorded (its orphaned nginx is stopped too)."""
    prov.proc.send_signal(signal.SIGKILL)
    prov.proc.wait(10)
    kill_orphan_nginx(prov)


def faults(sim: Sim, *items: dict[str, Any]) -> None:
    """Queue these faults in the simulator (``POST /_sim/faults``)."""
    sim.admin("POST", "/faults", {"faults": list(items)})


# ---------------------------------------------------------------- invariants


def problems(sim: Sim, labels: Iterable[str], *, protected: Iterable[int] = ()) -> list[str]:
    """The world invariants: one live instance per label, none unlabelled, none protected destroyed."""
    found: list[str] = []
    live = sim.instances()
    for label in labels:
        ours = [i["id"] for i in live if i.get("label") == label]
        if len(ours) > 1:
            found.append(f"{len(ours)} live instances for {label}: {ours}")
    unlabelled = [i["id"] for i in live if not str(i.get("label") or "").startswith("k8s_pod=")]
    if unlabelled:
        found.append(f"unlabelled instances rented: {unlabelled}")
    lost = sorted(set(protected) & destroyed_ids(sim))
    if lost:
        found.append(f"healthy instances destroyed: {lost}")
    return found


def verdict(scenario: str, found: list[str], invariants: str) -> None:
    """Fail with every problem at once, else record the scenario as passed in the fault report."""
    assert not found, f"{scenario}: " + " | ".join(found)
    fault_report.add(scenario, invariants, "pass")
