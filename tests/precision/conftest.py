"""Fixtures: a copy of the bundled digits CNN in a temporary repository, digits ImageFolders (real data from
scikit-learn), a tiny ResNet-style CNN trained here in seconds, and a small MLP for FP64/FP16/BF16 parity."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.precision.digits_resnet import DigitsData, build_resnet, write_digits

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsData:
    return write_digits(tmp_path_factory.mktemp("digits"), limit_train=600)


@pytest.fixture
def digits_repo(tmp_path: Path) -> Path:
    """A repository holding a copy of the bundled digits_cnn (version 1)."""
    shutil.copytree(MODELS / "digits_cnn", tmp_path / "repo" / "digits_cnn")
    return tmp_path / "repo"


@pytest.fixture(scope="session")
def resnet_repo(tmp_path_factory: pytest.TempPathFactory, digits: DigitsData) -> Path:
    """A tiny ResNet-style CNN (16x16 input, 2 residual stages) trained on the digits; copied per test."""
    root = tmp_path_factory.mktemp("resnet")
    build_resnet(root, digits, name="resnet", size=16, width=8, stages=2, epochs=10)
    return root


@pytest.fixture(scope="session")
def mlp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = relu(x @ w1 + b1) @ w2 + b2 with MatMul/Add/Relu/Gemm, float32, dynamic batch."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((6, 16)).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((16, 3)).astype(np.float32)
    b2 = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="dense1"),
            helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
            helper.make_node("Relu", ["hb"], ["a"], name="relu1"),
            helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="dense2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            helper.make_tensor("w1", TensorProto.FLOAT, w1.shape, w1),
            helper.make_tensor("b1", TensorProto.FLOAT, b1.shape, b1),
            helper.make_tensor("w2", TensorProto.FLOAT, w2.shape, w2),
            helper.make_tensor("b2", TensorProto.FLOAT, b2.shape, b2),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("mlp") / "model.onnx"
    onnx.save(model, path)
    return path
