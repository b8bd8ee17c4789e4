"""The gRPC transport: Triton's `inference.GRPCInferenceService` (the KServe V2 core RPCs plus model config,
statistics, repository control and streaming) in front of the data plane, so stock `tritonclient.grpc` works.

Each RPC parses its message, decodes it (grpc_codec), calls the DataPlane and encodes the answer. Messages are parsed
here rather than by grpc so that a corrupt one is INVALID_ARGUMENT, not grpc's UNKNOWN. A forwardpass error becomes
the gRPC status its class names (errors.py) with its one-line message; inside a stream it becomes that response's
`error_message` and the stream goes on. With an auth token set, every RPC but the two health checks needs the
metadata `authorization: Bearer <token>`, as on HTTP. RPCs we do not offer (shared memory, trace, log settings)
answer UNIMPLEMENTED naming the feature.

grpcio's synchronous server carries the calls: one thread per call in progress parses it and checks its token, then
hands the servicer's coroutine to the event loop the data plane lives on and waits for it. On one core with
perf_analyzer that costs 40 % less server CPU per call than `grpc.aio` at 32 concurrent calls and 30 % less at 8
(8 % more for a lone call): grpc.aio's own per-call machinery costs about what a whole call now does
(bench/results/server_triton.md). Every call passes `grpc_gate` first, from the moment grpc accepts it: a cap on the
calls one client holds open, and a deadline for its first message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from concurrent import futures
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from forwardpass.errors import ERROR_CLASS_HEADER, ConfigError, ForwardpassError, InputError
from forwardpass.server import grpc_codec as codec
from forwardpass.server.access import Access
from forwardpass.server.dataplane import IGNORED_UNLOAD_PARAMETERS, unoffered
from forwardpass.server.grpc_gate import CallGate, Context, calling_client
from forwardpass.server.guard import off_loop, one_line
from forwardpass.server.proto import grpc_service_pb2 as pb
from forwardpass.server.streams import STREAM_WINDOW, in_order
from forwardpass.server.types import InferRequest

if TYPE_CHECKING:
    from forwardpass.server.dataplane import DataPlane
    from forwardpass.server.settings import ServerSettings

__all__ = ["GrpcServer", "InferenceServicer", "create_grpc_server"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("forwardpass.access")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# Liveness and readiness probes carry no credentials.
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})
# The control plane: the admin token's (forwardpass.server.access).
CONTROL_METHODS = frozenset({"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"})
# The RPCs of the features not offered (forwardpass.server.dataplane.UNOFFERED), by the start of their names.
UNOFFERED_METHODS = {
    "SystemSharedMemory": "system shared memory",
    "CudaSharedMemory": "CUDA shared memory",
    "TraceSetting": "trace settings",
    "LogSettings": "log settings",
}
_Decoded = tuple[pb.ModelInferRequest, InferRequest]  # a stream's request as sent, and as the data plane takes it

Message = TypeVar("Message", bound=ProtoMessage)
Result = TypeVar("Result")


class InferenceServicer:
    """One coroutine per RPC of the service, named as in the proto: parsed request in, response message out."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return codec.encode_server_metadata(self.dataplane.server_metadata())

    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version or None))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        return codec.encode_model_metadata(self.dataplane.model_metadata(request.name, request.version or None))

    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        return codec.encode_model_config(self.dataplane.model_config(request.name, request.version or None))

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        statistics = self.dataplane.model_statistics(request.name or None, request.version or None)
        return codec.encode_model_statistics(statistics)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        return codec.encode_repository_index(await self.dataplane.repository_index(), ready_only=request.ready)

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        if request.parameters:
            raise InputError(
                f"load '{request.model_name}': parameters {sorted(request.parameters)} are not supported; "
                "put the config and files in the repository and load by name"
            )
        await self.dataplane.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest) -> pb.RepositoryModelUnloadResponse:
        unsupported = set(request.parameters) - IGNORED_UNLOAD_PARAMETERS
        if unsupported:
            raise InputError(f"unload '{request.model_name}': parameters {sorted(unsupported)} are not supported")
        await self.dataplane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        return await self._infer(request, await self._decoded(request))

    async def _decoded(self, request: pb.ModelInferRequest) -> InferRequest:
        limits = self.dataplane.limits(request.model_name, request.model_version or None)  # 404 before decoding
        try:
            decoded = await off_loop(request.ByteSize(), codec.decode_infer_request, request, limits)
        except ForwardpassError as error:
            self.dataplane.metrics.failed(limits.model, limits.version, error)  # the data plane counts only its own
            raise
        decoded.client = calling_client.get()  # whose sequence ids these are (the gate set it for the call)
        return decoded

    async def _infer(self, request: pb.ModelInferRequest, decoded: InferRequest) -> pb.ModelInferResponse:
        response = await self.dataplane.infer(request.model_name, request.model_version or None, decoded)
        return codec.encode_infer_response(response)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes]
    ) -> AsyncGenerator[pb.ModelStreamInferResponse, None]:
        """Requests run concurrently (so they can share batches); answers go out in request order."""
        async with contextlib.aclosing(in_order(self._stream_decoded(requests), self._stream_answer)) as answers:
            async for answer in answers:
                yield answer

    async def _stream_decoded(
        self, raws: AsyncIterator[bytes]
    ) -> AsyncIterator[_Decoded | pb.ModelStreamInferResponse]:
        """Each message decoded, or the error answer it gets, one message after another: a large message is decoded
        in a worker thread, and a small one sent after it must not reach the model first (a sequence's steps)."""
        async for raw in raws:
            request = pb.ModelInferRequest()
            try:
                request = parse(pb.ModelInferRequest, raw)
                yield request, await self._decoded(request)
            except Exception as error:
                yield _stream_error(request, error)

    async def _stream_answer(self, item: _Decoded | pb.ModelStreamInferResponse) -> pb.ModelStreamInferResponse:
        if isinstance(item, pb.ModelStreamInferResponse):
            return item
        request, decoded = item
        try:
            return _final(pb.ModelStreamInferResponse(infer_response=await self._infer(request, decoded)))
        except Exception as error:
            return _stream_error(request, error)


def _final(answer: pb.ModelStreamInferResponse) -> pb.ModelStreamInferResponse:
    """Marks a request's answer its last, as Triton marks each stream answer (triton_final_response): no model here
    is decoupled, so each request has one answer; a client written for Triton's streams (enable_empty_final_response)
    reads the mark to know a request done."""
    answer.infer_response.parameters["triton_final_response"].bool_param = True
    return answer


def _stream_error(request: pb.ModelInferRequest, error: Exception) -> pb.ModelStreamInferResponse:
    """A stream's answer to a request that failed; the request's identity rides along so that a client can tell
    which one."""
    if isinstance(error, ForwardpassError):
        text = one_line(error)
    else:
        log.error("gRPC ModelStreamInfer request %r failed", request.id, exc_info=error)
        text = "internal error; see the server log"
    echo = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
    return _final(pb.ModelStreamInferResponse(error_message=text, infer_response=echo))


class Health(health.HealthServicer):  # type: ignore[misc]  # grpcio-health-checking ships no types: Any
    """grpc.health.v1: the server ("") and the inference service are SERVING when every wanted model is loaded
    (V2 readiness), NOT_SERVING otherwise; looked up (on the loop, where the registry changes) at each Check."""

    def __init__(self, dataplane: DataPlane, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._dataplane = dataplane
        self._loop = loop

    def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        ready = on_loop(self._loop, self._ready(), context)
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE.full_name):
            self.set(service, status)
        return super().Check(request, context)

    async def _ready(self) -> bool:
        return self._dataplane.ready()


def on_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Result], context: Context) -> Result:
    """`coroutine` run on the event loop, waited for in this call's thread; a call that ends first (cancelled by its
    client, past its deadline, the server stopping) cancels it."""
    running = asyncio.run_coroutine_threadsafe(coroutine, loop)
    if not context.add_callback(running.cancel):  # the call has already ended
        running.cancel()
    return running.result()


def parse(message_type: type[Message], raw: bytes) -> Message:
    try:
        message: Message = message_type.FromString(raw)
        return message
    except DecodeError:
        raise InputError(f"the request is not a valid {message_type.DESCRIPTOR.full_name} message") from None


def serialize(message: ProtoMessage) -> bytes:
    serialized: bytes = message.SerializeToString()
    return serialized


def status_code(error: ForwardpassError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.grpc_code, grpc.StatusCode.INTERNAL)


class BearerToken:
    """The `authorization` metadata of a call, checked by `access` for the RPC `method`."""

    def __init__(self, access: Access) -> None:
        self._access = access

    def check(self, context: Context, method: str) -> None:
        given = next((value for key, value in context.invocation_metadata() or () if key == "authorization"), None)
        self._access.check(given.encode() if isinstance(given, str) else given, control=method in CONTROL_METHODS)


def unary_handler(
    implementation: Callable[[Any], Coroutine[Any, Any, ProtoMessage]],
    request_type: type[ProtoMessage],
    check: Callable[[Context], None] | None,
    loop: asyncio.AbstractEventLoop,
) -> grpc.RpcMethodHandler:
    name = implementation.__name__

    def handle(raw: bytes, context: Context) -> ProtoMessage:
        try:
            if check is not None:
                check(context)
            return on_loop(loop, implementation(parse(request_type, raw)), context)
        except ForwardpassError as error:
            context.set_trailing_metadata(((ERROR_CLASS_HEADER, type(error).__name__),))
            context.abort(status_code(error), one_line(error))
        except futures.CancelledError:  # the call ended before its answer: nobody is left to tell
            context.abort(grpc.StatusCode.CANCELLED, f"{name} was cancelled")
        except Exception:
            log.exception("gRPC %s failed", name)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}; see the server log")

    return grpc.unary_unary_rpc_method_handler(handle, response_serializer=serialize)


def refusal(message: str, check: Callable[[Context], None] | None) -> grpc.RpcMethodHandler:
    """A handler answering every call (that passes `check`, the token's) UNIMPLEMENTED with `message`."""

    def handle(raw: bytes, context: Context) -> NoReturn:
        if check is not None:
            try:
                check(context)
            except ForwardpassError as error:
                context.abort(status_code(error), one_line(error))
        context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return grpc.unary_unary_rpc_method_handler(handle, response_serializer=serialize)


def stream_handler(
    servicer: InferenceServicer, token: BearerToken | None, loop: asyncio.AbstractEventLoop
) -> grpc.RpcMethodHandler:
    def handle(raws: Iterator[bytes], context: Context) -> Iterator[pb.ModelStreamInferResponse]:
        if token is not None:
            try:
                token.check(context, "ModelStreamInfer")
            except ForwardpassError as error:
                context.abort(status_code(error), one_line(error))
        answers = servicer.ModelStreamInfer(_from_thread(raws, loop))
        try:
            while (answer := on_loop(loop, _next_or_none(answers), context)) is not None:
                yield answer
        except futures.CancelledError:  # the call ended while an answer was awaited, which cancelled the answers
            return
        except GeneratorExit:  # grpc dropped the stream between two answers
            asyncio.run_coroutine_threadsafe(answers.aclose(), loop)
            raise

    return grpc.stream_stream_rpc_method_handler(handle, response_serializer=serialize)


async def _next_or_none(answers: AsyncIterator[Result]) -> Result | None:
    try:
        return await anext(answers)
    except StopAsyncIteration:
        return None


async def _from_thread(raws: Iterator[bytes], loop: asyncio.AbstractEventLoop) -> AsyncIterator[bytes]:
    """A stream's requests as the loop reads them: a thread of the stream's own reads grpc's blocking iterator, at
    most STREAM_WINDOW requests ahead of the loop (the default executor's few threads must not wait on clients)."""
    arrived: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    room = threading.Semaphore(STREAM_WINDOW)

    def read() -> None:
        try:
            for raw in raws:
                room.acquire()
                loop.call_soon_threadsafe(arrived.put_nowait, raw)
            ended: BaseException | None = None
        except BaseException as exc:  # the call ended (cancelled, the server stopping): the loop's side learns it
            ended = exc
        loop.call_soon_threadsafe(arrived.put_nowait, ended)

    threading.Thread(target=read, name="grpc-stream-reader", daemon=True).start()
    try:
        while (item := await arrived.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            room.release()
            yield item
    finally:  # nobody reads on: the reader must not wait for room, only for its call to end
        room.release(STREAM_WINDOW)


def with_access_log(name: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, writing one JSON line per call to the `forwardpass.access` logger, like HTTP's."""
    path = f"/{SERVICE.full_name}/{name}"

    def record(started: float, context: Context) -> None:
        status = context.code() or grpc.StatusCode.OK
        milliseconds = round((time.perf_counter() - started) * 1000, 3)
        entry = {"protocol": "grpc", "path": path, "status": status.name, "ms": milliseconds, "client": context.peer()}
        access_log.info(json.dumps(entry))

    if handler.stream_stream is not None:
        streaming = handler.stream_stream

        def stream(raws: Iterator[bytes], context: Context) -> Iterator[ProtoMessage]:
            started = time.perf_counter()
            try:
                yield from streaming(raws, context)
            finally:
                record(started, context)

        return grpc.stream_stream_rpc_method_handler(stream, response_serializer=serialize)
    unary = handler.unary_unary

    def call(raw: bytes, context: Context) -> ProtoMessage:
        started = time.perf_counter()
        try:
            message: ProtoMessage = unary(raw, context)
            return message
        finally:
            record(started, context)

    return grpc.unary_unary_rpc_method_handler(call, response_serializer=serialize)


def method_handlers(
    servicer: InferenceServicer, token: BearerToken | None, loop: asyncio.AbstractEventLoop, log_access: bool = False
) -> dict[str, grpc.RpcMethodHandler]:
    """A handler for every RPC of the service: the servicer's, or a refusal naming a feature not offered."""
    handlers = {"ModelStreamInfer": stream_handler(servicer, token, loop)}
    for method in SERVICE.methods:
        implementation = getattr(servicer, method.name, None)
        if method.name in handlers:
            continue
        check = None
        if token is not None and method.name not in OPEN_METHODS:
            check = functools.partial(token.check, method=method.name)
        if implementation is None:
            feature = next(name for prefix, name in UNOFFERED_METHODS.items() if method.name.startswith(prefix))
            handlers[method.name] = refusal(unoffered(feature), check)
            continue
        handlers[method.name] = unary_handler(implementation, getattr(pb, method.input_type.name), check, loop)
    if log_access:
        return {name: with_access_log(name, handler) for name, handler in handlers.items()}
    return handlers


class GrpcServer:
    """grpcio's server, its threads (one per call in progress, made as needed) and the gate every call passes,
    started and stopped from the event loop."""

    def __init__(self, server: grpc.Server, threads: futures.ThreadPoolExecutor, gate: CallGate) -> None:
        self._server = server
        self._threads = threads
        self._gate = gate

    async def start(self) -> None:
        self._gate.start()
        self._server.start()

    async def stop(self, grace: float) -> None:
        """New calls are refused; those in progress get `grace` seconds, then are cancelled."""
        await asyncio.to_thread(self._server.stop(grace).wait)
        self._gate.stop()
        self._threads.shutdown(wait=False)


def create_grpc_server(dataplane: DataPlane, settings: ServerSettings) -> GrpcServer:
    """The gRPC server bound to settings.host:grpc_port, not started; called on the event loop whose data plane it
    serves, which starts and stops it."""
    loop = asyncio.get_running_loop()
    # a thread for every call admitted, so that open streams never keep a unary call waiting for one
    threads = futures.ThreadPoolExecutor(settings.max_concurrent_requests, thread_name_prefix="forwardpass-grpc")
    # A call counts from the moment grpc accepts it, before its message: the gate keeps one client, or calls that
    # send nothing, from holding every slot.
    gate = CallGate(
        settings.max_grpc_calls_per_client or max(1, settings.max_concurrent_requests // 4),
        settings.body_timeout_s,
        functools.partial(dataplane.metrics.failed, None, None),
    )
    server = grpc.server(
        threads,
        interceptors=(gate,),
        # Calls beyond this are refused with RESOURCE_EXHAUSTED at once, like HTTP's 503, instead of piling up.
        maximum_concurrent_rpcs=settings.max_concurrent_requests,
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", -1),
            # Without this a second server on a port already in use would bind too and take some of its calls.
            ("grpc.so_reuseport", 0),
        ],
    )
    access = Access(settings)
    token = None if access.open else BearerToken(access)
    handlers = method_handlers(InferenceServicer(dataplane), token, loop, settings.access_log)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    # grpc.health.v1 (Kubernetes' gRPC probes) and server reflection (grpcurl): open, like ServerLive
    health_pb2_grpc.add_HealthServicer_to_server(Health(dataplane, loop), server)
    services = (SERVICE.full_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(services, server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # newer grpc versions raise where older ones return port 0
        bound = 0
    if not bound:
        threads.shutdown(wait=False)
        raise ConfigError(
            f"gRPC cannot listen on {address}: port in use or address invalid; choose another --grpc-port"
        )
    return GrpcServer(server, threads, gate)
