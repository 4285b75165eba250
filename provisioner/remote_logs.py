"""``REMOTE_LOGS``: copy the remote container's log into our stdout, every line once.

Vast has no log stream: ``request_logs`` (docs/vast-api.md §8) uploads the last ``tail``
lines of the container's log and answers a URL to fetch them from. So every
``REMOTE_LOGS_INTERVAL_SECONDS`` (30 s by default: one API call per interval,
far below any rate limit), and only while this pod's instance is running, the
streamer fetches the tail and prints the lines it has not printed yet, as log
lines with ``"source": "remote"`` (``[remote]`` in text format).

De-duplication (``new_lines``): the log only grows, so the new tail is the old
one with its head cut and new lines appended. While the whole log is shorter
than ``tail`` it is known exactly: the new lines are what follows the old
snapshot, however many identical lines it holds. Once the window is full, the
new lines are what follows the longest suffix of the old tail that is also a
prefix of the new one (found in linear time with the KMP failure function).
That is exact unless the log is periodic across the whole window (e.g. the same
line ``tail`` times in a row): then repeats are dropped rather than printed
twice. No overlap at all means more than ``tail`` lines arrived in one
interval; the streamer says that some lines may be missing.

Failures (instance gone, logs not uploaded in time, rate limits) never stop
the daemon: the first one of a streak is logged at INFO, the rest at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from provisioner import errors
from provisioner.logs import REMOTE_SOURCE

log = logging.getLogger("provisioner.remote_logs")
#: the logger remote lines are written with
remote_log = logging.getLogger("provisioner.remote")

#: how often to look for a running instance when there is none (no API call)
IDLE_CHECK_S: Final = 2.0
_SEPARATOR: Final = object()


class LogSource(Protocol):
    """The part of ``VastClient`` the streamer needs."""

    async def request_logs(self, instance_id: int, *, tail: int | None = None) -> str: ...


class LineSink(Protocol):
    def __call__(self, instance_id: int, line: str) -> None: ...


def overlap(previous: Sequence[str], current: Sequence[str]) -> int:
    """Length of the longest suffix of ``previous`` that is also a prefix of ``current``."""
    seq: list[object] = [*current, _SEPARATOR, *previous]
    fail = [0] * len(seq)
    for i in range(1, len(seq)):
        k = fail[i - 1]
        while k and seq[i] != seq[k]:
            k = fail[k - 1]
        if seq[i] == seq[k]:
            k += 1
        fail[i] = k
    return fail[-1]


def new_lines(previous: Sequence[str] | None, current: Sequence[str], tail: int) -> tuple[list[str], bool]:
    """The lines of ``current`` not in ``previous`` (two tails of one log), and whether some may be missing.

    ``previous`` None: the first snapshot, everything is new.
    """
    if previous is None:
        return list(current), False
    if len(current) < tail and list(current[: len(previous)]) == list(previous):
        return list(current[len(previous) :]), False  # the whole log: exact
    k = overlap(previous, current)
    return list(current[k:]), k == 0 and bool(previous) and bool(current)


def split_lines(text: str) -> list[str]:
    """Log text -> lines (no line ends); a final newline does not make an empty line."""
    return text.splitlines()


def log_remote_line(instance_id: int, line: str) -> None:
    """The default sink: one INFO line with ``source: remote``."""
    remote_log.info("%s", line, extra={"source": REMOTE_SOURCE, "instance_id": instance_id})


class RemoteLogStreamer:
    """Polls ``request_logs`` for the running instance ``target()`` names and prints new lines."""

    def __init__(
        self,
        vast: LogSource,
        target: Callable[[], int | None],
        *,
        interval_s: float = 30.0,
        tail: int = 1000,
        sink: LineSink = log_remote_line,
        on_lines: Callable[[int], None] | None = None,
    ) -> None:
        self.vast = vast
        self.target = target
        self.interval_s = interval_s
        self.tail = tail
        self.sink = sink
        self.on_lines = on_lines
        self.instance_id: int | None = None
        self._previous: list[str] | None = None
        self._failing = False

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: one fetch per interval while an instance runs, none otherwise."""
        while not stop.is_set():
            iid = self.target()
            if iid is None:
                await _wait(stop, min(IDLE_CHECK_S, self.interval_s))
                continue
            wait_s = await self.poll_once(iid)
            await _wait(stop, wait_s)

    async def poll_once(self, instance_id: int) -> float:
        """Fetch the tail once and print what is new; returns how long to wait before the next fetch."""
        if instance_id != self.instance_id:
            self.instance_id = instance_id
            self._previous = None
            self._failing = False
            log.info("streaming the remote container's log every %gs", self.interval_s)
        try:
            text = await self.vast.request_logs(instance_id, tail=self.tail)
        except errors.ProvisionerError as exc:
            level = logging.DEBUG if self._failing else logging.INFO
            log.log(level, "remote logs unavailable: %s; retrying in %gs", exc, self.interval_s)
            self._failing = True
            if isinstance(exc, errors.RateLimited) and exc.retry_after_s:
                return max(self.interval_s, exc.retry_after_s)
            return self.interval_s
        if self._failing:
            log.info("remote logs available again")
            self._failing = False
        current = split_lines(text)
        fresh, gap = new_lines(self._previous, current, self.tail)
        self._previous = current
        if gap:
            log.info(
                "more than %d remote log lines arrived in %gs: some may be missing (raise REMOTE_LOGS_TAIL)",
                self.tail,
                self.interval_s,
            )
        shown = 0
        for line in fresh:
            if line.strip():
                self.sink(instance_id, line)
                shown += 1
        if shown and self.on_lines is not None:
            self.on_lines(shown)
        return self.interval_s


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
