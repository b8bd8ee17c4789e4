"""Incremental detokenization: the pieces given out token by token add up to the whole decoded text, and a
character split over several byte-level tokens appears once, whole (never as U+FFFD)."""

from __future__ import annotations

from pathlib import Path

from forwardpass.generation import TextCodec


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
