"""A Generator for a loaded Model: its `generation:` config, its tokenizer file and its chat template."""

from __future__ import annotations

import ctypes
import sys

from forwardpass.config import GenerationConfig
from forwardpass.errors import ConfigError
from forwardpass.generation.chat import ChatTemplate
from forwardpass.generation.decoder import DecoderLayout
from forwardpass.generation.engine import Generator
from forwardpass.generation.text import TextCodec
from forwardpass.model import Model, file_in_model_folder

__all__ = ["give_back_freed_heap", "open_generator"]


def open_generator(model: Model) -> Generator:
    DecoderLayout.of(model.session, model.name)  # first: "not a decoder" says more than a missing tokenizer
    config = model.config.generation or GenerationConfig()
    tokenizer = file_in_model_folder(model.entry.directory, config.tokenizer, "generation.tokenizer")
    if not tokenizer.is_file():
        raise ConfigError(f"model '{model.name}': no tokenizer at {tokenizer} (generation.tokenizer in its config)")
    chat = ChatTemplate.of_folder(model.entry.directory)
    generator = Generator(model.session, config, TextCodec(tokenizer), model.name, chat)
    give_back_freed_heap()
    return generator


def give_back_freed_heap() -> None:
    """Return to the system the heap pages that loading freed, which glibc keeps for reuse until malloc_trim: reading
    tokenizer.json leaves ~15 MB of them for SmolLM2 (peak RSS of 1 then 8 streams at INT4 312 -> 289 MB,
    measured). Elsewhere than Linux the C library has no malloc_trim: nothing to do."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).malloc_trim(0)
