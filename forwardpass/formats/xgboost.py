"""XGBoost models written by `Booster.save_model` or `XGBClassifier.save_model`: JSON or UBJSON, recognised by content
(`.json` is also MXNet's symbol files and Hugging Face's configs), run natively by xgboost or converted by onnxmltools.

Objectives binary:logistic, binary:hinge, multi:softprob and multi:softmax are classifiers (`label`,
`probabilities`; for multi:softmax the per-class margins, as onnxmltools writes them); every other objective is a
regressor (`variable`: what `Booster.predict` gives).

The file is read in a child process (see `read_in_child`), which hands back XGBoost's own JSON of the model; its
trees are checked before XGBoost loads that JSON here, because XGBoost crashes predicting with a tree whose indices
point nowhere.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
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

__all__ = ["XGBOOST", "XGBoostFormat", "feature_category_codes"]

CLASSIFIER_OBJECTIVES = frozenset({"binary:logistic", "binary:hinge", "multi:softprob", "multi:softmax"})
ONNXMLTOOLS_MAX_OPSET = 15  # onnxmltools refuses higher; save_onnx raises the result to the requested opset
# The model's first key is "learner", in JSON ({"learner": ...) and in UBJSON ({L<8-byte length>learner...).
_HEAD_BYTES = 32
# Runs in the child: libxgboost's C API alone, no numpy or xgboost package to import. Its errors start with
# "[21:00:57] /workspace/src/common/json.cc:409: ", which says nothing to a user.
_READER = r"""
import re
lib.XGBGetLastError.restype = ctypes.c_char_p
handle, size, text = ctypes.c_void_p(), ctypes.c_uint64(), ctypes.POINTER(ctypes.c_char)()
if (
    lib.XGBoosterCreate(None, ctypes.c_uint64(0), ctypes.byref(handle))
    or lib.XGBoosterLoadModel(handle, source.encode())
    or lib.XGBoosterSaveModelToBuffer(handle, b'{"format": "json"}', ctypes.byref(size), ctypes.byref(text))
):
    fail(re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lib.XGBGetLastError().decode(errors="replace")))
with open(copy, "wb") as file:
    file.write(ctypes.string_at(text, size.value))
"""


@dataclass(frozen=True, slots=True)
class Learner:
    objective: str
    n_classes: int  # 0 for binary classifiers and regressors
    kind: str  # gbtree, dart or gblinear
    # Early stopping's choice: the rounds up to its best iteration (0: all). XGBoost's scikit-learn estimators, which
    # load it back from the file, and onnxmltools predict with these; Booster.predict takes them as iteration_range.
    best_rounds: int


class XGBoostFormat:
    name = "xgboost"
    extra = "xgboost"
    detect_rank = 100

    def detect(self, path: Path) -> bool:
        if not path.is_file():
            return False
        if path.suffix.lower() == ".ubj":
            return True
        try:
            with path.open("rb") as file:
                head = file.read(_HEAD_BYTES)
        except OSError:
            return False
        return head.lstrip()[:1] == b"{" and b"learner" in head

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> Session:
        xgboost = require("xgboost", self.extra)
        checked, learner = self._read(path)
        booster = xgboost.Booster(model_file=bytearray(checked))
        if engine.intra_op_threads:
            booster.set_param({"nthread": engine.intra_op_threads})
        margin = learner.objective == "multi:softmax"
        rounds = (0, learner.best_rounds)
        if learner.kind == "gblinear":  # inplace_predict serves tree boosters only

            def predict(features: np.ndarray) -> np.ndarray:
                matrix = xgboost.DMatrix(features)
                return np.asarray(booster.predict(matrix, output_margin=margin, iteration_range=rounds))
        else:

            def predict(features: np.ndarray) -> np.ndarray:
                kind = "margin" if margin else "value"
                return np.asarray(booster.inplace_predict(features, predict_type=kind, iteration_range=rounds))

        if learner.objective not in CLASSIFIER_OBJECTIVES:
            return TabularSession(path, self.name, predict, booster.num_features(), None)

        def scores(features: np.ndarray) -> np.ndarray:
            positive_or_all = predict(features)
            if positive_or_all.ndim == 1:  # binary: the probability of class 1
                return np.column_stack([1 - positive_or_all, positive_or_all])
            return positive_or_all

        classes = np.arange(max(learner.n_classes, 2))
        return TabularSession(path, self.name, scores, booster.num_features(), classes)

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        xgboost = require("xgboost", self.extra)
        onnxmltools = require("onnxmltools", self.extra)
        checked, learner = self._read(path)
        classifier = learner.objective in CLASSIFIER_OBJECTIVES
        wrapper = xgboost.XGBClassifier() if classifier else xgboost.XGBRegressor()
        wrapper.load_model(bytearray(_without_estimator_type(checked)))
        wrapper.get_booster().feature_names = None  # onnxmltools reads features only as f0, f1, ...
        try:
            onnx_model = onnxmltools.convert_xgboost(
                wrapper,
                initial_types=_float_input(wrapper.get_booster().num_features()),
                target_opset=min(convert.opset, ONNXMLTOOLS_MAX_OPSET),
            )
        except Exception as exc:  # onnxmltools raises RuntimeError, ValueError, ... for what it cannot convert
            raise ConfigError(f"{path}: onnxmltools cannot convert this xgboost model ({first_line(exc)})") from None
        opsets = save_onnx(onnx_model, output, convert.opset, path)
        # XGBoost truncates a categorical feature's value to a whole code (2.7 is category 2); a negative one is none
        kinds = json.loads(checked)["learner"].get("feature_types", [])
        categorical = [index for index, kind in enumerate(kinds) if kind == "c"]
        truncate_category_codes(output, categorical, wrapper.get_booster().num_features(), negative="keep")
        return {
            "tool_versions": {"xgboost": xgboost.__version__, "onnxmltools": onnxmltools.__version__},
            "converter": "onnxmltools",
            "objective": learner.objective,
            "opsets": opsets,
        }

    def parity_samples(self, path: Path, specs: Sequence[TensorSpec], n: int) -> list[dict[str, np.ndarray]]:
        """Inputs at the model's own split thresholds (see `threshold_samples`)."""
        checked, _ = self._read(path)
        features, thresholds = [], []
        booster = json.loads(checked)["learner"]["gradient_booster"]
        for tree in booster.get("gbtree", booster)["model"].get("trees", []):
            left = np.asarray(tree["left_children"], np.int64)
            split_type = np.asarray(tree.get("split_type") or np.zeros(len(left)), np.int64)
            numerical = (left != -1) & (split_type == 0)
            features.append(np.asarray(tree["split_indices"], np.int64)[numerical])
            thresholds.append(np.asarray(tree["split_conditions"], np.float64)[numerical])
        return threshold_samples(
            specs, n, np.concatenate([[], *features]).astype(np.int64), np.concatenate([[], *thresholds])
        )

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        checked, learner = self._read(path)
        model = json.loads(checked)["learner"]
        names = model.get("feature_names") or None
        features = tuple(str(name) for name in names) if names else None
        codes = _category_codes(model, features)
        missing = frozenset(features or ())  # a missing value takes each split's default branch
        if learner.objective not in CLASSIFIER_OBJECTIVES:
            return ModelFacts(
                source="XGBoost",
                task="regression",
                feature_names=features,
                category_codes=codes,
                missing_values=missing,
            )
        # multi:softmax is served as its per-class margins (onnxmltools writes the same); the others as probabilities
        margins = learner.objective == "multi:softmax"
        return ModelFacts(
            source="XGBoost",
            task="classification",
            classes=tuple(str(i) for i in range(max(learner.n_classes, 2))),
            scores_output="probabilities",
            label_output="label",
            feature_names=features,
            category_codes=codes,
            missing_values=missing,
            distributions={} if margins else {"probabilities": "probabilities"},
        )

    def _read(self, path: Path) -> tuple[bytes, Learner]:
        """XGBoost's own JSON of the model at `path`, its trees checked, and what the model learned to do."""
        xgboost = require("xgboost", self.extra)
        checked = read_in_child(_READER, xgboost.core._LIB._name, path, self.name, ".json")
        try:
            model = json.loads(checked)["learner"]
            learner = Learner(
                str(model["objective"]["name"]),
                int(model["learner_model_param"]["num_class"]),
                str(model["gradient_booster"]["name"]),
                int(model.get("attributes", {}).get("best_iteration", -1)) + 1,
            )
            problem = _model_problem(model)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: corrupt xgboost model ({type(exc).__name__}: {exc})") from None
        if problem:
            raise ConfigError(f"{path}: corrupt xgboost model: {problem}")
        return checked, learner


def _without_estimator_type(model_json: bytes) -> bytes:
    """The model without the scikit-learn estimator type its wrapper recorded: the wrapper converted is picked by the
    objective, and XGBoost refuses to load an XGBRanker's (or a classifier's with a regression objective) into
    another wrapper with a TypeError."""
    model = json.loads(model_json)
    model["learner"].get("attributes", {}).pop("scikit_learn", None)
    return json.dumps(model).encode()


def feature_category_codes(model_json: bytes) -> list[tuple[str, ...] | None]:
    """Per feature of the model whose JSON (as `Booster.save_raw("json")` writes it) is `model_json`, in feature
    order: the categories it recorded for a DataFrame's `category` column, in code order, or None for any other."""
    model = json.loads(model_json)["learner"]
    indexed = tuple(str(index) for index in range(int(model["learner_model_param"]["num_feature"])))
    codes = _category_codes(model, indexed)
    return [codes.get(index) for index in indexed]


def _category_codes(model: dict[str, Any], features: tuple[str, ...] | None) -> dict[str, tuple[str, ...]]:
    """The categories of each categorical feature in code order, as XGBoost (3.1 on) records the DataFrame's: per
    feature, text as UTF-8 bytes cut at `offsets`, or numbers as `values`; a feature with none is numeric."""
    booster = model["gradient_booster"]
    encodings = booster.get("gbtree", booster)["model"].get("cats", {}).get("enc", [])
    codes: dict[str, tuple[str, ...]] = {}
    for name, encoding in zip(features or (), encodings, strict=False):
        values, offsets = encoding.get("values", []), encoding.get("offsets", [])
        if offsets:
            text = bytes(values)
            codes[name] = tuple(text[start:end].decode() for start, end in itertools.pairwise(offsets))
        elif values:
            codes[name] = tuple(category_text(value) for value in values)
    return codes


def _model_problem(model: dict[str, Any]) -> str | None:
    params = model["learner_model_param"]
    n_features = int(params["num_feature"])
    booster = model["gradient_booster"]
    trees_model = booster.get("gbtree", booster)["model"]  # dart nests a gbtree
    for index, tree in enumerate(trees_model.get("trees", [])):
        problem = _tree_problem(tree, n_features)
        if problem:
            return f"tree {index} {problem}"
    outputs = max(1, int(params["num_class"]), int(params.get("num_target", 1)))
    tree_info = np.asarray(trees_model.get("tree_info", []), np.int64)
    if tree_info.size and (tree_info.min() < 0 or tree_info.max() >= outputs):
        return "a tree adds to an output the model does not have"
    return None


def _tree_problem(tree: dict[str, Any], n_features: int) -> str | None:
    left = np.asarray(tree["left_children"], np.int64)
    right = np.asarray(tree["right_children"], np.int64)
    features = np.asarray(tree["split_indices"], np.int64)
    count = int(tree["tree_param"]["num_nodes"])
    if not len(left) == len(right) == len(features) == len(tree["split_conditions"]) == count:
        return "has node arrays of different lengths"
    internal = left != -1  # XGBoost's test for a leaf
    children = np.concatenate([left[internal], right[internal]])
    if children.size and (children.min() < 1 or children.max() >= count):
        return "points to a node it does not have"
    if np.unique(children).size != children.size:
        return "reaches a node from two parents"
    if internal.any() and (features[internal].min() < 0 or features[internal].max() >= n_features):
        return "splits on a feature the model does not have"
    ends = np.add(tree.get("categories_segments", []), tree.get("categories_sizes", []))
    if ends.size and ends.max() > len(tree.get("categories", [])):
        return "lists categories it does not have"
    return None


def _float_input(n_features: int) -> list[tuple[str, Any]]:
    from onnxmltools.convert.common.data_types import FloatTensorType  # onnxmltools refuses skl2onnx's own type

    return [(INPUT_NAME, FloatTensorType([None, n_features]))]


XGBOOST = XGBoostFormat()
