"""The console script's two routes: ``provisioner run`` without typer, everything else through it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner import errors, launch
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


# ---------------------------------------------------------------- guard: errors alone in a task group


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        pytest.param(errors.StoreError("redis is down"), 1, "provisioner: redis is down", id="store"),
        pytest.param(
            errors.NginxError("cannot write /s/x"), 4, "provisioner: nginx: cannot write /s/x", id="nginx"
        ),
        pytest.param(
            errors.ConfigError("VAST_PACE_INTERVALS", "bad"),
            2,
            "provisioner: VAST_PACE_INTERVALS: bad",
            id="config",
        ),
        pytest.param(
            errors.AuthError("whoami", "refused", status=401),
            3,
            "provisioner: whoami: HTTP 401: refused",
            id="auth",
        ),
        pytest.param(
            PermissionError(13, "Permission denied", "/s/nginx.conf"),
            1,
            "provisioner: Permission denied: /s/nginx.conf",
            id="oserror",
        ),
    ],
)
@pytest.mark.parametrize("nesting", [0, 1, 2], ids=["bare", "in-a-group", "in-a-nested-group"])
def test_guard_reports_our_error_alone_in_a_task_group_like_the_bare_error(
    capsys: pytest.CaptureFixture[str], error: Exception, code: int, line: str, nesting: int
) -> None:
    """An error of ours that a TaskGroup wraps in an ExceptionGroup gets its one line and exit code."""
    raised: Exception = error
    for _ in range(nesting):
        raised = ExceptionGroup("unhandled errors in a TaskGroup", [raised])
    with pytest.raises(SystemExit) as caught:
        launch.guard(lambda: _raise(raised))
    assert caught.value.code == code
    assert capsys.readouterr().err == line + "\n"


def test_guard_leaves_several_errors_or_a_bug_in_a_group_alone() -> None:
    """Two errors at once, or an exception that is not ours, propagate unchanged (not hidden as one line)."""
    two = ExceptionGroup("x", [errors.StoreError("a"), errors.StoreError("b")])
    with pytest.raises(ExceptionGroup) as caught:
        launch.guard(lambda: _raise(two))
    assert caught.value is two
    bug = ExceptionGroup("x", [RuntimeError("a bug")])
    with pytest.raises(ExceptionGroup) as caught:
        launch.guard(lambda: _raise(bug))
    assert caught.value is bug


async def test_a_task_groups_sole_error_of_ours_exits_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real TaskGroup whose task raises StoreError ends through guard as exit 1 and one line."""

    async def fails() -> None:
        raise errors.StoreError("redis went away")

    async def tree() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(fails())

    with pytest.raises(SystemExit) as caught:
        await asyncio.to_thread(launch.arun, tree)
    assert caught.value.code == 1
    assert capsys.readouterr().err == "provisioner: redis went away\n"
