"""Output constrained to a JSON schema on the seeded decoder (random weights: left alone it writes no JSON): greedy
and sampled documents parse and follow the schema; a constrained sequence leaves the others of its batch as they
were; a schema that cannot be compiled is refused by name."""

from __future__ import annotations

import functools
import json
import queue

import pytest

from forwardpass.errors import ForwardpassError, InputError
from forwardpass.generation import Generator, SamplingParams, TokenEvent

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}


def follows_schema(text: str) -> bool:
    document = json.loads(text)
    return set(document) == {"ok", "n"} and isinstance(document["ok"], bool) and 0 <= document["n"] <= 99


def test_greedy_and_sampled_documents_follow_the_schema(generator: Generator) -> None:
    schema = generator.json_schema(SCHEMA)
    prompt = generator.encode("Where is the nearest train station?")
    free = [event.token_id for event in generator.tokens(prompt, SamplingParams(max_new_tokens=16))]
    assert not generator.codec.decode(free).startswith("{")  # the schema, not the model, makes the JSON
    for params in (
        SamplingParams(max_new_tokens=40, schema=schema),
        *[SamplingParams(max_new_tokens=40, schema=schema, temperature=1.0, seed=seed) for seed in range(3)],
    ):
        events = list(generator.tokens(prompt, params))
        assert events[-1].finish_reason == "stop"
        assert follows_schema(generator.codec.decode([event.token_id for event in events]))


def test_a_constrained_sequence_leaves_its_batch_alone(generator: Generator, reference) -> None:
    prompts = [generator.encode("A man is eating"), generator.encode("Hi")]
    expected = reference(prompts[0], 12)
    events: queue.SimpleQueue[tuple[int, TokenEvent | ForwardpassError]] = queue.SimpleQueue()
    choices = [
        SamplingParams(max_new_tokens=12),
        SamplingParams(max_new_tokens=40, schema=generator.json_schema(SCHEMA)),
    ]

    def emit(index: int, event: TokenEvent | ForwardpassError) -> None:
        events.put((index, event))

    for index, (prompt, params) in enumerate(zip(prompts, choices, strict=True)):
        generator.submit(prompt, params, functools.partial(emit, index))
    got: list[list[int]] = [[], []]
    finished = 0
    while finished < 2:
        index, event = events.get(timeout=30)
        assert isinstance(event, TokenEvent), event
        got[index].append(event.token_id)
        finished += event.finish_reason is not None
    assert got[0] == expected
    assert follows_schema(generator.codec.decode(got[1]))
    assert generator.peak_rows == 2


def test_a_schema_that_cannot_be_compiled_is_refused(generator: Generator) -> None:
    for schema in ({"type": "no-such-type"}, {"type": "string", "pattern": "("}):
        with pytest.raises(InputError, match="JSON schema cannot be compiled") as refused:
            generator.json_schema(schema)
        assert "\n" not in str(refused.value)  # one line, as every refusal


def test_a_schema_no_document_follows_is_refused(generator: Generator) -> None:
    """llguidance compiles a $ref to itself without a word, then ends the document before its first character: the
    answer would be an empty text with finish_reason "stop", as if it were the document."""
    with pytest.raises(InputError, match="no JSON document follows the schema"):
        generator.json_schema({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}})
