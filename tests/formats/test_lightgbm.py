"""LightGBM text model files: real boosted trees, saved, run natively and converted by onnxmltools, compared with
LightGBM's own output on held-out rows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import onnx
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.model_selection import train_test_split

import forwardpass
from forwardpass.backends.base import Session
from forwardpass.backends.ort import OrtSession
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError, InputError, MissingExtraError
from forwardpass.formats import ServeMode, convert_model
from forwardpass.formats.base import ConvertOptions, LoadOptions
from forwardpass.formats.lightgbm import LIGHTGBM
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


def train(loader: Callable[..., Any], objective: str, **params: Any) -> tuple[lightgbm.Booster, np.ndarray]:
    train_x, train_y, test_x = split(loader)
    settings = {"objective": objective, "num_leaves": 8, "num_threads": 1, "verbose": -1, **params}
    return lightgbm.train(settings, lightgbm.Dataset(train_x, train_y), num_boost_round=ROUNDS), test_x


def both_sessions(path: Path, tmp_path: Path, opset: int = 17) -> tuple[Session, OrtSession, dict[str, Any]]:
    native = LIGHTGBM.open_native(path, ENGINE, LoadOptions())
    provenance = LIGHTGBM.convert(path, tmp_path / "converted.onnx", LoadOptions(), ConvertOptions(opset=opset))
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


def classifier_expected(booster: lightgbm.Booster, features: np.ndarray) -> dict[str, np.ndarray]:
    probabilities = np.asarray(booster.predict(features))
    if probabilities.ndim == 1:
        probabilities = np.column_stack([1 - probabilities, probabilities])
    return {"label": probabilities.argmax(axis=1).astype(np.int64), "probabilities": probabilities}


@pytest.mark.parametrize("filename", ["model.txt", "lightgbm_model"])
def test_binary_classifier_native_and_converted_match_lightgbm(filename: str, tmp_path: Path) -> None:
    booster, test_x = train(load_breast_cancer, "binary")
    path = tmp_path / filename
    booster.save_model(path)
    assert LIGHTGBM.detect(path)

    native, converted, provenance = both_sessions(path, tmp_path)
    for session in (native, converted):
        assert [spec.name for spec in session.outputs] == ["label", "probabilities"]
        assert session.inputs[0].shape == (-1, test_x.shape[1])
        assert [spec.shape[0] for spec in session.outputs] == [-1, -1]  # onnxmltools wrote label as [1]
        assert_matches_framework(session, test_x, classifier_expected(booster, test_x))
    assert native.providers == ["lightgbm:cpu"]
    assert provenance["objective"] == "binary" and provenance["converter"] == "onnxmltools"
    assert {"lightgbm", "onnxmltools"} <= set(provenance["tool_versions"])
    assert provenance["opsets"]["ai.onnx"] == 17


def test_multiclass_probabilities_match_lightgbm(tmp_path: Path) -> None:
    booster, test_x = train(load_iris, "multiclass", num_class=3)
    booster.save_model(tmp_path / "iris.txt")

    native, converted, _ = both_sessions(tmp_path / "iris.txt", tmp_path)
    for session in (native, converted):
        assert session.outputs[1].shape == (-1, 3)
        assert_matches_framework(session, test_x, classifier_expected(booster, test_x))


def test_regressor_native_and_converted_match_lightgbm(tmp_path: Path) -> None:
    booster, test_x = train(load_diabetes, "regression")
    booster.save_model(tmp_path / "diabetes.txt")

    native, converted, _ = both_sessions(tmp_path / "diabetes.txt", tmp_path)
    expected = {"variable": np.asarray(booster.predict(test_x)).reshape(-1, 1)}
    for session in (native, converted):
        assert [(spec.name, spec.shape) for spec in session.outputs] == [("variable", (-1, 1))]
        assert_matches_framework(session, test_x, expected)


def test_model_saved_by_the_scikit_learn_wrapper(tmp_path: Path) -> None:
    train_x, train_y, test_x = split(load_iris)
    classifier = lightgbm.LGBMClassifier(n_estimators=ROUNDS, num_leaves=8, n_jobs=1, verbose=-1)
    classifier.fit(train_x, train_y)
    classifier.booster_.save_model(tmp_path / "wrapper.txt")

    native, converted, _ = both_sessions(tmp_path / "wrapper.txt", tmp_path)
    expected = {
        "label": np.asarray(classifier.predict(test_x)).astype(np.int64),
        "probabilities": np.asarray(classifier.predict_proba(test_x)),
    }
    for session in (native, converted):
        assert_matches_framework(session, test_x, expected)


def test_categorical_splits_native_and_converted_match_lightgbm(tmp_path: Path) -> None:
    rows = np.random.default_rng(0)
    features = np.column_stack([rows.integers(0, 6, 400), rows.normal(size=400)]).astype(np.float32)
    targets = (np.isin(features[:, 0], [1, 4]) ^ (features[:, 1] > 0.5)).astype(int)
    settings = {"objective": "binary", "num_leaves": 8, "min_data_per_group": 5, "verbose": -1, "num_threads": 1}
    dataset = lightgbm.Dataset(features[:300], targets[:300], categorical_feature=[0])
    booster = lightgbm.train(settings, dataset, num_boost_round=ROUNDS)
    booster.save_model(tmp_path / "categorical.txt")
    assert b"cat_boundaries" in (tmp_path / "categorical.txt").read_bytes()

    native, converted, _ = both_sessions(tmp_path / "categorical.txt", tmp_path)
    for session in (native, converted):
        assert_matches_framework(session, features[300:], classifier_expected(booster, features[300:]))


@pytest.mark.parametrize("opset", [13, 21])
def test_converted_model_has_the_requested_opset(opset: int, tmp_path: Path) -> None:
    booster, test_x = train(load_breast_cancer, "binary")
    booster.save_model(tmp_path / "model.txt")
    _, converted, provenance = both_sessions(tmp_path / "model.txt", tmp_path, opset=opset)

    assert provenance["opsets"]["ai.onnx"] == opset
    model = onnx.load(tmp_path / "converted.onnx")
    assert {entry.version for entry in model.opset_import if entry.domain == ""} == {opset}
    assert_matches_framework(converted, test_x, classifier_expected(booster, test_x))


def test_an_objective_onnxmltools_cannot_convert_is_refused_in_one_line(tmp_path: Path) -> None:
    booster, test_x = train(load_diabetes, "fair")
    booster.save_model(tmp_path / "fair.txt")

    native = LIGHTGBM.open_native(tmp_path / "fair.txt", ENGINE, LoadOptions())
    assert_matches_framework(native, test_x, {"variable": np.asarray(booster.predict(test_x)).reshape(-1, 1)})
    with pytest.raises(ConfigError) as refused:
        LIGHTGBM.convert(tmp_path / "fair.txt", tmp_path / "out.onnx", LoadOptions(), ConvertOptions())
    message = str(refused.value)
    assert str(tmp_path / "fair.txt") in message and "lightgbm" in message and "\n" not in message


def test_detects_lightgbm_text_by_its_first_line(tmp_path: Path) -> None:
    (tmp_path / "model.txt").write_text("tree\nversion=v4\n")
    (tmp_path / "windows.txt").write_bytes(b"tree\r\nversion=v4\r\n")
    (tmp_path / "notes.txt").write_text("trees are nice\n")
    assert LIGHTGBM.detect(tmp_path / "model.txt")
    assert LIGHTGBM.detect(tmp_path / "windows.txt")
    assert not LIGHTGBM.detect(tmp_path / "notes.txt")
    assert not LIGHTGBM.detect(tmp_path)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    booster, _ = train(load_iris, "multiclass", num_class=3)
    path = tmp_path_factory.mktemp("saved") / "model.txt"
    booster.save_model(path)
    return path.read_bytes()


def child_out_of_range(data: bytes) -> bytes:
    """The first one-digit child node index set to 9, past its tree's nodes (the length kept, so the trees' byte sizes
    hold): LightGBM loads it, then segfaults predicting with it."""
    for match in re.finditer(rb"\n(?:left|right)_child=([^\n]*)", data):
        values = match.group(1).split(b" ")
        for at, value in enumerate(values):
            if len(value) == 1:  # one digit: an inner node
                values[at] = b"9"
                return data[: match.start(1)] + b" ".join(values) + data[match.end(1) :]
    raise AssertionError("no tree with an inner node")


# Damage that made LightGBM crash the process (abort, segfault) or read garbage, loading or predicting.
DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "cut in the first tree": lambda data: data[: data.index(b"\nTree=0") + 40],
    "cut in the header": lambda data: data[:60],
    "cut in the parameters": lambda data: data[: data.index(b"\nparameters:") + 200],
    "a byte lost inside a tree": lambda data: (
        data[: data.index(b"\nTree=0") + 30] + data[data.index(b"\nTree=0") + 31 :]
    ),
    "a child index out of range": child_out_of_range,
    "empty": lambda data: b"",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_model_is_one_line_naming_file_and_format(damage: str, saved_model: bytes, tmp_path: Path) -> None:
    path = tmp_path / "broken.txt"
    path.write_bytes(DAMAGE[damage](saved_model))
    for attempt in (
        lambda: LIGHTGBM.open_native(path, ENGINE, LoadOptions()).run({"input": np.ones((8, 4), np.float32)}),
        lambda: LIGHTGBM.convert(path, tmp_path / "out.onnx", LoadOptions(), ConvertOptions()),
    ):
        with pytest.raises(ConfigError) as failed:
            attempt()
        message = str(failed.value)
        assert message.startswith(f"{path}: ") and "lightgbm" in message and "\n" not in message
        assert failed.value.exit_code == 2


def test_an_index_past_the_tree_is_named(saved_model: bytes, tmp_path: Path) -> None:
    (tmp_path / "model.txt").write_bytes(child_out_of_range(saved_model))
    with pytest.raises(ConfigError, match=r"corrupt lightgbm model: tree \d+ points to a node it does not have"):
        LIGHTGBM.open_native(tmp_path / "model.txt", ENGINE, LoadOptions())


def test_missing_lightgbm_names_the_extra(saved_model: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model.txt").write_bytes(saved_model)
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # what an environment without lightgbm looks like
    with pytest.raises(MissingExtraError, match=r"pip install 'forwardpass\[lightgbm\]'"):
        LIGHTGBM.open_native(tmp_path / "model.txt", ENGINE, LoadOptions())


def test_forwardpass_load_serves_it_natively_or_converted(tmp_path: Path) -> None:
    booster, test_x = train(load_diabetes, "regression")
    booster.save_model(tmp_path / "model.txt")
    expected = {"variable": np.asarray(booster.predict(test_x)).reshape(-1, 1)}
    for serve in ("native", "onnx"):
        model = forwardpass.load(tmp_path / "model.txt", serve=serve, intra_op_threads=1)
        assert model.serving.format == "lightgbm" and model.serving.engine == serve
        assert_matches_framework(model.session, test_x, expected)


def test_thresholds_are_lowered_so_the_converted_model_splits_like_lightgbm(tmp_path: Path) -> None:
    """LightGBM splits at double thresholds; ONNX at float32 ones. Inputs exactly at each threshold rounded to
    float32 take the same branch in both only because the converted model's thresholds were rounded down."""
    booster, _ = train(load_diabetes, "regression")
    booster.save_model(tmp_path / "model.txt")
    native, converted, _ = both_sessions(tmp_path / "model.txt", tmp_path)

    batches = LIGHTGBM.parity_samples(tmp_path / "model.txt", native.inputs, 64)
    values = np.concatenate([batch["input"] for batch in batches])
    assert values.shape == (64, 10)
    assert_matches_framework(converted, values, {"variable": np.asarray(booster.predict(values)).reshape(-1, 1)})


def test_features_lightgbm_reads_as_zero_split_alike_converted(tmp_path: Path) -> None:
    """LightGBM reads |x| <= 1e-35 as 0 and splits a feature of -1, 0, 1 at -1e-35 and 1e-35."""
    rows = np.random.default_rng(0)
    features = rows.integers(-1, 2, (400, 2)).astype(np.float32)
    targets = features[:, 0] * 2 + features[:, 1] + rows.normal(0, 0.1, 400)
    settings = {"objective": "regression", "num_leaves": 6, "min_data_in_leaf": 5, "verbose": -1, "num_threads": 1}
    booster = lightgbm.train(settings, lightgbm.Dataset(features, targets), num_boost_round=ROUNDS)
    booster.save_model(tmp_path / "zeros.txt")
    assert b"1.0000000180025095e-35" in (tmp_path / "zeros.txt").read_bytes()

    tiny = np.array([-1, -2e-35, -1e-35, -5e-36, 0, 5e-36, 1e-35, 2e-35, 1], np.float32)
    grid = np.array([[a, b] for a in tiny for b in tiny], np.float32)
    _, converted, _ = both_sessions(tmp_path / "zeros.txt", tmp_path)
    assert_matches_framework(converted, grid, {"variable": np.asarray(booster.predict(grid)).reshape(-1, 1)})


def test_conversion_proves_parity_and_the_command_names_the_damage(saved_model: bytes, tmp_path: Path) -> None:
    (tmp_path / "model.txt").write_bytes(saved_model)
    provenance = convert_model(tmp_path / "model.txt", tmp_path / "out" / "model")
    assert json.loads((tmp_path / "out" / "model.json").read_text()) == provenance
    assert provenance["source"]["format"] == "lightgbm" and provenance["parity"]["top1_agreement"] == 1.0

    (tmp_path / "broken.txt").write_bytes(saved_model[: len(saved_model) // 3])
    assert_one_error(
        run_cli("convert", str(tmp_path / "broken.txt"), "-o", str(tmp_path / "no")), "broken.txt", "lightgbm"
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
    classifier = lightgbm.LGBMClassifier(n_estimators=ROUNDS, min_child_samples=3, verbose=-1).fit(
        categorical.frame, categorical.target
    )
    path = tmp_path / "categorical.txt"
    classifier.booster_.save_model(path)

    model = forwardpass.load(path, intra_op_threads=1)
    scores = class_scores(model.predict(categorical.records))
    np.testing.assert_allclose(scores, classifier.predict_proba(categorical.held_out), atol=TOLERANCE)
    with pytest.raises(InputError, match=r"column 'colour': 'purple' is not one of \['red', 'green', 'blue'\]"):
        model.predict({**categorical.records[0], "colour": "purple"})


def test_category_lists_it_cannot_match_to_its_categorical_features_are_refused(
    categorical: Categorical, tmp_path: Path
) -> None:
    """An integer column declared categorical beside the DataFrame's category columns: the file records one list of
    categories per category column, but not which features they are."""
    frame = categorical.frame.assign(amount=(categorical.frame["amount"] > 0).astype(int))
    classifier = lightgbm.LGBMClassifier(n_estimators=ROUNDS, min_child_samples=3, verbose=-1)
    classifier.fit(frame, categorical.target, categorical_feature=["amount", "size", "colour"])
    classifier.booster_.save_model(tmp_path / "mixed.txt")
    with pytest.raises(ConfigError, match=r"lists 2 category columns for 3 categorical features, so which list codes"):
        forwardpass.load(tmp_path / "mixed.txt")


@pytest.mark.parametrize("serve", ["native", "onnx"])
def test_a_missing_value_takes_the_branch_the_model_learnt_for_it(serve: ServeMode, tmp_path: Path) -> None:
    frame = load_breast_cancer(as_frame=True).frame.iloc[:, [0, 1, 2, 3, -1]]
    frame.columns = ["radius", "texture", "perimeter", "area", "target"]
    frame.loc[::3, "radius"] = np.nan
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1}, lightgbm.Dataset(frame.iloc[:, :4], frame.target), 10
    )
    booster.save_model(tmp_path / "holes.txt")

    model = forwardpass.load(tmp_path / "holes.txt", serve=serve, intra_op_threads=1)
    records = [
        {key: None if np.isnan(value) else value for key, value in row.items()}
        for row in frame.iloc[:12, :4].to_dict("records")
    ]
    answers = model.predict(records)
    np.testing.assert_allclose(class_scores(answers)[:, 1], booster.predict(frame.iloc[:12, :4]), atol=TOLERANCE)


def test_a_categorical_feature_of_numeric_codes_answers_as_lightgbm_for_any_value(tmp_path: Path) -> None:
    """LightGBM truncates a categorical feature's value to a whole code (2.7 is category 2); onnxmltools' conversion
    compared it with each category exactly, so the converted model, which auto served (2.5x faster), answered 2.7 as
    a category never seen (-2.63 where LightGBM answers -1.61, exit 0)."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((600, 4))
    features[:, 3] = rng.integers(0, 6, 600)
    target = features[:, 0] + np.array([0, 3, -2, 5, 1, -4])[features[:, 3].astype(int)]
    names = ["a", "b", "c", "shop"]
    data = lightgbm.Dataset(features, target, categorical_feature=[3], feature_name=names)
    booster = lightgbm.train({"verbose": -1, "min_data_per_group": 5, "cat_smooth": 1}, data, 30)
    booster.save_model(tmp_path / "model.txt")
    codes = [0, 2, 2.7, 3.2, 9, -1, -0.5, 5.99, np.nan]
    rows = np.array([[0.3, 0.1, -0.2, code] for code in codes])
    records = [{**dict(zip(names, row, strict=True)), "shop": None if np.isnan(row[3]) else row[3]} for row in rows]

    for serve in ("onnx", "native"):
        model = forwardpass.load(tmp_path / "model.txt", serve=serve, intra_op_threads=1)
        values = [answer["value"] for answer in model.predict(records)]
        np.testing.assert_allclose(values, booster.predict(rows), rtol=1e-5)
