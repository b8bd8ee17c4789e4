"""The WebSocket transport: a stream of KServe V2 JSON inference requests to one model over one connection, for
browsers and other clients without gRPC.

    ws://host:port/v2/models/<model>/stream            (or /v2/models/<model>/versions/<version>/stream)
    each message in:  {"id": "7", "inputs": [...], "outputs": [...], "parameters": {...}}   (a V2 infer request)
    each message out: the V2 infer response, or {"id": "7", "error": "<one line>"}, in the order the requests came

Requests run concurrently (so they can share batches) and are answered in order, as gRPC's ModelStreamInfer does; a
bad request gets its error message and the stream goes on; a message larger than the model's inputs can fill (HTTP's
413) is refused unparsed, so its error, in its place, names no id. Stateful models take `sequence_id`, `sequence_start`
and `sequence_end` in `parameters`; a connection's steps reach the model in the order they were sent. With an auth
token set, the handshake needs `Authorization: Bearer <token>`; without it the connection is refused (403).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from forwardpass.errors import ForwardpassError, InputError, PayloadTooLarge
from forwardpass.server.codec import decode_infer_request, decode_json, encode_infer_response, encode_json
from forwardpass.server.guard import RequestGuard, off_loop, one_line
from forwardpass.server.streams import in_order
from forwardpass.server.types import InferRequest

if TYPE_CHECKING:
    from forwardpass.server.dataplane import DataPlane
    from forwardpass.server.limits import RequestLimits

__all__ = ["stream_routes"]

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008  # the WebSocket close code for a refused handshake


def stream_routes(dataplane: DataPlane, guard: RequestGuard) -> list[BaseRoute]:
    """The stream endpoints; each checks the handshake's token itself (the HTTP token check passes WebSockets by)."""
    stream = _Stream(dataplane, guard)
    return [
        WebSocketRoute("/v2/models/{model}/stream", stream.serve),
        WebSocketRoute("/v2/models/{model}/versions/{version}/stream", stream.serve),
    ]


class _Stream:
    def __init__(self, dataplane: DataPlane, guard: RequestGuard) -> None:
        self.dataplane = dataplane
        self.guard = guard

    async def serve(self, websocket: WebSocket) -> None:
        if not self.guard.access.open:
            given = websocket.headers.get("authorization")
            try:
                self.guard.access.check(given.encode() if given is not None else None, control=False)
            except ForwardpassError:
                await websocket.close(POLICY_VIOLATION)
                return
        await websocket.accept()
        name = websocket.path_params["model"]
        version = websocket.path_params.get("version")
        client = websocket.client.host if websocket.client is not None else ""
        try:
            decoded = self._decoded(websocket, name, version, client)
            answers = in_order(decoded, lambda request: self._answer(name, version, request))
            async with contextlib.aclosing(answers):
                async for answer in answers:
                    await websocket.send_text(answer.decode())
        except WebSocketDisconnect:
            pass

    async def _decoded(
        self, websocket: WebSocket, name: str, version: str | None, client: str
    ) -> AsyncIterator[InferRequest | bytes]:
        """Each message decoded, or the error answer it gets, one message after another: a large message is decoded
        in a worker thread, and a small one sent after it must not reach the model first (a sequence's steps)."""
        async for body in _messages(websocket):
            yield await self._decode(name, version, body, client)

    async def _decode(self, name: str, version: str | None, body: bytes, client: str) -> InferRequest | bytes:
        try:
            limits = self.dataplane.limits(name, version)  # counts its own failure
        except ForwardpassError as error:
            return _error(_request_id(body), one_line(error))
        try:
            limits.check_size(len(body))
            request = await off_loop(len(body), _decode, body, limits)
        except PayloadTooLarge as error:
            self.dataplane.metrics.failed(limits.model, limits.version, error)
            return _error(None, one_line(error))
        except ForwardpassError as error:
            self.dataplane.metrics.failed(limits.model, limits.version, error)  # the data plane counts only its own
            return _error(_request_id(body), one_line(error))
        request.client = client
        return request

    async def _answer(self, name: str, version: str | None, request: InferRequest | bytes) -> bytes:
        """The request's answer. Tasks start in the order they are made, and the data plane submits a sequence's step
        before its first await: steps reach the model in the order they were sent."""
        if isinstance(request, bytes):
            return request
        try:
            with self.guard.admitted():
                response = await self.dataplane.infer(name, version, request)
            return encode_infer_response(response, request)[0]
        except ForwardpassError as error:
            text = one_line(error)
        except Exception:
            log.exception("WebSocket stream request %r to model '%s' failed", request.id, name)
            text = "internal error; see the server log"
        return _error(request.id, text)


async def _messages(websocket: WebSocket) -> AsyncIterator[bytes]:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        yield message.get("bytes") or (message.get("text") or "").encode()


def _decode(body: bytes, limits: RequestLimits) -> InferRequest:
    request = decode_infer_request(body, None, limits)
    if request.parameters.get("binary_data_output") is True or any(out.binary for out in request.outputs or ()):
        raise InputError("over WebSocket every output is JSON: leave out binary_data / binary_data_output")
    return request


def _request_id(body: bytes) -> Any:
    """The message's "id", when it is a JSON object with one: an answer to a bad request still names it."""
    try:
        document = decode_json(body)
    except ForwardpassError:
        return None
    return document.get("id") if isinstance(document, dict) else None


def _error(request_id: Any, text: str) -> bytes:
    return encode_json({"id": request_id, "error": text} if request_id is not None else {"error": text})
