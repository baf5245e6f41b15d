"""A loopback TCP proxy that delays every chunk, to bench over a long link (W8).

Submission to a remote provider lives behind a round trip of tens of
milliseconds; on loopback it is ~30 µs, which hides what pipelining saves.
``DelayProxy(target_port, one_way=0.010)`` listens on a free 127.0.0.1 port
and forwards each chunk in both directions ``one_way`` seconds after it
arrived, in order — latency without a bandwidth limit, so a round trip costs
``2 * one_way``. It runs its own event loop in a thread; ``close()`` stops it
and every connection it opened.

``python -m bench.delay PORT`` prints the measured round trip through a proxy
to an SMTP server on PORT (a self-check).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
from collections import deque


class DelayProxy:
    def __init__(self, target_port: int, one_way: float = 0.010, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.one_way = one_way
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("delay proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for sock_writer in (writer, up_writer):
            sock = sock_writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read as it comes; write each chunk when it is due (arrival + one_way), in order."""
        queue: deque[tuple[float, bytes]] = deque()
        arrived = asyncio.Event()
        done = False

        async def deliver() -> None:
            while True:
                while not queue:
                    if done:
                        return
                    arrived.clear()
                    await arrived.wait()
                due, data = queue.popleft()
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                queue.append((time.monotonic() + self.one_way, data))
                arrived.set()
            done = True
            arrived.set()
            await sender
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            sender.cancel()

    def close(self) -> None:
        def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            self._loop.stop()

        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(stop)
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self._loop.close()

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure_round_trip(port: int, count: int = 20) -> float:
    """Median seconds for NOOP → 250 through the connection (after the greeting)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(1024)
        times = []
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(b"NOOP\r\n")
            sock.recv(1024)
            times.append(time.perf_counter() - start)
        sock.sendall(b"QUIT\r\n")
    times.sort()
    return times[len(times) // 2]


if __name__ == "__main__":
    with DelayProxy(int(sys.argv[1])) as proxy:
        rtt = measure_round_trip(proxy.port)
        print(f"round trip through the proxy: {rtt * 1000:.1f} ms")
