"""A repository of the task-type models, trained here from data scikit-learn ships, seeds fixed, converted with
skl2onnx (or written with onnx.helper), each beside the reference estimator the tests compare it with.

triage     LogisticRegression on 4 breast-cancer columns: decision rules, input schema, reference profile
anomaly    IsolationForest on the wine data: score = decision_function, anomalous below 0
cluster    KMeans (3) on iris: distances to the centres
recommend  factor model: scores = history @ V @ V.T (V from a truncated SVD of inked digit pixels), 64 items
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from forwardpass.quality import build_profile

TRIAGE_COLUMNS = ["mean radius", "mean texture", "mean smoothness", "mean concavity"]
TRIAGE_LABELS = ["malignant", "benign"]
TRIAGE_DECISION = {
    "score": "score",
    "rules": [
        {"label": "malignant", "at_least": 0.9, "action": "refer"},
        {"label": "malignant", "at_least": 0.5, "action": "review"},
    ],
    "default": "routine",
}
ITEMS = [f"r{row}c{col}" for row in range(8) for col in range(8)]


@dataclass
class Tasks:
    root: Path
    estimators: dict[str, Any]
    data: dict[str, np.ndarray]


def _sklearn_onnx(estimator: Any, width: int, path: Path) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None
    onx = convert_sklearn(
        estimator,
        initial_types=[("input", FloatTensorType([None, width]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
        options=options,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onx, path)


def _write(root: Path, name: str, config: dict[str, Any]) -> Path:
    (root / name / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root / name


def triage(root: Path) -> tuple[Any, np.ndarray]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    data = load_breast_cancer()
    columns = [list(data.feature_names).index(name) for name in TRIAGE_COLUMNS]
    x = data.data[:, columns]
    mean, std = x.mean(axis=0), x.std(axis=0)
    classifier = LogisticRegression(max_iter=1000).fit(((x - mean) / std).astype(np.float32), data.target)
    _sklearn_onnx(classifier, len(columns), root / "triage" / "1" / "model.onnx")
    profile = build_profile({name: x[:, i] for i, name in enumerate(TRIAGE_COLUMNS)}, seed=0)
    profile.save(root / "triage" / "profile.json")
    _write(
        root,
        "triage",
        {
            "max_batch_size": 16,
            "preprocess": {
                "kind": "tabular",
                "columns": [
                    {"name": n, "transform": "standard", "mean": float(m), "std": float(s)}
                    for n, m, s in zip(TRIAGE_COLUMNS, mean, std, strict=True)
                ],
            },
            "postprocess": {
                "kind": "classification",
                "output": "probabilities",
                "activation": "none",
                "labels": TRIAGE_LABELS,
                "top_k": 1,
            },
            "decision": TRIAGE_DECISION,
            "input_schema": {
                "fields": {
                    "mean radius": {"min": 0, "max": 50},
                    "mean texture": {"min": 0, "max": 60},
                    "mean smoothness": {"min": 0, "max": 1},
                    "mean concavity": {"min": 0, "max": 1},
                }
            },
            "profile": "profile.json",
        },
    )
    return classifier, x


def anomaly(root: Path) -> tuple[Any, np.ndarray]:
    from sklearn.datasets import load_wine
    from sklearn.ensemble import IsolationForest

    x = load_wine().data.astype(np.float32)
    forest = IsolationForest(n_estimators=50, random_state=0).fit(x)
    _sklearn_onnx(forest, x.shape[1], root / "anomaly" / "1" / "model.onnx")
    names = [f"f{i}" for i in range(x.shape[1])]
    _write(
        root,
        "anomaly",
        {
            "preprocess": {"kind": "tabular", "columns": [{"name": n} for n in names]},
            "postprocess": {"kind": "anomaly", "output": "scores", "threshold": 0.0, "anomalous": "below"},
        },
    )
    return forest, x


def cluster(root: Path) -> tuple[Any, np.ndarray]:
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_iris

    x = load_iris().data.astype(np.float32)
    kmeans = KMeans(n_clusters=3, n_init=4, random_state=0).fit(x)
    _sklearn_onnx(kmeans, x.shape[1], root / "cluster" / "1" / "model.onnx")
    _write(root, "cluster", {"postprocess": {"kind": "cluster", "output": "scores", "labels": ["a", "b", "c"]}})
    return kmeans, x


def recommend(root: Path) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    histories = (load_digits().data >= 8).astype(np.float32)  # "user" = image, "item" = inked pixel
    _, _, vt = np.linalg.svd(histories[:1200], full_matrices=False)
    factors = vt[:12].T.astype(np.float32)  # 64 items x 12 factors
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["history", "V"], ["user"]),
            helper.make_node("MatMul", ["user", "Vt"], ["scores"]),
        ],
        "factors",
        [helper.make_tensor_value_info("history", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 64])],
        initializer=[numpy_helper.from_array(factors, "V"), numpy_helper.from_array(factors.T.copy(), "Vt")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "recommend" / "1").mkdir(parents=True)
    onnx.save(model, root / "recommend" / "1" / "model.onnx")
    _write(
        root,
        "recommend",
        {
            "max_batch_size": 8,
            "preprocess": {"kind": "interactions", "items": ITEMS},
            "postprocess": {"kind": "recommendation", "output": "scores", "items": ITEMS, "top_n": 5},
        },
    )
    return factors, histories[1200:]


@pytest.fixture(scope="session")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Tasks:
    root = tmp_path_factory.mktemp("tasks")
    estimators: dict[str, Any] = {}
    data: dict[str, np.ndarray] = {}
    for name, build in (("triage", triage), ("anomaly", anomaly), ("cluster", cluster), ("recommend", recommend)):
        estimators[name], data[name] = build(root)
    return Tasks(root, estimators, data)


@pytest.fixture(autouse=True)
def audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes its own audit log."""
    path = tmp_path / "audit.sqlite"
    monkeypatch.setenv("FORWARDPASS_AUDIT_LOG", str(path))
    return path
