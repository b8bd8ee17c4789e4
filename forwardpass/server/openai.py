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
from forwardpass.pipeline.text import TextPreprocessor
from forwardpass.registry import ModelRegistry, Served
from forwardpass.server import openai_request as read
from forwardpass.server.codec import encode_json
from forwardpass.server.dataplane import DataPlane, model_card
from forwardpass.server.generate import Generators
from forwardpass.server.guard import RequestGuard, error_response, off_loop, one_line
from forwardpass.server.metrics import Metrics
from forwardpass.server.tokens import TextStream, merged, open_streams, unless_disconnected

if TYPE_CHECKING:
    from forwardpass.generation.engine import Generator, TokenEvent
    from forwardpass.model import Model

__all__ = ["OPENAI_PATHS", "openai_error", "openai_routes"]

JSON = "application/json"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit
# Their errors, a refused token included, are in OpenAI's shape: the SDK shows error.message and nothing else
OPENAI_PATHS = frozenset({"/v1/models", "/v1/embeddings", "/v1/chat/completions", "/v1/completions"})


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
        body = read.json_object(request)
        read.refuse_unsupported(body, read.CHAT_FIELDS, "chat.completions")
        served, generator = self._generator(request, body)
        prompt = await off_loop(len(request.state.body), _chat_prompt, generator, body.get("messages"))
        params, count = read.sampling(body, read.chat_logprobs(body))
        params = dataclasses.replace(params, schema=read.response_schema(body, generator))
        streamed, include_usage = read.streamed(body), read.include_usage(body)  # refused before anything is queued
        streams = open_streams(
            self.metrics, served, generator, [prompt] * count, read.choices(params, count), read.stop_strings(body)
        )
        reply = _Reply("chatcmpl", "chat.completion", served.name, generator, [len(prompt)])
        if streamed:
            return _event_stream(reply.chat_chunks(streams, include_usage), streams)
        finished = await unless_disconnected(request, _finish_all(streams))
        return Response(encode_json(reply.chat(finished)), media_type=JSON)

    async def completions(self, request: Request) -> Response:
        body = read.json_object(request)
        read.refuse_unsupported(body, read.COMPLETION_FIELDS, "completions")
        served, generator = self._generator(request, body)
        prompts = await off_loop(len(request.state.body), read.prompts, generator, body.get("prompt"))
        logprobs = read.optional_int(body, "logprobs", 0, MAX_COMPLETION_LOGPROBS)
        params, count = read.sampling(body, logprobs)
        best_of = body.get("best_of")
        if best_of is not None and best_of != count:
            raise InputError(f"'best_of': {best_of!r} is not supported; leave it out (or equal to n)")
        choices = read.choices(params, count)
        # refused before anything is queued: generations opened for a request then refused ran on for nobody
        streamed, include_usage = read.streamed(body), read.include_usage(body)
        with_ids = read.optional_bool(body, "return_token_ids") or False
        stops = read.stop_strings(body)
        streams = open_streams(
            self.metrics,
            served,
            generator,
            [prompt for prompt in prompts for _ in range(count)],
            choices * len(prompts),
            stops,
        )
        reply = _Reply("cmpl", "text_completion", served.name, generator, [len(prompt) for prompt in prompts])
        reply.with_ids = with_ids
        if streamed:
            return _event_stream(reply.completion_chunks(streams, include_usage), streams)
        finished = await unless_disconnected(request, _finish_all(streams))
        return Response(encode_json(reply.completion(finished)), media_type=JSON)

    async def embeddings(self, request: Request) -> Response:
        body = read.json_object(request)
        read.refuse_unsupported(body, read.EMBEDDING_FIELDS, "embeddings")
        name = read.model_name(body)
        served = self.registry.get(name, None)
        request.state.served = served
        postprocess = served.model.config.postprocess
        if postprocess is None or postprocess.kind != "embedding":
            raise InputError(f"model '{name}' is not an embedding model (its config's postprocess kind)")
        texts = read.texts(body.get("input"))
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise InputError(f"'encoding_format' must be 'float' or 'base64', got {encoding!r}")
        tokens = await asyncio.to_thread(_counted_within_context, served.model, texts, postprocess.mask, name)
        # a list of texts is one request of the model's batcher: up to 2048 texts are a few requests, not 2048
        size = max(served.max_batch_size, 1)
        groups = [texts[start : start + size] for start in range(0, len(texts), size)]
        answers = await asyncio.gather(*(self.dataplane.predict(name, None, group, {}) for group in groups))
        predictions = [item for answer in answers for item in (answer if isinstance(answer, list) else [answer])]
        vectors = [np.asarray(_embedding(prediction), np.float32) for prediction in predictions]
        dimensions = read.optional_int(body, "dimensions", 1, None)
        if dimensions is not None and dimensions != vectors[0].shape[-1]:
            raise InputError(f"'dimensions': model '{name}' gives {vectors[0].shape[-1]}-d vectors, not {dimensions}")
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
        served, generator = self.generators.get(read.model_name(body), None)
        request.state.served = served  # whose failure a refusal from here on is
        return served, generator


class _Reply:
    """The answer's shape: one id and creation time, the choices' text, logprobs and finish reasons, the usage."""

    def __init__(self, prefix: str, kind: str, model: str, generator: Generator, prompt_tokens: list[int]) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())  # every chunk of a stream has the same
        self.kind = kind
        self.model = model
        self.codec = generator.codec
        self.prompt_tokens = prompt_tokens
        self.with_ids = False

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

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
        return {"token": self.token_text(token_id), "logprob": logprob, "bytes": list(self.codec.token_bytes(token_id))}

    # completions

    def completion(self, finished: list[_Finished]) -> dict[str, Any]:
        choices = [
            self.completion_choice(index, done.text, done.events, done.reason) for index, done in enumerate(finished)
        ]
        produced = sum(len(done.events) for done in finished)
        return {**self.head(self.kind), "choices": choices, "usage": self.usage(produced)}

    async def completion_chunks(self, streams: list[TextStream], include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        usage: dict[str, Any] = {"usage": None} if include_usage else {}
        offsets = [0] * len(streams)  # each choice's text so far: its tokens' text_offset go on from there
        async for index, (event, delta) in merged([stream.texts() for stream in streams]):
            choice = self.completion_choice(index, delta, [event], event.finish_reason, offsets[index])
            if event.logprob is not None:  # text_offset is only read with logprobs: no second decode without them
                offsets[index] += len(self.token_text(event.token_id))
            yield {**self.head(self.kind), "choices": [choice], **usage}
        if include_usage:
            produced = sum(stream.tokens for stream in streams)
            yield {**self.head(self.kind), "choices": [], "usage": self.usage(produced)}

    def completion_choice(
        self, index: int, text: str, events: list[TokenEvent], reason: str | None, offset: int = 0
    ) -> dict[str, Any]:
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
                "text_offset": list(np.cumsum([offset, *map(len, tokens[:-1])]).tolist()),
            }
        if self.with_ids:
            choice["token_ids"] = [event.token_id for event in events]
        return choice


def _chat_prompt(generator: Generator, messages: object) -> list[int]:
    """The messages checked and rendered (a body of megabytes: a million messages take seconds)."""
    return generator.chat_prompt(read.messages(messages))


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


def _counted_within_context(model: Model, texts: list[str], mask: str, name: str) -> int:
    """The texts' tokens, for usage; a text longer than the model takes is refused, as OpenAI refuses it: an
    embedding of its first max_length tokens would stand for the whole text without saying so."""
    preprocess = model.pipeline.preprocess
    if isinstance(preprocess, TextPreprocessor):
        for index, text in enumerate(texts):
            if not preprocess.fits(text):
                raise InputError(
                    f"input {index} is longer than model '{name}' reads ({preprocess.max_length} tokens): "
                    "shorten or split it"
                )
    return sum(int(model.preprocess(text)[mask].sum()) for text in texts)


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
    return {"error": {"message": one_line(error), "type": kind, "param": None, "code": error.http_status}}


def openai_error(error: ForwardpassError) -> Response:
    """OpenAI's error body, with the headers (Retry-After, ...) of the V2 answer."""
    headers = {key: value for key, value in error_response(error).headers.items() if key.lower() != "content-length"}
    return Response(encode_json(_error_body(error)), error.http_status, headers, JSON)
