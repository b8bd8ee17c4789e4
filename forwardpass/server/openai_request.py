"""What an OpenAI request may say: the fields each API accepts (the others refused by name, fields with no effect
here accepted only at the value that changes nothing) and each field's value read, checked and bounded."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from forwardpass.errors import InputError
from forwardpass.generation.sampling import MAX_LOGPROBS, SamplingParams
from forwardpass.server.codec import decode_json

if TYPE_CHECKING:
    from forwardpass.generation.constraint import JsonSchema
    from forwardpass.generation.engine import Generator

MAX_STOP_STRINGS = 4  # OpenAI's limits
MAX_CHOICES = 16
MAX_EMBEDDING_INPUTS = 2048
# Each token's text is matched against every start of every stop string (StopStrings): a stop string of 300,000
# characters held the event loop for seconds per token.
MAX_STOP_CHARS = 1000

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
_MESSAGE_FIELDS = {"role", "content", "name"}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}  # as templates know


def json_object(request: Request) -> dict[str, Any]:
    value = decode_json(request.state.body)
    if not isinstance(value, dict):
        raise InputError(f"request body must be a JSON object, got {type(value).__name__}")
    return value


def refuse_unsupported(body: dict[str, Any], accepted: set[str], api: str) -> None:
    unknown = sorted(set(body) - accepted)
    if unknown:
        raise InputError(f"{api}: field(s) {unknown} not supported; leave them out")
    for key, harmless in _NO_EFFECT.items():
        if key in body and harmless and body[key] not in harmless:
            raise InputError(f"{api}: '{key}': {body[key]!r} is not supported; leave it out")
    if not isinstance(body.get("user", ""), str | None):
        raise InputError(f"'user' must be a string (an end-user id), got {body['user']!r:.80}")


def model_name(body: dict[str, Any]) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InputError("'model' must name a model of this server")
    return name


def messages(value: object) -> list[dict[str, Any]]:
    """OpenAI's messages as chat templates take them: content a string (text parts joined by newlines, as vLLM
    does for templates that expect a string), a developer message as the system one it stands for (OpenAI's newer
    name); fields beyond role, content and name (tool calls, audio) refused unless null, as the SDK's own message
    dumped to go on with a conversation has them."""
    if not isinstance(value, list) or not value:
        raise InputError("'messages' must be a non-empty list of {role, content} objects")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise InputError(f"messages[{index}] must be an object with 'role' and 'content'")
        unknown = sorted(key for key, item in message.items() if key not in _MESSAGE_FIELDS and item is not None)
        if unknown:
            raise InputError(f"messages[{index}]: field(s) {unknown} not supported (no tools or audio here)")
        role, content, name = message.get("role"), message.get("content"), message.get("name")
        if role not in _ROLES:
            roles = ", ".join(f"'{role}'" for role in _ROLES)
            raise InputError(f"messages[{index}].role must be one of {roles} (no tools here), got {role!r:.80}")
        if name is not None and not isinstance(name, str):
            raise InputError(f"messages[{index}].name must be a string")
        messages.append({"role": _ROLES[role], "content": _content(content, index), **({"name": name} if name else {})})
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


def prompts(generator: Generator, value: object) -> list[list[int]]:
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


def sampling(body: dict[str, Any], logprobs: int | None) -> tuple[SamplingParams, int]:
    """The request's SamplingParams (OpenAI's defaults: 16 tokens for completions, temperature 1) and its n."""
    limits = [key for key in ("max_tokens", "max_completion_tokens") if body.get(key) is not None]
    if len(limits) == 2 and body["max_tokens"] != body["max_completion_tokens"]:
        raise InputError("'max_tokens' and 'max_completion_tokens' differ: give one")
    default_limit = 16 if "prompt" in body else None  # completions: OpenAI's 16; chat: the model's default
    max_new_tokens = optional_int(body, limits[0], 1, None) if limits else default_limit
    temperature = _optional_number(body, "temperature", 1.0)
    top_p = _optional_number(body, "top_p", 1.0)
    seed = optional_int(body, "seed", 0, None)
    top_k = optional_int(body, "top_k", 0, None) or 0
    ignore_eos = optional_bool(body, "ignore_eos") or False
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(_is_int(token) for token in stop_ids):
        raise InputError(f"'stop_token_ids' must be a list of token ids, got {stop_ids!r}")
    count = optional_int(body, "n", 1, MAX_CHOICES) or 1
    params = SamplingParams(
        max_new_tokens, temperature, top_k, top_p, seed, tuple(stop_ids), ignore_eos, logprobs=logprobs
    )
    return params, count


def response_schema(body: dict[str, Any], generator: Generator) -> JsonSchema | None:
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


def choices(params: SamplingParams, count: int) -> list[SamplingParams]:
    """n choices of one prompt: with a seed, choice i samples from seed + i (reproducible, and not n copies)."""
    if params.seed is None:
        return [params] * count
    return [dataclasses.replace(params, seed=params.seed + index) for index in range(count)]


def chat_logprobs(body: dict[str, Any]) -> int | None:
    wanted = optional_bool(body, "logprobs")
    top = optional_int(body, "top_logprobs", 0, MAX_LOGPROBS)
    if top is not None and not wanted:
        raise InputError("'top_logprobs' needs 'logprobs': true")
    return (top or 0) if wanted else None


def stop_strings(body: dict[str, Any]) -> tuple[str, ...]:
    """OpenAI's `stop`: a string or a list of up to four, empty ones ignored."""
    value = body.get("stop")
    strings = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if value is not None and (strings is None or not all(isinstance(item, str) for item in strings)):
        raise InputError(f"'stop' must be a string or a list of strings, got {value!r}")
    chosen = tuple(item for item in strings or [] if item)
    if len(chosen) > MAX_STOP_STRINGS:
        raise InputError(f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(chosen)}")
    longest = max(map(len, chosen), default=0)
    if longest > MAX_STOP_CHARS:
        raise InputError(f"'stop' strings have at most {MAX_STOP_CHARS} characters, got one of {longest}")
    return chosen


def streamed(body: dict[str, Any]) -> bool:
    stream = optional_bool(body, "stream")
    if body.get("stream_options") is not None and not stream:
        raise InputError("'stream_options' is only allowed with 'stream': true")
    return bool(stream)


def include_usage(body: dict[str, Any]) -> bool:
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


def optional_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise InputError(f"'{key}' must be true or false, got {value!r:.80}")
    return value


def optional_int(body: dict[str, Any], key: str, low: int, high: int | None) -> int | None:
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


def texts(value: object) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if isinstance(texts, list) and texts and all(_is_int(item) or isinstance(item, list) for item in texts):
        raise InputError(
            "'input': token ids are not accepted, only text (ids may be another tokenizer's: LangChain's "
            "OpenAIEmbeddings sends tiktoken's unless check_embedding_ctx_length=False)"
        )
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) and text for text in texts):
        raise InputError("'input' must be a non-empty string or a non-empty list of them")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise InputError(f"'input' takes at most {MAX_EMBEDDING_INPUTS} texts, got {len(texts)}")
    return texts
