"""LightGBM models written by `Booster.save_model`: text whose first line is `tree`, whatever the file is called;
run natively by lightgbm or converted by onnxmltools.

Objectives binary, multiclass and multiclassova are classifiers (`label`, `probabilities`); every other objective
is a regressor (`variable`: what `Booster.predict` gives).

The file is read in a child process (see `read_in_child`), which hands back LightGBM's own text of the model; its
trees are checked before LightGBM loads that text here, because LightGBM crashes predicting with a tree whose
indices point nowhere.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.backends.base import Session
from forwardpass.config import EngineConfig, category_text
from forwardpass.errors import ConfigError
from forwardpass.formats.base import ConvertOptions, LoadOptions, require
from forwardpass.formats.facts import ModelFacts
from forwardpass.formats.tabular import (
    INPUT_NAME,
    TabularSession,
    first_line,
    read_in_child,
    save_onnx,
    threshold_samples,
    truncate_category_codes,
)
from forwardpass.tensor import TensorSpec

__all__ = ["LIGHTGBM", "LightGBMFormat", "pandas_category_codes"]

CLASSIFIER_OBJECTIVES = frozenset({"binary", "multiclass", "multiclassova"})
ONNXMLTOOLS_MAX_OPSET = 15  # onnxmltools refuses higher; save_onnx raises the result to the requested opset
LIGHTGBM_ZERO = np.float32(1e-35)  # kZeroThreshold: LightGBM reads features this close to 0 as 0
# Runs in the child: lib_lightgbm's C API alone, no numpy or lightgbm package to import. Prediction needs none of
# the training parameters LightGBM keeps as text after the trees, and damage there can hang its reader: cut them.
_READER = r"""
lib.LGBM_GetLastError.restype = ctypes.c_char_p
handle, iterations, size = ctypes.c_void_p(), ctypes.c_int(), ctypes.c_int64()
with open(source, "rb") as file:
    model = file.read().partition(b"\nparameters:")[0] + b"\n"
if lib.LGBM_BoosterLoadModelFromString(ctypes.c_char_p(model), ctypes.byref(iterations), ctypes.byref(handle)):
    fail(lib.LGBM_GetLastError().decode(errors="replace"))
text = ctypes.create_string_buffer(1 << 20)
for _ in range(2):  # a second call with a buffer of the size the first reported, when the first was too small
    if lib.LGBM_BoosterSaveModelToString(handle, 0, -1, 0, ctypes.c_int64(len(text)), ctypes.byref(size), text):
        fail(lib.LGBM_GetLastError().decode(errors="replace"))
    if size.value <= len(text):
        break
    text = ctypes.create_string_buffer(size.value)
with open(copy, "wb") as file:
    file.write(text.raw[: size.value - 1])
"""


class LightGBMFormat:
    name = "lightgbm"
    extra = "lightgbm"
    detect_rank = 110

    def detect(self, path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            with path.open("rb") as file:
                first = file.readline(16)
        except OSError:
            return False
        return first.rstrip(b"\r\n") == b"tree"

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> Session:
        lightgbm = require("lightgbm", self.extra)
        text, objective = self._read(path)
        booster = lightgbm.Booster(model_str=text.decode("utf-8", "replace"))
        threads = {"num_threads": engine.intra_op_threads} if engine.intra_op_threads else {}
        if objective not in CLASSIFIER_OBJECTIVES:
            return TabularSession(path, self.name, lambda x: booster.predict(x, **threads), booster.num_feature(), None)

        def scores(features: np.ndarray) -> np.ndarray:
            positive_or_all: np.ndarray = booster.predict(features, **threads)
            if positive_or_all.ndim == 1:  # binary: the probability of class 1
                return np.column_stack([1 - positive_or_all, positive_or_all])
            return positive_or_all

        classes = np.arange(max(booster.num_model_per_iteration(), 2))
        return TabularSession(path, self.name, scores, booster.num_feature(), classes)

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        lightgbm = require("lightgbm", self.extra)
        onnxmltools = require("onnxmltools", self.extra)
        text, objective = self._read(path)
        booster = lightgbm.Booster(model_str=_float32_thresholds(text).decode("utf-8", "replace"))
        try:
            onnx_model = onnxmltools.convert_lightgbm(
                booster,
                initial_types=_float_input(booster.num_feature()),
                target_opset=min(convert.opset, ONNXMLTOOLS_MAX_OPSET),
                zipmap=False,
            )
        except Exception as exc:  # onnxmltools raises RuntimeError, TypeError, ... for what it cannot convert
            raise ConfigError(f"{path}: onnxmltools cannot convert this lightgbm model ({first_line(exc)})") from None
        opsets = save_onnx(onnx_model, output, convert.opset, path)
        # LightGBM truncates a categorical feature's value to a whole code (2.7 is category 2, -0.5 is 0)
        truncate_category_codes(output, _categorical_features(text), booster.num_feature(), negative="ceil")
        return {
            "tool_versions": {"lightgbm": lightgbm.__version__, "onnxmltools": onnxmltools.__version__},
            "converter": "onnxmltools",
            "objective": objective,
            "opsets": opsets,
        }

    def parity_samples(self, path: Path, specs: Sequence[TensorSpec], n: int) -> list[dict[str, np.ndarray]]:
        """Inputs at the model's own split thresholds (see `threshold_samples`)."""
        text, _ = self._read(path)
        features, thresholds = [], []
        for block in text.split(b"\nTree=")[1:]:
            tree = _fields(block.partition(b"\n\n")[0])
            if int(tree[b"num_leaves"]) > 1:
                numerical = (np.array(tree[b"decision_type"].split(), np.int64) & 1) == 0
                features.append(np.array(tree[b"split_feature"].split(), np.int64)[numerical])
                thresholds.append(np.array(tree[b"threshold"].split(), np.float64)[numerical])
        return threshold_samples(
            specs, n, np.concatenate([[], *features]).astype(np.int64), np.concatenate([[], *thresholds])
        )

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        text, objective = self._read(path)
        header = _fields(text.partition(b"\n\n")[0])
        features = _feature_names(header)
        codes = _pandas_category_codes(path, path.read_bytes(), header, features)
        missing = frozenset(features or ())  # NaN takes a split's missing branch, or reads as 0 where none was learnt
        if objective not in CLASSIFIER_OBJECTIVES:
            return ModelFacts(
                source="LightGBM",
                task="regression",
                feature_names=features,
                category_codes=codes,
                missing_values=missing,
            )
        count = max(int(header.get(b"num_class", b"1")), 2)
        return ModelFacts(
            source="LightGBM",
            task="classification",
            classes=tuple(str(i) for i in range(count)),
            scores_output="probabilities",
            label_output="label",
            feature_names=features,
            category_codes=codes,
            missing_values=missing,
            distributions={"probabilities": "probabilities"},
        )

    def _read(self, path: Path) -> tuple[bytes, str]:
        """LightGBM's own text of the model at `path`, its trees checked, and its objective ("" for a custom one)."""
        lightgbm = require("lightgbm", self.extra)
        try:
            original = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read this lightgbm model ({exc.strerror})") from None
        # A cut file, the commonest damage, named plainly rather than as a crash.
        if b"\nend of trees" not in original:
            raise ConfigError(f"{path}: truncated lightgbm model: no 'end of trees' line")
        if b"\nparameters:" in original and b"\nend of parameters" not in original:
            raise ConfigError(f"{path}: truncated lightgbm model: no 'end of parameters' line")
        checked = read_in_child(_READER, lightgbm.basic._LIB._name, path, self.name, ".txt")
        header = _fields(checked.partition(b"\n\n")[0])
        try:
            problem = _model_problem(checked, int(header[b"max_feature_idx"]) + 1)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{path}: corrupt lightgbm model ({type(exc).__name__}: {exc})") from None
        if problem:
            raise ConfigError(f"{path}: corrupt lightgbm model: {problem}")
        return checked, header.get(b"objective", b"").decode("ascii", "replace").partition(" ")[0]


def pandas_category_codes(text: bytes, path: Path) -> list[tuple[str, ...] | None]:
    """Per feature of the model whose text (as `Booster.model_to_string` writes it) is `text`, in feature order: the
    categories its `category` column had when fitted on a DataFrame, in code order, or None for any other feature.
    `path` names the model in errors."""
    header = _fields(text.partition(b"\n\n")[0])
    count = int(header.get(b"max_feature_idx", b"-1")) + 1
    indexed = tuple(str(index) for index in range(count))
    codes = _pandas_category_codes(path, text, header, indexed)
    return [codes.get(index) for index in indexed]


def _feature_names(header: dict[bytes, bytes]) -> tuple[str, ...] | None:
    names = header.get(b"feature_names", b"").decode("utf-8", "replace").split()
    # LightGBM names unnamed features Column_0, Column_1, ...: those are no names
    return tuple(names) if names and names != [f"Column_{i}" for i in range(len(names))] else None


def _categorical_features(text: bytes) -> list[int]:
    """The positions of the model's categorical features (`feature_infos` lists a categorical one's codes, `-1:2:0`,
    a numeric one's range, `[lo:hi]`)."""
    infos = _fields(text.partition(b"\n\n")[0]).get(b"feature_infos", b"").split()
    return [index for index, info in enumerate(infos) if not info.startswith((b"[", b"none"))]


def _pandas_category_codes(
    path: Path, text: bytes, header: dict[bytes, bytes], features: tuple[str, ...] | None
) -> dict[str, tuple[str, ...]]:
    """The categories of each DataFrame `category` column, in code order: lightgbm's Python package writes them on the
    model text's last line (`pandas_categorical:`, one list per such column, in column order) and codes values by
    them. A categorical feature's `feature_infos` lists the codes it saw (`-1:2:0`), a numeric one its range
    (`[lo:hi]`)."""
    if features is None:
        return {}
    last = text.rstrip().rpartition(b"\n")[2]
    if not last.startswith(b"pandas_categorical:"):
        return {}
    try:
        lists = json.loads(last.partition(b":")[2])
    except ValueError:
        raise ConfigError(f"{path}: corrupt lightgbm model: its pandas_categorical line is not JSON") from None
    infos = header.get(b"feature_infos", b"").split()
    categorical = [name for name, info in zip(features, infos, strict=False) if not info.startswith((b"[", b"none"))]
    if not lists:
        return {}
    if not isinstance(lists, list) or len(lists) != len(categorical):
        raise ConfigError(
            f"{path}: its pandas_categorical line lists {len(lists) if isinstance(lists, list) else 0} category "
            f"columns for {len(categorical)} categorical features, so which list codes which feature is not recorded; "
            "fit it with the DataFrame's category columns as its only categorical features"
        )
    return {
        name: tuple(category_text(value) for value in values) for name, values in zip(categorical, lists, strict=True)
    }


def _fields(block: bytes) -> dict[bytes, bytes]:
    """The `key=value` lines of one block of LightGBM's text."""
    return dict(line.split(b"=", 1) for line in block.splitlines() if b"=" in line)


def _model_problem(text: bytes, n_features: int) -> str | None:
    for index, block in enumerate(text.split(b"\nTree=")[1:]):
        problem = _tree_problem(_fields(block.partition(b"\n\n")[0]), n_features)
        if problem:
            return f"tree {index} {problem}"
    return None


def _tree_problem(tree: dict[bytes, bytes], n_features: int) -> str | None:
    leaves = int(tree[b"num_leaves"])
    if leaves < 1 or len(tree[b"leaf_value"].split()) != leaves:
        return "has node arrays of different lengths"
    if leaves == 1:
        return None
    left, right, features, decisions = (
        np.array(tree[key].split(), np.int64)
        for key in (b"left_child", b"right_child", b"split_feature", b"decision_type")
    )
    thresholds = np.array(tree[b"threshold"].split(), np.float64)
    if not len(left) == len(right) == len(features) == len(decisions) == len(thresholds) == leaves - 1:
        return "has node arrays of different lengths"
    children = np.concatenate([left, right])
    nodes, leaf_indices = children[children >= 0], ~children[children < 0]  # a leaf is stored as ~index
    if (nodes.size and (nodes.min() < 1 or nodes.max() >= leaves - 1)) or (
        leaf_indices.size and leaf_indices.max() >= leaves
    ):
        return "points to a node it does not have"
    if np.unique(nodes).size != nodes.size or np.unique(leaf_indices).size != leaf_indices.size:
        return "reaches a node from two parents"
    if features.min() < 0 or features.max() >= n_features:
        return "splits on a feature the model does not have"
    categorical = thresholds[(decisions & 1) != 0]  # a categorical split's threshold indexes cat_boundaries
    if categorical.size:
        bounds = np.array(tree.get(b"cat_boundaries", b"").split(), np.int64)
        count = len(bounds) - 1
        valid = count >= 1 and bounds[0] == 0 and np.all(np.diff(bounds) >= 0)
        if not valid or bounds[-1] != len(tree.get(b"cat_threshold", b"").split()):
            return "lists categories it does not have"
        if categorical.min() < 0 or categorical.max() >= count or not np.all(categorical == np.round(categorical)):
            return "lists categories it does not have"
    return None


def _float32_thresholds(text: bytes) -> bytes:
    """The model with each numerical split's threshold moved to the float32 that decides float32 inputs alike.

    LightGBM compares a feature with a double threshold; ONNX's TreeEnsemble with that threshold rounded to the
    nearest float32, so a feature equal to a threshold rounded up takes the other branch. A float32 x is <= t
    exactly when it is <= the largest float32 <= t. LightGBM also reads any |x| <= 1e-35f as 0, and puts splits
    between 0 and the values either side at -1e-35 or 1e-35: a threshold in [-1e-35, 0) then means x < -1e-35,
    one in [0, 1e-35) means x <= 1e-35.
    """
    zero = np.float64(LIGHTGBM_ZERO)
    blocks = text.split(b"\nTree=")
    for index, block in enumerate(blocks[1:], start=1):
        tree = _fields(block.partition(b"\n\n")[0])
        if int(tree[b"num_leaves"]) < 2:
            continue
        thresholds = np.array(tree[b"threshold"].split(), np.float64)
        numerical = (np.array(tree[b"decision_type"].split(), np.int64) & 1) == 0
        lowered = thresholds.astype(np.float32)
        above = numerical & (lowered.astype(np.float64) > thresholds)
        lowered[above] = np.nextafter(lowered[above], np.float32(-np.inf))
        lowered[numerical & (thresholds >= -zero) & (thresholds < 0)] = np.nextafter(-LIGHTGBM_ZERO, -np.inf)
        lowered[numerical & (thresholds >= 0) & (thresholds < zero)] = LIGHTGBM_ZERO
        values = [
            repr(float(low)) if num else raw
            for low, num, raw in zip(lowered, numerical, tree[b"threshold"].split(), strict=True)
        ]
        line = b"threshold=" + b" ".join(value.encode() if isinstance(value, str) else value for value in values)
        blocks[index] = block.replace(b"threshold=" + tree[b"threshold"], line, 1)
    # The header's byte sizes of the trees no longer hold; without them LightGBM reads the trees one after another.
    blocks[0] = b"\n".join(line for line in blocks[0].split(b"\n") if not line.startswith(b"tree_sizes="))
    return b"\nTree=".join(blocks)


def _float_input(n_features: int) -> list[tuple[str, Any]]:
    from onnxmltools.convert.common.data_types import FloatTensorType  # onnxmltools refuses skl2onnx's own type

    return [(INPUT_NAME, FloatTensorType([None, n_features]))]


LIGHTGBM = LightGBMFormat()
