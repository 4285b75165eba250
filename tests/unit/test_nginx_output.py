"""nginx_output: the access log cut into whole-line batches, and the error log's memory of complaints."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner import nginx_output

LIMIT = nginx_output.LINE_LIMIT


def feed_all(chunks: list[bytes]) -> bytes:
    batcher = nginx_output.LineBatcher()
    return b"".join(batcher.feed(chunk) for chunk in chunks) + batcher.rest()


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param([b'{"a":1}\n{"b":2}\n'], b'{"a":1}\n{"b":2}\n', id="whole-lines"),
        pytest.param([b'{"a"', b':1}\n{"b', b'":2}\n'], b'{"a":1}\n{"b":2}\n', id="split-anywhere"),
        pytest.param([b"one\ntwo"], b"one\ntwo\n", id="unfinished-last-line-ends-with-newline"),
        pytest.param([b"a\n", b"x" * LIMIT, b"y\n", b"b\n"], b"a\nb\n", id="too-long-across-chunks-dropped"),
        pytest.param([b"a\n" + b"x" * (LIMIT + 1) + b"\nb\n"], b"a\nb\n", id="too-long-in-one-chunk-dropped"),
        pytest.param([b"x" * (LIMIT - 1) + b"\n"], b"x" * (LIMIT - 1) + b"\n", id="just-under-limit-kept"),
        pytest.param([b"x" * LIMIT], b"", id="too-long-unfinished-dropped"),
    ],
)
def test_line_batcher_passes_whole_lines_in_order(chunks: list[bytes], expected: bytes) -> None:
    """Whatever the chunking, whole lines come out in order; over-long lines are dropped whole."""
    assert feed_all(chunks) == expected


def test_line_batcher_holds_an_unfinished_line_back() -> None:
    """A line is passed on only once its newline has arrived."""
    batcher = nginx_output.LineBatcher()
    assert batcher.feed(b"first\nsec") == b"first\n"
    assert batcher.feed(b"ond") == b""
    assert batcher.feed(b"\n") == b"second\n"


def test_error_log_counts_emerg_and_alert_and_summarises() -> None:
    """[emerg]/[alert] lines are counted; the reason is the tail without time stamps or the file name."""
    log = nginx_output.ErrorLog()
    path = Path("/state/nginx.conf")
    assert log.reason(path) == ""
    log.note("2026/11/22 17:02:49 [warn] 1#1: something minor")
    count = log.error_count
    log.note(f'2026/11/22 17:02:50 [emerg] 1#1: unknown directive "x" in {path}:3')
    assert log.errors_since(count) == [f'2026/11/22 17:02:50 [emerg] 1#1: unknown directive "x" in {path}:3']
    assert log.errors_since(log.error_count) == []
    assert log.reason(path) == ': [warn] something minor; [emerg] unknown directive "x" in <config>:3'


def test_a_reload_counts_the_masters_complaints_not_a_workers_alerts() -> None:
    """With the master's pid, a worker's `[alert]` under load is left out; the master's own `[emerg]` and
    a line naming no process count."""
    log = nginx_output.ErrorLog()
    count = log.error_count
    worker = "2026/12/02 05:40:37 [alert] 8118#8118: 16 worker_connections are not enough"
    master = "2026/12/02 05:40:37 [emerg] 8117#8117: bind() to 127.0.0.1:8080 failed (98: Address in use)"
    early = 'nginx: [emerg] unknown directive "x" in /state/nginx.conf:3'
    for line in (worker, master, worker, early, worker):
        log.note(line)
    assert log.errors_since(count, master=8117) == [master, early]
    assert log.errors_since(count) == [worker, early, worker], "without a pid: every line, the last 3"
