"""What a load generator sends (`forwardpass.measure.loadgen`, MLPerf over HTTP): where to, the model's inputs as
the server describes them, and one request encoded once (V2 JSON, V2 binary tensors, or a gRPC ModelInferRequest)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from forwardpass.errors import InputError, MissingExtraError, NotFoundError
from forwardpass.measure.speed import random_inputs
from forwardpass.tensor import DataType, TensorSpec

__all__ = ["CONNECT_TIMEOUT_S", "Encoding", "Payload", "Target", "build_payload", "model_inputs", "triton_stubs"]

Encoding = Literal["json", "binary"]
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send: `http://host:port` or `grpc://host:port`, a model name and optionally a version."""

    url: str
    model: str
    version: str | None = None

    @property
    def protocol(self) -> Literal["http", "grpc"]:
        scheme = urllib.parse.urlsplit(self.url).scheme
        if scheme not in ("http", "grpc"):
            raise InputError(f"--url '{self.url}': use http://HOST:PORT or grpc://HOST:PORT")
        return "http" if scheme == "http" else "grpc"

    @property
    def address(self) -> tuple[str, int]:
        parts = urllib.parse.urlsplit(self.url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise InputError(f"--url '{self.url}': name the host and the port, e.g. http://127.0.0.1:8000")
        return parts.hostname, port

    @property
    def path(self) -> str:
        version = f"/versions/{self.version}" if self.version else ""
        return f"/v2/models/{self.model}{version}"


@dataclass(frozen=True, slots=True)
class Payload:
    """One request, encoded once: the raw HTTP request bytes, or a serialized gRPC ModelInferRequest."""

    protocol: Literal["http", "grpc"]
    encoding: Encoding
    data: bytes


def _http_get(target: Target, path: str) -> tuple[int, bytes]:
    import http.client

    host, port = target.address
    connection = http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT_S)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    except OSError as exc:
        raise InputError(f"{target.url} does not answer ({exc.strerror or exc}); is the server running?") from None
    finally:
        connection.close()


def triton_stubs() -> tuple[Any, Any]:
    """The KServe V2 gRPC messages and service stubs that tritonclient ships."""
    try:
        from tritonclient.grpc import service_pb2, service_pb2_grpc
    except ImportError:
        raise MissingExtraError("tritonclient[grpc]", "measure") from None
    return service_pb2, service_pb2_grpc


def _grpc_metadata(target: Target) -> list[dict[str, Any]]:
    import grpc

    service_pb2, service_pb2_grpc = triton_stubs()

    host, port = target.address
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelMetadataRequest(name=target.model, version=target.version or "")
        try:
            answer = stub.ModelMetadata(request, timeout=CONNECT_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(f"{target.url} has no model '{target.model}' ({exc.details()})") from None
            raise InputError(f"{target.url} does not answer ({exc.code().name}); is the server running?") from None
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in answer.inputs]


def model_inputs(target: Target) -> list[TensorSpec]:
    """The model's inputs as the server describes them (GET /v2/models/M, or gRPC ModelMetadata)."""
    if target.protocol == "grpc":
        described = _grpc_metadata(target)
    else:
        status, body = _http_get(target, target.path)
        if status == 404:
            raise NotFoundError(f"{target.url} has no model '{target.model}'")
        if status != 200:
            raise InputError(f"{target.url}{target.path} answered {status}: {body[:200].decode(errors='replace')}")
        described = orjson.loads(body).get("inputs", [])
    try:
        return [TensorSpec(t["name"], DataType.from_name(t["datatype"]), tuple(t["shape"])) for t in described]
    except (KeyError, TypeError) as exc:
        raise InputError(f"{target.url}: the model's metadata lists no usable inputs ({exc})") from None


def build_payload(target: Target, specs: list[TensorSpec], encoding: Encoding, batch_size: int = 1) -> Payload:
    """A valid request of random inputs for the model (each dynamic dimension set to the speed module's default)."""
    if encoding not in ("json", "binary"):
        raise InputError(f"encoding '{encoding}': use json or binary")
    batch = random_inputs(specs, batch_size)
    if target.protocol == "grpc":
        return Payload("grpc", encoding, _grpc_request(target, specs, batch, encoding))
    header: dict[str, Any] = {"inputs": []}
    chunks: list[bytes] = []
    for spec in specs:
        array = batch[spec.name]
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.dtype.name, "shape": list(array.shape)}
        if encoding == "binary":
            raw = np.ascontiguousarray(array).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        header["inputs"].append(tensor)
    if encoding == "binary":
        header["parameters"] = {"binary_data_output": True}  # the answer's tensors as raw bytes too
    head = orjson.dumps(header)
    body = head + b"".join(chunks)
    host, port = target.address
    lines = [
        f"POST {target.path}/infer HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: " + ("application/octet-stream" if encoding == "binary" else "application/json"),
        f"Content-Length: {len(body)}",
    ]
    if encoding == "binary":
        lines.append(f"Inference-Header-Content-Length: {len(head)}")
    return Payload("http", encoding, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def _grpc_request(target: Target, specs: list[TensorSpec], batch: dict[str, np.ndarray], encoding: Encoding) -> bytes:
    service_pb2, _ = triton_stubs()

    request = service_pb2.ModelInferRequest(model_name=target.model, model_version=target.version or "")
    for spec in specs:
        array = batch[spec.name]
        tensor = request.inputs.add(name=spec.name, datatype=spec.dtype.name, shape=list(array.shape))
        if encoding == "binary":
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
        elif array.dtype.kind == "f":
            field_name = "fp64_contents" if array.dtype == np.float64 else "fp32_contents"
            getattr(tensor.contents, field_name).extend(array.reshape(-1).tolist())
        elif array.dtype.kind == "b":
            tensor.contents.bool_contents.extend(array.reshape(-1).tolist())
        else:
            field_name = "int64_contents" if array.dtype.itemsize == 8 else "int_contents"
            getattr(tensor.contents, field_name).extend(array.reshape(-1).tolist())
    return bytes(request.SerializeToString())
