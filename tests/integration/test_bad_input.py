"""Bad configuration, as a real process: exit 2, one line naming the variable, not one API call."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import PROVISIONER, Sim, base_env, run_sim
from tests.unit.test_settings import BAD

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """One simulator for the whole table: each case must leave its request log untouched."""
    with run_sim(tmp_path_factory.mktemp("sim")) as s:
        yield s


@pytest.mark.parametrize(("changes", "variable"), BAD)
def test_bad_configuration_exits_2_naming_the_variable(
    sim: Sim, tmp_path: Path, changes: dict[str, str | None], variable: str
) -> None:
    """Each invalid configuration exits 2 with one line on stderr naming the variable; no API call."""
    # a bad configuration never binds a port: the defaults' 3000 lets the clash cases clash
    env = base_env(sim, tmp_path, NGINX_LISTEN_PORT="3000")
    key_value = env["VAST_API_KEY"]
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    before = len(sim.requests())
    result = subprocess.run([PROVISIONER, "run"], env=env, capture_output=True, timeout=60, check=False)
    err = result.stderr.decode().strip()
    assert result.returncode == 2, err + result.stdout.decode()
    assert "\n" not in err, err
    assert err.startswith(f"provisioner: {variable}: "), err
    assert "Traceback" not in err + result.stdout.decode()
    assert key_value not in err + result.stdout.decode()
    assert len(sim.requests()) == before, "a bad configuration made an API call"
