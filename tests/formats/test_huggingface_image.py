"""Hugging Face image folders: each image processor forwardpass reads prepares an image as transformers' does, and
one it does not reproduce exactly is refused naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forwardpass.errors import ConfigError
from forwardpass.formats.huggingface_image import PROCESSOR_CONFIG, image_preprocessing
from forwardpass.formats.torch import import_torch
from forwardpass.pipeline.image import ImagePreprocessor

import_torch("huggingface")  # before transformers: lets a torchvision built for another torch import

import transformers  # noqa: E402
from PIL import Image  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "images"
PHOTOS = sorted(SAMPLES.iterdir())
# Processors with their own defaults and with the settings users change, small sizes to keep the test fast; each
# against the processor's Pillow backend. Odd margins make the center crop's rounding show.
PROCESSORS: list[tuple[str, dict[str, Any]]] = [
    ("ViTImageProcessor", {}),
    ("ViTImageProcessor", {"size": {"height": 48, "width": 40}, "resample": 3, "do_normalize": False}),
    ("DeiTImageProcessor", {"size": {"height": 71, "width": 69}, "crop_size": {"height": 64, "width": 64}}),
    ("BitImageProcessor", {"size": {"shortest_edge": 67}, "crop_size": {"height": 64, "width": 64}}),
    ("CLIPImageProcessor", {}),
    ("MobileNetV1ImageProcessor", {"size": {"shortest_edge": 75}, "crop_size": {"height": 64, "width": 60}}),
    ("MobileNetV2ImageProcessor", {}),
    ("MobileNetV2ImageProcessor", {"size": {"shortest_edge": 64}, "do_center_crop": False, "resample": 0}),
    ("PvtImageProcessor", {"size": {"height": 32, "width": 32}, "resample": 1}),
    ("SiglipImageProcessor", {"rescale_factor": 1 / 127.5, "do_normalize": False}),
    ("ConvNextImageProcessor", {}),  # 384: warped to a square
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 64}, "crop_pct": 0.9}),  # resized to 71, cropped to 64
]


def pil_backend(name: str) -> Any:
    return getattr(transformers, f"{name}Pil")


@pytest.mark.parametrize(("name", "settings"), PROCESSORS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PROCESSORS)])
def test_an_image_is_prepared_as_the_processors_pillow_backend_prepares_it(
    name: str, settings: dict[str, Any], tmp_path: Path
):
    processor = pil_backend(name)(**settings)
    processor.save_pretrained(tmp_path)
    preprocessor = ImagePreprocessor(image_preprocessing(tmp_path), "pixel_values")
    for photo in PHOTOS:
        with Image.open(photo) as image:
            expected = processor(images=image.convert("RGB"), return_tensors="np")["pixel_values"][0]
        got = preprocessor(photo)["pixel_values"]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5, photo.name


def write_processor(folder: Path, **said: Any) -> Path:
    (folder / PROCESSOR_CONFIG).write_text(json.dumps(said))
    return folder / PROCESSOR_CONFIG


@pytest.mark.parametrize(
    ("said", "named"),
    [
        ({"image_processor_type": "EfficientNetImageProcessor"}, "image processor EfficientNetImageProcessor"),
        ({"do_resize": True}, "no image processor class (image_processor_type)"),
        ({"image_processor_type": "ViTImageProcessor", "resample": 4}, "ViTImageProcessor with resample BOX"),
        (
            {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 224, "longest_edge": 300}},
            "BitImageProcessor with size {'shortest_edge': 224, 'longest_edge': 300}",
        ),
        ({"image_processor_type": "ViTImageProcessor", "do_pad": True}, "ViTImageProcessor with do_pad true"),
        (
            {"image_processor_type": "MobileNetV2ImageProcessor", "size": {"shortest_edge": 200}},
            "MobileNetV2ImageProcessor with crop_size 224x224 larger than the resized image",
        ),
        (
            {"image_processor_type": "ConvNextImageProcessor", "size": {"height": 224, "width": 224}},
            "ConvNextImageProcessor with size {'height': 224, 'width': 224}",
        ),
    ],
)
def test_a_processor_forwardpass_does_not_reproduce_is_refused_naming_it(
    said: dict[str, Any], named: str, tmp_path: Path
):
    file = write_processor(tmp_path, **said)
    with pytest.raises(ConfigError) as refused:
        image_preprocessing(tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{file}: {named}") and "\n" not in message


def test_an_older_feature_extractor_file_is_read_with_its_processors_defaults(tmp_path: Path):
    """google/vit-base-patch16-224's file: a ViTFeatureExtractor, an int size, no rescale fields."""
    write_processor(
        tmp_path,
        feature_extractor_type="ViTFeatureExtractor",
        do_normalize=True,
        do_resize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=2,
        size=224,
    )
    config = image_preprocessing(tmp_path)
    assert (config.resize, config.crop, config.interpolation, config.scale) == ((224, 224), None, "bilinear", 1 / 255)
