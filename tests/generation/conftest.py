"""A seeded GPT-2-architecture model (Hugging Face folder) and its ONNX export with KV cache, built once per session,
and transformers' own greedy generation on it: the reference every generation test compares with."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import forwardpass
from forwardpass.generation import Generator, open_generator
from forwardpass.generation.export import export_decoder
from forwardpass.generation.seeded import build_seeded_gpt2

Reference = Callable[..., list[int]]

PROMPTS = [
    "A man is eating",
    "The quick brown fox jumps over the lazy dog near the riverbank",
    "Hi",
    "Where is the nearest train station?",
    "Rain is expected tomorrow afternoon. The library closes",
]


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_seeded_gpt2(tmp_path_factory.mktemp("hf") / "gpt2-seeded")


@pytest.fixture(scope="session")
def exported(hf_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_decoder(hf_folder, tmp_path_factory.mktemp("repository") / "gpt2")


@pytest.fixture(scope="session")
def hf_model(hf_folder: Path) -> Any:
    from forwardpass.formats.torch import import_torch

    import_torch("huggingface")
    import transformers

    return transformers.GPT2LMHeadModel.from_pretrained(str(hf_folder)).eval()


@pytest.fixture(scope="session")
def reference(hf_model: Any) -> Reference:
    """transformers' generate(do_sample=False) with its KV cache: the new token ids, the end token included."""
    import torch

    def generate(prompt_ids: list[int], max_new_tokens: int, eos_token_id: int = 0) -> list[int]:
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = hf_model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=0,
                eos_token_id=eos_token_id,
            )
        return [int(token) for token in out[0, len(prompt_ids) :]]

    return generate


@pytest.fixture()
def generator(exported: Path) -> Iterator[Generator]:
    """A fresh Generator (its own loop thread, counters at zero) on the exported model."""
    opened: Generator = open_generator(forwardpass.load(exported))
    yield opened
    opened.close()


NamedEvents = queue.SimpleQueue[tuple[str, Any]]


def tokens_by_stream(events: NamedEvents, names: list[str]) -> tuple[dict[str, list[int]], list[str]]:
    """The token ids of each named stream, and the names in the order their tokens came, until every one of them has
    finished (an error event fails the test)."""
    from forwardpass.generation import TokenEvent

    got: dict[str, list[int]] = {name: [] for name in names}
    order = []
    finished = 0
    while finished < len(names):
        name, event = events.get(timeout=30)
        assert isinstance(event, TokenEvent), event
        got[name].append(event.token_id)
        order.append(name)
        finished += event.finish_reason is not None
    return got, order
