"""nginx's two outputs, read from pipes of ours: the access log (stdout) and the error log (stderr).

The access log is nginx's JSON line per proxied request. ``copy_access_log`` passes it to our stdout in
whole-line batches: one read and one write per batch of whatever arrived, not Python work per line, so
that thousands of requests per second cost the event loop little (``docs/performance.md`` section 1
measures ``/healthz`` while the proxy carries such a load). A line longer than ``LINE_LIMIT`` is
dropped whole.

The error log is low-volume and read line by line (``ErrorLog.follow``): each line is copied to our
stderr, the last lines are kept for error messages, and ``[emerg]``/``[alert]`` lines are counted so
that a failed reload can be noticed.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import sys
from pathlib import Path

#: the longest line passed on (bytes, newline included); a longer one is dropped
LINE_LIMIT = 64 * 1024
_READ_SIZE = 64 * 1024
_TAIL_LINES = 20
# "2026/11/22 17:02:49 [emerg] 8117#8117: " -> "[emerg] "
_LOG_PREFIX_RE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\] \d+#\d+: (?:\*\d+ )?")
# "... [alert] 8118#8118: ..." -> "8118": which process wrote the line
_LOG_PID_RE = re.compile(r"\[(?:emerg|alert)\] (\d+)#")


async def _open_reader(read_fd: int, limit: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    reader = asyncio.StreamReader(limit=limit)
    pipe = os.fdopen(read_fd, "rb", buffering=0)
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), pipe
    )
    return reader, transport


class LineBatcher:
    """Cuts a byte stream into batches of whole lines; a line longer than ``LINE_LIMIT`` is dropped."""

    def __init__(self) -> None:
        self._pending = b""
        self._skipping = False  # inside a line that was too long: drop up to its newline

    def feed(self, data: bytes) -> bytes:
        """The whole lines completed by ``data`` (maybe none), in order."""
        if self._skipping:
            cut = data.find(b"\n")
            if cut < 0:
                return b""
            data, self._skipping = data[cut + 1 :], False
        buffer = self._pending + data
        end = buffer.rfind(b"\n") + 1
        whole, self._pending = buffer[:end], buffer[end:]
        if len(self._pending) >= LINE_LIMIT:
            self._pending, self._skipping = b"", True
        return _drop_long(whole)

    def rest(self) -> bytes:
        """What is left of an unfinished last line, with a newline; for when the stream ends."""
        return b"" if self._skipping or not self._pending else self._pending + b"\n"


def _drop_long(lines: bytes) -> bytes:
    if len(lines) < LINE_LIMIT:
        return lines
    return b"".join(line for line in lines.splitlines(keepends=True) if len(line) <= LINE_LIMIT)


def _write_stdout(data: bytes) -> None:
    text = data.decode(errors="replace")
    sys.stdout.write(text)
    sys.stdout.flush()


async def copy_access_log(read_fd: int) -> None:
    """Copy nginx's stdout to ours until it closes, whole lines at a time."""
    reader, transport = await _open_reader(read_fd, _READ_SIZE)
    batcher = LineBatcher()
    try:
        while data := await reader.read(_READ_SIZE):
            if whole := batcher.feed(data):
                _write_stdout(whole)
        if rest := batcher.rest():
            _write_stdout(rest)
    finally:
        transport.close()


class ErrorLog:
    """What nginx wrote to stderr lately: its last lines and its ``[emerg]``/``[alert]`` lines."""

    def __init__(self) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        #: ``[emerg]``/``[alert]`` lines seen so far, to notice a failed reload
        self.error_count = 0
        #: enough that a master's line is still here after a burst of workers' alerts
        self.last_errors: collections.deque[str] = collections.deque(maxlen=64)

    def note(self, text: str) -> None:
        self.tail.append(text)
        if "[emerg]" in text or "[alert]" in text:
            self.error_count += 1
            self.last_errors.append(text)

    def errors_since(self, count: int, master: int | None = None) -> list[str]:
        """The ``[emerg]``/``[alert]`` lines after the first ``count`` (the last 3 at most); with
        ``master``, only that process's own lines and lines naming no process: a worker's alert under
        load (``worker_connections are not enough``) says nothing about a reload."""
        new = list(self.last_errors)[-(self.error_count - count) :] if self.error_count > count else []
        if master is not None:
            new = [line for line in new if (m := _LOG_PID_RE.search(line)) is None or int(m[1]) == master]
        return new[-3:]

    def reason(self, config_path: Path) -> str:
        """``": <nginx's last complaints>"``, or ``""`` when stderr said nothing lately."""
        lines = [line for line in self.tail if line.strip()]
        return f": {summary(lines, config_path)}" if lines else ""

    async def follow(self, read_fd: int) -> None:
        """Copy nginx's stderr to ours line by line until it closes, noting each line."""
        reader, transport = await _open_reader(read_fd, LINE_LIMIT)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than LINE_LIMIT: asyncio drops it, so do we
                    continue
                if not line:
                    break
                text = line.decode(errors="replace").rstrip("\n")
                self.note(text)
                print(text, file=sys.stderr, flush=True)
        finally:
            transport.close()


def summary(lines: list[str], path: Path) -> str:
    """nginx's first distinct complaints, on one line, without time stamps or the temp file's name."""
    seen: list[str] = []
    for line in lines:
        text = (
            _LOG_PREFIX_RE.sub(r"[\1] ", line.strip()).removeprefix("nginx: ").replace(str(path), "<config>")
        )
        if text and text not in seen:
            seen.append(text)
        if len(seen) == 3:
            break
    return "; ".join(seen) or "no message"
