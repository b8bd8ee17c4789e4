"""scikit-learn estimators and pipelines saved with pickle or joblib, and the tabular pieces the tree libraries share.

A pickle runs code when it is loaded, so it is opened only when the user says they trust it (`trust_pickle`).
Native and converted models name their tensors alike, as skl2onnx does with zipmap off: one FP32 input `input`
[batch, features]; classifiers give `label` [batch] and `probabilities` [batch, classes] (the decision scores when
the estimator has no predict_proba), regressors give `variable` [batch, targets].
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.backends.base import Session
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, InputError, MissingExtraError
from forwardpass.formats.base import ConvertOptions, LoadOptions, require
from forwardpass.formats.facts import ModelFacts
from forwardpass.tensor import DataType, TensorSpec

__all__ = [
    "INPUT_NAME",
    "SKLEARN",
    "ColumnsSession",
    "SklearnFormat",
    "TabularSession",
    "first_line",
    "read_in_child",
    "save_onnx",
    "threshold_samples",
]

log = logging.getLogger(__name__)

INPUT_NAME = "input"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
# Modules a pickle may need that one of forwardpass's extras installs.
_EXTRA_OF_MODULE = {"sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm"}

Scores = Callable[[np.ndarray], np.ndarray]


class TabularSession:
    """A fitted tabular model of `path` behind the Session interface, run by `framework` ("sklearn", ...).

    `scores(x)` maps [batch, features] of `dtype` to the framework's own output: [batch, classes] scores for a
    classifier (given `classes`), [batch] or [batch, targets] values for a regressor (`classes` None). The dtype is
    the one the framework computes in: scikit-learn's float64 (float32 would move values across the split points
    of a histogram booster), the tree libraries' float32.
    """

    def __init__(
        self,
        path: Path,
        framework: str,
        scores: Scores,
        n_features: int,
        classes: np.ndarray | None,
        dtype: DataType = DataType.FP32,
    ) -> None:
        self._scores = scores
        self._labels = None if classes is None else _label_values(classes)
        self.providers = [f"{framework}:cpu"]
        self.inputs = [TensorSpec(INPUT_NAME, dtype, (-1, n_features))]
        try:
            width = self._raw(np.zeros((1, n_features), dtype.numpy_dtype)).shape[1]
        except Exception as exc:  # whatever the framework raises for a model it cannot run
            raise ConfigError(
                f"{path}: the {framework} model cannot predict on {n_features} features ({first_line(exc)})"
            ) from None
        if self._labels is None:
            self.outputs = [TensorSpec("variable", DataType.FP32, (-1, width))]
        else:
            label_type = DataType.from_numpy(self._labels.dtype)
            self.outputs = [
                TensorSpec("label", label_type, (-1,)),
                TensorSpec("probabilities", DataType.FP32, (-1, width)),
            ]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if INPUT_NAME not in inputs:
            dtype = self.inputs[0].dtype.name
            raise InputError(f"missing input '{INPUT_NAME}'; this model takes one {dtype} [batch, features] tensor")
        features = inputs[INPUT_NAME]
        return _answer(_refusals(self._raw, features), self._labels)

    def close(self) -> None:
        self._scores = _closed

    def _raw(self, features: np.ndarray) -> np.ndarray:
        scores = np.asarray(self._scores(features), dtype=np.float32)
        return scores.reshape(len(features), -1)


class ColumnsSession:
    """A scikit-learn pipeline fitted on a DataFrame with text columns (categories): one input per column, FP64
    for numbers (as the DataFrame held them) and STRING for text, each [batch, 1] as skl2onnx names them; the
    framework gets a DataFrame with the original column names."""

    def __init__(
        self, path: Path, framework: str, scores: Scores, columns: list[tuple[str, bool]], classes: np.ndarray | None
    ) -> None:
        self._scores = scores
        self._labels = None if classes is None else _label_values(classes)
        self.providers = [f"{framework}:cpu"]
        self.inputs = [TensorSpec(name, DataType.BYTES if text else DataType.FP64, (-1, 1)) for name, text in columns]
        self.outputs = (
            [TensorSpec("variable", DataType.FP32, (-1, 1))]
            if self._labels is None
            else [
                TensorSpec("label", DataType.from_numpy(self._labels.dtype), (-1,)),
                TensorSpec("probabilities", DataType.FP32, (-1, len(self._labels))),
            ]
        )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pandas

        missing = [spec.name for spec in self.inputs if spec.name not in inputs]
        if missing:
            raise InputError(f"missing input(s) {missing}; this model takes one [batch, 1] tensor per column")
        frame = pandas.DataFrame({spec.name: np.asarray(inputs[spec.name]).reshape(-1) for spec in self.inputs})
        scores = _refusals(lambda rows: np.asarray(self._scores(rows), dtype=np.float32).reshape(len(rows), -1), frame)
        return _answer(scores, self._labels)

    def close(self) -> None:
        self._scores = _closed


def _refusals(score: Callable[[Any], np.ndarray], rows: Any) -> np.ndarray:
    """`score(rows)`, a framework's refusal of the input (ValueError, TypeError) as one line."""
    try:
        return score(rows)
    except (ValueError, TypeError) as exc:
        raise InputError(f"the model refused the input: {first_line(exc)}") from None


def _answer(scores: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """The framework's scores as the converters name them: a regressor's `variable`; a classifier's `label` and
    `probabilities` (one score column is a binary decision function: positive means the second class)."""
    if labels is None:
        return {"variable": scores}
    picked = (scores[:, 0] > 0).astype(np.intp) if scores.shape[1] == 1 else scores.argmax(axis=1)
    return {"label": labels[picked], "probabilities": scores}


def _scores(estimator: Any) -> Scores:
    """A classifier's per-class scores: probabilities where it has them, else its decision function."""
    scores: Scores = estimator.predict_proba if hasattr(estimator, "predict_proba") else estimator.decision_function
    return scores


def _column_inputs(estimator: Any) -> list[tuple[str, bool]] | None:
    """(column, is text) in the model's order, for a model fitted on named columns of which some hold text; None
    for all-numeric models, which take one [batch, features] tensor."""
    names = getattr(estimator, "feature_names_in_", None)
    text = _string_columns(estimator)
    if names is None or not text:
        return None
    return [(str(name), str(name) in text) for name in names]


def _string_columns(estimator: Any) -> set[str]:
    """Columns the fitted model encodes as text: those its encoders (OneHotEncoder, OrdinalEncoder, ...) inside a
    ColumnTransformer learnt string categories for."""
    return {name for name, categories in _categories_by_column(estimator).items() if _holds_text(categories)}


def _categories_by_column(estimator: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for transformer, columns in _column_transformers(estimator):
        encoder = next((step for step in _steps(transformer) if hasattr(step, "categories_")), None)
        if encoder is None:
            continue
        for column, categories in zip(columns, encoder.categories_, strict=False):
            found[column] = list(categories)
    return found


def _column_transformers(estimator: Any) -> list[tuple[Any, list[str]]]:
    """(transformer, its column names) of every ColumnTransformer in the model, nested pipelines included."""
    found: list[tuple[Any, list[str]]] = []
    names = getattr(estimator, "feature_names_in_", None)
    for step in _steps(estimator):
        for _, transformer, columns in getattr(step, "transformers_", []):
            if isinstance(columns, str):
                columns = [columns]
            if isinstance(columns, list | tuple | np.ndarray):
                resolved = [
                    str(names[c]) if isinstance(c, int | np.integer) and names is not None else str(c) for c in columns
                ]
                found.append((transformer, resolved))
    return found


def _steps(estimator: Any) -> list[Any]:
    steps = getattr(estimator, "steps", None)
    if steps is None:
        return [estimator]
    return [part for _, step in steps for part in _steps(step)]


def _holds_text(categories: list[Any]) -> bool:
    return any(isinstance(value, str) for value in categories)


def _closed(features: np.ndarray) -> np.ndarray:
    raise InputError("this session is closed")


def _label_values(classes: np.ndarray) -> np.ndarray:
    """Class labels as the converters write them: integers as int64, anything else as strings."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "biu" or (classes.dtype.kind == "f" and np.array_equal(classes, np.round(classes))):
        return classes.astype(np.int64)
    return classes.astype(str).astype(object)


def first_line(exc: BaseException) -> str:
    """An exception as one line: frameworks put stack traces and source snippets after the first."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def save_onnx(model: Any, output: Path, opset: int, source: Path) -> dict[str, int]:
    """Write a converter's ModelProto of `source`: batch dimension dynamic on every input and output, the default
    domain at `opset` (converters capped below it are upgraded with onnx's version converter). Returns the opset
    imports."""
    import onnx
    from onnx import version_converter

    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "batch"  # onnxmltools declares some outputs with a fixed batch of 1
    default = [entry for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if not default:  # a graph of ai.onnx.ml nodes only: any default opset is valid for it
        model.opset_import.append(onnx.helper.make_opsetid("", opset))
    elif max(entry.version for entry in default) < opset:
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as exc:  # onnx's converter raises RuntimeError or its own C++ errors
            raise ConfigError(f"{source}: cannot raise its ONNX model to opset {opset} ({first_line(exc)})") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(output))
    opsets: dict[str, int] = {}
    for entry in model.opset_import:
        domain = entry.domain or "ai.onnx"
        opsets[domain] = max(opsets.get(domain, 0), entry.version)
    return opsets


def threshold_samples(
    specs: Sequence[TensorSpec], n: int, features: np.ndarray, thresholds: np.ndarray
) -> list[dict[str, np.ndarray]]:
    """Parity inputs for a tree ensemble whose numerical splits test `features` against `thresholds` (pairwise).

    Random numbers rarely come near a split, so they cannot show a converter that rounds thresholds differently
    from the framework. Here each feature of each row sits at, just below or just above one of the model's own
    thresholds on that feature (0 where no split uses it). Batches are cut as `random_samples` cuts them.
    """
    from forwardpass.formats.parity import random_samples

    rng = np.random.default_rng(0)
    order = np.argsort(features, kind="stable")
    n_features = specs[0].shape[1]
    bounds = np.searchsorted(features[order], np.arange(n_features + 1))
    per_feature = [thresholds[order][bounds[i] : bounds[i + 1]].astype(np.float32) for i in range(n_features)]
    batches = random_samples(specs, n)
    for batch in batches:
        rows = len(batch[INPUT_NAME])
        values = np.zeros((rows, n_features), np.float32)
        for feature, near in enumerate(per_feature):
            if near.size:
                picked = rng.choice(near, rows)
                side = rng.integers(-1, 2, rows)  # the float32 below, at or above the threshold
                toward = np.where(side < 0, np.float32(-np.inf), np.float32(np.inf))
                values[:, feature] = np.where(side == 0, picked, np.nextafter(picked, toward))
        batch[INPUT_NAME] = values
    return batches


def read_in_child(reader: str, library: str, path: Path, format_name: str, suffix: str) -> bytes:
    """The untrusted model file at `path`, as its own library writes it back after reading it in a child process.

    XGBoost's UBJSON reader and LightGBM's text reader are not memory-safe: some truncated or corrupt files crash
    the process (segfault, abort), make it read past the end of its buffer or allocate gigabytes. So only a child
    reads the file, with its memory capped: it runs `reader` (Python given `lib`, the C library at `library`;
    `source`; `copy`; and `fail(message)`), which writes the library's own well-formed form of the model to `copy`.
    A crash there costs ~50 ms and one line.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read this {format_name} model ({exc.strerror})") from None
    with tempfile.TemporaryDirectory(prefix="forwardpass-") as folder:
        copy = Path(folder) / f"model{suffix}"
        command = [sys.executable, "-I", "-S", "-c", _CHILD_PRELUDE + reader, library, str(path), str(copy)]
        memory_cap = max(_CHILD_MIN_MEMORY, _CHILD_MEMORY_PER_BYTE * size)
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "FORWARDPASS_MEMORY_CAP": str(memory_cap)}
        timeout = _CHILD_MIN_SECONDS + size / _CHILD_BYTES_PER_SECOND
        try:
            result = subprocess.run(
                command, capture_output=True, errors="replace", timeout=timeout, check=False, env=environment
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(
                f"{path}: corrupt {format_name} model: its reader was still at it after {timeout:.0f} s"
            ) from None
        if result.returncode == _CHILD_REFUSED:
            reason = result.stderr.strip().rpartition("\n")[2]
            raise ConfigError(f"{path}: corrupt or truncated {format_name} model ({reason})")
        if result.returncode != 0:
            how = f"signal {-result.returncode}" if result.returncode < 0 else f"exit status {result.returncode}"
            raise ConfigError(f"{path}: corrupt or truncated {format_name} model: its reader crashes on it ({how})")
        return copy.read_bytes()


_CHILD_REFUSED = 3
# A model's reader needs a small multiple of the file's size; a corrupt length field can ask for many gigabytes.
_CHILD_MIN_MEMORY = 2 << 30
_CHILD_MEMORY_PER_BYTE = 64
# Some damaged files send a reader into an endless loop; a sound one reads tens of megabytes a second.
_CHILD_MIN_SECONDS = 60
_CHILD_BYTES_PER_SECOND = 1 << 20
# One thread: a thread's stack and malloc arena would count against the memory cap.
_CHILD_PRELUDE = """\
import ctypes, os, sys
if sys.platform == "linux":  # crashes are expected here: no seconds spent writing core dumps, no runaway memory
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cap = int(os.environ["FORWARDPASS_MEMORY_CAP"])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
lib = ctypes.cdll.LoadLibrary(sys.argv[1])
source, copy = sys.argv[2], sys.argv[3]
def fail(message):
    sys.stderr.write("\\n" + (message.strip().partition("\\n")[0] or "unknown error"))
    sys.exit(3)
"""


class SklearnFormat:
    name = "sklearn"
    extra = "sklearn"
    detect_rank = 120

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> Session:
        estimator = self._load(path, options)
        classifier = _is_classifier(estimator, path)
        predict = _scores(estimator) if classifier else estimator.predict
        classes = np.asarray(estimator.classes_) if classifier else None
        columns = _column_inputs(estimator)
        if columns is not None:
            return ColumnsSession(path, self.name, predict, columns, classes)
        # forwardpass puts the named columns in the model's order itself (the tabular pipeline); scikit-learn would
        # warn on every call that the array carries no names
        warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)
        count = _feature_count(estimator, path, options)
        return TabularSession(path, self.name, predict, count, classes, DataType.FP64)

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        estimator = self._load(path, options)
        names = getattr(estimator, "feature_names_in_", None)
        features = None if names is None else tuple(str(name) for name in names)
        if not _is_classifier(estimator, path):
            return ModelFacts(source="scikit-learn", task="regression", feature_names=features)
        probabilities = hasattr(estimator, "predict_proba")
        return ModelFacts(
            source="scikit-learn",
            task="classification",
            classes=tuple(str(label) for label in _label_values(np.asarray(estimator.classes_))),
            scores_output="probabilities",
            label_output="label",
            feature_names=features,
            string_features=frozenset(_string_columns(estimator)),
            distributions={"probabilities": "probabilities"} if probabilities else {},
            decision_scores=not probabilities,
        )

    def parity_samples(self, path: Path, specs: Sequence[TensorSpec], n: int) -> list[dict[str, np.ndarray]]:
        """Random numbers, and for text columns the categories the model was fitted on (plus one it never saw)."""
        from forwardpass.formats.parity import random_samples

        numeric = [spec for spec in specs if spec.dtype is not DataType.BYTES]
        text = [spec for spec in specs if spec.dtype is DataType.BYTES]
        if not text:
            return random_samples(specs, n)
        estimator = self._load(path, LoadOptions(trust_pickle=True))  # already trusted: this is its parity check
        categories = _categories_by_column(estimator)
        rng = np.random.default_rng(0)
        batches = random_samples(numeric, n) if numeric else [{} for _ in range(max(1, n // 8))]
        for batch in batches:
            rows = len(next(iter(batch.values()))) if batch else 8
            for spec in text:
                known = [*categories.get(spec.name, []), "never seen"]
                batch[spec.name] = np.array(rng.choice(known, (rows, 1)), dtype=object)
        return batches

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        estimator = self._load(path, options)
        skl2onnx = require("skl2onnx", self.extra)
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

        columns = _column_inputs(estimator)
        _register_tree_library_converters()
        if columns is None:
            inputs = [(INPUT_NAME, FloatTensorType([None, _feature_count(estimator, path, options)]))]
            onnx_model = _convert_sklearn(estimator, _is_classifier(estimator, path), inputs, convert.opset, path)
            onnx_model = _double_input(onnx_model)
        else:
            inputs = [
                (name, StringTensorType([None, 1]) if text else DoubleTensorType([None, 1])) for name, text in columns
            ]
            onnx_model = _convert_sklearn(estimator, _is_classifier(estimator, path), inputs, convert.opset, path)
        opsets = save_onnx(onnx_model, output, convert.opset, path)
        tools = {"scikit-learn": _version("sklearn"), "skl2onnx": skl2onnx.__version__}
        tools.update({name: _version(name) for name in ("xgboost", "lightgbm", "onnxmltools") if name in sys.modules})
        return {"tool_versions": tools, "converter": "skl2onnx", "opsets": opsets}

    def _load(self, path: Path, options: LoadOptions) -> Any:
        if not options.trust_pickle:
            raise ConfigError(
                f"refusing to unpickle {path}: pickles run code when loaded; "
                "pass --trust-pickle (trust_pickle=True) if you trust it"
            )
        require("sklearn", self.extra)
        joblib = require("joblib", self.extra)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                estimator = joblib.load(path)  # reads plain pickles too
            except ModuleNotFoundError as exc:
                root = (exc.name or "").partition(".")[0]
                if root in _EXTRA_OF_MODULE:
                    raise MissingExtraError(root, _EXTRA_OF_MODULE[root]) from None
                raise ConfigError(f"{path}: this sklearn pickle needs the module '{exc.name}', not installed") from None
            except Exception as exc:  # unpickling raises anything: EOFError, UnpicklingError, ValueError, ...
                raise ConfigError(f"{path}: corrupt or truncated sklearn pickle ({first_line(exc)})") from None
        for warning in caught:  # e.g. saved by another scikit-learn version: worth knowing, not fatal
            log.warning("%s: %s", path, str(warning.message).strip().partition("\n")[0])
        if not callable(getattr(estimator, "predict", None)):
            raise ConfigError(f"{path}: the sklearn pickle holds a {type(estimator).__name__}, not a fitted model")
        return estimator


def _is_classifier(estimator: Any, path: Path) -> bool:
    from sklearn.base import is_classifier, is_regressor

    if is_classifier(estimator):
        return True
    if is_regressor(estimator):
        return False
    raise ConfigError(f"{path}: the sklearn pickle holds a {type(estimator).__name__}: only classifiers and regressors")


def _feature_count(estimator: Any, path: Path, options: LoadOptions) -> int:
    declared = options.input_shapes.get(INPUT_NAME)
    if declared:
        return int(declared[-1])
    count = getattr(estimator, "n_features_in_", None)
    if count is None:
        raise ConfigError(
            f"{path}: the sklearn model does not record its number of input features; "
            f"give it as input_shapes {{'{INPUT_NAME}': [-1, N]}}"
        )
    return int(count)


def _double_input(model: Any) -> Any:
    """The converted model taking FP64 [batch, features], as the native session does, cast to FP32 inside: the
    parity check then compares both on the same input, and any value the cast moves shows there."""
    import onnx

    graph = model.graph
    original = graph.input[0]
    cast_name = f"{original.name}_fp32"
    for node in graph.node:
        node.input[:] = [cast_name if name == original.name else name for name in node.input]
    graph.node.insert(0, onnx.helper.make_node("Cast", [original.name], [cast_name], to=onnx.TensorProto.FLOAT))
    original.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    return model


def _convert_sklearn(estimator: Any, classifier: bool, inputs: list[tuple[str, Any]], opset: int, path: Path) -> Any:
    from skl2onnx import convert_sklearn

    opsets = {"": opset, "ai.onnx.ml": _ml_opset(opset)}
    try:
        if classifier:
            try:
                return convert_sklearn(estimator, initial_types=inputs, target_opset=opsets, options={"zipmap": False})
            except NameError as exc:  # skl2onnx's error for an option this classifier does not take
                if "zipmap" not in str(exc):
                    raise
        return convert_sklearn(estimator, initial_types=inputs, target_opset=opsets)
    except Exception as exc:  # skl2onnx raises many kinds for what it cannot convert
        raise ConfigError(f"{path}: skl2onnx cannot convert this sklearn model ({first_line(exc)})") from None


def _ml_opset(opset: int) -> int:
    """The ai.onnx.ml opset released with `opset`, at most 3: onnxmltools' tree converters write no later one."""
    from onnx.helper import VERSION_TABLE

    return min(3, max(row[3] for row in VERSION_TABLE if row[2] <= opset))


def _register_tree_library_converters() -> None:
    """Pipelines may end in XGBoost's or LightGBM's scikit-learn wrappers: convert those with onnxmltools. Only
    libraries the pickle itself imported are registered."""
    wanted = [name for name in ("xgboost", "lightgbm") if name in sys.modules]
    if not wanted:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    for name in wanted:
        require("onnxmltools", name)
        if name == "xgboost":
            from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost as convert
            from xgboost import XGBClassifier as Classifier
            from xgboost import XGBRegressor as Regressor
        else:
            from lightgbm import LGBMClassifier as Classifier
            from lightgbm import LGBMRegressor as Regressor
            from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm as convert
        alias = "XGBoost" if name == "xgboost" else "LightGbm"
        update_registered_converter(
            Classifier,
            f"{alias}{Classifier.__name__}",
            calculate_linear_classifier_output_shapes,
            convert,
            options=classifier_options,
        )
        update_registered_converter(
            Regressor, f"{alias}{Regressor.__name__}", calculate_linear_regressor_output_shapes, convert
        )


def _version(module: str) -> str:
    return str(importlib.import_module(module).__version__)


SKLEARN = SklearnFormat()
