"""TensorFlow artefacts: SavedModel folders, frozen GraphDef `.pb` files, Keras `.keras` and legacy `.h5` files.

Each artefact becomes one TensorFlow function taking its inputs in order and giving a dict of named outputs. The
native Session runs that function and conversion hands the same function to tf2onnx (frozen graphs go through
`from_graph_def`, renamed alike), so the native and the converted model name their tensors the same way and the
parity check compares them by name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, InputError
from forwardpass.formats.base import ConvertOptions, LoadOptions, descriptor_silenced, require
from forwardpass.formats.facts import ModelFacts, distribution_made_by, softmax_per_item
from forwardpass.formats.tensorflow_io import refuse_io_ops
from forwardpass.tensor import DataType, TensorSpec

__all__ = [
    "FROZEN_GRAPH",
    "KERAS",
    "SAVED_MODEL",
    "FrozenGraphFormat",
    "KerasFormat",
    "SavedModelFormat",
    "TensorflowSession",
]

log = logging.getLogger(__name__)

EXTRA = "tensorflow"
DEFAULT_SIGNATURE = "serving_default"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
# Nodes that give no value a caller could want: never inferred as a frozen graph's outputs.
NOT_OUTPUTS = {"NoOp", "Const", "Placeholder", "Assert", "SaveV2", "RestoreV2"}
# How TensorFlow's errors from running a graph begin (the op's message follows a traceback of where it was defined).
_GRAPH_ERROR = "Graph execution error:"
# Ops whose output is a distribution, and ops that pass a value on unchanged (see facts.distribution_made_by).
_DISTRIBUTION_OPS = {"Softmax": "softmax", "Sigmoid": "sigmoid"}
_PASS_THROUGH = {"Identity", "Reshape", "Squeeze", "ExpandDims", "Cast"}
_REGROUPING = {"Reshape"}  # of those, the one that can lay a softmax's rows side by side (facts.softmax_per_item)

_Loaded = TypeVar("_Loaded")
# The server's registry opens models in parallel threads. A thread that found "tensorflow" in sys.modules while
# another was still importing it got the half-initialized module (AttributeError, the server ended at start-up), and
# two threads swapping fd 2 for /dev/null at once could leave it there for good: both are done under this lock.
_NATIVE = threading.RLock()


@dataclass(frozen=True, slots=True)
class _Traced:
    """An artefact as one function: tensors in `inputs` order → dict of tensors keyed by the `outputs` names."""

    function: Any  # the tf.function, with its input signature, that tf2onnx converts
    concrete: Any  # its one concrete function: calling it skips tf.function's dispatch (~1/3 faster at batch 1)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    owner: object  # keeps the function's variables alive (the loaded SavedModel, the Keras model, the graph)


def _traced(tf: ModuleType, path: Path, call: Callable[..., Any], specs: list[Any], owner: object) -> _Traced:
    """Trace `call` (tensors → dict of named tensors) once for `specs` (named tf.TensorSpecs, batch dim None)."""
    function = tf.function(call, input_signature=specs)
    concrete = function.get_concrete_function()
    return _Traced(
        function,
        concrete,
        inputs=[_tensor_spec(path, spec.name, spec.shape, spec.dtype) for spec in specs],
        outputs=[_tensor_spec(path, name, t.shape, t.dtype) for name, t in concrete.structured_outputs.items()],
        owner=owner,
    )


class SavedModelFormat:
    """A folder written by `tf.saved_model.save` / Keras `model.export`, run through one of its signatures."""

    name = "savedmodel"
    extra = EXTRA
    detect_rank = 30

    def detect(self, path: Path) -> bool:
        return path.is_dir() and ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file())

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> TensorflowSession:
        tf = _tensorflow(engine)
        return TensorflowSession(tf, self._trace(tf, path, options), engine)

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        tf = _tensorflow(EngineConfig())
        return _graph_facts(self._trace(tf, path, options), "TensorFlow graph")

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        tf = _tensorflow(EngineConfig())
        provenance = _convert_function(tf, self._trace(tf, path, options), path, self.name, output, convert)
        return {**provenance, "signature": options.signature or DEFAULT_SIGNATURE}

    def _trace(self, tf: ModuleType, path: Path, options: LoadOptions) -> _Traced:
        if not options.trust_pickle:  # before loading: loading runs the SavedModel's initializers
            refuse_io_ops(path, self._graphs(path), self.name)
        loaded = _load(path, self.name, lambda: tf.saved_model.load(str(path)))
        wanted = options.signature or DEFAULT_SIGNATURE
        if wanted not in loaded.signatures:
            available = ", ".join(sorted(loaded.signatures)) or "none"
            raise ConfigError(f"{path}: the SavedModel has no signature '{wanted}'; available: {available}")
        signature = loaded.signatures[wanted]
        given = signature.structured_input_signature[1]
        names = list(given)
        # tf2onnx names the ONNX inputs after these specs, so they carry the signature's keys
        specs = [tf.TensorSpec(given[name].shape, given[name].dtype, name=name) for name in names]

        def call(*tensors: Any) -> Any:
            return signature(**dict(zip(names, tensors, strict=True)))

        return _traced(tf, path, call, specs, owner=loaded)

    def _graphs(self, path: Path) -> list[Any]:
        """The GraphDef of each of the SavedModel's meta graphs, read without running any of it."""
        from google.protobuf import text_format
        from tensorflow.core.protobuf import saved_model_pb2

        saved = saved_model_pb2.SavedModel()
        binary = path / "saved_model.pb"
        if binary.is_file():
            _load(path, self.name, lambda: saved.ParseFromString(binary.read_bytes()))
        else:
            _load(path, self.name, lambda: text_format.Parse((path / "saved_model.pbtxt").read_text(), saved))
        return [meta.graph_def for meta in saved.meta_graphs]


class KerasFormat:
    """A Keras model file, `.keras` (Keras 3) or legacy HDF5 `.h5`, loaded with `keras.models.load_model`."""

    name = "keras"
    extra = EXTRA
    detect_rank = 70

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in KERAS_SUFFIXES

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> TensorflowSession:
        tf = _tensorflow(engine)
        return TensorflowSession(tf, self._trace(tf, path, options), engine)

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        """Outputs a final softmax or sigmoid makes (a layer's activation, a Softmax layer, a Sigmoid op)."""
        tf = _tensorflow(EngineConfig())
        return _graph_facts(self._trace(tf, path, options), "Keras")

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        tf = _tensorflow(EngineConfig())
        provenance = _convert_function(tf, self._trace(tf, path, options), path, self.name, output, convert)
        provenance["tool_versions"]["keras"] = require("keras", EXTRA).__version__
        return provenance

    def _trace(self, tf: ModuleType, path: Path, options: LoadOptions) -> _Traced:
        model = self._load(path, options)
        names = [tensor.name for tensor in model.inputs]
        specs = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=n) for n, t in zip(names, model.inputs, strict=True)]
        declared = list(getattr(model, "output_names", None) or [])

        def call(*tensors: Any) -> dict[str, Any]:
            result = model(tensors[0] if len(tensors) == 1 else dict(zip(names, tensors, strict=True)), training=False)
            if isinstance(result, dict):
                return dict(result)
            flat = tf.nest.flatten(result)
            labels = declared if len(declared) == len(flat) else [f"output_{i}" for i in range(len(flat))]
            return dict(zip(labels, flat, strict=True))

        return _traced(tf, path, call, specs, owner=model)

    def _load(self, path: Path, options: LoadOptions) -> Any:
        keras = require("keras", EXTRA)
        if path.suffix.lower() == ".keras" and path.is_file() and not zipfile.is_zipfile(path):
            # Keras reports a damaged archive as "file not found"
            raise ConfigError(f"{path}: cannot load as {self.name}: not a zip archive (corrupt or truncated)")
        try:
            # Keras' safe mode refuses Lambda layers, whose Python code runs on load: the same trust as a pickle
            model = keras.models.load_model(str(path), compile=False, safe_mode=not options.trust_pickle)
        except Exception as exc:  # Keras raises untyped errors for unreadable files
            if "safe_mode" in str(exc):
                raise ConfigError(
                    f"{path}: this keras model runs Python code when loaded (a Lambda layer); "
                    "load it only if you trust the file: --trust-pickle / trust_pickle=True"
                ) from None
            raise ConfigError(f"{path}: cannot load as {self.name}: {_first_line(exc)}") from None
        if not getattr(model, "inputs", None):
            raise ConfigError(f"{path}: the keras model records no inputs; build it (call it once) before saving")
        return model


class FrozenGraphFormat:
    """A frozen TF1-style GraphDef `.pb` (variables folded into constants); inputs and outputs given or inferred."""

    name = "graphdef"
    extra = EXTRA
    detect_rank = 80

    def detect(self, path: Path) -> bool:
        inside_saved_model = (path.parent / "saved_model.pb").is_file()  # its fingerprint.pb is no graph
        return (
            path.is_file() and path.suffix.lower() == ".pb" and path.name != "saved_model.pb" and not inside_saved_model
        )

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> TensorflowSession:
        tf = _tensorflow(engine)
        return TensorflowSession(tf, self._trace(tf, path, options), engine)

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        tf = _tensorflow(EngineConfig())
        return _graph_facts(self._trace(tf, path, options), "TensorFlow graph")

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        tf = _tensorflow(EngineConfig())
        tf2onnx = require("tf2onnx", EXTRA)
        graph_def, inputs, output_names = self._read(tf, path, options)
        input_tensors = [_tensor_name(spec.name) for spec in inputs]
        output_tensors = [_tensor_name(name) for name in output_names]
        renames = dict(zip([*input_tensors, *output_tensors], [*(s.name for s in inputs), *output_names], strict=True))
        _convert_with(
            path,
            self.name,
            lambda: tf2onnx.convert.from_graph_def(
                graph_def,
                name=path.stem,
                input_names=input_tensors,
                output_names=output_tensors,
                opset=convert.opset,
                tensors_to_rename=renames,
                output_path=str(output),
            ),
        )
        return _provenance(tf, tf2onnx)

    def _trace(self, tf: ModuleType, path: Path, options: LoadOptions) -> _Traced:
        graph_def, inputs, output_names = self._read(tf, path, options)

        def prune() -> Any:
            wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
            return wrapped.prune([_tensor_name(s.name) for s in inputs], [_tensor_name(n) for n in output_names])

        pruned = _load(path, self.name, prune)

        def call(*tensors: Any) -> dict[str, Any]:
            return dict(zip(output_names, pruned(*tensors), strict=True))

        specs = [tf.TensorSpec(_tf_shape(spec.shape), spec.dtype.tf_name, name=spec.name) for spec in inputs]
        return _traced(tf, path, call, specs, owner=pruned)

    def _read(self, tf: ModuleType, path: Path, options: LoadOptions) -> tuple[Any, list[TensorSpec], list[str]]:
        """The graph, its input specs and its output names (node names; ':N' only for a node's later outputs)."""
        graph_def = tf.compat.v1.GraphDef()
        _load(path, self.name, lambda: graph_def.ParseFromString(path.read_bytes()))
        if not options.trust_pickle:
            refuse_io_ops(path, [graph_def], self.name)
        nodes = {node.name: node for node in graph_def.node}
        if not nodes:
            raise ConfigError(f"{path}: cannot load as {self.name}: the graph has no nodes")
        given_inputs = [_node_name(name) for name in options.input_names or []]
        input_names = given_inputs or [name for name, node in nodes.items() if node.op == "Placeholder"]
        output_names = [_node_name(name) for name in options.output_names or []] or _unconsumed(graph_def)
        for name in [*input_names, *output_names]:
            if name.partition(":")[0] not in nodes:
                raise ConfigError(f"{path}: the frozen graph has no node '{name}'")
        if not input_names or not output_names:
            raise ConfigError(f"{path}: cannot infer the graph's inputs and outputs; give input_names and output_names")
        inputs = [self._input_spec(tf, path, nodes[name], options) for name in input_names]
        return graph_def, inputs, output_names

    def _input_spec(self, tf: ModuleType, path: Path, node: Any, options: LoadOptions) -> TensorSpec:
        if node.op != "Placeholder":
            raise ConfigError(f"{path}: input '{node.name}' is a {node.op} node; inputs must be Placeholders")
        if node.name in options.input_shapes:
            shape = tf.TensorShape(_tf_shape(options.input_shapes[node.name]))
            node.attr["shape"].shape.CopyFrom(shape.as_proto())
        shape = tf.TensorShape(node.attr["shape"].shape)
        if shape.rank is None:
            raise ConfigError(f"{path}: input '{node.name}' has no recorded shape; give it with input_shapes")
        return _tensor_spec(path, node.name, shape, tf.as_dtype(node.attr["dtype"].type))


class TensorflowSession:
    """A traced TensorFlow function behind the `Session` interface: numpy in, numpy out, batch dimension first."""

    def __init__(self, tf: ModuleType, traced: _Traced, engine: EngineConfig) -> None:
        self._tf = tf
        self._traced = traced
        self.inputs, self.outputs = traced.inputs, traced.outputs
        self._output_names = [spec.name for spec in traced.outputs]
        self.providers = ["tensorflow:gpu"] if tf.config.list_physical_devices("GPU") else ["tensorflow:cpu"]
        if all(spec.dtype.numpy_dtype is not None and spec.dtype is not DataType.BYTES for spec in traced.inputs):
            for _ in range(engine.warmup):
                self._warm_up()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [spec.name for spec in self._traced.inputs if spec.name not in inputs]
        if missing:
            raise InputError(f"missing input(s) {missing}; the model takes {[s.name for s in self._traced.inputs]}")
        try:
            # a concrete function does not check shapes itself: a wrong one could run and give a plausible answer
            tensors = [self._tf.constant(spec.validate(inputs[spec.name])) for spec in self._traced.inputs]
            results = self._traced.concrete(*tensors)
        except (self._tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            raise InputError(f"the model refused the input: {_first_line(exc)}") from None
        return {name: results[name].numpy() for name in self._output_names}

    def close(self) -> None:
        del self._traced

    def _warm_up(self) -> None:
        """TensorFlow sets up kernels on the first call: pay for it at load, not on the first request."""
        try:
            self.run({spec.name: _zeros(spec) for spec in self._traced.inputs})
        except InputError as exc:  # a model may refuse zeros (e.g. index inputs); the first real call warms it
            log.debug("warm-up skipped: %s", exc)


def _graph_facts(traced: _Traced, source: str) -> ModelFacts:
    """The outputs a final Softmax or Sigmoid makes, read from the traced function's graph with its calls inlined
    (a SavedModel signature or a Keras model is a call into another function)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        graph = convert_variables_to_constants_v2(traced.concrete).graph
        ops = {name: graph.get_tensor_by_name(t.name).op for name, t in traced.concrete.structured_outputs.items()}
    except Exception as exc:  # a graph TensorFlow cannot inline (e.g. lookup tables) says nothing more
        log.debug("%s: outputs not read from the graph: %s", source, exc)
        return ModelFacts(source=source)

    def step(op: Any) -> tuple[str, Any]:
        return op.type, op.inputs[0].op if op.inputs else None

    def per_item(op: Any, regrouped: bool) -> bool:  # TensorFlow's Softmax is over the last axis
        return softmax_per_item(-1, op.inputs[0].shape.rank, regrouped)

    walk = (_DISTRIBUTION_OPS, _PASS_THROUGH, per_item, _REGROUPING)
    made = {name: distribution_made_by(op, step, *walk) for name, op in ops.items()}
    return ModelFacts(source=source, distributions={name: kind for name, kind in made.items() if kind is not None})


def _tensorflow(engine: EngineConfig) -> ModuleType:
    """Import TensorFlow with Keras' folder inside the project (never the user's home) and its C++ logs quiet."""
    os.environ.setdefault("KERAS_HOME", str(Path.cwd() / ".build" / "keras"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _NATIVE:
        tf = sys.modules.get("tensorflow") or _import_without_startup_notices()
    tf.get_logger().setLevel(logging.ERROR)  # tf2onnx's TF1 code paths print deprecation notices users can't act on
    threading = tf.config.threading
    try:
        if engine.intra_op_threads and threading.get_intra_op_parallelism_threads() != engine.intra_op_threads:
            threading.set_intra_op_parallelism_threads(engine.intra_op_threads)
        if engine.inter_op_threads and threading.get_inter_op_parallelism_threads() != engine.inter_op_threads:
            threading.set_inter_op_parallelism_threads(engine.inter_op_threads)
    except RuntimeError:  # TensorFlow fixes its thread pools for the whole process once it has run anything
        log.warning("TensorFlow has already started: its thread counts stay as they were first set")
    return tf


def _import_without_startup_notices() -> ModuleType:
    with native_notices_silenced():
        return require("tensorflow", EXTRA)


@contextlib.contextmanager
def native_notices_silenced() -> Iterator[None]:
    """TensorFlow's C++ writes notices to stderr (oneDNN and CPU features at start-up, each TF Lite XNNPACK
    delegate) that no log level silences: they would bury forwardpass's one-line messages. Python errors still
    surface once stderr is back."""
    with _NATIVE, descriptor_silenced(2):
        yield


def _convert_function(
    tf: ModuleType, traced: _Traced, path: Path, format_name: str, output: Path, convert: ConvertOptions
) -> dict[str, Any]:
    tf2onnx = require("tf2onnx", EXTRA)
    function = traced.function
    _convert_with(
        path,
        format_name,
        lambda: tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=convert.opset, output_path=str(output)
        ),
    )
    return _provenance(tf, tf2onnx)


def _convert_with(path: Path, format_name: str, converter: Callable[[], object]) -> None:
    # tf2onnx logs each node it cannot convert with a traceback; the refusal below, or ONNX Runtime's of what it
    # wrote, names the failure in one line
    converter_log = logging.getLogger("tf2onnx")
    level = converter_log.level
    converter_log.setLevel(logging.CRITICAL)
    try:
        converter()
    except Exception as exc:  # tf2onnx raises untyped errors for graphs it cannot express in ONNX
        raise ConfigError(f"{path}: tf2onnx cannot convert this {format_name} model: {_first_line(exc)}") from None
    finally:
        converter_log.setLevel(level)


def _provenance(tf: ModuleType, tf2onnx: ModuleType) -> dict[str, Any]:
    """What only this converter knows; the caller adds the source, its fingerprint, the opset and parity."""
    return {"converter": "tf2onnx", "tool_versions": {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__}}


def _load(path: Path, format_name: str, loader: Callable[[], _Loaded]) -> _Loaded:
    try:
        return loader()
    except Exception as exc:  # TensorFlow and protobuf raise untyped errors for corrupt or truncated files
        raise ConfigError(f"{path}: cannot load as {format_name}: {_first_line(exc)}") from None


def _unconsumed(graph_def: Any) -> list[str]:
    """A frozen graph's outputs: the nodes no other node reads, except those that give no value."""
    consumed = {name.lstrip("^").partition(":")[0] for node in graph_def.node for name in node.input}
    return [node.name for node in graph_def.node if node.name not in consumed and node.op not in NOT_OUTPUTS]


def _tensor_spec(path: Path, name: str, shape: Any, dtype: Any) -> TensorSpec:
    found = next((member for member in DataType if member.tf_name == dtype.name), None)
    if found is None:
        raise ConfigError(f"{path}: tensor '{name}' has type {dtype.name}, which forwardpass cannot exchange")
    # an output of unknown rank promises only its batch dimension
    dims = (-1,) if shape.rank is None else tuple(-1 if dim is None else int(dim) for dim in shape.as_list())
    return TensorSpec(name, found, dims)


def _tf_shape(shape: Sequence[int]) -> list[int | None]:
    return [None if dim == -1 else dim for dim in shape]


def _zeros(spec: TensorSpec) -> np.ndarray:
    return np.zeros(tuple(1 if dim == -1 else dim for dim in spec.shape), dtype=spec.dtype.numpy_dtype)


def _node_name(name: str) -> str:
    """'x:0' and 'x' name the same tensor; a node's later outputs keep their ':N'."""
    return name.removesuffix(":0")


def _tensor_name(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = text.splitlines()
    if lines and lines[0] == _GRAPH_ERROR:  # the op's own words come last, after the Python traceback
        said = next((line for line in reversed(lines) if line and not line[0].isspace()), "")
        node = next((line.split()[3] for line in lines if line.startswith("Detected at node ")), None)
        return f"{said} (node {node})" if said and node else said or lines[0]
    return lines[0] if lines else type(exc).__name__


SAVED_MODEL = SavedModelFormat()
KERAS = KerasFormat()
FROZEN_GRAPH = FrozenGraphFormat()
