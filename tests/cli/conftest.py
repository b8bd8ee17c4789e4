"""A tiny model repository built once per session, and a runner for the real `forwardpass` command.

img_cls    8x8 grayscale CNN (onnx.helper), 3 labels from labels.txt, softmax
tab_cls    scikit-learn LogisticRegression on columns a, b, c (standardized), 3 labels, probabilities out
tab_reg    scikit-learn Ridge on columns x1, x2, target standardized (the config undoes it)
img_mean   mean pixel of a grayscale image of any size (no resize: images of different sizes cannot share a batch)
vec_raw    y = x @ W on float32 [batch, 4], no postprocessing, NaN/inf forbidden by the config
vec_emb    the same model, its output read as an embedding
ids_sum    int64 [batch, 3] input, raw output
text_emb   word-level tokenizer + embedding table, mean pooled over the attention mask
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from PIL import Image

FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")
LABELS = ["cat", "dog", "bird"]
VOCAB = {"[UNK]": 0, "[PAD]": 1, "hello": 2, "world": 3, "cats": 4}

Cli = Callable[..., subprocess.CompletedProcess[str]]


def _save_onnx(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def _tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, array.shape, array.astype(np.float32).ravel())


def _add_model(root: Path, name: str, config: dict[str, Any], write: Callable[[Path], None]) -> Path:
    folder = root / name
    write(folder / "1" / "model.onnx")
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder


def _cnn(path: Path) -> None:
    rng = np.random.default_rng(1)
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
            _tensor("w1", rng.normal(size=(4, 1, 3, 3))),
            _tensor("b1", rng.normal(size=4) * 0.1),
            _tensor("w2", rng.normal(size=(144, 3)) * 0.3),
            _tensor("b2", rng.normal(size=3) * 0.1),
        ],
    )
    _save_onnx(graph, path)


def _matmul(weights: np.ndarray) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "matmul",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weights.shape[0]])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weights.shape[1]])],
            initializer=[_tensor("w", weights)],
        )
        _save_onnx(graph, path)

    return write


def _pixel_mean(path: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["mean"]),
        ],
        "pixel_mean",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", 1])],
    )
    _save_onnx(graph, path)


def _ids_sum(path: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["floats"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["floats", "axis"], ["total"], keepdims=1),
        ],
        "ids_sum",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1])],
        initializer=[helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
    )
    _save_onnx(graph, path)


def _text_embedding(table: np.ndarray) -> Callable[[Path], None]:
    def write(path: Path) -> None:
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
            [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "length", table.shape[1]])],
            initializer=[_tensor("table", table), helper.make_tensor("last", TensorProto.INT64, [1], [-1])],
        )
        _save_onnx(graph, path)

    return write


def _sklearn_model(estimator: Any, width: int) -> Callable[[Path], None]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    def write(path: Path) -> None:
        options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None
        onx = convert_sklearn(
            estimator,
            initial_types=[("input", FloatTensorType([None, width]))],
            target_opset={"": 17, "ai.onnx.ml": 3},
            options=options,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(onx, path)

    return write


def _tabular_models(root: Path, rng: np.random.Generator) -> None:
    from sklearn.linear_model import LogisticRegression, Ridge

    features = rng.normal(loc=[1.0, -2.0, 5.0], scale=[1.0, 2.0, 3.0], size=(300, 3))
    mean, std = features.mean(axis=0), features.std(axis=0)
    scaled = (features - mean) / std
    classes = np.argmax(scaled @ np.array([[2.0, -1.0, 0.0], [0.0, 2.0, -1.0], [-1.0, 0.0, 2.0]]), axis=1)
    classifier = LogisticRegression(max_iter=500).fit(scaled.astype(np.float32), classes)
    columns = [
        {"name": n, "transform": "standard", "mean": float(m), "std": float(s)}
        for n, m, s in zip("abc", mean, std, strict=True)
    ]
    _add_model(
        root,
        "tab_cls",
        {
            "preprocess": {"kind": "tabular", "columns": columns},
            "postprocess": {
                "kind": "classification",
                "output": "probabilities",
                "activation": "none",
                "labels": LABELS,
            },
        },
        _sklearn_model(classifier, 3),
    )
    target = features[:, 0] * 3.0 - features[:, 1] + 10.0
    y_mean, y_std = float(target.mean()), float(target.std())
    regressor = Ridge(alpha=0.1).fit(features[:, :2].astype(np.float32), (target - y_mean) / y_std)
    _add_model(
        root,
        "tab_reg",
        {
            "preprocess": {"kind": "tabular", "columns": [{"name": "x1"}, {"name": "x2", "impute": 0.5}]},
            "postprocess": {"kind": "regression", "target": {"transform": "standard", "mean": y_mean, "std": y_std}},
        },
        _sklearn_model(regressor, 2),
    )


def _text_model(root: Path, table: np.ndarray) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = _add_model(
        root,
        "text_emb",
        {
            "preprocess": {"kind": "text"},
            "postprocess": {"kind": "embedding", "output": "tokens", "pooling": "mean"},
        },
        _text_embedding(table),
    )
    tokenizer = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))


def _input_files(files: Path, rng: np.random.Generator) -> None:
    for name, size in (("one.png", (8, 8)), ("two.png", (20, 12))):
        Image.fromarray(rng.integers(0, 256, size=size[::-1], dtype=np.uint8), mode="L").save(files / name)
    Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(files / "photo.jpg", quality=90)
    whole = (files / "photo.jpg").read_bytes()
    (files / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (files / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
    (files / "note.txt").write_text("cats\n", encoding="utf-8")
    (files / "folder").mkdir()
    np.save(files / "batch.npy", rng.normal(size=(3, 4)).astype(np.float32))
    np.save(files / "item.npy", rng.normal(size=4))  # float64: cast to the model's float32
    np.save(files / "rank3.npy", np.ones((2, 2, 4), dtype=np.float32))
    np.save(files / "short.npy", np.ones(5, dtype=np.float32))
    np.save(files / "strings.npy", np.array(["a", "b", "c", "d"]))
    np.save(files / "floats.npy", np.ones((2, 3), dtype=np.float32))
    np.save(files / "ids.npy", np.arange(6).reshape(2, 3))
    np.save(files / "nan.npy", np.array([1.0, np.nan, 0.0, 2.0], dtype=np.float32))
    np.save(files / "nan_row.npy", np.array([[1, 2, 3, 4], [1, np.inf, 3, 4], [0, 0, 0, 1]], dtype=np.float32))
    many = rng.normal(size=(70, 4)).astype(np.float32)  # more rows than one forward pass takes (32)
    many[39, 1] = np.nan
    np.save(files / "many.npy", many)
    (files / "rows.csv").write_text("a,b,c\n1,2,3\n0.5,-4,9\n", encoding="utf-8")
    (files / "no_b.csv").write_text("a,c\n1,3\n", encoding="utf-8")
    (files / "records.json").write_text('[{"x1": 1, "x2": 2}, {"x1": 3.5, "x2": null}]', encoding="utf-8")


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    rng = np.random.default_rng(0)
    image = {"kind": "image", "color": "L", "resize": [8, 8], "mean": [0.5], "std": [0.5]}
    folder = _add_model(
        root,
        "img_cls",
        {"preprocess": image, "postprocess": {"kind": "classification", "labels": "labels.txt", "top_k": 3}},
        _cnn,
    )
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    grayscale = {"kind": "image", "color": "L"}
    _add_model(root, "img_mean", {"preprocess": grayscale, "postprocess": {"kind": "regression"}}, _pixel_mean)
    weights = rng.normal(size=(4, 6))
    _add_model(root, "vec_raw", {"inputs": [{"name": "x", "allow_nonfinite": False}]}, _matmul(weights))
    _add_model(root, "vec_emb", {"postprocess": {"kind": "embedding"}}, _matmul(weights))
    _add_model(root, "ids_sum", {}, _ids_sum)
    _text_model(root, rng.normal(size=(len(VOCAB), 4)))
    _tabular_models(root, rng)
    return root


@pytest.fixture(scope="session")
def input_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images (good, corrupt, truncated), texts, records and arrays; the command runs in this folder."""
    files = tmp_path_factory.mktemp("inputs")
    _input_files(files, np.random.default_rng(1))
    return files


@pytest.fixture(scope="session")
def cli(repository: Path, input_dir: Path) -> Cli:
    """`cli("predict", "img_cls", "one.png")`: the real command, run in `input_dir` against the tiny repository."""
    env = {**os.environ, "FORWARDPASS_REPOSITORY": str(repository), "NO_COLOR": "1", "COLUMNS": "200"}

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FORWARDPASS, *map(str, args)], cwd=input_dir, env=env, capture_output=True, text=True, timeout=120
        )

    return run
