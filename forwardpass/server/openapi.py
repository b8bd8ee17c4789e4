"""`/openapi.json`: the OpenAPI 3.1 description of every HTTP route the server has, built from its route table at
request time, so that it cannot drift: a route appears whether or not it is described here, and
`tests/server/test_openapi.py` fails on a route without a description below.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

from starlette.routing import BaseRoute, Route, WebSocketRoute

__all__ = ["DESCRIBED", "describe"]

JSON = "application/json"
SSE = "text/event-stream"
_PARAMETER = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class Operation:
    tag: str
    summary: str
    request: dict[str, str] = field(default_factory=dict)  # content type -> schema name in components
    response: str = "Object"  # schema name in components
    streams: bool = False  # answers server-sent events


_V2 = "KServe V2 / Open Inference Protocol"
_TRITON = "Triton extensions"
_PIPELINE = "Pipeline (raw inputs in, answers out)"
_TF = "TensorFlow Serving"
_OPENAI = "OpenAI-compatible"
_GENERATE = "Token generation (Triton)"
_OPS = "Operations"
_PAGE = "Page"

_INFER = {JSON: "InferRequest", "application/octet-stream": "BinaryInferRequest"}
_RAW_ITEM = {"image/*": "Binary", "audio/*": "Binary", "text/plain": "Text", JSON: "Record"}

# (method, path template) -> what it does. Versioned twins (/versions/{version}/...) share their description.
DESCRIBED: dict[tuple[str, str], Operation] = {
    ("GET", "/v2/health/live"): Operation(_V2, "Liveness: the process answers (no token needed)", response="Live"),
    ("GET", "/v2/health/ready"): Operation(_V2, "Readiness: every model loaded (no token needed)", response="Ready"),
    ("GET", "/v2"): Operation(_V2, "Server metadata: name, version, extensions", response="ServerMetadata"),
    ("GET", "/v2/models/{model}"): Operation(_V2, "Model metadata: inputs and outputs", response="ModelMetadata"),
    ("GET", "/v2/models/{model}/ready"): Operation(_V2, "Whether the model is ready", response="Object"),
    ("POST", "/v2/models/{model}/infer"): Operation(
        _V2, "Run the forward pass on tensors (JSON, or the binary tensor extension)", _INFER, "InferResponse"
    ),
    ("GET", "/v2/models/{model}/config"): Operation(_TRITON, "Triton's model configuration (JSON form)"),
    ("GET", "/v2/models/stats"): Operation(_TRITON, "Statistics of every model"),
    ("GET", "/v2/models/{model}/stats"): Operation(_TRITON, "Statistics of one model"),
    ("POST", "/v2/repository/index"): Operation(_TRITON, "Every model of the repository and its state"),
    ("POST", "/v2/repository/models/{model}/load"): Operation(_TRITON, "Load (or reload) a model"),
    ("POST", "/v2/repository/models/{model}/unload"): Operation(_TRITON, "Unload a model once its requests finish"),
    ("POST", "/v2/models/{model}/predict"): Operation(
        _PIPELINE,
        "The whole pipeline: an image, a sound file, a text or a JSON record in; labels and scores, a value, an"
        " embedding, a decision, detections or speech segments out (?explain=true adds attributions)",
        _RAW_ITEM,
        "Prediction",
    ),
    ("POST", "/v1/models/{model}:predict"): Operation(
        _TF, "TensorFlow Serving's REST predict (instances or inputs)", {JSON: "TFPredictRequest"}, "TFPredictResponse"
    ),
    ("GET", "/v1/models/{model}"): Operation(
        _TF, "TensorFlow Serving's model status; for a decoder language model, OpenAI's model object"
    ),
    ("GET", "/v1/models"): Operation(_OPENAI, "The models that answer OpenAI-style requests"),
    ("POST", "/v1/completions"): Operation(
        _OPENAI, "Text completion (stream: true for server-sent events)", {JSON: "Object"}, streams=True
    ),
    ("POST", "/v1/chat/completions"): Operation(
        _OPENAI, "Chat completion with the model's chat template (stream: true: events)", {JSON: "Object"}, streams=True
    ),
    ("POST", "/v1/embeddings"): Operation(_OPENAI, "Embeddings of one text or a list of texts", {JSON: "Object"}),
    ("POST", "/v2/models/{model}/generate"): Operation(
        _GENERATE, "Generate text, answered at the end", {JSON: "Object"}
    ),
    ("POST", "/v2/models/{model}/generate_stream"): Operation(
        _GENERATE, "Generate text, each piece as a server-sent event", {JSON: "Object"}, streams=True
    ),
    ("GET", "/metrics"): Operation(_OPS, "Prometheus metrics (text exposition format)", response="Text"),
    ("GET", "/openapi.json"): Operation(_OPS, "This description"),
    ("GET", "/docs"): Operation(_PAGE, "The API described, as a page", response="Html"),
    ("GET", "/"): Operation(_PAGE, "A page to try every model from a browser", response="Html"),
    ("GET", "/ui/{file}"): Operation(_PAGE, "The page's script and style sheet", response="Text"),
    ("GET", "/ui/models"): Operation(_PAGE, "What the page needs to know of each ready model: its input and task"),
}

_SCHEMAS: dict[str, Any] = {
    "Object": {"type": "object"},
    "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
    "Text": {"type": "string"},
    "Html": {"type": "string"},
    "Binary": {"type": "string", "contentMediaType": "application/octet-stream"},
    "Record": {"type": "object", "description": "one record: column name -> value"},
    "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
    "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    "ServerMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Tensor": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "examples": ["FP32", "INT64", "BYTES"]},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "data": {"type": "array"},
            "parameters": {"type": "object"},
        },
        "required": ["name", "datatype", "shape"],
    },
    "TensorSpec": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorSpec"}},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorSpec"}},
        },
    },
    "InferRequest": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
            "outputs": {"type": "array", "items": {"type": "object"}},
            "parameters": {"type": "object"},
        },
        "required": ["inputs"],
    },
    "BinaryInferRequest": {
        "type": "string",
        "description": "A JSON InferRequest of Inference-Header-Content-Length bytes, then the tensors' raw bytes",
    },
    "InferResponse": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
        },
    },
    "Prediction": {
        "type": "object",
        "description": "By task: label, score, top_k | value | embedding | anomaly_score, anomaly | cluster |"
        " items | detections; with a decision: action, rule",
    },
    "TFPredictRequest": {"type": "object", "properties": {"instances": {"type": "array"}, "inputs": {}}},
    "TFPredictResponse": {"type": "object", "properties": {"predictions": {"type": "array"}, "outputs": {}}},
}


def describe(routes: Iterable[BaseRoute], *, needs_token: Callable[[str], bool]) -> dict[str, Any]:
    """The OpenAPI document of `routes` (the server's own route table); `needs_token(path)`: whether a bearer token
    is needed there."""
    paths: dict[str, dict[str, Any]] = {}
    auth = False
    for route in routes:
        if isinstance(route, WebSocketRoute):  # OpenAPI has no WebSocket operation: the upgrading GET stands for it
            paths.setdefault(route.path, {})["get"] = {
                "tags": [_V2],
                "summary": "WebSocket: a stream of V2 JSON infer requests, answered in order (upgrade to WebSocket)",
                "parameters": _parameters(route.path),
                "responses": {"101": {"description": "Switching to the WebSocket protocol"}},
            }
            continue
        if not isinstance(route, Route):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            operation = _operation(method, route.path)
            if needs_token(route.path):
                auth = True
                operation["security"] = [{"bearer": []}]
                operation["responses"]["401"] = _error("Missing or wrong bearer token")
            paths.setdefault(route.path, {})[method.lower()] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "forwardpass",
            "version": version("forwardpass"),
            "description": "Inference server: KServe V2 over HTTP (and gRPC, not described here), the model's whole"
            " pipeline, TensorFlow Serving's REST API and OpenAI-compatible routes.",
        },
        "paths": paths,
        "components": {"schemas": _SCHEMAS},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


def _operation(method: str, path: str) -> dict[str, Any]:
    described = DESCRIBED.get((method, path.replace("/versions/{version}", "")))
    if described is None:
        described = Operation("Undescribed", f"{method} {path}")
    operation: dict[str, Any] = {
        "tags": [described.tag],
        "summary": described.summary,
        "operationId": f"{method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', path)}",
        "parameters": _parameters(path),
        "responses": {
            "200": {"description": "OK", "content": _content(described)},
            "400": _error("Bad request: one line saying what is wrong"),
            "404": _error("Unknown model, version or path"),
        },
    }
    if described.request:
        operation["requestBody"] = {
            "required": True,
            "content": {kind: {"schema": _ref(schema)} for kind, schema in described.request.items()},
        }
    return operation


def _content(described: Operation) -> dict[str, Any]:
    kind = {"Text": "text/plain", "Html": "text/html"}.get(described.response, JSON)
    content = {kind: {"schema": _ref(described.response)}}
    if described.streams:
        content[SSE] = {"schema": _ref("Text")}
    return content


def _parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAMETER.findall(path)
    ]


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}
