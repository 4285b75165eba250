"""A lean "remote" GPU whose network delay is a delay line on its own output: the light emulator.

``python -m bench._linegpu --one-way-ms 25`` listens on loopback and answers like the simulated GPU app
(``bench._gpu``): an echo of any request as JSON, ``GET /health``, SSE at ``GET /stream?n=&interval_ms=``
(``X-Accel-Buffering: no``, chunked) and the ``/_bench/connections`` / ``/_bench/reset`` counters. It
prints ``ready <port>`` once it listens.

Why it exists: on a machine with few cores the relay method (``bench._relay`` in front of the uvicorn
app) spends ~300 µs of Python per request in two extra processes, so at 64-256 closed-loop clients the
emulator, not the proxy, decides the latency. Here one process does both, at 30-60 µs per request.

It runs on the standard asyncio loop, not uvloop: uvloop's clock advances in whole milliseconds, so a
timer armed for "one RTT from now" could fire up to 1 ms early, and an emulator that answers early
absorbs part of whatever a proxy adds in front of it. asyncio's timers never fire early.

The delay, as a round trip ``rtt`` = 2 x one-way: everything the server writes on a connection leaves
``rtt`` after it was written (order kept), and nothing leaves a new connection before ``2 x rtt`` after
it was accepted. Seen from the client (or from nginx), that is what a link with that RTT costs: a
request on an open connection is answered one RTT later, a token stream's events arrive one RTT after
they were produced and keep their spacing, and a new connection pays one more RTT for its handshake
(SYN/SYN-ACK, then the request's round trip). The request direction is not held: the server sees a
request ``rtt / 2`` early, which changes no time a client can observe for these handlers. Bandwidth
and loss are not emulated (nor are they by the relay).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

#: connections accepted and requests served since the last reset
_counts = {"connections": 0, "requests": 0}
_MAX_EVENTS = 10_000


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    target: str
    body: bytes
    close: bool
    http10: bool


def _parse(buffer: bytearray) -> _Request | None:
    """Take one complete request off the front of ``buffer``; None if it is not all there yet."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    method, target, version = head[0].split(" ", 2)
    http10 = version == "HTTP/1.0"
    length, close = 0, http10  # HTTP/1.0: closed after the response (keep-alive is never offered)
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and not http10:
            close = value.strip().lower() == "close"
        elif name == "transfer-encoding":
            raise ValueError("chunked request bodies are not supported")
    if len(buffer) < end + 4 + length:
        return None
    body = bytes(buffer[end + 4 : end + 4 + length])
    del buffer[: end + 4 + length]
    return _Request(method, target, body, close, http10)


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


class _DelayedServer(asyncio.Protocol):
    """One connection: parses requests, answers them, and holds every byte it writes for one RTT."""

    def __init__(self, rtt_s: float) -> None:
        self.rtt_s = rtt_s
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.out: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.not_before = 0.0
        self.broken = False  # a request could not be parsed: the connection is being closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        self.not_before = self.loop.time() + 2 * self.rtt_s
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _counts["connections"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.broken:
            return
        self.buffer += data
        self._serve()

    # ------------------------------------------------------------ the delay line

    def _send(self, data: bytes | None, *, now: bool = False, after: float = 0.0) -> None:
        """Queue ``data`` (None: close) to leave one RTT (+ ``after``) from now; ``now``: not delayed.

        In order: nothing leaves before what was queued ahead of it."""
        due = self.loop.time() if now else max(self.loop.time() + after + self.rtt_s, self.not_before)
        self.out.append((due, data))
        if self.timer is None:
            self.timer = self.loop.call_at(due, self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.out and self.out[0][0] <= now:
            _due, data = self.out.popleft()
            if self.transport is None:
                return
            if data is None:
                self.transport.close()
                return
            self.transport.write(data)
        if self.out:
            self.timer = self.loop.call_at(self.out[0][0], self._flush)

    # ------------------------------------------------------------ the app

    def _serve(self) -> None:
        while True:
            try:
                request = _parse(self.buffer)
            except ValueError as exc:
                self._send(_response("400 Bad Request", json.dumps({"error": str(exc)}).encode()))
                self._send(None)
                self.buffer.clear()
                self.broken = True
                return
            if request is None:
                return
            self._answer(request)

    def _answer(self, request: _Request) -> None:
        url = urlsplit(request.target)
        if url.path.startswith("/_bench/"):
            if request.method == "POST" and url.path == "/_bench/reset":
                _counts["connections"] = _counts["requests"] = 0
            # the asking connection was accepted after the reset
            counts = {"connections": max(0, _counts["connections"] - 1), "requests": _counts["requests"]}
            self._send(_response("200 OK", json.dumps(counts).encode()), now=True)
        elif url.path == "/stream" and request.method == "GET":
            _counts["requests"] += 1
            self._stream(parse_qs(url.query), request)
            return
        else:
            _counts["requests"] += 1
            answer = {"instance_id": 1, "method": request.method, "path": url.path, "query": url.query}
            answer["body_size"] = len(request.body)
            self._send(_response("200 OK", json.dumps(answer).encode()))
        if request.close:
            self._send(None)

    def _stream(self, query: dict[str, list[str]], request: _Request) -> None:
        """The whole stream at once: event ``i`` is produced ``i * interval`` from now and leaves one RTT
        later, as on a link (and the delay line keeps it behind anything queued before it)."""
        try:
            count = min(max(int(query.get("n", ["10"])[0]), 0), _MAX_EVENTS)
            interval_s = max(float(query.get("interval_ms", ["20"])[0]), 0.0) / 1000
        except ValueError:
            self._send(_response("400 Bad Request", b'{"error": "n and interval_ms must be numbers"}'))
            if request.close:
                self._send(None)
            return
        # HTTP/1.0 has no chunked encoding: the body ends where the connection does
        chunked = not request.http10
        framing = "transfer-encoding: chunked\r\n" if chunked else "connection: close\r\n"
        head = (
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            f"cache-control: no-cache\r\nx-accel-buffering: no\r\n{framing}\r\n"
        )
        self._send(head.encode())
        # stamped with the time a remote server would produce it: the request reached it one-way later
        # than it reached us (we hold the whole round trip on the way back), so a client's lag (receive
        # time minus the stamp) is the one-way delay, as over a link
        wall = time.time() + self.rtt_s / 2
        for i in range(count):
            data = f'data: {{"i": {i}, "t": {wall + i * interval_s!r}}}\n\n'.encode()
            if chunked:
                data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
            self._send(data, after=i * interval_s)
        if chunked:
            self._send(b"0\r\n\r\n", after=max(count - 1, 0) * interval_s)
        if request.close:
            self._send(None, after=max(count - 1, 0) * interval_s)


async def serve(host: str, port: int, one_way_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _DelayedServer(2 * one_way_s), host, port, backlog=1024, reuse_address=True
    )
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--one-way-ms", type=float, default=25.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.one_way_ms / 1000))  # not uvloop: see above


if __name__ == "__main__":
    main()
