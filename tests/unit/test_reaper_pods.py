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

from provisioner import errors, fleet, kube, reaper, reapmarks
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
    ("label", "expected"),
    [
        ("k8s_pod=gpu/vast-pod-0", PodRef("gpu", "vast-pod-0")),
        ("k8s_pod=vast-pod-0", PodRef("ops", "vast-pod-0")),
        ("k8s_pod=production/x", PodRef("production", "x")),
        ("vast-pod-0", PodRef("ops", "vast-pod-0")),
        ("team=gpu/web.v1-2", PodRef("gpu", "web.v1-2")),
        ("k8s_pod=a=b", None),
        ("k8s_pod=Vast-Pod-0", None),
        ("k8s_pod=", None),
        ("k8s_pod=a/b/c", None),
        ("k8s_pod=-pod", None),
        ("k8s_pod=ns_x/pod", None),
        ("k8s_pod=" + "p" * 254, None),
    ],
)
def test_a_label_names_a_pod_or_none(label: str, expected: PodRef | None) -> None:
    """The pod comes from the whole label's value, never from what follows REAP_LABEL_PREFIX (with
    ``k8s_pod=prod`` that would leave ``uction/x``); without a namespace it is the reaper's own
    (``ops`` here); what is not a valid pod name is None (the run then refuses)."""
    assert kube.pod_ref(label, "ops") == expected


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
    """200 with the Pod: it exists; 404 with the API server's NotFound for it: gone. The service
    account's token goes as the bearer."""
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
            httpx.Response(
                404,
                json={
                    "kind": "Status",
                    "reason": "NotFound",
                    "details": {"name": "vast-pod-0", "kind": "services"},
                },
            ),
            "not about that pod",
            id="404-a-service",
        ),
        pytest.param(
            httpx.Response(200, json={"kind": "Service", "metadata": {"name": "vast-pod-0"}}),
            "200",
            id="200-not-a-pod",
        ),
        pytest.param(httpx.Response(200, text="ok"), "answered 200", id="200-not-json"),
        pytest.param(httpx.ConnectError("refused"), r"did not answer \(ConnectError: refused\)", id="down"),
        pytest.param(httpx.ReadTimeout("slow"), r"did not answer \(ReadTimeout: slow\)", id="timeout"),
    ],
)
async def test_anything_but_a_clear_answer_is_an_error(
    pods: kube.Pods, k8s: respx.MockRouter, response: httpx.Response | Exception, says: str
) -> None:
    """Only the Pod (200) or the API server's NotFound for that very pod (404) say anything: a proxy's
    404 page must never read as "the pod is gone". The token is in no message."""
    route = k8s.get("/api/v1/namespaces/gpu/pods/vast-pod-0")
    if isinstance(response, Exception):
        route.mock(side_effect=response)
    else:
        route.mock(return_value=response)
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
    """The API server from KUBERNETES_SERVICE_HOST/PORT (an IPv6 address bracketed, once), the token
    and namespace from the mounted files; the token is in no repr and only in the bearer header."""
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    access = kube.in_cluster(env, sa)
    assert (access.url, access.namespace, access.token) == ("https://10.0.0.1:443", "gpu", TOKEN)
    assert TOKEN not in repr(access)
    for host in ("fd00::1", "[fd00::1]"):
        assert kube.in_cluster({"KUBERNETES_SERVICE_HOST": host}, sa).url == "https://[fd00::1]:443"
    named = {"KUBERNETES_SERVICE_HOST": "kubernetes.default.svc", "KUBERNETES_SERVICE_PORT": "6443"}
    assert kube.in_cluster(named, sa).url == "https://kubernetes.default.svc:6443"
    async with kube.http_client(access) as http:
        assert http.headers["Authorization"] == f"Bearer {TOKEN}"
        assert (http.base_url.scheme, http.base_url.host) == ("https", "10.0.0.1")


HOST = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}


@pytest.mark.parametrize(
    ("env", "token", "says"),
    [
        ({}, TOKEN.encode(), "KUBERNETES_SERVICE_HOST is not set"),
        (HOST, None, "automountServiceAccountToken: true"),
        (HOST, b"", "empty or invalid"),
        (HOST, b"\xff\xfe-not-utf-8", "empty or invalid"),
        (HOST, "tökén".encode(), "empty or invalid"),
        (HOST, b"two words", "empty or invalid"),
        ({**HOST, "KUBERNETES_SERVICE_PORT": "https"}, TOKEN.encode(), "is not a port"),
        ({**HOST, "KUBERNETES_SERVICE_PORT": "0"}, TOKEN.encode(), "is not a port"),
        ({"KUBERNETES_SERVICE_HOST": "fe80::1%eth0"}, TOKEN.encode(), "not a host name or an IP address"),
        ({"KUBERNETES_SERVICE_HOST": "bad host"}, TOKEN.encode(), "not a host name or an IP address"),
    ],
)
def test_no_access_is_a_config_error(sa: Path, env: dict[str, str], token: bytes | None, says: str) -> None:
    """Outside a pod, without the mounted token, or with files or variables that are not what
    Kubernetes writes: one ConfigError naming REAP_CHECK_PODS (exit 2), never a traceback."""
    if token is None:
        (sa / "token").unlink()
    else:
        (sa / "token").write_bytes(token)
    with pytest.raises(errors.ConfigError, match=says) as caught:
        kube.in_cluster(env, sa)
    assert caught.value.variable == "REAP_CHECK_PODS"


def test_an_unreadable_ca_is_a_config_error(sa: Path) -> None:
    """A ca.crt that is not a certificate: a ConfigError before any request."""
    (sa / "ca.crt").write_text("not a certificate")
    access = kube.in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, sa)
    with pytest.raises(errors.ConfigError, match="cannot read the cluster CA"):
        kube.http_client(access)


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


@pytest.mark.parametrize("reaper_namespace", ["gpu", "ops"])
async def test_a_pod_cut_off_from_redis_keeps_its_instance(
    record: fleet.Fleet, reaper_namespace: str
) -> None:
    """A's pod lives but sends no heartbeats (it cannot reach Redis); B's pod and vast-pod-5 were
    deleted. Only their instances go. Each orphan's pod is asked about in the label's namespace
    (``gpu``), wherever the reaper runs, and asked again right before its destroy."""
    await seed(record, beat(D, 5))
    async with httpx.AsyncClient(base_url=API) as http:
        pods = kube.Pods(http, reaper_namespace)
        with vast_mock(row(1, A), row(2, B), row(3, D), row(4, "k8s_pod=gpu/vast-pod-5")) as mock:
            asked = mock.get(url__regex=rf"{API}/api/v1/namespaces/.*")
            asked.side_effect = lambda request: pod(
                request.url.path.rsplit("/", 1)[1], 200 if "-0" in request.url.path else 404
            )
            outcome = await reap_with_pods(record, pods)
    assert outcome.destroyed == [2, 4] and outcome.problem is None
    verdicts = {d.instance_id: d.verdict for d in outcome.decisions}
    assert verdicts == {1: "keep", 2: "orphan", 3: "keep", 4: "orphan"}
    kept = outcome.decisions[0]
    assert kept.alive_unseen and "gpu/vast-pod-0 exists in Kubernetes" in kept.reason
    paths = sorted(c.request.url.path for c in asked.calls)
    assert paths == [f"/api/v1/namespaces/gpu/pods/vast-pod-{n}" for n in (0, 1, 1, 5, 5)]


async def test_an_instance_kept_as_rented_after_a_reap_goes_once_its_pod_is_gone(
    record: fleet.Fleet, pods: kube.Pods, server: fakeredis.FakeServer
) -> None:
    """B's instance 1 was reaped; instance 2 of B was rented after it, and B never wrote a heartbeat
    (cut off from Redis): kept as alive unseen, unless Kubernetes says B's pod is gone. The pod check
    asks about it too, and then it goes."""
    await seed(record, beat(D, 5), beat(C, 5))
    client = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    marks = reapmarks.ReapRecord(client, record.keys)
    await marks.mark(B, reapmarks.Reaped(at=NOW - 2 * GRACE, instance_id=1))
    with vast_mock(row(2, B, age_s=GRACE + 60), row(3, D), row(5, C)) as mock:
        asked = mock.get(f"{API}/api/v1/namespaces/gpu/pods/vast-pod-1").mock(
            return_value=pod("vast-pod-1", 404)
        )
        async with httpx.AsyncClient() as http:
            retry = vast_client.RetryPolicy(attempts=2, initial_backoff_s=0)
            vast = vast_client.VastClient(http, SecretStr("k"), base_url=BASE, retry=retry)
            outcome = await reaper.reap(
                vast, record, POLICY, apply=True, clock=Clock(), pods=pods, reaped=marks
            )
    await client.aclose()
    assert asked.call_count == 2, "asked when deciding and again right before the destroy"
    assert outcome.destroyed == [2] and outcome.problem is None


async def test_a_pod_back_before_the_destroy_keeps_its_instance(
    record: fleet.Fleet, pods: kube.Pods, caplog: pytest.LogCaptureFixture
) -> None:
    """B's pod is gone when the reaper decides, and back (the StatefulSet recreated it under its name,
    and it adopts the instance) when the reaper looks again right before the destroy: kept."""
    await seed(record, beat(D, 5), beat(C, 5))
    with vast_mock(row(2, B), row(3, D), row(5, C)) as mock, caplog.at_level(logging.INFO):
        route = mock.get(f"{API}/api/v1/namespaces/gpu/pods/vast-pod-1")
        route.side_effect = [pod("vast-pod-1", 404), pod("vast-pod-1")]
        outcome = await reap_with_pods(record, pods)
        destroyed = [c for c in mock.calls if c.request.method == "DELETE"]
    assert not destroyed and outcome.destroyed == [] and outcome.problem is None
    assert [d.verdict for d in outcome.decisions] == ["orphan", "keep", "keep"]
    revived = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "reap-revived"]
    assert revived == [
        "instance 2 (k8s_pod=gpu/vast-pod-1): kept: its pod gpu/vast-pod-1 exists in Kubernetes by now"
    ]


async def test_kubernetes_gone_before_the_destroy_stops_the_destroys(
    record: fleet.Fleet, pods: kube.Pods
) -> None:
    """The API answered when the reaper decided but not when it looks again: nothing is destroyed and
    the run fails (exit 1), naming the instance."""
    await seed(record, beat(D, 5), beat(C, 5))
    with vast_mock(row(2, B), row(3, D), row(5, C)) as mock:
        route = mock.get(f"{API}/api/v1/namespaces/gpu/pods/vast-pod-1")
        route.side_effect = [pod("vast-pod-1", 404), httpx.ConnectError("refused")]
        outcome = await reap_with_pods(record, pods)
        destroyed = [c for c in mock.calls if c.request.method == "DELETE"]
    assert not destroyed and outcome.destroyed == []
    assert outcome.problem is not None and "instance 2: not destroyed" in outcome.problem
    assert "did not answer" in outcome.problem


@pytest.mark.parametrize(
    ("label", "answer", "says"),
    [
        (B, httpx.Response(403), "needs get on pods"),
        (B, httpx.ConnectError("down"), "did not answer"),
        ("k8s_pod=gpu/Not_A_Pod", None, "names no pod"),
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
