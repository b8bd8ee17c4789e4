"""INT4 weights that already lie on a 4-bit grid kept on it instead of rounded a second time.

A decoder exported from a Q4_1 GGUF (SmolLM2's) holds every body weight as FP32 values d*q + m per block of 32 input
rows (q in 0..15, a float scale d and a float offset m per block and output column). Rounding them again with
ONNX Runtime's symmetric quantizer costs what quantizing cost in the first place (SmolLM2's held-out perplexity
1.143x FP32 with the output projection at 8 bits); MatMulNBits cannot hold m itself: its zero points are integers,
so (q - z) * d misses m by up to d/2 in every block, and zero points of any kind slow ONNX Runtime 1.32's kernel by
~19 % per decode step (SmolLM2, 1 thread; float ones far more), measured. So each such weight is written as it is:
the codes q with the implicit zero point 8 and the scale d, which leaves an offset m + 8d per block and column; the
offsets are extra rows of the same MatMulNBits (4-bit, in blocks of their own), read by extra input columns that
hold the sums of the input over each block, concatenated to the input once for all the MatMuls that read it. Two
rows per offset (the offset at 4 bits, then what that missed at 4 bits) keep its error to ~1/200 of its size.

A Q4_0 GGUF's weights are d*(q - 8): MatMulNBits with its implicit zero point holds them exactly, with no offset rows
and no block sums: the graph ONNX Runtime GenAI's builder makes (SmolLM2 requantized to Q4_0: 0.85x ORT GenAI's INT4
speed through the offsets' machinery, 0.99x without; perplexity 1.062x FP32).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["GRID_BLOCK", "keep_grid"]

GRID_BLOCK = 32  # the block of GGUF's 4-bit types, along the input dimension
_LEVELS = 15  # q in 0..15
_ON_GRID = 1e-3  # how far (in steps of d) from a code a value may be: float32 rounding of d*q + m
_OFFSET_PARTS = 2  # rows per offset: with 1, SmolLM2 measured 1.093x FP32 perplexity, with 2 1.046x


def keep_grid(model: onnx.ModelProto, names: set[str], accuracy_level: int) -> tuple[list[str], list[str]]:
    """Rewrite each MatMul of `names` whose constant weight lies on a per-block 4-bit grid as a MatMulNBits that
    computes it exactly (up to the offsets' two 4-bit rows); the names of the MatMuls rewritten and of the block-sum
    MatMuls added (FP32, to be left out of any later quantization)."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    augmented: dict[str, str] = {}  # input -> the input with its block sums concatenated
    kept: list[str] = []
    sums: list[str] = []
    rewritten: list[onnx.NodeProto] = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and node.name in names else None
        array = numpy_helper.to_array(weight) if weight is not None and len(weight.dims) == 2 else None
        symmetric = _symmetric(array) if array is not None else None
        grid = _grid(array) if array is not None and symmetric is None else None
        if weight is None or (symmetric is None and grid is None):
            rewritten.append(node)
            continue
        rows, columns = (int(size) for size in weight.dims)
        source = node.input[0]
        if symmetric is not None:  # the zero point 8 holds it all: no offsets to add
            packed, block_scales = _packed([symmetric[0]], [symmetric[1]])
        else:
            assert grid is not None
            if source not in augmented:
                augmented[source] = f"{node.name}/block_sums_beside"
                sums.append(f"{node.name}/block_sums")
                rewritten.extend(_block_sums(source, rows, sums[-1], augmented[source], graph))
            source = augmented[source]
            packed, block_scales = _with_offset_rows(*grid)
        graph.initializer.extend(
            [
                numpy_helper.from_array(packed, f"{weight.name}_Q4"),
                numpy_helper.from_array(block_scales, f"{weight.name}_scales"),
            ]
        )
        rewritten.append(
            helper.make_node(
                "MatMulNBits",
                [source, f"{weight.name}_Q4", f"{weight.name}_scales"],
                list(node.output),
                name=f"{node.name}_Q4",
                domain="com.microsoft",
                K=rows if symmetric is not None else rows + _offset_rows(rows),
                N=columns,
                bits=4,
                block_size=GRID_BLOCK,
                accuracy_level=accuracy_level,
            )
        )
        graph.initializer.remove(weight)
        kept.append(node.name)
    del graph.node[:]
    graph.node.extend(rewritten)
    return kept, sums


def _symmetric(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(codes [blocks, GRID_BLOCK, N] in 0..15, scales d [blocks, N]) when every block of `weight` [K, N] is
    d*(q - 8), as Q4_0's are (d = the value of largest magnitude / -8, so that value is code 0), else None."""
    rows, columns = weight.shape
    if rows % GRID_BLOCK:
        return None
    blocks = weight.astype(np.float64).reshape(rows // GRID_BLOCK, GRID_BLOCK, columns)
    largest = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None, :], axis=1)[:, 0, :]
    scales = -largest / 8
    codes = blocks / np.where(scales == 0, 1.0, scales)[:, None, :] + 8
    rounded = np.rint(codes)
    if np.abs(codes - rounded).max() > _ON_GRID or rounded.min() < 0 or rounded.max() > _LEVELS:
        return None
    return rounded.astype(np.uint8), scales


def _grid(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(codes [blocks, GRID_BLOCK, N] in 0..15, scales d [blocks, N], offsets m + 8d [blocks, N]) when every block of
    `weight` [K, N] is d*q + m, else None. A block's codes need not reach both 0 and 15: Q4_K (its sub-blocks'
    d*q - m, scale and minimum searched) leaves most blocks a narrower span, so the step d is the block's range over
    the widest span of codes that puts every value on one."""
    rows, columns = weight.shape
    if rows % GRID_BLOCK:
        return None
    blocks = weight.astype(np.float64).reshape(rows // GRID_BLOCK, GRID_BLOCK, columns)
    pairs = blocks.transpose(0, 2, 1).reshape(-1, GRID_BLOCK)  # one row per block and column
    low = pairs.min(axis=1)
    extent = pairs.max(axis=1) - low
    spans = np.zeros(len(pairs))  # the span of codes found for each pair; 0 where none yet
    for span in range(_LEVELS, 0, -1):
        left = np.flatnonzero(spans == 0)
        if not len(left):
            break
        if span == _LEVELS - 1 and not _spans_any(pairs[left[0]] - low[left[0]], extent[left[0]]):
            return None  # a pair on no grid at all: the weight is not (an FP32 one ends here, after one pass)
        steps = (pairs[left] - low[left, None]) / np.where(extent[left] == 0, 1.0, extent[left] / span)[:, None]
        spans[left[np.abs(steps - np.rint(steps)).max(axis=1) <= _ON_GRID]] = span
    if not spans.all():
        return None
    step = extent / spans
    codes = np.rint((pairs - low[:, None]) / np.where(step == 0, 1.0, step)[:, None])
    shaped = codes.reshape(rows // GRID_BLOCK, columns, GRID_BLOCK).transpose(0, 2, 1)
    step, low = step.reshape(rows // GRID_BLOCK, columns), low.reshape(rows // GRID_BLOCK, columns)
    return shaped.astype(np.uint8), step, low + 8 * step


def _spans_any(shifted: np.ndarray, extent: float) -> bool:
    """Whether one block's values less its minimum are whole steps of extent / span for some span of 1..15."""
    for span in range(1, _LEVELS + 1):
        steps = shifted / (extent / span if extent else 1.0)
        if np.abs(steps - np.rint(steps)).max() <= _ON_GRID:
            return True
    return False


def _offset_rows(rows: int) -> int:
    """Rows added for the offsets: `_OFFSET_PARTS` copies of one per block, each copy padded to whole blocks."""
    return _OFFSET_PARTS * GRID_BLOCK * -(-rows // GRID_BLOCK // GRID_BLOCK)


def _with_offset_rows(codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' packed weight [N, blocks, 16] and scales [N * blocks]: the codes, then each part of the offsets
    at 4 bits (implicit zero point 8), each part what the parts before it missed."""
    count, _, columns = codes.shape
    padded = np.zeros((-(-count // GRID_BLOCK) * GRID_BLOCK, columns))
    padded[:count] = offsets
    all_codes, all_scales = [codes], [scales]
    for _ in range(_OFFSET_PARTS):
        part = padded.reshape(-1, GRID_BLOCK, columns)
        scale = np.abs(part).max(axis=1) / 7
        part_codes = np.clip(np.rint(part / np.where(scale == 0, 1.0, scale)[:, None]), -8, 7)
        padded = padded - (part_codes * scale[:, None]).reshape(padded.shape)
        all_codes.append((part_codes + 8).astype(np.uint8))
        all_scales.append(scale)
    return _packed(all_codes, all_scales)


def _packed(codes: list[np.ndarray], scales: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of codes [blocks, GRID_BLOCK, N] and their scales [blocks, N], stacked along the input, as MatMulNBits
    takes them: packed [N, blocks, 16] and scales [N * blocks]."""
    every = np.concatenate(codes).transpose(2, 0, 1)  # [N, blocks, GRID_BLOCK]
    packed = (every[..., 0::2] | (every[..., 1::2] << 4)).astype(np.uint8)  # the even row in the low nibble
    return packed, np.concatenate(scales).T.astype(np.float32).reshape(-1)


def _block_sums(source: str, rows: int, sums: str, beside: str, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes that compute `beside` = [source, its sums over each block of GRID_BLOCK columns padded to whole blocks,
    once per offset part]: one MatMul with a 0/1 matrix (the sums once: half the work of one matrix per part), one
    Concat that repeats them."""
    ones = np.zeros((rows, _offset_rows(rows) // _OFFSET_PARTS), np.float32)
    ones[np.arange(rows), np.arange(rows) // GRID_BLOCK] = 1.0
    graph.initializer.append(numpy_helper.from_array(ones, f"{sums}/ones"))
    return [
        helper.make_node("MatMul", [source, f"{sums}/ones"], [sums], name=sums),
        helper.make_node("Concat", [source, *[sums] * _OFFSET_PARTS], [beside], name=f"{sums}/concat", axis=-1),
    ]
