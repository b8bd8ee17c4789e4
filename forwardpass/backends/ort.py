"""ONNX Runtime: the default engine."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, InputError
from forwardpass.tensor import DataType, TensorSpec, as_text

__all__ = ["OrtSession", "choose_providers", "session_options"]

log = logging.getLogger(__name__)

# Fastest first; CPU is always last so a model always has somewhere to run.
_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_BFLOAT16 = "tensor(bfloat16)"
_BFLOAT16_TYPE = 16  # onnx.TensorProto.BFLOAT16, without importing onnx
_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def choose_providers(requested: str | list[str]) -> list[str]:
    available = ort.get_available_providers()
    if requested == "auto":
        return [p for p in _PREFERRED if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        raise ConfigError(f"execution provider(s) {missing} not available here; available: {available}")
    return list(requested)


def session_options(engine: EngineConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = engine.intra_op_threads
    options.inter_op_num_threads = engine.inter_op_threads
    options.graph_optimization_level = _OPTIMIZATION[engine.graph_optimization]
    options.log_severity_level = 4  # fatal only: a failing run comes back as an exception with its message
    if not engine.allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OrtSession:
    """An `onnxruntime.InferenceSession` behind the `Session` interface.

    BF16 tensors, which numpy lacks and ONNX Runtime's Python API neither takes as arrays nor gives back, are FP32
    here: cast to the nearest bfloat16 on the way in, exactly widened on the way out.
    """

    def __init__(self, path: Path, engine: EngineConfig | None = None) -> None:
        engine = engine or EngineConfig()
        options = session_options(engine)
        providers = choose_providers(engine.providers)
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own untyped errors for unreadable models
            raise ConfigError(f"{path}: ONNX Runtime cannot load this model: {str(exc).splitlines()[0]}") from None
        self.inputs = [_spec(arg) for arg in self._session.get_inputs()]
        self.outputs = [_spec(arg) for arg in self._session.get_outputs()]
        self._output_names = [spec.name for spec in self.outputs]
        self._bfloat16_inputs = [arg.name for arg in self._session.get_inputs() if arg.type == _BFLOAT16]
        self._bfloat16_outputs = [arg.name for arg in self._session.get_outputs() if arg.type == _BFLOAT16]
        # ZipMap (skl2onnx's default classifier output): one {class: probability} map per row, made a [batch, classes]
        self._maps = [arg.name for arg in self._session.get_outputs() if arg.type.startswith("seq(map(")]
        self._text_inputs = [spec.name for spec in self.inputs if spec.dtype is DataType.BYTES]
        bfloat16 = self._bfloat16_inputs + self._bfloat16_outputs
        if bfloat16 and self._text_inputs:  # only OrtValues carry BF16, and ONNX Runtime makes none from strings
            raise ConfigError(
                f"{path}: ONNX Runtime's Python API cannot feed the string input(s) {self._text_inputs} of a model "
                f"with BF16 tensor(s) {bfloat16}; make those tensors FP32 or FP16 in the model"
            )
        for _ in range(engine.warmup):
            self._warm_up()

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._text_inputs:
            inputs = {**inputs, **{name: as_text(name, inputs[name]) for name in self._text_inputs if name in inputs}}
        try:
            if self._bfloat16_inputs or self._bfloat16_outputs:
                results = self._run_bfloat16(inputs)
            else:
                results = self._session.run(self._output_names, inputs)
        except (InvalidArgument, ValueError) as exc:
            raise InputError(f"the model refused the input: {str(exc).splitlines()[0]}") from None
        except (Fail, RuntimeException) as exc:  # a kernel failing on this input's values or sizes (e.g. a Reshape)
            raise InputError(f"the model failed on this input: {str(exc).splitlines()[0]}") from None
        named = dict(zip(self._output_names, results))  # noqa: B905 -- ORT returns one result per name; hot path
        for name in self._maps:
            named[name] = np.array([list(row.values()) for row in named[name]], dtype=np.float32)
        return named

    def _run_bfloat16(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """A run through OrtValues, the only way BF16 tensors pass ONNX Runtime's Python API."""
        from ml_dtypes import bfloat16  # onnx's dependency; ~1 s to import, so only for a model that has BF16

        feeds = {
            name: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                np.asarray(value, np.float32).astype(bfloat16).view(np.uint16), _BFLOAT16_TYPE
            )
            if name in self._bfloat16_inputs
            else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
            for name, value in inputs.items()
        }
        values = self._session.run_with_ort_values(self._output_names, feeds)
        return [
            _bfloat16_array(value, bfloat16) if name in self._bfloat16_outputs else value.numpy()
            for name, value in zip(self._output_names, values, strict=True)
        ]

    def io_binding(self) -> ort.IOBinding:
        """Inputs and outputs bound to memory the caller keeps (a decoder's KV cache updated in place)."""
        return self._session.io_binding()

    def run_bound(self, binding: ort.IOBinding) -> None:
        """Run with the inputs and outputs of `binding`: the results are in the memory bound to them."""
        try:
            self._session.run_with_iobinding(binding)
        except (InvalidArgument, ValueError) as exc:
            raise InputError(f"the model refused the input: {str(exc).splitlines()[0]}") from None
        except (Fail, RuntimeException) as exc:
            raise InputError(f"the model failed on this input: {str(exc).splitlines()[0]}") from None

    def close(self) -> None:
        del self._session

    def _warm_up(self) -> None:
        feed = {}
        for spec in self.inputs:
            if spec.dtype.numpy_dtype is None or spec.dtype is DataType.BYTES:
                return
            shape = tuple(1 if dim == -1 else dim for dim in spec.shape)
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype.numpy_dtype)
        try:
            self._session.run(self._output_names, feed)
        except Exception as exc:  # a model may reject zeros (e.g. index inputs); the first real call warms it instead
            log.debug("warm-up skipped: %s", exc)


def _bfloat16_array(value: ort.OrtValue, bfloat16: Any) -> np.ndarray:
    """A BF16 result as float32, read from its memory (`OrtValue.numpy` has no numpy type to give it)."""
    shape = value.shape()
    bits = (ctypes.c_uint16 * int(np.prod(shape))).from_address(value.data_ptr())
    widened: np.ndarray = np.ctypeslib.as_array(bits).view(bfloat16).astype(np.float32)  # a copy: ORT frees `bits`
    return widened.reshape(shape)


def _spec(arg: ort.NodeArg) -> TensorSpec:
    if arg.type.startswith("seq(map("):  # ZipMap's maps, given as probabilities [batch, classes]
        return TensorSpec(arg.name, DataType.FP32, (-1, -1))
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    if arg.type == _BFLOAT16:  # in and out as FP32 (see OrtSession)
        return TensorSpec(arg.name, DataType.FP32, shape)
    return TensorSpec(arg.name, DataType.from_name(arg.type), shape)
