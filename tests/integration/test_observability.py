"""Observability of a real `provisioner run` against the simulator: probes, metrics, JSON logs,
remote log streaming and `provisioner status`."""

from __future__ import annotations

import collections
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import (
    PROVISIONER,
    Provisioner,
    Sim,
    bare_env,
    base_env,
    cli,
    free_port,
    run_provisioner,
    run_sim,
    wait_for,
)

pytestmark = pytest.mark.integration

LABEL = "k8s_pod=vast-pod-0"


@dataclass
class Pod:
    sim: Sim
    prov: Provisioner
    instance_id: int


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    """One simulator and one provisioner with REMOTE_LOGS on, serving, shared by the read-only tests."""
    tmp = tmp_path_factory.mktemp("observability")
    # a boot long enough that a tick sees it booting even when the paced API spaces the ticks out
    with run_sim(tmp, boot_delay_s=4.0) as sim:
        env = base_env(sim, tmp, REMOTE_LOGS="true", REMOTE_LOGS_INTERVAL_SECONDS="1", REMOTE_LOGS_TAIL="20")
        with run_provisioner(env, tmp) as prov:
            iid = prov.wait_serving(40)
            wait_for(  # the phase is set once the tick that served is complete
                lambda: value(scrape(prov), "vastprov_instance_state", state="serving"), 30, "phase serving"
            )
            yield Pod(sim, prov, iid)


def scrape(prov: Provisioner) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = httpx.get(prov.admin_url + "/metrics", timeout=5)
    assert response.status_code == 200
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            found.setdefault(s.name, []).append((dict(s.labels), s.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float | None:
    for got, v in found.get(name, []):
        if all(got.get(k) == want for k, want in labels.items()):
            return v
    return None


def readyz(prov: Provisioner) -> tuple[int, dict[str, Any]]:
    response = httpx.get(prov.admin_url + "/readyz", timeout=5)
    return response.status_code, response.json()


def remote_lines(prov: Provisioner) -> list[dict[str, Any]]:
    return [line for line in prov.log_lines() if line.get("source") == "remote"]


def status_cmd(env: dict[str, str] | Any, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [PROVISIONER, "status", *args], env=dict(env), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# ---------------------------------------------------------------- probes


def test_healthz_200_and_readyz_503_while_booting(tmp_path: Path) -> None:
    """While the instance boots: /healthz 200 (alive), /readyz 503 saying why, state gauge `booting`."""
    with (
        run_sim(tmp_path, boot_delay_s=60.0) as sim,
        run_provisioner(base_env(sim, tmp_path), tmp_path) as prov,
    ):
        wait_for(lambda: sim.count("rent") >= 1, 30, "a rental")
        code, _ = wait_for(
            lambda: r if (r := readyz(prov))[1]["reason"] == "booting" else None, 30, "booting"
        )
        assert code == 503
        assert httpx.get(prov.admin_url + "/healthz", timeout=5).status_code == 200
        found = wait_for(
            lambda: f if value(f := scrape(prov), "vastprov_instance_state", state="booting") else None,
            30,
            "the state gauge to say booting",
        )
        assert value(found, "vastprov_instance_state", state="serving") == 0
        assert value(found, "vastprov_ready") == 0


def test_readyz_turns_503_when_the_served_instance_dies(tmp_path: Path) -> None:
    """Killing the served instance turns /readyz 503 (health loop); it is replaced, counted as `dead`."""
    with (
        run_sim(tmp_path, boot_delay_s=3.0) as sim,
        run_provisioner(base_env(sim, tmp_path), tmp_path) as prov,
    ):
        old = prov.wait_serving(40)
        wait_for(lambda: readyz(prov)[0] == 200, 20, "ready")
        sim.admin("POST", f"/instances/{old}/kill")
        _, body = wait_for(lambda: r if (r := readyz(prov))[0] == 503 else None, 20, "/readyz 503", 0.05)
        assert body["status"] == "not-ready" and body["reason"], body
        assert httpx.get(prov.admin_url + "/healthz", timeout=5).status_code == 200, "still alive"
        new = prov.wait_serving(40, other_than=old)
        wait_for(lambda: readyz(prov)[0] == 200, 20, "ready again")
        found = wait_for(
            lambda: f if value(f := scrape(prov), "vastprov_replacements_total", reason="dead") else None,
            20,
            "the replacement to be counted",
        )
        assert value(found, "vastprov_replacements_total", reason="dead") == 1
        assert value(found, "vastprov_rentals_total") == 2
        assert value(found, "vastprov_instance_info", instance_id=str(new), served="true") == 1


# ---------------------------------------------------------------- metrics


def test_metrics_after_a_rental(pod: Pod) -> None:
    """After one rental, /metrics has the documented series with the values of that rental."""
    found = scrape(pod.prov)
    sim_row = next(i for i in pod.sim.instances(LABEL) if i["id"] == pod.instance_id)
    assert value(found, "vastprov_instance_state", state="serving") == 1
    assert sum(v for _, v in found["vastprov_instance_state"]) == 1
    assert value(found, "vastprov_ready") == 1
    assert value(found, "vastprov_rentals_total") == 1
    assert value(found, "vastprov_events_total", kind="rent") == 1
    assert value(found, "vastprov_time_to_ready_seconds_count") == 1
    assert (value(found, "vastprov_time_to_ready_seconds_sum") or 0) > 0
    assert value(found, "vastprov_vast_api_requests_total", call="rent", status="200") == 1
    assert (value(found, "vastprov_vast_api_requests_total", call="list_instances", status="200") or 0) >= 1
    assert (value(found, "vastprov_vast_api_request_duration_seconds_count", call="list_instances") or 0) >= 1
    assert "vastprov_vast_api_errors_total" not in found or all(
        labels["call"] not in ("rent", "list_instances")
        for labels, _ in found["vastprov_vast_api_errors_total"]
    )
    assert value(found, "vastprov_cost_per_hour_dollars") == pytest.approx(sim_row["dph_total"])
    assert (value(found, "vastprov_cost_dollars_total") or 0) > 0
    assert value(found, "vastprov_instances") == 1
    info = value(
        found,
        "vastprov_instance_info",
        instance_id=str(pod.instance_id),
        host_id=str(sim_row["host_id"]),
        machine_id=str(sim_row["machine_id"]),
        gpu_name=sim_row["gpu_name"],
        status="running",
        served="true",
    )
    assert info == 1
    assert (value(found, "vastprov_nginx_reloads_total") or 0) >= 1, "serving reloaded nginx"
    assert value(found, "vastprov_nginx_restarts_total") == 0
    assert value(found, "vastprov_nginx_up") == 1
    assert value(found, "vastprov_replacements_total") is None, "no replacement happened"


# ---------------------------------------------------------------- logs


def test_every_stdout_line_is_json_with_pod_and_instance(pod: Pod) -> None:
    """Every output line parses as JSON; the provisioner's carry ts/level/msg/pod/instance_id."""
    wait_for(
        lambda: any(e["logger"] == "provisioner.remote_logs" for e in pod.prov.log_lines()),
        30,
        "the remote log streamer to start",
    )
    raw = pod.prov.output().split("\n")[:-1]  # complete lines only: the process is still writing
    assert raw
    own, access = [], []
    for line in raw:
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        if "level" in entry:
            own.append(entry)
        else:
            access.append(entry)
            assert {"uri", "status", "upstream_addr"} <= set(entry), line  # nginx's JSON access log
    for entry in own:
        assert {"ts", "level", "logger", "msg", "pod", "instance_id"} <= set(entry), entry
        assert entry["pod"] == "vast-pod-0"
        assert entry["level"] in ("debug", "info", "warning", "error", "critical")
    serve = next(e for e in own if e.get("event") == "serve")
    assert serve["instance_id"] == pod.instance_id
    # a line logged without an id of its own carries the served instance's id from the context
    streaming = next(e for e in own if e["logger"] == "provisioner.remote_logs")
    assert streaming["instance_id"] == pod.instance_id
    booting = [e for e in own if "booting: status=" in e["msg"]]
    assert booting and all("elapsed=" in e["msg"] and e["instance_id"] == pod.instance_id for e in booting)


def fetch_full_log(sim: Sim, instance_id: int) -> list[str]:
    """The instance's whole log, through the simulated request_logs flow."""
    headers = {"Authorization": "Bearer test-key-0123456789"}
    answer = sim.http.put(
        f"/api/v0/instances/request_logs/{instance_id}/", json={"tail": "10000"}, headers=headers
    ).json()
    url = answer["result_url"]
    text = wait_for(
        lambda: r.text if (r := httpx.get(url, timeout=5)).status_code == 200 else None, 10, "logs"
    )
    return text.splitlines()


def test_remote_log_lines_appear_exactly_once(pod: Pod) -> None:
    """REMOTE_LOGS: every line of the remote container's log is printed once, in order, marked remote."""
    tag = uuid.uuid4().hex[:8]
    paths = [f"/obs-{tag}-{i}" for i in range(30)]
    # the first fetch is a tail of 20 lines: it must come before this test's requests, or the head of the
    # log (the daemon's lines before the container started) is rightly outside it
    wait_for(lambda: remote_lines(pod.prov), 30, "the first fetch")
    for path in paths[:15]:
        assert pod.prov.get(path).status_code == 200
    wait_for(
        lambda: all(any(p in e["msg"] for e in remote_lines(pod.prov)) for p in paths[:15]), 30, "first batch"
    )
    for path in paths[15:]:  # with the first batch, more than the tail (20) holds: the window slides
        assert pod.prov.get(path).status_code == 200
    wait_for(
        lambda: all(any(p in e["msg"] for e in remote_lines(pod.prov)) for p in paths), 30, "second batch"
    )
    full = fetch_full_log(pod.sim, pod.instance_id)
    fetches = pod.sim.count("logs_request")
    wait_for(lambda: pod.sim.count("logs_request") >= fetches + 2, 30, "two more fetches")
    printed = [e["msg"] for e in remote_lines(pod.prov)]
    duplicated = [line for line, n in collections.Counter(printed).items() if n > 1]
    assert duplicated == []
    assert printed[: len(full)] == full, "the stream is the container's log, in order"
    for path in paths:
        assert sum(f"GET {path} " in line for line in printed) == 1, path
    assert all(e["instance_id"] == pod.instance_id for e in remote_lines(pod.prov))
    assert not any("may be missing" in e["msg"] for e in pod.prov.log_lines()), "no gap was flagged"
    found = scrape(pod.prov)
    assert value(found, "vastprov_remote_log_lines_total") == len(printed)


# ---------------------------------------------------------------- status


def test_status_from_the_admin_server(pod: Pod) -> None:
    """`provisioner status` asks the running pod: instance, upstream, health, events; JSON and table."""
    report = json.loads(status_cmd(pod.prov.env, "--json").stdout)
    assert report["source"] == "admin"
    assert report["phase"] == "serving" and report["ready"] is True and report["healthy"] is True
    assert report["instance"]["id"] == pod.instance_id
    assert report["instance"]["actual_status"] == "running"
    assert report["instance"]["uptime_s"] >= 0
    assert report["upstreams"][0]["listen_port"] == int(pod.prov.env["NGINX_LISTEN_PORT"])
    assert report["upstream_healthy"] is True
    assert {"rent", "serve"} <= {e["kind"] for e in report["events"]}
    assert report["cost_per_hour"] > 0
    table = status_cmd(pod.prov.env).stdout
    assert "source      admin: http://127.0.0.1:" in table
    assert f"instance    {pod.instance_id}  running" in table
    assert f"upstream    {pod.prov.env['NGINX_LISTEN_PORT']} -> 127.0.0.1:" in table
    assert "(healthy)" in table
    assert "recent events" in table and " rent " in table


def test_status_falls_back_to_the_vast_api(tmp_path: Path) -> None:
    """With no admin server answering, `provisioner status` lists by label and probes the upstream itself."""
    with run_sim(tmp_path, boot_delay_s=1.0) as sim:
        env = base_env(sim, tmp_path)
        with run_provisioner(env, tmp_path) as prov:
            iid = prov.wait_serving(40)
        report = json.loads(status_cmd(env, "--json").stdout)
        assert report["source"] == "vast-api"
        assert report["instance"]["id"] == iid
        assert report["upstream_healthy"] is True
        assert report["ready"] is None and report["events"] == []
        table = status_cmd(env).stdout
        assert "source      vast-api:" in table
        assert f"instance    {iid}  running" in table
        assert "phase       unknown" in table
        admin = f"http://127.0.0.1:{env['ADMIN_PORT']}/status"
        assert report["admin_error"].startswith(f"{admin}: ConnectError"), report["admin_error"]
        assert f"phase       unknown (no provisioner answers: {admin}: ConnectError" in table
        assert "nginx answers 503" not in table


def test_status_admin_url_needs_no_pod_settings(pod: Pod, tmp_path: Path) -> None:
    """`status --admin-url` with none of the pod's variables set reads the running pod's report."""
    bare = bare_env(tmp_path)
    url = f"http://127.0.0.1:{pod.prov.env['ADMIN_PORT']}"
    report = json.loads(status_cmd(bare, "--json", "--admin-url", url).stdout)
    assert report["source"] == "admin" and report["instance"]["id"] == pod.instance_id
    assert f"instance    {pod.instance_id}  running" in status_cmd(bare, "--admin-url", url).stdout


def test_status_admin_url_unreachable_without_settings_says_both(tmp_path: Path) -> None:
    """No settings and an admin URL nobody answers at: exit 1, one line naming the URL and POD_NAME."""
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(bare_env(tmp_path), "status", "--admin-url", url)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"provisioner: the admin server did not answer ({url}/status: ConnectError"
    )
    assert "POD_NAME" in result.stderr and result.stderr.count("\n") == 1
