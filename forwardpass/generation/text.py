"""The model's tokenizer: text → token ids for the prompt, and token ids → text as they come (incrementally, so that
a character split over several tokens appears whole, once), cut before a stop string when one is asked for."""

from __future__ import annotations

import re
from pathlib import Path

from forwardpass.errors import ConfigError, InputError

__all__ = ["IncrementalText", "StopStrings", "TextCodec"]


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE spells byte b as one printable character: itself where printable, else chr(256 + k)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {chr(byte): byte for byte in printable} | {chr(256 + k): byte for k, byte in enumerate(others)}


_BYTE_OF_CHARACTER = _byte_level_alphabet()
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's token for a byte outside its vocabulary


class TextCodec:
    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception for missing or malformed files
            raise ConfigError(f"{path}: not a readable tokenizer.json: {exc}") from None
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.vocab_size = self._tokenizer.get_vocab_size()
        # No token stands for more characters than its vocabulary entry has (byte-level entries spell each byte as
        # one character): a text longer than n times this makes more than n tokens, known without tokenizing it.
        self.longest_token = max(map(len, self._tokenizer.get_vocab(with_added_tokens=True)), default=1)

    def encode(self, text: str, special_tokens: bool = True, most_tokens: int | None = None) -> list[int]:
        """`special_tokens`: let the tokenizer add its own (a BOS...); a rendered chat prompt already has them.
        `most_tokens`: a text that would make more is refused before it is tokenized (megabytes of text take the
        tokenizer seconds to minutes)."""
        if most_tokens is not None and len(text) > most_tokens * self.longest_token:
            raise InputError(
                f"the prompt has {len(text)} characters: over {most_tokens} tokens, the most the model holds "
                f"(its tokens have at most {self.longest_token} characters)"
            )
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=special_tokens).ids
        if not ids:
            raise InputError("the prompt is empty: it encodes to no tokens")
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text: str = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        return text

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for: a byte-level token may hold part of a character, which its text alone
        (U+FFFD) loses."""
        text = self.decode([token_id], skip_special_tokens=False)
        if "\ufffd" not in text:
            return text.encode()
        piece = self._tokenizer.id_to_token(token_id) or ""
        fallback = _BYTE_FALLBACK.fullmatch(piece)
        if fallback is not None:
            return bytes([int(fallback.group(1), 16)])
        if piece and all(character in _BYTE_OF_CHARACTER for character in piece):
            return bytes(_BYTE_OF_CHARACTER[character] for character in piece)
        return text.encode()

    def to_json(self) -> str:
        """The tokenizer as tokenizer.json text."""
        text: str = self._tokenizer.to_str()
        return text

    def incremental(self) -> IncrementalText:
        return IncrementalText(self)


class IncrementalText:
    """Token ids in, new text out. Decodes a short window (the last settled token onwards), not the whole output:
    O(1) per token. Text ending in an incomplete character (U+FFFD) waits for the next token."""

    def __init__(self, codec: TextCodec) -> None:
        self._codec = codec
        self.ids: list[int] = []
        self._prefix = 0  # start of the window
        self._read = 0  # tokens whose text has been given out

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        settled = self._codec.decode(self.ids[self._prefix : self._read])
        current = self._codec.decode(self.ids[self._prefix :])
        if len(current) <= len(settled) or (current.endswith("\ufffd") and not final):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return current[len(settled) :]


class StopStrings:
    """Generated text in, text to send out, ending before the first stop string: text that may be the start of one
    waits until it cannot be; once one is found, `stopped` is true (the generation should end there)."""

    def __init__(self, strings: tuple[str, ...]) -> None:
        self.strings = tuple(item for item in strings if item)
        self.stopped = False
        self._held = ""

    def feed(self, piece: str, final: bool = False) -> str:
        """What can be sent now of the text so far; `final`: the generation ended, send all that is left."""
        held = self._held + piece
        found = [index for index in (held.find(item) for item in self.strings) if index >= 0]
        if found:
            self.stopped, self._held = True, ""
            return held[: min(found)]
        waiting = 0 if final else self._start_of_a_stop(held)
        self._held = held[len(held) - waiting :]
        return held[: len(held) - waiting]

    def _start_of_a_stop(self, text: str) -> int:
        """The length of the longest end of `text` that a stop string begins with."""
        ends = (
            size
            for item in self.strings
            for size in range(min(len(item) - 1, len(text)), 0, -1)
            if text.endswith(item[:size])
        )
        return max(ends, default=0)
