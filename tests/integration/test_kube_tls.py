"""The reaper's pod check over real HTTPS (``kube.py``): a local API server with a certificate for
127.0.0.1, the service account files as Kubernetes mounts them, the bearer token on the wire, and a
server whose certificate the cluster CA did not sign refused."""

from __future__ import annotations

import asyncio
import datetime
import io
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from provisioner import errors, kube, logs, reaper
from provisioner.asgi import EmbeddedServer, bind_socket, stop_server

TOKEN = "service-account-token-of-the-reaper"


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A CA-capable certificate for IP 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


#: the Authorization header of every request the API server received (per test: the fixture clears it)
SEEN: list[str | None] = []


async def pod(request: Request) -> JSONResponse:
    """Like the API server: 401 without the token, the Pod for vast-pod-0, NotFound for any other."""
    SEEN.append(request.headers.get("authorization"))
    if request.headers.get("authorization") != f"Bearer {TOKEN}":
        return JSONResponse({"kind": "Status", "reason": "Unauthorized", "code": 401}, status_code=401)
    name = request.path_params["name"]
    if name == "vast-pod-0":
        return JSONResponse({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name}})
    body = {"kind": "Status", "reason": "NotFound", "code": 404, "details": {"name": name, "kind": "pods"}}
    return JSONResponse(body, status_code=404)


@pytest.fixture
async def api_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """An HTTPS API server on 127.0.0.1: its port and the CA file that signed its certificate."""
    SEEN.clear()
    cert, key = self_signed(tmp_path, "apiserver")
    app = Starlette(routes=[Route("/api/v1/namespaces/{namespace}/pods/{name}", pod)])
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        log_config=None,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "the API server did not start"
        await asyncio.sleep(0.01)
    try:
        yield port, cert
    finally:
        await stop_server(server, task)
        sock.close()


def service_account(directory: Path, ca: Path, token: str = TOKEN) -> Path:
    sa = directory / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(token)
    (sa / "namespace").write_text("gpu\n")
    (sa / "ca.crt").write_bytes(ca.read_bytes())
    return sa


async def test_the_pod_check_over_https(api_server: tuple[int, Path], tmp_path: Path) -> None:
    """The cluster's CA verifies the server's certificate for its IP; the token goes as the bearer."""
    port, ca = api_server
    sa = service_account(tmp_path, ca)
    access = kube.in_cluster(
        {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}, sa
    )
    async with kube.http_client(access) as http:
        pods = kube.Pods(http, access.namespace)
        assert await pods.exists(kube.PodRef("gpu", "vast-pod-0")) is True
        assert await pods.exists(kube.PodRef("gpu", "vast-pod-7")) is False
    assert [f"Bearer {TOKEN}", f"Bearer {TOKEN}"] == SEEN


async def test_a_wrong_token_is_refused_not_read_as_gone(
    api_server: tuple[int, Path], tmp_path: Path
) -> None:
    """401 for an expired token is an error (the reaper refuses), not "the pod is gone"; the token is
    not in the message."""
    port, ca = api_server
    sa = service_account(tmp_path, ca, token="an-expired-token")
    access = kube.in_cluster(
        {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}, sa
    )
    async with kube.http_client(access) as http:
        with pytest.raises(errors.KubeError, match=r"refused \(401\)") as caught:
            await kube.Pods(http, access.namespace).exists(kube.PodRef("gpu", "vast-pod-7"))
    assert "an-expired-token" not in str(caught.value)


async def test_a_server_the_cluster_ca_did_not_sign_is_not_asked(
    api_server: tuple[int, Path], tmp_path: Path
) -> None:
    """The CA in the service account is another one: the TLS handshake fails, the token is never sent,
    and the check says the API did not answer (the reaper then refuses)."""
    port, _ = api_server
    other, _ = self_signed(tmp_path, "another-cluster")
    sa = service_account(tmp_path, other)
    access = kube.in_cluster(
        {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}, sa
    )
    async with kube.http_client(access) as http:
        with pytest.raises(errors.KubeError, match=r"did not answer .*CERTIFICATE_VERIFY_FAILED"):
            await kube.Pods(http, access.namespace).exists(kube.PodRef("gpu", "vast-pod-0"))
    assert SEEN == [], "no request reached the server"


def test_nothing_listens_there(tmp_path: Path) -> None:
    """A port nobody listens on: the check fails as "did not answer", quickly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ca, _ = self_signed(tmp_path, "ca")
    access = kube.in_cluster(
        {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)},
        service_account(tmp_path, ca),
    )

    async def ask() -> bool:
        async with kube.http_client(access, timeout_s=2.0) as http:
            return await kube.Pods(http, "gpu").exists(kube.PodRef("gpu", "vast-pod-0"))

    with pytest.raises(errors.KubeError, match=r"did not answer \(ConnectError: "):
        asyncio.run(ask())


@pytest.mark.usefixtures("root_logging")
async def test_the_reapers_pod_check_masks_its_token(api_server: tuple[int, Path], tmp_path: Path) -> None:
    """``reaper._pod_check`` as ``provisioner reap`` opens it: from the pod's variables and mounted
    service account, a working check; the token, should any line carry it, is logged as ``***``."""
    port, ca = api_server
    sa = service_account(tmp_path, ca)
    buffer = io.StringIO()
    logs.setup_logging(pod="reaper", fmt="json")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
    async with reaper._pod_check(True, env, sa) as pods:
        assert pods is not None and pods.namespace == "gpu"
        assert await pods.exists(kube.PodRef("gpu", "vast-pod-0")) is True
        logging.getLogger("provisioner.reaper").warning("a careless line: %s", TOKEN)
    assert "a careless line: ***" in buffer.getvalue() and TOKEN not in buffer.getvalue()
    async with reaper._pod_check(False, env, sa) as off:
        assert off is None
