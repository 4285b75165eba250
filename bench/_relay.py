"""A delaying TCP relay: the fallback network emulator where namespaces or ``tc netem`` are unavailable.

``python -m bench._relay --target-port P --one-way-ms 25`` listens on loopback and forwards every
connection to the target, holding each chunk ``one-way-ms`` in each direction, in order, so a request and
its answer take one round trip (2 x one-way) more than on loopback. A new connection also pays for its TCP
handshake: data from the client is not delivered before one round trip has passed since the connection
was accepted, plus the one-way delay, as with a real remote host (SYN, SYN-ACK, then the request).
Bandwidth and loss are not emulated. Prints ``ready <port>`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float, not_before: float
) -> None:
    """Copy reader -> writer, each chunk delivered ``delay_s`` after it was read (order kept)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((max(loop.time(), not_before) + delay_s, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((loop.time(), b""))

    reading = asyncio.create_task(read())
    try:
        while True:
            deliver_at, data = await queue.get()
            wait = deliver_at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        return
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def relay(
    listen_host: str, listen_port: int, target_host: str, target_port: int, delay_s: float
) -> None:
    loop = asyncio.get_running_loop()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        accepted = loop.time()
        _nodelay(client_w)
        try:
            up_r, up_w = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_w.close()
            return
        _nodelay(up_w)
        handshake_done = accepted + 2 * delay_s
        try:
            await asyncio.gather(
                _pump(client_r, up_w, delay_s, handshake_done),
                _pump(up_r, client_w, delay_s, 0.0),
            )
        finally:
            for w in (client_w, up_w):
                w.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await w.wait_closed()

    server = await asyncio.start_server(handle, listen_host, listen_port, backlog=512)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--one-way-ms", type=float, default=25.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            relay(
                args.listen_host, args.listen_port, args.target_host, args.target_port, args.one_way_ms / 1000
            )
        )


if __name__ == "__main__":
    main()
