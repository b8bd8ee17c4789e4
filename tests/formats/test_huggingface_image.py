"""Hugging Face image folders: each image processor forwardpass reads prepares an image as transformers' does, and
one it does not reproduce exactly is refused naming it."""

from __future__ import annotations

import functools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

import forwardpass
from forwardpass.errors import ConfigError
from forwardpass.formats import ServeMode
from forwardpass.formats.huggingface_image import PROCESSOR_BY_MODEL_TYPE, PROCESSOR_CONFIG, image_preprocessing
from forwardpass.formats.torch import import_torch
from forwardpass.pipeline.image import ImagePreprocessor
from tests.running_server import serve

torch = import_torch("huggingface")  # before transformers: lets a torchvision built for another torch import

import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

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
    ("BeitImageProcessor", {"do_reduce_labels": True}),  # segmentation maps' labels: images are not reduced
    ("BeitImageProcessor", {"size": {"height": 67, "width": 67}, "do_center_crop": True, "crop_size": 64}),
    ("SiglipImageProcessor", {"rescale_factor": 1 / 127.5, "do_normalize": False}),
    ("MobileViTImageProcessor", {"size": {"shortest_edge": 288}}),  # BGR, not normalized: apple/mobilevit-small's
    ("MobileViTImageProcessor", {"size": 70, "crop_size": 64, "do_flip_channel_order": False, "do_normalize": True}),
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
    preprocessor = ImagePreprocessor(image_preprocessing(tmp_path, "vit"), "pixel_values")
    for photo in PHOTOS:
        with Image.open(photo) as image:
            expected = processor(images=image.convert("RGB"), return_tensors="np")["pixel_values"][0]
        got = preprocessor(photo)["pixel_values"]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5, photo.name


VIT = {"image_processor_type": "ViTImageProcessor"}


def write_processor(folder: Path, **said: Any) -> Path:
    (folder / PROCESSOR_CONFIG).write_text(json.dumps(said))
    return folder / PROCESSOR_CONFIG


@pytest.mark.parametrize(
    ("said", "named"),
    [
        ({"image_processor_type": "EfficientNetImageProcessor"}, "image processor EfficientNetImageProcessor"),
        ({"do_resize": True}, "no image processor class (image_processor_type) for efficientnet"),
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
        # hostile values: each loaded and answered NaN, or ended in float()'s traceback, or refused every image
        ({**VIT, "image_mean": [math.nan] * 3}, "ViTImageProcessor as image preprocessing: mean must be finite"),
        ({**VIT, "image_std": 1e400}, "ViTImageProcessor as image preprocessing: std divides each channel"),
        ({**VIT, "image_std": [0.5, 0, 0.5]}, "ViTImageProcessor as image preprocessing: std divides each channel"),
        ({**VIT, "rescale_factor": "1/255"}, "ViTImageProcessor with rescale_factor '1/255'"),
        ({**VIT, "rescale_factor": 0}, "ViTImageProcessor as image preprocessing: scale 0 makes every image the same"),
        ({**VIT, "size": 100_000}, "ViTImageProcessor as image preprocessing: resize (100000, 100000) makes images"),
        (
            {"image_processor_type": "ConvNextImageProcessor", "size": 9000},
            "ConvNextImageProcessor as image preprocessing: resize (9000, 9000) makes images of over max_pixels",
        ),
    ],
)
def test_a_processor_forwardpass_does_not_reproduce_is_refused_naming_it(
    said: dict[str, Any], named: str, tmp_path: Path
):
    file = write_processor(tmp_path, **said)
    with pytest.raises(ConfigError) as refused:
        image_preprocessing(tmp_path, "efficientnet")
    message = str(refused.value)
    assert message.startswith(f"{file}: {named}") and "\n" not in message


@pytest.mark.parametrize("model_type", sorted(PROCESSOR_BY_MODEL_TYPE))
def test_a_file_that_names_no_processor_is_read_as_the_one_transformers_picks_for_the_model_type(
    model_type: str, tmp_path: Path
):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    processor = PROCESSOR_BY_MODEL_TYPE[model_type]
    # MobileViT's defaults crop 256 of a 224 shortest edge (padding, refused): its checkpoints resize to 288
    write_processor(tmp_path, **({"size": 288} if processor == "MobileViTImageProcessor" else {}))
    picked = transformers.AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert f"{processor}Pil" == type(picked).__name__
    expected = picked(images=Image.open(PHOTOS[0]).convert("RGB"), return_tensors="np")["pixel_values"][0]
    got = ImagePreprocessor(image_preprocessing(tmp_path, model_type), "pixel_values")(PHOTOS[0])["pixel_values"]
    assert np.abs(got - expected).max() <= 1e-5


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
    config = image_preprocessing(tmp_path, "vit")
    assert (config.resize, config.crop, config.interpolation, config.scale) == ((224, 224), None, "bilinear", 1 / 255)


# --- image classifier folders, end to end --------------------------------------------------------------------------

LABELS = {0: "tabby", 1: "teapot", 2: "daisy", 3: "rocket", 4: "palace"}
# Against transformers with its Pillow backend: 6.6e-7 at most measured, natively and converted
ATOL = 1e-5
# Its default (torchvision) backend resamples 8-bit images within a level or two of Pillow's: 3.6e-4 at most measured
TORCHVISION_ATOL = 1e-3


def classifier_folder(folder: Path, model: Any, processor: Any) -> Path:
    """`model` (random weights, seeded) saved with `processor` as a Hugging Face folder; its classifier's weights
    scaled so that the classes' probabilities are far apart, as a trained model's are."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("classifier") and name.endswith("weight"):
                parameter.mul_(40)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def heads(**config: Any) -> dict[str, Any]:
    return {"num_labels": len(LABELS), "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}, **config}


def vit(folder: Path, **config: Any) -> Path:
    torch.manual_seed(0)
    settings: dict[str, Any] = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1}
    settings |= {"num_attention_heads": 2, "intermediate_size": 64}
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**settings, **heads(**config)))
    return classifier_folder(folder, model, transformers.ViTImageProcessor(size={"height": 32, "width": 32}))


def convnext(folder: Path) -> Path:
    torch.manual_seed(1)
    settings: dict[str, Any] = {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2}
    model = transformers.ConvNextForImageClassification(transformers.ConvNextConfig(**settings, **heads()))
    processor = transformers.ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875)  # 73, cropped to 64
    return classifier_folder(folder, model, processor)


def resnet(folder: Path) -> Path:
    """ResNet with its own processor (ConvNeXt's): 384 and above warps to a square, no crop."""
    torch.manual_seed(2)
    settings: dict[str, Any] = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"}
    model = transformers.ResNetForImageClassification(transformers.ResNetConfig(**settings, **heads()))
    processor = transformers.ConvNextImageProcessor(size={"shortest_edge": 384}, resample=2)
    return classifier_folder(folder, model, processor)


BUILDERS = {"vit": vit, "convnext": convnext, "resnet": resnet}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_images")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@functools.cache
def pipeline_answers(folder: Path, pillow: bool) -> list[list[dict[str, Any]]]:
    """transformers' image-classification pipeline on the sample photos, every class: with its default image
    processor backend (torchvision), or the Pillow one (once per folder: native and converted compare with it)."""
    processor = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil" if pillow else None)
    classify = transformers.pipeline("image-classification", model=str(folder), image_processor=processor)
    return [classify(str(photo), top_k=len(LABELS)) for photo in PHOTOS]


def ranked(prediction: dict[str, Any]) -> list[tuple[str, float]]:
    return [(entry["label"], entry["score"]) for entry in prediction["top_k"]]


def assert_answers(got: list[dict[str, Any]], expected: list[list[dict[str, Any]]], atol: float) -> None:
    for prediction, answer in zip(got, expected, strict=True):
        assert [label for label, _ in ranked(prediction)] == [entry["label"] for entry in answer]
        scores = np.asarray([score for _, score in ranked(prediction)])
        assert np.abs(scores - [entry["score"] for entry in answer]).max() <= atol


@pytest.mark.parametrize("serve", ["native", "onnx"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_a_folder_without_a_config_answers_images_as_transformers_pipeline_does(
    folders: dict[str, Path], name: str, serve: ServeMode
):
    model = forwardpass.load(folders[name], serve=serve, warmup=0)
    assert "preprocessor_config.json" in model.inferred["preprocess"]
    got = model.predict([str(photo) for photo in PHOTOS], top_k=len(LABELS))
    assert isinstance(got, list)
    assert_answers(got, pipeline_answers(folders[name], pillow=True), ATOL)
    assert_answers(got, pipeline_answers(folders[name], pillow=False), TORCHVISION_ATOL)
    model.close()


def test_a_multi_label_image_classifier_scores_each_class_with_a_sigmoid_as_transformers_pipeline_does(
    tmp_path: Path,
):
    folder = vit(tmp_path / "tags", problem_type="multi_label_classification")
    model = forwardpass.load(folder, serve="native", warmup=0)
    assert model.config.postprocess.activation == "sigmoid"  # type: ignore[union-attr]
    got = model.predict([str(photo) for photo in PHOTOS], top_k=len(LABELS))
    assert_answers(got, pipeline_answers(folder, pillow=True), ATOL)


FORWARDPASS = str(Path(sys.executable).parent / "forwardpass")


def forwardpass_predict(*arguments: object) -> subprocess.CompletedProcess[str]:
    command = [FORWARDPASS, "predict", *map(str, arguments), "--serve", "native", "--json"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_forwardpass_predict_answers_a_folder_and_a_photo_as_the_pipeline_does(folders: dict[str, Path]):
    done = forwardpass_predict(folders["vit"], PHOTOS[0], "--top-k", len(LABELS))
    assert done.returncode == 0, done.stderr
    assert_answers([json.loads(done.stdout)], pipeline_answers(folders["vit"], pillow=True)[:1], ATOL)


def test_the_server_answers_a_photo_posted_to_the_folders_predict_as_the_pipeline_does(
    folders: dict[str, Path], tmp_path: Path
):
    shutil.copytree(folders["vit"], tmp_path / "vit" / "1")
    running = serve(tmp_path)
    try:
        answer = httpx.post(
            f"{running.url}/v2/models/vit/predict?top_k={len(LABELS)}",
            content=PHOTOS[0].read_bytes(),
            headers={"Content-Type": "image/png"},
            timeout=60,
        )
    finally:
        running.stop()
    assert answer.status_code == 200, answer.text
    assert_answers([answer.json()], pipeline_answers(folders["vit"], pillow=True)[:1], ATOL)


def unreproducible_folder(folder: Path) -> Path:
    """A ViT classifier whose preprocessor_config.json names a processor forwardpass does not reproduce."""
    vit(folder)
    write_processor(folder, image_processor_type="EfficientNetImageProcessor", rescale_offset=True)
    return folder


def test_a_folder_whose_processor_forwardpass_does_not_reproduce_is_refused_at_load_naming_it(tmp_path: Path):
    folder = unreproducible_folder(tmp_path / "efficientnet_preprocessed")
    with pytest.raises(ConfigError) as refused:
        forwardpass.load(folder, serve="native", warmup=0)
    assert str(refused.value).startswith(
        f"{folder}: field 'preprocess': {folder / PROCESSOR_CONFIG}: image processor EfficientNetImageProcessor, "
        "which forwardpass does not reproduce exactly (it reproduces ViTImageProcessor, "
    )
    done = forwardpass_predict(folder, PHOTOS[0])
    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (2, "", 1)
    assert "EfficientNetImageProcessor" in done.stderr


def test_a_config_that_declares_the_preprocessing_serves_a_folder_whose_processor_is_not_reproduced(tmp_path: Path):
    """Declared, else inferred, else refused: the user's own preprocess section is theirs to answer for."""
    unreproducible_folder(tmp_path / "repository" / "tags" / "1")
    preprocess = {"kind": "image", "input": "pixel_values", "resize": [32, 32], "mean": [0.5], "std": [0.5]}
    (tmp_path / "repository" / "tags" / "config.yaml").write_text(yaml.safe_dump({"preprocess": preprocess}))
    model = forwardpass.load("tags", repository=tmp_path / "repository", serve="native", warmup=0)
    assert model.predict(str(PHOTOS[0]))["label"] in LABELS.values()


@pytest.mark.parametrize(
    ("architecture", "model_type", "task"),
    [
        ("DetrForObjectDetection", "detr", "object detection"),
        ("SegformerForSemanticSegmentation", "segformer", "image segmentation"),
        ("ViTModel", "vit", "image feature extraction"),
    ],
)
def test_a_folder_of_a_vision_task_forwardpass_does_not_run_is_refused_naming_the_task(
    architecture: str, model_type: str, task: str, tmp_path: Path
):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [architecture]}))
    save_file({"weight": torch.zeros(1)}, tmp_path / "model.safetensors")
    write_processor(tmp_path, image_processor_type="ViTImageProcessor")
    for mode in ("native", "onnx"):
        with pytest.raises(ConfigError) as refused:
            forwardpass.load(tmp_path, serve=mode, warmup=0)
        assert str(refused.value).startswith(
            f"{tmp_path / 'config.json'}: architecture {architecture} ({task}) is not one forwardpass runs ("
        )
