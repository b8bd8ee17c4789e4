"""A model that ends in a Softmax or Sigmoid says so in every format, natively as its ONNX graph does: a
`classification` config then reads its probabilities as they are. Natively nothing said so, and the default softmax
went over them a second time (0.38 became 0.35), while the same config served converted answered right: the answer
depended on the engine `auto` timed faster."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml

import forwardpass
from forwardpass.formats.torch import import_torch

FEATURES = 4
CLASSES = 3
ROWS = np.random.default_rng(0).normal(size=(5, FEATURES)).astype(np.float32)

# Keras converts its own tensors with a numpy-1 idiom; nothing here can act on that notice.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

# builder(tf, folder) → (artefact written in folder, the output holding probabilities, the framework's own answer)
Built = tuple[Path, str, np.ndarray]


def _keras_softmax() -> Any:
    """Logits, then a Softmax layer: no activation on the last Dense for a reader of layers to see."""
    import keras

    keras.utils.set_random_seed(0)
    features = keras.Input((FEATURES,), name="features")
    return keras.Model(features, keras.layers.Softmax()(keras.layers.Dense(CLASSES)(features)))


def torchscript(tf: ModuleType, folder: Path) -> Built:
    torch = import_torch()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(FEATURES, CLASSES), torch.nn.Softmax(-1)).eval()
    torch.jit.trace(net, torch.zeros(1, FEATURES)).save(str(folder / "model.pt"))
    return folder / "model.pt", "output", net(torch.from_numpy(ROWS)).detach().numpy()


def torch_export(tf: ModuleType, folder: Path) -> Built:
    torch = import_torch()
    torch.manual_seed(0)

    class TwoHeads(torch.nn.Module):  # type: ignore[name-defined,misc]  # torch arrives as a ModuleType: Any
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(FEATURES, CLASSES)

        def forward(self, features: Any) -> dict[str, Any]:
            logits = self.linear(features)
            return {"logits": logits, "probs": logits.softmax(-1)}

    net = TwoHeads().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.zeros(2, FEATURES),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(folder / "model.pt2"))
    return folder / "model.pt2", "probs", net(torch.from_numpy(ROWS))["probs"].detach().numpy()


def keras_file(tf: ModuleType, folder: Path) -> Built:
    model = _keras_softmax()
    model.save(folder / "model.keras")
    return folder / "model.keras", "softmax", model(ROWS).numpy()


def saved_model(tf: ModuleType, folder: Path) -> Built:
    model = _keras_softmax()
    model.export(str(folder / "saved_model"), verbose=False)
    return folder / "saved_model", "output_0", model(ROWS).numpy()


def frozen_graph(tf: ModuleType, folder: Path) -> Built:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    model = _keras_softmax()
    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec([None, FEATURES], tf.float32, name="features"))
    graph_def = convert_variables_to_constants_v2(concrete).graph.as_graph_def()
    (folder / "frozen.pb").write_bytes(graph_def.SerializeToString())
    return folder / "frozen.pb", "Identity", model(ROWS).numpy()


def tflite(tf: ModuleType, folder: Path) -> Built:
    model = _keras_softmax()
    (folder / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return folder / "model.tflite", "StatefulPartitionedCall_1:0", model(ROWS).numpy()


BUILDERS: dict[str, Callable[[ModuleType, Path], Built]] = {
    "torchscript": torchscript,
    "torch.export": torch_export,
    "keras": keras_file,
    "savedmodel": saved_model,
    "graphdef": frozen_graph,
    "tflite": tflite,
}


@pytest.mark.parametrize("name", BUILDERS)
def test_a_final_softmax_is_read_natively_and_its_probabilities_are_answered_as_they_are(
    name: str, tf: ModuleType, tmp_path: Path
) -> None:
    version = tmp_path / "model" / "1"
    version.mkdir(parents=True)
    artefact, output, expected = BUILDERS[name](tf, version)
    classification = {"kind": "classification", "output": output}
    config: dict[str, Any] = {"source": {"serve": "native"}, "postprocess": classification}
    if name == "torchscript":  # a traced archive records no input shape
        config["source"]["inputs"] = [{"name": "input", "shape": [-1, FEATURES]}]
    (tmp_path / "model" / "config.yaml").write_text(yaml.safe_dump(config))
    model = forwardpass.load(tmp_path / "model", warmup=0)
    assert (model.serving.format, model.serving.engine, os.path.basename(artefact)) == (name, "native", artefact.name)
    assert "already holds probabilities" in model.inferred["postprocess.activation"]
    answers = model.predict(list(ROWS))
    assert isinstance(answers, list)
    scores = np.asarray([[entry["score"] for entry in sorted(a["top_k"], key=lambda e: e["index"])] for a in answers])
    assert np.abs(scores - expected).max() <= 1e-5


@pytest.mark.parametrize("kind", ["linear", "svm", "forest"])
def test_an_onnx_ml_classifiers_integer_classes_are_its_labels_without_zipmap(kind: str, tmp_path: Path) -> None:
    """skl2onnx's classifiers with zipmap off: the classes 3, 8 and 13 are in the classifier node itself (as
    classlabels_ints in LinearClassifier and SVMClassifier, classlabels_int64s in TreeEnsembleClassifier)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    features, target = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    classifier = {
        "linear": LogisticRegression(max_iter=500),
        "svm": SVC(),
        "forest": RandomForestClassifier(n_estimators=3, random_state=0),
    }[kind].fit(features, target * 5 + 3)
    with warnings.catch_warnings(action="ignore", category=FutureWarning):  # skl2onnx reads SVC's deprecated probA_
        converted = to_onnx(classifier, features[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
    (tmp_path / "classes.onnx").write_bytes(converted.SerializeToString())

    model = forwardpass.load(tmp_path / "classes.onnx", intra_op_threads=1)
    answers = model.predict([list(map(float, row)) for row in features[::10]])
    assert [answer["label"] for answer in answers] == [str(label) for label in classifier.predict(features[::10])]


def test_an_onnx_ml_graph_of_one_input_per_column_takes_records(tmp_path: Path) -> None:
    """skl2onnx's mixed-type pipelines take each column as its own [batch, 1] input, named as the column."""
    import pandas as pd
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"amount": rng.normal(size=60).astype(np.float32), "colour": rng.choice(["red", "blue"], 60)})
    target = (frame["amount"] > 0) ^ (frame["colour"] == "red")
    encode = ColumnTransformer(
        [("colour", OneHotEncoder(handle_unknown="ignore"), ["colour"])], remainder="passthrough"
    )
    classifier = make_pipeline(encode, LogisticRegression()).fit(frame, target.astype(int))
    inputs = [("amount", FloatTensorType([None, 1])), ("colour", StringTensorType([None, 1]))]
    converted = convert_sklearn(classifier, initial_types=inputs, target_opset={"": 17, "ai.onnx.ml": 3})
    (tmp_path / "columns.onnx").write_bytes(converted.SerializeToString())

    model = forwardpass.load(tmp_path / "columns.onnx", intra_op_threads=1)
    answers = model.predict(frame.iloc[:8].to_dict("records"))
    scores = [[entry["score"] for entry in sorted(answer["top_k"], key=lambda e: e["index"])] for answer in answers]
    np.testing.assert_allclose(scores, classifier.predict_proba(frame.iloc[:8]), atol=1e-5)


def test_an_onnx_ml_classifier_with_one_output_per_class_is_no_single_score_output(tmp_path: Path) -> None:
    """skl2onnx's zipmap='columns' gives each class's probability its own output: none of them is the class scores
    (the first read as them gave class 'a''s probability as the answer for all three classes)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    classifier = LogisticRegression(max_iter=500).fit(features, np.array(["a", "b", "c"])[target])
    converted = to_onnx(classifier, features[:1], options={"zipmap": "columns"}, target_opset={"": 17, "ai.onnx.ml": 3})
    (tmp_path / "columns.onnx").write_bytes(converted.SerializeToString())

    model = forwardpass.load(tmp_path / "columns.onnx", intra_op_threads=1)
    assert model.config.postprocess is None
    answer = model.infer({"X": features[:5]})
    probabilities = np.column_stack([answer[f"s{name}"] for name in "abc"])
    np.testing.assert_allclose(probabilities, classifier.predict_proba(features[:5]), atol=1e-5)


def test_an_onnxmltools_graph_whose_label_is_declared_one_row_still_batches(tmp_path: Path) -> None:
    """onnxmltools declares a LightGBM classifier's label [1] whatever the batch: it is still the batch axis (every
    record was refused as "input 'input': expected shape [-1, 4], got [4]")."""
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris

    features, target = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    classifier = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(features, target)
    converted = onnxmltools.convert_lightgbm(
        classifier, initial_types=[("input", FloatTensorType([None, 4]))], target_opset=15, zipmap=False
    )
    assert converted.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 1
    (tmp_path / "lightgbm.onnx").write_bytes(converted.SerializeToString())

    model = forwardpass.load(tmp_path / "lightgbm.onnx", intra_op_threads=1)
    answers = model.predict([list(map(float, row)) for row in features[::15]])
    assert [answer["label"] for answer in answers] == [str(label) for label in classifier.predict(features[::15])]


# x [N, 12] → ... → y: (the nodes, y's shape). Reshape's shapes are initializers "heads" [0, 3, 4] and "row" [0, 1, 12].
SOFTMAX_GRAPHS: dict[str, tuple[list[tuple[str, list[str], int | None]], list[Any]]] = {
    # three heads of 4 classes laid side by side: no 12-class distribution
    "three heads flattened": (
        [("Reshape", ["x", "heads"], None), ("Softmax", ["r"], -1), ("Flatten", ["s"], 1)],
        ["N", 12],
    ),
    # one distribution per position: an item is no one row of classes
    "per position": ([("Reshape", ["x", "heads"], None), ("Softmax", ["r"], -1)], ["N", 3, 4]),
    "over the batch": ([("Softmax", ["x"], 0)], ["N", 12]),  # each row depends on the others
    "one distribution reshaped": ([("Softmax", ["x"], -1), ("Reshape", ["s", "row"], None)], ["N", 1, 12]),
    "one distribution": ([("Softmax", ["x"], -1)], ["N", 12]),
}


@pytest.mark.parametrize(("name", "classifies"), [(name, name.startswith("one")) for name in SOFTMAX_GRAPHS])
def test_an_onnx_softmax_is_read_as_classes_only_where_it_is_one_distribution_an_item(
    name: str, classifies: bool, tmp_path: Path
) -> None:
    """Three 4-way softmax heads flattened into [N, 12] were answered as one 12-class classifier ('label 9', scores
    summing to 3), and a softmax over the batch axis as each row's class probabilities."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    steps, shape = SOFTMAX_GRAPHS[name]
    outputs = {"Reshape": "r", "Softmax": "s", "Flatten": "f"}
    nodes = []
    for i, (op, inputs, axis) in enumerate(steps):
        nodes.append(helper.make_node(op, inputs, ["y" if i == len(steps) - 1 else outputs[op]]))
        if axis is not None:
            nodes[-1].attribute.append(helper.make_attribute("axis", axis))
    shapes = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("heads", [0, 3, 4]), ("row", [0, 1, 12]))]
    graph = helper.make_graph(
        nodes,
        "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=shapes,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    answer = forwardpass.load(tmp_path / "m.onnx", warmup=0).predict(np.tile(ROWS[0], 3))
    assert ("label" in answer) is classifies and ("outputs" in answer) is not classifies


def _torch_heads() -> Any:
    torch = import_torch()
    torch.manual_seed(0)

    class Heads(torch.nn.Module):  # type: ignore[name-defined,misc]  # torch arrives as a ModuleType: Any
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(FEATURES, 12)

        def forward(self, features: Any) -> Any:
            return self.linear(features).view(-1, 3, 4).softmax(-1).flatten(1)

    return torch, Heads().eval()


def _keras_heads() -> Any:
    import keras

    features = keras.Input((FEATURES,), name="features")
    grouped = keras.layers.Reshape((3, 4))(keras.layers.Dense(12)(features))
    return keras.Model(features, keras.layers.Reshape((12,))(keras.layers.Softmax()(grouped)))


def _heads_artefact(name: str, tf: ModuleType, folder: Path) -> Path:
    if name == "torchscript":
        torch, net = _torch_heads()
        torch.jit.trace(net, torch.zeros(2, FEATURES)).save(str(folder / "model.pt"))
        return folder / "model.pt"
    if name == "torch.export":
        torch, net = _torch_heads()
        program = torch.export.export(net, (torch.zeros(2, FEATURES),), dynamic_shapes=({0: torch.export.Dim("b")},))
        torch.export.save(program, str(folder / "model.pt2"))
        return folder / "model.pt2"
    if name == "keras":
        _keras_heads().save(folder / "model.keras")
        return folder / "model.keras"
    (folder / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(_keras_heads()).convert())
    return folder / "model.tflite"


@pytest.mark.parametrize("name", ["torchscript", "torch.export", "keras", "tflite"])
def test_softmax_heads_laid_side_by_side_are_no_classifier_natively(name: str, tf: ModuleType, tmp_path: Path) -> None:
    """Three 4-way softmax heads reshaped into 12 scores were read, in each framework's graph, as one distribution
    over 12 classes: the model was answered as a 12-class classifier."""
    artefact = _heads_artefact(name, tf, tmp_path)
    if name == "torchscript":  # a traced archive records no input shape
        config = {"source": {"serve": "native", "inputs": [{"name": "features", "shape": [-1, FEATURES]}]}}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        artefact = tmp_path
    model = forwardpass.load(artefact, serve="native", warmup=0)
    answer = model.predict(ROWS[0])
    assert "outputs" in answer and "label" not in answer
