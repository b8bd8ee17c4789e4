"""What every gRPC call passes from the moment grpc accepts it, before its request message has arrived, so that calls
that never send one cannot hold the server's call slots (`max_concurrent_requests`, a thread each) and lock every
client out — health checks included:

- a cap per client: one client (its host, as HTTP and sequence ids name it) holds at most `per_client` calls open at
  once; a further call is refused RESOURCE_EXHAUSTED at once, naming the cap, and other clients keep their share;
- a deadline for the first request message: a call whose first message has not arrived `first_message_s` after grpc
  accepted it is cancelled, as HTTP ends a body that does not arrive within `body_timeout_s`. A stream that has sent
  one is never timed out: it lives for as long as its client keeps it.

grpcio's synchronous server keeps a call whose request is one message in one of its threads until that message
arrives, and runs the method's handler only then, out of anyone's sight before. So the gate (a server interceptor,
wrapping the health and reflection services too) serves every method as request-streaming: its handler runs when
the call is accepted, reads the first message itself, then calls the method's own handler with it.

The deadline costs a dict entry per call: one thread looks over the calls waiting for a first message a few times
a second, rather than a timer per call (as HTTP's `enforce_deadlines` does).
"""

from __future__ import annotations

import contextvars
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, Protocol

import grpc

from forwardpass.errors import ERROR_CLASS_HEADER, ClientQuotaExceeded, ForwardpassError
from forwardpass.server.guard import one_line

__all__ = ["CallGate", "Context", "calling_client", "peer_host"]

# The calling client's host, set by the gate for each call (in the call's own context, which the coroutines a handler
# runs on the event loop copy): whose sequence ids a request uses, and whose calls count against its cap.
calling_client: contextvars.ContextVar[str] = contextvars.ContextVar("grpc_calling_client", default="")
NOTHING = object()  # what a call whose client sent no request message has instead


class Context(Protocol):
    """The part of grpc.ServicerContext used by the gate and the handlers."""

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn: ...

    def cancel(self) -> None: ...

    def add_callback(self, callback: Callable[[], object]) -> bool: ...

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str]]) -> None: ...

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None: ...

    def code(self) -> grpc.StatusCode | None: ...

    def peer(self) -> str: ...


def peer_host(peer: str) -> str:
    """grpc's peer ("ipv4:127.0.0.1:5123", "ipv6:[::1]:5123") as HTTP names the same client ("127.0.0.1", "::1"):
    the client a sequence id belongs to, whose open sequences count against one share on every transport."""
    kind, _, address = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    return address.rpartition(":")[0].strip("[]")


class CallGate(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc's stubs leave the base class untyped
    """The cap per client and the first-message deadline over every method of a server (`interceptors=[gate]`);
    `refused` counts a refusal. `start` starts the deadline's thread, `stop` ends it."""

    def __init__(self, per_client: int, first_message_s: float, refused: Callable[[ForwardpassError], None]) -> None:
        self._per_client = per_client
        self._first_message_s = first_message_s
        self._refused = refused
        self._open: dict[str, int] = {}  # calls open per client host
        self._open_lock = threading.Lock()
        self._waiting: dict[Context, float] = {}  # calls waiting for a first message: monotonic deadline
        self._gated: dict[str, grpc.RpcMethodHandler] = {}  # per method found: its handler, gated
        self._stopped = threading.Event()
        self._watch = threading.Thread(target=self._cancel_late_calls, name="forwardpass-grpc-deadlines", daemon=True)

    def start(self) -> None:
        self._watch.start()

    def stop(self) -> None:
        self._stopped.set()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        gated = self._gated.get(details.method)
        if gated is None:
            handler = continuation(details)
            if handler is None:  # no such method: grpc answers UNIMPLEMENTED (and nothing is kept per unknown name)
                return None
            gated = self._gated[details.method] = self._gate(handler)
        return gated

    def _gate(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        behavior: Callable[[Any, Context], Any] = (
            handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        )
        read = self._requests if handler.request_streaming else self._request

        if handler.response_streaming:

            def streaming(requests: Iterator[Any], context: Context) -> Iterator[Any]:
                client = self._enter(context)
                try:
                    yield from behavior(read(requests, context), context)
                finally:
                    self._leave(client)

            return grpc.stream_stream_rpc_method_handler(
                streaming, handler.request_deserializer, handler.response_serializer
            )

        def unary(requests: Iterator[Any], context: Context) -> Any:
            client = self._enter(context)
            try:
                return behavior(read(requests, context), context)
            finally:
                self._leave(client)

        return grpc.stream_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)

    def _enter(self, context: Context) -> str:
        """The call's client, its call counted; refused (RESOURCE_EXHAUSTED) when that client has its cap open."""
        client = peer_host(context.peer())
        with self._open_lock:
            held = self._open.get(client, 0)
            if held < self._per_client:
                self._open[client] = held + 1
                calling_client.set(client)
                return client
        error = ClientQuotaExceeded(
            f"this client has {held} gRPC calls open, its limit (max_grpc_calls_per_client); end one or retry later"
        )
        self._refused(error)
        context.set_trailing_metadata(((ERROR_CLASS_HEADER, type(error).__name__),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, one_line(error))

    def _leave(self, client: str) -> None:
        with self._open_lock:
            held = self._open[client] - 1
            if held:
                self._open[client] = held
            else:
                del self._open[client]

    def _first(self, requests: Iterator[Any], context: Context) -> Any:
        """The call's first request, awaited under the deadline (a late call is cancelled, and reading it raises
        grpc's own error for a cancelled call); NOTHING when the client closed its side without sending one."""
        self._waiting[context] = time.monotonic() + self._first_message_s
        try:
            return next(requests, NOTHING)
        finally:
            del self._waiting[context]

    def _requests(self, requests: Iterator[Any], context: Context) -> Iterator[Any]:
        first = self._first(requests, context)
        return iter(()) if first is NOTHING else itertools.chain((first,), requests)

    def _request(self, requests: Iterator[Any], context: Context) -> Any:
        first = self._first(requests, context)
        if first is NOTHING:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request message")
        return first

    def _cancel_late_calls(self) -> None:
        interval_s = min(0.25, self._first_message_s / 4)
        while not self._stopped.wait(interval_s):
            now = time.monotonic()
            for context, deadline in self._waiting.copy().items():
                if deadline < now:
                    context.cancel()
