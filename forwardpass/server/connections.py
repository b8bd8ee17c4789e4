"""uvicorn's httptools protocol with the per-connection limits uvicorn has no option for (its h11 protocol has a
header size limit, but is several times slower; httptools buffers headers of any size and waits for them forever):

- a connection cap: past `max_connections` open connections, or `max_connections_per_client` from one host, a new
  one is answered 503 and closed;
- deadlines: a request's line and headers must arrive within `header_timeout_s` of the connection opening (or of
  the request's first byte), and its body within `body_timeout_s` of the headers, else 408 and the connection
  closes — slowloris, and a body declared at 1,000 bytes that sends 5, hold nothing for long;
- header limits: more than MAX_HEADER_BYTES of request line and headers, or more than MAX_HEADERS headers, is
  answered 431 and the connection closes;
- a dropped connection reaches the request it is running: uvicorn tells only the last request it parsed, so a
  pipelined one then running wrote to the closed socket (a traceback logged per request of a client gone).

Deadlines cost a float per request: `enforce_deadlines` looks over the open connections a few times a second
rather than arming a timer per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Set
from typing import Any

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from forwardpass.server.codec import encode_json

__all__ = ["MAX_HEADERS", "MAX_HEADER_BYTES", "enforce_deadlines", "limited_protocol"]

MAX_HEADER_BYTES = 32 * 1024  # nginx's default is 4 x 8 KB, Node's 16 KB
MAX_HEADERS = 100  # Apache's LimitRequestFields
_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class _HeadTooLarge(Exception):
    pass


class _LimitedHttp(HttpToolsProtocol):
    max_connections = 0
    max_connections_per_client = 0
    header_timeout_s = 0.0
    body_timeout_s = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self.deadline: float | None = None  # loop time by which the request's head (or body) must have arrived
        self._waiting_for = "the request line and headers"
        self._head_refusal: str | None = None  # why the head just parsed is refused (431)
        self._running: RequestResponseCycle | None = None  # the request whose answer is in progress

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._running is not None and not self._running.response_complete:
            self._running.disconnected = True
            self._running.message_event.set()
        super().connection_lost(exc)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(503, f"the server has {self.max_connections} connections open, its limit; retry later")
            return
        if self.client is not None and self._same_client() > self.max_connections_per_client:
            message = f"this client has {self.max_connections_per_client} connections open, its limit"
            self._refuse(503, message + " (max_connections_per_client); close one or retry later")
            return
        self.deadline = self.loop.time() + self.header_timeout_s

    def _same_client(self) -> int:
        """Open connections from this one's host, WebSockets included (uvicorn's connections after the upgrade): a
        WebSocket has no deadline once open, so without this cap one host's idle WebSockets held every connection
        and every other client got 503. A scan at connection time only: kept-alive connections pay it once."""
        host = self.client[0] if self.client is not None else None
        return sum(1 for connection in self.connections if (getattr(connection, "client", None) or ("",))[0] == host)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self._refuse(431, f"request line and headers are over the limit of {MAX_HEADER_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        if self.deadline is None:
            self.deadline = self.loop.time() + self.header_timeout_s
            self._waiting_for = "the request line and headers"

    def on_headers_complete(self) -> None:
        self._in_head = False
        # counted once they are in: while they arrive, data_received bounds the bytes of a head spread over reads;
        # a head read whole at once is measured here (data_received cannot tell where in a read its body starts)
        if len(self.headers) > MAX_HEADERS:
            self._head_refusal = f"a request may have at most {MAX_HEADERS} headers"
        elif len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > MAX_HEADER_BYTES:
            self._head_refusal = f"request line and headers are over the limit of {MAX_HEADER_BYTES} bytes"
        if self._head_refusal is not None:
            raise _HeadTooLarge  # httptools stops parsing; uvicorn answers via send_400_response
        self.deadline = self.loop.time() + self.body_timeout_s
        self._waiting_for = "the request body"
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.deadline = None
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what its parser refuses: in the JSON error shape (its own is plain text)."""
        if self._head_refusal is not None:
            self._refuse(431, self._head_refusal)
        else:
            self._refuse(400, "the request is not valid HTTP/1.1: its request line or headers do not parse")

    def expire(self) -> None:
        """Past the deadline: 408 (unless the answer has begun) and close."""
        self.deadline = None
        if self.transport.is_closing():
            return
        timeout = self.header_timeout_s if self._in_head else self.body_timeout_s
        if self.cycle is None or not self.cycle.response_started:
            self._refuse(408, f"{self._waiting_for} did not arrive within {timeout:g} s")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        if self.cycle is not None:
            self.cycle.keep_alive = False
        body = encode_json({"error": message})
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()


def limited_protocol(
    max_connections: int, max_connections_per_client: int, header_timeout_s: float, body_timeout_s: float
) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's `http=` option, with these limits (deadlines need `enforce_deadlines`)."""
    limits = {
        "max_connections": max_connections,
        "max_connections_per_client": max_connections_per_client,
        "header_timeout_s": header_timeout_s,
        "body_timeout_s": body_timeout_s,
    }
    return type("LimitedHttp", (_LimitedHttp,), limits)


async def enforce_deadlines(connections: Set[Any], interval_s: float) -> None:
    """Forever: every `interval_s`, expire the connections (uvicorn's server_state.connections) past their deadline."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        now = loop.time()
        for connection in [c for c in connections if isinstance(c, _LimitedHttp)]:
            if connection.deadline is not None and now > connection.deadline:
                connection.expire()
