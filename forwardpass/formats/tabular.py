"""The tabular pieces scikit-learn, XGBoost and LightGBM share: a fitted model behind the Session interface (one
[batch, features] input, or one input per column), its answer named as the ONNX converters name it, the conversion's
save and its parity samples, and reading a model file in a child process that may crash or loop on a damaged file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from forwardpass.errors import ConfigError, InputError
from forwardpass.tensor import DataType, TensorSpec

__all__ = [
    "INPUT_NAME",
    "MISSING_SHARE",
    "ColumnsSession",
    "Scores",
    "TabularSession",
    "first_line",
    "label_values",
    "read_in_child",
    "save_onnx",
    "threshold_samples",
    "truncate_category_codes",
]


INPUT_NAME = "input"
MISSING_SHARE = 1 / 8  # of the parity inputs of a column where the model takes a missing value (NaN)
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
        self._labels = None if classes is None else label_values(classes)
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
        self._labels = None if classes is None else label_values(classes)
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


def _closed(features: np.ndarray) -> np.ndarray:
    raise InputError("this session is closed")


def label_values(classes: np.ndarray) -> np.ndarray:
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


def truncate_category_codes(
    converted: Path, categorical: list[int], n_features: int, negative: Literal["ceil", "keep"]
) -> None:
    """Truncate the categorical features of the converted tree model at `converted` (one [batch, features] input) to
    whole codes before its trees read them, as the tree library does (2.7 is category 2): onnxmltools' trees compare
    a value with each category exactly, so 2.7 was answered as a category never seen. Below 0, `negative` says what
    the library does: LightGBM truncates toward zero (ceil: -0.5 is category 0), XGBoost takes any negative value as
    no category (keep). NaN stays NaN. Done at the graph's final opset (Where needs 9)."""
    if not categorical:
        return
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(converted))
    graph = model.graph
    whole = f"{INPUT_NAME}_category_codes_truncated"
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name == INPUT_NAME:
                node.input[position] = whole
    numeric = np.ones(n_features, dtype=bool)
    numeric[categorical] = False
    graph.initializer.append(numpy_helper.from_array(numeric, f"{whole}_numeric"))
    graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), f"{whole}_zero"))
    below_zero = "Ceil" if negative == "ceil" else "Identity"
    steps = [
        helper.make_node("Less", [INPUT_NAME, f"{whole}_zero"], [f"{whole}_negative"]),
        helper.make_node(below_zero, [INPUT_NAME], [f"{whole}_below"]),
        helper.make_node("Floor", [INPUT_NAME], [f"{whole}_floor"]),
        helper.make_node("Where", [f"{whole}_negative", f"{whole}_below", f"{whole}_floor"], [f"{whole}_code"]),
        helper.make_node("Where", [f"{whole}_numeric", INPUT_NAME, f"{whole}_code"], [whole]),
    ]
    nodes = [*steps, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(converted))


def threshold_samples(
    specs: Sequence[TensorSpec], n: int, features: np.ndarray, thresholds: np.ndarray
) -> list[dict[str, np.ndarray]]:
    """Parity inputs for a tree ensemble whose numerical splits test `features` against `thresholds` (pairwise).

    Random numbers rarely come near a split, so they cannot show a converter that rounds thresholds differently
    from the framework. Here each feature of each row sits at, just below or just above one of the model's own
    thresholds on that feature (0 where no split uses it), and about one value in eight is missing (NaN), which the
    trees send down the branch they learnt for it. Batches are cut as `random_samples` cuts them.
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
        values[rng.random(values.shape) < MISSING_SHARE] = np.nan
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
