"""End to end: models built with torch and scikit-learn in the test, exported to ONNX, dropped into a repository
with no config, loaded with `forwardpass.load` and compared numerically with the framework's own output."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import forwardpass
from forwardpass.config import ModelConfig
from forwardpass.errors import ConfigError, InputError, NonFiniteError, NotFoundError, ShapeError
from forwardpass.tensor import DataType, TensorSpec
from tests.running_server import copy_bundled
from tests.server.conftest import bounded_negate

ATOL = 1e-5  # FP32
INPUTS = 16  # at least this many random inputs per comparison
IRIS_FEATURES = ["sepal length", "sepal width", "petal length", "petal width"]


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def export_torch(model: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter (dynamo=False) is deprecated but asked for here
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, 16, 16),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def export_sklearn(model: Any, width: int, path: Path) -> Path:
    from skl2onnx import to_onnx

    onx = to_onnx(
        model,
        np.zeros((1, width), np.float32),
        options={LogisticRegression: {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repository")


@pytest.fixture(scope="module")
def cnn(repo: Path) -> TinyCNN:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    export_torch(model, repo / "cnn" / "1" / "model.onnx")
    return model


@pytest.fixture(scope="module")
def iris(repo: Path):
    X, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    export_sklearn(model, 4, repo / "iris" / "1" / "model.onnx")
    return model


@pytest.fixture(scope="module")
def forest(repo: Path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] - 0.3 * X[:, 3]
    model = RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0).fit(X, y)
    export_sklearn(model, 5, repo / "forest" / "1" / "model.onnx")
    return model


def torch_logits(model: TinyCNN, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def batches(rng: np.random.Generator, batch: int, item_shape: tuple[int, ...], scale: float = 1.0, shift: float = 0.0):
    for _ in range(math.ceil(INPUTS / batch)):
        yield (rng.normal(size=(batch, *item_shape)) * scale + shift).astype(np.float32)


# --- parity with the frameworks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 7])
def test_torch_cnn_matches_torch(repo: Path, cnn: TinyCNN, batch: int):
    model = forwardpass.load("cnn", repository=repo)
    rng = np.random.default_rng(batch)
    seen = 0
    for x in batches(rng, batch, (3, 16, 16)):
        got = model.infer({"input": x})
        assert list(got) == ["logits"]
        assert got["logits"].shape == (batch, 10)
        assert got["logits"].dtype == np.float32
        np.testing.assert_allclose(got["logits"], torch_logits(cnn, x), rtol=0, atol=ATOL)
        seen += batch
    assert seen >= INPUTS


@pytest.mark.parametrize("batch", [1, 7])
def test_sklearn_pipeline_matches_sklearn(repo: Path, iris, batch: int):
    model = forwardpass.load("iris", repository=repo)
    rng = np.random.default_rng(100 + batch)
    X, _ = load_iris(return_X_y=True)
    for x in batches(rng, batch, (4,), scale=X.std(axis=0) * 1.5, shift=X.mean(axis=0)):
        got = model.infer({"X": x})
        np.testing.assert_allclose(got["probabilities"], iris.predict_proba(x), rtol=0, atol=ATOL)
        np.testing.assert_array_equal(got["label"], iris.predict(x))


@pytest.mark.parametrize("batch", [1, 7])
def test_random_forest_matches_sklearn(repo: Path, forest, batch: int):
    model = forwardpass.load("forest", repository=repo)
    rng = np.random.default_rng(200 + batch)
    for x in batches(rng, batch, (5,)):
        got = model.infer({"X": x})
        (name,) = got
        np.testing.assert_allclose(got[name].reshape(-1), forest.predict(x), rtol=0, atol=ATOL)


def test_float64_input_is_cast_and_still_matches(repo: Path, cnn: TinyCNN):
    model = forwardpass.load("cnn", repository=repo)
    x = np.random.default_rng(9).normal(size=(3, 3, 16, 16))
    got = model.infer({"input": x})["logits"]
    np.testing.assert_allclose(got, torch_logits(cnn, x.astype(np.float32)), rtol=0, atol=ATOL)


# --- specs completed from the model ----------------------------------------------------------------------------------


def test_specs_are_completed_from_the_onnx_model(repo: Path, cnn, iris, forest):
    model = forwardpass.load("cnn", repository=repo)
    # nothing in the graph says what its logits mean: raw outputs; its first dimension is a batch: batching on
    assert model.config == ModelConfig(max_batch_size=32)
    assert list(model.inferred) == ["max_batch_size"]
    assert model.inputs == [TensorSpec("input", DataType.FP32, (-1, 3, 16, 16))]
    assert model.outputs == [TensorSpec("logits", DataType.FP32, (-1, 10))]
    assert (model.name, model.version) == ("cnn", 1)

    model = forwardpass.load("iris", repository=repo)
    assert model.inputs == [TensorSpec("X", DataType.FP32, (-1, 4))]
    assert model.outputs == [
        TensorSpec("label", DataType.INT64, (-1,)),
        TensorSpec("probabilities", DataType.FP32, (-1, 3)),
    ]

    model = forwardpass.load("forest", repository=repo)
    assert model.inputs == [TensorSpec("X", DataType.FP32, (-1, 5))]
    assert [(s.dtype, s.shape) for s in model.outputs] == [(DataType.FP32, (-1, 1))]


# --- ways to name a model ---------------------------------------------------------------------------------------------


def test_load_by_file_and_by_folder(repo: Path, cnn: TinyCNN):
    x = np.random.default_rng(5).normal(size=(2, 3, 16, 16)).astype(np.float32)
    expected = torch_logits(cnn, x)
    for target in (
        repo / "cnn" / "1" / "model.onnx",  # the file
        str(repo / "cnn" / "1" / "model.onnx"),
        repo / "cnn",  # the model folder with numbered versions
        str(repo / "cnn"),
        repo / "cnn" / "1",  # a folder holding the artefact itself
    ):
        model = forwardpass.load(target)
        np.testing.assert_allclose(model.infer({"input": x})["logits"], expected, rtol=0, atol=ATOL)
        model.close()
    assert forwardpass.load(repo / "cnn").version == 1


def test_a_path_that_does_not_exist(repo: Path):
    with pytest.raises(NotFoundError, match="no model file or folder"):
        forwardpass.load(str(repo / "nothing" / "model.onnx"))


def test_unknown_name_in_a_repository(repo: Path, cnn, iris):
    with pytest.raises(NotFoundError, match=r"unknown model 'resnet'.*cnn.*iris"):
        forwardpass.load("resnet", repository=repo)


# --- Model.predict with no config -------------------------------------------------------------------------------------


def test_predict_without_config_gives_raw_outputs(repo: Path, cnn: TinyCNN):
    model = forwardpass.load("cnn", repository=repo)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(9, 3, 16, 16)).astype(np.float32)
    expected = torch_logits(cnn, x)

    one = model.predict(x[0])
    assert set(one) == {"outputs"}
    assert set(one["outputs"]) == {"logits"}
    np.testing.assert_allclose(one["outputs"]["logits"], expected[0], rtol=0, atol=ATOL)

    many = model.predict(list(x))
    assert isinstance(many, list)
    assert len(many) == 9
    np.testing.assert_allclose([p["outputs"]["logits"] for p in many], expected, rtol=0, atol=ATOL)


def test_predict_without_config_on_sklearn(repo: Path, iris):
    model = forwardpass.load("iris", repository=repo)
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    predictions = model.predict([row for row in rows])
    # the graph's classifier node says: a classifier, its probabilities in 'probabilities', its classes 0, 1, 2
    assert model.inferred["postprocess"].startswith("ONNX graph: a classifier")
    assert [p["label"] for p in predictions] == [str(c) for c in iris.predict(rows.astype(np.float32))]
    scores = [sorted(p["top_k"], key=lambda entry: entry["index"]) for p in predictions]
    np.testing.assert_allclose(
        [[entry["score"] for entry in row] for row in scores], iris.predict_proba(rows.astype(np.float32)), atol=ATOL
    )


def test_predict_answers_a_string_per_item_as_text(tmp_path: Path):
    """A row of a [batch] string output is one str, not an array: predict ended in AttributeError ('str' object has
    no attribute 'tolist'), and `forwardpass predict` in a traceback."""
    graph = helper.make_graph(
        [helper.make_node("StringConcat", ["text", "mark"], ["marked"])],
        "mark",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("marked", TensorProto.STRING, ["batch"])],
        initializer=[numpy_helper.from_array(np.array("!", dtype=object), "mark")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), tmp_path / "mark.onnx")
    model = forwardpass.load(tmp_path / "mark.onnx")
    predictions = model.predict([{"text": np.array(text)} for text in ("héllo", "b")])
    assert predictions == [{"outputs": {"marked": "héllo!"}}, {"outputs": {"marked": "b!"}}]


@pytest.mark.parametrize("shape", [["batch"], ["batch", 1]])
def test_a_string_input_model_takes_a_text_as_its_item(tmp_path: Path, shape: list[Any]):
    """A model whose one input is strings (a Keras TextVectorization model, an ONNX string pipeline) refused a text
    ('this model declares no preprocessing: expected an array, got str'), on predict and on the server's /predict."""
    graph = helper.make_graph(
        [helper.make_node("StringConcat", ["text", "mark"], ["marked"])],
        "mark",
        [helper.make_tensor_value_info("text", TensorProto.STRING, shape)],
        [helper.make_tensor_value_info("marked", TensorProto.STRING, shape)],
        initializer=[numpy_helper.from_array(np.array("!", dtype=object), "mark")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), tmp_path / "mark.onnx")
    marked = forwardpass.load(tmp_path / "mark.onnx").predict(["héllo", "b"])
    expected = ["héllo!", "b!"] if len(shape) == 1 else [["héllo!"], ["b!"]]
    assert [prediction["outputs"]["marked"] for prediction in marked] == expected
    (tmp_path / "b.txt").write_text("b\n", encoding="utf-8")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "forwardpass"), "predict", "mark.onnx", "héllo", "b.txt", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr  # it was 'error: héllo: no such file', exit 2
    assert [json.loads(line)["outputs"]["marked"] for line in done.stdout.splitlines()] == expected


def test_predict_batches_at_the_default_size(repo: Path, cnn: TinyCNN):
    model = forwardpass.load("cnn", repository=repo)
    assert model.batch_size == 32
    x = np.random.default_rng(12).normal(size=(33, 3, 16, 16)).astype(np.float32)
    got = np.array([p["outputs"]["logits"] for p in model.predict(list(x))])
    np.testing.assert_allclose(got, torch_logits(cnn, x), rtol=0, atol=ATOL)


# --- input validation -------------------------------------------------------------------------------------------------


def test_infer_validates_inputs(repo: Path, cnn):
    model = forwardpass.load("cnn", repository=repo)
    with pytest.raises(InputError, match=r"missing input\(s\) \['input'\]"):
        model.infer({})
    with pytest.raises(InputError, match=r"unknown input\(s\) \['image'\]"):
        model.infer({"image": np.zeros((1, 3, 16, 16), np.float32)})
    with pytest.raises(ShapeError, match="'input'"):
        model.infer({"input": np.zeros((1, 3, 15, 16), np.float32)})
    with pytest.raises(ShapeError, match="'input'"):
        model.predict(np.zeros((1, 3, 16, 16), np.float32))  # one item has no batch dimension


# --- versions -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def versioned(tmp_path_factory: pytest.TempPathFactory, add_model) -> Path:
    root = tmp_path_factory.mktemp("versions")
    for version in (1, 2, 10):
        add_model(root / "adder" / str(version) / "model.onnx", constant=float(version))
    return root


def test_the_highest_version_wins(versioned: Path):
    model = forwardpass.load("adder", repository=versioned)
    assert model.version == 10
    np.testing.assert_array_equal(model.infer({"x": np.zeros((1, 4), np.float32)})["y"], np.full((1, 4), 10.0))
    assert forwardpass.load(versioned / "adder").version == 10


@pytest.mark.parametrize("version", [1, 2, 10])
def test_version_selects(versioned: Path, version: int):
    model = forwardpass.load("adder", repository=versioned, version=version)
    assert model.version == version
    out = model.infer({"x": np.ones((3, 4), np.float32)})["y"]
    np.testing.assert_array_equal(out, np.full((3, 4), 1.0 + version))
    assert forwardpass.load(versioned / "adder", version=version).version == version


def test_a_missing_version(versioned: Path):
    with pytest.raises(NotFoundError, match=r"no version 3; versions: \[1, 2, 10\]"):
        forwardpass.load("adder", repository=versioned, version=3)


# --- a config beside the versions -------------------------------------------------------------------------------------

LABELS = [f"class_{i}" for i in range(10)]


@pytest.fixture(scope="module")
def configured_cnn(repo: Path, cnn: TinyCNN) -> Path:
    folder = repo / "cnn_configured"
    (folder / "1").mkdir(parents=True)
    shutil.copy(repo / "cnn" / "1" / "model.onnx", folder / "1" / "model.onnx")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    (folder / "config.yaml").write_text(
        """
max_batch_size: 4
inputs:
  - name: input
    allow_nonfinite: false
preprocess:
  kind: image
  resize: 16
  crop: 16
  mean: [0.5, 0.5, 0.5]
  std: [0.25, 0.25, 0.25]
postprocess:
  kind: classification
  labels: labels.txt
  top_k: 3
""",
        encoding="utf-8",
    )
    return folder


def image_bytes(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def by_hand(data: bytes) -> np.ndarray:
    """resize shorter side to 16, center crop 16, /255, (x - 0.5) / 0.25, NCHW — numpy and Pillow only."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    size = (16, int(16 * h / w)) if w <= h else (int(16 * w / h), 16)
    pixels = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    top, left = round((pixels.shape[0] - 16) / 2.0), round((pixels.shape[1] - 16) / 2.0)
    pixels = (pixels[top : top + 16, left : left + 16] / 255.0 - 0.5) / 0.25
    return pixels.transpose(2, 0, 1).astype(np.float32)


def test_config_beside_the_versions_is_used(repo: Path, cnn: TinyCNN, configured_cnn: Path):
    model = forwardpass.load("cnn_configured", repository=repo)
    assert model.config.max_batch_size == 4
    assert model.batch_size == 4
    images = [image_bytes(23 + i, 31 - i, seed=i) for i in range(6)]  # 6 items: two forward passes of <= 4
    predictions = model.predict(images)
    logits = torch_logits(cnn, np.stack([by_hand(data) for data in images]))
    for prediction, row in zip(predictions, logits, strict=True):
        probabilities = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        order = np.argsort(-probabilities, kind="stable")[:3]
        assert prediction["label"] == LABELS[order[0]]
        assert [item["label"] for item in prediction["top_k"]] == [LABELS[i] for i in order]
        np.testing.assert_allclose([item["score"] for item in prediction["top_k"]], probabilities[order], atol=ATOL)
    assert len(model.predict(images[0], top_k=5)["top_k"]) == 5


def test_config_sets_the_nonfinite_policy(repo: Path, configured_cnn: Path):
    model = forwardpass.load("cnn_configured", repository=repo)
    x = np.zeros((1, 3, 16, 16), np.float32)
    x[0, 1, 2, 3] = np.nan
    with pytest.raises(NonFiniteError, match="'input'"):
        model.infer({"input": x})


def test_the_artefact_path_inside_a_configured_model_keeps_its_config(configured_cnn: Path):
    model = forwardpass.load(configured_cnn / "1" / "model.onnx")
    assert model.version == 1
    assert model.config.max_batch_size == 4
    assert model.predict(image_bytes(20, 20, seed=1))["label"] in LABELS


def test_sklearn_with_a_tabular_config(repo: Path, iris):
    folder = repo / "iris_configured"
    (folder / "1").mkdir(parents=True)
    shutil.copy(repo / "iris" / "1" / "model.onnx", folder / "1" / "model.onnx")
    columns = "\n".join(f"    - name: {name}" for name in IRIS_FEATURES)
    (folder / "config.yaml").write_text(
        "preprocess:\n  kind: tabular\n  columns:\n"
        + columns
        + "\npostprocess:\n  kind: classification\n  output: probabilities\n  activation: none\n"
        + "  labels: [setosa, versicolor, virginica]\n  top_k: 3\n",
        encoding="utf-8",
    )
    model = forwardpass.load("iris_configured", repository=repo)
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.7, 3.0, 5.2, 2.3], [6.0, 2.2, 5.0, 1.5]])
    records = [dict(reversed(list(zip(IRIS_FEATURES, row, strict=True)))) for row in rows]  # key order must not matter
    predictions = model.predict(records)
    names = np.array(["setosa", "versicolor", "virginica"])
    expected = iris.predict_proba(rows.astype(np.float32))
    assert [p["label"] for p in predictions] == names[iris.predict(rows.astype(np.float32))].tolist()
    for prediction, probabilities in zip(predictions, expected, strict=True):
        scores = {item["label"]: item["score"] for item in prediction["top_k"]}
        np.testing.assert_allclose([scores[n] for n in names], probabilities, atol=ATOL)


# --- inputs[].max_shape: bounds on dynamic dimensions ----------------------------------------------------------------


def test_max_shape_refuses_a_dimension_over_its_bound_in_process(tmp_path: Path) -> None:
    model = forwardpass.load(bounded_negate(tmp_path / "wide", [-1, 2, 16]))
    np.testing.assert_array_equal(model.infer({"x": np.ones((3, 2, 16), np.float32)})["y"], -np.ones((3, 2, 16)))
    with pytest.raises(ShapeError) as refused:
        model.infer({"x": np.ones((1, 2, 17), np.float32)})
    assert str(refused.value) == (
        "input 'x' dimension 2 is 17, over its limit of 16 (inputs[].max_shape in model 'wide''s config)"
    )


@pytest.mark.parametrize(
    ("max_shape", "message"),
    [
        ([-1, 16], r"inputs.x.max_shape \[-1, 16\] has 2 dimensions, the model's input \[-1, 2, -1\] has 3"),
        ([-1, 3, 16], r"dimension 1 is fixed at 2 in the model; write 2 or -1 for it"),
        ([-1, 2, 0], r"dimension 2's bound 0 is under 1; write at least 1, or -1 \(none\)"),
    ],
)
def test_a_wrong_max_shape_is_refused_at_load(tmp_path: Path, max_shape: list[int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        forwardpass.load(bounded_negate(tmp_path / "wide", max_shape))


def test_ocr_rec_refuses_a_line_over_its_width_bound_before_running(tmp_path: Path) -> None:
    model = forwardpass.load(copy_bundled("ocr_rec", tmp_path))
    with pytest.raises(ShapeError, match=r"^input 'x' dimension 3 is 100000, over its limit of 8000 "):
        model.infer({"x": np.zeros((1, 3, 1, 100_000), np.float32)})
    line = io.BytesIO()
    Image.new("RGB", (2000, 10), "white").save(line, format="PNG")  # 48 high: 9,600 wide, kept whole ("extend")
    with pytest.raises(ShapeError, match=r"^input 'x' dimension 3 is 9600, over its limit of 8000 "):
        model.predict(line.getvalue())
