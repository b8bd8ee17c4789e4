"""Detection postprocessing against independent references: NMS against OpenCV's cv2.dnn.NMSBoxes; a YOLO-layout
detector (torch, random weights) exported to ONNX, whose forwardpass detections must equal a decode + OpenCV NMS
written here on the same raw outputs; anchors against MediaPipe's published BlazeFace anchor count and layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import forwardpass
from forwardpass.config import AnchorsConfig, DetectionConfig
from forwardpass.errors import ConfigError, ForwardpassError, ShapeError
from forwardpass.pipeline.anchors import generate_anchors
from forwardpass.pipeline.detection import Detect, nms
from forwardpass.pipeline.geometry import TRANSFORM, ImageTransform

INPUT = 64  # the detector's square input
CLASSES = 3
CELLS = 8  # an 8 x 8 grid: 64 candidate boxes


def random_boxes(rng: np.random.Generator, count: int, extent: float = 100.0) -> np.ndarray:
    """[count, 4] x1 y1 x2 y2, crowded so that many overlap."""
    corner = rng.uniform(0, extent, (count, 2))
    size = rng.uniform(2, extent / 3, (count, 2))
    return np.concatenate([corner, corner + size], axis=1)


def opencv_nms(boxes: np.ndarray, scores: np.ndarray, iou: float, score_threshold: float = 0.0) -> list[int]:
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return [int(i) for i in np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), score_threshold, iou))]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_nms_keeps_what_opencv_keeps(seed: int, iou: float) -> None:
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 200)
    scores = rng.uniform(0, 1, 200)
    assert nms(boxes, scores, iou).tolist() == opencv_nms(boxes, scores, iou)


def test_nms_of_nothing_is_nothing() -> None:
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


class GridDetector(nn.Module):
    """A YOLO-style head on random weights: one row of (cx, cy, w, h, class scores) per cell, in input pixels,
    laid out [4 + classes, cells] as Ultralytics' YOLOv8 exports it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1))
        self.head = nn.Conv2d(32, 4 + CLASSES, 2, stride=2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        raw = self.head(self.features(image)).flatten(2)  # [batch, 4 + classes, cells]
        cell = torch.arange(CELLS * CELLS)
        grid = torch.stack([cell % CELLS, cell // CELLS]).to(raw.dtype)  # each cell's column and row
        centre = (grid + torch.sigmoid(raw[:, :2] * 4)) * (INPUT / CELLS)
        size = torch.sigmoid(raw[:, 2:4] * 4) * INPUT / 2
        return torch.cat([centre, size, torch.sigmoid(raw[:, 4:] * 4)], dim=1)


def export(model: nn.Module, directory: Path) -> None:
    """The detector as version 1 of the model folder: input 'images', output 'output0', any batch size."""
    (directory / "1").mkdir()
    torch.onnx.export(
        model.eval(),
        (torch.zeros(1, 3, INPUT, INPUT),),
        str(directory / "1" / "model.onnx"),
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("detector")
    export(GridDetector(), directory)
    config = {
        "max_batch_size": 8,
        "preprocess": {"kind": "image", "letterbox": [INPUT, INPUT], "pad_value": 114, "mean": [0.0], "std": [1.0]},
        "postprocess": {
            "kind": "detection",
            "layout": "yolo_columns",
            "score_threshold": 0.5,
            "iou_threshold": 0.45,
            "labels": ["cat", "dog", "bird"],
        },
    }
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return directory


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def reference_letterbox(image: Image.Image) -> tuple[np.ndarray, float, float, int, int]:
    """Ultralytics' LetterBox: scale to fit, sides rounded, padding split evenly (the smaller half on the left/top)."""
    ratio = min(INPUT / image.height, INPUT / image.width)
    new_w, new_h = round(image.width * ratio), round(image.height * ratio)
    resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.float32)
    left, top = round((INPUT - new_w) / 2 - 0.1), round((INPUT - new_h) / 2 - 0.1)
    canvas = np.full((INPUT, INPUT, 3), 114.0, dtype=np.float32)
    canvas[top : top + new_h, left : left + new_w] = resized
    return (canvas / 255.0).transpose(2, 0, 1), new_w / image.width, new_h / image.height, left, top


def reference_detections(directory: Path, image: Image.Image, iou: float, agnostic: bool) -> list[dict[str, Any]]:
    tensor, scale_x, scale_y, left, top = reference_letterbox(image)
    session = ort.InferenceSession(str(directory / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = session.run(None, {"images": tensor[None]})[0][0].T  # [cells, 4 + classes]
    classes, scores = rows[:, 4:].argmax(axis=1), rows[:, 4:].max(axis=1)
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    xywh = np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)
    if agnostic:
        kept = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.5, iou))
    else:
        kept = np.asarray(cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), classes.tolist(), 0.5, iou))
    ranked = sorted(kept.reshape(-1).tolist(), key=lambda i: -scores[i])
    found = []
    for i in ranked:
        x1 = np.clip((xywh[i, 0] - left) / scale_x, 0, image.width)
        y1 = np.clip((xywh[i, 1] - top) / scale_y, 0, image.height)
        x2 = np.clip((xywh[i, 0] + xywh[i, 2] - left) / scale_x, 0, image.width)
        y2 = np.clip((xywh[i, 1] + xywh[i, 3] - top) / scale_y, 0, image.height)
        found.append({"box": [x1, y1, x2, y2], "score": scores[i], "index": int(classes[i])})
    return found


def variant(directory: Path, tmp_path: Path, **postprocess: object) -> Path:
    """The detector of `directory` with some postprocess fields changed."""
    config = yaml.safe_load((directory / "config.yaml").read_text())
    config["postprocess"] |= postprocess
    (tmp_path / "1").mkdir(parents=True)
    (tmp_path / "1" / "model.onnx").write_bytes((directory / "1" / "model.onnx").read_bytes())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


@pytest.mark.parametrize(("width", "height"), [(64, 64), (200, 120), (90, 300), (37, 41)])
@pytest.mark.parametrize("agnostic", [False, True])
def test_yolo_detections_equal_a_reference_decode_and_opencv_nms(
    detector_dir: Path, tmp_path: Path, width: int, height: int, agnostic: bool
) -> None:
    image = photo(width, height, seed=width)
    model = forwardpass.load(variant(detector_dir, tmp_path, class_agnostic=agnostic, iou_threshold=0.3))
    preprocessed = model.preprocess(image)
    np.testing.assert_allclose(preprocessed["images"], reference_letterbox(image)[0], atol=1e-6)
    found = model.predict(image)["detections"]
    expected = reference_detections(detector_dir, image, iou=0.3, agnostic=agnostic)
    assert len(found) == len(expected) > 0
    for got, want in zip(found, expected, strict=True):
        assert got["index"] == want["index"]
        assert got["label"] == ["cat", "dog", "bird"][want["index"]]
        assert got["score"] == pytest.approx(float(want["score"]), abs=1e-6)
        np.testing.assert_allclose(got["box"], want["box"], atol=1e-3)


def test_detections_of_a_batch_equal_those_one_by_one(detector_dir: Path) -> None:
    model = forwardpass.load(detector_dir)
    images = [photo(80 + 10 * i, 60, seed=i) for i in range(4)]
    assert model.predict(images) == [model.predict(image) for image in images]


def test_nothing_above_the_threshold_is_an_empty_list(detector_dir: Path, tmp_path: Path) -> None:
    model = forwardpass.load(variant(detector_dir, tmp_path, score_threshold=1.0))
    assert model.predict(photo(50, 70, seed=1)) == {"detections": []}


def test_a_missing_output_is_refused_at_load(detector_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no tensor 'boxes'"):
        forwardpass.load(variant(detector_dir, tmp_path, output="boxes"))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"layout": "anchors"}, "required by layout anchors"),
        ({"layout": "boxes", "keypoints": 6}, "keypoints are read with layouts anchors, yolo and yolo_columns"),
        ({"layout": "yolo", "boxes": "b"}, "reads one output"),
    ],
)
def test_inconsistent_detection_configs_are_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        DetectionConfig(kind="detection", **fields)


def test_blazeface_anchors_follow_mediapipe() -> None:
    """BlazeFace short range: 16x16 cells with 2 anchors (stride 8), then 8x8 cells with 6 (three stride-16 layers,
    each an anchor and an interpolated one): 896, every one 1 x 1 (fixed size), centred in its cell."""
    anchors = generate_anchors(AnchorsConfig(input_size=(128, 128), strides=[8, 16, 16, 16]))
    assert anchors.shape == (896, 4)
    first = anchors[:512].reshape(16, 16, 2, 4)
    second = anchors[512:].reshape(8, 8, 6, 4)
    np.testing.assert_allclose(first[3, 5, 1, :2], [(5 + 0.5) / 16, (3 + 0.5) / 16])
    np.testing.assert_allclose(second[7, 2, 4, :2], [(2 + 0.5) / 8, (7 + 0.5) / 8])
    assert (anchors[:, 2:] == 1.0).all()


def test_anchor_sizes_follow_the_scales_when_not_fixed() -> None:
    options = AnchorsConfig(
        input_size=(64, 64), strides=[16, 32], min_scale=0.2, max_scale=0.8, fixed_anchor_size=False
    )
    anchors = generate_anchors(options)
    assert anchors.shape == (4 * 4 * 2 + 2 * 2 * 2, 4)
    np.testing.assert_allclose(anchors[0, 2:], [0.2, 0.2], rtol=1e-6)  # aspect 1 at the first layer's scale
    np.testing.assert_allclose(anchors[1, 2:], [np.sqrt(0.2 * 0.8)] * 2, rtol=1e-6)  # interpolated to the next
    np.testing.assert_allclose(anchors[-1, 2:], [np.sqrt(0.8 * 1.0)] * 2, rtol=1e-6)  # the last layer's: to 1.0


def decode(config: dict[str, Any], outputs: dict[str, np.ndarray], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Detect on one item's raw outputs, boxes in the input's pixels (no image transform)."""
    return Detect(DetectionConfig(kind="detection", **config), names, None)(outputs, {})["detections"]


def test_yolo_rows_with_objectness_scale_the_class_scores() -> None:
    rows = np.asarray([[50, 40, 20, 10, 0.5, 0.9, 0.2], [10, 10, 4, 4, 0.9, 0.1, 0.3]], dtype=np.float32)
    found = decode({"layout": "yolo", "objectness": True, "score_threshold": 0.2}, {"out": rows}, ("out",))
    assert [(d["index"], round(d["score"], 6)) for d in found] == [(0, 0.45), (1, 0.27)]
    assert found[0]["box"] == [40.0, 35.0, 60.0, 45.0]


@pytest.mark.parametrize(
    ("box_format", "raw"),
    [("xyxy", [40, 35, 60, 45]), ("xywh", [40, 35, 20, 10]), ("yxyx", [35, 40, 45, 60]), ("cxcywh", [50, 40, 20, 10])],
)
def test_boxes_and_scores_in_each_box_format(box_format: str, raw: list[float]) -> None:
    outputs = {"boxes": np.asarray([raw], dtype=np.float32), "scores": np.asarray([0.8], dtype=np.float32)}
    found = decode({"layout": "boxes", "box_format": box_format}, outputs, ("boxes", "scores"))
    assert found == [{"box": [40.0, 35.0, 60.0, 45.0], "score": pytest.approx(0.8), "label": "0", "index": 0}]


def test_normalized_boxes_scale_to_the_input_and_map_back_to_the_image() -> None:
    config = DetectionConfig(kind="detection", layout="boxes", box_format="xyxy", normalized=True)
    detect = Detect(config, ("boxes", "scores"), ["thing"], mapped=True)
    # a 200 x 100 image letterboxed into 64 x 64: scaled by 0.32, 16 rows of padding above
    transform = ImageTransform(200, 100, 0.32, 0.32, 0.0, 16.0, 64, 64).to_array()
    outputs = {"boxes": np.asarray([[0.25, 0.5, 0.75, 0.75]]), "scores": np.asarray([[0.9]])}
    (found,) = detect(outputs, {TRANSFORM: transform})["detections"]
    np.testing.assert_allclose(
        found["box"], [50.0, 50.0, 150.0, 100.0]
    )  # input [16, 32, 48, 48]: x / 0.32, (y - 16) / 0.32
    assert found["label"] == "thing"
    with pytest.raises(ForwardpassError, match="transform did not reach"):
        detect(outputs, {})


def test_max_detections_and_top_k_keep_the_best() -> None:
    rows = np.asarray([[10 * i + 5, 5, 4, 4, 0.1 * i] for i in range(1, 9)], dtype=np.float32)
    detect = Detect(
        DetectionConfig(kind="detection", layout="yolo", max_detections=3, score_threshold=0.0), ("o",), None
    )
    assert [round(d["score"], 6) for d in detect({"o": rows}, {})["detections"]] == [0.8, 0.7, 0.6]
    assert len(detect({"o": rows}, {}, top_k=5)["detections"]) == 5


KEYPOINTS = 5


class PoseGridDetector(GridDetector):
    """GridDetector with YOLOv8-pose's keypoints: after the class scores, (x, y, visibility) per keypoint, x and y
    in input pixels around each cell (some outside the input), visibility through a sigmoid, as Ultralytics'
    Pose head exports them: [batch, 4 + classes + 3 * keypoints, cells]."""

    def __init__(self) -> None:
        super().__init__()
        self.points = nn.Conv2d(32, 3 * KEYPOINTS, 2, stride=2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.features(image)
        raw = self.points(features).flatten(2).unflatten(1, (KEYPOINTS, 3))  # [batch, keypoints, 3, cells]
        cell = torch.arange(CELLS * CELLS)
        grid = torch.stack([cell % CELLS, cell // CELLS]).to(raw.dtype)[None, None]
        xy = (grid + raw[:, :, :2] * 8) * (INPUT / CELLS)
        visibility = torch.sigmoid(raw[:, :, 2:] * 4)
        return torch.cat([super().forward(image), torch.cat([xy, visibility], dim=2).flatten(1, 2)], dim=1)


@pytest.fixture(scope="module")
def pose_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    directory = tmp_path_factory.mktemp("pose")
    export(PoseGridDetector(), directory)
    config = {
        "preprocess": {"kind": "image", "letterbox": [INPUT, INPUT], "pad_value": 114},
        "postprocess": {"kind": "detection", "layout": "yolo_columns", "score_threshold": 0.5, "keypoints": KEYPOINTS},
    }
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return directory


def reference_pose(directory: Path, image: Image.Image) -> list[dict[str, Any]]:
    """YOLOv8-pose's rows decoded here: class scores, OpenCV's per-class NMS, each kept row's (x, y, visibility)
    triples, x and y mapped back through the letterbox (unclipped: a keypoint may lie outside the image)."""
    tensor, scale_x, scale_y, left, top = reference_letterbox(image)
    session = ort.InferenceSession(str(directory / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = session.run(None, {"images": tensor[None]})[0][0].T  # [cells, 4 + classes + 3 * keypoints]
    class_scores = rows[:, 4 : 4 + CLASSES]
    classes, scores = class_scores.argmax(axis=1), class_scores.max(axis=1)
    xywh = np.stack([rows[:, 0] - rows[:, 2] / 2, rows[:, 1] - rows[:, 3] / 2, rows[:, 2], rows[:, 3]], axis=1)
    kept = np.asarray(cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), classes.tolist(), 0.5, 0.45))
    found = []
    for i in sorted(kept.reshape(-1).tolist(), key=lambda i: -scores[i]):
        triples = rows[i, 4 + CLASSES :].reshape(KEYPOINTS, 3)
        x, y = (triples[:, 0] - left) / scale_x, (triples[:, 1] - top) / scale_y
        found.append({"index": int(classes[i]), "keypoints": np.stack([x, y], axis=1), "visibility": triples[:, 2]})
    return found


@pytest.mark.parametrize(("width", "height"), [(64, 64), (200, 120), (90, 300)])
def test_yolo_pose_keypoints_equal_a_reference_decode(pose_dir: Path, width: int, height: int) -> None:
    image = photo(width, height, seed=width + 1)
    found = forwardpass.load(pose_dir).predict(image)["detections"]
    expected = reference_pose(pose_dir, image)
    assert len(found) == len(expected) > 0
    for got, want in zip(found, expected, strict=True):
        assert got["index"] == want["index"]
        np.testing.assert_allclose(got["keypoints"], want["keypoints"], atol=1e-3)
        np.testing.assert_allclose(got["keypoint_scores"], want["visibility"], atol=1e-6)
    outside = np.concatenate([want["keypoints"] for want in expected])
    assert ((outside < 0) | (outside > max(width, height))).any()  # the mapping is tested unclipped too


def test_yolo_keypoints_that_do_not_fit_the_rows_are_refused(pose_dir: Path, tmp_path: Path) -> None:
    """At load where the output's width is in the graph (Ultralytics' exports: [1, 56, 8400]), else on the rows."""
    dynamic = forwardpass.load(variant(pose_dir, tmp_path / "dynamic", keypoints=6))
    with pytest.raises(ShapeError, match=r"not a yolo_columns table of 4 box numbers, class scores and 6 keypoints"):
        dynamic.predict(photo(40, 40, seed=0))
    static = variant(pose_dir, tmp_path / "static", keypoints=6)
    graph = onnx.load(str(static / "1" / "model.onnx"))
    graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 4 + CLASSES + 3 * KEYPOINTS
    onnx.save(graph, str(static / "1" / "model.onnx"))
    with pytest.raises(ConfigError, match=r"'output0' \[-1, 22, 64\] has 22 numbers per candidate, but layout "):
        forwardpass.load(static)
