"""A Generator for a loaded Model: its `generation:` config, its tokenizer file and its chat template."""

from __future__ import annotations

from forwardpass.config import GenerationConfig
from forwardpass.errors import ConfigError
from forwardpass.generation.chat import ChatTemplate
from forwardpass.generation.decoder import DecoderLayout
from forwardpass.generation.engine import Generator
from forwardpass.generation.text import TextCodec
from forwardpass.model import Model

__all__ = ["open_generator"]


def open_generator(model: Model) -> Generator:
    DecoderLayout.of(model.session, model.name)  # first: "not a decoder" says more than a missing tokenizer
    config = model.config.generation or GenerationConfig()
    tokenizer = model.entry.directory / config.tokenizer
    if not tokenizer.is_file():
        raise ConfigError(f"model '{model.name}': no tokenizer at {tokenizer} (generation.tokenizer in its config)")
    chat = ChatTemplate.of_folder(model.entry.directory)
    return Generator(model.session, config, TextCodec(tokenizer), model.name, chat)
