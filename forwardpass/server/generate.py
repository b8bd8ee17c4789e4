"""Token generation over HTTP with Triton's generate extension, streamed as server-sent events when asked, so that
existing clients work (OpenAI's API is forwardpass.server.openai):

    POST /v2/models/<m>[/versions/<v>]/generate          {"text_input": "...", "max_tokens": 16, ...} → one answer
    POST /v2/models/<m>[/versions/<v>]/generate_stream   the same → one SSE event per token

Each model version gets one Generator (continuous batching) on first use; every request joins its running batch.
Errors before the first token are the usual statuses; an error during a stream is its last event. Finished
generations feed /metrics (tokens, time to first token, duration); failures count where they are answered. A
generation whose client goes away is cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from forwardpass.errors import ForwardpassError, InputError
from forwardpass.generation.sampling import SamplingParams
from forwardpass.registry import ModelRegistry, Served
from forwardpass.server.codec import decode_json, encode_json
from forwardpass.server.guard import RequestGuard, error_response, off_loop
from forwardpass.server.metrics import Metrics
from forwardpass.server.tokens import TextStream, unless_disconnected

if TYPE_CHECKING:
    from forwardpass.generation.engine import Generator

__all__ = ["Generators", "generation_routes"]

JSON = "application/json"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
Endpoint = Callable[[Request], Awaitable[Response]]

# Request fields → SamplingParams fields, with the type each must have. Both Triton's (TensorRT-LLM's) and
# OpenAI's / vLLM's names are understood.
_SAMPLING: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "max_tokens": ("max_new_tokens", int),
    "max_new_tokens": ("max_new_tokens", int),
    "temperature": ("temperature", (int, float)),
    "top_k": ("top_k", int),
    "top_p": ("top_p", (int, float)),
    "seed": ("seed", int),
    "random_seed": ("seed", int),
    "stop_token_ids": ("stop_token_ids", list),
    "ignore_eos": ("ignore_eos", bool),
}
_TRITON_FIELDS = {"text_input", "input_ids", "parameters", "id", "stream", *_SAMPLING}
_TRITON_PARAMETERS = {"stream", *_SAMPLING}  # Triton's vLLM examples send "stream": false among the parameters


class Generators:
    """The Generator of each served model version, made on first use; closed with the server."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self._generators: dict[Served, Generator] = {}

    def get(self, name: str, version: str | None) -> tuple[Served, Generator]:
        served = self._registry.get(name, version)
        generator = self._generators.get(served)
        if generator is None:
            from forwardpass.generation.loader import open_generator  # the decode loop: only for decoder models

            self._prune()
            generator = self._generators[served] = open_generator(served.model)
        return served, generator

    def close(self) -> None:
        for generator in self._generators.values():
            generator.close()
        self._generators.clear()

    def _prune(self) -> None:
        """Close the generators of versions the registry no longer serves and nobody uses."""
        loaded = set(self._registry.loaded())
        for served in [s for s in self._generators if s not in loaded and not s.active]:
            self._generators.pop(served).close()


def generation_routes(generators: Generators, guard: RequestGuard) -> list[Route]:
    """The routes, behind the server's shared body reader, admission and error guard (`guard`)."""
    api = _GenerateApi(generators, guard.metrics)
    table: list[tuple[str, Endpoint, Callable[[ForwardpassError], Response]]] = [
        ("/v2/models/{model}/generate", api.generate, error_response),
        ("/v2/models/{model}/versions/{version}/generate", api.generate, error_response),
        ("/v2/models/{model}/generate_stream", api.generate_stream, error_response),
        ("/v2/models/{model}/versions/{version}/generate_stream", api.generate_stream, error_response),
    ]
    return [
        Route(path, guard.guarded(endpoint, answer, admits=True), methods=["POST"]) for path, endpoint, answer in table
    ]


class _GenerateApi:
    def __init__(self, generators: Generators, metrics: Metrics) -> None:
        self.generators = generators
        self.metrics = metrics

    # Triton's generate extension

    async def generate(self, request: Request) -> Response:
        served, generator, prompt, params = await self._triton_request(request)
        stream = TextStream(self.metrics, served, generator, prompt, params)

        async def whole() -> tuple[str, list[int], str | None]:
            pieces, ids, reason = [], [], None
            async for event, delta in stream.texts():
                pieces.append(delta)
                ids.append(event.token_id)
                reason = event.finish_reason
            return "".join(pieces), ids, reason

        try:
            text, ids, reason = await unless_disconnected(request, whole())
        finally:
            stream.close()
        return Response(encode_json(_triton_answer(served, text, ids, reason)), media_type=JSON)

    async def generate_stream(self, request: Request) -> Response:
        served, generator, prompt, params = await self._triton_request(request)
        stream = TextStream(self.metrics, served, generator, prompt, params)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for event, delta in stream.texts():
                    yield _sse(_triton_answer(served, delta, [event.token_id], event.finish_reason))
            except ForwardpassError as exc:
                self.metrics.failed(served.name, served.version, exc)
                yield _sse({"error": str(exc)})

        # the background task runs after the last chunk, or once a client that went away stopped the stream
        closing = BackgroundTask(stream.close)
        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS, background=closing)

    async def _triton_request(self, request: Request) -> tuple[Served, Generator, list[int], SamplingParams]:
        body = _json_object(request)
        unknown = sorted(set(body) - _TRITON_FIELDS)
        if unknown:
            raise InputError(f"unknown generate field(s) {unknown}; accepted: {sorted(_TRITON_FIELDS)}")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InputError("'parameters' must be a JSON object")
        unknown = sorted(set(parameters) - _TRITON_PARAMETERS)
        if unknown:
            raise InputError(f"unknown generate parameter(s) {unknown}; accepted: {sorted(_TRITON_PARAMETERS)}")
        settings = {key: value for key, value in body.items() if key in _SAMPLING}
        settings.update(parameters)
        served, generator = self.generators.get(request.path_params["model"], request.path_params.get("version"))
        request.state.served = served  # whose failure a refusal from here on is
        prompt = await off_loop(
            len(request.state.body), _prompt, generator, body.get("text_input", body.get("input_ids")), "text_input"
        )
        return served, generator, prompt, _sampling(settings)


def _prompt(generator: Generator, value: object, field: str) -> list[int]:
    if isinstance(value, str):
        return generator.encode(value)
    if isinstance(value, list) and all(isinstance(token, int) and not isinstance(token, bool) for token in value):
        return generator.encode(value)
    raise InputError(f"'{field}' must be text or a list of token ids")


def _sampling(settings: dict[str, Any]) -> SamplingParams:
    values: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in _SAMPLING or value is None:
            continue
        target, kind = _SAMPLING[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise InputError(f"'{key}' must be {_kind_name(kind)}, got {value!r}")
        if target == "stop_token_ids":
            values[target] = _token_ids(key, settings[key])
        else:
            values[target] = float(settings[key]) if kind == (int, float) else value
    return SamplingParams(**values)


def _token_ids(key: str, value: list[Any]) -> tuple[int, ...]:
    if not all(isinstance(token, int) and not isinstance(token, bool) for token in value):
        raise InputError(f"'{key}' must be a list of token ids, got {value!r}")
    return tuple(value)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", bool: "true or false", list: "a list", float: "a number"}
    return names[kind] if isinstance(kind, type) else "a number"


def _json_object(request: Request) -> dict[str, Any]:
    """The body the guard read (`RequestGuard.guarded(admits=True)`), as a JSON object."""
    value = decode_json(request.state.body)
    if not isinstance(value, dict):
        raise InputError(f"request body must be a JSON object, got {type(value).__name__}")
    return value


def _triton_answer(served: Served, text: str, ids: list[int], reason: str | None) -> dict[str, Any]:
    return {
        "model_name": served.name,
        "model_version": served.version,
        "text_output": text,
        "output_ids": ids,
        "finish_reason": reason,
    }


def _sse(value: dict[str, Any]) -> bytes:
    return b"data: " + encode_json(value) + b"\n\n"
