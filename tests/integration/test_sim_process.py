"""`python -m provisioner.sim` as a process: announces its address, serves, and stops cleanly on signals."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serves_then_stops_on_signal(sig: signal.Signals) -> None:
    """It prints one "listening on" line with the real port, answers there, and exits 0 on SIGTERM/SIGINT."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner.sim", "--port", "0", "--boot-delay", "0.1", "--api-key", "k"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.fullmatch(r"simulated Vast\.ai listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert found, line
        answer = httpx.get(
            f"{found[1]}/api/v0/users/current", headers={"Authorization": "Bearer k"}, timeout=5
        )
        assert answer.status_code == 200
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
