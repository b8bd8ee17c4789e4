"""gRPC clients for a forwardpass (or Triton, or any KServe V2) server: `GrpcInferenceClient` and
`AsyncGrpcInferenceClient`, on the standard `inference.GRPCInferenceService`.

    with GrpcInferenceClient("127.0.0.1:8001") as client:
        scores = client.infer("mlp", {"x": batch})["y"]

The same methods as the HTTP clients but `predict` (the pipeline endpoint is HTTP only). Tensors travel as
`raw_input_contents` / `raw_output_contents`, in the binary layout HTTP's binary extension uses. A failed call raises
the forwardpass error of its status code (`errors.error_for_status`) with the server's message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc
import numpy as np

from forwardpass.client.http import ANSWER_GRACE_S
from forwardpass.client.tensors import GivenInputs, Inputs, InputTypes, as_tensor, from_raw, to_raw
from forwardpass.errors import ERROR_CLASS_HEADER, ForwardpassError, InputError, error_for_status
from forwardpass.server.proto import grpc_service_pb2 as pb
from forwardpass.server.proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub

__all__ = ["AsyncGrpcInferenceClient", "GrpcInferenceClient"]

T = TypeVar("T")
DEFAULT_URL = "127.0.0.1:8001"
# The server enforces its own request size limit; gRPC's default 4 MB would refuse an image batch's answer.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    rpc: str  # the method name in the service
    request: Any
    read: Callable[[Any], T]
    timeout: float | None = None  # None: the client's


class _Calls:
    """Every operation as a `_Call`: the message to send and how to read its answer."""

    def live(self) -> _Call[bool]:
        return _Call("ServerLive", pb.ServerLiveRequest(), lambda answer: bool(answer.live))

    def ready(self) -> _Call[bool]:
        return _Call("ServerReady", pb.ServerReadyRequest(), lambda answer: bool(answer.ready))

    def model_ready(self, model: str, version: str | int | None) -> _Call[bool]:
        request = pb.ModelReadyRequest(name=model, version=_version(version))
        return _Call("ModelReady", request, lambda answer: bool(answer.ready))

    def server_metadata(self) -> _Call[dict[str, Any]]:
        return _Call("ServerMetadata", pb.ServerMetadataRequest(), _server_metadata)

    def metadata(self, model: str, version: str | int | None) -> _Call[dict[str, Any]]:
        return _Call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=_version(version)), _model_metadata)

    def load(self, model: str) -> _Call[None]:
        return _Call("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=model), _nothing)

    def unload(self, model: str) -> _Call[None]:
        return _Call("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=model), _nothing)

    def infer(
        self,
        model: str,
        inputs: Inputs,
        outputs: Sequence[str] | None,
        version: str | int | None,
        classification: int,
        timeout: float | None,
    ) -> _Call[dict[str, np.ndarray]]:
        request = pb.ModelInferRequest(model_name=model, model_version=_version(version))
        for name, value in inputs.items():
            datatype, array = as_tensor(name, value)
            request.inputs.add(name=name, datatype=datatype.name, shape=array.shape)
            request.raw_input_contents.append(to_raw(datatype, array))
        if classification and outputs is None:
            raise InputError("classification needs the outputs to classify: pass outputs=[...] too")
        for name in outputs or ():
            output = request.outputs.add(name=name)
            if classification:
                output.parameters["classification"].int64_param = classification
        if timeout is None:
            return _Call("ModelInfer", request, _tensors)
        request.parameters["timeout"].int64_param = int(timeout * 1e6)
        return _Call("ModelInfer", request, _tensors, timeout + ANSWER_GRACE_S)


class GrpcInferenceClient:
    """A blocking KServe V2 gRPC client over one channel, safe to share between threads.

    `url`: "host:port"; `token`: sent as metadata `authorization: Bearer <token>`; `timeout`: seconds to wait for each
    answer (a call's own `timeout` overrides it)."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = _target(url)
        self._calls = _Calls()
        self._channel = grpc.insecure_channel(self.url, options=CHANNEL_OPTIONS)
        self._stub = GRPCInferenceServiceStub(self._channel)
        self._metadata = _auth(token)
        self._timeout = timeout
        self._types = InputTypes()

    def is_live(self) -> bool:
        return self._send(self._calls.live())

    def is_ready(self) -> bool:
        return self._send(self._calls.ready())

    def model_ready(self, model: str, version: str | int | None = None) -> bool:
        return self._send(self._calls.model_ready(model, version))

    def server_metadata(self) -> dict[str, Any]:
        """{"name", "version", "extensions"}, as over HTTP."""
        return self._send(self._calls.server_metadata())

    def metadata(self, model: str, version: str | int | None = None) -> dict[str, Any]:
        """{"name", "versions", "platform", "inputs", "outputs"}, as over HTTP."""
        return self._send(self._calls.metadata(model, version))

    def load(self, model: str) -> None:
        self._send(self._calls.load(model))

    def unload(self, model: str) -> None:
        self._send(self._calls.unload(model))

    def infer(
        self,
        model: str,
        inputs: GivenInputs,
        *,
        outputs: Sequence[str] | None = None,
        version: str | int | None = None,
        classification: int = 0,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Arrays by input name (batch dimension first) → arrays by output name; see InferenceClient.infer."""
        typed = self._types.typed(model, version, inputs, lambda: self.metadata(model, version))
        return self._send(self._calls.infer(model, typed, outputs, version, classification, timeout))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _send(self, call: _Call[T]) -> T:
        method = getattr(self._stub, call.rpc)
        timeout = self._timeout if call.timeout is None else call.timeout
        try:
            answer = method(call.request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None
        return call.read(answer)


class AsyncGrpcInferenceClient:
    """The asyncio twin of `GrpcInferenceClient` (grpc.aio): the same methods and arguments, each a coroutine."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = _target(url)
        self._calls = _Calls()
        self._channel: grpc.aio.Channel | None = None  # made on first use, inside the loop that uses it
        self._stub: Any = None
        self._metadata = _auth(token)
        self._timeout = timeout
        self._types = InputTypes()

    async def is_live(self) -> bool:
        return await self._send(self._calls.live())

    async def is_ready(self) -> bool:
        return await self._send(self._calls.ready())

    async def model_ready(self, model: str, version: str | int | None = None) -> bool:
        return await self._send(self._calls.model_ready(model, version))

    async def server_metadata(self) -> dict[str, Any]:
        return await self._send(self._calls.server_metadata())

    async def metadata(self, model: str, version: str | int | None = None) -> dict[str, Any]:
        return await self._send(self._calls.metadata(model, version))

    async def load(self, model: str) -> None:
        await self._send(self._calls.load(model))

    async def unload(self, model: str) -> None:
        await self._send(self._calls.unload(model))

    async def infer(
        self,
        model: str,
        inputs: GivenInputs,
        *,
        outputs: Sequence[str] | None = None,
        version: str | int | None = None,
        classification: int = 0,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        typed = await self._types.typed_async(model, version, inputs, lambda: self.metadata(model, version))
        return await self._send(self._calls.infer(model, typed, outputs, version, classification, timeout))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def _send(self, call: _Call[T]) -> T:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.url, options=CHANNEL_OPTIONS)
            self._stub = GRPCInferenceServiceStub(self._channel)
        method = getattr(self._stub, call.rpc)
        timeout = self._timeout if call.timeout is None else call.timeout
        try:
            answer = await method(call.request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None
        return call.read(answer)


def _rpc_error(error: grpc.RpcError) -> ForwardpassError:
    """A failed call (grpc.Call / AioRpcError: both have code() and details()) → the error of its status."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or code.name
    trailing = error.trailing_metadata() or ()
    error_class = next((str(value) for key, value in trailing if key == ERROR_CLASS_HEADER), None)
    return error_for_status(details, grpc_code=code.name, error_class=error_class)


def _tensors(answer: Any) -> dict[str, np.ndarray]:
    raw = answer.raw_output_contents
    if len(raw) != len(answer.outputs):
        raise ForwardpassError(
            f"the server's answer has {len(raw)} raw_output_contents for {len(answer.outputs)} outputs; "
            "this client reads raw contents only"
        )
    return {
        output.name: from_raw(output.name, output.datatype, list(output.shape), contents)
        for output, contents in zip(answer.outputs, raw, strict=True)
    }


def _server_metadata(answer: Any) -> dict[str, Any]:
    return {"name": answer.name, "version": answer.version, "extensions": list(answer.extensions)}


def _model_metadata(answer: Any) -> dict[str, Any]:
    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)} for spec in specs]

    return {
        "name": answer.name,
        "versions": list(answer.versions),
        "platform": answer.platform,
        "inputs": tensors(answer.inputs),
        "outputs": tensors(answer.outputs),
    }


def _nothing(answer: Any) -> None:
    return None


def _version(version: str | int | None) -> str:
    return "" if version is None else str(version)


def _target(url: str) -> str:
    """A gRPC target "host:port"; "grpc://host:port" is accepted too."""
    return url.partition("://")[2] if "://" in url else url


def _auth(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None
