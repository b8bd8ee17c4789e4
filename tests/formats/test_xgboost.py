"""XGBoost JSON/UBJSON model files: real boosted trees, saved, run natively and converted by onnxmltools, compared
with XGBoost's own output on held-out rows."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import xgboost
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.model_selection import train_test_split

import forwardpass
from forwardpass.backends.base import Session
from forwardpass.backends.ort import OrtSession
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, InputError, MissingExtraError
from forwardpass.formats import ServeMode, convert_model
from forwardpass.formats.base import ConvertOptions, LoadOptions
from forwardpass.formats.xgboost import XGBOOST
from tests.formats.categorical_data import Categorical, class_scores

ENGINE = EngineConfig(intra_op_threads=1)
TOLERANCE = 1e-4
ROUNDS = 20


def split(loader: Callable[..., Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train features, train targets, held-out features (float32, >= 32 rows)."""
    features, targets = loader(return_X_y=True)
    train_x, test_x, train_y, _ = train_test_split(features, targets, test_size=0.3, random_state=0)
    assert len(test_x) >= 32
    return train_x.astype(np.float32), train_y, test_x.astype(np.float32)


def train(loader: Callable[..., Any], objective: str, **params: Any) -> tuple[xgboost.Booster, np.ndarray]:
    train_x, train_y, test_x = split(loader)
    depth = {} if params.get("booster") == "gblinear" else {"max_depth": 3}  # a linear booster has no depth
    settings = {"objective": objective, **depth, "nthread": 1, **params}
    return xgboost.train(settings, xgboost.DMatrix(train_x, train_y), num_boost_round=ROUNDS), test_x


def both_sessions(path: Path, tmp_path: Path, opset: int = 17) -> tuple[Session, OrtSession, dict[str, Any]]:
    native = XGBOOST.open_native(path, ENGINE, LoadOptions())
    provenance = XGBOOST.convert(path, tmp_path / "converted.onnx", LoadOptions(), ConvertOptions(opset=opset))
    return native, OrtSession(tmp_path / "converted.onnx", ENGINE), provenance


def run_in_batches(session: Session, features: np.ndarray, size: int) -> dict[str, np.ndarray]:
    parts = [session.run({"input": features[i : i + size]}) for i in range(0, len(features), size)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def assert_matches_framework(session: Session, features: np.ndarray, expected: dict[str, np.ndarray]) -> None:
    for size in (1, 16, len(features)):
        got = run_in_batches(session, features, size)
        assert set(got) == set(expected), session.providers
        for name, want in expected.items():
            if want.dtype.kind == "f":
                diff = float(np.max(np.abs(got[name] - want)))
                assert diff <= TOLERANCE, f"{session.providers} {name} batch {size}: max abs diff {diff}"
            else:
                np.testing.assert_array_equal(got[name], want, err_msg=f"{session.providers} {name} batch {size}")


def binary_expected(booster: xgboost.Booster, features: np.ndarray) -> dict[str, np.ndarray]:
    positive = booster.predict(xgboost.DMatrix(features))
    return {"label": (positive > 0.5).astype(np.int64), "probabilities": np.column_stack([1 - positive, positive])}


@pytest.mark.parametrize("filename", ["model.json", "model.ubj", "model.bin"])
def test_binary_classifier_native_and_converted_match_xgboost(filename: str, tmp_path: Path) -> None:
    booster, test_x = train(load_breast_cancer, "binary:logistic")
    path = tmp_path / filename
    # .json: JSON; anything else: UBJSON, recognised by its content (xgboost warns that .bin gets its default format)
    with warnings.catch_warnings(action="ignore", category=UserWarning):
        booster.save_model(path)
    assert XGBOOST.detect(path)

    native, converted, provenance = both_sessions(path, tmp_path)
    for session in (native, converted):
        assert [spec.name for spec in session.outputs] == ["label", "probabilities"]
        assert session.inputs[0].shape == (-1, test_x.shape[1])
        assert_matches_framework(session, test_x, binary_expected(booster, test_x))
    assert native.providers == ["xgboost:cpu"]
    assert provenance["objective"] == "binary:logistic" and provenance["converter"] == "onnxmltools"
    assert {"xgboost", "onnxmltools"} <= set(provenance["tool_versions"])


def test_multiclass_probabilities_match_xgboost(tmp_path: Path) -> None:
    booster, test_x = train(load_iris, "multi:softprob", num_class=3)
    booster.save_model(tmp_path / "iris.ubj")

    native, converted, _ = both_sessions(tmp_path / "iris.ubj", tmp_path)
    probabilities = booster.predict(xgboost.DMatrix(test_x))
    expected = {"label": probabilities.argmax(axis=1).astype(np.int64), "probabilities": probabilities}
    for session in (native, converted):
        assert session.outputs[1].shape == (-1, 3)
        assert_matches_framework(session, test_x, expected)


def test_softmax_objective_gives_xgboost_classes_and_margins(tmp_path: Path) -> None:
    booster, test_x = train(load_iris, "multi:softmax", num_class=3)
    booster.save_model(tmp_path / "iris.json")

    native, converted, _ = both_sessions(tmp_path / "iris.json", tmp_path)
    matrix = xgboost.DMatrix(test_x)
    expected = {
        "label": booster.predict(matrix).astype(np.int64),
        "probabilities": booster.predict(matrix, output_margin=True),
    }
    for session in (native, converted):
        assert_matches_framework(session, test_x, expected)


@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_softmax_objective_predicts_its_classes_with_the_softmax_of_its_margins(
    serve: ServeMode, tmp_path: Path
) -> None:
    booster, test_x = train(load_iris, "multi:softmax", num_class=3)
    booster.save_model(tmp_path / "iris.json")
    matrix = xgboost.DMatrix(test_x)
    margins = booster.predict(matrix, output_margin=True)
    probabilities = np.exp(margins - margins.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)

    model = forwardpass.load(tmp_path / "iris.json", serve=serve, intra_op_threads=1)
    answers = model.predict(list(test_x))
    assert model.serving.engine == serve
    assert [answer["label"] for answer in answers] == [str(int(label)) for label in booster.predict(matrix)]
    np.testing.assert_allclose(class_scores(answers), probabilities, atol=1e-5)


def test_regressor_native_and_converted_match_xgboost(tmp_path: Path) -> None:
    booster, test_x = train(load_diabetes, "reg:squarederror")
    booster.save_model(tmp_path / "diabetes.json")

    native, converted, _ = both_sessions(tmp_path / "diabetes.json", tmp_path)
    expected = {"variable": booster.predict(xgboost.DMatrix(test_x)).reshape(-1, 1)}
    for session in (native, converted):
        assert [(spec.name, spec.shape) for spec in session.outputs] == [("variable", (-1, 1))]
        assert_matches_framework(session, test_x, expected)


def test_model_saved_by_the_scikit_learn_wrapper_with_feature_names(tmp_path: Path) -> None:
    train_x, train_y, test_x = split(load_breast_cancer)
    names = [name.replace(" ", "_") for name in load_breast_cancer().feature_names]
    classifier = xgboost.XGBClassifier(n_estimators=ROUNDS, max_depth=3, n_jobs=1).fit(train_x, train_y)
    classifier.get_booster().feature_names = names
    classifier.save_model(tmp_path / "named.json")

    native, converted, _ = both_sessions(tmp_path / "named.json", tmp_path)
    expected = {"label": classifier.predict(test_x).astype(np.int64), "probabilities": classifier.predict_proba(test_x)}
    for session in (native, converted):
        assert_matches_framework(session, test_x, expected)


def test_a_ranker_saved_by_the_scikit_learn_wrapper_answers_its_scores(tmp_path: Path) -> None:
    """XGBRanker records its estimator type in the file: the conversion loaded it into an XGBRegressor, which raised
    TypeError, so `predict` ended in a traceback (exit 1) and `serve` did not start."""
    train_x, train_y, test_x = split(load_diabetes)
    ranker = xgboost.XGBRanker(n_estimators=ROUNDS, max_depth=3, n_jobs=1, objective="rank:ndcg")
    half = len(train_x) // 2  # two query groups
    ranker.fit(train_x, (train_y > np.median(train_y)).astype(int), group=[half, len(train_x) - half])
    ranker.save_model(tmp_path / "ranker.json")

    native, converted, _ = both_sessions(tmp_path / "ranker.json", tmp_path)
    expected = {"variable": ranker.predict(test_x).reshape(-1, 1)}
    for session in (native, converted):
        assert_matches_framework(session, test_x, expected)


@pytest.mark.parametrize("loader", [load_breast_cancer, load_iris])
def test_early_stopped_model_answers_with_its_best_iteration_as_the_estimator_does(
    loader: Callable[..., Any], tmp_path: Path
) -> None:
    train_x, train_y, test_x = split(loader)
    fit_x, stop_x, fit_y, stop_y = train_test_split(train_x, train_y, test_size=0.3, random_state=0)
    classifier = xgboost.XGBClassifier(
        n_estimators=200, learning_rate=0.8, max_depth=4, early_stopping_rounds=2, n_jobs=1
    ).fit(fit_x, fit_y, eval_set=[(stop_x, stop_y)], verbose=False)
    rounds = classifier.get_booster().num_boosted_rounds()
    assert classifier.best_iteration + 1 < rounds  # the trees past the best are kept in the file
    classifier.save_model(tmp_path / "stopped.json")
    reloaded = xgboost.XGBClassifier()
    reloaded.load_model(tmp_path / "stopped.json")  # what the user's own code answers from the file
    expected = {"label": reloaded.predict(test_x).astype(np.int64), "probabilities": reloaded.predict_proba(test_x)}
    every_tree = reloaded.predict_proba(test_x, iteration_range=(0, rounds))
    assert np.abs(every_tree - expected["probabilities"]).max() > 0.01  # the test tells the two apart

    native, converted, _ = both_sessions(tmp_path / "stopped.json", tmp_path)
    for session in (native, converted):
        assert_matches_framework(session, test_x, expected)


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_converted_model_has_the_requested_opset_and_a_dynamic_batch(opset: int, tmp_path: Path) -> None:
    booster, test_x = train(load_breast_cancer, "binary:logistic")
    booster.save_model(tmp_path / "model.json")
    _, converted, provenance = both_sessions(tmp_path / "model.json", tmp_path, opset=opset)

    assert provenance["opsets"]["ai.onnx"] == opset
    model = onnx.load(tmp_path / "converted.onnx")
    assert {entry.version for entry in model.opset_import if entry.domain == ""} == {opset}
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert_matches_framework(converted, test_x, binary_expected(booster, test_x))


def test_a_linear_booster_runs_natively_and_its_conversion_is_refused_in_one_line(tmp_path: Path) -> None:
    booster, test_x = train(load_breast_cancer, "binary:logistic", booster="gblinear")
    booster.save_model(tmp_path / "linear.json")

    native = XGBOOST.open_native(tmp_path / "linear.json", ENGINE, LoadOptions())
    assert_matches_framework(native, test_x, binary_expected(booster, test_x))
    with pytest.raises(ConfigError) as refused:
        XGBOOST.convert(tmp_path / "linear.json", tmp_path / "out.onnx", LoadOptions(), ConvertOptions())
    message = str(refused.value)
    assert str(tmp_path / "linear.json") in message and "xgboost" in message and "\n" not in message


def test_detects_xgboost_json_by_content_not_by_suffix(tmp_path: Path) -> None:
    booster, _ = train(load_breast_cancer, "binary:logistic")
    booster.save_model(tmp_path / "model.json")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 384}))
    (tmp_path / "net-symbol.json").write_text(json.dumps({"nodes": [], "arg_nodes": [], "heads": []}))
    (tmp_path / "anything.ubj").write_bytes(b"")

    assert XGBOOST.detect(tmp_path / "model.json")
    assert XGBOOST.detect(tmp_path / "anything.ubj")
    assert not XGBOOST.detect(tmp_path / "config.json")
    assert not XGBOOST.detect(tmp_path / "net-symbol.json")
    assert not XGBOOST.detect(tmp_path)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    booster, _ = train(load_breast_cancer, "binary:logistic")
    folder = tmp_path_factory.mktemp("saved")
    booster.save_model(folder / "model.json")
    booster.save_model(folder / "model.ubj")
    return {suffix: (folder / f"model{suffix}").read_bytes() for suffix in (".json", ".ubj")}


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
@pytest.mark.parametrize("keep", [0.5, 0.9, 12])
def test_truncated_model_is_one_line_naming_file_and_format(
    suffix: str, keep: float, saved_models: dict[str, bytes], tmp_path: Path
) -> None:
    data = saved_models[suffix]
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else int(keep)])
    assert XGBOOST.detect(path)
    for attempt in (
        lambda: XGBOOST.open_native(path, ENGINE, LoadOptions()),
        lambda: XGBOOST.convert(path, tmp_path / "out.onnx", LoadOptions(), ConvertOptions()),
    ):
        with pytest.raises(ConfigError) as failed:
            attempt()
        message = str(failed.value)
        assert message.startswith(f"{path}: ") and "xgboost" in message and "\n" not in message
        assert failed.value.exit_code == 2


def test_damaged_ubjson_never_takes_the_process_down(saved_models: dict[str, bytes], tmp_path: Path) -> None:
    """XGBoost's UBJSON reader segfaults on some damaged files; each must end as a session or a ConfigError."""
    data = saved_models[".ubj"]
    random = np.random.default_rng(0)
    outcomes = {"loaded": 0, "refused": 0}
    for trial, position in enumerate(random.integers(0, len(data), size=24)):
        path = tmp_path / f"damaged{trial}.ubj"
        damaged = (
            data[:position] if trial % 2 else data[:position] + bytes([data[position] ^ 0x5A]) + data[position + 1 :]
        )
        path.write_bytes(damaged)
        try:
            XGBOOST.open_native(path, ENGINE, LoadOptions())
            outcomes["loaded"] += 1
        except ConfigError as refused:
            assert str(path) in str(refused) and "\n" not in str(refused)
            outcomes["refused"] += 1
    assert outcomes["refused"] >= 12  # every truncation at least


def test_missing_xgboost_names_the_extra(
    saved_models: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "model.json").write_bytes(saved_models[".json"])
    monkeypatch.setitem(sys.modules, "xgboost", None)  # what an environment without xgboost looks like
    with pytest.raises(MissingExtraError, match=r"pip install 'forwardpass\[xgboost\]'"):
        XGBOOST.open_native(tmp_path / "model.json", ENGINE, LoadOptions())


def test_forwardpass_load_serves_it_natively_or_converted(tmp_path: Path) -> None:
    booster, test_x = train(load_iris, "multi:softprob", num_class=3)
    booster.save_model(tmp_path / "model.ubj")
    probabilities = booster.predict(xgboost.DMatrix(test_x))
    expected = {"label": probabilities.argmax(axis=1).astype(np.int64), "probabilities": probabilities}
    for serve in ("native", "onnx"):
        model = forwardpass.load(tmp_path / "model.ubj", serve=serve, intra_op_threads=1)
        assert model.serving.format == "xgboost" and model.serving.engine == serve
        assert_matches_framework(model.session, test_x, expected)


def test_parity_inputs_sit_on_the_model_thresholds(tmp_path: Path) -> None:
    booster, _ = train(load_breast_cancer, "binary:logistic")
    booster.save_model(tmp_path / "model.json")
    trees = json.loads((tmp_path / "model.json").read_text())["learner"]["gradient_booster"]["model"]["trees"]
    thresholds = {np.float32(value) for tree in trees for value in tree["split_conditions"]}
    native = XGBOOST.open_native(tmp_path / "model.json", ENGINE, LoadOptions())

    batches = XGBOOST.parity_samples(tmp_path / "model.json", native.inputs, 32)
    values = np.concatenate([batch["input"] for batch in batches])
    assert values.shape == (32, 30) and [len(batch["input"]) for batch in batches][:2] == [1, 3]
    on_threshold = np.isin(values, np.array(sorted(thresholds), np.float32))
    assert 0.2 < on_threshold.mean() < 0.6  # a third at a threshold, the rest a float32 step either side, or unused


def test_conversion_proves_parity_and_the_command_names_the_damage(
    saved_models: dict[str, bytes], tmp_path: Path
) -> None:
    (tmp_path / "model.ubj").write_bytes(saved_models[".ubj"])
    provenance = convert_model(tmp_path / "model.ubj", tmp_path / "out" / "model")
    assert json.loads((tmp_path / "out" / "model.json").read_text()) == provenance
    assert provenance["source"]["format"] == "xgboost" and provenance["parity"]["top1_agreement"] == 1.0

    (tmp_path / "broken.ubj").write_bytes(saved_models[".ubj"][:5000])
    assert_one_error(
        run_cli("convert", str(tmp_path / "broken.ubj"), "-o", str(tmp_path / "no")), "broken.ubj", "xgboost"
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "forwardpass"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def assert_one_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit code 2 and one `error:` line holding every word, no traceback."""
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert all(word in errors[0] for word in words), errors[0]


def test_categorical_features_take_the_categories_the_file_records(categorical: Categorical, tmp_path: Path) -> None:
    classifier = xgboost.XGBClassifier(n_estimators=ROUNDS, enable_categorical=True, n_jobs=1).fit(
        categorical.frame, categorical.target
    )
    path = tmp_path / "categorical.json"
    classifier.save_model(path)

    model = forwardpass.load(path, intra_op_threads=1)
    scores = class_scores(model.predict(categorical.records))
    np.testing.assert_allclose(scores, classifier.predict_proba(categorical.held_out), atol=TOLERANCE)
    with pytest.raises(InputError, match=r"column 'colour': 'purple' is not one of \['red', 'green', 'blue'\]"):
        model.predict({**categorical.records[0], "colour": "purple"})


@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_a_missing_value_takes_the_branch_the_model_learnt_for_it(serve: ServeMode, tmp_path: Path) -> None:
    features, targets = load_breast_cancer(return_X_y=True)
    features = features[:, :4].astype(np.float32)
    features[::3, 0] = np.nan
    booster = xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(features, targets), 10)
    booster.feature_names = ["radius", "texture", "perimeter", "area"]
    booster.save_model(tmp_path / "holes.json")

    model = forwardpass.load(tmp_path / "holes.json", serve=serve, intra_op_threads=1)
    records = [
        {
            "radius": None if np.isnan(row[0]) else float(row[0]),
            **dict(zip(booster.feature_names[1:], map(float, row[1:]), strict=True)),
        }
        for row in features[:12]
    ]
    answers = model.predict(records)
    expected = booster.predict(xgboost.DMatrix(features[:12], feature_names=booster.feature_names))
    np.testing.assert_allclose(class_scores(answers)[:, 1], expected, atol=TOLERANCE)


def test_a_categorical_feature_of_numeric_codes_answers_as_xgboost_for_any_value(tmp_path: Path) -> None:
    """XGBoost truncates a categorical feature's value to a whole code (2.7 is category 2); onnxmltools' conversion
    compared it with each category exactly, so the converted model, which auto served (7x faster), answered 2.7 as a
    category never seen (5.34 where XGBoost answers -1.72, exit 0)."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((600, 4))
    features[:, 3] = rng.integers(0, 6, 600)
    target = features[:, 0] + np.array([0, 3, -2, 5, 1, -4])[features[:, 3].astype(int)]
    names, types = ["a", "b", "c", "shop"], ["q", "q", "q", "c"]
    data = xgboost.DMatrix(features, target, feature_names=names, feature_types=types, enable_categorical=True)
    booster = xgboost.train({"tree_method": "hist", "max_cat_to_onehot": 1}, data, 30)
    booster.save_model(tmp_path / "model.json")
    rows = np.array([[0.3, 0.1, -0.2, code] for code in [0, 2, 2.7, 3.2, 9, -1, -0.5, 5.99, np.nan]])
    records = [{**dict(zip(names, row, strict=True)), "shop": None if np.isnan(row[3]) else row[3]} for row in rows]
    expected = booster.predict(xgboost.DMatrix(rows, feature_names=names, feature_types=types, enable_categorical=True))

    for serve in ("onnx", "native"):
        model = forwardpass.load(tmp_path / "model.json", serve=serve, intra_op_threads=1)
        values = [answer["value"] for answer in model.predict(records)]
        np.testing.assert_allclose(values, expected, rtol=1e-5)
