"""Tied input and output embeddings stored once in an exported decoder graph.

torch.onnx writes a model whose output projection is the transpose of its token embedding (GPT-2, Llama with
`tie_word_embeddings`, SmolLM2...) as two initializers: the embedding table [vocab, hidden] that a Gather reads, and
its transpose [hidden, vocab] as the MatMul's weight — the largest tensor of a small model, twice. `share` makes the
projection read the embedding table itself: Gemm with transB=1 on the table (the hidden states flattened to 2-D
around it, since Gemm is 2-D), and `untie` undoes it before weight-only quantization, which rewrites MatMuls.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["share", "untie"]

_TIED = "tied_output_projection"  # the name prefix of the nodes `share` adds


def share(model: onnx.ModelProto) -> list[str]:
    """Rewrite every MatMul whose weight is the transpose of a Gather's table to read that table; the names of the
    tables now shared. The result computes the same numbers."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    tables = {
        tuple(initializers[node.input[0]].dims): node.input[0]
        for node in graph.node
        if node.op_type == "Gather" and node.input[0] in initializers and len(initializers[node.input[0]].dims) == 2
    }
    shared: list[str] = []
    dropped = set()
    rewritten: list[onnx.NodeProto] = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        table = tables.get((weight.dims[1], weight.dims[0])) if weight is not None and len(weight.dims) == 2 else None
        if weight is None or table is None:
            rewritten.append(node)
            continue
        if not np.array_equal(numpy_helper.to_array(weight), numpy_helper.to_array(initializers[table]).T):
            rewritten.append(node)
            continue
        rewritten.extend(_gemm_on_table(node, table, int(weight.dims[0]), f"{_TIED}_{len(shared)}", graph))
        shared.append(table)
        dropped.add(weight.name)
    del graph.node[:]
    graph.node.extend(rewritten)
    still_used = {name for node in graph.node for name in node.input}
    for name in dropped - still_used:
        graph.initializer.remove(initializers[name])
    return shared


def untie(model: onnx.ModelProto) -> int:
    """Undo `share` (each Gemm on a shared table back to a MatMul on its own transposed copy), and give an embedding
    lookup that reads a Transpose of the output projection's weight (ONNX Runtime GenAI's builder ties them so) its
    own table; how many. Weight-only quantizers rewrite MatMuls and Gathers on initializers, not Gemms or Gathers
    on computed tables: untied, both are quantized and no FP32 copy stays."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    undone = _untie_transposed_tables(graph, initializers)
    for node in graph.node:
        if node.op_type != "Gemm" or not node.name.startswith(_TIED):
            continue
        table = numpy_helper.to_array(initializers[node.input[1]])
        weight = numpy_helper.from_array(np.ascontiguousarray(table.T), f"{node.name}.weight")
        graph.initializer.append(weight)
        node.op_type = "MatMul"
        del node.attribute[:]
        node.input[1] = weight.name
        undone += 1
    return undone


def _untie_transposed_tables(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto]) -> int:
    transposes = {
        node.output[0]: node for node in graph.node if node.op_type == "Transpose" and node.input[0] in initializers
    }
    undone = 0
    for node in graph.node:
        transpose = transposes.get(node.input[0]) if node.op_type == "Gather" else None
        if transpose is None:
            continue
        perm = next((list(attribute.ints) for attribute in transpose.attribute if attribute.name == "perm"), None)
        table = np.transpose(numpy_helper.to_array(initializers[transpose.input[0]]), perm)
        own = numpy_helper.from_array(np.ascontiguousarray(table), f"{node.name}.table")
        graph.initializer.append(own)
        node.input[0] = own.name
        undone += 1
    still_read = {name for node in graph.node for name in node.input}
    for transpose in transposes.values():
        if transpose.output[0] not in still_read:
            graph.node.remove(transpose)
    return undone


def _gemm_on_table(
    matmul: onnx.NodeProto, table: str, hidden: int, name: str, graph: onnx.GraphProto
) -> list[onnx.NodeProto]:
    """The MatMul's input flattened to [-1, hidden], Gemm(transB=1) on the table, and the result reshaped to the
    input's leading dimensions + [vocab]: its consumers see the same tensor as before."""
    flat_shape = numpy_helper.from_array(np.array([-1, hidden], np.int64), f"{name}.flat_shape")
    vocab_last = numpy_helper.from_array(np.array([-1], np.int64), f"{name}.vocab_last")
    graph.initializer.extend([flat_shape, vocab_last])
    source, output = matmul.input[0], matmul.output[0]
    return [
        helper.make_node("Reshape", [source, flat_shape.name], [f"{name}.flat"], name=f"{name}.flatten"),
        helper.make_node("Shape", [source], [f"{name}.shape"], name=f"{name}.input_shape", end=-1),
        helper.make_node(
            "Concat", [f"{name}.shape", vocab_last.name], [f"{name}.out_shape"], name=f"{name}.concat", axis=0
        ),
        helper.make_node("Gemm", [f"{name}.flat", table], [f"{name}.logits"], name=name, transB=1),
        helper.make_node("Reshape", [f"{name}.logits", f"{name}.out_shape"], [output], name=f"{name}.restore"),
    ]
