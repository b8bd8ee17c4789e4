"""A minimal stand-in V2 server that counts what it serves, and a sampler of a server's own count over time: the
reference the load generator's figures are checked against (shared by the measure and CLI tests)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import orjson

METADATA = {"name": "standin", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": []}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class StandIn:
    """A keep-alive HTTP/1.1 server that answers V2 metadata and infer requests and counts the infer requests."""

    port: int = 0
    served: int = 0
    bodies: list[bytes] = field(default_factory=list)
    arrivals: list[tuple[int, float]] = field(default_factory=list)  # (connection, perf_counter) per infer request
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                match = re.search(rb"(?i)content-length: *(\d+)", head)
                body = await reader.readexactly(int(match.group(1))) if match else b""
                path = head.split(b" ")[1].decode()
                if path == "/metrics":
                    answer = f"standin_requests_total {self.served}\n".encode()
                elif path.endswith("/infer"):
                    self.served += 1
                    self.arrivals.append((connection, time.perf_counter()))
                    if len(self.bodies) < 3:
                        self.bodies.append(body)
                    answer = b'{"outputs": []}'
                elif path == "/v2/models/standin":
                    answer = orjson.dumps(METADATA)
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@contextlib.contextmanager
def standin_server() -> Iterator[StandIn]:
    server = StandIn()
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        server.port = listener.sockets[0].getsockname()[1]
        started.set()
        async with listener:
            await stop.wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert started.wait(10)
    yield server
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout=10)
    loop.close()


class Sampler:
    """Reads the server's own request count every 20 ms, in a thread, while the load runs."""

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), self.read()))
            self.stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def rate(self, before: float, warmups: int) -> tuple[float, float]:
        """(requests served after the warm-ups, per second of the server's own timeline; how many)."""
        final = self.samples[-1][1]
        started = next((t, c) for t, c in self.samples if c > before + warmups)
        ended = next(t for t, c in self.samples if c == final)
        return (final - started[1]) / (ended - started[0]), final - before - warmups
