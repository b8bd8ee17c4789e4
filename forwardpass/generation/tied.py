"""Tied input and output embeddings stored once in an exported decoder graph.

torch.onnx writes a model whose output projection is the transpose of its token embedding (GPT-2, Llama with
`tie_word_embeddings`, SmolLM2...) as two initializers: the embedding table [vocab, hidden] that a Gather reads, and
its transpose [hidden, vocab] as the MatMul's weight — the largest tensor of a small model, twice. `share` makes the
projection read the embedding table itself: Gemm with transB=1 on the table (the hidden states flattened to 2-D
around it, since Gemm is 2-D), and `untie` undoes it before weight-only quantization, which rewrites MatMuls.
`quantize_lookups` then gives each untied lookup a copy of its projection's quantized blocks (GatherBlockQuantized):
the quantized table is stored twice, on purpose — see there.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["Tie", "quantize_lookups", "share", "untie"]

_TIED = "tied_output_projection"  # the name prefix of the nodes `share` adds
_LOOKUP = "quantized_lookup"  # the name prefix of the nodes `quantize_lookups` adds


class Tie(NamedTuple):
    """An embedding lookup and the output projection that read one table, by the names of their outputs."""

    lookup: str
    projection: str


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


def untie(model: onnx.ModelProto) -> list[Tie]:
    """Undo `share` (each Gemm on a shared table back to a MatMul on its own transposed copy), and give an embedding
    lookup that reads a Transpose of the output projection's weight (ONNX Runtime GenAI's builder ties them so) its
    own table; the lookups and projections so untied. Weight-only quantizers rewrite MatMuls and Gathers on
    initializers, not Gemms or Gathers on computed tables."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    ties = _untie_transposed_tables(graph, initializers)
    lookups = {node.input[0]: node.output[0] for node in graph.node if node.op_type == "Gather"}
    for node in graph.node:
        if node.op_type != "Gemm" or not node.name.startswith(_TIED):
            continue
        table = numpy_helper.to_array(initializers[node.input[1]])
        weight = numpy_helper.from_array(np.ascontiguousarray(table.T), f"{node.name}.weight")
        graph.initializer.append(weight)
        if node.input[1] in lookups:
            ties.append(Tie(lookups[node.input[1]], node.output[0]))
        node.op_type = "MatMul"
        del node.attribute[:]
        node.input[1] = weight.name
    return ties


def quantize_lookups(model: onnx.ModelProto, ties: list[Tie]) -> list[str]:
    """Each tie whose projection is now a MatMulNBits: its lookup (a Gather on its own FP32 table) becomes a
    GatherBlockQuantized on a copy of the projection's quantized blocks, its output reshaped to [..., hidden], and
    the FP32 table dropped; the names of the weights copied. A copy, not the weight itself: ONNX Runtime repacks a
    MatMulNBits weight into a buffer of its own and frees the original only when no other node reads it, so a lookup
    reading it keeps the whole table resident (SmolLM2 at 8 bits: +30 MB, measured), where a copy of its own stays
    mapped from the weights file and only the rows looked up are read."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    projections = {node.output[0]: node for node in graph.node if node.op_type == "MatMulNBits"}
    copied: list[str] = []
    for tie in ties:
        projection = projections.get(tie.projection)
        lookup = next((node for node in graph.node if node.op_type == "Gather" and tie.lookup in node.output), None)
        if projection is None or lookup is None or any(projection.input[3:]):
            continue  # not quantized, or with zero points, whose packing differs between the two operators
        at = list(graph.node).index(lookup)
        replacement = _lookup_in_blocks(projection, lookup, initializers, f"{_LOOKUP}_{len(copied)}", graph)
        graph.node.remove(lookup)
        for offset, node in enumerate(replacement):
            graph.node.insert(at + offset, node)
        if not any(lookup.input[0] in node.input for node in graph.node):
            graph.initializer.remove(initializers[lookup.input[0]])
        copied.append(projection.input[1])
    return copied


def _untie_transposed_tables(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto]) -> list[Tie]:
    transposes = {
        node.output[0]: node for node in graph.node if node.op_type == "Transpose" and node.input[0] in initializers
    }
    projections = {node.input[1]: node.output[0] for node in graph.node if node.op_type == "MatMul"}
    ties: list[Tie] = []
    for node in graph.node:
        transpose = transposes.get(node.input[0]) if node.op_type == "Gather" else None
        if transpose is None:
            continue
        perm = next((list(attribute.ints) for attribute in transpose.attribute if attribute.name == "perm"), None)
        table = np.transpose(numpy_helper.to_array(initializers[transpose.input[0]]), perm)
        own = numpy_helper.from_array(np.ascontiguousarray(table), f"{node.name}.table")
        graph.initializer.append(own)
        node.input[0] = own.name
        if transpose.input[0] in projections:
            ties.append(Tie(node.output[0], projections[transpose.input[0]]))
    still_read = {name for node in graph.node for name in node.input}
    for transpose in transposes.values():
        if transpose.output[0] not in still_read:
            graph.node.remove(transpose)
    return ties


def _lookup_in_blocks(
    projection: onnx.NodeProto,
    lookup: onnx.NodeProto,
    initializers: dict[str, onnx.TensorProto],
    name: str,
    graph: onnx.GraphProto,
) -> list[onnx.NodeProto]:
    """GatherBlockQuantized rows of a copy of the projection's blocks [vocab, blocks, bytes per block] (and of its
    scales, shaped [vocab, blocks, 1] as the operator wants them), [..., blocks, block] reshaped to
    [..., blocks x block], sliced to [..., hidden] when the quantizer padded the rows to whole blocks."""
    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in projection.attribute}
    hidden, block, bits = int(attributes["K"]), int(attributes["block_size"]), int(attributes["bits"])
    blocks_table, scales = onnx.TensorProto(), onnx.TensorProto()
    blocks_table.CopyFrom(initializers[projection.input[1]])
    scales.CopyFrom(initializers[projection.input[2]])
    blocks_table.name, scales.name = f"{name}.table", f"{name}.scales"
    vocab, blocks = int(blocks_table.dims[0]), int(blocks_table.dims[1])
    del scales.dims[:]
    scales.dims.extend([vocab, blocks, 1])
    constants = {"row": [blocks * block], "start": [0], "end": [hidden], "last_axis": [-1]}
    graph.initializer.extend([blocks_table, scales])
    graph.initializer.extend(
        numpy_helper.from_array(np.array(value, np.int64), f"{name}.{key}") for key, value in constants.items()
    )
    indices, output = lookup.input[1], lookup.output[0]
    padded = blocks * block != hidden
    rows = f"{name}.padded_rows" if padded else output
    nodes = [
        helper.make_node(
            "GatherBlockQuantized",
            [blocks_table.name, indices, scales.name],
            [f"{name}.blocks"],
            name=name,
            domain="com.microsoft",
            bits=bits,
            block_size=block,
            gather_axis=0,
            quantize_axis=2,
        ),
        helper.make_node("Shape", [indices], [f"{name}.indices_shape"], name=f"{name}.indices_shape"),
        helper.make_node(
            "Concat", [f"{name}.indices_shape", f"{name}.row"], [f"{name}.row_shape"], name=f"{name}.concat", axis=0
        ),
        helper.make_node("Reshape", [f"{name}.blocks", f"{name}.row_shape"], [rows], name=f"{name}.flatten"),
    ]
    if padded:
        slice_inputs = [rows, f"{name}.start", f"{name}.end", f"{name}.last_axis"]
        nodes.append(helper.make_node("Slice", slice_inputs, [output], name=f"{name}.unpad"))
    return nodes


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
