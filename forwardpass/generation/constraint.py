"""Output constrained to a JSON schema (OpenAI's `response_format` json_schema / json_object): llguidance compiles
the schema, for the model's own tokenizer, into a matcher that gives each step the tokens that keep the text a
prefix of a valid document; the logits of every other token are set to -inf before the token is chosen, so greedy
and sampled choices alike stay inside the schema. Each sequence has its own matcher."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from forwardpass.errors import InputError
from forwardpass.formats.base import require

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

__all__ = ["EXTRA", "JsonSchema", "Matcher", "SchemaCompiler"]

EXTRA = "generation"
# One line, separators as json.dumps writes them: with whitespace allowed between tokens, small models spend their
# token budget on newlines (SmolLM2: 40 of 60 tokens, measured) and never close the document.
_LAYOUT: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class SchemaCompiler:
    """Compiles schemas for one tokenizer (building its token trie takes ~1 s: once per model)."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: list[int]) -> None:
        llguidance = require("llguidance", EXTRA)
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos_token_ids)

    def compile(self, schema: dict[str, Any]) -> JsonSchema:
        """InputError, naming the problem, for a schema llguidance cannot compile."""
        import llguidance

        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=_LAYOUT)
        except (ValueError, TypeError) as exc:
            raise InputError(f"response_format: the JSON schema cannot be compiled: {_one_line(str(exc))}") from None
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if failed:
            raise InputError(f"response_format: the JSON schema cannot be compiled: {_one_line(' '.join(messages))}")
        compiled = JsonSchema(self, grammar)
        start = compiled.matcher()
        start.constrain(np.zeros(self.vocab_size, np.float32))  # the first step's tokens: the matcher sees if any
        if start.done:  # e.g. a $ref to itself: compiled, but the document ends before it begins
            raise InputError("response_format: no JSON document follows the schema (is it its own definition?)")
        return compiled


class JsonSchema:
    """A compiled schema; `matcher()` starts a document that follows it."""

    def __init__(self, compiler: SchemaCompiler, grammar: str) -> None:
        self.compiler = compiler
        self.grammar = grammar

    def matcher(self) -> Matcher:
        return Matcher(self)


class Matcher:
    """One sequence's place in its document."""

    def __init__(self, schema: JsonSchema) -> None:
        import llguidance
        import llguidance.numpy

        self._fill = llguidance.numpy.fill_next_token_bitmask
        self._matcher = llguidance.LLMatcher(schema.compiler.tokenizer, schema.grammar)
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, schema.compiler.vocab_size)

    def constrain(self, logits: np.ndarray) -> np.ndarray:
        """The logits of one row with every token the document cannot take next at -inf."""
        self._fill(self._matcher, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")[: logits.shape[0]]
        allowed = np.zeros(logits.shape[0], bool)  # tokens past the tokenizer's vocabulary: never
        allowed[: bits.shape[0]] = bits
        return np.where(allowed, logits, -np.inf)

    def advance(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise InputError(f"the JSON schema's matcher refused token {token}: {self._matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The document is complete and can take no more tokens."""
        return bool(self._matcher.is_stopped())


def _one_line(message: str) -> str:
    return " ".join(message.split())
