"""ONNX Runtime: the default engine."""

from __future__ import annotations

import logging
from pathlib import Path

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
    """An `onnxruntime.InferenceSession` behind the `Session` interface."""

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
        # ZipMap (skl2onnx's default classifier output): one {class: probability} map per row, made a [batch, classes]
        self._maps = [arg.name for arg in self._session.get_outputs() if arg.type.startswith("seq(map(")]
        self._text_inputs = [spec.name for spec in self.inputs if spec.dtype is DataType.BYTES]
        for _ in range(engine.warmup):
            self._warm_up()

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._text_inputs:
            inputs = {**inputs, **{name: as_text(name, inputs[name]) for name in self._text_inputs if name in inputs}}
        try:
            results = self._session.run(self._output_names, inputs)
        except (InvalidArgument, ValueError) as exc:
            raise InputError(f"the model refused the input: {str(exc).splitlines()[0]}") from None
        except (Fail, RuntimeException) as exc:  # a kernel failing on this input's values or sizes (e.g. a Reshape)
            raise InputError(f"the model failed on this input: {str(exc).splitlines()[0]}") from None
        named = dict(zip(self._output_names, results))  # noqa: B905 -- ORT returns one result per name; hot path
        for name in self._maps:
            named[name] = np.array([list(row.values()) for row in named[name]], dtype=np.float32)
        return named

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


def _spec(arg: ort.NodeArg) -> TensorSpec:
    if arg.type.startswith("seq(map("):  # ZipMap's maps, given as probabilities [batch, classes]
        return TensorSpec(arg.name, DataType.FP32, (-1, -1))
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(arg.name, DataType.from_name(arg.type), shape)
