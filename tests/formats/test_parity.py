"""Parity figures between two real sessions: differences, relative differences, top-1 agreement, refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from forwardpass.backends.ort import OrtSession
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError
from forwardpass.formats.parity import check_parity, random_samples
from forwardpass.tensor import DataType, TensorSpec

ENGINE = EngineConfig(warmup=0, intra_op_threads=1)


def scale_model(path: Path, weights: list[float], output: str = "y") -> OrtSession:
    """y = x * weights on float32 [batch, len(weights)]: a classifier-shaped output whose argmax the weights steer."""
    width = len(weights)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], [output])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", width])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [width], np.asarray(weights, np.float32))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return OrtSession(path, ENGINE)


class ArraySession:
    """A Session whose output is a fixed function of its input, for values ONNX Runtime would not produce (NaN)."""

    def __init__(self, transform: Callable[[np.ndarray], np.ndarray], width: int = 3) -> None:
        self.transform = transform
        self.inputs = [TensorSpec("x", DataType.FP32, (-1, width))]
        self.outputs = [TensorSpec("y", DataType.FP32, (-1, width))]
        self.providers = ["numpy"]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": self.transform(inputs["x"])}

    def close(self) -> None:
        pass


def test_identical_sessions_agree_exactly(tmp_path: Path):
    reference = scale_model(tmp_path / "a.onnx", [1.0, 2.0, 3.0])
    candidate = scale_model(tmp_path / "b.onnx", [1.0, 2.0, 3.0])
    report = check_parity(reference, candidate, random_samples(reference.inputs, 32))
    assert report.samples == 32
    assert report.batch_sizes == (1, 3, 16, 12)
    assert report.max_abs_diff == 0.0
    assert report.top1_agreement == 1.0
    assert report.passes(1e-9)


def test_a_small_drift_is_measured_and_judged_against_the_tolerance(tmp_path: Path):
    reference = scale_model(tmp_path / "a.onnx", [1.0, 1.0, 1.0])
    candidate = scale_model(tmp_path / "b.onnx", [1.0, 1.0, 1.001])
    samples = [{"x": np.array([[0.5, -0.25, 0.5]], np.float32)}]
    report = check_parity(reference, candidate, samples)
    assert report.max_abs_diff == pytest.approx(0.0005, rel=1e-3)
    assert report.max_rel_diff == pytest.approx(0.0005, rel=1e-3)  # below magnitude 1 it is the absolute figure
    assert not report.passes(1e-4)
    assert report.passes(1e-3)
    assert "max abs diff 0.0005" in report.summary()


def test_relative_difference_scales_with_large_values(tmp_path: Path):
    reference = scale_model(tmp_path / "a.onnx", [1000.0, 1000.0])
    candidate = scale_model(tmp_path / "b.onnx", [1000.01, 1000.0])
    report = check_parity(reference, candidate, [{"x": np.array([[1.0, 1.0]], np.float32)}])
    assert report.max_abs_diff == pytest.approx(0.01, rel=1e-2)
    assert report.max_rel_diff == pytest.approx(1e-5, rel=1e-2)
    assert report.passes(1e-4)


def test_top1_agreement_counts_rows_whose_best_class_moved(tmp_path: Path):
    reference = scale_model(tmp_path / "a.onnx", [1.0, 1.0])
    candidate = scale_model(tmp_path / "b.onnx", [1.0, -1.0])
    x = np.array([[1.0, 2.0], [3.0, 1.0], [1.0, 5.0], [4.0, -1.0]], np.float32)  # rows 0 and 2 flip to class 0
    report = check_parity(reference, candidate, [{"x": x}])
    assert report.top1_agreement == 0.5
    outputs = report.to_dict()["outputs"]
    assert isinstance(outputs, list) and outputs[0]["top1_agreement"] == 0.5


def test_non_classifier_outputs_report_no_top1():
    reference = ArraySession(lambda x: x, width=1)
    report = check_parity(reference, ArraySession(lambda x: x, width=1), [{"x": np.ones((4, 1), np.float32)}])
    assert report.top1_agreement is None
    assert report.to_dict()["top1_agreement"] is None


def test_nan_on_both_sides_agrees_and_on_one_side_fails():
    nan = ArraySession(lambda x: np.full_like(x, np.nan))
    samples = [{"x": np.ones((2, 3), np.float32)}]
    assert check_parity(nan, ArraySession(lambda x: np.full_like(x, np.nan)), samples).max_abs_diff == 0.0
    report = check_parity(nan, ArraySession(lambda x: x), samples)
    assert report.max_abs_diff == float("inf")
    assert not report.passes(1e9)


def test_missing_output_is_refused(tmp_path: Path):
    reference = scale_model(tmp_path / "a.onnx", [1.0, 2.0])
    candidate = scale_model(tmp_path / "b.onnx", [1.0, 2.0], output="z")
    with pytest.raises(ConfigError, match=r"lacks output\(s\) \['y'\]; it has \['z'\]"):
        check_parity(reference, candidate, random_samples(reference.inputs, 4))


def test_shape_mismatch_is_refused():
    reference = ArraySession(lambda x: x)
    candidate = ArraySession(lambda x: x[:, None, :])
    with pytest.raises(ConfigError, match=r"output 'y' has shape \[2, 1, 3\], expected \[2, 3\]"):
        check_parity(reference, candidate, [{"x": np.ones((2, 3), np.float32)}])


def test_no_samples_is_refused():
    with pytest.raises(ConfigError, match="at least one batch"):
        check_parity(ArraySession(lambda x: x), ArraySession(lambda x: x), [])


def test_random_samples_fill_dynamic_dims_and_choose_values_by_name():
    specs = [
        TensorSpec("input_ids", DataType.INT64, (-1, -1)),
        TensorSpec("attention_mask", DataType.INT64, (-1, -1)),
        TensorSpec("token_type_ids", DataType.INT32, (-1, -1)),
        TensorSpec("image", DataType.FP32, (-1, 3, 4, 4)),
        TensorSpec("flags", DataType.BOOL, (-1, 2)),
    ]
    batches = random_samples(specs, 20, dynamic_size=5, int_high=7)
    assert [len(b["image"]) for b in batches] == [1, 3, 16]
    first = batches[-1]
    assert first["input_ids"].shape == (16, 5) and first["input_ids"].dtype == np.int64
    assert first["input_ids"].min() >= 0 and first["input_ids"].max() < 7
    assert (first["attention_mask"] == 1).all()
    assert (first["token_type_ids"] == 0).all() and first["token_type_ids"].dtype == np.int32
    assert first["image"].shape == (16, 3, 4, 4) and first["image"].dtype == np.float32
    assert first["flags"].dtype == bool


def test_random_samples_are_reproducible_and_keep_a_fixed_batch():
    spec = [TensorSpec("x", DataType.FP32, (2, 3))]
    one, two = random_samples(spec, 6, seed=3), random_samples(spec, 6, seed=3)
    assert [b["x"].shape for b in one] == [(2, 3)] * 3
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(one, two, strict=True))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TensorSpec("text", DataType.BYTES, (-1,)), "numeric only"),
        (TensorSpec("scalar", DataType.FP32, ()), "no batch dimension"),
    ],
)
def test_random_samples_refuse_what_they_cannot_make(spec: TensorSpec, message: str):
    with pytest.raises(ConfigError, match=message):
        random_samples([spec], 2)
