"""A corpus of models as users bring them: built here with the real frameworks on data scikit-learn ships, saved the
way each framework saves, with no forwardpass config. Each entry keeps the framework's own predictions on held-out
rows, which every forwardpass command must reproduce (classes identical, probabilities within 1e-5).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SEED = 0
TEST_ROWS = 12


@dataclass
class UserModel:
    name: str
    artefact: Path  # the file as the user has it
    task: str  # "classification" | "regression" | "raw"
    records: list[dict[str, object]]  # held-out rows as records (column → value), what a user sends
    labels: list[str]  # their true labels / targets as text, as a table would hold them
    classes: list[str] | None = None  # the framework's classes, in score order
    probabilities: np.ndarray | None = None  # the framework's own scores per held-out row
    predicted: list[str] = field(default_factory=list)  # the framework's predicted class per row (as text)
    values: np.ndarray | None = None  # a regressor's (or a raw model's) own outputs per row
    arrays: np.ndarray | None = None  # the rows as the model's one input tensor, for models with no column names
    trust_pickle: bool = False


def _frame(loader: Callable[..., Any]) -> tuple[Any, Any]:
    data = loader(as_frame=True)
    return data.data, data.target


def _split(x: Any, y: Any) -> tuple[Any, Any, Any, Any]:
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=TEST_ROWS, random_state=SEED)


def _records(frame: Any) -> list[dict[str, object]]:
    if isinstance(frame, np.ndarray):
        return []
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _classifier(
    name: str, artefact: Path, x_test: Any, y_test: Any, proba: np.ndarray, classes: list[str], **kw: Any
) -> UserModel:
    predicted = [classes[i] for i in proba.argmax(axis=1)]
    return UserModel(
        name,
        artefact,
        "classification",
        _records(x_test),
        [str(v) for v in y_test],
        classes,
        proba,
        predicted,
        **kw,
    )


def _regressor(name: str, artefact: Path, x_test: Any, y_test: Any, values: np.ndarray, **kw: Any) -> UserModel:
    return UserModel(name, artefact, "regression", _records(x_test), [str(v) for v in y_test], values=values, **kw)


def sklearn_pipeline_with_category(folder: Path) -> UserModel:
    """ColumnTransformer (scaled numbers + one-hot text category) → LogisticRegression, fitted on a DataFrame."""
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x, y = _frame(load_iris)
    names = load_iris().target_names
    x = x.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    x["site"] = np.where(np.arange(len(x)) % 3 == 0, "north", np.where(np.arange(len(x)) % 3 == 1, "south", "east"))
    y = np.asarray(names)[np.asarray(y)]
    x_train, x_test, y_train, y_test = _split(x, y)
    numeric = [c for c in x.columns if c != "site"]
    model = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [("num", StandardScaler(), numeric), ("cat", OneHotEncoder(handle_unknown="ignore"), ["site"])]
                ),
            ),
            ("classify", LogisticRegression(max_iter=500)),
        ]
    ).fit(x_train, y_train)
    path = folder / "iris_pipeline.joblib"
    joblib.dump(model, path)
    return _classifier(
        "sklearn_pipeline",
        path,
        x_test,
        y_test,
        model.predict_proba(x_test),
        [str(c) for c in model.classes_],
        trust_pickle=True,
    )


def random_forest(folder: Path) -> UserModel:
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    x, y = _frame(load_breast_cancer)
    x_train, x_test, y_train, y_test = _split(x, y)
    model = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=SEED).fit(x_train, y_train)
    path = folder / "forest.joblib"
    joblib.dump(model, path)
    return _classifier(
        "random_forest",
        path,
        x_test,
        y_test,
        model.predict_proba(x_test),
        [str(c) for c in model.classes_],
        trust_pickle=True,
    )


def hist_gradient_boosting(folder: Path) -> UserModel:
    import joblib
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import HistGradientBoostingRegressor

    x, y = _frame(load_diabetes)
    x_train, x_test, y_train, y_test = _split(x, y)
    model = HistGradientBoostingRegressor(max_iter=30, random_state=SEED).fit(x_train, y_train)
    path = folder / "hgb.joblib"
    joblib.dump(model, path)
    return _regressor("hist_gradient_boosting", path, x_test, y_test, model.predict(x_test), trust_pickle=True)


def xgboost_binary(folder: Path) -> UserModel:
    import xgboost
    from sklearn.datasets import load_breast_cancer

    x, y = _frame(load_breast_cancer)
    x = x.rename(columns=lambda c: c.replace(" ", "_"))
    x_train, x_test, y_train, y_test = _split(x, y)
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(x_train, y_train)
    path = folder / "xgb_binary.json"
    model.save_model(path)
    return _classifier("xgboost_binary", path, x_test, y_test, model.predict_proba(x_test), ["0", "1"])


def xgboost_multiclass(folder: Path) -> UserModel:
    import xgboost
    from sklearn.datasets import load_iris

    x, y = _frame(load_iris)
    x = x.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    x_train, x_test, y_train, y_test = _split(x, y)
    model = xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(x_train, y_train)
    path = folder / "xgb_multiclass.json"
    model.save_model(path)
    return _classifier(
        "xgboost_multiclass", path, x_test, y_test, np.asarray(model.predict_proba(x_test)), ["0", "1", "2"]
    )


def xgboost_regression(folder: Path) -> UserModel:
    import xgboost
    from sklearn.datasets import load_diabetes

    x, y = _frame(load_diabetes)
    x_train, x_test, y_train, y_test = _split(x, y)
    model = xgboost.XGBRegressor(n_estimators=20, max_depth=3).fit(x_train, y_train)
    path = folder / "xgb_regression.json"
    model.save_model(path)
    return _regressor("xgboost_regression", path, x_test, y_test, model.predict(x_test))


def lightgbm_multiclass(folder: Path) -> UserModel:
    import lightgbm
    from sklearn.datasets import load_wine

    x, y = _frame(load_wine)
    x_train, x_test, y_train, y_test = _split(x, y)
    model = lightgbm.LGBMClassifier(n_estimators=15, num_leaves=7, verbose=-1).fit(x_train, y_train)
    path = folder / "lgbm_multiclass.txt"
    model.booster_.save_model(str(path))
    return _classifier(
        "lightgbm_multiclass", path, x_test, y_test, np.asarray(model.predict_proba(x_test)), ["0", "1", "2"]
    )


def lightgbm_regression(folder: Path) -> UserModel:
    import lightgbm
    from sklearn.datasets import load_diabetes

    x, y = _frame(load_diabetes)
    x_train, x_test, y_train, y_test = _split(x, y)
    model = lightgbm.LGBMRegressor(n_estimators=20, num_leaves=7, verbose=-1).fit(x_train, y_train)
    path = folder / "lgbm_regression.txt"
    model.booster_.save_model(str(path))
    return _regressor("lightgbm_regression", path, x_test, y_test, np.asarray(model.predict(x_test)))


def _iris_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    x_train, x_test, y_train, y_test = _split(x.astype(np.float32), y)
    return x_train, x_test, y_train, y_test


def torchscript_mlp(folder: Path) -> UserModel:
    """An MLP that outputs logits; TorchScript records no task, so with no config its raw outputs are the answer."""
    import torch

    x_train, x_test, y_train, y_test = _iris_arrays()
    torch.manual_seed(SEED)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x_train)), torch.from_numpy(y_train)).backward()
        optimizer.step()
    net.eval()
    path = folder / "mlp.pt"
    torch.jit.trace(net, torch.from_numpy(x_test[:2])).save(str(path))
    with torch.no_grad():
        logits = net(torch.from_numpy(x_test)).numpy()
    model = UserModel("torchscript_mlp", path, "raw", [], [str(v) for v in y_test], values=logits, arrays=x_test)
    model.predicted = [str(i) for i in logits.argmax(axis=1)]
    return model


def keras_softmax(folder: Path) -> UserModel:
    import keras

    x_train, x_test, y_train, y_test = _iris_arrays()
    keras.utils.set_random_seed(SEED)
    net = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3, activation="softmax")]
    )
    net.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    net.fit(x_train, y_train, epochs=30, verbose=0)
    path = folder / "net.keras"
    net.save(path)
    proba = np.asarray(net.predict(x_test, verbose=0))
    model = _classifier("keras_softmax", path, x_test, y_test, proba, ["0", "1", "2"], arrays=x_test)
    model.records = []
    return model


def onnx_softmax(folder: Path) -> UserModel:
    """A plain ONNX graph (linear layer, then Softmax) with a symbolic batch dimension: probabilities out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x_train, x_test, y_train, y_test = _iris_arrays()
    # a linear layer fitted by least squares to one-hot targets: a real classifier, scaled into confident logits
    design = np.hstack([x_train, np.ones((len(x_train), 1), np.float32)])
    solution = np.linalg.lstsq(design, np.eye(3)[y_train], rcond=None)[0].astype(np.float32) * 8
    weights, bias = solution[:4], solution[4]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "softmax_classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "softmax.onnx"
    onnx.save(model, str(path))
    logits = x_test @ weights + bias
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    user = _classifier("onnx_softmax", path, x_test, y_test, proba, ["0", "1", "2"], arrays=x_test)
    user.records = []
    return user


def skl2onnx_zipmap(folder: Path) -> UserModel:
    """skl2onnx's default classifier export: `output_label` and a ZipMap of probabilities, classes as strings."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x_train, x_test, y_train, y_test = _iris_arrays()
    names = np.array(["setosa", "versicolor", "virginica"], dtype=object)
    model = LogisticRegression(max_iter=500).fit(x_train, names[y_train])
    path = folder / "zipmap.onnx"
    path.write_bytes(to_onnx(model, x_train[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString())
    user = _classifier(
        "skl2onnx_zipmap",
        path,
        x_test,
        names[y_test],
        model.predict_proba(x_test),
        [str(n) for n in names],
        arrays=x_test,
    )
    user.records = []
    return user


BUILDERS: dict[str, Callable[[Path], UserModel]] = {
    "sklearn_pipeline": sklearn_pipeline_with_category,
    "random_forest": random_forest,
    "hist_gradient_boosting": hist_gradient_boosting,
    "xgboost_binary": xgboost_binary,
    "xgboost_multiclass": xgboost_multiclass,
    "xgboost_regression": xgboost_regression,
    "lightgbm_multiclass": lightgbm_multiclass,
    "lightgbm_regression": lightgbm_regression,
    "torchscript_mlp": torchscript_mlp,
    "keras_softmax": keras_softmax,
    "onnx_softmax": onnx_softmax,
    "skl2onnx_zipmap": skl2onnx_zipmap,
}
