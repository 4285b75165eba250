"""Bad configuration, as a real process: exit 2, one line naming the variable, not one API call."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import PROVISIONER, Sim, bare_env, base_env, free_port, run_sim
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


def test_every_missing_required_variable_is_named_in_one_run(tmp_path: Path) -> None:
    """With none of the required variables set, one run names all four on one line (exit 2)."""
    env = bare_env(tmp_path)
    result = subprocess.run([PROVISIONER, "run"], env=env, capture_output=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.decode() == (
        "provisioner: POD_NAME, VAST_API_KEY, VAST_TEMPLATE_NAME, VAST_TEMPLATE_IMAGE: "
        "are required and not set\n"
    )


def test_nginx_config_path_under_a_file_names_the_variable(sim: Sim, tmp_path: Path) -> None:
    """NGINX_CONFIG_PATH below an existing file: exit 2, one line naming the variable and the file."""
    (tmp_path / "afile").write_text("")
    env = base_env(sim, tmp_path, NGINX_CONFIG_PATH=str(tmp_path / "afile" / "nginx" / "nginx.conf"))
    result = subprocess.run([PROVISIONER, "run"], env=env, capture_output=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.decode() == (
        f"provisioner: NGINX_CONFIG_PATH: {tmp_path / 'afile'} is a file, not a directory "
        "(nginx keeps its state beside the config)\n"
    )


def test_unreachable_api_names_the_url(tmp_path: Path) -> None:
    """An API nobody answers at: the one-line error names the URL that failed (no key, no query)."""
    port = free_port()
    env = bare_env(
        tmp_path,
        POD_NAME="vast-pod-0",
        VAST_API_KEY="test-key-0123456789",
        VAST_API_URL=f"http://127.0.0.1:{port}",
        VAST_TEMPLATE_NAME="tmpl",
        VAST_TEMPLATE_IMAGE="vastai/test-workload:1.0",
        VAST_API_TIMEOUT_SECONDS="2",
    )
    result = subprocess.run([PROVISIONER, "offers"], env=env, capture_output=True, timeout=120, check=False)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert f"connection failed to http://127.0.0.1:{port}/api/v0/bundles/ (ConnectError" in err, err
    assert err.count("\n") == 1 and "test-key-0123456789" not in err
