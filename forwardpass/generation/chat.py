"""Chat messages → the prompt text the model was trained on, rendered by the model's own chat template (the Jinja
template its GGUF metadata or Hugging Face tokenizer carried, kept in the exported folder's tokenizer_config.json).

Templates are code from whoever published the model: they run in jinja2's immutable sandbox, with the environment
transformers' `apply_chat_template` sets up (trim_blocks, lstrip_blocks, loop controls, a `tojson` that does not
escape HTML, `raise_exception`, `strftime_now`, the tokenizer's special tokens as variables), so that both render
the same text for the same messages.

A template's size and time are bounded: its repetitions, powers and output by size, and its loops, calls and filters
by a render deadline, checked as its loops go and at each call (loops that print nothing otherwise ran for hours).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from forwardpass.errors import ConfigError, InputError

__all__ = ["CONFIG_FILE", "ChatTemplate"]

CONFIG_FILE = "tokenizer_config.json"  # Hugging Face's name: {"chat_template": "...", "bos_token": "...", ...}
TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 saves a folder's template
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# A rendered prompt's bound, far past any context: a template's `"x" * 10**10` or output loops built gigabytes per
# request in the server (the sandbox bounds range() only).
MAX_RENDERED_CHARS = 16 << 20
MAX_EXPONENT = 64  # of an integer `**`: larger ones only make numbers no prompt holds, slowly
# Real templates render in well under a millisecond; nested loops that print nothing (`range` is bounded per call, not
# per render) or recursive macros ran for hours per chat request.
RENDER_SECONDS = 1.0
BOUNDED_FILTER = "_loop_bounded_by_the_render_deadline"  # what each {% for %} iterates through
DEADLINE_STRIDE = 256  # loop items between two readings of the clock: far under a millisecond of an empty loop
# When the render in progress in this thread (or task) must stop; None outside a render
_deadline: ContextVar[float | None] = ContextVar("chat_template_deadline", default=None)


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str], origin: str = "chat template") -> None:
        environment = _BoundedSandbox(
            trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
        )
        environment.filters["tojson"] = _tojson
        environment.filters[BOUNDED_FILTER] = _bounded
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        try:
            self._template = environment.from_string(_loops_bounded(environment.parse(source)))
        except jinja2.TemplateError as exc:
            raise ConfigError(f"{origin}: the chat template does not compile: {exc}") from None
        self.source = source
        self.special_tokens = {key: value for key, value in special_tokens.items() if key in SPECIAL_TOKENS}

    @classmethod
    def of_folder(cls, folder: Path) -> ChatTemplate | None:
        """The template of a model folder (tokenizer_config.json's `chat_template`, else chat_template.jinja), with
        the special tokens tokenizer_config.json names; None when it has none."""
        settings: dict[str, Any] = {}
        config_file = folder / CONFIG_FILE
        if config_file.is_file():
            try:
                settings = json.loads(config_file.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ConfigError(f"{config_file}: not JSON: {exc}") from None
        source = _default_template(settings.get("chat_template"), config_file)
        if source is None and (folder / TEMPLATE_FILE).is_file():
            source = (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
        if source is None:
            return None
        tokens = {key: _token_text(settings[key]) for key in SPECIAL_TOKENS if settings.get(key) is not None}
        return cls(source, tokens, str(folder))

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt for `messages` ([{"role": ..., "content": ...}, ...]); what the template refuses (a role it
        does not know, roles out of order) is an InputError with the template's own words."""
        # as transformers does: a key whose value is None is left out (templates test for presence)
        plain = [{key: value for key, value in message.items() if value is not None} for message in messages]
        started = _deadline.set(time.monotonic() + RENDER_SECONDS)
        try:
            pieces = self._template.generate(
                messages=plain,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
            rendered, size = [], 0
            for piece in pieces:
                size += len(piece)
                if size > MAX_RENDERED_CHARS:
                    raise SecurityError(f"the prompt grows past {MAX_RENDERED_CHARS:,} characters")
                rendered.append(piece)
            return "".join(rendered)
        except jinja2.TemplateError as exc:
            raise InputError(f"the model's chat template refused the messages: {exc}") from None
        except (TypeError, KeyError, IndexError, AttributeError) as exc:  # a template reading what is not there
            raise InputError(f"the model's chat template cannot render these messages: {exc}") from None
        except RecursionError:  # a macro or recursive loop that calls itself without end
            raise InputError("the model's chat template recurses past Python's depth limit") from None
        finally:
            _deadline.reset(started)

    def settings(self) -> dict[str, Any]:
        """What tokenizer_config.json holds for it."""
        return {"chat_template": self.source, **self.special_tokens}


def _default_template(value: object, origin: Path) -> str | None:
    """A template string, or the one named "default" of a list of named templates (Hugging Face's two forms)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        chosen = named.get("default")
        if isinstance(chosen, str):
            return chosen
    raise ConfigError(f"{origin}: 'chat_template' is neither a template nor a list with one named 'default'")


def _token_text(value: object) -> str:
    """A special token as a string; older tokenizer_config.json files write {"content": "<s>", ...}."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # jinja's own tojson escapes HTML characters; templates expect plain JSON (transformers overrides it the same way)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _loops_bounded(template: jinja2.nodes.Template) -> jinja2.nodes.Template:
    """`template` with each `{% for %}` iterating through `_bounded`, which checks the deadline."""
    for loop in template.find_all(jinja2.nodes.For):
        # a filter, not a call: jinja calls a filter directly, where a call costs the sandbox's checks
        loop.iter = jinja2.nodes.Filter(loop.iter, BOUNDED_FILTER, [], [], None, None, lineno=loop.iter.lineno)
    return template


def _bounded(iterable: Iterable[Any]) -> Iterable[Any]:
    """`iterable` with the deadline checked every DEADLINE_STRIDE items: the clock costs more than an empty loop's
    item. A short sequence (a conversation's messages) is iterated as it is, checked once."""
    _check_deadline()
    if not isinstance(iterable, list | tuple | str | range):
        return _checked_items(iterable)
    if len(iterable) <= DEADLINE_STRIDE:
        return iterable
    return itertools.chain.from_iterable(_checked_slices(iterable))  # items pass in C, slices are checked


def _checked_items(iterable: Iterable[Any]) -> Iterator[Any]:
    for count, item in enumerate(iterable, 1):
        if not count % DEADLINE_STRIDE:
            _check_deadline()
        yield item


def _checked_slices(sequence: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(sequence), DEADLINE_STRIDE):
        _check_deadline()
        yield sequence[start : start + DEADLINE_STRIDE]


def _check_deadline() -> None:
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        raise SecurityError(f"the template ran past its {RENDER_SECONDS:g} s render deadline")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with `*` and `**` bounded: one expression of a template could otherwise build a string
    or a number of any size (the sandbox bounds range() only); and with the render deadline checked at each item of
    a loop (`_bounded`), each call (macros, recursive loops, methods) and each filter or test that `map`, `select` and
    the like apply per item."""

    intercepted_binops = frozenset({"*", "**"})

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:  # positional: a template's keywords
        _check_deadline()
        return super().call(context, obj, *args, **kwargs)

    def call_filter(self, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        return super().call_filter(name, value, *args, **kwargs)

    def call_test(self, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        return super().call_test(name, value, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            sequence, times = (left, right) if isinstance(right, int) else (right, left)
            repeated = isinstance(sequence, str | list | tuple) and isinstance(times, int)
            if repeated and len(sequence) * times > MAX_RENDERED_CHARS:
                raise SecurityError(f"a repetition past {MAX_RENDERED_CHARS:,} items")
        elif isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"a power past {MAX_EXPONENT}")
        return super().call_binop(context, operator, left, right)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering keeps the text."""

    tags = {"generation"}  # noqa: RUF012 - jinja's own class attribute

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())
