"""A tied embedding table through quantization: `untie` pairs each lookup with its output projection, and
`quantize_lookups` makes the lookup read a copy of the projection's quantized blocks — the rows ONNX Runtime
returns are exactly the blocks the projection multiplies by, padded rows cut back to the hidden size."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from forwardpass.generation import tied

VOCAB = 40


def tied_decoder(hidden: int) -> onnx.ModelProto:
    """ids -> Gather(table) -> MatMul(table transposed) -> logits, the table stored once as `share` leaves it."""
    table = np.random.default_rng(0).normal(size=(VOCAB, hidden)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embed"),
        helper.make_node("MatMul", ["embedded", "weight"], ["logits"], name="lm_head"),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", VOCAB])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.ascontiguousarray(table.T), "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    tied.share(model)
    return model


@pytest.mark.parametrize(("hidden", "block"), [(64, 32), (48, 32)])  # 48: each row padded to two blocks of 32
def test_the_lookup_reads_the_projection_blocks_exactly(hidden: int, block: int) -> None:
    model = tied_decoder(hidden)
    ties = tied.untie(model)
    assert len(ties) == 1
    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    model = quantizer.model.model
    assert tied.quantize_lookups(model, ties) == ["tied_output_projection_0.weight_Q8"]
    kinds = [node.op_type for node in model.graph.node]
    assert "Gather" not in kinds and "GatherBlockQuantized" in kinds
    tables = {(VOCAB, hidden), (hidden, VOCAB)}
    assert not [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and tuple(t.dims) in tables]
    model.graph.output.append(helper.make_tensor_value_info("embedded", TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[3, 0, 39], [7, 7, 1]], np.int64)
    _, embedded = session.run(["logits", "embedded"], {"ids": ids})
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    blocks = arrays["tied_output_projection_0.weight_Q8"].astype(np.float32) - 128  # symmetric 8-bit: zero at 128
    scales = arrays["tied_output_projection_0.weight_scales"].reshape(VOCAB, -1, 1)
    rows = (blocks * scales).reshape(VOCAB, -1)[:, :hidden]
    assert embedded.shape == (2, 3, hidden)
    np.testing.assert_array_equal(embedded, rows[ids])
