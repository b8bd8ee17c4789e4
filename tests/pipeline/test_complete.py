"""A config checked against its model at load (forwardpass.pipeline.complete.check): refused naming the file, the
field, what the model takes and the fix, before any request is answered wrong or refused one by one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from PIL import Image

import forwardpass
from forwardpass.errors import ConfigError


def image_model(root: Path, preprocess: dict[str, Any]) -> Path:
    """A repository with one model: an [N, 1, 8, 8] grayscale input (fixed sides), its mean pixel out."""
    folder = root / "digits"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2, 3], keepdims=0)],
        "mean_pixel",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "1" / "model.onnx")
    config = {"preprocess": {"kind": "image", "color": "L", **preprocess}, "postprocess": {"kind": "raw"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.mark.parametrize(
    ("preprocess", "field", "made"),
    [
        ({"resize": 24, "crop": 20}, "crop", "20x20"),
        ({"resize": [20, 16]}, "resize", "20x16"),
        ({"letterbox": [16, 16]}, "letterbox", "16x16"),
    ],
)
def test_images_of_another_size_than_the_model_takes_are_refused_at_load(
    preprocess: dict[str, Any], field: str, made: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as refused:
        forwardpass.load("digits", repository=image_model(tmp_path, preprocess))
    assert str(refused.value) == (
        f"{tmp_path / 'digits' / 'config.yaml'}: field 'preprocess.{field}': makes {made} images, but input 'pixels' "
        f"takes 8x8 ([-1, 1, 8, 8]); fix: set {field} to [8, 8]"
    )


@pytest.mark.parametrize("preprocess", [{"resize": 12, "crop": 8}, {"resize": [8, 8]}, {"letterbox": [8, 8]}])
def test_images_made_at_the_size_the_model_takes_are_answered(preprocess: dict[str, Any], tmp_path: Path) -> None:
    photo = tmp_path / "grey.png"
    Image.fromarray(np.full((30, 40), 51, np.uint8)).save(photo)
    model = forwardpass.load("digits", repository=image_model(tmp_path, {**preprocess, "pad_value": 51}))
    assert model.predict(str(photo))["outputs"]["mean"] == pytest.approx(51 / 255)  # scale: 1/255 by default


def uint8_image_model(root: Path, preprocess: dict[str, Any]) -> Path:
    """A repository with one model taking [N, 1, 8, 8] UINT8 pixels (as a model that scales them itself does), their
    mean out as a float."""
    folder = root / "uint8"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["pixels"], ["floats"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["floats"], ["mean"], axes=[1, 2, 3], keepdims=0),
        ],
        "mean_uint8_pixel",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "1" / "model.onnx")
    config = {
        "preprocess": {"kind": "image", "color": "L", "resize": [8, 8], **preprocess},
        "postprocess": {"kind": "raw"},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def test_a_uint8_model_gets_the_pixels_as_they_are(tmp_path: Path) -> None:
    photo = tmp_path / "grey.png"
    Image.fromarray(np.full((30, 40), 51, np.uint8)).save(photo)
    model = forwardpass.load("uint8", repository=uint8_image_model(tmp_path, {"datatype": "UINT8", "scale": 1}))
    assert model.predict(str(photo))["outputs"]["mean"] == pytest.approx(51)


def test_images_made_in_another_datatype_than_the_model_takes_are_refused_at_load(tmp_path: Path) -> None:
    """The config loaded and every image was then refused with 'input 'pixels': expected UINT8 (uint8), got
    float32', which blames the image for the config's datatype."""
    with pytest.raises(ConfigError) as refused:
        forwardpass.load("uint8", repository=uint8_image_model(tmp_path, {"scale": 1}))
    assert str(refused.value) == (
        f"{tmp_path / 'uint8' / 'config.yaml'}: field 'preprocess.datatype': makes FP32 images, but input 'pixels' "
        "takes UINT8 ([-1, 1, 8, 8]); fix: set datatype to UINT8"
    )


def test_a_classification_over_scores_per_token_is_refused_at_load(tmp_path: Path) -> None:
    """A token classifier's [batch, sequence, classes]: one item's scores are many rows, which one top-k over all of
    them flattened would answer as a class index past the classes (exit 0)."""
    folder = tmp_path / "ner"
    (folder / "1").mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["logits_in"], ["logits"])],
        "per_token",
        [helper.make_tensor_value_info("logits_in", TensorProto.FLOAT, ["batch", "sequence", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "1" / "model.onnx")
    (folder / "config.yaml").write_text(yaml.safe_dump({"postprocess": {"kind": "classification"}}))
    with pytest.raises(ConfigError) as refused:
        forwardpass.load("ner", repository=tmp_path)
    assert str(refused.value) == (
        f"{folder / 'config.yaml'}: field 'postprocess.output': 'logits' (FP32 [-1, -1, 3]) holds a row of scores per "
        "position, not one per item; fix: classify an output of [batch, classes], or use kind: raw"
    )
