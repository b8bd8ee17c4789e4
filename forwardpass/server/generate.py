"""Token generation over HTTP: Triton's generate extension and OpenAI's completions API, streamed as server-sent
events when asked, so that existing clients work.

    POST /v2/models/<m>[/versions/<v>]/generate          {"text_input": "...", "max_tokens": 16, ...} → one answer
    POST /v2/models/<m>[/versions/<v>]/generate_stream   the same → one SSE event per token
    POST /v1/completions                                  {"model": "<m>", "prompt": "...", "stream": true, ...}

Each model version gets one Generator (continuous batching) on first use; every request joins its running batch.
Errors before the first token are the usual statuses; an error during a stream is its last event. Finished
generations feed /metrics (tokens, time to first token, duration); failures count where they are answered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from forwardpass.errors import ForwardpassError, InputError
from forwardpass.generation import Generator, SamplingParams, StopStrings, TokenEvent, open_generator
from forwardpass.registry import ModelRegistry, Served
from forwardpass.server.codec import decode_json, encode_json
from forwardpass.server.guard import RequestGuard, error_response
from forwardpass.server.metrics import Metrics

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
# OpenAI fields accepted only at their no-op values: anything else is refused rather than silently ignored.
_OPENAI_NO_OPS: dict[str, tuple[Any, ...]] = {
    "n": (1, None),
    "best_of": (1, None),
    "echo": (False, None),
    "logprobs": (None,),
    "suffix": (None,),
    "presence_penalty": (0, None),
    "frequency_penalty": (0, None),
    "logit_bias": (None, {}),
}
MAX_STOP_STRINGS = 4  # OpenAI's limit
_OPENAI_FIELDS = {
    "model",
    "prompt",
    "stop",
    "stream",
    "stream_options",
    "user",
    "return_token_ids",
    *_SAMPLING,
    *_OPENAI_NO_OPS,
}


class Generators:
    """The Generator of each served model version, made on first use; closed with the server."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self._generators: dict[Served, Generator] = {}

    def get(self, name: str, version: str | None) -> tuple[Served, Generator]:
        served = self._registry.get(name, version)
        generator = self._generators.get(served)
        if generator is None:
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
        ("/v1/completions", api.completions, _openai_error),
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
        pieces, ids, reason = [], [], None
        async for event, delta in self._with_text(served, generator, prompt, params):
            pieces.append(delta)
            ids.append(event.token_id)
            reason = event.finish_reason
        return Response(encode_json(_triton_answer(served, "".join(pieces), ids, reason)), media_type=JSON)

    async def generate_stream(self, request: Request) -> Response:
        served, generator, prompt, params = await self._triton_request(request)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for event, delta in self._with_text(served, generator, prompt, params):
                    yield _sse(_triton_answer(served, delta, [event.token_id], event.finish_reason))
            except ForwardpassError as exc:
                self.metrics.failed(served.name, served.version, exc)
                yield _sse({"error": str(exc)})

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def _triton_request(self, request: Request) -> tuple[Served, Generator, list[int], SamplingParams]:
        body = _json_object(request)
        unknown = sorted(set(body) - _TRITON_FIELDS)
        if unknown:
            raise InputError(f"unknown generate field(s) {unknown}; accepted: {sorted(_TRITON_FIELDS)}")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InputError("'parameters' must be a JSON object")
        settings = {key: value for key, value in body.items() if key in _SAMPLING}
        settings.update(parameters)
        served, generator = self.generators.get(request.path_params["model"], request.path_params.get("version"))
        request.state.served = served  # whose failure a refusal from here on is
        prompt = _prompt(generator, body.get("text_input", body.get("input_ids")), "text_input")
        return served, generator, prompt, _sampling(settings)

    # OpenAI's completions

    async def completions(self, request: Request) -> Response:
        body = _json_object(request)
        unknown = sorted(set(body) - _OPENAI_FIELDS)
        if unknown:
            raise InputError(f"unknown completions field(s) {unknown}")
        for key, allowed in _OPENAI_NO_OPS.items():
            if key in body and body[key] not in allowed:
                raise InputError(f"'{key}': {body[key]!r} is not supported; leave it out")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise InputError("'model' must name a model of this server")
        served, generator = self.generators.get(name, None)
        request.state.served = served
        prompt_value = body.get("prompt")
        if isinstance(prompt_value, list) and len(prompt_value) == 1 and isinstance(prompt_value[0], str | list):
            prompt_value = prompt_value[0]  # a batch of one prompt
        prompt = _prompt(generator, prompt_value, "prompt")
        given = {key: value for key, value in body.items() if value is not None}
        params = _sampling({"max_tokens": 16, "temperature": 1.0, **given})  # OpenAI's defaults
        stop = _stop_strings(body.get("stop"))
        with_ids = body.get("return_token_ids") is True
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.get("stream") is True:

            async def events() -> AsyncIterator[bytes]:
                try:
                    async for event, delta in self._with_text(served, generator, prompt, params, stop):
                        ids = [event.token_id] if with_ids else None
                        choice = _choice(delta, event.finish_reason, ids)
                        yield _sse(_completion(completion_id, created, served.name, choice))
                except ForwardpassError as exc:
                    self.metrics.failed(served.name, served.version, exc)
                    yield _sse(_openai_error_body(exc))
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
        pieces, ids, reason = [], [], None
        async for event, delta in self._with_text(served, generator, prompt, params, stop):
            pieces.append(delta)
            ids.append(event.token_id)
            reason = event.finish_reason
        answer = _completion(
            completion_id, created, served.name, _choice("".join(pieces), reason, ids if with_ids else None)
        )
        answer["usage"] = {
            "prompt_tokens": len(prompt),
            "completion_tokens": len(ids),
            "total_tokens": len(prompt) + len(ids),
        }
        return Response(encode_json(answer), media_type=JSON)

    async def _with_text(
        self,
        served: Served,
        generator: Generator,
        prompt: list[int],
        params: SamplingParams,
        stop: tuple[str, ...] = (),
    ) -> AsyncIterator[tuple[TokenEvent, str]]:
        """Each token with the text it completes (the rest of the text comes with the last token). With stop
        strings, the text ends before the first one it contains, which ends the generation (finish reason "stop");
        text that may be the start of one waits until it cannot. A generation that ends is counted in the metrics."""
        text = generator.codec.incremental()
        stops = StopStrings(stop)
        started = time.perf_counter()
        first_token_s, tokens = 0.0, 0
        with served.in_use():
            async with contextlib.aclosing(generator.stream(prompt, params)) as events:  # leaving early cancels it
                async for event in events:
                    if not tokens:
                        first_token_s = time.perf_counter() - started
                    tokens += 1
                    reason = event.finish_reason
                    delta = stops.feed(text.push(event.token_id) + (text.flush() if reason else ""), final=bool(reason))
                    if stops.stopped:
                        reason = "stop"
                    if reason is None:
                        yield event, delta
                        continue
                    elapsed = time.perf_counter() - started
                    self.metrics.generated(
                        served.name, served.version, len(prompt), tokens, first_token_s, elapsed, reason
                    )
                    yield dataclasses.replace(event, finish_reason=reason), delta
                    return


def _stop_strings(value: object) -> tuple[str, ...]:
    """OpenAI's `stop`: a string or a list of up to four, empty ones ignored."""
    strings = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if value is not None and (strings is None or not all(isinstance(item, str) for item in strings)):
        raise InputError(f"'stop' must be a string or a list of strings, got {value!r}")
    chosen = tuple(item for item in strings or [] if item)
    if len(chosen) > MAX_STOP_STRINGS:
        raise InputError(f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(chosen)}")
    return chosen


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


def _choice(text: str, reason: str | None, ids: list[int] | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"text": text, "index": 0, "logprobs": None, "finish_reason": reason}
    if ids is not None:
        choice["token_ids"] = ids
    return choice


def _completion(completion_id: str, created: int, model: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {"id": completion_id, "object": "text_completion", "created": created, "model": model, "choices": [choice]}


def _sse(value: dict[str, Any]) -> bytes:
    return b"data: " + encode_json(value) + b"\n\n"


def _openai_error_body(error: ForwardpassError) -> dict[str, Any]:
    kind = "invalid_request_error" if error.http_status < 500 else "server_error"
    return {"error": {"message": str(error), "type": kind, "code": error.http_status}}


def _openai_error(error: ForwardpassError) -> Response:
    """OpenAI's error body, with the headers (Retry-After, ...) of the V2 answer."""
    headers = {key: value for key, value in error_response(error).headers.items() if key.startswith(("retry", "www"))}
    return Response(encode_json(_openai_error_body(error)), error.http_status, headers, JSON)
