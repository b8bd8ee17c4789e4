"""The real server for the tests (tests/running_server.py: an InferenceServer on 127.0.0.1 in a thread of its own)
and tiny ONNX models written with `onnx.helper` into a temporary repository."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits

from tests.running_server import RunningServer, copy_bundled, serve

MLP_LABELS = [f"class_{i}" for i in range(10)]


def save(graph: onnx.GraphProto, folder: Path, config: dict[str, Any] | None = None) -> Path:
    """Write `graph` as <folder>/model.onnx (folder = <repo>/<model>/<version>) and the model's config.yaml."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    if config is not None:
        (folder.parent / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder / "model.onnx"


def mlp_graph(seed: int = 0, inputs: int = 64, hidden: int = 128, outputs: int = 10) -> onnx.GraphProto:
    """y = relu(x W1 + b1) W2 + b2: the tiny MLP of the server tests and bench/server.py (64 → 128 → 10)."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((inputs, hidden)).astype(np.float32) * 0.1,
        "b1": rng.standard_normal(hidden).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((hidden, outputs)).astype(np.float32) * 0.1,
        "b2": rng.standard_normal(outputs).astype(np.float32) * 0.1,
    }
    return helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h2"]),
            helper.make_node("MatMul", ["h2", "w2"], ["o"]),
            helper.make_node("Add", ["o", "b2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", outputs])],
        initializer=[numpy_helper.from_array(value, name) for name, value in weights.items()],
    )


def bounded_negate(folder: Path, max_shape: list[int], max_batch_size: int = 4) -> Path:
    """<folder>: y = -x over [batch, 2, width], a width of any size (an image's, a text line's), its config bounding
    the dimensions with inputs[].max_shape."""
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "negate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, "width"])],
    )
    config = {"max_batch_size": max_batch_size, "inputs": [{"name": "x", "max_shape": max_shape}]}
    save(graph, folder / "1", config)
    return folder


def add_graph(constant: float, width: int = 4) -> onnx.GraphProto:
    """y = x + constant: each version of a model adds its own constant, so answers tell versions apart."""
    return helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(np.full(width, constant, np.float32), "c")],
    )


def gather_graph(rows: int = 10, width: int = 4, slow: bool = False) -> onnx.GraphProto:
    """y = table[index]: an index past the table passes validation but fails inside ONNX Runtime. `slow` adds
    ~30 ms of work per forward pass, so that requests arriving meanwhile queue and share the next batch."""
    table = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    nodes = [helper.make_node("Gather", ["table", "index"], ["picked"], axis=0)]
    initializers = [numpy_helper.from_array(table, "table")]
    result = "picked"
    if slow:
        nodes.append(helper.make_node("Cast", ["index"], ["index_float"], to=TensorProto.FLOAT))
        result = _add_slow_term(nodes, initializers, "index_float", "picked")
    nodes.append(helper.make_node("Identity", [result], ["y"]))
    return helper.make_graph(
        nodes,
        "gather",
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, width])],
        initializer=initializers,
    )


def slow_graph() -> onnx.GraphProto:
    """y = x on FP32 [batch, 4], after ~30 ms of matrix products per forward pass."""
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    result = _add_slow_term(nodes, initializers, "x", "x")
    nodes.append(helper.make_node("Identity", [result], ["y"]))
    return helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=initializers,
    )


SLOW_PASS_SECONDS = 0.03


def _add_slow_term(
    nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], source: str, target: str, size: int = 256
) -> str:
    """Appends `target + 0 * sum(A * sum(source) @ Q @ Q ...)`: a chain of size-by-size matrix products, as many as
    take ~30 ms on this machine (measured once: a fixed count took 30 ms here but under 5 ms on a many-core CI
    machine), that ONNX Runtime cannot fold away because they depend on the input. Q is orthogonal, so a long chain
    neither overflows nor underflows. Returns the name of the result."""
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((size, size)).astype(np.float32) / size
    rotation = np.linalg.qr(rng.standard_normal((size, size)))[0].astype(np.float32)
    initializers += [
        numpy_helper.from_array(matrix, "slow_a"),
        numpy_helper.from_array(rotation, "slow_q"),
        numpy_helper.from_array(np.array(0.0, np.float32), "slow_zero"),
    ]
    nodes += [
        helper.make_node("ReduceSum", [source], ["slow_total"], keepdims=0),
        helper.make_node("Mul", ["slow_a", "slow_total"], ["slow_m0"]),
    ]
    products = _products_per_slow_pass(size)
    for i in range(products):
        nodes.append(helper.make_node("MatMul", [f"slow_m{i}", "slow_q"], [f"slow_m{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_m{products}"], ["slow_sum"], keepdims=0),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", [target, "slow_nothing"], ["slow_result"]),
    ]
    return "slow_result"


@functools.cache
def _products_per_slow_pass(size: int) -> int:
    """How many size-by-size products take SLOW_PASS_SECONDS here: the fastest of five timed runs of a chain of 16."""
    measured = 16
    chain = [helper.make_node("MatMul", [f"m{i}", "q"], [f"m{i + 1}"]) for i in range(measured)]
    graph = helper.make_graph(
        chain,
        "chain",
        [helper.make_tensor_value_info("m0", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info(f"m{measured}", TensorProto.FLOAT, [size, size])],
        initializer=[numpy_helper.from_array(np.eye(size, dtype=np.float32), "q")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"m0": np.ones((size, size), np.float32)}
    session.run(None, feed)
    fastest = min(_timed(lambda: session.run(None, feed)) for _ in range(5))
    return max(4, min(4000, math.ceil(SLOW_PASS_SECONDS / fastest * measured)))


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def strings_graph() -> onnx.GraphProto:
    """y = x on BYTES [batch, 2]: strings in, strings out."""
    return helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "strings",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", 2])],
    )


def digits_graph() -> onnx.GraphProto:
    """A linear classifier of [batch, 1, 8, 8] grey images into 10 digits (Flatten → Gemm), fitted in closed form
    (ridge least squares, a tenth of a second) on scikit-learn's 8x8 digits scaled to [0, 1] and sharpened so that a
    clear digit scores near 1: the bundled digits_cnn's inputs and outputs, built in the test."""
    digits = load_digits()
    x = np.c_[digits.data / 16, np.ones(len(digits.data))]
    weights = np.linalg.solve(x.T @ x + 0.1 * np.eye(x.shape[1]), x.T @ np.eye(10)[digits.target]) * 20
    return helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
        ],
        "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            numpy_helper.from_array(weights[:-1].astype(np.float32), "w"),
            numpy_helper.from_array(weights[-1].astype(np.float32), "b"),
        ],
    )


DIGITS_CONFIG: dict[str, Any] = {
    "max_batch_size": 64,
    "preprocess": {"kind": "image", "color": "L", "resize": [8, 8], "scale": 1 / 255, "layout": "NCHW"},
    "postprocess": {"kind": "classification", "activation": "softmax", "labels": [str(i) for i in range(10)]},
}
DIABETES_COLUMNS = {  # name: (min, max) of the diabetes data's raw units, as the bundled model's config has them
    "age": (19.0, 79.0),
    "sex": (1.0, 2.0),
    "bmi": (18.0, 42.2),
    "bp": (62.0, 133.0),
    "s1": (110.0, 301.0),
    "s2": (41.6, 242.4),
    "s3": (22.0, 99.0),
    "s4": (2.0, 9.09),
    "s5": (3.2581, 6.107),
    "s6": (58.0, 124.0),
}
DIABETES_CONFIG: dict[str, Any] = {
    "max_batch_size": 64,
    "preprocess": {
        "kind": "tabular",
        "columns": [
            {"name": name, "transform": "minmax", "min": low, "max": high, "impute": (low + high) / 2}
            for name, (low, high) in DIABETES_COLUMNS.items()
        ],
    },
    "postprocess": {
        "kind": "regression",
        "output": "variable",
        "target": {"transform": "standard", "mean": 152.0, "std": 79.0},
    },
}


def diabetes_graph(seed: int = 0) -> onnx.GraphProto:
    """A linear regression from 10 scaled columns to one standardized value (output `variable`): the shape of the
    bundled diabetes model, built in the test."""
    rng = np.random.default_rng(seed)
    weights = {
        "w": rng.standard_normal((len(DIABETES_COLUMNS), 1)).astype(np.float32),
        "b": np.array([-0.5], np.float32),
    }
    return helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["variable"])],
        "diabetes",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", len(DIABETES_COLUMNS)])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(value, name) for name, value in weights.items()],
    )


def save_digits_and_diabetes(root: Path) -> None:
    """An image model (digits_cnn) and a tabular one (diabetes) under the bundled models' names, built here so that
    no server test depends on `make models`."""
    save(digits_graph(), root / "digits_cnn" / "1", DIGITS_CONFIG)
    save(diabetes_graph(), root / "diabetes" / "1", DIABETES_CONFIG)


def build_repository(root: Path) -> Path:
    """The models most server tests share."""
    classification = {"kind": "classification", "output": "y", "labels": MLP_LABELS, "top_k": 3}
    save(mlp_graph(), root / "mlp" / "1", {"max_batch_size": 64, "postprocess": classification})
    save(mlp_graph(), root / "mlp_unbatched" / "1", {"max_batch_size": 0, "version_policy": {"latest": 1}})
    save(add_graph(1.0), root / "add" / "1", {"max_batch_size": 16})
    save(gather_graph(), root / "gather" / "1", {"max_batch_size": 32})
    save(strings_graph(), root / "strings" / "1", {"max_batch_size": 8})
    save_digits_and_diabetes(root)
    return root


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    running = serve(repository)
    yield running
    running.stop()


class Kit:
    """The builders above, for test modules (which cannot import this conftest under --import-mode=importlib)."""

    save = staticmethod(save)
    mlp_graph = staticmethod(mlp_graph)
    add_graph = staticmethod(add_graph)
    gather_graph = staticmethod(gather_graph)
    slow_graph = staticmethod(slow_graph)
    strings_graph = staticmethod(strings_graph)
    copy_bundled = staticmethod(copy_bundled)
    save_digits_and_diabetes = staticmethod(save_digits_and_diabetes)
    serve = staticmethod(serve)
    mlp_labels = MLP_LABELS


@pytest.fixture(scope="session")
def kit() -> type[Kit]:
    return Kit
