"""Explanations: SHAP attributions of a linear model equal coefficient x (value - baseline) and sum to prediction -
base value; occlusion saliency lands where the image model looks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import forwardpass
from forwardpass.explain import explain, saliency_png
from forwardpass.quality import build_profile

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # shap's own matplotlib calls
COLUMNS = ["age", "bmi", "bp", "s5"]


@pytest.fixture(scope="module")
def linear(tmp_path_factory) -> tuple[Path, object, np.ndarray]:
    """Ridge on 4 diabetes columns (raw units), min-max scaled, target standardized; with a reference profile."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    root = tmp_path_factory.mktemp("explain")
    data = load_diabetes(scaled=False)
    x = data.data[:, [list(data.feature_names).index(c) for c in COLUMNS]]
    low, high = x.min(axis=0), x.max(axis=0)
    y_mean, y_std = float(data.target.mean()), float(data.target.std())
    ridge = Ridge(alpha=0.5).fit((x - low) / (high - low), (data.target - y_mean) / y_std)
    folder = root / "linear"
    (folder / "1").mkdir(parents=True)
    onx = convert_sklearn(ridge, initial_types=[("input", FloatTensorType([None, 4]))], target_opset=17)
    onnx.save(onx, folder / "1" / "model.onnx")
    build_profile({c: x[:, i] for i, c in enumerate(COLUMNS)}, sample_size=100).save(folder / "profile.json")
    columns = [
        {"name": c, "transform": "minmax", "min": float(lo), "max": float(hi)}
        for c, lo, hi in zip(COLUMNS, low, high, strict=True)
    ]
    config = {
        "preprocess": {"kind": "tabular", "columns": columns},
        "postprocess": {"kind": "regression", "target": {"transform": "standard", "mean": y_mean, "std": y_std}},
        "profile": "profile.json",
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    raw_coefficients = ridge.coef_ * y_std / (high - low)  # d prediction / d raw value
    return folder, raw_coefficients, x


def test_linear_attributions_are_coefficient_times_offset(linear):
    folder, coefficients, x = linear
    model = forwardpass.load(folder)
    for row in x[[0, 7, 42]]:
        record = dict(zip(COLUMNS, map(float, row), strict=True))
        prediction = model.predict(record)
        explanation = explain(model, record, prediction)
        assert explanation["method"] == "shap.exact" and explanation["output"] == "value"
        baseline = np.array([explanation["baseline"][c] for c in COLUMNS])
        attributions = np.array([explanation["attributions"][c] for c in COLUMNS])
        np.testing.assert_allclose(attributions, coefficients * (row - baseline), rtol=1e-3, atol=1e-2)
        total = attributions.sum()
        assert total == pytest.approx(prediction["value"] - explanation["base_value"], abs=1e-3)


def test_without_a_profile_the_baseline_is_each_columns_impute(linear, tmp_path):
    folder, coefficients, x = linear
    copy = tmp_path / "linear"
    (copy / "1").mkdir(parents=True)
    (copy / "1" / "model.onnx").write_bytes((folder / "1" / "model.onnx").read_bytes())
    config = yaml.safe_load((folder / "config.yaml").read_text())
    del config["profile"]
    for column, value in zip(config["preprocess"]["columns"], (50.0, 25.0, 90.0, 4.5), strict=True):
        column["impute"] = value
    (copy / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    model = forwardpass.load(copy)
    record = dict(zip(COLUMNS, map(float, x[3]), strict=True))
    explanation = explain(model, record, model.predict(record))
    expected = coefficients * (x[3] - np.array([50.0, 25.0, 90.0, 4.5]))
    np.testing.assert_allclose([explanation["attributions"][c] for c in COLUMNS], expected, rtol=1e-3, atol=1e-2)


def test_classifier_attributions_sum_to_probability_minus_base(tmp_path):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    data = load_breast_cancer()
    x = data.data[:, :12]  # 12 columns: shap's permutation algorithm
    names = [f"c{i}" for i in range(12)]
    mean, std = x.mean(axis=0), x.std(axis=0)
    classifier = LogisticRegression(max_iter=2000).fit((x - mean) / std, data.target)
    (tmp_path / "cls" / "1").mkdir(parents=True)
    onx = convert_sklearn(
        classifier,
        initial_types=[("input", FloatTensorType([None, 12]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
        options={id(classifier): {"zipmap": False}},
    )
    onnx.save(onx, tmp_path / "cls" / "1" / "model.onnx")
    build_profile({n: x[:, i] for i, n in enumerate(names)}, sample_size=100).save(tmp_path / "cls" / "profile.json")
    columns = [
        {"name": n, "transform": "standard", "mean": float(m), "std": float(s)}
        for n, m, s in zip(names, mean, std, strict=True)
    ]
    config = {
        "preprocess": {"kind": "tabular", "columns": columns},
        "postprocess": {
            "kind": "classification",
            "output": "probabilities",
            "activation": "none",
            "labels": ["m", "b"],
        },
        "profile": "profile.json",
    }
    (tmp_path / "cls" / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    model = forwardpass.load(tmp_path / "cls")
    record = dict(zip(names, map(float, x[5]), strict=True))
    prediction = model.predict(record)
    explanation = explain(model, record, prediction)
    assert explanation["method"] == "shap.permutation"
    assert explanation["output"] == f"P({prediction['label']})"
    total = sum(explanation["attributions"].values())
    assert total == pytest.approx(prediction["score"] - explanation["base_value"], abs=1e-5)
    assert explain(model, record, prediction) == explanation  # sampled orderings are seeded: same input, same answer


def _quadrant_model(path: Path) -> None:
    """Logits [sum of the top-left 4x4 quadrant, 0] on a 1x8x8 image: only that quadrant matters."""
    mask = np.zeros((1, 1, 8, 8), dtype=np.float32)
    mask[..., :4, :4] = 1.0
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["image", "mask"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "axes"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Concat", ["total", "nothing"], ["logits"], axis=1),
        ],
        "quadrant",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            numpy_helper.from_array(mask, "mask"),
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.zeros((1, 1), dtype=np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save(model, path)


def test_occlusion_saliency_lies_where_the_model_looks(tmp_path):
    from PIL import Image

    _quadrant_model(tmp_path / "quadrant" / "1" / "model.onnx")
    config = {
        "preprocess": {"kind": "image", "color": "L", "resize": [8, 8], "scale": 1 / 255},
        "postprocess": {"kind": "classification", "labels": ["bright", "dark"]},
    }
    (tmp_path / "quadrant" / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    picture = tmp_path / "bright.png"
    Image.fromarray(np.full((8, 8), 40, dtype=np.uint8), mode="L").save(picture)
    model = forwardpass.load(tmp_path / "quadrant")
    prediction = model.predict(str(picture))
    assert prediction["label"] == "bright"
    explanation = explain(model, str(picture), prediction)
    saliency = np.asarray(explanation["saliency"])
    assert explanation["method"] == "occlusion" and saliency.shape == (8, 8)
    assert explanation["score"] == pytest.approx(prediction["score"], abs=1e-6)
    assert (saliency[:4, :4] > 0).all()
    assert np.allclose(saliency[4:, :], 0) and np.allclose(saliency[:, 4:], 0)
    png = saliency_png(explanation["saliency"], scale=4)
    assert png.startswith(b"\x89PNG") and Image.open(__import__("io").BytesIO(png)).size == (32, 32)


def test_occlusion_in_float32_chunks_equals_a_straightforward_float64_occlusion(tmp_path):
    """Softmax(W · image) on a 3x16x16 image, 4 rows per forward pass: the 225 occluded copies go in 57 chunks, and
    every pixel's saliency equals the one computed here, all 225 copies at once in float64 with numpy."""
    from PIL import Image

    rng = np.random.default_rng(3)
    weights = rng.standard_normal((3 * 16 * 16, 3)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "linear_image",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    (tmp_path / "linear" / "1").mkdir(parents=True)
    onnx.save(onnx_model, tmp_path / "linear" / "1" / "model.onnx")
    config = {
        "max_batch_size": 4,
        "preprocess": {"kind": "image", "color": "RGB", "resize": [16, 16], "scale": 1 / 255, "layout": "NCHW"},
        "postprocess": {"kind": "classification", "activation": "softmax", "labels": ["a", "b", "c"]},
    }
    (tmp_path / "linear" / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    picture = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), mode="RGB").save(picture)
    model = forwardpass.load(tmp_path / "linear")
    prediction = model.predict(str(picture))
    explanation = explain(model, str(picture), prediction)

    image = model.preprocess(str(picture))["image"].astype(np.float64)
    size, stride = 2, 1  # 16 // 8, then half of it
    corners = [(top, left) for top in range(0, 16 - size + 1, stride) for left in range(0, 16 - size + 1, stride)]
    occluded = np.repeat(image[None], len(corners), axis=0)
    for n, (top, left) in enumerate(corners):
        occluded[n, :, top : top + size, left : left + size] = 0.0
    batch = np.concatenate([image[None], occluded]).reshape(len(corners) + 1, -1)
    logits = batch @ weights.astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    scores = probabilities[:, int(prediction["index"])]
    total, covered = np.zeros((16, 16)), np.zeros((16, 16))
    for drop, (top, left) in zip(scores[0] - scores[1:], corners, strict=True):
        total[top : top + size, left : left + size] += drop
        covered[top : top + size, left : left + size] += 1
    expected = total / covered

    assert (explanation["patch"], explanation["stride"]) == (size, stride)
    assert explanation["score"] == pytest.approx(scores[0], abs=1e-6)
    saliency = np.asarray(explanation["saliency"])
    assert np.abs(expected).max() > 1e-3  # occlusion moves the probability: the comparison below means something
    np.testing.assert_allclose(saliency, expected, rtol=0, atol=1e-6)
