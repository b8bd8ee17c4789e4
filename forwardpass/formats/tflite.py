"""TensorFlow Lite flatbuffers (`.tflite`): run natively by TensorFlow's TF Lite interpreter, converted to ONNX by
tf2onnx's `from_tflite`. Both name their tensors as the flatbuffer does, so the parity check compares them by name."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, ForwardpassError, InputError
from forwardpass.formats.base import ConvertOptions, LoadOptions, require
from forwardpass.formats.tensorflow import EXTRA, _convert_with, _first_line, _provenance, _tensorflow
from forwardpass.tensor import DataType, TensorSpec

if TYPE_CHECKING:
    from forwardpass.formats.facts import ModelFacts

__all__ = ["TFLITE", "TfliteFormat", "TfliteSession"]

# Ops whose output is a distribution, and ops that pass a value on unchanged (see facts.distribution_made_by);
# a quantized model's QUANTIZE / DEQUANTIZE change its representation only.
_DISTRIBUTION_OPS = {"SOFTMAX": "softmax", "LOGISTIC": "sigmoid"}
_PASS_THROUGH = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "CAST", "QUANTIZE", "DEQUANTIZE"}


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
        with warnings.catch_warnings():  # tf2onnx reads shapes through the interpreter, which announces its move
            warnings.simplefilter("ignore")
            _convert_with(
                path,
                self.name,
                lambda: tf2onnx.convert.from_tflite(str(path), opset=convert.opset, output_path=str(output)),
            )
        return _provenance(tf, tf2onnx)

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        """The outputs a final SOFTMAX or LOGISTIC op makes: what a flatbuffer records beyond its tensors."""
        from forwardpass.formats.facts import ModelFacts, distribution_made_by

        interpreter = _interpreter(path, EngineConfig())
        ops = interpreter._get_ops_details()  # the one reader of a flatbuffer's ops that TF Lite's Python has
        # a delegate (XNNPACK) lists itself as making the outputs of the ops it took over, which stay listed too
        producers = {tensor: op for op in ops if op["op_name"] != "DELEGATE" for tensor in op["outputs"]}

        def step(op: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
            return op["op_name"], producers.get(op["inputs"][0]) if len(op["inputs"]) else None

        made = {
            detail["name"]: distribution_made_by(producers.get(detail["index"]), step, _DISTRIBUTION_OPS, _PASS_THROUGH)
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
        self.inputs = [_tensor_spec(path, detail) for detail in self._input_details]
        self.outputs = [_tensor_spec(path, detail) for detail in self._output_details]
        self.providers = ["tflite:cpu"]
        self._turn = threading.Lock()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [spec.name for spec in self.inputs if spec.name not in inputs]
        if missing:
            raise InputError(f"missing input(s) {missing}; the model takes {[spec.name for spec in self.inputs]}")
        arrays = [spec.validate(inputs[spec.name]) for spec in self.inputs]  # the interpreter checks no shapes
        with self._turn:
            try:
                self._fit(arrays)
                for detail, array in zip(self._input_details, arrays, strict=True):
                    self._interpreter.set_tensor(detail["index"], array)
            except (ValueError, RuntimeError) as exc:
                raise InputError(f"the model refused the input: {_first_line(exc)}") from None
            self._interpreter.invoke()
            return {detail["name"]: self._interpreter.get_tensor(detail["index"]) for detail in self._output_details}

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
        with warnings.catch_warnings():  # TF 2.20+ announces the interpreter's move to ai-edge-litert
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=engine.intra_op_threads or None)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"{path}: cannot load as tflite: {_first_line(exc)}") from None
    return interpreter


def _tensor_spec(path: Path, detail: dict[str, Any]) -> TensorSpec:
    try:
        dtype = DataType.from_numpy(np.dtype(detail["dtype"]))
    except ForwardpassError:
        raise ConfigError(
            f"{path}: tensor '{detail['name']}' has type {detail['dtype']}, which forwardpass cannot exchange"
        ) from None
    # shape_signature marks dynamic dimensions -1, as forwardpass does
    return TensorSpec(detail["name"], dtype, tuple(int(dim) for dim in detail["shape_signature"]))


TFLITE = TfliteFormat()
