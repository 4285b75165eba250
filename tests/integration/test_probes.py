"""The StatefulSet's probes, exercised for real against `provisioner run` and the simulated Vast.ai.

The container's env is taken from the rendered manifest (`kubectl kustomize k8s/`): the ConfigMap,
the downward API (test pod name and namespace) and the Secret (a test key). Only what cannot work on
this machine is replaced: VAST_API_URL (the simulator), VAST_ALLOW_PRIVATE_UPSTREAMS (its workloads
listen on 127.0.0.1), BLACKLIST_REDIS_URL (a local redis-server), NGINX_CONFIG_PATH (a temp dir),
the two ports (free ones) and ADMIN_HOST (loopback only). The probes keep the manifest's paths,
periods, timeouts and thresholds unscaled; a small kubelet stand-in runs them like the kubelet:
the startup probe first, liveness and readiness only after it succeeded, each on its own period,
Ready after successThreshold successes and NotReady after failureThreshold failures.

One timeline (about two minutes) feeds all the tests of this module:
start (first boot FIRST_BOOT_S) -> Ready -> the instance is killed and the simulator's boot made
longer than the liveness budget -> NotReady -> the replacement boots -> Ready again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests import manifests, procs
from tests.manifests import K8S
from tests.redis_server import run_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

POD = "vast-pod-0"
NAMESPACE = "probe-test"
SECRET = "vast-credentials"
#: the first rental boots this long in the simulator (seconds)
FIRST_BOOT_S = 12.0
#: seconds of extra boot over the liveness budget for the replacement (see long_boot_s)
LONG_BOOT_MARGIN_S = 10.0


@dataclass(frozen=True)
class Probe:
    """One httpGet probe of the manifest, aimed at this test's process."""

    name: str
    url: str
    period_s: float
    timeout_s: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def from_manifest(
        cls, name: str, spec: dict[str, Any], ports: dict[str, int], host_ports: dict[int, int]
    ) -> Probe:
        get = spec["httpGet"]
        port = get["port"]
        container_port = ports[port] if isinstance(port, str) else int(port)
        return cls(
            name=name,
            url=f"http://127.0.0.1:{host_ports[container_port]}{get['path']}",
            period_s=float(spec.get("periodSeconds", 10)),
            timeout_s=float(spec.get("timeoutSeconds", 1)),
            success_threshold=int(spec.get("successThreshold", 1)),
            failure_threshold=int(spec.get("failureThreshold", 3)),
        )

    @property
    def budget_s(self) -> float:
        return self.period_s * self.failure_threshold


@dataclass(frozen=True)
class Result:
    """One probe run: when (seconds since start), which probe, success, status and body (or error)."""

    t: float
    probe: str
    ok: bool
    status: int | None
    body: str


@dataclass
class Kubelet:
    """The kubelet's prober for one container: startup gates liveness and readiness."""

    startup: Probe
    liveness: Probe
    readiness: Probe
    t0: float = field(default_factory=time.monotonic)
    results: list[Result] = field(default_factory=list)
    ready: bool = False
    transitions: list[tuple[float, bool]] = field(default_factory=list)
    restarts: list[tuple[float, str]] = field(default_factory=list)
    started_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def run_probe(self, probe: Probe) -> Result:
        """HTTP GET with the probe's timeout; success is a status in [200, 400), as for the kubelet."""
        t = self.now()
        try:
            response = httpx.get(probe.url, timeout=probe.timeout_s, follow_redirects=False)
        except httpx.HTTPError as exc:
            result = Result(t, probe.name, False, None, f"{type(exc).__name__}: {exc}")
        else:
            result = Result(
                t, probe.name, 200 <= response.status_code < 400, response.status_code, response.text
            )
        with self._lock:
            self.results.append(result)
        return result

    def _every(self, probe: Probe, on_result: Any) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            if on_result(self.run_probe(probe)) is False:
                return
            due += probe.period_s
            self._stop.wait(max(0.0, due - time.monotonic()))

    def _spawn(self, probe: Probe, on_result: Any) -> None:
        thread = threading.Thread(target=self._every, args=(probe, on_result), name=probe.name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def start(self) -> None:
        successes = failures = 0

        def on_startup(result: Result) -> bool:
            nonlocal successes, failures
            successes, failures = (successes + 1, 0) if result.ok else (0, failures + 1)
            if failures >= self.startup.failure_threshold:
                self.restarts.append((result.t, "startup"))
                failures = 0
            if successes >= self.startup.success_threshold:
                self.started_at = result.t
                self._spawn(self.liveness, self._liveness_counter())
                self._spawn(self.readiness, self._readiness_counter())
                return False
            return True

        self._spawn(self.startup, on_startup)

    def _liveness_counter(self) -> Any:
        failures = 0

        def on_result(result: Result) -> bool:
            nonlocal failures
            failures = 0 if result.ok else failures + 1
            if failures >= self.liveness.failure_threshold:
                self.restarts.append((result.t, "liveness"))
                failures = 0
            return True

        return on_result

    def _readiness_counter(self) -> Any:
        successes = failures = 0

        def on_result(result: Result) -> bool:
            nonlocal successes, failures
            successes, failures = (successes + 1, 0) if result.ok else (0, failures + 1)
            if not self.ready and successes >= self.readiness.success_threshold:
                self.ready = True
                self.transitions.append((result.t, True))
            elif self.ready and failures >= self.readiness.failure_threshold:
                self.ready = False
                self.transitions.append((result.t, False))
            return True

        return on_result

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def of(self, probe: str, start: float = 0.0, end: float = float("inf")) -> list[Result]:
        with self._lock:
            return [r for r in self.results if r.probe == probe and start <= r.t < end]

    def wait_ready(self, want: bool, timeout_s: float, alive: Callable[[], None]) -> float:
        """Wait for the Ready condition to become ``want``; the probe time at which it did."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive()
            if self.transitions and self.transitions[-1][1] is want:
                return self.transitions[-1][0]
            time.sleep(0.1)
        raise AssertionError(f"the pod did not become {'Ready' if want else 'NotReady'} in {timeout_s}s")


@dataclass
class Timeline:
    """What happened, for the tests to assert on."""

    kubelet: Kubelet
    probes: dict[str, Probe]
    env: dict[str, str]
    first_instance: int
    second_instance: int
    first_running_at: float
    ready_at: float
    killed_at: float
    not_ready_at: float
    ready_again_at: float
    second_running_at: float
    long_boot_s: float
    exit_code: int | None
    shutdown_s: float
    grace_s: float
    output: str

    def summary(self) -> str:
        """The probe log, one line per probe run, for failure messages."""
        lines = [f"transitions={self.kubelet.transitions} restarts={self.kubelet.restarts}"]
        lines += [
            f"{r.t:6.1f} {r.probe:15} {r.ok!s:5} {r.status} {r.body[:90]}" for r in self.kubelet.results
        ]
        return "\n".join(lines)


def manifest_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container env from the manifest, with this test's pod name, namespace and API key."""
    return manifests.container_env(
        container,
        docs,
        fields={"metadata.name": POD, "metadata.namespace": NAMESPACE},
        secrets={(SECRET, "VAST_API_KEY"): "probe-test-key-0123456789"},
    )


def running_instances(sim: procs.Sim, label: str) -> list[dict[str, Any]]:
    return [i for i in sim.instances(label) if i.get("actual_status") == "running"]


def wait_running(
    sim: procs.Sim,
    label: str,
    kubelet: Kubelet,
    timeout_s: float,
    alive: Callable[[], None],
    other_than: int = 0,
) -> tuple[int, float]:
    """Poll the simulator until an instance with our label runs; (its id, when it was first seen)."""

    def found_one() -> dict[str, Any] | None:
        alive()
        return next((i for i in running_instances(sim, label) if i["id"] != other_than), None)

    found = procs.wait_for(
        found_one,
        timeout_s,
        "an instance with our label to run",
        interval_s=0.25,
    )
    return int(found["id"]), kubelet.now()


@pytest.fixture(scope="module")
def timeline(tmp_path_factory: pytest.TempPathFactory) -> Timeline:
    """Run the whole scenario once: first boot, Ready, kill, long replacement boot, Ready again."""
    tmp = tmp_path_factory.mktemp("probes")
    docs = manifests.kustomize(K8S)
    container = manifests.provisioner_container(docs)
    env = manifest_env(docs, container)
    ports = {p["name"]: int(p["containerPort"]) for p in container["ports"]}
    listen_port, admin_port = procs.free_port(), procs.free_port()
    host_ports = {int(env["NGINX_LISTEN_PORT"]): listen_port, int(env["ADMIN_PORT"]): admin_port}
    probes = {
        name: Probe.from_manifest(name, container[name], ports, host_ports)
        for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    long_boot_s = probes["livenessProbe"].budget_s + LONG_BOOT_MARGIN_S
    with (
        procs.run_sim(tmp, boot_delay_s=FIRST_BOOT_S) as sim,
        run_redis(tmp) as redis,
    ):
        env.update(
            {
                "VAST_API_URL": sim.url,
                "VAST_ALLOW_PRIVATE_UPSTREAMS": "true",
                "BLACKLIST_REDIS_URL": redis.url,
                "NGINX_CONFIG_PATH": str(tmp / "nginx" / "nginx.conf"),
                "NGINX_LISTEN_PORT": str(listen_port),
                "ADMIN_PORT": str(admin_port),
                "ADMIN_HOST": "127.0.0.1",
            }
        )
        process_env = {k: v for k, v in os.environ.items() if not manifests.is_known_env_name(k.upper())}
        process_env.update(env)
        label = env["VAST_LABEL"]
        with procs.run_provisioner(process_env, tmp, name="probes") as prov:
            kubelet = Kubelet(probes["startupProbe"], probes["livenessProbe"], probes["readinessProbe"])
            kubelet.start()

            def alive() -> None:
                code = prov.proc.poll()
                assert code is None, f"provisioner exited with {code}:\n{prov.output()[-3000:]}"

            try:
                first, first_running_at = wait_running(sim, label, kubelet, FIRST_BOOT_S * 2 + 30, alive)
                ready_at = kubelet.wait_ready(True, 60, alive)
                # steady for a couple of readiness periods, then the instance dies and the next boot is long
                time.sleep(2 * probes["readinessProbe"].period_s)
                sim.admin("POST", "/config", {"boot_delay_s": long_boot_s})
                # the instance dies while the kill is handled: the sim answers only once its workload has
                # stopped (up to seconds on a loaded machine), so the clock starts before the request
                killed_at = kubelet.now()
                sim.admin("POST", f"/instances/{first}/kill")
                readiness = probes["readinessProbe"]
                not_ready_at = kubelet.wait_ready(False, readiness.budget_s + readiness.period_s + 10, alive)
                second, second_running_at = wait_running(
                    sim, label, kubelet, long_boot_s * 1.5 + 30, alive, first
                )
                ready_again_at = kubelet.wait_ready(True, 60, alive)
            finally:
                kubelet.stop()
            stop_started = time.monotonic()
            prov.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                prov.proc.wait(60)
            shutdown_s = time.monotonic() - stop_started
            exit_code = prov.proc.poll()
            output = prov.output()
    return Timeline(
        kubelet=kubelet,
        probes=probes,
        env=env,
        first_instance=first,
        second_instance=second,
        first_running_at=first_running_at,
        ready_at=ready_at,
        killed_at=killed_at,
        not_ready_at=not_ready_at,
        ready_again_at=ready_again_at,
        second_running_at=second_running_at,
        long_boot_s=long_boot_s,
        exit_code=exit_code,
        shutdown_s=shutdown_s,
        grace_s=float(
            manifests.find(docs, "StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        ),
        output=output,
    )


def test_probe_settings_are_the_manifests(timeline: Timeline) -> None:
    """The manifest's probes aim at VAST_HEALTH_PATH on the proxy and /healthz on the admin port."""
    probes = timeline.probes
    assert probes["readinessProbe"].url.endswith(
        f":{timeline.env['NGINX_LISTEN_PORT']}{timeline.env['VAST_HEALTH_PATH']}"
    )
    assert probes["livenessProbe"].url.endswith(f":{timeline.env['ADMIN_PORT']}/healthz")
    assert probes["startupProbe"].url == probes["livenessProbe"].url
    assert timeline.env["VAST_LABEL"] == f"k8s_pod={NAMESPACE}/{POD}"


def test_startup_gates_liveness_and_readiness(timeline: Timeline) -> None:
    """No liveness or readiness probe runs before the startup probe's first success; it never restarts."""
    kubelet = timeline.kubelet
    assert kubelet.started_at is not None
    startup = kubelet.of("startupProbe")
    assert startup[-1].ok and all(not r.ok for r in startup[:-1])
    first_other = min(r.t for r in kubelet.results if r.probe != "startupProbe")
    assert first_other >= kubelet.started_at
    assert [r for r in kubelet.restarts if r[1] == "startup"] == []


def test_not_ready_while_renting_and_booting(timeline: Timeline) -> None:
    """Before the first instance runs, every readiness probe fails with the proxy's 503 'unavailable'."""
    kubelet = timeline.kubelet
    early = kubelet.of("readinessProbe", end=timeline.first_running_at)
    assert early, "no readiness probe ran before the instance was running (first boot too short?)"
    for result in early:
        assert not result.ok
        assert result.status == 503 and '"unavailable"' in result.body, timeline.summary()
    assert kubelet.transitions[0] == (timeline.ready_at, True), "Ready must be the first transition"


def test_ready_once_the_remote_app_answers(timeline: Timeline) -> None:
    """Ready comes from the remote GPU's own /health (its instance id and our label), soon after it runs."""
    kubelet = timeline.kubelet
    first_ok = next(r for r in kubelet.of("readinessProbe") if r.ok)
    assert first_ok.t <= timeline.ready_at
    body = httpx.Response(200, text=first_ok.body).json()
    assert body["instance_id"] == timeline.first_instance
    assert body["label"] == timeline.env["VAST_LABEL"]
    # served within one boot poll + one readiness period (+ slack) of the instance running
    lag = timeline.ready_at - timeline.first_running_at
    assert lag < float(timeline.env["BOOT_POLL_SECONDS"]) + timeline.probes["readinessProbe"].period_s + 5


def test_not_ready_when_the_instance_dies(timeline: Timeline) -> None:
    """After the instance is killed, readiness fails failureThreshold times and the pod leaves Ready."""
    kubelet = timeline.kubelet
    readiness = timeline.probes["readinessProbe"]
    assert timeline.killed_at < timeline.not_ready_at
    assert timeline.not_ready_at - timeline.killed_at <= readiness.budget_s + readiness.period_s + 2
    # the failureThreshold results that made the pod NotReady all failed, and all came from the kill:
    # a result is timed at its probe's start, and a probe in flight when the instance died (started up to
    # its timeout before) fails from it too
    last = kubelet.of("readinessProbe", end=timeline.not_ready_at + 0.001)[-readiness.failure_threshold :]
    assert len(last) == readiness.failure_threshold and not any(r.ok for r in last), last
    assert last[0].t >= timeline.killed_at - readiness.timeout_s - 1, (last[0], timeline.killed_at)
    assert [t for t, ready in kubelet.transitions if not ready] == [timeline.not_ready_at]


def test_ready_again_after_replacement(timeline: Timeline) -> None:
    """A new instance is rented and, once it answers, the pod is Ready again (served by the new one)."""
    kubelet = timeline.kubelet
    assert timeline.second_instance != timeline.first_instance
    assert timeline.ready_again_at >= timeline.second_running_at - 1
    back = next(r for r in kubelet.of("readinessProbe", start=timeline.not_ready_at) if r.ok)
    body = httpx.Response(200, text=back.body).json()
    assert body["instance_id"] == timeline.second_instance
    between = kubelet.of("readinessProbe", start=timeline.not_ready_at, end=timeline.second_running_at)
    assert between and all(not r.ok for r in between), "Ready while no instance ran"
    assert [ready for _, ready in kubelet.transitions] == [True, False, True], timeline.summary()


def test_liveness_never_kills_during_a_long_boot(timeline: Timeline) -> None:
    """Through a boot longer than the liveness budget, /healthz never fails (no restart, no failure)."""
    kubelet = timeline.kubelet
    liveness = timeline.probes["livenessProbe"]
    boot = timeline.second_running_at - timeline.killed_at
    assert boot > liveness.budget_s, (
        f"the replacement booted in {boot:.0f}s, not longer than {liveness.budget_s}s"
    )
    during = kubelet.of("livenessProbe", start=timeline.killed_at, end=timeline.second_running_at)
    assert len(during) >= liveness.failure_threshold, "too few liveness probes to prove anything"
    assert [r for r in during if not r.ok] == [], timeline.summary()
    assert [r for r in kubelet.of("livenessProbe") if not r.ok] == []
    assert kubelet.restarts == [], timeline.summary()


def test_process_shuts_down_cleanly(timeline: Timeline) -> None:
    """After the timeline, SIGTERM ends `provisioner run` with exit code 0 within the pod's grace period."""
    assert timeline.exit_code == 0, timeline.output[-3000:]
    assert timeline.shutdown_s < timeline.grace_s
