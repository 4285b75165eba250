"""A lean asyncio HTTP/1.1 client (h11) for load generation: keepalive connections, timings, SSE events.

Lean on purpose: per request it costs a few tens of microseconds of Python, the same on every path, so
the differences the benchmarks show are the proxies' and the network's, not the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import h11


class ClosedError(ConnectionError):
    """The server closed the connection before a complete response."""


@dataclass
class Response:
    status: int
    body: bytes
    #: ``time.perf_counter()`` when the request was written and when the response was complete
    sent_at: float
    done_at: float

    @property
    def latency_s(self) -> float:
        return self.done_at - self.sent_at


@dataclass
class StreamResult:
    status: int
    sent_at: float
    #: ``time.perf_counter()`` at each complete event
    event_at: list[float] = field(default_factory=list)
    #: receive time (wall clock) minus the ``t`` the server wrote into each event: delivery lag
    lag_s: list[float] = field(default_factory=list)


class Connection:
    """One keepalive HTTP/1.1 connection; requests one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn = h11.Connection(h11.CLIENT)

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._conn = h11.Connection(h11.CLIENT)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
            self._writer = None

    async def _ensure(self) -> None:
        if self._writer is None:
            await self.open()
        elif self._conn.our_state is h11.MUST_CLOSE or self._conn.their_state is h11.MUST_CLOSE:
            await self.close()
            await self.open()
        elif self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()

    def _headers(self, extra: list[tuple[str, str]], body: bytes | None) -> list[tuple[str, str]]:
        headers = [("Host", f"{self.host}:{self.port}"), ("User-Agent", "bench/1"), *extra]
        if body is not None:
            headers.append(("Content-Length", str(len(body))))
        return headers

    async def _next_event(self) -> Any:
        assert self._reader is not None
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                data = await self._reader.read(65536)
                if not data and self._conn.their_state is not h11.SEND_BODY:
                    raise ClosedError("connection closed by the server")
                self._conn.receive_data(data)
                continue
            return event

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        await self._ensure()
        assert self._writer is not None
        out = self._conn.send(
            h11.Request(method=method, target=target, headers=self._headers(headers or [], body))
        )
        if body:
            out += self._conn.send(h11.Data(data=body))
        out += self._conn.send(h11.EndOfMessage())
        sent_at = time.perf_counter()
        self._writer.write(out)
        status = 0
        chunks: list[bytes] = []
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Response(status, b"".join(chunks), sent_at, time.perf_counter())
            elif isinstance(event, h11.ConnectionClosed):
                raise ClosedError("connection closed mid-response")

    async def stream(self, target: str) -> StreamResult:
        """GET an SSE stream; time every ``data:`` event as it completes."""
        await self._ensure()
        assert self._writer is not None
        headers = self._headers([("Accept", "text/event-stream")], None)
        out = self._conn.send(h11.Request(method="GET", target=target, headers=headers))
        out += self._conn.send(h11.EndOfMessage())
        result = StreamResult(0, time.perf_counter())
        self._writer.write(out)
        buffer = b""
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                result.status = event.status_code
            elif isinstance(event, h11.Data):
                buffer += bytes(event.data)
                while b"\n\n" in buffer:
                    raw, buffer = buffer.split(b"\n\n", 1)
                    now, wall = time.perf_counter(), time.time()
                    result.event_at.append(now)
                    if raw.startswith(b"data: "):
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            result.lag_s.append(wall - float(json.loads(raw[6:])["t"]))
            elif isinstance(event, h11.EndOfMessage):
                return result
            elif isinstance(event, h11.ConnectionClosed):
                raise ClosedError("connection closed mid-stream")


async def get_json(host: str, port: int, target: str, method: str = "GET") -> object:
    """One request on a fresh connection, the JSON answer."""
    conn = Connection(host, port)
    try:
        response = await conn.request(method, target, b"" if method != "GET" else None)
    finally:
        await conn.close()
    return json.loads(response.body)


async def closed_loop(
    host: str, port: int, concurrency: int, total: int, method: str, target: str, body: bytes | None
) -> tuple[list[float], float, int]:
    """``concurrency`` clients, each on one keepalive connection, send ``total`` requests back to back.

    Every connection first carries one untimed request (so no timed request pays for a connection
    set-up on the client's side); the clock starts when all are ready. Returns (latencies in seconds,
    wall time in seconds, non-2xx answers).
    """
    latencies: list[float] = []
    errors = [0]
    remaining = [total]
    headers = [("Content-Type", "application/json")] if body is not None else []
    conns = [Connection(host, port) for _ in range(concurrency)]

    async def client(conn: Connection) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            response = await conn.request(method, target, body, headers)
            if not 200 <= response.status < 300:
                errors[0] += 1
            latencies.append(response.latency_s)

    try:
        await asyncio.gather(*(conn.request(method, target, body, headers) for conn in conns))
        started = time.perf_counter()
        await asyncio.gather(*(client(conn) for conn in conns))
        wall_s = time.perf_counter() - started
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))
    return latencies, wall_s, errors[0]


async def open_all(host: str, port: int, count: int) -> list[Connection]:
    """``count`` keepalive connections, each already past one request-free TCP connect."""
    conns = [Connection(host, port) for _ in range(count)]
    await asyncio.gather(*(conn.open() for conn in conns))
    return conns


async def close_all(conns: list[Connection]) -> None:
    await asyncio.gather(*(conn.close() for conn in conns))


@dataclass
class Cell:
    """One measured stretch of load: per-request latencies (or times to first event) and errors."""

    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0


async def _one(conn: Connection, stream_target: str | None, target: str, body: bytes | None) -> float:
    """One request (or one stream, read to its end): its latency (or time to the first event)."""
    if stream_target is None:
        headers = [("Content-Type", "application/json")] if body is not None else []
        response = await conn.request("POST" if body is not None else "GET", target, body, headers)
        if not 200 <= response.status < 300:
            raise ClosedError(f"status {response.status}")
        return response.latency_s
    result = await conn.stream(stream_target)
    if result.status != 200 or not result.event_at:
        raise ClosedError(f"status {result.status}, {len(result.event_at)} events")
    return result.event_at[0] - result.sent_at


async def run_for(
    conns: list[Connection],
    duration_s: float,
    target: str,
    body: bytes | None = None,
    stream_target: str | None = None,
    rate: float = 0.0,
) -> Cell:
    """Closed loop: every connection sends requests (or opens streams) back to back for ``duration_s``.

    With ``rate`` > 0 the connections take turns on a schedule of ``rate`` requests per second in all
    (a connection still busy when its turn comes sends late, and the schedule does not catch up).
    """
    cell = Cell()
    started = time.perf_counter()
    deadline = started + duration_s

    async def client(index: int, conn: Connection) -> None:
        turn = 0
        while time.perf_counter() < deadline:
            if rate > 0:
                wait = started + (turn * len(conns) + index) / rate - time.perf_counter()
                turn += 1
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                cell.latencies_s.append(await _one(conn, stream_target, target, body))
            except (ClosedError, OSError):
                cell.errors += 1
                await conn.close()

    await asyncio.gather(*(client(i, conn) for i, conn in enumerate(conns)))
    cell.wall_s = time.perf_counter() - started
    return cell


async def burst(
    conns: list[Connection], target: str, body: bytes | None = None, stream_target: str | None = None
) -> Cell:
    """Every connection sends one request at the same moment; each one's latency."""
    cell = Cell()
    started = time.perf_counter()

    async def client(conn: Connection) -> None:
        try:
            cell.latencies_s.append(await _one(conn, stream_target, target, body))
        except (ClosedError, OSError):
            cell.errors += 1
            await conn.close()

    await asyncio.gather(*(client(conn) for conn in conns))
    cell.wall_s = time.perf_counter() - started
    return cell


def load_for(
    host: str, port: int, concurrency: int, duration_s: float, target: str, rate: float = 0.0
) -> tuple[int, float, int]:
    """In a process of its own: GETs for ``duration_s`` (see ``run_for``); (requests, wall s, errors)."""

    async def run() -> Cell:
        conns = await open_all(host, port, concurrency)
        try:
            await run_for(conns, 0.3, target, rate=rate)  # warm-up
            return await run_for(conns, duration_s, target, rate=rate)
        finally:
            await close_all(conns)

    cell = asyncio.run(run())
    return len(cell.latencies_s), cell.wall_s, cell.errors
