"""TextPreprocessor against the `tokenizers` library called directly on a tokenizer.json trained in the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from forwardpass.config import ModelConfig, TextConfig
from forwardpass.errors import ConfigError, DecodeError
from forwardpass.pipeline import Pipeline
from forwardpass.pipeline.text import TextPreprocessor
from forwardpass.tensor import DataType, TensorSpec

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Models run on new data: load, preprocess, forward pass, postprocess.",
    "A tokenizer splits text into word pieces before the forward pass.",
    "Padding fills short sentences; truncation cuts long ones.",
    "Dogs and foxes are quick, lazy models are not.",
]
# [PAD] is deliberately not id 0, so padding with 0 cannot pass by accident.
SPECIAL = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
ALL_FIELDS = {"input_ids": "input_ids", "attention_mask": "attention_mask", "token_type_ids": "token_type_ids"}
TEXTS = [
    "the quick fox",
    "Padding fills short sentences; truncation cuts long ones, and the lazy dog jumps over the quick brown fox again.",
    "forward",
    "Zebras are unknown words here, xylophones too.",
    "",
]


def train_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=SPECIAL))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    train_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def model_dir_with_saved_padding(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer.json that carries its own padding settings (as many published ones do)."""
    folder = tmp_path_factory.mktemp("text-padded")
    tokenizer = train_tokenizer()
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def reference(model_dir: Path, max_length: int, pad_to: int | None = None, longest: bool = False) -> Tokenizer:
    """The tokenizers library configured directly: the behaviour forwardpass must reproduce."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    pad_id = tokenizer.token_to_id("[PAD]")
    if pad_to is not None:
        tokenizer.enable_padding(length=pad_to, pad_id=pad_id, pad_token="[PAD]")
    elif longest:
        tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]")
    else:
        tokenizer.no_padding()
    return tokenizer


def text_config(**fields: object) -> TextConfig:
    return TextConfig(kind="text", inputs=ALL_FIELDS, **fields)  # type: ignore[arg-type]


def assert_same(arrays: dict[str, np.ndarray], encoding) -> None:
    for field in ("input_ids", "attention_mask", "token_type_ids"):
        assert arrays[field].dtype == np.int64
    assert arrays["input_ids"].tolist() == encoding.ids
    assert arrays["attention_mask"].tolist() == encoding.attention_mask
    assert arrays["token_type_ids"].tolist() == encoding.type_ids


def test_the_test_tokenizer_is_what_we_think(model_dir: Path):
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert tokenizer.token_to_id("[PAD]") == 3
    ids = tokenizer.encode("the quick fox").ids
    assert ids[0] == tokenizer.token_to_id("[CLS]")
    assert ids[-1] == tokenizer.token_to_id("[SEP]")


@pytest.mark.parametrize("text", TEXTS)
def test_encoding_equals_tokenizers(model_dir: Path, text: str):
    pre = TextPreprocessor(text_config(max_length=64), model_dir)
    assert_same(pre(text), reference(model_dir, 64).encode(text))


@pytest.mark.parametrize("max_length", [4, 8, 13])
def test_truncation_at_max_length(model_dir: Path, max_length: int):
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    text = TEXTS[1]
    arrays = TextPreprocessor(text_config(max_length=max_length), model_dir)(text)
    assert_same(arrays, reference(model_dir, max_length).encode(text))
    ids = arrays["input_ids"].tolist()
    assert len(ids) == max_length
    assert ids[0] == tokenizer.token_to_id("[CLS]")
    assert ids[-1] == tokenizer.token_to_id("[SEP]")


@pytest.mark.parametrize("text", TEXTS)
def test_padding_to_max_length(model_dir: Path, text: str):
    pre = TextPreprocessor(text_config(max_length=16, padding="max_length"), model_dir)
    arrays = pre(text)
    assert_same(arrays, reference(model_dir, 16, pad_to=16).encode(text))
    assert arrays["input_ids"].shape == (16,)
    real = int(arrays["attention_mask"].sum())
    assert (arrays["input_ids"][real:] == 3).all()
    assert (arrays["attention_mask"][real:] == 0).all()


def test_collate_pads_to_the_longest(model_dir: Path):
    pre = TextPreprocessor(text_config(max_length=32), model_dir)
    batch = pre.collate([pre(text) for text in TEXTS])
    expected = reference(model_dir, 32, longest=True).encode_batch(TEXTS)
    longest = max(len(e.ids) for e in expected)
    assert batch["input_ids"].shape == (len(TEXTS), longest)
    assert batch["input_ids"].tolist() == [e.ids for e in expected]
    assert batch["attention_mask"].tolist() == [e.attention_mask for e in expected]
    assert batch["token_type_ids"].tolist() == [e.type_ids for e in expected]
    assert all(array.dtype == np.int64 for array in batch.values())


def test_collate_uses_the_pad_id_saved_in_tokenizer_json(model_dir_with_saved_padding: Path):
    folder = model_dir_with_saved_padding
    pre = TextPreprocessor(text_config(max_length=32), folder)
    batch = pre.collate([pre(text) for text in TEXTS[:3]])
    expected = reference(folder, 32, longest=True).encode_batch(TEXTS[:3])
    assert batch["input_ids"].tolist() == [e.ids for e in expected]
    assert batch["attention_mask"].tolist() == [e.attention_mask for e in expected]


def test_padding_to_max_length_uses_the_pad_id_saved_in_tokenizer_json(model_dir_with_saved_padding: Path):
    folder = model_dir_with_saved_padding
    arrays = TextPreprocessor(text_config(max_length=12, padding="max_length"), folder)("the fox")
    assert_same(arrays, reference(folder, 12, pad_to=12).encode("the fox"))


def test_only_the_declared_inputs_are_produced(model_dir: Path):
    pre = TextPreprocessor(TextConfig(kind="text", inputs={"input_ids": "ids", "attention_mask": "mask"}), model_dir)
    arrays = pre("the quick fox")
    assert set(arrays) == {"ids", "mask"}
    encoding = reference(model_dir, 512).encode("the quick fox")
    assert arrays["ids"].tolist() == encoding.ids
    short = pre("forward")
    batch = pre.collate([arrays, short])
    assert set(batch) == {"ids", "mask"}
    width, length = batch["mask"].shape[1], len(short["mask"])
    assert width == len(arrays["ids"]) > length
    assert batch["mask"][1].tolist() == [1] * length + [0] * (width - length)


@pytest.mark.parametrize("raw", [b"bytes are not text", None, 42, ["a", "list"], {"text": "x"}])
def test_non_string_input_is_a_decode_error(model_dir: Path, raw: object):
    with pytest.raises(DecodeError, match="expected text"):
        TextPreprocessor(text_config(), model_dir)(raw)


def test_missing_or_broken_tokenizer_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"cannot load .*tokenizer\.json"):
        TextPreprocessor(text_config(), tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot load"):
        TextPreprocessor(text_config(), tmp_path)


def test_tokenizer_outside_the_model_folder_is_refused(model_dir: Path, tmp_path: Path):
    inner = tmp_path / "model"
    inner.mkdir()
    (tmp_path / "tokenizer.json").write_bytes((model_dir / "tokenizer.json").read_bytes())
    with pytest.raises(ConfigError, match="outside the model folder"):
        TextPreprocessor(text_config(tokenizer="../tokenizer.json"), inner)


def test_pipeline_wires_text_and_checks_input_names(model_dir: Path):
    inputs = [TensorSpec("input_ids", DataType.INT64, (-1, -1)), TensorSpec("attention_mask", DataType.INT64, (-1, -1))]
    outputs = [TensorSpec("logits", DataType.FP32, (-1, 2))]
    config = ModelConfig.from_dict({"preprocess": {"kind": "text", "max_length": 8}})
    pipeline = Pipeline(config, inputs, outputs, model_dir)
    batch = pipeline.collate([pipeline.preprocess(text) for text in TEXTS[:2]])
    assert batch["input_ids"].shape == (2, 8)
    bad = ModelConfig.from_dict({"preprocess": {"kind": "text", "inputs": {"token_type_ids": "segment_ids"}}})
    with pytest.raises(ConfigError, match="segment_ids"):
        Pipeline(bad, inputs, outputs, model_dir)
