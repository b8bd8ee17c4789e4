"""scikit-learn pickles/joblib: real fitted estimators, saved, run natively and converted by skl2onnx, compared with
scikit-learn's own output on held-out rows."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import pytest
import xgboost
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier, SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

import forwardpass
from forwardpass.backends.base import Session
from forwardpass.backends.ort import OrtSession
from forwardpass.config import ClassificationConfig, EngineConfig
from forwardpass.errors import ConfigError, InputError, MissingExtraError
from forwardpass.formats import ServeMode, convert_model
from forwardpass.formats.base import ConvertOptions, LoadOptions
from forwardpass.formats.sklearn import SKLEARN
from tests.formats.categorical_data import Categorical, class_scores

TRUSTED = LoadOptions(trust_pickle=True)
ENGINE = EngineConfig(intra_op_threads=1)
TOLERANCE = 1e-4


def split(loader: Callable[..., Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train features, train targets, held-out features (float64 holding float32 values, >= 32 rows: the
    converted model casts its FP64 input to FP32 as scikit-learn's trees do, so both see the same numbers)."""
    features, targets = loader(return_X_y=True)
    train_x, test_x, train_y, _ = train_test_split(features, targets, test_size=0.3, random_state=0)
    assert len(test_x) >= 32
    return train_x.astype(np.float32).astype(np.float64), train_y, test_x.astype(np.float32).astype(np.float64)


def save(estimator: Any, path: Path) -> Path:
    if path.suffix == ".joblib":
        joblib.dump(estimator, path)
    else:
        path.write_bytes(pickle.dumps(estimator))
    return path


def both_sessions(path: Path, tmp_path: Path) -> tuple[Session, OrtSession, dict[str, Any]]:
    native = SKLEARN.open_native(path, ENGINE, TRUSTED)
    provenance = SKLEARN.convert(path, tmp_path / "converted.onnx", TRUSTED, ConvertOptions())
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


CLASSIFIERS = {
    "binary pipeline with a scaler (.joblib)": (load_breast_cancer, "model.joblib", "lr"),
    "multi-class pipeline with a scaler (.pkl)": (load_iris, "model.pkl", "lr"),
    "random forest (.pickle)": (load_breast_cancer, "model.pickle", "forest"),
}


def make_classifier(kind: str) -> Any:
    if kind == "lr":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0)


@pytest.mark.parametrize("case", list(CLASSIFIERS))
def test_classifier_native_and_converted_match_sklearn(case: str, tmp_path: Path) -> None:
    loader, filename, kind = CLASSIFIERS[case]
    train_x, train_y, test_x = split(loader)
    estimator = make_classifier(kind).fit(train_x, train_y)
    path = save(estimator, tmp_path / filename)
    assert SKLEARN.detect(path)

    native, converted, provenance = both_sessions(path, tmp_path)
    expected = {"label": estimator.predict(test_x).astype(np.int64), "probabilities": estimator.predict_proba(test_x)}
    for session in (native, converted):
        assert [spec.name for spec in session.outputs] == ["label", "probabilities"]
        assert session.inputs[0].shape == (-1, train_x.shape[1])
        assert session.outputs[1].shape == (-1, len(estimator.classes_))
        assert_matches_framework(session, test_x, expected)
    assert native.providers == ["sklearn:cpu"]
    assert provenance["converter"] == "skl2onnx"
    assert {"scikit-learn", "skl2onnx"} <= set(provenance["tool_versions"])
    assert provenance["opsets"]["ai.onnx"] == ConvertOptions().opset


def test_regressor_native_and_converted_match_sklearn(tmp_path: Path) -> None:
    train_x, train_y, test_x = split(load_diabetes)
    estimator = make_pipeline(StandardScaler(), Ridge(alpha=0.5)).fit(train_x, train_y)
    path = save(estimator, tmp_path / "model.joblib")

    native, converted, _ = both_sessions(path, tmp_path)
    expected = {"variable": estimator.predict(test_x).reshape(-1, 1)}
    for session in (native, converted):
        assert [(spec.name, spec.shape) for spec in session.outputs] == [("variable", (-1, 1))]
        assert_matches_framework(session, test_x, expected)


def test_classifier_without_predict_proba_gives_its_decision_scores(tmp_path: Path) -> None:
    train_x, train_y, test_x = split(load_iris)
    estimator = LinearSVC(random_state=0).fit(StandardScaler().fit_transform(train_x), train_y)
    path = save(estimator, tmp_path / "svc.pkl")

    native, converted, _ = both_sessions(path, tmp_path)
    expected = {
        "label": estimator.predict(test_x).astype(np.int64),
        "probabilities": estimator.decision_function(test_x),
    }
    for session in (native, converted):
        assert_matches_framework(session, test_x, expected)


BOTH: tuple[ServeMode, ...] = ("native", "onnx")
WITHOUT_PROBABILITIES: dict[str, tuple[Callable[..., Any], Callable[[], Any], tuple[ServeMode, ...]]] = {
    "binary LinearSVC": (load_breast_cancer, lambda: LinearSVC(random_state=0), BOTH),
    "multi-class LinearSVC": (load_iris, lambda: LinearSVC(random_state=0), BOTH),
    # skl2onnx gives a binary SVC's two scores, where scikit-learn gives one: natively (auto's choice) only
    "binary SVC": (load_breast_cancer, lambda: SVC(), ("native",)),
    "multi-class SVC": (load_iris, lambda: SVC(), BOTH),  # refused as 'SVC(probability=True)' under sklearn 1.9
    "binary RidgeClassifier": (load_breast_cancer, lambda: RidgeClassifier(), BOTH),
    "multi-class SGDClassifier(loss='hinge')": (load_iris, lambda: SGDClassifier(loss="hinge", random_state=0), BOTH),
}


@pytest.mark.parametrize("case", list(WITHOUT_PROBABILITIES))
def test_a_classifier_without_probabilities_answers_its_decision_scores_as_they_are(case: str, tmp_path: Path) -> None:
    """A binary one's single decision score went through a sigmoid and was answered as two probabilities (a
    LinearSVC's 10.4 margin as 0.99997), though nothing calibrated it; a multi-class one's scores were answered raw.
    Both answer the decision function now: for two classes, the second class's score and its negative."""
    loader, make, serves = WITHOUT_PROBABILITIES[case]
    train_x, train_y, test_x = split(loader)
    scaler = StandardScaler().fit(train_x)
    estimator = make().fit(scaler.transform(train_x), train_y)
    path = save(estimator, tmp_path / "model.pkl")
    features = scaler.transform(test_x)
    decision = estimator.decision_function(features)
    expected = np.column_stack([-decision, decision]) if decision.ndim == 1 else decision
    for serve in serves:
        model = forwardpass.load(path, trust_pickle=True, serve=serve, intra_op_threads=1)
        assert isinstance(model.config.postprocess, ClassificationConfig)
        assert model.config.postprocess.activation == "decision"
        answers = model.predict(list(features))
        labels = [answer["label"] for answer in answers]
        assert labels == [str(label) for label in estimator.predict(features)], serve
        scores = np.array([[top["score"] for top in sorted(a["top_k"], key=lambda t: t["index"])] for a in answers])
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4, err_msg=serve)
        model.close()


def test_string_class_labels_survive_both_ways(tmp_path: Path) -> None:
    train_x, train_y, test_x = split(load_iris)
    names = np.array(["setosa", "versicolor", "virginica"])
    estimator = make_classifier("lr").fit(train_x, names[train_y])
    path = save(estimator, tmp_path / "named.pkl")

    native, converted, _ = both_sessions(path, tmp_path)
    for session in (native, converted):
        labels = session.run({"input": test_x})["label"]
        assert labels.tolist() == estimator.predict(test_x).tolist()


def test_pipeline_ending_in_xgboost_converts_through_onnxmltools(tmp_path: Path) -> None:
    train_x, train_y, test_x = split(load_breast_cancer)
    estimator = make_pipeline(xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1)).fit(train_x, train_y)
    path = save(estimator, tmp_path / "xgb_pipeline.joblib")

    native, converted, provenance = both_sessions(path, tmp_path)
    expected = {"label": estimator.predict(test_x).astype(np.int64), "probabilities": estimator.predict_proba(test_x)}
    for session in (native, converted):
        assert_matches_framework(session, test_x, expected)
    assert "xgboost" in provenance["tool_versions"]


def test_a_lower_opset_is_honoured(tmp_path: Path) -> None:
    train_x, train_y, _ = split(load_iris)
    path = save(make_classifier("lr").fit(train_x, train_y), tmp_path / "model.pkl")
    provenance = SKLEARN.convert(path, tmp_path / "old.onnx", TRUSTED, ConvertOptions(opset=13))
    assert provenance["opsets"]["ai.onnx"] == 13
    default_domain = {entry.version for entry in onnx.load(tmp_path / "old.onnx").opset_import if not entry.domain}
    assert default_domain == {13}


@pytest.fixture
def fitted_pickle(tmp_path: Path) -> Path:
    train_x, train_y, _ = split(load_iris)
    return save(make_classifier("lr").fit(train_x, train_y), tmp_path / "model.pkl")


def test_pickles_are_refused_unless_trusted(fitted_pickle: Path, tmp_path: Path) -> None:
    assert LoadOptions().trust_pickle is False
    for attempt in (
        lambda: SKLEARN.open_native(fitted_pickle, ENGINE, LoadOptions()),
        lambda: SKLEARN.convert(fitted_pickle, tmp_path / "out.onnx", LoadOptions(), ConvertOptions()),
    ):
        with pytest.raises(ConfigError) as refused:
            attempt()
        message = str(refused.value)
        assert message.startswith(f"refusing to unpickle {fitted_pickle}")
        assert "--trust-pickle" in message and "trust_pickle=True" in message
        assert "\n" not in message and refused.value.exit_code == 2
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_pickle_is_one_line_naming_file_and_format(damage: str, fitted_pickle: Path) -> None:
    data = fitted_pickle.read_bytes()
    broken = {"truncated": data[: len(data) // 2], "garbage": b"\x80\x04not a pickle at all", "empty": b""}[damage]
    fitted_pickle.write_bytes(broken)
    with pytest.raises(ConfigError) as failed:
        SKLEARN.open_native(fitted_pickle, ENGINE, TRUSTED)
    message = str(failed.value)
    assert str(fitted_pickle) in message and "sklearn" in message and "\n" not in message
    assert failed.value.exit_code == 2


def test_a_pickle_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    path = save({"weights": [1, 2, 3]}, tmp_path / "dict.pkl")
    with pytest.raises(ConfigError, match="holds a dict, not a fitted model"):
        SKLEARN.open_native(path, ENGINE, TRUSTED)


def test_a_pipeline_ending_in_a_transformer_is_refused_naming_its_last_step(tmp_path: Path) -> None:
    from sklearn.decomposition import PCA

    features, _ = load_iris(return_X_y=True)
    path = save(make_pipeline(StandardScaler(), PCA(2)).fit(features), tmp_path / "reduce.joblib")
    with pytest.raises(ConfigError, match="holds a Pipeline ending in a PCA, which predicts nothing: a transformer"):
        SKLEARN.open_native(path, ENGINE, TRUSTED)


@pytest.mark.parametrize(
    ("kind", "postprocess"),
    [("kmeans", "{kind: cluster, output: scores}"), ("forest", "{kind: anomaly, output: scores, anomalous: below}")],
)
def test_a_clusterer_or_outlier_detector_is_refused_with_the_way_to_serve_it(
    kind: str, postprocess: str, tmp_path: Path
) -> None:
    """The refusal said 'only classifiers and regressors', leaving a KMeans' or an IsolationForest's owner no way on."""
    from sklearn.cluster import KMeans
    from sklearn.ensemble import IsolationForest

    features, _ = load_iris(return_X_y=True)
    model = KMeans(3, n_init=1, random_state=0) if kind == "kmeans" else IsolationForest(n_estimators=5, random_state=0)
    path = save(make_pipeline(StandardScaler(), model).fit(features), tmp_path / f"{kind}.joblib")
    with pytest.raises(ConfigError) as refused:
        SKLEARN.open_native(path, ENGINE, TRUSTED)
    fix = "convert it with skl2onnx (to_onnx(model, X[:1])) and serve the .onnx with config.yaml postprocess: "
    assert str(refused.value).endswith(fix + postprocess)


def test_wrong_width_input_is_an_input_error(fitted_pickle: Path) -> None:
    session = SKLEARN.open_native(fitted_pickle, ENGINE, TRUSTED)
    with pytest.raises(InputError, match="refused the input"):
        session.run({"input": np.zeros((2, 7), np.float32)})
    with pytest.raises(InputError, match="missing input 'input'"):
        session.run({"x": np.zeros((2, 4), np.float32)})


def test_detects_only_pickle_suffixes(tmp_path: Path) -> None:
    for name in ("a.pkl", "b.pickle", "c.joblib", "d.PKL"):
        (tmp_path / name).write_bytes(b"x")
        assert SKLEARN.detect(tmp_path / name)
    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / "folder.pkl").mkdir()
    assert not SKLEARN.detect(tmp_path / "model.onnx")
    assert not SKLEARN.detect(tmp_path / "folder.pkl")


def test_missing_scikit_learn_names_the_extra(fitted_pickle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # what an environment without scikit-learn looks like
    with pytest.raises(MissingExtraError, match=r"pip install 'forwardpass\[sklearn\]'"):
        SKLEARN.open_native(fitted_pickle, ENGINE, TRUSTED)


def test_forwardpass_load_serves_it_natively_or_converted(tmp_path: Path) -> None:
    train_x, train_y, test_x = split(load_breast_cancer)
    estimator = make_classifier("lr").fit(train_x, train_y)
    path = save(estimator, tmp_path / "model.joblib")
    with pytest.raises(ConfigError, match=r"pass --trust-pickle \(trust_pickle=True\)"):
        forwardpass.load(path)

    expected = {"label": estimator.predict(test_x).astype(np.int64), "probabilities": estimator.predict_proba(test_x)}
    for serve in ("native", "onnx"):
        model = forwardpass.load(path, trust_pickle=True, serve=serve, intra_op_threads=1)
        assert model.serving.format == "sklearn" and model.serving.engine == serve
        assert_matches_framework(model.session, test_x, expected)
        np.testing.assert_array_equal(model.infer({"input": test_x})["label"], expected["label"])


def test_conversion_needs_the_trust_flag_and_then_proves_parity(fitted_pickle: Path, tmp_path: Path) -> None:
    refused = run_cli("convert", str(fitted_pickle), "-o", str(tmp_path / "refused"))
    assert_one_error(refused, str(fitted_pickle), "--trust-pickle")

    provenance = convert_model(fitted_pickle, tmp_path / "out" / "model", LoadOptions(trust_pickle=True))
    assert json.loads((tmp_path / "out" / "model.json").read_text()) == provenance
    assert provenance["source"]["format"] == "sklearn" and provenance["converter"] == "skl2onnx"
    assert provenance["parity"]["max_abs_diff"] <= TOLERANCE and provenance["parity"]["top1_agreement"] == 1.0

    fitted_pickle.write_bytes(fitted_pickle.read_bytes()[:100])
    broken = run_cli("convert", str(fitted_pickle), "-o", str(tmp_path / "broken"), "--trust-pickle")
    assert_one_error(broken, str(fitted_pickle), "sklearn")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "forwardpass"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def assert_one_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit code 2 and one `error:` line holding every word, no traceback."""
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert all(word in errors[0] for word in words), errors[0]


def test_hist_gradient_boosting_on_dataframe_categories_takes_them_as_text_and_numbers(
    categorical: Categorical, tmp_path: Path
) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    classifier = HistGradientBoostingClassifier(max_iter=10, categorical_features="from_dtype")
    classifier.fit(categorical.frame, categorical.target)
    joblib.dump(classifier, tmp_path / "categories.joblib")

    model = forwardpass.load(tmp_path / "categories.joblib", trust_pickle=True, intra_op_threads=1)
    scores = class_scores(model.predict(categorical.records))
    np.testing.assert_allclose(scores, classifier.predict_proba(categorical.held_out), atol=TOLERANCE)


@pytest.mark.parametrize("kind", ["forest", "wrapper"])
def test_a_classifier_of_several_targets_at_once_is_refused_at_load(kind: str, tmp_path: Path) -> None:
    from sklearn.multioutput import MultiOutputClassifier

    features, target = load_breast_cancer(return_X_y=True)
    targets = np.column_stack([target, 1 - target, (features[:, 0] > 14).astype(int)])
    classifier = (
        RandomForestClassifier(n_estimators=3, random_state=0)
        if kind == "forest"
        else MultiOutputClassifier(LogisticRegression(max_iter=50))
    )
    with warnings.catch_warnings(action="ignore"):  # the logistic regression stops before it converges
        joblib.dump(classifier.fit(features, targets), tmp_path / "labels.joblib")
    with pytest.raises(
        ConfigError, match=r"labels.joblib: the \w+ predicts 3 targets at once; .* one classifier per target"
    ):
        forwardpass.load(tmp_path / "labels.joblib", trust_pickle=True)


def test_a_boolean_target_keeps_its_class_names(tmp_path: Path) -> None:
    features, target = load_breast_cancer(return_X_y=True)
    classifier = make_pipeline(StandardScaler(), LogisticRegression()).fit(features, target.astype(bool))
    joblib.dump(classifier, tmp_path / "flag.joblib")

    model = forwardpass.load(tmp_path / "flag.joblib", trust_pickle=True, intra_op_threads=1)
    answers = model.predict(list(features[:20]))
    assert [answer["label"] for answer in answers] == [str(label) for label in classifier.predict(features[:20])]
    assert {answer["label"] for answer in answers} == {"False", "True"}


@pytest.mark.parametrize("library", ["lightgbm", "xgboost"])
def test_a_pickled_tree_wrapper_fitted_on_dataframe_categories_codes_them_as_it_was_fitted(
    library: str, categorical: Categorical, tmp_path: Path
) -> None:
    """The wrapper codes a DataFrame's categories itself; a record's 20 (the second of 10/20/30) is code 1, not 20."""
    import lightgbm

    classifier = (
        lightgbm.LGBMClassifier(n_estimators=10, min_child_samples=5, verbose=-1)
        if library == "lightgbm"
        else xgboost.XGBClassifier(n_estimators=10, enable_categorical=True, tree_method="hist")
    )
    joblib.dump(classifier.fit(categorical.frame, categorical.target), tmp_path / "categories.joblib")

    for serve in ("native", "auto"):
        model = forwardpass.load(tmp_path / "categories.joblib", trust_pickle=True, serve=serve, intra_op_threads=1)
        scores = class_scores(model.predict(categorical.records))
        np.testing.assert_allclose(scores, classifier.predict_proba(categorical.held_out), atol=TOLERANCE)
    with pytest.raises(InputError, match="'colour': 'purple' is not one of"):
        model.predict({**categorical.records[0], "colour": "purple"})


def test_an_svc_whose_probabilities_and_predict_disagree_is_refused_at_load(tmp_path: Path) -> None:
    """SVC(probability=True) scores classes by Platt scaling but predicts by its votes: the class of the highest
    probability is not always the one it predicts, so no answer can be both its label and its scores."""
    from sklearn.datasets import make_classification
    from sklearn.svm import SVC

    features, target = make_classification(400, 6, n_informative=3, n_classes=3, flip_y=0.3, random_state=0)
    with warnings.catch_warnings(action="ignore", category=FutureWarning):  # probability=True is deprecated in 1.9
        classifier = make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)).fit(features, target)
        highest = classifier.classes_[classifier.predict_proba(features).argmax(axis=1)]
    assert (highest != classifier.predict(features)).any()
    joblib.dump(classifier, tmp_path / "svc.joblib")

    with pytest.raises(ConfigError, match=r"svc.joblib: its SVC\(probability=True\) .* CalibratedClassifierCV"):
        forwardpass.load(tmp_path / "svc.joblib", trust_pickle=True)


def test_a_modified_huber_classifier_of_several_classes_is_refused_at_load(tmp_path: Path) -> None:
    """Its probabilities clip each class's decision to [-1, 1]: where every class scores below -1 they are all equal,
    and the most probable class (the first) is not the one it predicts (the highest decision)."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import SGDClassifier

    features, target = make_classification(400, 6, n_informative=3, n_classes=3, flip_y=0.3, random_state=0)
    classifier = SGDClassifier(loss="modified_huber", random_state=0).fit(features, target)
    assert (
        classifier.classes_[classifier.predict_proba(features).argmax(axis=1)] != classifier.predict(features)
    ).any()
    joblib.dump(classifier, tmp_path / "huber.joblib")

    with pytest.raises(
        ConfigError,
        match=r"huber.joblib: its SGDClassifier\(loss='modified_huber'\) .* as SGDClassifier\(loss='log_loss'\)",
    ):
        forwardpass.load(tmp_path / "huber.joblib", trust_pickle=True)


def test_a_classifier_without_scores_is_refused_at_load_in_one_line(tmp_path: Path) -> None:
    from sklearn.ensemble import VotingClassifier

    features, target = load_iris(return_X_y=True)
    members = [("linear", LogisticRegression(max_iter=500)), ("forest", RandomForestClassifier(3, random_state=0))]
    joblib.dump(VotingClassifier(members, voting="hard").fit(features, target), tmp_path / "votes.joblib")

    done = run_cli("predict", str(tmp_path / "votes.joblib"), "--trust-pickle", "[5.1, 3.5, 1.4, 0.2]")
    assert_one_error(done, "votes.joblib", "VotingClassifier", "neither probabilities nor decision scores")


def test_a_pipeline_whose_encoder_refuses_unknown_categories_converts(categorical: Categorical, tmp_path: Path) -> None:
    """OneHotEncoder's default refuses a category it never saw: the parity inputs hold only the ones it knows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    frame = categorical.frame.astype({"colour": str, "size": int})
    # numbers first: after the encoder's float output skl2onnx gives the classifier a float output where ONNX Runtime
    # expects double, and the conversion is refused
    numbers = ("numbers", StandardScaler(), ["amount", "size"])
    encode = ColumnTransformer([numbers, ("colour", OneHotEncoder(), ["colour"])])
    classifier = make_pipeline(encode, LogisticRegression()).fit(frame, categorical.target)
    joblib.dump(classifier, tmp_path / "encoded.joblib")

    model = forwardpass.load(tmp_path / "encoded.joblib", trust_pickle=True, serve="onnx", intra_op_threads=1)
    scores = class_scores(model.predict(categorical.records))
    np.testing.assert_allclose(scores, classifier.predict_proba(frame.iloc[:12]), atol=TOLERANCE)
    with pytest.raises(InputError, match="Unknown Category"):  # ONNX Runtime's OneHotEncoder, as converted
        model.predict({**categorical.records[0], "colour": "purple"})


@pytest.mark.parametrize(("kind", "serve"), [("imputer", "native"), ("imputer", "onnx"), ("boosting", "native")])
def test_a_missing_value_the_model_fills_itself_reaches_it(kind: str, serve: ServeMode, tmp_path: Path) -> None:
    """A pipeline's own SimpleImputer, or HistGradientBoosting's branch for missing values: the model's answer."""
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer

    data = load_breast_cancer(as_frame=True)
    frame = data.data.iloc[:, :4].astype(np.float32).astype(np.float64)
    frame.columns = ["radius", "texture", "perimeter", "area"]
    frame.loc[::3, "radius"] = np.nan
    classifier = (
        make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression())
        if kind == "imputer"
        else HistGradientBoostingClassifier(max_iter=10)
    ).fit(frame, data.target)
    joblib.dump(classifier, tmp_path / "holes.joblib")

    model = forwardpass.load(tmp_path / "holes.joblib", trust_pickle=True, serve=serve, intra_op_threads=1)
    records = [
        {key: None if pd.isna(value) else value for key, value in row.items()}
        for row in frame.iloc[:12].to_dict("records")
    ]
    scores = class_scores(model.predict(records))
    np.testing.assert_allclose(scores, classifier.predict_proba(frame.iloc[:12]), atol=TOLERANCE)


def reviews() -> tuple[Any, np.ndarray]:
    """Shop reviews: a free-text review, stars, a shop code, and two columns every model below drops (a user id and
    a text note)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    words = ["good", "bad", "great", "awful", "fine", "meh"]
    frame = pd.DataFrame(
        {
            "review": [" ".join(rng.choice(words, 4)) for _ in range(120)],
            "stars": rng.integers(1, 6, 120).astype(float),
            "shop": rng.choice(["north", "south"], 120),
            "user_id": rng.integers(1000, 9999, 120),
            "note": rng.choice(["gift", "repeat", "first"], 120),
        }
    )
    target = (frame["review"].str.count("good|great") + frame["stars"] > 4).astype(int).to_numpy()
    return frame, target


@pytest.mark.parametrize("serve", ["native", "auto"])
def test_a_pipeline_reading_free_text_and_dropping_columns_answers_as_sklearn(serve: ServeMode, tmp_path: Path) -> None:
    """Every record was refused ("column 'review': 'meh awful awful bad' is not a number"): only columns an encoder
    learnt string categories for were taken as text, so neither a TF-IDF column nor a dropped text column was."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import OneHotEncoder

    frame, target = reviews()
    columns = ColumnTransformer(
        [
            ("words", TfidfVectorizer(), "review"),
            ("stars", StandardScaler(), ["stars"]),
            ("shop", OneHotEncoder(handle_unknown="ignore"), ["shop"]),
        ],
        remainder="drop",
    )
    classifier = make_pipeline(columns, LogisticRegression()).fit(frame, target)
    joblib.dump(classifier, tmp_path / "reviews.joblib")
    held_out = frame.iloc[:10]
    records = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for _, row in held_out.iterrows()]

    model = forwardpass.load(tmp_path / "reviews.joblib", trust_pickle=True, serve=serve, intra_op_threads=1)
    np.testing.assert_allclose(class_scores(model.predict(records)), classifier.predict_proba(held_out), atol=TOLERANCE)


@pytest.mark.parametrize("serve", ["native", "auto"])
def test_columns_passed_through_to_a_model_that_takes_missing_values_take_them(
    serve: ServeMode, tmp_path: Path
) -> None:
    """A record with no 'bmi' was refused ("column 'bmi' is empty (no impute value declared)") although the
    ColumnTransformer passes it through to HistGradientBoosting, which routes a missing value itself."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.preprocessing import OrdinalEncoder

    data = load_diabetes(as_frame=True)
    frame = data.data[["age", "bmi", "bp"]].assign(shop=np.random.default_rng(0).choice(["north", "south"], 442))
    frame.loc[frame.index % 9 == 0, "bmi"] = np.nan
    columns = ColumnTransformer([("shop", OrdinalEncoder(), ["shop"])], remainder="passthrough")
    regressor = make_pipeline(columns, HistGradientBoostingRegressor(max_iter=20)).fit(frame, data.target)
    joblib.dump(regressor, tmp_path / "progression.joblib")
    held_out = frame.iloc[:12].assign(bmi=[None, *frame["bmi"].iloc[1:12]])
    records = [
        {name: (None if pd.isna(value) else value) for name, value in row.items()} for _, row in held_out.iterrows()
    ]

    model = forwardpass.load(tmp_path / "progression.joblib", trust_pickle=True, serve=serve, intra_op_threads=1)
    values = [answer["value"] for answer in model.predict(records)]
    np.testing.assert_allclose(values, regressor.predict(held_out.astype({"bmi": float})), rtol=1e-5)


def test_a_text_column_the_pipeline_imputes_takes_an_empty_value_as_sklearn_does(tmp_path: Path) -> None:
    """A record with no 'shop' was refused ("column 'shop' is empty (no impute value declared)") although the
    pipeline's SimpleImputer fills it with the most frequent shop before its encoder reads it."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    frame, target = reviews()
    frame = frame[["stars", "shop"]].astype({"shop": object})
    frame.loc[frame.index % 7 == 0, "shop"] = np.nan
    shops = make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore"))
    columns = ColumnTransformer([("stars", StandardScaler(), ["stars"]), ("shop", shops, ["shop"])])
    classifier = make_pipeline(columns, LogisticRegression()).fit(frame, target)
    joblib.dump(classifier, tmp_path / "shops.joblib")
    held_out = frame.iloc[:8]
    records = [
        {name: (None if pd.isna(value) else value) for name, value in row.items()} for _, row in held_out.iterrows()
    ]
    assert any(record["shop"] is None for record in records)

    model = forwardpass.load(tmp_path / "shops.joblib", trust_pickle=True, intra_op_threads=1)
    np.testing.assert_allclose(class_scores(model.predict(records)), classifier.predict_proba(held_out), atol=TOLERANCE)
