"""Remote logs: tail de-duplication (tables and a seeded property) and the streamer's cadence and failures."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from provisioner import errors, remote_logs
from provisioner.remote_logs import new_lines, overlap


def tail_of(log: list[str], tail: int) -> list[str]:
    return log[-tail:]


# ---------------------------------------------------------------- the pure part


@pytest.mark.parametrize(
    ("previous", "current", "tail", "expected", "gap"),
    [
        pytest.param(None, ["a", "b"], 5, ["a", "b"], False, id="first-snapshot"),
        pytest.param(["a", "b"], ["a", "b"], 5, [], False, id="nothing-new"),
        pytest.param(["a", "b"], ["a", "b", "c", "d"], 5, ["c", "d"], False, id="appended"),
        pytest.param(["a", "b", "c"], ["b", "c", "d"], 3, ["d"], False, id="window-slid"),
        pytest.param(["a", "b", "c"], ["c", "d", "e"], 3, ["d", "e"], False, id="window-slid-two"),
        pytest.param(["x", "x"], ["x", "x", "x", "x"], 5, ["x", "x"], False, id="repeats-whole-log-exact"),
        pytest.param([], ["x"], 5, ["x"], False, id="first-line"),
        pytest.param(["x", "a", "a"], ["a", "a", "a"], 3, ["a"], False, id="repeats-full-window"),
        pytest.param(["a", "b", "a"], ["a", "b", "a"], 3, [], False, id="same-full-window"),
        pytest.param(["a", "b", "a"], ["b", "a", "b"], 3, ["b"], False, id="alternating-slid-one"),
        pytest.param(["a", "b", "c"], ["d", "e", "f"], 3, ["d", "e", "f"], True, id="more-than-tail-arrived"),
        pytest.param(["a", "b"], [], 5, [], False, id="log-emptied"),
        pytest.param(["a", "b", "c"], ["a", "x"], 5, ["a", "x"], True, id="log-replaced-no-overlap"),
    ],
)
def test_new_lines_table(
    previous: list[str] | None, current: list[str], tail: int, expected: list[str], gap: bool
) -> None:
    """Only lines after the overlap are new; a missing overlap is flagged as a possible gap."""
    fresh, flagged = new_lines(previous, current, tail)
    assert fresh == expected
    assert flagged is gap


def test_fully_periodic_window_drops_rather_than_repeats() -> None:
    """The one ambiguous case (the same line all across a full window) prints nothing twice."""
    fresh, _ = new_lines(["a", "a", "a"], ["a", "a", "a"], 3)
    assert fresh == []


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        pytest.param([], [], 0, id="empty"),
        pytest.param(["a"], ["b"], 0, id="disjoint"),
        pytest.param(["a", "b", "c"], ["b", "c", "d"], 2, id="two"),
        pytest.param(["a", "a", "a"], ["a", "a"], 2, id="bounded-by-current"),
        pytest.param(["a", "b", "a", "b"], ["a", "b", "a", "c"], 2, id="kmp-fallback"),
        pytest.param(["x", "a", "a", "b", "a", "a"], ["a", "a", "b", "z"], 2, id="longest-not-first"),
    ],
)
def test_overlap(previous: list[str], current: list[str], expected: int) -> None:
    """overlap() is the longest suffix of the old tail that is a prefix of the new one."""
    assert overlap(previous, current) == expected


@pytest.mark.parametrize("seed", range(20))
def test_streaming_a_growing_log_reproduces_it(seed: int) -> None:
    """Property: fetching tails of a growing log of unique lines prints the log exactly once, in order."""
    rng = random.Random(seed)
    tail = rng.randint(3, 12)
    log: list[str] = []
    printed: list[str] = []
    previous: list[str] | None = None
    for _ in range(40):
        added = rng.randint(0, tail)  # never more than the tail: nothing can be missed
        log.extend([f"line {len(log) + i}" for i in range(added)])
        fresh, gap = new_lines(previous, tail_of(log, tail), tail)
        assert not gap or added == tail, "a gap is only flagged when no line of the old tail is left"
        printed.extend(fresh)
        previous = tail_of(log, tail)
    assert printed == log


@pytest.mark.parametrize("seed", range(20))
def test_repeated_lines_are_never_printed_twice(seed: int) -> None:
    """Property: with a two-letter alphabet, never more lines printed than written; exact while short."""
    rng = random.Random(seed)
    tail = rng.randint(3, 8)
    log: list[str] = []
    printed: list[str] = []
    previous: list[str] | None = None
    for _ in range(30):
        log.extend(rng.choice("ab") for _ in range(rng.randint(0, tail - 1)))
        fresh, _ = new_lines(previous, tail_of(log, tail), tail)
        printed.extend(fresh)
        previous = tail_of(log, tail)
        assert len(printed) <= len(log)
        if len(log) < tail:
            assert printed == log, "while the log is shorter than the tail it is known exactly"
        # what was printed last is always the end of the log
        assert log[len(log) - len(fresh) :] == fresh or not fresh


# ---------------------------------------------------------------- the streamer


class FakeLogs:
    """request_logs answers scripted in order: text, or an exception to raise."""

    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[int, int | None]] = []

    async def request_logs(self, instance_id: int, *, tail: int | None = None) -> str:
        self.calls.append((instance_id, tail))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Sink:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def __call__(self, instance_id: int, line: str) -> None:
        self.lines.append((instance_id, line))


async def test_streamer_prints_each_line_once_and_skips_blank_ones() -> None:
    """Successive tails print only their new lines; blank lines are not printed; the tail size is sent."""
    source = FakeLogs("a\nb\n", "a\nb\n\nc\n", "b\n\nc\nd\n")
    sink = Sink()
    counted: list[int] = []
    streamer = remote_logs.RemoteLogStreamer(
        source, lambda: 7, interval_s=30, tail=4, sink=sink, on_lines=counted.append
    )
    for _ in range(3):
        assert await streamer.poll_once(7) == 30
    assert sink.lines == [(7, "a"), (7, "b"), (7, "c"), (7, "d")]
    assert source.calls == [(7, 4)] * 3
    assert counted == [2, 1, 1]


async def test_a_new_instance_starts_a_new_log() -> None:
    """When the instance changes, its log is printed from its start (no overlap with the old one assumed)."""
    source = FakeLogs("same\n", "same\n")
    sink = Sink()
    streamer = remote_logs.RemoteLogStreamer(source, lambda: None, tail=10, sink=sink)
    await streamer.poll_once(1)
    await streamer.poll_once(2)
    assert sink.lines == [(1, "same"), (2, "same")]


async def test_failures_are_logged_once_then_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """A streak of failures logs one INFO line, then DEBUG; recovery says so; nothing raises."""
    unavailable = errors.VastUnavailable("request logs", "logs not ready")
    source = FakeLogs(unavailable, unavailable, "x\n")
    sink = Sink()
    streamer = remote_logs.RemoteLogStreamer(source, lambda: 3, interval_s=30, tail=10, sink=sink)
    caplog.set_level(logging.DEBUG, "provisioner.remote_logs")
    for _ in range(3):
        await streamer.poll_once(3)
    levels = [(r.levelno, r.getMessage().split(":")[0]) for r in caplog.records]
    assert levels == [
        (logging.INFO, "streaming the remote container's log every 30s"),
        (logging.INFO, "remote logs unavailable"),
        (logging.DEBUG, "remote logs unavailable"),
        (logging.INFO, "remote logs available again"),
    ]
    assert sink.lines == [(3, "x")]


async def test_rate_limit_hint_stretches_the_wait() -> None:
    """A 429 with a Retry-After longer than the interval waits that long before the next fetch."""
    source = FakeLogs(errors.RateLimited("request logs", "slow down", retry_after_s=90.0))
    streamer = remote_logs.RemoteLogStreamer(source, lambda: 3, interval_s=30, tail=10, sink=Sink())
    assert await streamer.poll_once(3) == 90.0


async def test_no_fetch_without_a_running_instance() -> None:
    """While there is no running instance the streamer never calls the API; it fetches once one runs."""
    source = FakeLogs("hello\n")
    sink = Sink()
    stop = asyncio.Event()
    targets: list[int | None] = [None, None, 4]

    def target() -> int | None:
        value = targets.pop(0) if targets else None
        if not targets and value is None:
            stop.set()
        return value

    streamer = remote_logs.RemoteLogStreamer(source, target, interval_s=0.001, tail=10, sink=sink)
    await asyncio.wait_for(streamer.run(stop), 10)
    assert source.calls == [(4, 10)]
    assert sink.lines == [(4, "hello")]
