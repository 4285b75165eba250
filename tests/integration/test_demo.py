"""`provisioner demo` as a user runs it: stable ports, the printed environment works, nothing left behind."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import demo
from tests.procs import PROVISIONER, free_port, wait_for

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def time_wait_on(port: int) -> Iterator[None]:
    """Leave a connection in TIME_WAIT on 127.0.0.1:``port`` (the listening side closes first)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(1)
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the active close: this side (local port ``port``) enters TIME_WAIT
        client.recv(1)
        client.close()
    yield


def plain_bind_fails(host: str, port: int) -> bool:
    """Whether a bind without SO_REUSEADDR (the old probe) is refused on ``port``."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def clean_env(tmp_path: Path) -> dict[str, str]:
    """PATH and HOME only, with temporary files under ``tmp_path``: no provisioner variables inherited."""
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}


def test_free_port_keeps_a_port_in_time_wait() -> None:
    """A port whose last connection is in TIME_WAIT is kept, on loopback and on nginx's 0.0.0.0."""
    port = free_port()
    with time_wait_on(port):
        assert plain_bind_fails("127.0.0.1", port), "precondition: the old probe would have moved the port"
        assert demo.free_port(port) == port
        assert demo.free_port(port, "0.0.0.0") == port


def test_free_port_moves_off_a_port_someone_listens_on() -> None:
    """A port another socket listens on is replaced by a free one."""
    port = free_port()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen(1)
        moved = demo.free_port(port)
        assert moved != port
        assert demo.free_port(port, "0.0.0.0") != port


def test_demo_check_keeps_its_port_through_time_wait_and_cleans_up(tmp_path: Path) -> None:
    """Re-run right after a connection to its port: same port, exit 0, no provisioner-demo-* left behind."""
    port = free_port()
    with time_wait_on(port):
        result = subprocess.run(
            [PROVISIONER, "demo", "--check", "--port", str(port), "--boot-delay", "1"],
            env=clean_env(tmp_path),
            capture_output=True,
            timeout=90,
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 0, out[-3000:] + result.stderr.decode()[-2000:]
    assert f"proxy on http://127.0.0.1:{port}/" in out
    assert f"ready: curl http://127.0.0.1:{port}/" in out
    assert not list(tmp_path.glob("provisioner-demo-*"))


def test_printed_environment_runs_status_and_offers_against_the_demo(tmp_path: Path) -> None:
    """The printed export line lets `status` and `offers` reach the running demo; SIGINT cleans up."""
    env = clean_env(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [PROVISIONER, "demo", "--port", str(port), "--boot-delay", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        export = wait_for(
            lambda: next((ln.strip() for ln in list(lines) if ln.strip().startswith("export ")), None),
            60,
            "the demo's export line",
        )
        assert list(tmp_path.glob("provisioner-demo-*")), "the demo keeps its state under TMPDIR"
        assert listening_addresses(port) == {"127.0.0.1"}, "the demo's nginx listens on loopback only"
        assert "NGINX_LISTEN_ADDRESS=127.0.0.1" in export
        admin = next(ln for ln in lines if ln.startswith("admin: ")).split()[1].removesuffix("/readyz")
        status = run_shell(f'{export}; "{PROVISIONER}" status --json', env)
        report = json.loads(status.stdout)
        assert report["pod"] == "demo-pod-0", status.stdout
        assert admin.endswith(f":{report_admin_port(export)}")
        bare = run_shell(f'"{PROVISIONER}" status --json --admin-url {admin}', env)
        assert json.loads(bare.stdout)["pod"] == "demo-pod-0", "--admin-url needs none of the settings"
        assert f"status from any shell: provisioner status --admin-url {admin}\n" in "".join(lines)
        offers = run_shell(f'{export}; "{PROVISIONER}" offers --json', env)
        assert json.loads(offers.stdout), offers.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        reader.join(timeout=5)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0, "".join(lines)[-3000:]
    assert "demo-key-not-secret" in export
    assert not list(tmp_path.glob("provisioner-demo-*"))


def run_shell(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with bash (as a user pasting the export line would), asserting exit 0."""
    result = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def report_admin_port(export: str) -> str:
    """The ADMIN_PORT value of an export line."""
    return next(item.split("=", 1)[1] for item in export.split() if item.startswith("ADMIN_PORT="))


def listening_addresses(port: int) -> set[str]:
    """The local addresses of every TCP socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, _, hex_port = local.partition(":")
                if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                    continue
                raw = bytes.fromhex(address)
                # the kernel prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
                found.add(str(ipaddress.ip_address(words)))
    return found
