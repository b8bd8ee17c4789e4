"""Each precision's transform against the FP32 model, numerically, on real kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import forwardpass
from forwardpass.errors import ConfigError
from forwardpass.precision.transforms import (
    Int8Settings,
    layer_precisions,
    to_bf16_torch,
    to_fp16,
    to_fp64,
    to_int4,
    to_int8_static,
)

MINILM = Path(__file__).resolve().parents[2] / "models" / "minilm"
# Documented tolerances (README, optimize): relative to the output's scale.
FP16_TOLERANCE = 1e-2
BF16_TOLERANCE = 5e-2


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def _numpy_mlp(path: Path, x: np.ndarray) -> np.ndarray:
    weights = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(str(path)).graph.initializer}
    hidden = np.maximum(x @ weights["w1"] + weights["b1"], 0.0)
    return hidden @ weights["w2"] + weights["b2"]


def test_fp64_matches_a_float64_numpy_reference(mlp_path: Path, tmp_path: Path) -> None:
    converted = to_fp64(mlp_path, tmp_path / "fp64.onnx")
    x = np.random.default_rng(1).standard_normal((5, 6)) * 1e3  # large values: float32 would lose ~1e-4
    got = _run(converted.path, x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, _numpy_mlp(mlp_path, x), rtol=1e-12, atol=1e-12)
    assert not converted.notes  # every op of the MLP has a double kernel
    assert np.abs(_run(mlp_path, x.astype(np.float32)) - _numpy_mlp(mlp_path, x)).max() > 1e-6


def test_fp64_reports_the_nodes_it_keeps_in_float32(tmp_path: Path) -> None:
    """The bundled digits CNN: ONNX Runtime has no double Conv, so both convolutions run in float32 between Casts."""
    source = Path(__file__).resolve().parents[2] / "models" / "digits_cnn" / "1" / "model.onnx"
    converted = to_fp64(source, tmp_path / "fp64.onnx")
    convs = [node.name for node in onnx.load(str(source)).graph.node if node.op_type == "Conv"]
    assert sorted(converted.layer_overrides) == sorted(convs)
    x = np.random.default_rng(0).random((3, 1, 8, 8))
    original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    expected = original.run(None, {"input": x.astype(np.float32)})[0]
    got = ort.InferenceSession(str(converted.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_fp16_keeps_io_types_and_stays_within_tolerance(mlp_path: Path, tmp_path: Path) -> None:
    converted = to_fp16(mlp_path, tmp_path / "fp16.onnx")
    x = np.random.default_rng(2).standard_normal((8, 6)).astype(np.float32)
    expected, got = _run(mlp_path, x), _run(converted.path, x)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= FP16_TOLERANCE * np.abs(expected).max()
    model = onnx.load(str(converted.path))
    assert set(layer_precisions(onnx.load(str(mlp_path)), model).values()) == {"fp16"}
    weights = {t.name: t.data_type for t in model.graph.initializer}
    assert weights["w1"] == onnx.TensorProto.FLOAT16


def test_bf16_runs_in_torch_within_tolerance(mlp_path: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((8, 6)).astype(np.float32)
    converted = to_bf16_torch(mlp_path, tmp_path / "model.pt", {"x": x[:2]})
    assert converted.engine == "torch"
    model = forwardpass.load(converted.path, serve="native")
    got = model.infer({"x": x})["y"]
    expected = _run(mlp_path, x)
    assert np.abs(got - expected).max() <= BF16_TOLERANCE * np.abs(expected).max()
    assert np.abs(got - expected).max() > 0  # it did compute in bfloat16


def test_int4_minilm_keeps_embeddings_and_shrinks_the_file(tmp_path: Path) -> None:
    converted = to_int4(MINILM / "1" / "model.onnx", tmp_path / "model.onnx", block_size=16)
    size_ratio = converted.path.stat().st_size / (MINILM / "1" / "model.onnx").stat().st_size
    assert size_ratio <= 0.4
    (tmp_path / "config.yaml").write_text((MINILM / "config.yaml").read_text())
    (tmp_path / "tokenizer.json").write_text((MINILM / "tokenizer.json").read_text())
    quantized = forwardpass.load(converted.path)
    original = forwardpass.load("minilm")
    sentences = [
        "A man is playing a guitar.",
        "The new movie is awesome.",
        "The cat sits outside.",
        "A woman watches TV.",
        "Stock markets fell sharply today.",
        "How do I bake sourdough bread?",
    ]
    a = np.array([p["embedding"] for p in original.predict(sentences)])
    b = np.array([p["embedding"] for p in quantized.predict(sentences)])
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.mean() >= 0.98
    ops = {node.op_type for node in onnx.load(str(converted.path)).graph.node}
    assert "MatMulNBits" in ops


def test_int4_refuses_a_model_without_matmul(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[2] / "models" / "digits_cnn" / "1" / "model.onnx"
    with pytest.raises(ConfigError, match=r"MatMul layers, and this model has none"):
        to_int4(source, tmp_path / "x.onnx", block_size=32)


def test_int8_of_a_model_without_biased_layers_needs_no_bias_correction(tmp_path: Path) -> None:
    """A MatMul-only model ended in ONNX Runtime's 'At least one output should be requested' traceback."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="dense")],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source = tmp_path / "matmul.onnx"
    onnx.save(model, source)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    converted = to_int8_static(source, tmp_path / "int8.onnx", [{"x": x[:16]}, {"x": x[16:]}], Int8Settings())
    assert layer_precisions(model, onnx.load(str(converted.path))) == {"dense": "int8"}
    assert np.abs(_run(converted.path, x) - x @ w).max() < 0.05 * np.abs(x @ w).max()


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_takes_a_shorter_last_batch_and_shares_its_cache(
    method: str, mlp_path: Path, tmp_path: Path
) -> None:
    """ONNX Runtime's histogram calibrators stack every batch's outputs; 16 + 5 items must still calibrate. The cache
    keeps the ranges, so a second candidate (one layer left in FP32) is quantized with the same ones."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((21, 6)).astype(np.float32)
    batches = [{"x": x[:16]}, {"x": x[16:]}]
    # without bias correction, which needs the data itself (its layers' input means), not only the ranges
    settings = Int8Settings(method=method, percentile=99.9, bias_correction=False)  # type: ignore[arg-type]
    cache = tmp_path / "ranges.json"
    full = to_int8_static(mlp_path, tmp_path / "int8.onnx", batches, settings, cache=cache)
    assert cache.is_file() and full.settings["method"] == method
    mixed = to_int8_static(mlp_path, tmp_path / "mixed.onnx", [], settings, exclude=["dense2"], cache=cache)
    source = onnx.load(str(mlp_path))
    assert layer_precisions(source, onnx.load(str(full.path)))["dense2"] == "int8"
    assert layer_precisions(source, onnx.load(str(mixed.path)))["dense2"] == "fp32"
    reference = _run(mlp_path, x)
    scale = np.abs(reference).max()
    assert np.abs(_run(full.path, x) - reference).max() < 0.1 * scale


def _edge_filter_cnn(path: Path) -> Path:
    """Depthwise 3x3 kernels of large weights that cancel to ~0 (what BatchNorm folds into MobileNetV2's first
    depthwise layer), then a pointwise Conv and a Gemm: x [batch, 4, 8, 8] -> y [batch, 3]."""
    rng = np.random.default_rng(3)
    edges = rng.uniform(-10, 10, (4, 1, 3, 3))
    edges -= edges.mean(axis=(2, 3), keepdims=True)  # each kernel sums to 0: flat input gives the bias alone
    pointwise = rng.standard_normal((6, 4, 1, 1))
    dense = rng.standard_normal((3, 6))
    tensors = {
        "w_dw": edges,
        "b_dw": rng.standard_normal(4),
        "w_pw": pointwise,
        "b_pw": rng.standard_normal(6),
        "w_fc": dense,
        "b_fc": rng.standard_normal(3),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w_dw", "b_dw"], ["dw"], name="depthwise", group=4),
            helper.make_node("Relu", ["dw"], ["dw_relu"], name="relu1"),
            helper.make_node("Conv", ["dw_relu", "w_pw", "b_pw"], ["pw"], name="pointwise"),
            helper.make_node("GlobalAveragePool", ["pw"], ["pooled"], name="pool"),
            helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
            helper.make_node("Gemm", ["flat", "w_fc", "b_fc"], ["y"], name="dense", transB=1),
        ],
        "edges",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(value.astype(np.float32), name) for name, value in tensors.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _flat_images(rng: np.random.Generator, count: int) -> np.ndarray:
    """Images nearly flat per channel (a level in [0, 3] plus faint texture): the edge filters' input."""
    levels = rng.uniform(0, 3, (count, 4, 1, 1))
    return (levels + 0.02 * rng.standard_normal((count, 4, 8, 8))).astype(np.float32)


@pytest.mark.parametrize("quant_format", ["qdq", "qoperator"])
def test_bias_correction_removes_the_offset_that_rounding_cancelling_weights_leaves(
    quant_format: str, tmp_path: Path
) -> None:
    source = _edge_filter_cnn(tmp_path / "edges.onnx")
    rng = np.random.default_rng(4)
    batches = [{"x": _flat_images(rng, 16)} for _ in range(4)]
    x = _flat_images(rng, 64)
    reference = _run(source, x)
    errors = {}
    for corrected in (False, True):
        settings = Int8Settings(quant_format=quant_format, bias_correction=corrected)  # type: ignore[arg-type]
        converted = to_int8_static(source, tmp_path / f"{corrected}.onnx", batches, settings)
        assert converted.settings["bias_correction"] is corrected
        errors[corrected] = float(np.abs((_run(converted.path, x) - reference).mean(axis=0)).max())
        assert layer_precisions(onnx.load(str(source)), onnx.load(str(converted.path))) == dict.fromkeys(
            ["depthwise", "pointwise", "dense"], "int8"
        )
    assert converted.notes == ["biases of 3 layers corrected for the rounding of their weights"]
    assert errors[False] > 0.1  # the offset is there to remove (0.16; 0.05 left by the activations' rounding)
    assert errors[True] < errors[False] / 2, errors
