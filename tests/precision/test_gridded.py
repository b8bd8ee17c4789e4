"""Weights already on a 4-bit grid (a Q4_1 GGUF's, expanded to FP32) are kept on it: the MatMulNBits graph computes
what the FP32 graph does far closer than ONNX Runtime's own re-rounding, by ONNX Runtime itself."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from forwardpass.precision.gridded import GRID_BLOCK, keep_grid

ROWS, COLUMNS = 96, 40  # 3 blocks of input rows


def _on_q4_1_grid(rng: np.random.Generator) -> np.ndarray:
    """A weight [ROWS, COLUMNS] as a Q4_1 GGUF holds it: per block of 32 rows and column, d*q + m, q in 0..15 with 0
    and 15 both used (the block's minimum and maximum)."""
    codes = rng.integers(0, 16, (ROWS // GRID_BLOCK, GRID_BLOCK, COLUMNS))
    codes[:, 0], codes[:, 1] = 0, 15
    steps = rng.uniform(0.005, 0.02, (ROWS // GRID_BLOCK, 1, COLUMNS))
    offsets = rng.uniform(-0.2, 0.05, (ROWS // GRID_BLOCK, 1, COLUMNS))  # off-centre, as real blocks are
    return (codes * steps + offsets).reshape(ROWS, COLUMNS).astype(np.float32)


def _on_q4_0_grid(rng: np.random.Generator) -> np.ndarray:
    """A weight [ROWS, COLUMNS] as a Q4_0 GGUF holds it, by gguf's own quantizer: d*(q - 8) per block, d set by the
    value of largest magnitude, so most blocks' codes span less than 0..15."""
    import gguf

    rows = rng.standard_normal((COLUMNS, ROWS)).astype(np.float32)  # GGUF's rows run along the input
    quantized = gguf.quants.quantize(rows, gguf.GGMLQuantizationType.Q4_0)
    return np.ascontiguousarray(gguf.quants.dequantize(quantized, gguf.GGMLQuantizationType.Q4_0).T)


def _graph(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """x [1, ROWS] through one MatMul per weight, each its own output."""
    nodes = [helper.make_node("MatMul", ["x", name], [f"{name}_out"], name=f"{name}_matmul") for name in weights]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ROWS])],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, COLUMNS]) for name in weights],
        [numpy_helper.from_array(weight, name) for name, weight in weights.items()],
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(output) for output in session.run(None, {"x": x})]


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_weights_on_a_grid_are_kept_and_computed_closely() -> None:
    rng = np.random.default_rng(0)
    weights = {"a": _on_q4_1_grid(rng), "b": _on_q4_1_grid(rng), "off_grid": rng.standard_normal((ROWS, COLUMNS))}
    weights["off_grid"] = weights["off_grid"].astype(np.float32)
    x = rng.standard_normal((1, ROWS)).astype(np.float32)
    model = _graph(weights)
    kept, sums = keep_grid(model, {"a_matmul", "b_matmul", "off_grid_matmul"}, accuracy_level=0)
    assert kept == ["a_matmul", "b_matmul"]  # the random weight lies on no grid: left for the quantizer
    assert len(sums) == 1  # the two kept MatMuls read one input: its block sums are computed once
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulNBits") == 2 and ops.count("MatMul") == 2  # the block sums' and the off-grid one
    exact = [x @ weight for weight in weights.values()]
    got = _run(model, x)
    np.testing.assert_allclose(got[2], exact[2], rtol=1e-5, atol=1e-5)  # the off-grid MatMul untouched
    rounded_again = MatMulNBitsQuantizer(_graph(weights), bits=4, block_size=GRID_BLOCK, is_symmetric=True)
    rounded_again.process()
    again = _run(rounded_again.model.model, x)
    for index in (0, 1):
        kept_error, again_error = _relative_error(got[index], exact[index]), _relative_error(again[index], exact[index])
        # what is left is the offsets held in two 4-bit rows (~1e-3 here); rounding again costs ~60x that
        assert kept_error < 3e-3 and kept_error < again_error / 20, (kept_error, again_error)


def test_a_grid_whose_codes_span_less_than_16_levels_is_kept() -> None:
    """Q4_0 and Q4_K files (what users mostly bring) were re-rounded at INT4 as if on no grid: the grid was found only
    where a block's codes reached both 0 and 15, as Q4_1's do."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 12, (ROWS // GRID_BLOCK, GRID_BLOCK, COLUMNS))  # 0..11, as a Q4_K sub-block's may be
    codes[:, 0], codes[:, 1] = 0, 11
    narrow = codes * rng.uniform(0.005, 0.02, (ROWS // GRID_BLOCK, 1, COLUMNS)) - 0.1
    weights = {"q4_0": _on_q4_0_grid(rng), "narrow": narrow.reshape(ROWS, COLUMNS).astype(np.float32)}
    x = rng.standard_normal((1, ROWS)).astype(np.float32)
    model = _graph(weights)
    kept, _ = keep_grid(model, {"q4_0_matmul", "narrow_matmul"}, accuracy_level=0)
    assert kept == ["q4_0_matmul", "narrow_matmul"]
    for got, weight in zip(_run(model, x), weights.values(), strict=True):
        assert _relative_error(got, x @ weight) < 3e-3


def test_a_symmetric_grid_is_kept_without_offsets() -> None:
    """Q4_0's d*(q - 8) is what MatMulNBits computes with its implicit zero point: it was written with offset rows
    (all of them zero) and block sums, ~15 % of a SmolLM2 decode step for nothing."""
    rng = np.random.default_rng(2)
    weights = {"q4_0": _on_q4_0_grid(rng), "q4_1": _on_q4_1_grid(rng)}
    x = rng.standard_normal((1, ROWS)).astype(np.float32)
    model = _graph(weights)
    kept, sums = keep_grid(model, {"q4_0_matmul"}, accuracy_level=0)
    assert kept == ["q4_0_matmul"] and sums == []
    assert [node.op_type for node in model.graph.node] == ["MatMulNBits", "MatMul"]
    assert next(n for n in model.graph.node if n.op_type == "MatMulNBits").input[0] == "x"
    got = _run(model, x)
    assert _relative_error(got[0], x @ weights["q4_0"]) < 1e-6  # exact, up to float32 sums
