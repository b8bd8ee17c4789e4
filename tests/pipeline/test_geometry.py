"""Image preprocessing for detectors: letterbox (and the recorded transform that maps coordinates back), BGR order,
min/max side with sides rounded to a multiple (against RapidOCR's own detector preprocessing), dynamic-size inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw
from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess
from torch import nn

import forwardpass
from forwardpass.config import ImageConfig
from forwardpass.errors import ForwardpassError
from forwardpass.pipeline.geometry import TRANSFORM, ImageTransform
from forwardpass.pipeline.image import ImagePreprocessor

BOX = (64, 96)  # letterbox [height, width]


def preprocessor(**fields: object) -> ImagePreprocessor:
    return ImagePreprocessor(ImageConfig(kind="image", **fields), "input", record_transform=True)  # type: ignore[arg-type]


def rectangle_image(width: int, height: int, rect: tuple[int, int, int, int]) -> Image.Image:
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).rectangle((rect[0], rect[1], rect[2] - 1, rect[3] - 1), fill=255)  # pixels x1..x2-1
    return image.convert("RGB")


def half_crossings(profile: np.ndarray) -> tuple[float, float]:
    """Where a bright bar's profile (sampled at pixel centres i + 0.5) rises through and falls through 0.5."""
    above = np.flatnonzero(profile >= 0.5)
    first, last = above[0], above[-1]
    rise = first - 0.5 + (0.5 - profile[first - 1]) / (profile[first] - profile[first - 1])
    fall = last + 0.5 + (profile[last] - 0.5) / (profile[last] - profile[last + 1])
    return float(rise), float(fall)


@pytest.mark.parametrize(
    ("width", "height", "rect"),
    [(120, 80, (30, 20, 90, 61)), (100, 50, (13, 9, 70, 41)), (50, 90, (7, 11, 40, 70)), (30, 20, (4, 3, 25, 16))],
)
def test_letterbox_maps_a_drawn_box_back_to_within_half_a_pixel(
    width: int, height: int, rect: tuple[int, int, int, int]
) -> None:
    """The rectangle is found again in the letterboxed tensor (edges where its brightness crosses half) and its
    corners mapped back through the recorded transform land within 0.5 px of where it was drawn."""
    arrays = preprocessor(letterbox=BOX, color="L", pad_value=0, layout="NHWC")(rectangle_image(width, height, rect))
    pixels = arrays["input"][:, :, 0]
    transform = ImageTransform.from_array(arrays[TRANSFORM])
    middle = transform.to_input(np.asarray([(rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2]))
    x1, x2 = half_crossings(pixels[int(middle[1])])
    y1, y2 = half_crossings(pixels[:, int(middle[0])])
    corners = transform.to_original(np.asarray([[x1, y1], [x2, y2]]))
    np.testing.assert_allclose(corners.reshape(-1), rect, atol=0.5)


@pytest.mark.parametrize(("width", "height"), [(120, 80), (100, 50), (50, 90), (30, 20), (96, 64)])
def test_letterbox_pads_evenly_around_the_image_kept_in_proportion(width: int, height: int) -> None:
    arrays = preprocessor(letterbox=BOX, pad_value=114, scale=1.0, layout="NHWC")(Image.new("RGB", (width, height)))
    transform = ImageTransform.from_array(arrays[TRANSFORM])
    pixels = arrays["input"][:, :, 0]
    assert pixels.shape == BOX
    inside = np.argwhere(pixels == 0)  # the black image; the padding is 114
    (top, left), (bottom, right) = inside.min(axis=0), inside.max(axis=0) + 1
    assert (top, left) == (round(transform.offset_y), round(transform.offset_x))
    assert abs((top + bottom) - BOX[0]) <= 1 and abs((left + right) - BOX[1]) <= 1  # centred
    assert (right - left) / width == pytest.approx((bottom - top) / height, rel=0.05)  # aspect kept
    assert transform.to_original(np.asarray([[left, top], [right, bottom]])).tolist() == [[0, 0], [width, height]]


def test_top_left_alignment_puts_all_the_padding_right_and_below() -> None:
    arrays = preprocessor(letterbox=BOX, pad_align="top-left", pad_value=114, scale=1.0, layout="NHWC")(
        Image.new("RGB", (50, 90))
    )
    transform = ImageTransform.from_array(arrays[TRANSFORM])
    assert (transform.offset_x, transform.offset_y) == (0.0, 0.0)
    assert arrays["input"][0, 0, 0] == 0 and arrays["input"][0, -1, 0] == 114


def test_bgr_is_rgb_with_the_channels_reversed() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    rgb = preprocessor(resize=(16, 16))(image)["input"]
    bgr = preprocessor(resize=(16, 16), color="BGR")(image)["input"]
    np.testing.assert_array_equal(bgr, rgb[::-1])


@pytest.mark.parametrize(("width", "height"), [(640, 480), (1000, 300), (333, 777), (800, 800), (50, 36)])
def test_min_side_and_multiple_of_size_images_as_rapidocr_does(width: int, height: int) -> None:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    expected = DetPreProcess(limit_side_len=736, limit_type="min").resize(pixels).shape[:2]
    arrays = preprocessor(min_side=736, multiple_of=32)(Image.fromarray(pixels))
    assert arrays["input"].shape[1:] == expected
    transform = ImageTransform.from_array(arrays[TRANSFORM])
    assert (transform.input_height, transform.input_width) == expected
    assert transform.scale_x == expected[1] / width and transform.scale_y == expected[0] / height


def test_max_side_scales_down_only_what_is_too_big() -> None:
    assert preprocessor(max_side=100)(Image.new("RGB", (400, 200)))["input"].shape == (3, 50, 100)
    assert preprocessor(max_side=100)(Image.new("RGB", (40, 20)))["input"].shape == (3, 20, 40)


def test_an_image_too_small_for_the_multiple_is_refused() -> None:
    with pytest.raises(ForwardpassError, match="too small"):
        preprocessor(multiple_of=32)(Image.new("RGB", (10, 100)))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"letterbox": (64, 64), "resize": 32}, "letterbox sets the size"),
        ({"resize": 32, "min_side": 10}, "resize sets the size"),
        ({"letterbox": (64, 64), "crop": 32}, "crop and multiple_of do not apply"),
    ],
)
def test_conflicting_sizes_are_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ImageConfig(kind="image", **fields)


class Halve(nn.Module):
    """Fully convolutional: any height and width in, half of each out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 2, stride=2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image)


def export_halve(directory: Path, dynamic: bool) -> None:
    (directory / "1").mkdir(parents=True)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    torch.onnx.export(
        Halve().eval(),
        (torch.zeros(1, 3, 64, 64),),
        str(directory / "1" / "model.onnx"),
        input_names=["image"],
        output_names=["features"],
        dynamic_axes={"image": axes, "features": axes},
        opset_version=17,
        dynamo=False,
    )
    (directory / "config.yaml").write_text(yaml.safe_dump({"preprocess": {"kind": "image", "multiple_of": 2}}))


def test_a_dynamic_size_model_takes_each_image_at_its_own_size(tmp_path: Path) -> None:
    export_halve(tmp_path, dynamic=True)
    model = forwardpass.load(tmp_path)
    images = [Image.new("RGB", size) for size in [(64, 64), (100, 40), (31, 77)]]
    shapes = [np.asarray(p["outputs"]["features"]).shape for p in model.predict(images)]
    assert shapes == [(2, 32, 32), (2, 20, 50), (2, 38, 16)]  # sides rounded to even (77 → 76), then halved


def test_a_fixed_size_model_refuses_an_image_of_another_size_in_one_line(tmp_path: Path) -> None:
    export_halve(tmp_path, dynamic=False)
    with pytest.raises(ForwardpassError) as refused:
        forwardpass.load(tmp_path).predict(Image.new("RGB", (100, 40)))
    assert "image" in str(refused.value) and "\n" not in str(refused.value)
