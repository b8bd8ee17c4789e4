"""uvicorn's httptools protocol with the per-connection limits uvicorn has no option for (its h11 protocol has a
header size limit, but is several times slower; httptools buffers headers of any size and waits for them forever):

- a connection cap: past `max_connections` open connections a new one is answered 503 and closed;
- a header deadline: a request's line and headers must arrive within `header_timeout_s` of the connection opening
  (or of the request's first byte), else 408 and the connection closes — slowloris holds nothing for long;
- header limits: more than MAX_HEADER_BYTES of request line and headers, or more than MAX_HEADERS headers, is
  answered 431 and the connection closes.

The body has its own deadline, in the request guard (`forwardpass.server.guard`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from forwardpass.server.codec import encode_json

__all__ = ["MAX_HEADERS", "MAX_HEADER_BYTES", "limited_protocol"]

MAX_HEADER_BYTES = 32 * 1024  # nginx's default is 4 x 8 KB, Node's 16 KB
MAX_HEADERS = 100  # Apache's LimitRequestFields


class _TooManyHeaders(Exception):
    pass


class _LimitedHttp(HttpToolsProtocol):
    max_connections = 0
    header_timeout_s = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._headers = 0
        self._too_large = False
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(503, f"the server has {self.max_connections} connections open, its limit; retry later")
            return
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self._refuse(431, f"request line and headers are over the limit of {MAX_HEADER_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._headers = True, 0, 0
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_late)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        if self._headers > MAX_HEADERS:
            self._too_large = True
            raise _TooManyHeaders  # httptools stops parsing; uvicorn answers through send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse(431, f"a request may have at most {MAX_HEADERS} headers")
        else:
            super().send_400_response(msg)

    def _head_late(self) -> None:
        self._head_deadline = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, f"the request line and headers did not arrive within {self.header_timeout_s:g} s")

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _refuse(self, status: int, message: str) -> None:
        body = encode_json({"error": message})
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def limited_protocol(max_connections: int, header_timeout_s: float) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's `http=` option, with these limits."""
    return type(
        "LimitedHttp", (_LimitedHttp,), {"max_connections": max_connections, "header_timeout_s": header_timeout_s}
    )
