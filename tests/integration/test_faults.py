"""Fault injection: real `provisioner run` processes against the simulator, invariants after each scenario.

Invariants checked after every scenario (and printed as a table at the end of the run):
  one-per-label  at most one live instance carries the pod's label
  labelled       every live instance carries one of our labels (nothing rented unlabelled)
  kept-healthy   no healthy matching instance was destroyed (the scenario names which ones must survive)
  traffic        a request through the proxy reaches the live instance
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests import fault_report
from tests.glitch_support import crash, faults
from tests.procs import Provisioner, Sim, base_env, run_provisioner, run_sim, wait_for

pytestmark = pytest.mark.integration

LABEL = "k8s_pod=vast-pod-0"
#: short API timeouts so that injected timeouts resolve quickly
FAST = {"VAST_API_TIMEOUT_SECONDS": "2", "BLACKLIST_BAN_AFTER_SECONDS": "30"}


def check(
    scenario: str,
    sim: Sim,
    prov: Provisioner | None,
    *,
    protected: Iterable[int] = (),
    expect_traffic: bool = True,
) -> None:
    """Assert the four invariants and record them for the summary table."""
    checked: list[str] = []
    live = sim.instances()
    ours = [i for i in live if i.get("label") == LABEL]
    assert len(ours) <= 1, f"{scenario}: {len(ours)} live instances for one pod: {[i['id'] for i in ours]}"
    checked.append("one-per-label")
    unlabelled = [i["id"] for i in live if not str(i.get("label") or "").startswith("k8s_pod=")]
    assert not unlabelled, f"{scenario}: unlabelled instances rented: {unlabelled}"
    checked.append("labelled")
    destroyed = {i["id"] for i in sim.instances(include_destroyed=True) if i.get("destroyed_at")}
    lost = sorted(set(protected) & destroyed)
    assert not lost, f"{scenario}: healthy instances destroyed: {lost}"
    checked.append("kept-healthy")
    if expect_traffic:
        assert prov is not None
        served = prov.wait_serving(60)
        assert [i["id"] for i in sim.instances(LABEL)] == [served], f"{scenario}: traffic to a stale instance"
        checked.append("traffic")
    fault_report.add(scenario, ", ".join(checked), "pass")


@pytest.fixture
def sim(tmp_path: Path) -> Any:
    with run_sim(tmp_path, boot_delay_s=0.5) as s:
        yield s


# ---------------------------------------------------------------- API faults before the first rental

STORMS = [
    pytest.param([{"endpoint": "*", "kind": "429_text", "count": 6}], id="429-text-storm"),
    pytest.param([{"endpoint": "*", "kind": "429_json", "count": 6}], id="429-json-storm"),
    pytest.param([{"endpoint": "*", "kind": "429_text", "count": 4, "retry_after": 1}], id="429-retry-after"),
    pytest.param([{"endpoint": "*", "kind": "429_rate_limit", "count": 4}], id="429-rate-limit-body"),
    pytest.param([{"endpoint": "*", "kind": "5xx", "count": 6, "status": 502}], id="5xx-every-endpoint"),
    pytest.param([{"endpoint": "*", "kind": "5xx", "count": 6, "status": 500}], id="500-json-every-endpoint"),
    pytest.param([{"endpoint": "*", "kind": "timeout", "count": 2, "delay_s": 4}], id="timeouts"),
    pytest.param(
        [
            {"endpoint": e, "kind": "5xx", "count": 2}
            for e in ("whoami", "template_get", "template_post", "search")
        ],
        id="5xx-each-startup-call",
    ),
    pytest.param([{"endpoint": "list", "kind": "malformed", "count": 3}], id="list-malformed"),
    pytest.param([{"endpoint": "list", "kind": "list_null", "count": 3}], id="list-null"),
    pytest.param([{"endpoint": "search", "kind": "list_null", "count": 2}], id="search-null"),
    pytest.param([{"endpoint": "*", "kind": "latency", "count": 5, "delay_s": 1}], id="latency"),
]


@pytest.mark.parametrize("injected", STORMS)
def test_api_fault_storms(sim: Sim, tmp_path: Path, injected: list[dict[str, Any]], request: Any) -> None:
    """Under rate limits, errors, timeouts and bad bodies the pod still ends with one served instance."""
    faults(sim, *injected)
    with run_provisioner(base_env(sim, tmp_path, **FAST), tmp_path) as prov:
        prov.wait_serving(60)
        assert len(sim.instances(LABEL, include_destroyed=True)) == 1, "one rental, however many errors"
        check(request.node.callspec.id, sim, prov)


# ---------------------------------------------------------------- rentals with unknown outcome


@pytest.mark.parametrize("kind", ["rent_succeeds_then_5xx", "rent_succeeds_then_timeout"])
def test_rent_succeeds_but_answer_is_lost(sim: Sim, tmp_path: Path, kind: str) -> None:
    """A rent that happened on the server but answered 5xx/timed out is adopted, never repeated."""
    faults(sim, {"endpoint": "rent", "kind": kind, "count": 1, "delay_s": 4})
    with run_provisioner(base_env(sim, tmp_path, **FAST), tmp_path) as prov:
        prov.wait_serving(60)
        # the request log may miss a rent whose client hung up; the world does not
        assert len(sim.instances(LABEL, include_destroyed=True)) == 1, "the ambiguous rent was not retried"
        check(kind.replace("_", "-"), sim, prov)


def test_offer_taken_between_search_and_rent(sim: Sim, tmp_path: Path) -> None:
    """An offer that vanishes between search and rent: the next offer is rented, once."""
    faults(sim, {"endpoint": "rent", "kind": "offer_taken", "count": 2})
    with run_provisioner(base_env(sim, tmp_path, **FAST), tmp_path) as prov:
        prov.wait_serving(60)
        assert len(sim.instances(LABEL, include_destroyed=True)) == 1
        check("offer-taken", sim, prov)


# ---------------------------------------------------------------- faults while serving


def _serving(sim: Sim, tmp_path: Path, **env: str) -> tuple[Any, Provisioner, int]:
    cm = run_provisioner(base_env(sim, tmp_path, **{**FAST, **env}), tmp_path)
    prov = cm.__enter__()
    return cm, prov, prov.wait_serving(40)


@pytest.mark.parametrize(
    "injected",
    [
        pytest.param({"endpoint": "list", "kind": "5xx", "count": 4}, id="list-5xx-while-serving"),
        pytest.param({"endpoint": "list", "kind": "list_null", "count": 4}, id="list-null-while-serving"),
        pytest.param(
            {"endpoint": "list", "kind": "malformed", "count": 4}, id="list-malformed-while-serving"
        ),
        pytest.param(
            {"endpoint": "list", "kind": "timeout", "count": 3, "delay_s": 4}, id="list-timeout-serving"
        ),
        pytest.param({"endpoint": "*", "kind": "429_text", "count": 10}, id="429-while-serving"),
    ],
)
def test_failed_list_never_means_no_instance(
    sim: Sim, tmp_path: Path, injected: dict[str, Any], request: Any
) -> None:
    """A list that fails or answers garbage never leads to a rental or a destroy; serving goes on."""
    cm, prov, iid = _serving(sim, tmp_path, RECONCILE_INTERVAL_SECONDS="1")
    try:
        faults(sim, injected)
        wait_for(lambda: not sim.admin("GET", "/faults").get("faults"), 60, "the faults to be consumed")
        assert prov.served_instance() == iid
        assert len(sim.instances(LABEL, include_destroyed=True)) == 1
        check(request.node.callspec.id, sim, prov, protected=[iid])
    finally:
        cm.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("action", "body"),
    [
        pytest.param("kill", None, id="dies-after-ready"),
        pytest.param("offline", None, id="host-offline"),
        pytest.param("reboot", {"remap": True}, id="port-remap"),
    ],
)
def test_instance_faults_while_serving(
    sim: Sim, tmp_path: Path, action: str, body: dict[str, Any] | None, request: Any
) -> None:
    """Death, a host going offline or a port remap: the pod recovers without a process restart."""
    cm, prov, iid = _serving(sim, tmp_path)
    try:
        sim.admin("POST", f"/instances/{iid}/{action}", body)
        if action == "reboot":
            wait_for(lambda: prov.served_instance() == iid, 40, "the remapped instance to serve")
            check(request.node.callspec.id, sim, prov, protected=[iid])
        else:
            prov.wait_serving(60, other_than=iid)
            check(request.node.callspec.id, sim, prov)
        assert prov.proc.poll() is None
    finally:
        cm.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("behaviour", "scenario"),
    [
        pytest.param({"oci_failure": True}, "oci-failure", id="oci-failure"),
        pytest.param({"never_boots": True}, "never-leaves-loading", id="never-leaves-loading"),
    ],
)
def test_bad_hosts_are_replaced(sim: Sim, tmp_path: Path, behaviour: dict[str, Any], scenario: str) -> None:
    """An OCI failure or an instance stuck in loading is destroyed and replaced in the same process."""
    sim.admin("POST", "/hosts/next", behaviour)
    with run_provisioner(
        base_env(sim, tmp_path, **{**FAST, "BLACKLIST_BAN_AFTER_SECONDS": "4"}), tmp_path
    ) as prov:
        served = prov.wait_serving(60)
        every = sim.instances(LABEL, include_destroyed=True)
        assert len(every) == 2 and served == max(i["id"] for i in every), "exactly one replacement"
        assert prov.proc.poll() is None
        check(scenario, sim, prov)


def test_nginx_killed(sim: Sim, tmp_path: Path) -> None:
    """nginx SIGKILLed: restarted by the supervisor, traffic restored, instance untouched."""
    cm, prov, iid = _serving(sim, tmp_path)
    try:
        pid = prov.nginx_pid()
        import os

        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: prov.nginx_pid() != pid, 20, "a new nginx")
        check("nginx-killed", sim, prov, protected=[iid])
    finally:
        cm.__exit__(None, None, None)


# ---------------------------------------------------------------- process faults


def test_sigterm_during_rental(sim: Sim, tmp_path: Path) -> None:
    """SIGTERM while an instance boots: exit 0; the next start adopts the same instance."""
    sim.admin("POST", "/config", {"boot_delay_s": 6.0})
    env = base_env(sim, tmp_path, **FAST)
    with run_provisioner(env, tmp_path, "first") as prov:
        wait_for(lambda: sim.count("rent") == 1, 30, "the rental")
        prov.proc.send_signal(signal.SIGTERM)
        assert prov.proc.wait(20) == 0
    with run_provisioner(env, tmp_path, "second") as prov:
        prov.wait_serving(60)
        assert len(sim.instances(LABEL, include_destroyed=True)) == 1
        check("sigterm-during-rental", sim, prov)


STEPS = [
    pytest.param("template_post", id="after-template"),
    pytest.param("search", id="after-search"),
    pytest.param("rent", id="after-rent"),
    pytest.param("boot", id="during-boot"),
]


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_rental_step_then_restart(sim: Sim, tmp_path: Path, step: str) -> None:
    """SIGKILL at a rental step, then a fresh start: it adopts what exists and never duplicates."""
    sim.admin("POST", "/config", {"boot_delay_s": 3.0})
    if step in ("template_post", "search"):
        # slow that call down so the kill lands right after it was made
        faults(sim, {"endpoint": step, "kind": "latency", "count": 1, "delay_s": 2})
    env = base_env(sim, tmp_path, **FAST)
    with run_provisioner(env, tmp_path, "first") as prov:
        endpoint = "rent" if step == "boot" else step
        wait_for(lambda: sim.count(endpoint) >= 1, 30, f"the {endpoint} call")
        if step == "boot":
            time.sleep(1.0)
        crash(prov)
    with run_provisioner(env, tmp_path, "second") as prov:
        prov.wait_serving(60)
        assert len(sim.instances(LABEL, include_destroyed=True)) == 1, "never a second rental"
        check(f"sigkill-{step.replace('_', '-')}", sim, prov)


def test_two_processes_for_one_pod(sim: Sim, tmp_path: Path) -> None:
    """Two provisioners for the same pod at once converge on one instance, and both serve it."""
    env_a = base_env(sim, tmp_path, **FAST)
    env_b = base_env(sim, tmp_path, **FAST)
    env_b["NGINX_CONFIG_PATH"] = str(tmp_path / "b" / "nginx" / "nginx.conf")
    with run_provisioner(env_a, tmp_path, "a") as a, run_provisioner(env_b, tmp_path, "b") as b:
        wait_for(lambda: len(sim.instances(LABEL)) == 1 and a.served_instance(), 60, "one instance")
        assert b.wait_serving(30) == a.wait_serving(30)
        check("two-processes-one-pod", sim, a)


def test_two_processes_for_one_pod_with_redis_rent_once(sim: Sim, tmp_path: Path) -> None:
    """With Redis, two provisioners for one pod take the label's rent lock: exactly one rental."""
    from tests.redis_server import run_redis

    sim.admin("POST", "/config", {"boot_delay_s": 2.0})
    with run_redis(tmp_path) as redis:
        shared = {**FAST, "BLACKLIST_ENABLED": "true", "BLACKLIST_REDIS_URL": redis.url}
        env_a = base_env(sim, tmp_path, **shared)
        env_b = base_env(sim, tmp_path, **shared)
        env_b["NGINX_CONFIG_PATH"] = str(tmp_path / "b" / "nginx" / "nginx.conf")
        with run_provisioner(env_a, tmp_path, "a") as a, run_provisioner(env_b, tmp_path, "b") as b:
            served = a.wait_serving(60)
            assert b.wait_serving(30) == served
            assert len(sim.instances(LABEL, include_destroyed=True)) == 1, "the lock let only one rent"
            check("two-processes-one-pod-redis-lock", sim, a)


def test_restart_serves_while_the_template_lookup_is_throttled(sim: Sim, tmp_path: Path) -> None:
    """A restart whose template check keeps getting 429s still serves its running instance at once."""
    env = base_env(sim, tmp_path, **FAST)
    with run_provisioner(env, tmp_path, "first") as prov:
        iid = prov.wait_serving(40)
    faults(sim, {"endpoint": "template_get", "kind": "429_text", "count": 0})
    with run_provisioner(env, tmp_path, "second") as prov:
        assert prov.wait_serving(30) == iid
        assert "template not checked yet" in prov.output()
        assert len(sim.instances(LABEL, include_destroyed=True)) == 1
        check("template-lookup-throttled-on-restart", sim, prov, protected=[iid])
        sim.admin("DELETE", "/faults")
