"""Shared fixtures, kept small: tiny real ONNX models written with `onnx.helper` (no framework needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

AddModel = Callable[..., Path]


def _write_add_model(path: Path, constant: float = 1.0, width: int = 4) -> Path:
    """y = x + constant on float32 [batch, width]: the smallest real model ONNX Runtime can run."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[helper.make_tensor("c", TensorProto.FLOAT, [width], np.full(width, constant, np.float32))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def add_model() -> AddModel:
    """`add_model(path, constant=1.0, width=4)` writes an ONNX model computing y = x + constant and returns path."""
    return _write_add_model
