"""The console script's two routes: ``provisioner run`` without typer, everything else through it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests import procs

_PROBE = """
import sys
sys.argv = ["provisioner", *sys.argv[1:]]
from provisioner import __main__ as entry
try:
    entry.main()
except SystemExit as exc:
    print("exit", exc.code, "typer" in sys.modules, file=sys.stderr)
"""


def _probe(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = procs.bare_env(tmp_path)  # no POD_NAME, no VAST_API_KEY: a configuration error
    argv = [sys.executable, "-c", _PROBE, *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_run_ends_through_launch_without_importing_typer(tmp_path: Path) -> None:
    out = _probe(tmp_path, "run")
    lines = out.stderr.strip().splitlines()
    assert lines[-1] == "exit 2 False", out.stderr
    assert lines[0].startswith("provisioner: ") and "VAST_API_KEY" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_help_and_other_commands_go_through_typer(tmp_path: Path) -> None:
    out = _probe(tmp_path, "run", "--help")
    assert "Provision this pod's instance" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "exit 0 True"
    # the same configuration error through the typer app: the same line and code
    status = _probe(tmp_path, "reap")
    assert status.stderr.strip().splitlines()[-1] == "exit 2 True", status.stderr


def test_the_installed_script_maps_a_config_error_to_exit_2(tmp_path: Path) -> None:
    out = procs.cli(procs.bare_env(tmp_path), "run")
    assert out.returncode == 2
    assert out.stderr.startswith("provisioner: ") and len(out.stderr.strip().splitlines()) == 1
