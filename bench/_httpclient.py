"""A lean asyncio HTTP/1.1 client for load generation: keepalive connections, timings, SSE events.

Lean on purpose: per request it costs a few tens of microseconds of Python, the same on every path, so
the differences the benchmarks show are the proxies' and the network's, not the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field


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


class _Inbox(asyncio.Protocol):
    """The receiving side of one connection: a byte buffer and a wake-up for whoever waits on it."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def more(self) -> None:
        """Wait for more bytes; ClosedError once the server has closed and nothing more can come."""
        if self.closed:
            raise ClosedError("connection closed by the server")
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class Connection:
    """One keepalive HTTP/1.1 connection; requests one at a time.

    A hand-written parser for what the benchmarks' servers send (status line, headers, a body framed by
    ``Content-Length`` or chunked), on an ``asyncio.Protocol``: a few tens of microseconds per request.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._transport: asyncio.Transport | None = None
        self._inbox = _Inbox()
        self._must_close = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, self._inbox = await loop.create_connection(_Inbox, self.host, self.port)
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        self._must_close = False

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def _ensure(self) -> asyncio.Transport:
        if self._transport is not None and (self._must_close or self._inbox.closed):
            await self.close()
        if self._transport is None:
            await self.open()
        assert self._transport is not None
        return self._transport

    def _head(self, method: str, target: str, extra: list[tuple[str, str]], body: bytes | None) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}", "User-Agent: bench/1"]
        lines += [f"{name}: {value}" for name, value in extra]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _read_head(self) -> tuple[int, bool, int | None]:
        """The response's status, whether it is chunked, and its Content-Length (None: not given)."""
        inbox = self._inbox
        while (end := inbox.buffer.find(b"\r\n\r\n")) < 0:
            await inbox.more()
        lines = bytes(inbox.buffer[:end]).decode("latin-1").split("\r\n")
        del inbox.buffer[: end + 4]
        version, status_text = lines[0].split(" ", 2)[:2]
        status = int(status_text)
        chunked, length = False, None
        keep_alive = version != "HTTP/1.0"  # 1.0: closed after the answer unless it says keep-alive
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection" and (token := value.strip().lower()) in {"close", "keep-alive"}:
                keep_alive = token == "keep-alive"
        self._must_close = self._must_close or not keep_alive
        return status, chunked, length

    async def _chunk(self) -> bytes | None:
        """The next chunk of a chunked body; None after the last one and its trailer section."""
        inbox = self._inbox
        while (eol := inbox.buffer.find(b"\r\n")) < 0:
            await inbox.more()
        size = int(bytes(inbox.buffer[:eol]).split(b";", 1)[0], 16)
        while len(inbox.buffer) < eol + 2 + size + 2:
            await inbox.more()
        if size == 0:  # the last chunk: skip trailer fields up to the empty line that ends them
            while not self._trailers_end(eol + 2):
                await inbox.more()
            del inbox.buffer[: self._trailers_end(eol + 2)]
            return None
        data = bytes(inbox.buffer[eol + 2 : eol + 2 + size])
        del inbox.buffer[: eol + 2 + size + 2]
        return data

    def _trailers_end(self, start: int) -> int:
        """Where the trailer section that begins at ``start`` ends (past its empty line); 0: not all here."""
        buffer = self._inbox.buffer
        if buffer.startswith(b"\r\n", start):
            return start + 2
        end = buffer.find(b"\r\n\r\n", start)
        return end + 4 if end >= 0 else 0

    async def _body(self, chunked: bool, length: int | None) -> bytes:
        inbox = self._inbox
        if chunked:
            parts = []
            while (chunk := await self._chunk()) is not None:
                parts.append(chunk)
            return b"".join(parts)
        if length is None:  # delimited by the server closing the connection
            self._must_close = True
            with contextlib.suppress(ClosedError):
                while True:
                    await inbox.more()
            length = len(inbox.buffer)
        while len(inbox.buffer) < length:
            await inbox.more()
        body = bytes(inbox.buffer[:length])
        del inbox.buffer[:length]
        return body

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        transport = await self._ensure()
        head = self._head(method, target, headers or [], body)
        sent_at = time.perf_counter()
        transport.write(head + body if body else head)
        status, chunked, length = await self._read_head()
        # no body, whatever the headers say: HEAD, 1xx, 204 and 304 (RFC 9112 section 6.3)
        bodiless = method == "HEAD" or status < 200 or status in {204, 304}
        data = b"" if bodiless else await self._body(chunked, length)
        return Response(status, data, sent_at, time.perf_counter())

    async def stream(self, target: str, lags: bool = True) -> StreamResult:
        """GET an SSE stream; time every ``data:`` event as it completes (``lags``: and its lag)."""
        transport = await self._ensure()
        head = self._head("GET", target, [("Accept", "text/event-stream")], None)
        result = StreamResult(0, time.perf_counter())
        transport.write(head)
        result.status, chunked, length = await self._read_head()
        if not chunked:
            await self._body(chunked, length)
            return result
        buffer = b""
        while (chunk := await self._chunk()) is not None:
            buffer += chunk
            while b"\n\n" in buffer:
                raw, buffer = buffer.split(b"\n\n", 1)
                now, wall = time.perf_counter(), time.time()
                result.event_at.append(now)
                if lags and raw.startswith(b"data: "):
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        result.lag_s.append(wall - float(json.loads(raw[6:])["t"]))
        return result


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
    result = await conn.stream(stream_target, lags=False)
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
