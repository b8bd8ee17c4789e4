"""HTTP transport: KServe V2 REST with Triton's extensions, TF Serving's predict API, the pipeline endpoint, /metrics.

Routes are thin: read the body (never more than the size limit), decode with `codec`, call the data plane, encode.
Every forwardpass error becomes its status with a V2 error body `{"error": "<one line>"}`; anything else is a bug,
logged and answered 500. With a token set, every path but the two health checks needs
`Authorization: Bearer <token>` (liveness and readiness probes carry no credentials); the repository API's rule
(an admin token) is `forwardpass.server.access`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from forwardpass.errors import ForwardpassError, InputError, MethodNotAllowed
from forwardpass.server.access import CONTROL_PREFIX, Access
from forwardpass.server.codec import (
    decode_infer_request,
    decode_json,
    decode_tf_request,
    encode_infer_response,
    encode_json,
    encode_tf_response,
)
from forwardpass.server.dataplane import IGNORED_UNLOAD_PARAMETERS, DataPlane, unoffered
from forwardpass.server.guard import OFFLOAD_BYTES, RequestGuard, answer_to, error_response, off_loop
from forwardpass.server.limits import RequestLimits, clip
from forwardpass.server.metrics import CONTENT_TYPE
from forwardpass.server.openai import OPENAI_PATHS, openai_error
from forwardpass.server.types import InferRequest, Tensor
from forwardpass.server.ui import PAGE_PATHS
from forwardpass.tensor import DataType

MAX_DRAWN_PIXELS = 50_000_000  # the image preprocessing's default limit: the model has decoded it already
# A repository call's options are a few fields: a body of the server's 64 MiB held the event loop (JSON parsing
# holds the GIL) for half a second, and the liveness probe with it
OPTIONS_BYTES = 64 * 1024

__all__ = [
    "INFER_PATHS",
    "OPEN_PATHS",
    "InferFirst",
    "V2Infer",
    "create_app",
    "error_response",
    "infer_target",
    "v2_routes",
]

log = logging.getLogger(__name__)
access_log = logging.getLogger("forwardpass.access")

# Where Triton serves the features this server does not offer (forwardpass.server.dataplane.UNOFFERED): a path
# starting with the first, or ending with the second ("/v2/models/<m>/trace/setting"), is refused naming it.
UNOFFERED_PATHS = {
    ("/v2/systemsharedmemory", ""): "system shared memory",
    ("/v2/cudasharedmemory", ""): "CUDA shared memory",
    ("/v2/", "/trace/setting"): "trace settings",
    ("/v2/logging", ""): "log settings",
}
INFER_PATHS = ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer")
_MODELS, _INFER = "/v2/models/", "/infer"
_JSON_TYPE = (b"content-type", b"application/json")
_BINARY_TYPE = (b"content-type", b"application/octet-stream")
_HEADER_LENGTH = b"inference-header-content-length"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", *PAGE_PATHS})  # the page holds no data: see ui
JSON = "application/json"


def v2_routes(dataplane: DataPlane, guard: RequestGuard) -> list[BaseRoute]:
    """The V2 / TF Serving routes and /metrics, each behind the request guard."""
    api = _Api(dataplane, guard)
    table = [
        ("/v2/health/live", api.live, "GET"),
        ("/v2/health/ready", api.ready, "GET"),
        ("/v2", api.server_metadata, "GET"),
        ("/v2/models/stats", api.statistics, "GET"),
        ("/v2/models/{model}", api.model_metadata, "GET"),
        ("/v2/models/{model}/versions/{version}", api.model_metadata, "GET"),
        ("/v2/models/{model}/ready", api.model_ready, "GET"),
        ("/v2/models/{model}/versions/{version}/ready", api.model_ready, "GET"),
        ("/v2/models/{model}/config", api.model_config, "GET"),
        ("/v2/models/{model}/versions/{version}/config", api.model_config, "GET"),
        ("/v2/models/{model}/stats", api.statistics, "GET"),
        ("/v2/models/{model}/versions/{version}/stats", api.statistics, "GET"),
        ("/v2/models/{model}/predict", api.predict, "POST"),
        ("/v2/models/{model}/versions/{version}/predict", api.predict, "POST"),
        ("/v2/repository/index", api.repository_index, "POST"),
        ("/v2/repository/models/{model}/load", api.load, "POST"),
        ("/v2/repository/models/{model}/unload", api.unload, "POST"),
        ("/v1/models/{model}:predict", api.tf_predict, "POST"),
        ("/v1/models/{model}/versions/{version}:predict", api.tf_predict, "POST"),
        ("/v1/models/{model}", api.tf_status, "GET"),
        ("/metrics", api.metrics, "GET"),
    ]
    infer = V2Infer(api)  # its own error guard: see V2Infer
    return [
        *(Route(path, infer, methods=["POST"]) for path in INFER_PATHS),
        *(Route(path, guard.guarded(endpoint), methods=[method]) for path, endpoint, method in table),
    ]


def create_app(routes: Sequence[BaseRoute], guard: RequestGuard) -> ASGIApp:
    """One router for every route (HTTP and WebSocket), V2 infer in front of it, all behind the token check and the
    access log."""
    router = Router(routes=list(routes), default=_not_found)
    infer = next(r.endpoint for r in router.routes if isinstance(r, Route) and isinstance(r.endpoint, V2Infer))
    app: ASGIApp = InferFirst(JsonMethodRefusals(router), infer)
    if not guard.access.open:
        app = BearerAuth(app, guard.access, OPEN_PATHS)
    if guard.settings.access_log:
        app = AccessLog(app)
    return app


class InferFirst:
    """V2 infer straight to its endpoint, every other request to the router. Infer carries the load, and Starlette's
    layers (route matching, the exception wrappers, Request and Response objects) cost ~27 µs of a request's ~120
    µs of server CPU on the tiny MLP; the router keeps the infer routes for /openapi.json and its 405 to other
    methods."""

    def __init__(self, app: ASGIApp, infer: V2Infer) -> None:
        self.app = app
        self._infer = infer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = infer_target(scope["path"])
            if target is not None:
                await self._infer.serve(scope, receive, send, *target)
                return
        await self.app(scope, receive, send)


class JsonMethodRefusals:
    """The router, with its refusal of a known path asked with a method it does not take (405) in the JSON error
    shape of every other error (Triton's 405 is JSON too; OpenAI's paths get OpenAI's), its Allow header kept.
    Starlette's routes answer that in plain text, unless the scope names an application: then they raise it as an
    HTTPException, for the application to answer, as this does."""

    def __init__(self, app: Router) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self.app
        try:
            await self.app(scope, receive, send)
        except HTTPException as exc:
            if exc.status_code != 405 or exc.headers is None:
                raise
            allowed = ", ".join(sorted(exc.headers["Allow"].split(", ")))  # Starlette's are a set: in any order
            path = scope["path"]
            error = MethodNotAllowed(f"{scope['method']} is not allowed on {clip(path)}; use {allowed}")
            response = _error_answer(path)(error)
            response.headers["Allow"] = allowed
            await response(scope, receive, send)


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version) of a path that INFER_PATHS match, as the router matches them (a name is any non-empty
    segment); None for any other path."""
    if not path.startswith(_MODELS) or not path.endswith(_INFER):
        return None
    parts = path[len(_MODELS) : -len(_INFER)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


class V2Infer:
    """The V2 infer endpoint on raw ASGI, its response headers pre-encoded. The guarantees are the guard's as on
    every route -- the body reader with its limits, admission, a forwardpass error answered with its status in one
    JSON line, anything else logged and answered 500 -- by the same functions; the token check and the access log
    wrap it as they wrap the router."""

    def __init__(self, api: _Api) -> None:
        self._api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """As the router's endpoint: for a path that the router matches and `infer_target` does not (one ending
        in a line break, which the route's `$` lets through)."""
        params = scope["path_params"]
        await self.serve(scope, receive, send, params["model"], params.get("version"))

    async def serve(self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None) -> None:
        try:
            content, header_length = await self._api.infer(scope, receive, name, version)
        except Exception as exc:
            await answer_to(exc, scope)(scope, receive, send)
            return
        if header_length is None:
            headers = [(b"content-length", b"%d" % len(content)), _JSON_TYPE]
        else:
            headers = [(_HEADER_LENGTH, b"%d" % header_length), (b"content-length", b"%d" % len(content)), _BINARY_TYPE]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})


class _Api:
    def __init__(self, dataplane: DataPlane, guard: RequestGuard) -> None:
        self.dataplane = dataplane
        self.guard = guard

    # health and metadata

    async def live(self, request: Request) -> Response:
        return _json({"live": self.dataplane.live()})

    async def ready(self, request: Request) -> Response:
        ready = self.dataplane.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return _json(self.dataplane.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model(request)
        return _json(self.dataplane.model_metadata(name, version))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model(request)
        if self.dataplane.model_ready(name, version):
            return _json({"name": name, "ready": True})
        return _json({"name": name, "ready": False, "error": f"model '{name}' is not ready"}, 404)

    async def model_config(self, request: Request) -> Response:
        name, version = _model(request)
        return _json(self.dataplane.model_config(name, version))

    async def statistics(self, request: Request) -> Response:
        name, version = _model(request) if "model" in request.path_params else (None, None)
        return _json(self.dataplane.model_statistics(name, version))

    async def metrics(self, request: Request) -> Response:
        # drift statistics take tens of milliseconds per model: not on the event loop
        return Response(await asyncio.to_thread(self.dataplane.metrics.exposition), media_type=CONTENT_TYPE)

    # repository

    async def repository_index(self, request: Request) -> Response:
        options = await self._options(request, {"ready"})
        ready = options.get("ready", False)
        if not isinstance(ready, bool):
            raise InputError(f"'ready' must be true or false, got {ready!r}")
        rows = await self.dataplane.repository_index()
        if ready:
            rows = [row for row in rows if row["state"] == "READY"]
        return _json(rows)

    async def load(self, request: Request) -> Response:
        options = await self._options(request, {"parameters"})
        if options.get("parameters"):  # Triton's are 'config' and 'file:<path>': a model given in the request
            given = options["parameters"]
            named = sorted(given) if isinstance(given, dict) else given
            raise InputError(
                f"load parameters {named!r} are not supported: put the config and files in the repository and load "
                "by name"
            )
        await self.dataplane.load_model(request.path_params["model"])
        return _json({})

    async def unload(self, request: Request) -> Response:
        options = await self._options(request, {"parameters"})
        given = options.get("parameters") or {}
        unsupported = sorted(set(given) - IGNORED_UNLOAD_PARAMETERS) if isinstance(given, dict) else given
        if unsupported:
            raise InputError(f"unload parameters {unsupported!r} are not supported")
        await self.dataplane.unload_model(request.path_params["model"])
        return _json({})

    # inference

    async def infer(self, scope: Scope, receive: Receive, name: str, version: str | None) -> tuple[bytes, int | None]:
        """V2 infer on raw ASGI (`V2Infer` serves it): the encoded response and its binary header's length (None:
        JSON)."""
        limits = self.dataplane.limits(name, version)  # an unknown model is a 404 before any byte is read
        declared = encoding = header_length_value = None
        for key, value in reversed(scope["headers"]):  # a header sent twice: its first value, as Headers.get reads
            if key == b"content-length":
                declared = value.decode("latin-1")
            elif key == b"content-encoding":
                encoding = value.decode("latin-1")
            elif key == _HEADER_LENGTH:
                header_length_value = value.decode("latin-1")
        try:  # (not `with self._rejections()`: the request path's every microsecond counts)
            body = await self.guard.read(receive, declared, encoding, limits.max_body_bytes)
            header_length = _header_length(header_length_value)
        except ForwardpassError as exc:
            self._refused(limits, exc)
            raise
        with self.guard.admitted():
            try:
                if len(body) > OFFLOAD_BYTES:
                    infer_request = await asyncio.to_thread(decode_infer_request, body, header_length, limits)
                else:
                    infer_request = decode_infer_request(body, header_length, limits)
            except ForwardpassError as exc:
                self._refused(limits, exc)
                raise
            client = scope.get("client")
            if limits.sequences and client is not None:
                infer_request.client = client[0]
            response = await self.dataplane.infer(name, version, infer_request)
        return encode_infer_response(response, infer_request)

    async def predict(self, request: Request) -> Response:
        """The pipeline endpoint: an image (image/*), a sound file (audio/*), text (text/plain), a JSON record or a JSON
        list of records → the postprocessed answer (a list for a list)."""
        name, version = _model(request)
        limits = self.dataplane.limits(name, version, tensors=False)  # an unknown model: 404 before any byte is read
        with self._rejections(limits):
            body = await self.guard.body(request)
            content_type = request.headers.get("content-type", JSON)
            raw = await off_loop(len(body), _raw_item, content_type, body)
        parameters: dict[str, Any] = {}
        for parameter in ("top_k", "explain"):
            if parameter in request.query_params:
                parameters[parameter] = request.query_params[parameter]
        drawing = request.query_params.get("draw", "").lower() in ("1", "true", "yes")
        if drawing and not isinstance(raw, bytes):
            raise InputError("?draw=true draws on an image: send its bytes (Content-Type image/*)")
        with self.guard.admitted():
            inline = len(body) <= OFFLOAD_BYTES and not isinstance(raw, bytes)
            prediction = await self.dataplane.predict(name, version, raw, parameters, inline=inline)
            if drawing:  # the answer drawn on the image, as a PNG (decoding and drawing take milliseconds)
                assert isinstance(raw, bytes) and isinstance(prediction, dict)
                return Response(await asyncio.to_thread(_drawn_png, raw, prediction), media_type="image/png")
        return Response(encode_json(prediction), media_type=JSON)

    async def tf_predict(self, request: Request) -> Response:
        name, version = _model(request)
        limits = self.dataplane.limits(name, version)
        with self._rejections(limits):
            body = await self.guard.body(request, limits.max_body_bytes)
        with self.guard.admitted():
            with self._rejections(limits):
                arrays, rows = await off_loop(len(body), decode_tf_request, body, limits.specs)
            tensors = [Tensor(key, DataType.from_numpy(value.dtype).name, value) for key, value in arrays.items()]
            response = await self.dataplane.infer(name, version, InferRequest(tensors))
        return Response(encode_tf_response(response, rows), media_type=JSON)

    async def tf_status(self, request: Request) -> Response:
        """TensorFlow Serving's model status, with KServe V1's model readiness ({"name", "ready"}) beside it: both
        protocols share this path, and KServe's SDK reads only "ready"; for a decoder language model, OpenAI's model
        object: OpenAI's GET /v1/models/{id} (the SDK's models.retrieve) shares it too, and a decoder is served by
        that API."""
        name = request.path_params["model"]
        card = self.dataplane.decoder_card(name)
        if card is not None:
            return _json(card)
        metadata = self.dataplane.model_metadata(name)
        ok = {"error_code": "OK", "error_message": ""}
        statuses = [{"version": v, "state": "AVAILABLE", "status": ok} for v in metadata["versions"]]
        return _json({"name": name, "ready": self.dataplane.model_ready(name), "model_version_status": statuses})

    # helpers

    @contextmanager
    def _rejections(self, limits: RequestLimits) -> Iterator[None]:
        """Counts the requests refused before they reach the data plane (which counts its own), on their model."""
        try:
            yield
        except ForwardpassError as exc:
            self._refused(limits, exc)
            raise

    def _refused(self, limits: RequestLimits, error: ForwardpassError) -> None:
        self.dataplane.metrics.failed(limits.model, limits.version, error)

    async def _options(self, request: Request, known: set[str]) -> dict[str, Any]:
        """A repository call's JSON body (empty: no options); a field other than `known` is refused by name."""
        body = await self.guard.body(request, OPTIONS_BYTES)
        if not body.strip():
            return {}
        options = decode_json(body)
        if not isinstance(options, dict):
            raise InputError(f"request body must be a JSON object, got {type(options).__name__}")
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"unknown fields {unknown} in the request body; this call takes {sorted(known)}")
        return options


def _json(value: Any, status: int = 200) -> Response:
    return Response(encode_json(value), status, media_type=JSON)


def _model(request: Request) -> tuple[str, str | None]:
    params = request.path_params
    return params["model"], params.get("version")


def _header_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InputError(f"Inference-Header-Content-Length must be a non-negative integer, got {value!r}")
    return int(value)


def _drawn_png(image: bytes, prediction: dict[str, Any]) -> bytes:
    import io

    from forwardpass.pipeline.draw import draw
    from forwardpass.pipeline.image import decode_image

    buffer = io.BytesIO()
    draw(decode_image(image, MAX_DRAWN_PIXELS), prediction).save(buffer, format="PNG")
    return buffer.getvalue()


def _raw_item(content_type: str, body: bytes) -> object:
    kind = content_type.partition(";")[0].strip().lower()
    if kind.startswith(("image/", "audio/")) or kind == "application/octet-stream":
        return body
    if kind.startswith("text/"):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("text body is not valid UTF-8") from None
    if kind == JSON or kind.endswith("+json"):
        return decode_json(body)
    raise InputError(f"unsupported Content-Type '{kind}': send image/*, audio/*, text/plain or application/json")


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":  # a handshake to no stream: closed, as Starlette's router does
        await WebSocketClose()(scope, receive, send)
        return
    path = scope.get("path", "")
    feature = next((name for (start, end), name in UNOFFERED_PATHS.items() if _spans(path, start, end)), None)
    if feature is not None:
        await error_response(InputError(unoffered(feature)))(scope, receive, send)
        return
    response = Response(encode_json({"error": f"no such endpoint: {scope.get('method')} {path}"}), 404, None, JSON)
    await response(scope, receive, send)


def _error_answer(path: str) -> Callable[[ForwardpassError], Response]:
    """How an error is answered on `path`: OpenAI's shape on its paths (its SDK reads only that), V2's elsewhere."""
    return openai_error if path in OPENAI_PATHS else error_response


def _spans(path: str, start: str, end: str) -> bool:
    return path.startswith(start) and path.endswith(end)


class BearerAuth:
    """Refuses every request outside `open_paths` that `access` does not let through (401 or 403)."""

    def __init__(self, app: ASGIApp, access: Access, open_paths: frozenset[str]) -> None:
        self.app = app
        self._access = access
        self._open = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self._open:
            supplied = next((value for key, value in scope["headers"] if key == b"authorization"), None)
            try:
                self._access.check(supplied, control=scope["path"].startswith(CONTROL_PREFIX))
            except ForwardpassError as error:
                await _error_answer(scope["path"])(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AccessLog:
    """One JSON line per request on the `forwardpass.access` logger: method, path, status, milliseconds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("", 0)
            record = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 3),
                "client": client[0],
            }
            access_log.info(json.dumps(record))
