"""scikit-learn estimators and pipelines saved with pickle or joblib (the tabular pieces the tree libraries share with
it are `forwardpass.formats.tabular`).

A pickle runs code when it is loaded, so it is opened only when the user says they trust it (`trust_pickle`).
Native and converted models name their tensors alike, as skl2onnx does with zipmap off: one FP32 input `input`
[batch, features]; classifiers give `label` [batch] and `probabilities` [batch, classes] (the decision scores when
the estimator has no predict_proba), regressors give `variable` [batch, targets].
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.backends.base import Session
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, MissingExtraError
from forwardpass.formats.base import ConvertOptions, LoadOptions, require
from forwardpass.formats.facts import ModelFacts
from forwardpass.formats.tabular import (
    INPUT_NAME,
    MISSING_SHARE,
    ColumnsSession,
    Scores,
    TabularSession,
    first_line,
    label_values,
    save_onnx,
)
from forwardpass.tensor import DataType, TensorSpec

__all__ = ["SKLEARN", "SklearnFormat"]

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
# Modules a pickle may need that one of forwardpass's extras installs.
_EXTRA_OF_MODULE = {"sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm"}


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
    """Columns the fitted model takes as text: those its encoders (OneHotEncoder, OrdinalEncoder, ...) inside a
    ColumnTransformer learnt string categories for, those a text vectorizer reads, and those it drops, which may
    hold anything (a TF-IDF column or a dropped text column was refused as 'not a number' on every record)."""
    text = {name for name, categories in _categories_by_column(estimator).items() if _holds_text(categories)}
    return text | _dropped_columns(estimator)


def _categories_by_column(estimator: Any) -> dict[str, list[Any]]:
    """Each encoded column's categories; a text vectorizer's column its vocabulary (words its texts may hold)."""
    found: dict[str, list[Any]] = {}
    for transformer, columns in _column_transformers(estimator):
        steps = _steps(transformer)
        encoder = next((step for step in steps if hasattr(step, "categories_")), None)
        if encoder is not None:
            for column, categories in zip(columns, encoder.categories_, strict=False):
                found[column] = list(categories)
        elif isinstance(getattr(steps[0], "vocabulary_", None), dict) and len(columns) == 1:
            found[columns[0]] = sorted(steps[0].vocabulary_)
    return found


def _dropped_columns(estimator: Any) -> set[str]:
    """Columns a ColumnTransformer drops (explicitly or as its remainder) and no other transformer reads."""
    dropped: set[str] = set()
    read: set[str] = set()
    for transformer, columns in _column_transformers(estimator):
        (dropped if isinstance(transformer, str) and transformer == "drop" else read).update(columns)
    return dropped - read


def _missing_columns(estimator: Any) -> set[str]:
    """Numeric columns where the model itself takes a missing value (NaN): all of them when its first step does (an
    imputer, HistGradientBoosting, XGBoost's and LightGBM's wrappers), else those a ColumnTransformer imputes, and
    those it passes through to a final step that does (its only other step). scikit-learn's other trees take NaN
    too, but skl2onnx's conversion of them routes it elsewhere."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return set()
    text = _string_columns(estimator)
    steps = _steps(estimator)
    if _takes_missing(steps[0]):
        return {str(name) for name in names} - text
    passed_to_missing = len(steps) == 2 and _takes_missing(steps[1])
    found = {
        column
        for transformer, columns in _column_transformers(estimator)
        if _takes_missing(_steps(transformer)[0]) or (passed_to_missing and _passes_through(transformer))
        for column in columns
    }
    return found - text


def _passes_through(transformer: Any) -> bool:
    """'passthrough', which a fitted ColumnTransformer keeps as an identity FunctionTransformer (func None)."""
    from sklearn.preprocessing import FunctionTransformer

    if isinstance(transformer, str):
        return transformer == "passthrough"
    return isinstance(transformer, FunctionTransformer) and transformer.func is None


def _imputed_text(estimator: Any) -> dict[str, str]:
    """Text columns whose ColumnTransformer entry starts with a SimpleImputer of NaN: the value it fills a missing
    one with (its statistics_), which the encoder after it then reads. Given as the column's impute value, a record
    with none there is answered as scikit-learn answers it (a null text was refused, as no NaN fits a string)."""
    from sklearn.impute import SimpleImputer

    text = _string_columns(estimator)
    found: dict[str, str] = {}
    for transformer, columns in _column_transformers(estimator):
        first = _steps(transformer)[0]
        if isinstance(first, SimpleImputer) and _takes_missing(first):
            for column, value in zip(columns, first.statistics_, strict=False):
                if column in text and isinstance(value, str):
                    found[column] = value
    return found


def _takes_missing(step: Any) -> bool:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import KNNImputer, SimpleImputer

    if isinstance(step, SimpleImputer | KNNImputer):
        missing = step.missing_values
        return isinstance(missing, float) and math.isnan(missing)
    library = type(step).__module__.partition(".")[0]
    return isinstance(step, HistGradientBoostingClassifier | HistGradientBoostingRegressor) or library in (
        "xgboost",
        "lightgbm",
    )


def _with_missing(batches: list[dict[str, np.ndarray]], missing: set[str], names: Any) -> list[dict[str, np.ndarray]]:
    """`batches` with about one value in eight of each column in `missing` made NaN (in the one [batch, features]
    input, the columns `names` puts in `missing`)."""
    rng = np.random.default_rng(1)
    positions = [index for index, name in enumerate(names if names is not None else []) if str(name) in missing]
    for batch in batches:
        for name, values in batch.items():
            if name == INPUT_NAME and positions:
                holes = rng.random((len(values), len(positions))) < MISSING_SHARE
                values[:, positions] = np.where(holes, np.nan, values[:, positions])
            elif name in missing and values.dtype.kind == "f":
                values[rng.random(values.shape) < MISSING_SHARE] = np.nan
    return batches


def _unknown_refused(estimator: Any) -> set[str]:
    """Columns whose encoder refuses a category it never saw (OneHotEncoder's and OrdinalEncoder's default)."""
    refused: set[str] = set()
    for transformer, columns in _column_transformers(estimator):
        encoder = next((step for step in _steps(transformer) if hasattr(step, "categories_")), None)
        if encoder is not None and getattr(encoder, "handle_unknown", "error") == "error":
            refused.update(columns)
    return refused


def _column_transformers(estimator: Any) -> list[tuple[Any, list[str]]]:
    """(transformer, its column names) of every ColumnTransformer in the model, nested pipelines included, and the
    one a HistGradientBoosting model fitted on DataFrame categories keeps to encode them (`_preprocessor`)."""
    found: list[tuple[Any, list[str]]] = []
    names = getattr(estimator, "feature_names_in_", None)
    for step in _steps(estimator):
        preprocessor = getattr(step, "_preprocessor", None)
        for _, transformer, columns in [
            *getattr(step, "transformers_", []),
            *getattr(preprocessor, "transformers_", []),
        ]:
            if isinstance(columns, str):
                columns = [columns]
            if isinstance(columns, np.ndarray) and columns.dtype == bool and names is not None:
                columns = list(np.asarray(names)[columns])  # a mask over the model's columns
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


def _tree_category_codes(estimator: Any, path: Path) -> dict[str, tuple[str, ...]]:
    """Column → its categories in code order, for an XGBoost or LightGBM scikit-learn wrapper fitted on a DataFrame's
    `category` columns: fed an array, as here, the wrapper reads each such value as a code, so the tabular pipeline
    must give it the category's position (a record's 20, second of 10/20/30, is code 1)."""
    names = getattr(estimator, "feature_names_in_", None)
    for index, step in enumerate(_steps(estimator)):
        codes = _wrapper_category_codes(step, path)
        if not any(codes):
            continue
        if index > 0 or names is None or len(names) != len(codes):
            raise ConfigError(
                f"{path}: its {type(step).__name__} takes categories the steps before it made, which no record holds; "
                "fit it on the DataFrame's own category columns, or encode them in the pipeline (OrdinalEncoder)"
            )
        return {str(name): listed for name, listed in zip(names, codes, strict=True) if listed is not None}
    return {}


def _wrapper_category_codes(step: Any, path: Path) -> list[tuple[str, ...] | None]:
    library = type(step).__module__.partition(".")[0]
    if library == "lightgbm" and hasattr(step, "booster_"):
        from forwardpass.formats.lightgbm import pandas_category_codes

        return pandas_category_codes(step.booster_.model_to_string().encode(), path)
    if library == "xgboost" and hasattr(step, "get_booster"):
        from forwardpass.formats.xgboost import feature_category_codes

        return feature_category_codes(bytes(step.get_booster().save_raw("json")))
    return []


def _holds_text(categories: list[Any]) -> bool:
    return any(isinstance(value, str) for value in categories)


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
        codes = _tree_category_codes(estimator, path)
        missing = frozenset(_missing_columns(estimator))
        if not _is_classifier(estimator, path):
            return ModelFacts(
                source="scikit-learn",
                task="regression",
                feature_names=features,
                category_codes=codes,
                missing_values=missing,
                imputed_text=_imputed_text(estimator),
            )
        probabilities = hasattr(estimator, "predict_proba")
        return ModelFacts(
            source="scikit-learn",
            task="classification",
            classes=_class_names(np.asarray(estimator.classes_)),
            scores_output="probabilities",
            label_output="label",
            feature_names=features,
            category_codes=codes,
            missing_values=missing,
            imputed_text=_imputed_text(estimator),
            distributions={"probabilities": "probabilities"} if probabilities else {},
            decision_scores=not probabilities,
        )

    def parity_samples(self, path: Path, specs: Sequence[TensorSpec], n: int) -> list[dict[str, np.ndarray]]:
        """Random numbers (some missing where the model takes missing values), and for text columns the categories
        the model was fitted on (plus one it never saw, where its encoder takes one)."""
        from forwardpass.formats.parity import random_samples

        numeric = [spec for spec in specs if spec.dtype is not DataType.BYTES]
        text = [spec for spec in specs if spec.dtype is DataType.BYTES]
        estimator = self._load(path, LoadOptions(trust_pickle=True))  # already trusted: this is its parity check
        missing, names = _missing_columns(estimator), getattr(estimator, "feature_names_in_", None)
        if not text:
            return _with_missing(random_samples(specs, n), missing, names)
        categories = _categories_by_column(estimator)
        refused = _unknown_refused(estimator)
        rng = np.random.default_rng(0)
        batches = random_samples(numeric, n) if numeric else [{} for _ in range(max(1, n // 8))]
        for batch in batches:
            rows = len(next(iter(batch.values()))) if batch else 8
            for spec in text:
                unseen = [] if spec.name in refused else ["never seen"]
                known = [*categories.get(spec.name, []), *unseen]
                batch[spec.name] = np.array(rng.choice(known, (rows, 1)), dtype=object)
        return _with_missing(batches, missing, names)

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
            final = _steps(estimator)[-1]
            if final is not estimator and hasattr(final, "transform"):
                held = f"{type(estimator).__name__} ending in a {type(final).__name__}"
                raise ConfigError(
                    f"{path}: the sklearn pickle holds a {held}, which predicts nothing: a transformer; only "
                    "classifiers and regressors are served"
                )
            raise ConfigError(f"{path}: the sklearn pickle holds a {type(estimator).__name__}, not a fitted model")
        inconsistent = _predicts_another_class(_steps(estimator)[-1])
        if inconsistent is not None:
            why, fix = inconsistent
            raise ConfigError(f"{path}: its {why}, so no answer is both its label and its scores; refit it as {fix}")
        return estimator


def _predicts_another_class(final: Any) -> tuple[str, str] | None:
    """Why a classifier predicts, on some rows, a class other than its most probable one (which forwardpass answers),
    and how to refit it; None for one that does not. scikit-learn fits these probabilities apart from predict."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.svm import SVC, NuSVC

    # predict_proba, not `probability`: scikit-learn 1.9 deprecated the parameter, whose default is now the truthy
    # 'deprecated' of an SVC without probabilities
    if isinstance(final, SVC | NuSVC) and hasattr(final, "predict_proba"):
        name = type(final).__name__
        return (
            f"{name}(probability=True) scores classes by Platt scaling but predicts by its votes",
            f"CalibratedClassifierCV({name}(), ensemble=False), or with probability=False for its decision scores",
        )
    if isinstance(final, SGDClassifier) and final.loss == "modified_huber" and len(final.classes_) > 2:
        return (
            "SGDClassifier(loss='modified_huber') scores every class alike where all their decisions are below -1, "
            "but predicts the highest decision",
            "SGDClassifier(loss='log_loss'), or in a CalibratedClassifierCV",
        )
    return None


def _class_names(classes: np.ndarray) -> tuple[str, ...]:
    """The classes as the framework prints them: a boolean target's are False and True (its label output, as the
    converters write it, holds 0 and 1)."""
    if classes.dtype == bool:
        return tuple(str(label) for label in classes)
    return tuple(str(label) for label in label_values(classes))


def _is_classifier(estimator: Any, path: Path) -> bool:
    from sklearn.base import is_classifier, is_regressor

    if is_classifier(estimator):
        if not hasattr(estimator, "predict_proba") and not hasattr(estimator, "decision_function"):
            raise ConfigError(
                f"{path}: the {type(estimator).__name__} gives neither probabilities nor decision scores, only its "
                "votes; refit it with scores (a VotingClassifier with voting='soft')"
            )
        classes = getattr(estimator, "classes_", None)
        if isinstance(classes, list):  # one array of classes per target: a multi-output (multi-label) classifier
            raise ConfigError(
                f"{path}: the {type(estimator).__name__} predicts {len(classes)} targets at once; a model here answers "
                "one classifier's classes: save one classifier per target"
            )
        return True
    if is_regressor(estimator):
        return False
    raise ConfigError(
        f"{path}: the sklearn pickle holds a {type(estimator).__name__}: only classifiers and regressors are served "
        f"from a pickle; {_how_to_serve(_steps(estimator)[-1])}"
    )


def _how_to_serve(final: Any) -> str:
    """The fix for a pickled model of another kind: its ONNX conversion, whose postprocessing forwardpass has (the
    kind is not inferred from the pickle: a clusterer's or an outlier detector's outputs mean nothing by their name)."""
    from sklearn.base import ClusterMixin, OutlierMixin

    convert = "convert it with skl2onnx (to_onnx(model, X[:1])) and serve the .onnx"
    if isinstance(final, ClusterMixin):
        return f"{convert} with config.yaml postprocess: {{kind: cluster, output: scores}}"
    if isinstance(final, OutlierMixin):  # skl2onnx's scores are decision_function's: below 0 is an outlier
        return f"{convert} with config.yaml postprocess: {{kind: anomaly, output: scores, anomalous: below}}"
    return f"{convert}: its outputs come back raw"


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
        with warnings.catch_warnings():
            # skl2onnx reads every SVC's Platt scaling attributes, which scikit-learn 1.9 deprecated: not the user's
            warnings.filterwarnings("ignore", r"Attribute `prob[AB]_` was deprecated", FutureWarning)
            if classifier:
                try:
                    options = {"zipmap": False}
                    return convert_sklearn(estimator, initial_types=inputs, target_opset=opsets, options=options)
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
