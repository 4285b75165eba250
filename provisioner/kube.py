"""The reaper's one question to Kubernetes: does this pod still exist? (``REAP_CHECK_PODS``)

A pod that cannot reach Redis sends no heartbeats, so on heartbeats alone the reaper would destroy
its live instance. With the check on, the reaper asks the API server about each would-be orphan's pod
before destroying anything: ``GET /api/v1/namespaces/<namespace>/pods/<name>``, 200 with the Pod it
exists (the instance is kept), 404 with the API server's ``NotFound`` status for it is gone (the
orphan stands); any other answer is a ``KubeError`` and the run refuses.

In-cluster access only, as any client in a pod does it (:func:`in_cluster`): the API server from
``KUBERNETES_SERVICE_HOST`` / ``KUBERNETES_SERVICE_PORT``, the service account's token, CA and
namespace from ``/var/run/secrets/kubernetes.io/serviceaccount``. The token goes only into the
``Authorization`` header: never into a message, a log line or an error.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from provisioner import errors

#: where Kubernetes mounts a pod's service account (token, ca.crt, namespace)
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT_S = 10.0
#: a pod name (DNS-1123 subdomain) and a namespace (DNS-1123 label), as the API server checks them
_POD = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_HOST = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_ref(label: str, namespace: str) -> PodRef | None:
    """The pod an instance label names: its value (after the first ``=``; the whole label without
    one) is ``<namespace>/<name>`` (the StatefulSet's ``k8s_pod=<namespace>/<pod>``), or ``<name>`` in
    ``namespace`` (the reaper's own). The whole label, never what follows ``REAP_LABEL_PREFIX``: a
    prefix that ends inside the namespace would otherwise send the question to another namespace,
    whose NotFound would read as "gone". None when that is not a valid pod name."""
    _, eq, value = label.partition("=")
    ns, slash, name = (value if eq else label).rpartition("/")
    ref = PodRef(ns if slash else namespace, name)
    return ref if _POD.fullmatch(ref.name) and _NAMESPACE.fullmatch(ref.namespace) else None


@dataclass(frozen=True, slots=True)
class Access:
    """The API server and this pod's service account."""

    url: str
    namespace: str
    ca_file: Path
    token: str = field(repr=False)


def in_cluster(env: Mapping[str, str], sa_dir: Path = SA_DIR) -> Access:
    """This pod's access to its API server; ``ConfigError`` naming what is missing."""
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise errors.ConfigError(
            "REAP_CHECK_PODS",
            "KUBERNETES_SERVICE_HOST is not set: the pod check runs in a Kubernetes pod only",
        )
    try:
        token = (sa_dir / "token").read_text(encoding="utf-8").strip()
        namespace = (sa_dir / "namespace").read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise errors.ConfigError(
            "REAP_CHECK_PODS",
            f"no service account in {sa_dir} ({exc.strerror}): the reaper's pod needs"
            " automountServiceAccountToken: true (k8s/base/reaper-rbac.yaml)",
        ) from None
    except UnicodeDecodeError:
        token = namespace = ""
    usable = bool(token) and token.isascii() and token.isprintable() and " " not in token
    if not usable or not _NAMESPACE.fullmatch(namespace):
        raise errors.ConfigError(
            "REAP_CHECK_PODS", f"the service account files in {sa_dir} are empty or invalid"
        )
    return Access(_url(host, port), namespace, sa_dir / "ca.crt", token)


def _url(host: str, port: str) -> str:
    """``https://host:port`` (an IPv6 address bracketed); ``ConfigError`` for a host that is neither
    an IP address (without a zone) nor a DNS name, or a port that is not one."""
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.ConfigError("REAP_CHECK_PODS", f"KUBERNETES_SERVICE_PORT {port!r} is not a port")
    bare = host.removeprefix("[").removesuffix("]")
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    if (ip is None and not _HOST.fullmatch(bare)) or "%" in bare:
        raise errors.ConfigError(
            "REAP_CHECK_PODS", f"KUBERNETES_SERVICE_HOST {host!r} is not a host name or an IP address"
        )
    return f"https://[{bare}]:{port}" if ip is not None and ip.version == 6 else f"https://{bare}:{port}"


def http_client(access: Access, timeout_s: float = TIMEOUT_S) -> httpx.AsyncClient:
    """An HTTPS client for the API server, trusting only the cluster's CA; ``ConfigError`` without it."""
    try:
        tls = ssl.create_default_context(cafile=str(access.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError(
            "REAP_CHECK_PODS", f"cannot read the cluster CA {access.ca_file}: {exc}"
        ) from None
    return httpx.AsyncClient(
        base_url=access.url,
        verify=tls,
        timeout=timeout_s,
        follow_redirects=False,
        headers={"Authorization": f"Bearer {access.token}", "Accept": "application/json"},
    )


class Pods:
    """Pod lookups through ``http`` (built by :func:`http_client`, or a test's)."""

    def __init__(self, http: httpx.AsyncClient, namespace: str) -> None:
        self._http = http
        #: the namespace of a label that names none (the reaper's own)
        self.namespace = namespace

    async def labelled(self, label: str) -> tuple[PodRef, bool]:
        """The pod an instance label names (:func:`pod_ref`) and whether it exists; ``KubeError`` when
        the label names no pod, or the API does not say."""
        pod = pod_ref(label, self.namespace)
        if pod is None:
            raise errors.KubeError(
                f"the label {label!r} names no pod (<key>=<namespace>/<pod> or <key>=<pod>)"
            )
        return pod, await self.exists(pod)

    async def exists(self, pod: PodRef) -> bool:
        """Whether ``pod`` exists (terminating included); ``KubeError`` when the API does not say."""
        try:
            response = await self._http.get(f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}")
        except httpx.HTTPError as exc:
            # httpx's messages name no header (the token is one): the TLS or socket error itself
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise errors.KubeError(f"pod {pod}: the Kubernetes API did not answer ({detail})") from None
        status = response.status_code
        if status in (httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN):
            raise errors.KubeError(
                f"pod {pod}: the Kubernetes API refused ({status}): the reaper's service account needs"
                f" get on pods in namespace {pod.namespace} (k8s/base/reaper-rbac.yaml)"
            )
        if status in (httpx.codes.OK, httpx.codes.NOT_FOUND) and _about(response, pod):
            return status == httpx.codes.OK
        raise errors.KubeError(f"pod {pod}: the Kubernetes API answered {status}, not about that pod")


def _about(response: httpx.Response, pod: PodRef) -> bool:
    """The answer is the API server's about ``pod``: the Pod itself (200), or a ``Status`` saying
    ``NotFound`` for it (404). Anything else (a proxy's page, another object) says nothing about it:
    a plain 404 must never read as "gone"."""
    try:
        body = response.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    meta, details = body.get("metadata"), body.get("details")
    if response.status_code == httpx.codes.OK:
        return body.get("kind") == "Pod" and isinstance(meta, dict) and meta.get("name") == pod.name
    return (
        body.get("kind") == "Status"
        and body.get("reason") == "NotFound"
        and isinstance(details, dict)
        and details.get("name") == pod.name
        and details.get("kind") == "pods"
    )
