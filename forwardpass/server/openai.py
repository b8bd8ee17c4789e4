"""OpenAI's API, as its official SDK calls it, for the models this server serves:

    GET  /v1/models              the served models
    POST /v1/chat/completions    messages, rendered by the model's own chat template → generation (SSE if streamed)
    POST /v1/completions         a prompt or a list of prompts (text or token ids) → generation (SSE if streamed)
    POST /v1/embeddings          a text or a list of texts → the vectors of an embedding model (float or base64)

Each field OpenAI defines is honoured, or refused by name (400) — never ignored: fields with no effect here
(penalties, tools, response formats, ...) are accepted only at the value that changes nothing. The n choices of a
prompt are n sequences of the running batch (seeded: choice i uses seed + i); the answer's usage counts the prompt
tokens once per prompt and every token generated. Errors have OpenAI's shape; a generation whose client goes away is
cancelled.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from forwardpass.errors import ForwardpassError, InputError
from forwardpass.generation.sampling import MAX_LOGPROBS, SamplingParams
from forwardpass.registry import ModelRegistry, Served
from forwardpass.server.codec import decode_json, encode_json
from forwardpass.server.dataplane import DataPlane, model_card
from forwardpass.server.generate import Generators
from forwardpass.server.guard import RequestGuard, error_response
from forwardpass.server.metrics import Metrics
from forwardpass.server.tokens import TextStream, merged, open_streams, unless_disconnected

if TYPE_CHECKING:
    from forwardpass.generation.constraint import JsonSchema
    from forwardpass.generation.engine import Generator, TokenEvent

__all__ = ["openai_error", "openai_routes"]

JSON = "application/json"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_STOP_STRINGS = 4  # OpenAI's limits
MAX_CHOICES = 16
MAX_COMPLETION_LOGPROBS = 5
MAX_EMBEDDING_INPUTS = 2048

# Fields accepted only at the values that change nothing here.
_NO_EFFECT: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, None),
    "frequency_penalty": (0, None),
    "logit_bias": (None, {}),
    "user": (),  # any value: an end-user id for abuse monitoring, nothing to act on
    "store": (False, None),
    "metadata": (None, {}),
    "service_tier": (None, "auto", "default"),
    "parallel_tool_calls": (None, True),  # meaningless without tools
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "modalities": (None, ["text"]),
    "echo": (False, None),
    "suffix": (None,),
}
_SAMPLING_FIELDS = {"temperature", "top_p", "seed", "n", "stop", "stream", "stream_options", "model"}
# Extensions vLLM and TensorRT-LLM accept too.
_EXTENSIONS = {"top_k", "ignore_eos", "stop_token_ids"}
CHAT_FIELDS = {
    "response_format",
    *_SAMPLING_FIELDS,
    *_EXTENSIONS,
    *(_NO_EFFECT.keys() - {"echo", "suffix"}),
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
}
COMPLETION_FIELDS = {
    *_SAMPLING_FIELDS,
    *_EXTENSIONS,
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "echo",
    "suffix",
    "prompt",
    "max_tokens",
    "best_of",
    "logprobs",
    "return_token_ids",
}
EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
MESSAGE_FIELDS = {"role", "content", "name"}


def openai_routes(
    registry: ModelRegistry, generators: Generators, dataplane: DataPlane, guard: RequestGuard
) -> list[Route]:
    """The routes, behind the server's shared body reader, admission and error guard."""
    api = _OpenAiApi(registry, generators, dataplane, guard.metrics)
    routes = [
        Route("/v1/models", guard.guarded(api.models, openai_error), methods=["GET"]),
        Route("/v1/embeddings", guard.guarded(api.embeddings, openai_error, admits=True), methods=["POST"]),
    ]
    for path, endpoint in (("/v1/chat/completions", api.chat), ("/v1/completions", api.completions)):
        routes.append(Route(path, guard.guarded(endpoint, openai_error, admits=True), methods=["POST"]))
    return routes


@dataclasses.dataclass
class _Finished:
    """One choice once its generation ended."""

    text: str
    events: list[TokenEvent]
    reason: str | None


class _OpenAiApi:
    def __init__(self, registry: ModelRegistry, generators: Generators, dataplane: DataPlane, metrics: Metrics) -> None:
        self.registry = registry
        self.generators = generators
        self.dataplane = dataplane
        self.metrics = metrics

    async def models(self, request: Request) -> Response:
        listed = [model_card(self.registry.get(name)) for name in sorted({s.name for s in self.registry.loaded()})]
        return Response(encode_json({"object": "list", "data": listed}), media_type=JSON)

    async def chat(self, request: Request) -> Response:
        body = _json_object(request)
        _refuse_unsupported(body, CHAT_FIELDS, "chat.completions")
        served, generator = self._generator(request, body)
        prompt = generator.chat_prompt(_messages(body.get("messages")))
        params, count = _sampling(body, _chat_logprobs(body))
        params = dataclasses.replace(params, schema=_response_schema(body, generator))
        streams = open_streams(
            self.metrics, served, generator, [prompt] * count, _choices(params, count), _stop_strings(body)
        )
        reply = _Reply("chatcmpl", "chat.completion", served.name, generator, [len(prompt)])
        if _streamed(body):
            return _event_stream(reply.chat_chunks(streams, _include_usage(body)), streams)
        finished = await unless_disconnected(request, _finish_all(streams))
        return Response(encode_json(reply.chat(finished)), media_type=JSON)

    async def completions(self, request: Request) -> Response:
        body = _json_object(request)
        _refuse_unsupported(body, COMPLETION_FIELDS, "completions")
        served, generator = self._generator(request, body)
        prompts = _prompts(generator, body.get("prompt"))
        logprobs = _optional_int(body, "logprobs", 0, MAX_COMPLETION_LOGPROBS)
        params, count = _sampling(body, logprobs)
        best_of = body.get("best_of")
        if best_of is not None and best_of != count:
            raise InputError(f"'best_of': {best_of!r} is not supported; leave it out (or equal to n)")
        choices = _choices(params, count)
        streams = open_streams(
            self.metrics,
            served,
            generator,
            [prompt for prompt in prompts for _ in range(count)],
            choices * len(prompts),
            _stop_strings(body),
        )
        reply = _Reply("cmpl", "text_completion", served.name, generator, [len(prompt) for prompt in prompts])
        reply.with_ids = body.get("return_token_ids") is True
        if _streamed(body):
            return _event_stream(reply.completion_chunks(streams, _include_usage(body)), streams)
        finished = await unless_disconnected(request, _finish_all(streams))
        return Response(encode_json(reply.completion(finished)), media_type=JSON)

    async def embeddings(self, request: Request) -> Response:
        body = _json_object(request)
        _refuse_unsupported(body, EMBEDDING_FIELDS, "embeddings")
        name = _model_name(body)
        served = self.registry.get(name, None)
        request.state.served = served
        postprocess = served.model.config.postprocess
        if postprocess is None or postprocess.kind != "embedding":
            raise InputError(f"model '{name}' is not an embedding model (its config's postprocess kind)")
        texts = _texts(body.get("input"))
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise InputError(f"'encoding_format' must be 'float' or 'base64', got {encoding!r}")
        predictions = await asyncio.gather(*(self.dataplane.predict(name, None, text, {}) for text in texts))
        vectors = [np.asarray(_embedding(prediction), np.float32) for prediction in predictions]
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != vectors[0].shape[-1]:
            raise InputError(f"'dimensions': model '{name}' gives {vectors[0].shape[-1]}-d vectors, not {dimensions}")
        tokens = sum(int(served.model.preprocess(text)[postprocess.mask].sum()) for text in texts)
        data = [
            {"object": "embedding", "index": index, "embedding": _vector(vector, encoding)}
            for index, vector in enumerate(vectors)
        ]
        answer = {
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(encode_json(answer), media_type=JSON)

    def _generator(self, request: Request, body: dict[str, Any]) -> tuple[Served, Generator]:
        served, generator = self.generators.get(_model_name(body), None)
        request.state.served = served  # whose failure a refusal from here on is
        return served, generator


class _Reply:
    """The answer's shape: one id and creation time, the choices' text, logprobs and finish reasons, the usage."""

    def __init__(self, prefix: str, kind: str, model: str, generator: Generator, prompt_tokens: list[int]) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.kind = kind
        self.model = model
        self.codec = generator.codec
        self.prompt_tokens = prompt_tokens
        self.with_ids = False

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": int(time.time()), "model": self.model}

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt_tokens = sum(self.prompt_tokens)
        total = prompt_tokens + completion_tokens
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}

    # chat

    def chat(self, finished: list[_Finished]) -> dict[str, Any]:
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": done.text},
                "logprobs": self.chat_logprobs(done.events),
                "finish_reason": done.reason,
            }
            for index, done in enumerate(finished)
        ]
        produced = sum(len(done.events) for done in finished)
        return {**self.head(self.kind), "choices": choices, "usage": self.usage(produced)}

    async def chat_chunks(self, streams: list[TextStream], include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        usage: dict[str, Any] = {"usage": None} if include_usage else {}
        for index in range(len(streams)):
            choice = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
            yield {**self.head("chat.completion.chunk"), "choices": [{**choice, "finish_reason": None}], **usage}
        async for index, (event, delta) in merged([stream.texts() for stream in streams]):
            choice = {
                "index": index,
                "delta": {"content": delta} if delta or event.finish_reason is None else {},
                "logprobs": self.chat_logprobs([event]),
                "finish_reason": event.finish_reason,
            }
            yield {**self.head("chat.completion.chunk"), "choices": [choice], **usage}
        if include_usage:
            produced = sum(stream.tokens for stream in streams)
            yield {**self.head("chat.completion.chunk"), "choices": [], "usage": self.usage(produced)}

    def chat_logprobs(self, events: list[TokenEvent]) -> dict[str, Any] | None:
        if not events or events[0].logprob is None:
            return None
        content = []
        for event in events:
            top = [self.token_logprob(token, logprob) for token, logprob in event.top_logprobs]
            content.append({**self.token_logprob(event.token_id, event.logprob or 0.0), "top_logprobs": top})
        return {"content": content, "refusal": None}

    def token_text(self, token_id: int) -> str:
        return self.codec.decode([token_id], skip_special_tokens=False)

    def token_logprob(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    # completions

    def completion(self, finished: list[_Finished]) -> dict[str, Any]:
        choices = [
            self.completion_choice(index, done.text, done.events, done.reason) for index, done in enumerate(finished)
        ]
        produced = sum(len(done.events) for done in finished)
        return {**self.head(self.kind), "choices": choices, "usage": self.usage(produced)}

    async def completion_chunks(self, streams: list[TextStream], include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        usage: dict[str, Any] = {"usage": None} if include_usage else {}
        async for index, (event, delta) in merged([stream.texts() for stream in streams]):
            choice = self.completion_choice(index, delta, [event], event.finish_reason)
            yield {**self.head(self.kind), "choices": [choice], **usage}
        if include_usage:
            produced = sum(stream.tokens for stream in streams)
            yield {**self.head(self.kind), "choices": [], "usage": self.usage(produced)}

    def completion_choice(self, index: int, text: str, events: list[TokenEvent], reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"text": text, "index": index, "logprobs": None, "finish_reason": reason}
        if events and events[0].logprob is not None:
            tokens = [self.token_text(event.token_id) for event in events]
            choice["logprobs"] = {
                "tokens": tokens,
                "token_logprobs": [event.logprob for event in events],
                "top_logprobs": [
                    {
                        self.codec.decode([token], skip_special_tokens=False): logprob
                        for token, logprob in event.top_logprobs
                    }
                    for event in events
                ],
                "text_offset": list(np.cumsum([0, *map(len, tokens[:-1])]).tolist()),
            }
        if self.with_ids:
            choice["token_ids"] = [event.token_id for event in events]
        return choice


async def _finish_all(streams: list[TextStream]) -> list[_Finished]:
    """Every stream to its end, side by side, in the streams' order."""
    pieces: list[list[str]] = [[] for _ in streams]
    events: list[list[TokenEvent]] = [[] for _ in streams]
    reasons: list[str | None] = [None] * len(streams)
    try:
        async for index, (event, delta) in merged([stream.texts() for stream in streams]):
            pieces[index].append(delta)
            events[index].append(event)
            reasons[index] = event.finish_reason
    finally:
        for stream in streams:
            stream.close()
    return [_Finished("".join(text), got, reason) for text, got, reason in zip(pieces, events, reasons, strict=True)]


def _event_stream(chunks: AsyncIterator[dict[str, Any]], streams: list[TextStream]) -> StreamingResponse:
    """Server-sent events, `data: [DONE]` last; an error during the stream is its last event before that. The
    streams are closed after the last chunk, or once a client that went away stopped the response (starlette then
    cancels the body, possibly before it began)."""

    async def events() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield _sse(chunk)
        except ForwardpassError as exc:
            yield _sse(_error_body(exc))
        yield b"data: [DONE]\n\n"

    def close() -> None:
        for stream in streams:
            stream.close()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers=SSE_HEADERS, background=BackgroundTask(close)
    )


# requests


def _json_object(request: Request) -> dict[str, Any]:
    value = decode_json(request.state.body)
    if not isinstance(value, dict):
        raise InputError(f"request body must be a JSON object, got {type(value).__name__}")
    return value


def _refuse_unsupported(body: dict[str, Any], accepted: set[str], api: str) -> None:
    unknown = sorted(set(body) - accepted)
    if unknown:
        raise InputError(f"{api}: field(s) {unknown} not supported; leave them out")
    for key, harmless in _NO_EFFECT.items():
        if key in body and harmless and body[key] not in harmless:
            raise InputError(f"{api}: '{key}': {body[key]!r} is not supported; leave it out")


def _model_name(body: dict[str, Any]) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InputError("'model' must name a model of this server")
    return name


def _messages(value: object) -> list[dict[str, Any]]:
    """OpenAI's messages as chat templates take them: content a string (text parts joined by newlines, as vLLM
    does for templates that expect a string); fields beyond role, content and name (tool calls, audio) refused."""
    if not isinstance(value, list) or not value:
        raise InputError("'messages' must be a non-empty list of {role, content} objects")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise InputError(f"messages[{index}] must be an object with 'role' and 'content'")
        unknown = sorted(set(message) - MESSAGE_FIELDS)
        if unknown:
            raise InputError(f"messages[{index}]: field(s) {unknown} not supported (no tools or audio here)")
        role, content, name = message.get("role"), message.get("content"), message.get("name")
        if not isinstance(role, str) or not role:
            raise InputError(f"messages[{index}].role must be a string such as 'system', 'user' or 'assistant'")
        if name is not None and not isinstance(name, str):
            raise InputError(f"messages[{index}].name must be a string")
        messages.append({"role": role, "content": _content(content, index), **({"name": name} if name else {})})
    return messages


def _content(value: object, index: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InputError(f"messages[{index}].content: only text parts are supported, got {part!r:.80}")
            texts.append(part["text"])
        return "\n".join(texts)
    raise InputError(f"messages[{index}].content must be text or a list of text parts")


def _prompts(generator: Generator, value: object) -> list[list[int]]:
    """A prompt (text or token ids) or a non-empty list of them, as token ids."""
    if isinstance(value, str) or (isinstance(value, list) and value and all(_is_int(item) for item in value)):
        return [generator.encode(value)]
    if isinstance(value, list) and value:
        prompts = []
        for item in value:
            if not (isinstance(item, str) or (isinstance(item, list) and all(_is_int(token) for token in item))):
                raise InputError("'prompt' must be text, token ids, or a list of either")
            prompts.append(generator.encode(item))
        return prompts
    raise InputError("'prompt' must be text, token ids, or a non-empty list of either")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sampling(body: dict[str, Any], logprobs: int | None) -> tuple[SamplingParams, int]:
    """The request's SamplingParams (OpenAI's defaults: 16 tokens for completions, temperature 1) and its n."""
    limits = [key for key in ("max_tokens", "max_completion_tokens") if body.get(key) is not None]
    if len(limits) == 2 and body["max_tokens"] != body["max_completion_tokens"]:
        raise InputError("'max_tokens' and 'max_completion_tokens' differ: give one")
    default_limit = 16 if "prompt" in body else None  # completions: OpenAI's 16; chat: the model's default
    max_new_tokens = _optional_int(body, limits[0], 1, None) if limits else default_limit
    temperature = _optional_number(body, "temperature", 1.0)
    top_p = _optional_number(body, "top_p", 1.0)
    seed = _optional_int(body, "seed", 0, None)
    top_k = _optional_int(body, "top_k", 0, None) or 0
    ignore_eos = body.get("ignore_eos") or False
    if not isinstance(ignore_eos, bool):
        raise InputError(f"'ignore_eos' must be true or false, got {ignore_eos!r}")
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(_is_int(token) for token in stop_ids):
        raise InputError(f"'stop_token_ids' must be a list of token ids, got {stop_ids!r}")
    count = _optional_int(body, "n", 1, MAX_CHOICES) or 1
    params = SamplingParams(
        max_new_tokens, temperature, top_k, top_p, seed, tuple(stop_ids), ignore_eos, logprobs=logprobs
    )
    return params, count


def _response_schema(body: dict[str, Any], generator: Generator) -> JsonSchema | None:
    """`response_format`: text (no schema), json_object (any JSON object) or json_schema (its `schema`)."""
    wanted = body.get("response_format")
    if wanted is None:
        return None
    kind = wanted.get("type") if isinstance(wanted, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return generator.json_schema({"type": "object"})
    described = wanted.get("json_schema") if kind == "json_schema" else None
    schema = described.get("schema") if isinstance(described, dict) else None
    if not isinstance(schema, dict):
        raise InputError(
            '\'response_format\' must be {"type": "text"}, {"type": "json_object"} or '
            '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}'
        )
    return generator.json_schema(schema)


def _choices(params: SamplingParams, count: int) -> list[SamplingParams]:
    """n choices of one prompt: with a seed, choice i samples from seed + i (reproducible, and not n copies)."""
    if params.seed is None:
        return [params] * count
    return [dataclasses.replace(params, seed=params.seed + index) for index in range(count)]


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise InputError(f"'logprobs' must be true or false, got {wanted!r}")
    top = _optional_int(body, "top_logprobs", 0, MAX_LOGPROBS)
    if top is not None and not wanted:
        raise InputError("'top_logprobs' needs 'logprobs': true")
    return (top or 0) if wanted else None


def _stop_strings(body: dict[str, Any]) -> tuple[str, ...]:
    """OpenAI's `stop`: a string or a list of up to four, empty ones ignored."""
    value = body.get("stop")
    strings = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if value is not None and (strings is None or not all(isinstance(item, str) for item in strings)):
        raise InputError(f"'stop' must be a string or a list of strings, got {value!r}")
    chosen = tuple(item for item in strings or [] if item)
    if len(chosen) > MAX_STOP_STRINGS:
        raise InputError(f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(chosen)}")
    return chosen


def _streamed(body: dict[str, Any]) -> bool:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InputError(f"'stream' must be true or false, got {stream!r}")
    if body.get("stream_options") is not None and not stream:
        raise InputError("'stream_options' is only allowed with 'stream': true")
    return bool(stream)


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InputError("'stream_options' must be an object")
    unknown = sorted(set(options) - {"include_usage"})
    if unknown:
        raise InputError(f"'stream_options': field(s) {unknown} not supported; leave them out")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise InputError(f"'stream_options.include_usage' must be true or false, got {include!r}")
    return include


def _optional_int(body: dict[str, Any], key: str, low: int, high: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_int(value) or value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"in [{low}, {high}]"
        raise InputError(f"'{key}' must be an integer {bounds}, got {value!r}")
    return int(value)


def _optional_number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"'{key}' must be a number, got {value!r}")
    return float(value)


def _texts(value: object) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) and text for text in texts):
        raise InputError("'input' must be a non-empty string or a non-empty list of them (token ids are not accepted)")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise InputError(f"'input' takes at most {MAX_EMBEDDING_INPUTS} texts, got {len(texts)}")
    return texts


def _embedding(prediction: object) -> Any:
    if not isinstance(prediction, dict) or "embedding" not in prediction:
        raise InputError("the model gave no embedding for the input")
    return prediction["embedding"]


def _vector(vector: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":  # little-endian float32, as the SDK decodes it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


# answers


def _sse(value: dict[str, Any]) -> bytes:
    return b"data: " + encode_json(value) + b"\n\n"


def _error_body(error: ForwardpassError) -> dict[str, Any]:
    kind = "invalid_request_error" if error.http_status < 500 else "server_error"
    return {"error": {"message": str(error), "type": kind, "param": None, "code": error.http_status}}


def openai_error(error: ForwardpassError) -> Response:
    """OpenAI's error body, with the headers (Retry-After, ...) of the V2 answer."""
    headers = {key: value for key, value in error_response(error).headers.items() if key.lower() != "content-length"}
    return Response(encode_json(_error_body(error)), error.http_status, headers, JSON)
