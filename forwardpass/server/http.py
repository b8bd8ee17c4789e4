"""HTTP transport: KServe V2 REST with Triton's extensions, TF Serving's predict API, the pipeline endpoint, /metrics.

Routes are thin: read the body (never more than the size limit), decode with `codec`, call the data plane, encode.
Every forwardpass error becomes its status with a V2 error body `{"error": "<one line>"}`; anything else is a bug,
logged and answered 500. With an auth token set, every path but the two health checks needs
`Authorization: Bearer <token>` (liveness and readiness probes carry no credentials).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forwardpass.errors import (
    ERROR_CLASS_HEADER,
    ForwardpassError,
    InputError,
    Overloaded,
    PayloadTooLarge,
    Unauthenticated,
)
from forwardpass.server.codec import (
    decode_infer_request,
    decode_json,
    decode_tf_request,
    encode_infer_response,
    encode_json,
    encode_tf_response,
)
from forwardpass.server.dataplane import DataPlane
from forwardpass.server.metrics import CONTENT_TYPE
from forwardpass.server.settings import ServerSettings
from forwardpass.server.types import InferRequest, Tensor
from forwardpass.tensor import DataType

__all__ = ["OPEN_PATHS", "create_http_app", "error_response"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("forwardpass.access")

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
JSON = "application/json"
Endpoint = Callable[[Request], Awaitable[Response]]


def error_response(error: ForwardpassError) -> Response:
    headers = {ERROR_CLASS_HEADER: type(error).__name__}  # lets forwardpass.client raise the very same class
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, PayloadTooLarge):
        headers["Connection"] = "close"  # the rest of an oversized body is not worth reading
    return Response(encode_json({"error": str(error)}), error.http_status, headers, JSON)


def create_http_app(dataplane: DataPlane, settings: ServerSettings, extra_routes: Sequence[BaseRoute] = ()) -> ASGIApp:
    """The V2 / TF Serving routes, then `extra_routes` (token generation), behind the same auth and access log."""
    api = _Api(dataplane, settings)
    table = [
        ("/v2/models/{model}/infer", api.infer, "POST"),
        ("/v2/models/{model}/versions/{version}/infer", api.infer, "POST"),
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
    routes: list[BaseRoute] = [Route(path, _guarded(endpoint), methods=[method]) for path, endpoint, method in table]
    routes.extend(extra_routes)
    app: ASGIApp = Router(routes=routes, default=_not_found)
    if settings.auth_token:
        app = BearerAuth(app, settings.auth_token, OPEN_PATHS)
    if settings.access_log:
        app = AccessLog(app)
    return app


class _Api:
    def __init__(self, dataplane: DataPlane, settings: ServerSettings) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.in_flight = 0

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
        return Response(self.dataplane.metrics.exposition(), media_type=CONTENT_TYPE)

    # repository

    async def repository_index(self, request: Request) -> Response:
        options = await self._options(request)
        rows = self.dataplane.repository_index()
        if options.get("ready") is True:
            rows = [row for row in rows if row["state"] == "READY"]
        return _json(rows)

    async def load(self, request: Request) -> Response:
        options = await self._options(request)
        parameters = options.get("parameters") or {}
        if not isinstance(parameters, dict) or any(key == "config" or key.startswith("file:") for key in parameters):
            raise InputError("load parameters 'config' and 'file:' are not supported; change the repository instead")
        await self.dataplane.load_model(request.path_params["model"])
        return _json({})

    async def unload(self, request: Request) -> Response:
        await self._options(request)
        await self.dataplane.unload_model(request.path_params["model"])
        return _json({})

    # inference

    async def infer(self, request: Request) -> Response:
        name, version = _model(request)
        with await self._admitted(request):
            with self._rejections():
                body = await self._body(request)
                infer_request = decode_infer_request(body, _header_length(request))
            response = await self.dataplane.infer(name, version, infer_request)
        content, header_length = encode_infer_response(response, infer_request)
        if header_length is None:
            return Response(content, media_type=JSON)
        headers = {"Inference-Header-Content-Length": str(header_length)}
        return Response(content, headers=headers, media_type="application/octet-stream")

    async def predict(self, request: Request) -> Response:
        """The pipeline endpoint: an image (image/*), text (text/plain) or a JSON record → the postprocessed answer."""
        name, version = _model(request)
        with await self._admitted(request):
            with self._rejections():
                body = await self._body(request)
                raw = _raw_item(request.headers.get("content-type", JSON), body)
            parameters: dict[str, Any] = {}
            for parameter in ("top_k", "explain"):
                if parameter in request.query_params:
                    parameters[parameter] = request.query_params[parameter]
            prediction = await self.dataplane.predict(name, version, raw, parameters)
        return Response(encode_json(prediction), media_type=JSON)

    async def tf_predict(self, request: Request) -> Response:
        name, version = _model(request)
        with await self._admitted(request):
            with self._rejections():
                body = await self._body(request)
                input_names = [spec["name"] for spec in self.dataplane.model_metadata(name, version)["inputs"]]
                arrays, rows = decode_tf_request(body, input_names)
            tensors = [Tensor(key, DataType.from_numpy(value.dtype).name, value) for key, value in arrays.items()]
            response = await self.dataplane.infer(name, version, InferRequest(tensors))
        return Response(encode_tf_response(response, rows), media_type=JSON)

    async def tf_status(self, request: Request) -> Response:
        name = request.path_params["model"]
        metadata = self.dataplane.model_metadata(name)
        ok = {"error_code": "OK", "error_message": ""}
        statuses = [{"version": v, "state": "AVAILABLE", "status": ok} for v in metadata["versions"]]
        return _json({"model_version_status": statuses})

    # helpers

    async def _admitted(self, request: Request) -> _Admission:
        if self.in_flight >= self.settings.max_concurrent_requests:
            error = Overloaded(f"the server has {self.in_flight} requests in progress, its limit; retry later")
            self.dataplane.metrics.failed(None, None, error)
            await self._drop_body(request)
            raise error
        return _Admission(self)

    @contextmanager
    def _rejections(self) -> Iterator[None]:
        """Counts the requests refused before they reach the data plane (which counts its own)."""
        try:
            yield
        except ForwardpassError as exc:
            self.dataplane.metrics.failed(None, None, exc)
            raise

    async def _body(self, request: Request) -> bytes:
        """The request body, decompressed; never more than the size limit of it."""
        limit = self.settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit}")
        chunks = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
        except ClientDisconnect:
            raise InputError("the client disconnected before sending the whole request body") from None
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding")
        if encoding is None or encoding == "identity":
            return body
        return _decompress(body, encoding, limit)

    async def _drop_body(self, request: Request) -> None:
        """Read a refused request's body (up to the size limit) before answering: an answer sent mid-upload arms the
        keep-alive timer, and a client still uploading when it fires loses the connection and never sees the answer."""
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.settings.max_request_bytes:
                    return
        except ClientDisconnect:
            return

    async def _options(self, request: Request) -> dict[str, Any]:
        body = await self._body(request)
        if not body.strip():
            return {}
        options = decode_json(body)
        if not isinstance(options, dict):
            raise InputError(f"request body must be a JSON object, got {type(options).__name__}")
        return options


class _Admission:
    """Counts a request as in progress while it is read, queued, run and encoded."""

    __slots__ = ("_api",)

    def __init__(self, api: _Api) -> None:
        self._api = api

    def __enter__(self) -> None:
        self._api.in_flight += 1

    def __exit__(self, *exc_info: object) -> None:
        self._api.in_flight -= 1


def _guarded(endpoint: Endpoint) -> Endpoint:
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ForwardpassError as exc:
            return error_response(exc)
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.url.path)
            return Response(encode_json({"error": "internal server error (logged)"}), 500, media_type=JSON)

    return guarded


def _json(value: Any, status: int = 200) -> Response:
    return Response(encode_json(value), status, media_type=JSON)


def _model(request: Request) -> tuple[str, str | None]:
    params = request.path_params
    return params["model"], params.get("version")


def _header_length(request: Request) -> int | None:
    value = request.headers.get("inference-header-content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InputError(f"Inference-Header-Content-Length must be a non-negative integer, got {value!r}")
    return int(value)


def _raw_item(content_type: str, body: bytes) -> object:
    kind = content_type.partition(";")[0].strip().lower()
    if kind.startswith("image/") or kind == "application/octet-stream":
        return body
    if kind.startswith("text/"):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("text body is not valid UTF-8") from None
    if kind == JSON or kind.endswith("+json"):
        return decode_json(body)
    raise InputError(f"unsupported Content-Type '{kind}': send image/*, text/plain or application/json")


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


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope.get("path", "")
    response = Response(encode_json({"error": f"no such endpoint: {scope.get('method')} {path}"}), 404, None, JSON)
    await response(scope, receive, send)


class BearerAuth:
    """Refuses (401) every request outside `open_paths` without `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._open = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self._open:
            supplied = next((value for key, value in scope["headers"] if key == b"authorization"), None)
            if supplied is None or not hmac.compare_digest(supplied, self._expected):
                problem = "missing" if supplied is None else "wrong"
                error = Unauthenticated(f"{problem} bearer token: send 'Authorization: Bearer <token>'")
                await error_response(error)(scope, receive, send)
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
