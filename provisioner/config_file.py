"""Writing nginx's config file: a temp copy to test, and the atomic swap (fsync, rename, fsync of the dir).

Blocking file I/O: ``NginxProcess`` calls these in a thread. A failure of the state directory (full,
read-only, removed, not ours) is ``NginxError`` naming the path, never a bare ``OSError``: during a
tick the daemon retries it like any nginx failure, at start it is exit code 4. The config carries the
upstream's shared secret (``UPSTREAM_AUTH_HEADER``), so only its owner may read it (nginx runs as the
same user: ``CONFIG_MODE``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from provisioner import errors

#: the rendered config's mode: owner read/write only (it may hold the upstream's shared secret)
CONFIG_MODE: Final = 0o600


@contextlib.contextmanager
def _state_dir_errors(path: Path, doing: str = "write") -> Iterator[None]:
    """An ``OSError`` on ``path`` or beside it as ``NginxError`` naming the file and the reason."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or path
        raise errors.NginxError(f"cannot {doing} {where}: {exc.strerror or exc}") from exc


def _new_file(path: Path, text: str, suffix: str, *, sync: bool = False) -> Path:
    """``text`` in a new hidden file beside ``path`` (mode 0600, as ``mkstemp`` makes it; the directory
    made if missing); removed again if writing fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def write_temp(path: Path, text: str) -> Path:
    """``text`` in a new hidden file beside ``path`` (for ``nginx -t``)."""
    with _state_dir_errors(path):
        return _new_file(path, text, ".test")


def remove(path: Path) -> None:
    """Delete ``path`` if it exists (a temp copy, a stale pid file)."""
    with _state_dir_errors(path, "remove"):
        path.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader sees the old file or the new one, never a mix."""
    with _state_dir_errors(path):
        new = _new_file(path, text, ".new", sync=True)
        try:
            os.chmod(new, CONFIG_MODE)
            os.replace(new, path)
        except BaseException:
            new.unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def claim(path: Path) -> int:
    """This process's claim on the state directory of ``path``: an exclusive ``flock`` on ``.lock`` in
    it (``NginxError`` when another process holds it: its nginx would load this one's config, or the
    other way round), then the temp copies a killed process left there are removed (they may hold the
    upstream secret). Returns the lock's descriptor; closing it releases the claim."""
    with _state_dir_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent / ".lock", os.O_RDWR | os.O_CREAT, CONFIG_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise errors.NginxError(
                f"another process uses the state directory {path.parent}: give each provisioner its own"
                " NGINX_CONFIG_PATH"
            ) from None
        for stale in path.parent.glob(f".{path.name}.*"):
            if stale.suffix in (".new", ".test"):
                stale.unlink(missing_ok=True)
        return fd
