"""Text: a Hugging Face `tokenizer.json` through the `tokenizers` library — truncation, padding, attention mask."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from forwardpass.config import TextConfig
from forwardpass.errors import ConfigError, DecodeError

__all__ = ["TextPreprocessor"]

# Characters per token no tokenizer exceeds in practice (WordPiece maps a word over 100 characters to one [UNK]):
# text beyond max_length times this is cut before tokenizing, which truncation would drop anyway, so that a
# megabyte of text costs what max_length tokens cost.
MAX_CHARS_PER_TOKEN = 128


class TextPreprocessor:
    def __init__(self, config: TextConfig, model_dir: Path) -> None:
        path = model_dir / config.tokenizer
        if not path.resolve().is_relative_to(model_dir.resolve()):
            raise ConfigError(f"preprocess.tokenizer '{config.tokenizer}' points outside the model folder {model_dir}")
        from tokenizers import Tokenizer  # here: 3 MB and ~10 ms that a server without text models should not pay

        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception for missing or malformed files
            raise ConfigError(f"preprocess.tokenizer: cannot load {path}: {exc}") from None
        self.tokenizer.enable_truncation(config.max_length)
        self.max_length = config.max_length
        self.max_chars = config.max_length * MAX_CHARS_PER_TOKEN
        saved = self.tokenizer.padding  # the tokenizer.json's own padding settings, if it has any
        if saved is not None:
            self.pad_id, pad_token = int(saved["pad_id"]), str(saved["pad_token"])
        else:
            pad_token = next((t for t in ("[PAD]", "<pad>") if self.tokenizer.token_to_id(t) is not None), "[PAD]")
            self.pad_id = self.tokenizer.token_to_id(pad_token) or 0
        if config.padding == "max_length":
            self.tokenizer.enable_padding(length=config.max_length, pad_id=self.pad_id, pad_token=pad_token)
        else:
            self.tokenizer.no_padding()
        self.fields = dict(config.inputs)

    def __call__(self, raw: object) -> dict[str, np.ndarray]:
        if not isinstance(raw, str):
            raise DecodeError(f"expected text (a string), got {type(raw).__name__}")
        encoding = self.tokenizer.encode(raw[: self.max_chars])
        values = {
            "input_ids": encoding.ids,
            "attention_mask": encoding.attention_mask,
            "token_type_ids": encoding.type_ids,
        }
        return {tensor: np.asarray(values[field], dtype=np.int64) for field, tensor in self.fields.items()}

    def fits(self, raw: str) -> bool:
        """Whether `raw` tokenizes within max_length, so that truncation drops none of it."""
        return len(raw) <= self.max_chars and not self.tokenizer.encode(raw).overflowing

    def collate(self, items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Right-pad every tensor to the longest item (pad id for input_ids, 0 for masks and type ids)."""
        longest = max(item[name].shape[-1] for item in items for name in item)
        batch = {}
        for field, tensor in self.fields.items():
            fill = self.pad_id if field == "input_ids" else 0
            rows = np.full((len(items), longest), fill, dtype=np.int64)
            for row, item in zip(rows, items, strict=True):
                row[: item[tensor].shape[-1]] = item[tensor]
            batch[tensor] = rows
        return batch
