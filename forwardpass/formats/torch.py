"""PyTorch: TorchScript archives (`torch.jit.save`) and `torch.export` programs (`torch.export.save`, `.pt2`).

Natively they run in torch; converted, torch.onnx writes them to ONNX (the TorchScript-based exporter for TorchScript,
which honours the asked opset; the dynamo exporter for exported programs, which writes opset 18 or later).
A plain `torch.save` checkpoint (a state_dict, or a pickled nn.Module) is weights without a program: it is refused
with the way to export one, never unpickled.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import pickle
import sys
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from forwardpass.backends.base import Session
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, InputError
from forwardpass.formats.base import ConvertOptions, LoadOptions, descriptor_silenced, require
from forwardpass.formats.facts import ModelFacts, distribution_made_by, softmax_per_item
from forwardpass.formats.parity import random_samples
from forwardpass.tensor import DataType, TensorSpec

__all__ = [
    "TORCHSCRIPT",
    "TORCH_EXPORT",
    "TORCH_GLOBALS",
    "TorchExportFormat",
    "TorchScriptFormat",
    "TorchSession",
    "import_torch",
    "script_exporting",
]

_SCRIPT_SUFFIXES = (".pt", ".pth", ".jit", ".torchscript")
_EXPORT_SUFFIX = ".pt2"
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
# torch.export.pt2_archive.constants.OPAQUE_OBJ_FILENAME_PREFIX: constants torch.export.load reads with pickle.loads
_OPAQUE_CONSTANT = "opaque_obj_"
# torch keeps the program being read (torch.export.load), the export under way (torch.onnx.export) and its operators
# in globals, and the server's registry opens models in threads: two at once failed the second ("_CURRENT_DESERIALIZER
# is already set": that model was not served; "GLOBALS.in_onnx_export must be False": it was served unconverted;
# torchvision's operators defined twice: `serve` ended at start-up).
TORCH_GLOBALS = threading.RLock()
# Ops whose output is a distribution, and ops that pass a value on unchanged (see facts.distribution_made_by), as a
# TorchScript graph and an exported program's ATen graph name them.
_SCRIPT_DISTRIBUTIONS = {"aten::softmax": "softmax", "aten::_softmax": "softmax", "aten::sigmoid": "sigmoid"}
_SCRIPT_PASS_THROUGH = {
    "aten::view",
    "aten::reshape",
    "aten::flatten",
    "aten::squeeze",
    "aten::unsqueeze",
    "aten::contiguous",
    "aten::clone",
    "aten::to",
}
_EXPORT_DISTRIBUTIONS = {
    "aten.softmax.int": "softmax",
    "aten._softmax.default": "softmax",
    "aten.sigmoid.default": "sigmoid",
}
_EXPORT_PASS_THROUGH = {
    "aten.view.default",
    "aten.reshape.default",
    "aten.flatten.using_ints",
    "aten.squeeze.dim",
    "aten.squeeze.dims",
    "aten.unsqueeze.default",
    "aten.clone.default",
    "aten._to_copy.default",
    "aten.alias.default",
}
# Of those, the ones that can lay a softmax's rows side by side (see facts.softmax_per_item).
_SCRIPT_REGROUPING = {"aten::view", "aten::reshape", "aten::flatten"}
_EXPORT_REGROUPING = {"aten.view.default", "aten.reshape.default", "aten.flatten.using_ints"}


def import_torch(extra: str = "torch") -> ModuleType:
    torch = require("torch", extra)
    with TORCH_GLOBALS:
        _let_a_mismatched_torchvision_import(torch)
    return torch


def _let_a_mismatched_torchvision_import(torch: ModuleType) -> None:
    """A torchvision wheel built for another torch variant (CUDA beside a CPU torch) cannot load its C ops, and its
    import then fails registering fake kernels for them; transformers imports torchvision whenever it is installed.
    Defining the two op schemas it registers first lets it import: only its pure-Python parts are used here."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None or "torchvision" in sys.modules or hasattr(torch.ops.torchvision, "nms"):
        return
    library = next(Path(spec.origin).parent.glob("_C*.so"), None)
    if library is None:
        return
    try:
        torch.ops.load_library(str(library))
    except OSError:
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


class TorchSession:
    """A torch callable behind the `Session` interface: numpy in, numpy out (floats as float32), batch first.

    Outputs are named the way the ONNX export names them: `output_names` when given, else a single tensor is
    `output`, a tuple `output_0`, ..., a dict keeps its keys. Their specs come from two probe passes of different
    sizes: dims that change are dynamic.
    """

    def __init__(
        self,
        module: Callable[..., Any],
        inputs: list[TensorSpec],
        torch: ModuleType,
        source: Path,
        output_names: Sequence[str] | None = None,
    ) -> None:
        self._module = module
        self.inputs = inputs
        self.providers = ["torch:cpu"]
        self._torch = torch
        self._source = source
        self._output_names = list(output_names) if output_names else None
        for spec in inputs:
            if spec.dtype.numpy_dtype is None:
                raise ConfigError(
                    f"{source}: input '{spec.name}' is {spec.dtype.name}, which numpy cannot hold and no request can "
                    f"carry as such; export the model with an FP32 input and cast it inside "
                    f"(e.g. self.net(x.to(torch.{spec.dtype.torch_name})).float())"
                )
        # integer probes are zeros: an index every embedding or lookup table has, whatever its size
        small = random_samples(inputs, 1, dynamic_size=8, int_high=1)[0]
        larger = random_samples(inputs, 4, dynamic_size=9, int_high=1)[-1]
        first, second = self.run(small), self.run(larger)
        self.outputs = [_output_spec(name, first[name], second[name]) for name in first]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        tensors = [torch.from_numpy(np.array(inputs[spec.name], copy=True, order="C")) for spec in self.inputs]
        try:
            with torch.inference_mode():
                result = self._module(*tensors)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise InputError(f"the model refused the input: {_first_line(exc)}") from None
        named = name_outputs(result, self._source)
        if self._output_names is not None:
            named = dict(zip(self._output_names, named.values(), strict=True))
        return {name: _to_numpy(tensor) for name, tensor in named.items()}

    def close(self) -> None:
        del self._module


def name_outputs(result: Any, source: Path) -> dict[str, Any]:
    """A forward pass's result as named tensors: `output`, `output_<i>` for a tuple or list, a dict's own keys."""
    if isinstance(result, dict):
        return {str(key): value for key, value in result.items()}
    if isinstance(result, tuple | list):
        return {f"output_{i}": value for i, value in enumerate(result)}
    if hasattr(result, "detach"):
        return {"output": result}
    raise ConfigError(f"{source}: the model returns {type(result).__name__}; tensors, tuples or dicts of them only")


def _to_numpy(tensor: Any) -> np.ndarray:
    if not hasattr(tensor, "detach"):
        raise InputError(f"the model returned {type(tensor).__name__} where a tensor was expected")
    array = tensor.detach().cpu()
    if array.is_floating_point():
        array = array.float()
    result: np.ndarray = array.numpy()
    return result


def _output_spec(name: str, first: np.ndarray, second: np.ndarray) -> TensorSpec:
    shape = tuple(a if a == b and i > 0 else -1 for i, (a, b) in enumerate(zip(first.shape, second.shape, strict=True)))
    return TensorSpec(name, DataType.from_numpy(first.dtype), shape)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _dtype(torch_dtype: Any) -> DataType:
    name = str(torch_dtype).removeprefix("torch.")
    for member in DataType:
        if member.torch_name == name:
            return member
    raise ConfigError(f"torch dtype {name} has no tensor type here")


def _set_threads(torch: ModuleType, engine: EngineConfig) -> None:
    if engine.intra_op_threads:
        torch.set_num_threads(engine.intra_op_threads)


def _zip_names(path: Path) -> list[str] | None:
    """The entries of a zip archive, or None when the file is not one (or is truncated)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _dynamic_axes(specs: Sequence[TensorSpec]) -> dict[str, dict[int, str]]:
    return {
        spec.name: {i: "batch" if i == 0 else f"{spec.name}_dim{i}" for i, dim in enumerate(spec.shape) if dim == -1}
        for spec in specs
    }


def _example(inputs: list[TensorSpec], torch: ModuleType) -> tuple[Any, ...]:
    batch = random_samples(inputs, 3)[-1]  # batch of 2: a batch of 1 invites exporters to fold the batch dim
    return tuple(torch.from_numpy(batch[spec.name]) for spec in inputs)


class TorchScriptFormat:
    name = "torchscript"
    extra = "torch"
    detect_rank = 60

    def detect(self, path: Path) -> bool:
        if not path.is_file():
            return False
        if path.suffix in _SCRIPT_SUFFIXES:
            return True
        names = _zip_names(path)
        return names is not None and any("/code/" in name for name in names)

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> Session:
        torch, module = self._load(path)
        _set_threads(torch, engine)
        return TorchSession(module, self._inputs(module, path, options), torch, path)

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        """The outputs a final softmax or sigmoid makes, read from the archive's graph (submodules inlined), named
        as `name_outputs` names them."""
        torch, module = self._load(path)
        (returned,) = module.inlined_graph.outputs()
        node = returned.node()
        if node.kind() in ("prim::TupleConstruct", "prim::ListConstruct"):
            values = {f"output_{i}": value.node() for i, value in enumerate(node.inputs())}
        elif node.kind() == "prim::DictConstruct":
            entries = list(node.inputs())
            values = {str(key.toIValue()): value.node() for key, value in zip(entries[::2], entries[1::2], strict=True)}
        else:
            values = {"output": node}

        def step(node: Any) -> tuple[str, Any]:
            inputs = list(node.inputs())
            return node.kind(), inputs[0].node() if inputs else None

        def per_item(node: Any, regrouped: bool) -> bool:  # aten::softmax(input, dim, ...)
            tensor, dim = list(node.inputs())[:2]
            rank = tensor.type().dim() if isinstance(tensor.type(), torch.TensorType) else None
            return softmax_per_item(dim.toIValue(), rank, regrouped)

        walk = (_SCRIPT_DISTRIBUTIONS, _SCRIPT_PASS_THROUGH, per_item, _SCRIPT_REGROUPING)
        return _graph_facts("TorchScript graph", values, step, *walk)

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        torch, module = self._load(path)
        session = TorchSession(module, self._inputs(module, path, options), torch, path)
        with script_exporting(torch):
            try:
                torch.onnx.export(
                    module,
                    _example(session.inputs, torch),
                    str(output),
                    dynamo=False,
                    opset_version=convert.opset,
                    input_names=[spec.name for spec in session.inputs],
                    output_names=[spec.name for spec in session.outputs],
                    dynamic_axes=_dynamic_axes([*session.inputs, *session.outputs]),
                )
            except Exception as exc:  # the exporter raises many kinds for unsupported operators
                problem = _first_line(exc)
                raise ConfigError(f"{path}: torch.onnx cannot export this TorchScript model: {problem}") from None
        return {"tool_versions": {"torch": torch.__version__}, "exporter": "torch.onnx.export(dynamo=False)"}

    def _load(self, path: Path) -> tuple[ModuleType, Any]:
        """torch and the module; the archive is checked first, so a damaged file is named without importing torch."""
        names = _zip_names(path)
        if names is None:
            raise ConfigError(f"{path}: not a readable TorchScript archive (truncated or corrupt?)")
        if not any("/code/" in name for name in names):
            raise ConfigError(
                f"{path}: a torch.save checkpoint (weights or a pickled module), not a TorchScript program; "
                "save the model with torch.jit.save(torch.jit.trace(model, example)) or torch.export.save"
            )
        torch = import_torch()
        try:
            traced = any(name.endswith("/traced_inputs.pkl") for name in names)  # traced: it knows input shapes
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated; its archives remain
                module = torch.jit.load(str(path), map_location="cpu", _restore_shapes=traced)
        except Exception as exc:  # torch raises RuntimeError and others for damaged archives
            raise ConfigError(f"{path}: not a readable TorchScript archive: {_first_line(exc)}") from None
        return torch, module.eval()

    def _inputs(self, module: Any, path: Path, options: LoadOptions) -> list[TensorSpec]:
        arguments = module.forward.schema.arguments[1:]  # the first is self
        traced = list(module.graph.inputs())[1:]
        specs = []
        for argument, value in zip(arguments, traced, strict=False):
            if argument.default_value is not None:
                continue
            if str(argument.type) != "Tensor":
                raise ConfigError(f"{path}: forward argument '{argument.name}' is {argument.type}; tensors only")
            specs.append(_script_input(argument.name, value.type(), path, options))
        unknown = sorted({*options.input_shapes, *options.input_dtypes} - {spec.name for spec in specs})
        if unknown:
            raise ConfigError(f"{path}: no input named {unknown}; its inputs are {[spec.name for spec in specs]}")
        return specs


def _script_input(name: str, traced: Any, path: Path, options: LoadOptions) -> TensorSpec:
    declared_dtype = options.input_dtypes.get(name)
    if declared_dtype is not None:
        dtype = DataType.from_name(declared_dtype)
    else:
        recorded = traced.dtype() if hasattr(traced, "dtype") else None
        dtype = _dtype(recorded) if recorded is not None else DataType.FP32
    if name in options.input_shapes:
        return TensorSpec(name, dtype, tuple(options.input_shapes[name]))
    sizes = traced.sizes() if hasattr(traced, "sizes") else None
    if sizes is None:
        raise ConfigError(
            f"{path}: this TorchScript archive records no shape for input '{name}'; give it "
            f"(config source.inputs, or --input {name}=-1,3,224,224)"
        )
    return TensorSpec(name, dtype, (-1, *sizes[1:]))


class TorchExportFormat:
    name = "torch.export"
    extra = "torch"
    detect_rank = 50

    def detect(self, path: Path) -> bool:
        if not path.is_file():
            return False
        if path.suffix == _EXPORT_SUFFIX:
            return True
        names = _zip_names(path)
        return names is not None and any(name.endswith("/archive_format") for name in names)

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> Session:
        torch, program = self._load(path, options)
        _set_threads(torch, engine)
        return TorchSession(program.module(), _program_inputs(program), torch, path)

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        """The outputs a final softmax or sigmoid makes, read from the program's ATen graph, named as
        `name_outputs` names them (a dict's keys, `output_<i>`, `output`)."""
        _, program = self._load(path, options)
        nodes = {node.name: node for node in program.graph.nodes}
        made = [nodes[name] for name in program.graph_signature.user_outputs]
        spec = program.call_spec.out_spec
        if spec is None or spec.is_leaf():
            names = ["output"]
        elif spec.type is dict:
            names = [str(key) for key in spec.context]
        else:
            names = [f"output_{i}" for i in range(spec.num_children)]
        if len(names) != len(made):  # nested outputs: name_outputs refuses them anyway
            return ModelFacts(source="torch.export graph")

        def step(node: Any) -> tuple[str, Any]:
            first = node.args[0] if node.args else None
            return str(node.target), first if hasattr(first, "target") else None

        def per_item(node: Any, regrouped: bool) -> bool:  # aten.softmax(input, dim, ...)
            tensor, dim = node.args[:2]
            value = tensor.meta.get("val")
            return softmax_per_item(dim, value.dim() if value is not None else None, regrouped)

        values = dict(zip(names, made, strict=True))
        walk = (_EXPORT_DISTRIBUTIONS, _EXPORT_PASS_THROUGH, per_item, _EXPORT_REGROUPING)
        return _graph_facts("torch.export graph", values, step, *walk)

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        torch, program = self._load(path, options)
        session = TorchSession(program.module(), _program_inputs(program), torch, path)
        opset = max(convert.opset, 18)  # the dynamo exporter writes opset 18 at least and cannot go lower
        with TORCH_GLOBALS, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                exported = torch.onnx.export(
                    program,
                    dynamo=True,
                    opset_version=opset,
                    input_names=[spec.name for spec in session.inputs],
                    output_names=[spec.name for spec in session.outputs],
                    verbose=False,
                )
                exported.save(str(output))
            except Exception as exc:  # the exporter raises many kinds for unsupported operators
                raise ConfigError(f"{path}: torch.onnx cannot export this program: {_first_line(exc)}") from None
        versions = {"torch": torch.__version__, "onnxscript": _version_of("onnxscript")}
        exporter = "torch.onnx.export(dynamo=True)"
        return {"tool_versions": versions, "exporter": exporter, "opset_requested": convert.opset}

    def _load(self, path: Path, options: LoadOptions) -> tuple[ModuleType, Any]:
        """torch and the program; the archive is checked first, so a damaged file is named without importing torch.

        torch.export.load unpickles parts of the archive with full pickle (weights and constants marked
        `use_pickle`, sample inputs a weights-only load refuses, opaque constants): a file could run any code.
        Untrusted, every torch.load in it is forced weights-only and opaque constants (plain pickle.loads) are
        refused, so the archive's tensors load and its Python objects never do."""
        names = _zip_names(path)
        if names is None:
            raise ConfigError(f"{path}: not a readable torch.export program (.pt2; truncated or corrupt?)")
        refusal = (
            f"{path}: the program holds pickled Python objects, and unpickling runs code from the file; "
            "pass --trust-pickle (trust_pickle=True) if you trust it"
        )
        if not options.trust_pickle and _opaque_constants(path, names):
            raise ConfigError(refusal)
        torch = import_torch()
        try:
            with TORCH_GLOBALS, _weights_only(not options.trust_pickle), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the weights-only unpickler's protocol notes
                return torch, torch.export.load(str(path))
        except pickle.UnpicklingError as exc:  # a weights-only load met a Python object
            raise ConfigError(refusal if "Weights only load failed" in str(exc) else f"{path}: {exc}") from None
        except Exception as exc:  # torch raises RuntimeError, KeyError, ... for damaged or foreign archives
            raise ConfigError(f"{path}: not a readable torch.export program: {_first_line(exc)}") from None


@contextlib.contextmanager
def script_exporting(torch: ModuleType) -> Iterator[None]:
    """Held around the TorchScript-based torch.onnx.export: under TORCH_GLOBALS, its deprecation warning ignored (it
    honours the opset), and the whole graph of a model it fails on, which it dumps from C++ on every failure (its
    log switch is left on by torch's own setup_onnx_logging), kept off both standard streams: on stdout it fell among
    `predict --json`'s answers, on stderr it buried the one line saying why the model is served natively."""
    torch._C._jit_set_onnx_log_output_stream("stderr")
    with TORCH_GLOBALS, warnings.catch_warnings(), descriptor_silenced(2):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _weights_only(forced: bool) -> Iterator[None]:
    """torch.load weights-only even where the caller asks otherwise (torch reads this variable on every call);
    held under TORCH_GLOBALS, so no other forwardpass load sees it set or unset midway."""
    before = os.environ.get(_FORCE_WEIGHTS_ONLY)
    if forced:
        os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = before


def _opaque_constants(path: Path, names: list[str]) -> bool:
    """Whether the archive's constants configs list an object torch.export.load would read with pickle.loads
    (no weights-only mode exists for those); a config that is not JSON is left to torch to refuse."""
    with zipfile.ZipFile(path) as archive:
        for name in names:
            if not name.endswith("_constants_config.json"):
                continue
            try:
                entries = json.loads(archive.read(name)).get("config", {})
            except (ValueError, AttributeError):
                continue
            if isinstance(entries, dict) and any(
                str(entry.get("path_name", "")).startswith(_OPAQUE_CONSTANT)
                for entry in entries.values()
                if isinstance(entry, dict)
            ):
                return True
    return False


def _graph_facts(
    source: str,
    outputs: dict[str, Any],
    step: Callable[[Any], tuple[str, Any]],
    distribution_ops: dict[str, str],
    pass_through: set[str],
    per_item: Callable[[Any, bool], bool],
    regrouping: set[str],
) -> ModelFacts:
    made = {
        name: distribution_made_by(node, step, distribution_ops, pass_through, per_item, regrouping)
        for name, node in outputs.items()
    }
    return ModelFacts(source=source, distributions={name: kind for name, kind in made.items() if kind is not None})


def _program_inputs(program: Any) -> list[TensorSpec]:
    nodes = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    specs = []
    for name in program.graph_signature.user_inputs:
        value = nodes[name].meta["val"]
        shape = tuple(dim if isinstance(dim, int) else -1 for dim in value.shape)
        specs.append(TensorSpec(name, _dtype(value.dtype), shape))
    return specs


def _version_of(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


TORCHSCRIPT = TorchScriptFormat()
TORCH_EXPORT = TorchExportFormat()
