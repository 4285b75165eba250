"""nginx's config file: the atomic swap, and a broken state directory as NginxError, never a bare OSError."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from provisioner import config_file, errors
from provisioner import nginx as nginx_mod


@pytest.fixture
def blocked(tmp_path: Path) -> Path:
    """A config path whose state directory cannot exist: a part of it is a regular file."""
    (tmp_path / "afile").write_text("")
    return tmp_path / "afile" / "nginx" / "nginx.conf"


def test_write_atomic_replaces_the_file(tmp_path: Path) -> None:
    """write_atomic makes the directory, swaps the text in and leaves no temp file behind."""
    path = tmp_path / "state" / "nginx.conf"
    config_file.write_atomic(path, "one")
    config_file.write_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["nginx.conf"]


def test_the_config_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """The swapped-in config (it may hold UPSTREAM_AUTH_HEADER's secret) and the nginx -t copy are 0600."""
    path = tmp_path / "nginx.conf"
    config_file.write_atomic(path, "proxy_set_header X-Pod-Auth secret;")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_file.write_temp(path, "x").stat().st_mode) == 0o600


@pytest.mark.parametrize("write", [config_file.write_atomic, config_file.write_temp], ids=["atomic", "temp"])
def test_an_unwritable_state_directory_is_an_nginx_error(
    blocked: Path, write: Callable[[Path, str], object]
) -> None:
    """A state directory that cannot be made or written is NginxError naming the path, not an OSError."""
    with pytest.raises(errors.NginxError, match=r"^cannot write .*afile/nginx: Not a directory$"):
        write(blocked, "events {}")


def test_a_path_that_cannot_be_removed_is_an_nginx_error(tmp_path: Path) -> None:
    """remove() of something that cannot be unlinked (here a directory) is NginxError naming it."""
    (tmp_path / "dir").mkdir()
    with pytest.raises(errors.NginxError, match=r"^cannot remove .*dir"):
        config_file.remove(tmp_path / "dir")
    config_file.remove(tmp_path / "missing")  # already gone: fine


async def test_apply_on_a_broken_state_directory_is_an_nginx_error(blocked: Path) -> None:
    """NginxProcess.apply (a tick's WriteUpstreams) raises NginxError, which the daemon's loop retries,
    instead of an OSError that would end the task group with a traceback."""
    proc = nginx_mod.NginxProcess("nginx-is-never-run", blocked)
    with pytest.raises(errors.NginxError, match="cannot write"):
        await proc.apply("events {}")
    assert proc.config is None
