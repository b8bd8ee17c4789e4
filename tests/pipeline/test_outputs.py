"""Postprocessing of one output row, each result compared with a direct numpy computation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import forwardpass
from forwardpass.config import (
    AnomalyConfig,
    ClassificationConfig,
    ClusterConfig,
    EmbeddingConfig,
    ModelConfig,
    RegressionConfig,
    TargetScaling,
)
from forwardpass.errors import ConfigError, NonFiniteError
from forwardpass.pipeline import Pipeline
from forwardpass.pipeline.outputs import Classify, Cluster, DetectAnomaly, Embed, RawOutputs, Regress, load_labels
from forwardpass.repository import default_repository
from forwardpass.tensor import DataType, TensorSpec

LOGITS = np.array([1.5, -0.3, 4.0, 0.2, 4.0, -2.0], dtype=np.float32)  # a tie at 2 and 4
LABELS = ["ant", "bee", "cat", "dog", "eel", "fox"]


def numpy_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


def classify(activation: str = "softmax", top_k: int = 3, labels: list[str] | None = LABELS) -> Classify:
    config = ClassificationConfig(kind="classification", activation=activation, top_k=top_k)  # type: ignore[arg-type]
    return Classify(config, "logits", labels)


@pytest.mark.parametrize(
    ("activation", "expected"),
    [
        ("softmax", numpy_softmax(LOGITS)),
        ("sigmoid", 1.0 / (1.0 + np.exp(-LOGITS.astype(np.float64)))),
        ("none", LOGITS.astype(np.float64)),
    ],
)
def test_activation_scores(activation: str, expected: np.ndarray):
    result = classify(activation, top_k=6)({"logits": LOGITS}, {})
    scores = {item["index"]: item["score"] for item in result["top_k"]}
    np.testing.assert_allclose([scores[i] for i in range(6)], expected, rtol=1e-12, atol=1e-12)


def test_top_k_is_ordered_best_first_ties_by_index():
    result = classify(top_k=4)({"logits": LOGITS}, {})
    assert [item["index"] for item in result["top_k"]] == [2, 4, 0, 3]
    assert [item["label"] for item in result["top_k"]] == ["cat", "eel", "ant", "dog"]
    scores = [item["score"] for item in result["top_k"]]
    assert scores == sorted(scores, reverse=True)
    assert (result["label"], result["index"]) == ("cat", 2)
    assert result["score"] == scores[0]


def test_top_k_override_and_clip():
    head = classify(top_k=3)
    assert len(head({"logits": LOGITS}, {})["top_k"]) == 3
    assert len(head({"logits": LOGITS}, {}, top_k=1)["top_k"]) == 1
    assert len(head({"logits": LOGITS}, {}, top_k=100)["top_k"]) == 6


def test_softmax_is_stable_for_large_logits():
    result = classify(top_k=2, labels=None)({"logits": np.array([1000.0, 1001.0], np.float32)}, {})
    assert result["index"] == 1
    np.testing.assert_allclose(result["score"], 1.0 / (1.0 + np.exp(-1.0)), rtol=1e-12)
    assert all(np.isfinite(item["score"]) for item in result["top_k"])


def test_without_labels_the_index_is_the_label():
    result = classify(labels=None)({"logits": LOGITS}, {})
    assert result["label"] == "2"
    short = classify(labels=["ant", "bee"])({"logits": np.array([0.0, 0.1, 5.0])}, {})
    assert short["label"] == "2"


def test_a_single_sigmoid_logit():
    result = classify("sigmoid", top_k=5, labels=["spam"])({"logits": np.array([[0.7]], np.float32)}, {})
    assert result["label"] == "spam"
    np.testing.assert_allclose(result["score"], 1.0 / (1.0 + np.exp(-0.7)), rtol=1e-6)
    assert len(result["top_k"]) == 1


def test_labels_from_a_file_and_inline(tmp_path: Path):
    (tmp_path / "labels.txt").write_text("ant\n\n  bee  \ncat\n", encoding="utf-8")
    assert load_labels("labels.txt", tmp_path) == ["ant", "bee", "cat"]
    assert load_labels(["x", "y"], tmp_path) == ["x", "y"]
    assert load_labels(None, tmp_path) is None


def test_labels_file_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.txt"):
        load_labels("missing.txt", tmp_path)
    (tmp_path.parent / "outside.txt").write_text("a\n")
    with pytest.raises(ConfigError, match="outside the model folder"):
        load_labels("../outside.txt", tmp_path)


def test_pipeline_wires_labels_file_and_output(tmp_path: Path):
    (tmp_path / "labels.txt").write_text("\n".join(LABELS), encoding="utf-8")
    config = ModelConfig.from_dict(
        {"postprocess": {"kind": "classification", "output": "probs", "labels": "labels.txt", "top_k": 2}}
    )
    outputs = [TensorSpec("embedding", DataType.FP32, (-1, 4)), TensorSpec("probs", DataType.FP32, (-1, 6))]
    pipeline = Pipeline(config, [TensorSpec("x", DataType.FP32, (-1, 4))], outputs, tmp_path)
    result = pipeline.postprocess({"embedding": np.zeros(4, np.float32), "probs": LOGITS}, {})
    assert [item["label"] for item in result["top_k"]] == ["cat", "eel"]


def test_pipeline_refuses_an_unknown_output(tmp_path: Path):
    config = ModelConfig.from_dict({"postprocess": {"kind": "regression", "output": "nope"}})
    with pytest.raises(ConfigError, match=r"no tensor 'nope'.*\['y'\]"):
        Pipeline(config, [TensorSpec("x", DataType.FP32, (-1, 1))], [TensorSpec("y", DataType.FP32, (-1, 1))], tmp_path)


@pytest.mark.parametrize(
    ("target", "undo"),
    [
        (None, lambda v: v),
        (TargetScaling(transform="standard", mean=150.0, std=75.0), lambda v: v * 75.0 + 150.0),
        (TargetScaling(transform="minmax", min=-3.0, max=5.0), lambda v: v * 8.0 - 3.0),
    ],
    ids=["none", "standard", "minmax"],
)
def test_regression_undoes_target_scaling(target: TargetScaling | None, undo):
    head = Regress(RegressionConfig(kind="regression", target=target), "y")
    raw = np.array([0.25], np.float32)
    assert head({"y": raw}, {})["value"] == pytest.approx(undo(0.25), rel=1e-12)
    multi = np.array([0.25, -1.5, 2.0], np.float32)
    np.testing.assert_allclose(head({"y": multi}, {})["value"], undo(multi.astype(np.float64)), rtol=1e-12)


def test_regression_matches_sklearn_inverse_transform():
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    y = np.array([[12.0], [40.0], [7.5], [99.0], [63.0]])
    predicted = np.array([[-0.4], [1.3]])
    standard = StandardScaler().fit(y)
    head = Regress(
        RegressionConfig(
            kind="regression",
            target=TargetScaling(transform="standard", mean=float(standard.mean_[0]), std=float(standard.scale_[0])),
        ),
        "y",
    )
    got = [head({"y": row}, {})["value"] for row in predicted]
    np.testing.assert_allclose(got, standard.inverse_transform(predicted).ravel(), rtol=1e-12)
    minmax = MinMaxScaler().fit(y)
    head = Regress(
        RegressionConfig(
            kind="regression",
            target=TargetScaling(transform="minmax", min=float(minmax.data_min_[0]), max=float(minmax.data_max_[0])),
        ),
        "y",
    )
    got = [head({"y": row}, {})["value"] for row in predicted]
    np.testing.assert_allclose(got, minmax.inverse_transform(predicted).ravel(), rtol=1e-12)


@pytest.fixture
def tokens() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(7, 5)).astype(np.float32)  # 7 tokens, hidden size 5
    mask = np.array([1, 1, 1, 1, 0, 0, 0], np.int64)
    return vectors, mask


@pytest.mark.parametrize("normalize", [False, True])
def test_mean_pooling_uses_the_mask(tokens: tuple[np.ndarray, np.ndarray], normalize: bool):
    vectors, mask = tokens
    head = Embed(EmbeddingConfig(kind="embedding", pooling="mean", normalize=normalize), "hidden")
    got = np.array(head({"hidden": vectors}, {"attention_mask": mask})["embedding"])
    expected = vectors[:4].astype(np.float64).mean(axis=0)
    if normalize:
        expected = expected / np.linalg.norm(expected)
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_mean_pooling_with_a_custom_mask_name(tokens: tuple[np.ndarray, np.ndarray]):
    vectors, mask = tokens
    head = Embed(EmbeddingConfig(kind="embedding", pooling="mean", mask="mask"), "hidden")
    got = head({"hidden": vectors}, {"mask": mask, "attention_mask": np.ones(7, np.int64)})["embedding"]
    np.testing.assert_allclose(got, vectors[:4].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_cls_pooling_takes_the_first_token(tokens: tuple[np.ndarray, np.ndarray]):
    vectors, mask = tokens
    head = Embed(EmbeddingConfig(kind="embedding", pooling="cls", normalize=True), "hidden")
    got = head({"hidden": vectors}, {"attention_mask": mask})["embedding"]
    np.testing.assert_allclose(got, vectors[0] / np.linalg.norm(vectors[0].astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_no_pooling_returns_the_vector():
    vector = np.array([3.0, 4.0], np.float32)
    assert Embed(EmbeddingConfig(kind="embedding"), "e")({"e": vector}, {})["embedding"] == [3.0, 4.0]
    normalized = Embed(EmbeddingConfig(kind="embedding", normalize=True), "e")({"e": vector}, {})["embedding"]
    np.testing.assert_allclose(normalized, [0.6, 0.8], rtol=1e-6)


def test_raw_outputs_are_lists():
    result = RawOutputs()({"a": np.array([1.0, 2.0], np.float32), "b": np.array(3, np.int64)}, {})
    assert result == {"outputs": {"a": [1.0, 2.0], "b": 3}}


@pytest.mark.parametrize(
    "head",
    [
        classify(),
        Regress(RegressionConfig(kind="regression"), "logits"),
        DetectAnomaly(AnomalyConfig(kind="anomaly", threshold=0.0), "logits"),
        Cluster(ClusterConfig(kind="cluster"), "logits", None),
    ],
    ids=["classification", "regression", "anomaly", "cluster"],
)
def test_a_nan_output_is_refused_not_read_as_a_label_value_or_flag(head: Any):
    """Each answered: class 0 with score NaN, value NaN, 'not anomalous', cluster 0."""
    with pytest.raises(NonFiniteError, match="the model answered NaN in 'logits' for this item"):
        head({"logits": np.array([np.nan, 1.0], np.float32)}, {})


def test_a_missing_value_given_to_a_model_that_cannot_take_one_is_refused(tmp_path: Path):
    """The bundled logistic regression with a column declared `missing: model`: a record without it was answered
    'malignant' with score NaN."""
    folder = shutil.copytree(default_repository() / "breast_cancer", tmp_path / "breast_cancer")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    first = config["preprocess"]["columns"][0]
    first.pop("impute")
    first["missing"] = "model"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    model = forwardpass.load(folder, warmup=0)
    record: dict[str, float | None] = {column["name"]: 1.0 for column in config["preprocess"]["columns"]}
    assert model.predict(record)["label"] in ("malignant", "benign")
    record[first["name"]] = None
    with pytest.raises(NonFiniteError, match="the model answered NaN"):
        model.predict(record)
