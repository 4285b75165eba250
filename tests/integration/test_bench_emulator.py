"""Benchmark 1's light GPU emulator (``bench._linegpu``) and load client (``bench._httpclient``).

The figures of docs/performance.md section 1 are only as good as these two: the emulator must hold its
answers for the round trip (and a new connection's first answer for one more, the handshake), keep a
stream's spacing, count connections, and speak HTTP/1.0 to nginx's 1.0 upstreams as a server must; the
client must read what the servers send (Content-Length, chunked, close-delimited).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench import _httpclient, _linegpu

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

ONE_WAY_S = 0.05
RTT_S = 2 * ONE_WAY_S
#: float rounding between the clocks compared; asyncio never runs a timer early (the emulator avoids
#: uvloop, whose millisecond clock would: up to 1 ms)
EARLY_S = 0.00005


@pytest.fixture
async def gpu() -> AsyncIterator[tuple[str, int]]:
    server = await asyncio.get_running_loop().create_server(
        lambda: _linegpu._DelayedServer(RTT_S), "127.0.0.1", 0
    )
    _linegpu._counts.update(connections=0, requests=0)
    try:
        yield "127.0.0.1", server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_new_connection_pays_the_handshake_then_each_request_one_round_trip(
    gpu: tuple[str, int],
) -> None:
    conn = _httpclient.Connection(*gpu)
    started = time.perf_counter()  # before the connect: the server accepts after this
    try:
        await conn.open()
        first = await conn.request("POST", "/v1/completions", b'{"x": 1}')
        second = await conn.request("POST", "/v1/completions", b'{"x": 2}')
    finally:
        await conn.close()
    assert first.status == second.status == 200
    assert b'"body_size": 8' in second.body
    # only lower bounds are exact (a loaded machine may add to any of these)
    assert first.done_at - started >= 2 * RTT_S - EARLY_S
    assert second.latency_s >= RTT_S - EARLY_S


async def test_a_stream_arrives_one_round_trip_late_with_its_spacing_kept(gpu: tuple[str, int]) -> None:
    conn = _httpclient.Connection(*gpu)
    try:
        await conn.request("GET", "/health")  # the handshake, out of the way
        result = await conn.stream("/stream?n=5&interval_ms=15")
        after = await conn.request("GET", "/health")  # the connection is still usable after the stream
    finally:
        await conn.close()
    assert result.status == 200 and after.status == 200
    assert len(result.event_at) == 5
    # event i is produced i x 15 ms after the request and leaves one RTT later, never sooner (a loaded
    # client may read it later, so only the lower bound is exact)
    since_sent = [at - result.sent_at for at in result.event_at]
    assert all(t >= RTT_S + i * 0.015 - EARLY_S for i, t in enumerate(since_sent)), since_sent
    # each event carries the time a remote server would have produced it: it arrives one-way later
    assert all(lag >= ONE_WAY_S - EARLY_S for lag in result.lag_s), result.lag_s


async def test_events_are_stamped_as_a_server_one_way_away_would_stamp_them(gpu: tuple[str, int]) -> None:
    """The request reaches a remote server one-way after it was sent: no stamp is earlier than that."""
    reader, writer = await asyncio.open_connection(*gpu)
    try:
        sent_wall = time.time()
        writer.write(b"GET /stream?n=2&interval_ms=5 HTTP/1.1\r\nHost: gpu\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            raw = await reader.read()
    finally:
        writer.close()
    stamps = [json.loads(line[6:])["t"] for line in raw.split(b"\r\n") if line.startswith(b"data: ")]
    assert len(stamps) == 2
    assert stamps[0] >= sent_wall + ONE_WAY_S - EARLY_S
    assert stamps[1] - stamps[0] == pytest.approx(0.005, abs=1e-5)


async def test_answers_never_leave_before_the_round_trip(gpu: tuple[str, int]) -> None:
    """Many requests on busy connections: not one answer is early, not even by a millisecond."""
    conns = await _httpclient.open_all(*gpu, 8)
    try:
        await _httpclient.burst(conns, "/v1/completions", b"{}")  # the handshakes
        cell = await _httpclient.run_for(conns, 0.5, "/v1/completions", b"{}")
    finally:
        await _httpclient.close_all(conns)
    assert len(cell.latencies_s) >= 8 and cell.errors == 0
    assert min(cell.latencies_s) >= RTT_S - EARLY_S, min(cell.latencies_s)


async def test_an_http10_stream_is_close_delimited(gpu: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*gpu)
    try:
        writer.write(b"GET /stream?n=3&interval_ms=0 HTTP/1.0\r\nHost: gpu\r\n\r\n")
        async with asyncio.timeout(5):
            raw = await reader.read()  # to the end: the server closes
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body.count(b"data: ") == 3 and body.startswith(b"data: ")


async def test_counts_the_connections_opened_since_a_reset(gpu: tuple[str, int]) -> None:
    await _httpclient.get_json(*gpu, "/_bench/reset", "POST")
    conns = await _httpclient.open_all(*gpu, 3)
    try:
        await _httpclient.burst(conns, "/v1/completions", b"{}")
        await _httpclient.burst(conns, "/v1/completions", b"{}")
    finally:
        await _httpclient.close_all(conns)
    counts = await _httpclient.get_json(*gpu, "/_bench/connections")
    assert counts == {"connections": 3, "requests": 6}


async def test_a_chunked_request_body_gets_a_400_and_the_connection_closed(gpu: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*gpu)
    try:
        writer.write(b"POST / HTTP/1.1\r\nHost: gpu\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        async with asyncio.timeout(5):
            raw = await reader.read()
    finally:
        writer.close()
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert b"chunked request bodies are not supported" in raw


async def _ask_scripted(answers: list[bytes], requests: int) -> tuple[list[_httpclient.Response], int]:
    """``requests`` GETs on one client from a server that answers each with the next of ``answers``,
    closing after one without a length (its body ends at the close); the answers and the connections the
    server accepted."""
    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while answers:
                await reader.readuntil(b"\r\n\r\n")
                answer = answers.pop(0)
                writer.write(answer)
                await writer.drain()
                head = answer.split(b"\r\n\r\n", 1)[0].lower()
                if b"content-length" not in head and b"chunked" not in head and b" 204 " not in head:
                    break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    conn = _httpclient.Connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        async with asyncio.timeout(5):
            got = [await conn.request("GET", f"/{i}") for i in range(requests)]
    finally:
        await conn.close()
        server.close()
        await server.wait_closed()
    return got, accepted


async def test_the_client_reads_a_close_delimited_answer_then_reconnects() -> None:
    """A server that answers without a length (HTTP/1.0 style) ends the body by closing."""
    close_delimited = b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it"
    (first, second), accepted = await _ask_scripted([close_delimited, close_delimited], 2)
    assert (first.status, first.body) == (200, b"all of it")
    assert (second.status, second.body) == (200, b"all of it")
    assert accepted == 2


def test_the_emulator_process_prints_its_port_and_answers() -> None:
    """``python -m bench._linegpu`` as the benchmark starts it (``bench._network``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._linegpu", "--one-way-ms", "5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("ready ")
        port = int(line.split()[1])
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: gpu\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert time.monotonic() - started >= 2 * 0.01 - EARLY_S
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert b"Traceback" not in err


async def test_the_client_frames_bodiless_answers_trailers_and_http10() -> None:
    """A 204 without a length on keep-alive, a chunked answer with a trailer, then an HTTP/1.0 answer
    with a length but no keep-alive (after which the client must open a new connection)."""
    answers = [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 1\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext",
    ]
    got, accepted = await _ask_scripted(answers, 4)
    assert [(r.status, r.body) for r in got] == [(204, b""), (200, b"abc"), (200, b"ok"), (200, b"next")]
    assert accepted == 2  # the 1.0 answer without keep-alive ended the first connection
