"""One function per precision: an ONNX file in, a model file out, with what became of each layer.

Every transform uses the tools made for it: ONNX Runtime's graph optimizer (fp32) and quantization tools (int8 static
and dynamic, int4 weight-only), onnxconverter-common (fp16), onnx2torch + torch (bf16, which ONNX Runtime's CPU
provider cannot run). Only fp64 is a graph rewrite of our own: no tool widens a model to double.
"""

from __future__ import annotations

import importlib.metadata
import keyword
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from forwardpass.errors import ConfigError
from forwardpass.formats.base import require
from forwardpass.pipeline import Arrays

__all__ = [
    "COMPUTE_OPS",
    "Converted",
    "Int8Settings",
    "compute_layers",
    "dequantized_initializers",
    "keep_interface",
    "layer_precisions",
    "to_bf16_torch",
    "to_fp16",
    "to_fp32",
    "to_fp64",
    "to_int4",
    "to_int8_dynamic",
    "to_int8_static",
]

# The layers whose precision matters: where the multiply-adds are.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "LSTM", "GRU"})
_INT8_OPS = frozenset(
    {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "QGemm", "QAttention"}
)
_FLOAT_NAMES = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.DOUBLE: "fp64"}
MAX_FP64_FALLBACKS = 64
HISTOGRAM_STRIDE = 1  # calibration batches per collection round of the histogram calibrators


@dataclass(slots=True)
class Converted:
    path: Path
    engine: Literal["onnxruntime", "torch"] = "onnxruntime"
    settings: dict[str, object] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    layer_overrides: dict[str, str] = field(default_factory=dict)  # layers whose precision the graph cannot show


@dataclass(frozen=True, slots=True)
class Int8Settings:
    """`quantize_static`'s choices. U8 activations with S8 weights are what AVX-512 VNNI multiplies: S8/S8 ran at
    ~1.1x FP32 where U8/S8 ran at 2.3-3.5x (bench/results/precision.md). Format, per-channel vs per-tensor, reduce
    range and pre-processing differed by less than the machine's noise; per-channel keeps accuracy best."""

    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = 99.999  # with method "percentile": the share of each activation's values its range keeps
    quant_format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    activations: Literal["u8", "s8"] = "u8"
    reduce_range: bool = False
    preprocess: bool = True  # quant_pre_process: symbolic shape inference and graph optimization first
    # Rounding a weight to 8 bits shifts its layer's mean output: (W_int8 - W) . E[x]. BatchNorm folded into a
    # depthwise kernel makes weights up to ~15 that cancel to ~0.1 % (an edge filter); rounding breaks the
    # cancellation and every flat region leaks an offset. Subtracting the shift from the bias (E[x] over the
    # calibration data) took MobileNetV2's weight-only logit error from 0.34 to 0.10 (bench/precision_mobilenet.py).
    bias_correction: bool = True

    def to_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            **({"percentile": self.percentile} if self.method == "percentile" else {}),
            "quant_format": self.quant_format,
            "per_channel": self.per_channel,
            "activations": self.activations,
            "weights": "s8",
            "reduce_range": self.reduce_range,
            "preprocess": self.preprocess,
            "bias_correction": self.bias_correction,
        }


def _versions(*names: str) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def compute_layers(model: onnx.ModelProto) -> list[str]:
    """The names of the compute nodes, in graph order."""
    return [node.name for node in model.graph.node if node.op_type in COMPUTE_OPS and node.name]


def layer_precisions(source: onnx.ModelProto, converted: onnx.ModelProto) -> dict[str, str]:
    """For each compute layer of `source`: the precision it runs at in `converted`, read from the graph itself."""
    by_name = {node.name: node for node in converted.graph.node}
    producers = {output: node for node in converted.graph.node for output in node.output}
    initializers = {init.name: init.data_type for init in converted.graph.initializer}
    result = {}
    for name in compute_layers(source):
        node = by_name.get(name) or by_name.get(f"{name}_quant") or by_name.get(f"{name}_Q4")
        if node is None:
            result[name] = "folded"  # merged into another node by graph optimization
        elif node.op_type == "MatMulNBits":
            result[name] = "int4"
        elif node.op_type in _INT8_OPS or (len(node.input) > 1 and _is_dequantized(node.input[1], producers)):
            result[name] = "int8"
        else:
            types = [initializers[i] for i in node.input if i in initializers]
            result[name] = _FLOAT_NAMES.get(types[0] if types else TensorProto.FLOAT, "fp32")
    return result


def _is_dequantized(tensor: str, producers: dict[str, onnx.NodeProto]) -> bool:
    producer = producers.get(tensor)
    return producer is not None and producer.op_type == "DequantizeLinear"


def keep_interface(source: onnx.ModelProto, variant: Path) -> None:
    """The variant's inputs and outputs declared as the source declares them (where their types are the same: FP64
    widens them on purpose). Shape inference in the quantization tools renames a batch axis it cannot follow through
    a Loop (an nn.EmbeddingBag's output becomes [Loop_27_o0__d0, 1] beside ids [batch, 10]); the variant then
    looked like a model with no batch axis, fed one item at a time with no batch dimension, and was refused."""
    model = onnx.load(str(variant))
    declared = {value.name: value for value in [*source.graph.input, *source.graph.output]}
    changed = False
    for value in [*model.graph.input, *model.graph.output]:
        wanted = declared.get(value.name)
        same_type = wanted is not None and wanted.type.tensor_type.elem_type == value.type.tensor_type.elem_type
        if wanted is not None and same_type and value != wanted:
            value.CopyFrom(wanted)
            changed = True
    if changed:
        onnx.save(model, str(variant))


def to_fp32(source: Path, output: Path) -> Converted:
    """ONNX Runtime's graph optimizations (constant folding, fusions) applied once and saved. The saved level is
    'extended': 'all' adds layout changes for this very CPU, which sessions apply by themselves at load."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(output)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return Converted(output, settings={"graph_optimization": "extended"}, tool_versions=_versions("onnxruntime"))


def to_fp16(source: Path, output: Path) -> Converted:
    float16 = require("onnxconverter_common.float16", "precision")
    with warnings.catch_warnings():
        # one warning per weight clipped to FP16's range: optimize measures what that does to the outputs instead
        warnings.simplefilter("ignore", UserWarning)
        model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(output))
    return Converted(
        output,
        settings={"keep_io_types": True},
        tool_versions=_versions("onnxconverter-common", "onnx"),
        notes=["ONNX Runtime's CPU provider runs most FP16 operators by casting to FP32: expect FP32 speed"],
    )


def to_fp64(source: Path, output: Path) -> Converted:
    """Every float tensor widened to double, inputs and outputs included. Nodes for which ONNX Runtime has no double
    kernel are found by loading the model, and run in float32 between two Casts; they are reported."""
    import onnxruntime as ort

    model = onnx.load(str(source))
    _widen(model.graph)
    fallbacks: list[str] = []
    while True:
        onnx.save(model, str(output))
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            ort.InferenceSession(str(output), options, providers=["CPUExecutionProvider"])
            break
        except Exception as exc:  # ORT's NOT_IMPLEMENTED names the node that lacks a double kernel
            found = re.search(r"node with name '([^']*)'", str(exc))
            if found is None or found.group(1) in fallbacks or len(fallbacks) >= MAX_FP64_FALLBACKS:
                raise ConfigError(f"{source}: cannot run in float64: {str(exc).splitlines()[0]}") from None
            fallbacks.append(found.group(1))
            _run_in_float32(model, found.group(1))
    notes = [f"no float64 kernel in ONNX Runtime for {name}: it runs in float32" for name in fallbacks]
    return Converted(
        output,
        settings={"io": "float64"},
        tool_versions=_versions("onnx", "onnxruntime"),
        notes=notes,
        layer_overrides=dict.fromkeys(fallbacks, "fp32"),
    )


def _widen(graph: onnx.GraphProto) -> None:
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for index, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name)
            )
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.DOUBLE
            elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
                attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float64)))


def _run_in_float32(model: onnx.ModelProto, name: str) -> None:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.input, *inferred.graph.value_info]}
    types |= {v.name: v.type.tensor_type.elem_type for v in inferred.graph.output}
    types |= {init.name: init.data_type for init in model.graph.initializer}
    nodes = model.graph.node
    index = next(i for i, node in enumerate(nodes) if node.name == name)
    node = nodes[index]
    before, after = [], []
    for i, tensor in enumerate(node.input):
        if tensor and types.get(tensor) == TensorProto.DOUBLE:
            narrow = f"{tensor}__fp32_for_{name}"
            before.append(helper.make_node("Cast", [tensor], [narrow], to=TensorProto.FLOAT, name=f"{narrow}_cast"))
            node.input[i] = narrow
    for i, tensor in enumerate(node.output):
        if types.get(tensor) in (TensorProto.DOUBLE, None):
            narrow = f"{tensor}__fp32"
            after.append(helper.make_node("Cast", [narrow], [tensor], to=TensorProto.DOUBLE, name=f"{narrow}_cast"))
            node.output[i] = narrow
    for offset, cast in enumerate(before):
        nodes.insert(index + offset, cast)
    position = index + len(before) + 1
    for offset, cast in enumerate(after):
        nodes.insert(position + offset, cast)


class _FeedReader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed batches, with the range selection its strided
    calibration uses. The histogram calibrators (entropy, percentile) keep every output of a collection round in
    memory and stack them into one array: they are given one batch per round (`HISTOGRAM_STRIDE`), so memory holds
    one batch's activations and a last, shorter batch need not stack with the others."""

    def __init__(self, batches: Sequence[Arrays]) -> None:
        self._all = list(batches)
        self._batches = iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._batches = iter(self._all[start_index:end_index])

    def get_next(self) -> Arrays | None:
        return next(self._batches, None)


def to_int8_static(
    source: Path,
    output: Path,
    calibration: Sequence[Arrays],
    settings: Int8Settings,
    exclude: Sequence[str] = (),
    cache: Path | None = None,
) -> Converted:
    """`cache`: a file where the activation ranges are kept after the first call, so that candidates differing only
    in `exclude` (mixed precision) are calibrated once. With `settings.bias_correction`, the model is quantized,
    its Conv/Gemm biases corrected for the rounding of their weights, and quantized again with the same ranges."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if settings.bias_correction and not calibration:
        raise ConfigError("INT8 bias correction needs the calibration data (its layers' input means), not only ranges")
    staged: list[Path] = []
    model_in = source
    if settings.preprocess:
        model_in = output.with_name(f"{output.stem}.pre.onnx")
        staged.append(model_in)
        quant_pre_process(str(source), str(model_in))
    if cache is None and settings.bias_correction:
        cache = output.with_name(f"{output.stem}.ranges.json")  # the second pass must keep the first one's ranges
        staged.append(cache)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    extra: dict[str, Any] = {"CalibTensorRangeSymmetric": False}
    if settings.method == "percentile":
        extra["CalibPercentile"] = settings.percentile
    if settings.method != "minmax":
        extra["CalibStridedMinMax"] = HISTOGRAM_STRIDE  # despite its name, any calibrator's collection rounds

    def quantize(model: Path) -> None:
        quantize_static(
            str(model),
            str(output),
            _FeedReader(calibration),
            quant_format=QuantFormat.QDQ if settings.quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=QuantType.QUInt8 if settings.activations == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[settings.method],
            nodes_to_exclude=list(exclude),
            extra_options=extra,
            calibration_cache_path=cache,
        )

    notes = []
    try:
        quantize(model_in)
        if settings.bias_correction:
            corrected = output.with_name(f"{output.stem}.corrected.onnx")
            staged.append(corrected)
            count = _correct_biases(model_in, output, calibration, corrected)
            quantize(corrected)
            notes.append(f"biases of {count} layers corrected for the rounding of their weights")
    finally:
        for path in staged:
            path.unlink(missing_ok=True)
    return Converted(
        output,
        settings={**settings.to_dict(), "excluded": list(exclude)},
        tool_versions=_versions("onnxruntime", "onnx"),
        notes=notes,
    )


def _correct_biases(source: Path, quantized: Path, calibration: Sequence[Arrays], output: Path) -> int:
    """`source` saved to `output` with the bias of each Conv/Gemm that `quantized` runs in INT8 less the mean
    output shift of its rounded weights, (W_int8 - W) . E[x], E[x] per input channel over the calibration data.
    Returns how many layers were corrected."""
    model = onnx.load(str(source))
    initializers = {init.name: init for init in model.graph.initializer}
    rounded = _rounded_weights(onnx.load(str(quantized)))
    layers = [
        node
        for node in model.graph.node
        if node.name in rounded and len(node.input) > 2 and node.input[2] in initializers
        if not (node.op_type == "Gemm" and _attribute(node, "transA", 0))
    ]
    # no biased Conv/Gemm (a MatMul-only model): nothing to correct, and a probe with no outputs cannot run
    means = _input_channel_means(model, [node.input[0] for node in layers], calibration) if layers else {}
    for node in layers:
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
        bias_init = initializers[node.input[2]]
        bias = numpy_helper.to_array(bias_init)
        shift = _mean_shift(node, rounded[node.name] - weight, means[node.input[0]])
        bias_init.CopyFrom(
            numpy_helper.from_array((bias - shift.reshape(bias.shape)).astype(bias.dtype), bias_init.name)
        )
    onnx.save(model, str(output))
    return len(layers)


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


# The quantized op of each format and the input index of its int8 weight (then its scale and zero point).
_QOPERATOR_WEIGHT = {"QLinearConv": 3, "QGemm": 3}


def _rounded_weights(quantized: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The dequantized int8 weight of each quantized Conv/Gemm, by the source node's name: read from the
    DequantizeLinear that feeds it (QDQ) or from its QLinearConv/QGemm (QOperator, named `<name>_quant`)."""
    initializers = {init.name: numpy_helper.to_array(init) for init in quantized.graph.initializer}
    dequantized = dequantized_initializers(quantized)
    found = {}
    for node in quantized.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in dequantized:
            found[node.name] = dequantized[node.input[1]]
        elif node.op_type in _QOPERATOR_WEIGHT and node.name.endswith("_quant"):
            first = _QOPERATOR_WEIGHT[node.op_type]
            names = node.input[first : first + 3]
            if all(name in initializers for name in names):
                axis = 1 if node.op_type == "QGemm" and not _attribute(node, "transB", 0) else 0  # the output axis
                found[node.name.removesuffix("_quant")] = _dequantized([initializers[n] for n in names], axis=axis)
    return found


def dequantized_initializers(quantized: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The float value of every DequantizeLinear output whose input is a stored integer tensor (a QDQ model's
    weights and biases), by the output's name."""
    initializers = {init.name: numpy_helper.to_array(init) for init in quantized.graph.initializer}
    return {
        node.output[0]: _dequantized([initializers[name] for name in node.input[:3]], _attribute(node, "axis", 1))
        for node in quantized.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers
        if len(node.input) > 2 and all(name in initializers for name in node.input[1:3])
    }


def _dequantized(arrays: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """(values - zero point) x scale, per channel along `axis` when the scale is a vector."""
    values, scale, zero_point = arrays
    shape = [1] * values.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    return (values.astype(np.float64) - zero_point.astype(np.float64).reshape(shape)) * scale.astype(
        np.float64
    ).reshape(shape)


def _input_channel_means(
    model: onnx.ModelProto, tensors: Sequence[str], calibration: Sequence[Arrays]
) -> dict[str, np.ndarray]:
    """Each tensor's mean per channel (axis 1) over the calibration batches, reduced inside the graph (a
    GlobalAveragePool per feature map) so that memory holds one vector per tensor, not the activations."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    names = list(dict.fromkeys(tensors))
    shapes = _ranks(model)
    for index, tensor in enumerate(names):
        reduced = tensor
        if shapes.get(tensor, 2) > 2:
            reduced = f"{tensor}__channel_mean_{index}"
            probe.graph.node.append(helper.make_node("GlobalAveragePool", [tensor], [reduced]))
        probe.graph.output.append(helper.make_tensor_value_info(reduced, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = {value.name for value in session.get_inputs()}
    totals = [np.zeros(0)] * len(names)
    count = 0
    for batch in calibration:
        outputs = session.run(None, {name: array for name, array in batch.items() if name in wanted})
        rows = len(next(iter(batch.values())))
        count += rows
        for index, values in enumerate(outputs):
            channel_sums = np.asarray(values, dtype=np.float64).reshape(rows, values.shape[1], -1).mean(2).sum(0)
            totals[index] = channel_sums if totals[index].size == 0 else totals[index] + channel_sums
    return {name: total / count for name, total in zip(names, totals, strict=True)}


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}


def _mean_shift(node: onnx.NodeProto, error: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The mean change of `node`'s output per output channel when its weight changes by `error`, for inputs whose
    channels average `mean` (border padding aside)."""
    if node.op_type == "Gemm":
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
        product: np.ndarray = error @ mean if _attribute(node, "transB", 0) else mean @ error
        return alpha * product
    groups = _attribute(node, "group", 1)
    per_input = error.reshape(error.shape[0], error.shape[1], -1).sum(2)  # [out, in / groups]
    group_means = mean.reshape(groups, -1)[np.arange(error.shape[0]) // (error.shape[0] // groups)]
    shift: np.ndarray = (per_input * group_means).sum(1)
    return shift


def to_int8_dynamic(source: Path, output: Path, op_types: Sequence[str] | None = None) -> Converted:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(output),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=list(op_types) if op_types else None,
    )
    notes = []
    if any(node.op_type == "Conv" for node in onnx.load(str(source)).graph.node) and not op_types:
        notes.append("dynamic INT8 convolutions (ConvInteger) are several times slower than FP32 on CPU")
    settings = {"weights": "s8", "per_channel": True, "op_types": list(op_types) if op_types else "default"}
    return Converted(output, settings=settings, tool_versions=_versions("onnxruntime"), notes=notes)


def to_int4(source: Path, output: Path, block_size: int) -> Converted:
    """Weight-only INT4 of the MatMuls (MatMulNBits, accuracy level 4: INT8 activations inside the kernel) and of
    embedding tables (GatherBlockQuantized): in a small transformer the embeddings are a third of the weights."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if block_size < 16 or block_size & (block_size - 1):
        raise ConfigError(f"--block-size must be a power of two of at least 16, got {block_size}")
    model = onnx.load(str(source))
    if not any(node.op_type == "MatMul" for node in model.graph.node):
        raise ConfigError(f"{source}: int4 is weight-only for MatMul layers, and this model has none")
    quantizer = MatMulNBitsQuantizer(
        model,
        block_size=block_size,
        is_symmetric=False,  # asymmetric kept MiniLM's embeddings closer (cosine 0.972 vs 0.964 at block 32)
        accuracy_level=4,
        op_types_to_quantize=("MatMul", "Gather"),
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(output), use_external_data_format=False)
    settings: dict[str, object] = {
        "bits": 4,
        "block_size": block_size,
        "symmetric": False,
        "accuracy_level": 4,
        "op_types": ["MatMul", "Gather"],
    }
    return Converted(output, settings=settings, tool_versions=_versions("onnxruntime", "onnx"))


def to_bf16_torch(source: Path, output: Path, example: Arrays) -> Converted:
    """ONNX Runtime has no CPU kernels for BF16 MatMul/Gemm/Add/Relu, so the model becomes a torch module
    (onnx2torch) run in bfloat16 between float32 inputs and outputs, saved as TorchScript (served natively)."""
    from forwardpass.formats.torch import import_torch

    torch = import_torch()
    convert = require("onnx2torch", "precision").convert
    model = onnx.load(str(source))
    names = [value.name for value in model.graph.input if value.name not in {i.name for i in model.graph.initializer}]
    outputs = [value.name for value in model.graph.output]
    if not all(name.isidentifier() and not keyword.iskeyword(name) for name in names):
        raise ConfigError(f"{source}: bf16 through torch needs input names that are Python identifiers, got {names}")
    try:
        module = convert(model).to(torch.bfloat16).eval()
    except Exception as exc:  # onnx2torch raises NotImplementedError and others for operators it lacks
        raise ConfigError(f"{source}: onnx2torch cannot convert this model: {str(exc).splitlines()[0]}") from None
    wrapper = _bf16_wrapper(torch, module, names, outputs)
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(example[name])) for name in names)
    with torch.inference_mode():
        traced = torch.jit.trace(wrapper, tensors, strict=False, check_trace=False)
    torch.jit.save(traced, str(output))
    return Converted(
        output,
        engine="torch",
        settings={"compute": "bfloat16", "io": "float32"},
        tool_versions=_versions("torch", "onnx2torch"),
        notes=["ONNX Runtime's CPU provider has no BF16 kernels: this variant runs natively in torch"],
        layer_overrides=dict.fromkeys(compute_layers(model), "bf16"),
    )


def _bf16_wrapper(torch: Any, module: Any, names: list[str], outputs: list[str]) -> Any:
    """A module whose forward takes the ONNX input names (TorchScript records them) and gives named float32
    outputs; floating inputs are cast to bfloat16 on the way in."""

    def run(self: Any, *tensors: Any) -> dict[str, Any]:
        cast = [t.to(torch.bfloat16) if t.is_floating_point() else t for t in tensors]
        result = self.inner(*cast)
        results = result if isinstance(result, tuple | list) else (result,)
        return {name: value.float() for name, value in zip(outputs, results, strict=True)}

    arguments = ", ".join(names)
    namespace: dict[str, Any] = {"run": run}
    # TorchScript takes a forward's argument names as the model's input names: the signature must spell them.
    exec(f"def forward(self, {arguments}):\n    return run(self, {arguments})\n", namespace)
    wrapper_type = type("Bfloat16Model", (torch.nn.Module,), {"forward": namespace["forward"]})
    wrapper = wrapper_type()
    wrapper.inner = module
    return wrapper.eval()
