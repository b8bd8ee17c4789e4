"""Segmentation: a per-pixel model built here (each pixel's class is its strongest colour channel), letterboxed; the
mask must come back at the original image's size with the classes where the colours were painted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import forwardpass
from forwardpass.errors import InputError
from forwardpass.pipeline.draw import draw
from forwardpass.pipeline.segmentation import mask_of

LABELS = ["red", "green", "blue"]


class StrongestChannel(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * 10.0  # class scores = the colour channels


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("segmenter")
    (folder / "1").mkdir()
    torch.onnx.export(
        StrongestChannel(),
        (torch.zeros(1, 3, 64, 64),),
        str(folder / "1" / "model.onnx"),
        input_names=["image"],
        output_names=["scores"],
        dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    config = {
        "max_batch_size": 4,
        "preprocess": {"kind": "image", "letterbox": [64, 64], "interpolation": "nearest", "pad_value": 0},
        "postprocess": {"kind": "segmentation", "labels": LABELS},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def painted(width: int, height: int) -> tuple[Image.Image, np.ndarray]:
    """Three vertical bands, red, green and blue, and the class of each pixel."""
    classes = np.minimum(np.arange(width) * 3 // width, 2)[None, :].repeat(height, axis=0)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[np.arange(height)[:, None], np.arange(width)[None, :], classes] = 200
    return Image.fromarray(pixels), classes


@pytest.mark.parametrize(("width", "height"), [(120, 60), (50, 90), (64, 64)])
def test_the_mask_has_the_original_size_and_the_painted_classes(segmenter: Path, width: int, height: int) -> None:
    image, expected = painted(width, height)
    found = forwardpass.load(segmenter).predict(image)
    mask = mask_of(found)
    assert mask.shape == (height, width) == (found["height"], found["width"])
    assert (mask == expected).mean() > 0.97  # all but the band edges, where the resize rounds
    fractions = {share["label"]: share["fraction"] for share in found["classes"]}
    for index, label in enumerate(LABELS):
        assert fractions[label] == pytest.approx((expected == index).mean(), abs=0.03)
    assert [share["fraction"] for share in found["classes"]] == sorted(fractions.values(), reverse=True)
    assert sum(fractions.values()) == pytest.approx(1.0)


def test_a_mask_is_drawn_over_the_image(segmenter: Path) -> None:
    image, _ = painted(90, 30)
    found = forwardpass.load(segmenter).predict(image)
    drawn = np.asarray(draw(Image.new("RGB", (90, 30), "white"), found))
    assert (drawn[:, :25] == 255).all()  # class 0 left clear
    assert not (drawn[:, 40:50] == 255).all()  # green tinted


def test_an_answer_with_nothing_to_draw_is_refused() -> None:
    with pytest.raises(InputError, match="boxes and masks"):
        draw(Image.new("RGB", (4, 4)), {"value": 1.0})
