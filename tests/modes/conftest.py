"""Tiny real models for batch jobs (written with `onnx.helper`, no framework) and generated inputs.

img_cls   8x8 grayscale CNN → softmax over 3 labels (image folder inputs)
tab_cls   3 standardized columns a, b, c → Gemm → softmax over 3 labels (table inputs)
text_emb  word-level tokenizer + embedding table, mean pooled over the attention mask (text inputs)
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

LABELS = ["cat", "dog", "bird"]


def _save(graph: onnx.GraphProto, folder: Path, config: dict[str, Any]) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def _weights(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.normal(size=shape) * 0.3).astype(np.float32), name)


def _image_model(folder: Path, rng: np.random.Generator) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w1", "b1"], ["conv"]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("Flatten", ["relu"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w2", "b2"], ["logits"]),
        ],
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            _weights(rng, "w1", 4, 1, 3, 3),
            _weights(rng, "b1", 4),
            _weights(rng, "w2", 144, 3),
            _weights(rng, "b2", 3),
        ],
    )
    image = {"kind": "image", "color": "L", "resize": [8, 8], "mean": [0.5], "std": [0.5]}
    classify = {"kind": "classification", "labels": LABELS, "top_k": 2}
    _save(graph, folder, {"max_batch_size": 16, "preprocess": image, "postprocess": classify})


def _table_model(folder: Path, rng: np.random.Generator) -> None:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[_weights(rng, "w", 3, 3), _weights(rng, "b", 3)],
    )
    columns = [
        {"name": "a", "transform": "standard", "mean": 1.0, "std": 2.0},
        {"name": "b", "transform": "standard", "mean": -1.0, "std": 0.5},
        {"name": "c", "impute": 0.0},
    ]
    classify = {"kind": "classification", "labels": LABELS, "top_k": 3}
    _save(
        graph,
        folder,
        {
            "max_batch_size": 64,
            # the tables carry an unused `note` column: fields that are no column are let through on purpose
            "preprocess": {"kind": "tabular", "columns": columns, "unknown_fields": "ignore"},
            "postprocess": classify,
        },
    )


def _text_model(folder: Path, rng: np.random.Generator) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocabulary = {"[UNK]": 0, "[PAD]": 1, "hello": 2, "world": 3, "cats": 4, "dogs": 5}
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["vectors"]),
            helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),
            helper.make_node("Mul", ["vectors", "mask3"], ["tokens"]),
        ],
        "text_embedding",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "length"]),
        ],
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "length", 4])],
        initializer=[_weights(rng, "table", len(vocabulary), 4), numpy_helper.from_array(np.array([-1]), "last")],
    )
    embed = {"kind": "embedding", "output": "tokens", "pooling": "mean"}
    _save(graph, folder, {"max_batch_size": 8, "preprocess": {"kind": "text"}, "postprocess": embed})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))


def build_repository(root: Path) -> Path:
    rng = np.random.default_rng(8)
    _image_model(root / "img_cls", rng)
    _table_model(root / "tab_cls", rng)
    _text_model(root / "text_emb", rng)
    return root


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("batch-models"))


def write_table(path: Path, rows: int, *, seed: int = 0, bad_every: int = 0, note_bytes: int = 0) -> None:
    """A CSV of records a, b, c (+ an unused `note` column of `note_bytes` characters); with `bad_every`, every
    such row is bad in turn: a missing value with no impute, text where a number goes, an extra field."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, 3)).round(4)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["a", "b", "c", "note"])
        for i, (a, b, c) in enumerate(values):
            row = [str(a), str(b), str(c), "x" * note_bytes]
            if bad_every and i % bad_every == bad_every - 1:
                kind = (i // bad_every) % 3
                if kind == 0:
                    row[0] = ""  # a has no impute value
                elif kind == 1:
                    row[1] = "not-a-number"
                else:
                    row.append("surplus")
            writer.writerow(row)


@pytest.fixture(scope="session")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 generated records, every 97th one bad."""
    path = tmp_path_factory.mktemp("table") / "records.csv"
    write_table(path, 3000, seed=1, bad_every=97)
    return path


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 generated images (PNG and JPEG, several sizes, nested folders), 3 corrupt files and a hidden one."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(2)
    for i in range(300):
        folder = root / f"group{i % 3}"
        folder.mkdir(exist_ok=True)
        size = (8, 8) if i % 2 else (int(rng.integers(6, 20)), int(rng.integers(6, 20)))
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.{'png' if i % 4 else 'jpg'}")
    whole = (root / "group0" / "img000.jpg").read_bytes()
    (root / "group1" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "group2" / "noise.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (root / "notes.txt").write_text("not an image\n", encoding="utf-8")
    (root / ".hidden.png").write_bytes(b"skipped: hidden")
    return root
