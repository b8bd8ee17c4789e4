"""TensorFlow Lite flatbuffers (`.tflite`): run natively by TensorFlow's TF Lite interpreter, converted to ONNX by
tf2onnx's `from_tflite`. Both name their tensors as the flatbuffer does, so the parity check compares them by name.

A quantized input or output (an integer tensor with a scale and zero point, as a full-integer model has) is exchanged
as the real values it stands for, in FP32: inputs are quantized (rounded to the nearest, ties to even, and clipped,
as ONNX's QuantizeLinear does) and outputs dequantized, in both engines; the converted graph gets a QuantizeLinear /
DequantizeLinear at each such boundary. Raw integers in or out would be answered without an error and mean nothing
to a caller who does not apply the scale themselves.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, ForwardpassError, InputError
from forwardpass.formats.base import ConvertOptions, LoadOptions, require
from forwardpass.formats.tensorflow import (
    EXTRA,
    _convert_with,
    _first_line,
    _provenance,
    _tensorflow,
    native_notices_silenced,
)
from forwardpass.tensor import DataType, TensorSpec

if TYPE_CHECKING:
    from forwardpass.formats.facts import ModelFacts

__all__ = ["TFLITE", "TfliteFormat", "TfliteSession"]

# Ops whose output is a distribution, and ops that pass a value on unchanged (see facts.distribution_made_by);
# a quantized model's QUANTIZE / DEQUANTIZE change its representation only.
_DISTRIBUTION_OPS = {"SOFTMAX": "softmax", "LOGISTIC": "sigmoid"}
_PASS_THROUGH = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "CAST", "QUANTIZE", "DEQUANTIZE"}
_REGROUPING = {"RESHAPE"}  # of those, the one that can lay a softmax's rows side by side (facts.softmax_per_item)


class TfliteFormat:
    name = "tflite"
    extra = EXTRA
    detect_rank = 90

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() == ".tflite"

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> TfliteSession:
        return TfliteSession(path, engine)

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        tf = _tensorflow(EngineConfig())
        tf2onnx = require("tf2onnx", EXTRA)
        interpreter = _interpreter(path, EngineConfig())
        quantized = {
            detail["name"]: found
            for detail in [*interpreter.get_input_details(), *interpreter.get_output_details()]
            if (found := _quantization(path, detail)) is not None
        }
        with warnings.catch_warnings():  # tf2onnx reads shapes through the interpreter, which announces its move
            warnings.simplefilter("ignore")
            _convert_with(
                path,
                self.name,
                lambda: tf2onnx.convert.from_tflite(str(path), opset=convert.opset, output_path=str(output)),
            )
        if quantized:
            _real_valued_boundary(output, quantized)
        return _provenance(tf, tf2onnx)

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        """The outputs a final SOFTMAX or LOGISTIC op makes: what a flatbuffer records beyond its tensors."""
        from forwardpass.formats.facts import ModelFacts, distribution_made_by, softmax_per_item

        interpreter = _interpreter(path, EngineConfig())
        ops = interpreter._get_ops_details()  # the one reader of a flatbuffer's ops that TF Lite's Python has
        # a delegate (XNNPACK) lists itself as making the outputs of the ops it took over, which stay listed too
        producers = {tensor: op for op in ops if op["op_name"] != "DELEGATE" for tensor in op["outputs"]}

        ranks = {detail["index"]: len(detail["shape"]) for detail in interpreter.get_tensor_details()}

        def step(op: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
            return op["op_name"], producers.get(op["inputs"][0]) if len(op["inputs"]) else None

        def per_item(op: dict[str, Any], regrouped: bool) -> bool:  # TF Lite's SOFTMAX is over the last axis
            return softmax_per_item(-1, ranks.get(op["inputs"][0]), regrouped)

        walk = (_DISTRIBUTION_OPS, _PASS_THROUGH, per_item, _REGROUPING)
        made = {
            detail["name"]: distribution_made_by(producers.get(detail["index"]), step, *walk)
            for detail in interpreter.get_output_details()
        }
        return ModelFacts(source="TF Lite graph", distributions={name: k for name, k in made.items() if k is not None})


class TfliteSession:
    """One TF Lite interpreter behind the `Session` interface. An interpreter holds its tensors between calls, so
    calls into one session take turns; a server's further instances open interpreters of their own."""

    def __init__(self, path: Path, engine: EngineConfig) -> None:
        interpreter = _interpreter(path, engine)
        self._interpreter = interpreter
        self._input_details = interpreter.get_input_details()
        self._output_details = interpreter.get_output_details()
        self._quantized_inputs = [_quantization(path, detail) for detail in self._input_details]
        self._quantized_outputs = [_quantization(path, detail) for detail in self._output_details]
        self.inputs = [_tensor_spec(path, detail) for detail in self._input_details]
        self.outputs = [_tensor_spec(path, detail) for detail in self._output_details]
        self.providers = ["tflite:cpu"]
        self._turn = threading.Lock()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [spec.name for spec in self.inputs if spec.name not in inputs]
        if missing:
            raise InputError(f"missing input(s) {missing}; the model takes {[spec.name for spec in self.inputs]}")
        arrays = []
        for spec, quantized in zip(self.inputs, self._quantized_inputs, strict=True):
            given = spec.validate(inputs[spec.name])  # the interpreter checks no shapes
            arrays.append(given if quantized is None else quantized.quantize(given))
        with self._turn:
            try:
                self._fit(arrays)
                for detail, array in zip(self._input_details, arrays, strict=True):
                    self._interpreter.set_tensor(detail["index"], array)
            except (ValueError, RuntimeError) as exc:
                raise InputError(f"the model refused the input: {_first_line(exc)}") from None
            self._interpreter.invoke()
            outputs = {}
            for detail, quantized in zip(self._output_details, self._quantized_outputs, strict=True):
                made = self._interpreter.get_tensor(detail["index"])
                outputs[detail["name"]] = made if quantized is None else quantized.dequantize(made)
            return outputs

    def close(self) -> None:
        del self._interpreter

    def _fit(self, arrays: list[np.ndarray]) -> None:
        """Resize the interpreter's inputs to these arrays' shapes (dynamic dimensions, another batch size)."""
        current = self._interpreter.get_input_details()
        changed = [(d, a) for d, a in zip(current, arrays, strict=True) if tuple(d["shape"]) != a.shape]
        for detail, array in changed:
            self._interpreter.resize_tensor_input(detail["index"], list(array.shape), strict=True)
        if changed:
            self._interpreter.allocate_tensors()


def _interpreter(path: Path, engine: EngineConfig) -> Any:
    tf = _tensorflow(engine)
    try:
        with warnings.catch_warnings(), native_notices_silenced():
            warnings.simplefilter("ignore")  # TF 2.20+ announces the interpreter's move to ai-edge-litert
            interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=engine.intra_op_threads or None)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"{path}: cannot load as tflite: {_first_line(exc)}") from None
    return interpreter


@dataclass(frozen=True, slots=True)
class _Quantized:
    """A tensor's integers and the real values they stand for: real = (integer - zero_point) * scale."""

    scale: np.float32
    zero_point: int
    dtype: np.dtype[Any]

    def quantize(self, real: np.ndarray) -> np.ndarray:
        limits = np.iinfo(self.dtype)
        integers: np.ndarray = np.clip(np.rint(real / self.scale) + self.zero_point, limits.min, limits.max)
        return integers.astype(self.dtype)

    def dequantize(self, integers: np.ndarray) -> np.ndarray:
        return (integers.astype(np.float32) - np.float32(self.zero_point)) * self.scale


def _quantization(path: Path, detail: dict[str, Any]) -> _Quantized | None:
    """How an integer input or output is quantized; None for a tensor that holds its values as they are."""
    parameters = detail["quantization_parameters"]
    scales, zero_points = parameters["scales"], parameters["zero_points"]
    if not len(scales) or not np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        return None
    if len(scales) > 1:
        raise ConfigError(
            f"{path}: tensor '{detail['name']}' is quantized per channel ({len(scales)} scales); forwardpass exchanges "
            "inputs and outputs quantized per tensor only (one scale and zero point)"
        )
    return _Quantized(np.float32(scales[0]), int(zero_points[0]), np.dtype(detail["dtype"]))


def _real_valued_boundary(onnx_path: Path, quantized: dict[str, _Quantized]) -> None:
    """Rewrite the converted graph so that its quantized inputs and outputs take and give FP32 real values, under
    the same names: a QuantizeLinear after each such input, a DequantizeLinear before each such output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    added_before, added_after = [], []
    boundary = [*((value, True) for value in graph.input), *((value, False) for value in graph.output)]
    for value, is_input in boundary:
        found = quantized.get(value.name)
        if found is None:
            continue
        integers = f"{value.name}/quantized"
        scale, zero_point = f"{value.name}/scale", f"{value.name}/zero_point"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.asarray(found.scale, np.float32), scale),
                numpy_helper.from_array(np.asarray(found.zero_point, found.dtype), zero_point),
            ]
        )
        for node in graph.node:  # the graph's own nodes read and write the integers under their new name
            node.input[:] = [integers if name == value.name else name for name in node.input]
            node.output[:] = [integers if name == value.name else name for name in node.output]
        if is_input:
            added_before.append(helper.make_node("QuantizeLinear", [value.name, scale, zero_point], [integers]))
        else:
            added_after.append(helper.make_node("DequantizeLinear", [integers, scale, zero_point], [value.name]))
        value.type.tensor_type.elem_type = TensorProto.FLOAT
    nodes = [*added_before, *graph.node, *added_after]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(onnx_path))


def _tensor_spec(path: Path, detail: dict[str, Any]) -> TensorSpec:
    try:
        real = _quantization(path, detail) is not None  # exchanged as the real values it stands for
        dtype = DataType.FP32 if real else DataType.from_numpy(np.dtype(detail["dtype"]))
    except ForwardpassError:
        raise ConfigError(
            f"{path}: tensor '{detail['name']}' has type {detail['dtype']}, which forwardpass cannot exchange"
        ) from None
    # shape_signature marks dynamic dimensions -1, as forwardpass does
    return TensorSpec(detail["name"], dtype, tuple(int(dim) for dim in detail["shape_signature"]))


TFLITE = TfliteFormat()
