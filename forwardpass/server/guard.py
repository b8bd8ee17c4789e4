"""What every HTTP route that takes a body shares: the body reader, admission and the error guard — one place.

- `body`: the request body, decompressed, never more than a size limit of it (its deadline, 408, is the
  connection's: `forwardpass.server.connections`), so a client that declares 1,000 bytes and sends 5 ties up
  nothing but its own socket for `body_timeout_s`.
- `admitted`: a request counts as in progress only once its body has arrived; past `max_concurrent_requests`
  it is refused (503). A streamed answer keeps its slot until the stream ends (`held`).
- `guarded`: a forwardpass error becomes its status with a one-line JSON body; anything else is a bug, logged and
  answered 500 in the same JSON form, never a traceback or plain text.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope

from forwardpass.errors import (
    ERROR_CLASS_HEADER,
    ForwardpassError,
    InputError,
    Overloaded,
    PayloadTooLarge,
    Unauthenticated,
)
from forwardpass.server.access import Access
from forwardpass.server.codec import encode_json

if TYPE_CHECKING:
    from forwardpass.server.metrics import Metrics
    from forwardpass.server.settings import ServerSettings

__all__ = [
    "MAX_ERROR_CHARS",
    "OFFLOAD_BYTES",
    "RequestGuard",
    "answer_to",
    "error_response",
    "off_loop",
    "one_line",
]

log = logging.getLogger(__name__)

JSON = "application/json"
Endpoint = Callable[[Request], Awaitable[Response]]
# An error message is one line, never a megabyte of the request echoed back.
MAX_ERROR_CHARS = 1000
# Bodies larger than this are decoded in a worker thread: parsing a 3 MB JSON body takes ~10 ms, and the event loop
# must stay free for every other request (health checks included); below it the thread hop costs more than the parse.
OFFLOAD_BYTES = 64 * 1024
T = TypeVar("T")


def error_response(error: ForwardpassError) -> Response:
    headers = {ERROR_CLASS_HEADER: type(error).__name__}  # lets forwardpass.client raise the very same class
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, PayloadTooLarge):
        headers["Connection"] = "close"  # the rest of the body is not worth reading
    return Response(encode_json({"error": one_line(error)}), error.http_status, headers, JSON)


def answer_to(
    error: Exception, scope: Scope, answer: Callable[[ForwardpassError], Response] = error_response
) -> Response:
    """The answer to a request that failed with `error`: a forwardpass error's own status; anything else is a bug,
    logged with its traceback and answered 500 in the same one-line JSON form."""
    if isinstance(error, ForwardpassError):
        return answer(error)
    log.error("unexpected error answering %s %s", scope["method"], scope["path"], exc_info=error)
    return answer(ForwardpassError("internal server error (logged)"))


def one_line(error: BaseException) -> str:
    """The error's message on one line, its line breaks shown as \\n: a break is most often in a name the client
    sent (a model 'a\\nb'), and cutting there left a message that named nothing ("model 'a")."""
    text = "\\n".join(str(error).splitlines()) or type(error).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


async def off_loop(size: int, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` on the event loop for a small body of `size` bytes, in a worker thread for a large one."""
    if size > OFFLOAD_BYTES:
        return await asyncio.to_thread(work, *args)
    return work(*args)


class RequestGuard:
    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.access = Access(settings)  # who may call what: checked by the transports before any route
        self.in_flight = 0

    async def body(self, request: Request, limit: int | None = None) -> bytes:
        """The request body, decompressed; never more than `limit` (default: the server's) of it; 408 when it
        does not arrive within the server's body timeout."""
        headers = request.headers
        return await self.read(request.receive, headers.get("content-length"), headers.get("content-encoding"), limit)

    async def read(
        self, receive: Receive, declared: str | None, encoding: str | None, limit: int | None = None
    ) -> bytes:
        """`body` on raw ASGI: the messages of `receive`, given the request's Content-Length (`declared`) and
        Content-Encoding headers."""
        limit = min(limit or self.settings.max_request_bytes, self.settings.max_request_bytes)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit}")
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the client left, or the body deadline
                # (408, forwardpass.server.connections) closed the connection
                raise InputError("the client disconnected before sending the whole request body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if encoding is None or encoding == "identity":
            return body
        return _decompress(body, encoding, limit)

    def admitted(self) -> _Admission:
        """Counts a request (whose body has arrived) as in progress; 503 when the server has its limit already."""
        if self.in_flight >= self.settings.max_concurrent_requests:
            error = Overloaded(f"the server has {self.in_flight} requests in progress, its limit; retry later")
            self.metrics.failed(None, None, error)
            raise error
        return _Admission(self)

    def guarded(
        self,
        endpoint: Endpoint,
        answer: Callable[[ForwardpassError], Response] = error_response,
        *,
        admits: bool = False,
    ) -> Endpoint:
        """`endpoint` with every error answered as `answer` says. `admits`: for endpoints with no data plane of their
        own (token generation): the guard reads the body first (`request.state.body`), then admits the request —
        a streamed answer keeps its slot until its last chunk — and counts failures (on the model named by
        `request.state.served`, if any)."""

        async def guarded(request: Request) -> Response:
            try:
                if not admits:
                    return await endpoint(request)
                request.state.body = await self.body(request)
                return await self._admitted_call(endpoint, request)
            except Exception as exc:
                if admits and isinstance(exc, ForwardpassError):
                    served = getattr(request.state, "served", None)
                    self.metrics.failed(served.name if served else None, served.version if served else None, exc)
                return answer_to(exc, request.scope, answer)

        return guarded

    async def _admitted_call(self, endpoint: Endpoint, request: Request) -> Response:
        admission = self.admitted()
        admission.__enter__()
        try:
            response = await endpoint(request)
        except BaseException:
            admission.__exit__()
            raise
        if not isinstance(response, StreamingResponse):
            admission.__exit__()
            return response
        chunks = response.body_iterator

        async def holding() -> AsyncIterator[str | bytes | memoryview]:
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                admission.__exit__()

        response.body_iterator = holding()
        return response


class _Admission:
    """Counts a request as in progress while it is queued, run and encoded."""

    __slots__ = ("_guard",)

    def __init__(self, guard: RequestGuard) -> None:
        self._guard = guard

    def __enter__(self) -> None:
        self._guard.in_flight += 1

    def __exit__(self, *exc_info: object) -> None:
        self._guard.in_flight -= 1


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    formats = {"gzip": 31, "deflate": 15}  # zlib's wbits: gzip header, zlib header ("deflate" means zlib in HTTP)
    wbits = formats.get(encoding.strip().lower())
    if wbits is None:
        raise InputError(f"unsupported Content-Encoding '{encoding}': send gzip, deflate or identity")
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error:
        raise InputError(f"request body is not valid {encoding} data") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise PayloadTooLarge(f"request body decompresses to over the limit of {limit} bytes")
    return data
