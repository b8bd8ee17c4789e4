"""Incremental detokenization: the pieces given out token by token add up to the whole decoded text, and a
character split over several byte-level tokens appears once, whole (never as U+FFFD); a text too long for the tokens
allowed is refused before the tokenizer sees it."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwardpass.errors import InputError
from forwardpass.generation import StopStrings, TextCodec


def pieces(codec: TextCodec, ids: list[int]) -> list[str]:
    text = codec.incremental()
    out = [text.push(token) for token in ids]
    out.append(text.flush())
    return out


def test_pieces_add_up_to_the_decoded_text(exported: Path) -> None:
    codec = TextCodec(exported / "tokenizer.json")
    for sentence in ["A man is eating food.", "Ünïcödé — 東京 🚀 done", "  spaces   kept  "]:
        ids = codec.encode(sentence)
        got = pieces(codec, ids)
        assert "".join(got) == codec.decode(ids) == sentence
        assert not any("\ufffd" in piece for piece in got)


def test_multibyte_character_waits_for_its_last_byte(exported: Path) -> None:
    codec = TextCodec(exported / "tokenizer.json")
    ids = codec.encode("🚀")  # not in the tiny vocabulary: one token per byte
    assert len(ids) == 4
    text = codec.incremental()
    assert [text.push(token) for token in ids] == ["", "", "", "🚀"]


def test_a_tokens_bytes_are_what_it_stands_for_even_within_a_character(exported: Path) -> None:
    codec = TextCodec(exported / "tokenizer.json")
    ids = codec.encode("ok 🚀")
    assert b"".join(codec.token_bytes(token) for token in ids) == "ok 🚀".encode()
    assert codec.token_bytes(ids[-1]) == "🚀".encode()[-1:]  # its text alone is U+FFFD


def test_an_incomplete_character_at_the_end_is_flushed(exported: Path) -> None:
    codec = TextCodec(exported / "tokenizer.json")
    ids = codec.encode("ok 🚀")[:-1]  # the last byte of the rocket missing
    got = pieces(codec, ids)
    assert "".join(got) == codec.decode(ids)
    assert got[-1].endswith("\ufffd")


def test_end_token_has_no_text(exported: Path) -> None:
    codec = TextCodec(exported / "tokenizer.json")
    ids = [*codec.encode("Hi"), 0]
    assert "".join(pieces(codec, ids)) == "Hi"


def test_stop_strings_hold_back_only_what_may_start_one() -> None:
    stops = StopStrings(("END", "##"))
    assert [stops.feed(piece) for piece in ["one E", "N", "x two #", "!", " three E"]] == [
        "one ",  # "E" may begin END
        "",  # "EN" still may
        "ENx two ",  # not END after all; "#" may begin ##
        "#!",
        " three ",
    ]
    assert not stops.stopped
    assert stops.feed("ND and more") == ""  # "E" + "ND": END found, nothing after it is sent
    assert stops.stopped


def test_stop_strings_send_the_rest_at_the_end_and_find_the_earliest() -> None:
    tail = StopStrings(("END",))
    assert (tail.feed("so E"), tail.feed("N", final=True), tail.stopped) == ("so ", "EN", False)
    earliest = StopStrings(("b", "abc"))
    assert (earliest.feed("xxabcb"), earliest.stopped) == ("xx", True)  # abc starts before b
    assert StopStrings(("",)).feed("no stop strings") == "no stop strings"


def test_a_text_longer_than_the_tokens_allowed_could_spell_is_refused_untokenized(exported: Path) -> None:
    codec = TextCodec(exported / "tokenizer.json")
    longest = max(len(codec.decode([token], skip_special_tokens=False)) for token in range(codec.vocab_size))
    assert codec.longest_token >= longest  # the bound holds for every token's text
    most = codec.longest_token * 8
    assert len(codec.encode("a" * most, most_tokens=8)) > 8  # within the bound: tokenized, the caller counts
    with pytest.raises(InputError, match=f"{most + 1} characters: over 8 tokens"):
        codec.encode("a" * (most + 1), most_tokens=8)
