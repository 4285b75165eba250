"""The reaper's pod check (``REAP_CHECK_PODS``, ``kube.py``): an orphan by heartbeats whose pod still
exists in Kubernetes is kept; the API's answers (respx), its access from a pod's service account, and
the refusals when it does not say."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import certifi
import fakeredis
import httpx
import pytest
import respx
from pydantic import SecretStr

from provisioner import errors, fleet, kube, logs, reaper
from provisioner.kube import PodRef
from provisioner.reaper import Policy, decide
from provisioner.settings import load_reaper_settings
from provisioner.vast import client as vast_client
from tests.fakes import Clock
from tests.unit.test_reaper import (
    BASE,
    GRACE,
    LIVE,
    LIVE_INSTANCE,
    NOW,
    A,
    B,
    C,
    D,
    beat,
    inst,
    listing,
    row,
    seed,
)

API = "https://k8s.test:6443"
TOKEN = "eyJhbGciOi-service-account-token"
POLICY = Policy(label_prefix="k8s_pod=gpu/", grace_s=GRACE, max_share=0.5)


def pod(name: str, status: int = 200) -> httpx.Response:
    """The API server's answer for pod ``name`` in namespace ``gpu``: the Pod, or its NotFound."""
    if status == 200:
        return httpx.Response(200, json={"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name}})
    body = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
    return httpx.Response(404, json={**body, "details": {"name": name, "kind": "pods"}})


# ---------------------------------------------------------------- pure: names and decisions


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        ("vast-pod-0", PodRef("gpu", "vast-pod-0")),
        ("other/vast-pod-0", PodRef("other", "vast-pod-0")),
        ("web.v1-2", PodRef("gpu", "web.v1-2")),
        ("Vast-Pod-0", None),
        ("", None),
        ("a/b/c", None),
        ("-pod", None),
        ("ns_x/pod", None),
        ("p" * 254, None),
    ],
)
def test_a_label_names_a_pod_or_none(rest: str, expected: PodRef | None) -> None:
    assert kube.pod_ref(rest, "gpu") == expected


def test_an_existing_pod_keeps_its_silent_instance_and_lifts_the_share_refusal() -> None:
    """Two of three instances are orphans by heartbeats: more than REAP_MAX_SHARE, so refused. With
    A's pod known to exist, A's instance is kept (said as alive without heartbeats) and B's orphan,
    one of three, goes."""
    instances = [inst(1, A), inst(2, B), LIVE_INSTANCE]
    heartbeats = {A: beat(A, 2 * GRACE), **LIVE}
    before = decide(instances, heartbeats, NOW, POLICY)
    assert [d.verdict for d in before] == ["refused", "refused", "keep"]
    after = decide(instances, heartbeats, NOW, POLICY, live={A: "its pod gpu/vast-pod-0 exists"})
    assert [d.verdict for d in after] == ["keep", "orphan", "keep"]
    assert after[0].alive_unseen and after[0].reason == "its pod gpu/vast-pod-0 exists"
    assert not after[1].alive_unseen


# ---------------------------------------------------------------- the adapter (respx)


@pytest.fixture
async def pods() -> AsyncIterator[kube.Pods]:
    async with httpx.AsyncClient(base_url=API, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        yield kube.Pods(http, "gpu")


@pytest.fixture
def k8s() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=API, assert_all_called=False) as mock:
        yield mock


async def test_exists_asks_for_the_pod_with_the_token(pods: kube.Pods, k8s: respx.MockRouter) -> None:
    route = k8s.get("/api/v1/namespaces/gpu/pods/vast-pod-0").mock(return_value=pod("vast-pod-0"))
    k8s.get("/api/v1/namespaces/gpu/pods/vast-pod-1").mock(return_value=pod("vast-pod-1", 404))
    assert await pods.exists(PodRef("gpu", "vast-pod-0")) is True
    assert await pods.exists(PodRef("gpu", "vast-pod-1")) is False
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("response", "says"),
    [
        pytest.param(
            httpx.Response(403, json={"kind": "Status", "reason": "Forbidden"}), "needs get on pods", id="403"
        ),
        pytest.param(httpx.Response(401), r"refused \(401\)", id="401"),
        pytest.param(httpx.Response(500, json={"kind": "Status"}), "answered 500", id="500"),
        pytest.param(
            httpx.Response(404, text="<html>not found</html>"), "answered 404, not about", id="plain-404"
        ),
        pytest.param(
            httpx.Response(404, json={"kind": "Status", "reason": "NotFound"}), "not about", id="404-no-name"
        ),
        pytest.param(pod("vast-pod-9", 404), "not about that pod", id="404-other-pod"),
        pytest.param(
            httpx.Response(200, json={"kind": "Service", "metadata": {"name": "vast-pod-0"}}),
            "200",
            id="200-not-a-pod",
        ),
        pytest.param(httpx.Response(200, text="ok"), "answered 200", id="200-not-json"),
        pytest.param(httpx.ConnectError("refused"), r"did not answer \(ConnectError\)", id="down"),
        pytest.param(httpx.ReadTimeout("slow"), r"did not answer \(ReadTimeout\)", id="timeout"),
    ],
)
async def test_anything_but_a_clear_answer_is_an_error(
    pods: kube.Pods, k8s: respx.MockRouter, response: httpx.Response | Exception, says: str
) -> None:
    """Only the Pod (200) or the API server's NotFound for that very pod (404) say anything: a proxy's
    404 page must never read as "the pod is gone". The token is in no message."""
    route = k8s.get("/api/v1/namespaces/gpu/pods/vast-pod-0")
    route.mock(side_effect=response) if isinstance(response, Exception) else route.mock(return_value=response)
    with pytest.raises(errors.KubeError, match=says) as caught:
        await pods.exists(PodRef("gpu", "vast-pod-0"))
    assert TOKEN not in str(caught.value) and "gpu/vast-pod-0" in str(caught.value)


# ---------------------------------------------------------------- access from the pod


@pytest.fixture
def sa(tmp_path: Path) -> Path:
    """A mounted service account: token, namespace, and a CA bundle (certifi's, a valid PEM)."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "namespace").write_text("gpu")
    (tmp_path / "ca.crt").write_bytes(Path(certifi.where()).read_bytes())
    return tmp_path


async def test_in_cluster_access_comes_from_the_service_account(sa: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    access = kube.in_cluster(env, sa)
    assert (access.url, access.namespace, access.token) == ("https://10.0.0.1:443", "gpu", TOKEN)
    assert TOKEN not in repr(access)
    assert kube.in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1"}, sa).url == "https://[fd00::1]:443"
    async with kube.http_client(access) as http:
        assert http.headers["Authorization"] == f"Bearer {TOKEN}"
        assert (http.base_url.scheme, http.base_url.host) == ("https", "10.0.0.1")


@pytest.mark.parametrize(
    ("env", "remove", "says"),
    [
        ({}, None, "KUBERNETES_SERVICE_HOST is not set"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "token", "automountServiceAccountToken: true"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "https"}, None, "is not a port"),
    ],
)
def test_no_access_is_a_config_error(sa: Path, env: dict[str, str], remove: str | None, says: str) -> None:
    if remove:
        (sa / remove).unlink()
    with pytest.raises(errors.ConfigError, match=says) as caught:
        kube.in_cluster(env, sa)
    assert caught.value.variable == "REAP_CHECK_PODS"


def test_an_unreadable_ca_is_a_config_error(sa: Path) -> None:
    (sa / "ca.crt").write_text("not a certificate")
    access = kube.in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, sa)
    with pytest.raises(errors.ConfigError, match="cannot read the cluster CA"):
        kube.http_client(access)


def test_the_token_is_masked_once_added(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup_logging(pod="reaper", fmt="json")
    logs.add_secret(TOKEN)
    logging.getLogger("provisioner.reaper").warning("leaked %s", TOKEN)
    out = capsys.readouterr().out
    assert "leaked ***" in out and TOKEN not in out


# ---------------------------------------------------------------- the run (respx + fakeredis)


@pytest.fixture
async def record(server: fakeredis.FakeServer) -> AsyncIterator[fleet.Fleet]:
    client = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    yield fleet.Fleet(client, clock=Clock())
    await client.aclose()


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    async def pause(seconds: float) -> None:
        return None

    monkeypatch.setattr(reaper, "_pause", pause)


async def reap_with_pods(record: fleet.Fleet, pods: kube.Pods) -> reaper.Outcome:
    async with httpx.AsyncClient() as http:
        retry = vast_client.RetryPolicy(attempts=2, initial_backoff_s=0)
        vast = vast_client.VastClient(http, SecretStr("k"), base_url=BASE, retry=retry)
        return await reaper.reap(vast, record, POLICY, apply=True, clock=Clock(), pods=pods)


def vast_mock(*rows: dict[str, Any]) -> respx.MockRouter:
    mock = respx.mock(assert_all_called=False)
    mock.get(f"{BASE}/api/v1/instances/").respond(json=listing(*rows))
    mock.delete(url__regex=rf"{BASE}/api/v0/instances/\d+/").respond(json={"success": True})
    return mock


async def test_a_pod_cut_off_from_redis_keeps_its_instance(record: fleet.Fleet, pods: kube.Pods) -> None:
    """A's pod lives but sends no heartbeats (it cannot reach Redis); B's pod was deleted. Only B's
    instance goes, and only the orphans' pods were asked about."""
    await seed(record, beat(D, 5))
    with vast_mock(row(1, A), row(2, B), row(3, D), row(4, "k8s_pod=gpu/vast-pod-5")) as mock:
        asked = mock.get(url__regex=rf"{API}/api/v1/namespaces/gpu/pods/.*")
        asked.side_effect = lambda request: pod(
            request.url.path.rsplit("/", 1)[1], 200 if "-0" in request.url.path else 404
        )
        outcome = await reap_with_pods(record, pods)
    assert outcome.destroyed == [2, 4] and outcome.problem is None
    assert {d.instance_id: d.verdict for d in outcome.decisions} == {
        1: "keep",
        2: "orphan",
        3: "keep",
        4: "orphan",
    }
    assert (
        outcome.decisions[0].alive_unseen
        and "gpu/vast-pod-0 exists in Kubernetes" in outcome.decisions[0].reason
    )
    assert sorted(c.request.url.path.rsplit("/", 1)[1] for c in asked.calls) == [
        "vast-pod-0",
        "vast-pod-1",
        "vast-pod-5",
    ]


@pytest.mark.parametrize(
    ("label", "answer", "says"),
    [
        (B, httpx.Response(403), "needs get on pods"),
        (B, httpx.ConnectError("down"), "did not answer"),
        ("k8s_pod=gpu/Not_A_Pod", None, "names no pod after 'k8s_pod=gpu/'"),
    ],
)
async def test_when_kubernetes_does_not_say_nothing_is_destroyed(
    record: fleet.Fleet, pods: kube.Pods, label: str, answer: httpx.Response | Exception | None, says: str
) -> None:
    """One orphan of three (no share refusal): Kubernetes refusing, down, or a label that names no
    pod, and the orphan is refused, not destroyed; the run ends with the reason (exit 1)."""
    await seed(record, beat(D, 5), beat(C, 5))
    with vast_mock(row(2, label), row(3, D), row(5, C)) as mock:
        route = mock.get(url__regex=rf"{API}/api/v1/namespaces/gpu/pods/.*")
        route.side_effect = answer if isinstance(answer, Exception) else (lambda request: answer)
        outcome = await reap_with_pods(record, pods)
        destroyed = [c for c in mock.calls if c.request.method == "DELETE"]
    assert not destroyed and outcome.destroyed == []
    assert outcome.problem is not None and says in outcome.problem
    assert "once Kubernetes says its pod is gone" in outcome.problem
    assert {d.instance_id: d.verdict for d in outcome.decisions} == {2: "refused", 3: "keep", 5: "keep"}


def test_the_check_on_outside_a_pod_stops_before_anything_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``REAP_CHECK_PODS=true`` where there is no Kubernetes: a config error (exit 2) before Redis or
    Vast is touched (neither URL answers here)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = load_reaper_settings(
        vast_api_key="k",
        vast_api_url="http://127.0.0.1:9",
        blacklist_redis_url="redis://127.0.0.1:9/0",
        reap_check_pods=True,
    )
    with pytest.raises(errors.ConfigError, match="KUBERNETES_SERVICE_HOST is not set"):
        asyncio.run(reaper.run(cfg, apply=True))
