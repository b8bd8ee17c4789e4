"""Reading text: DBNet probability maps → text boxes (as PaddleOCR's DBPostProcess, with OpenCV contours and
min-area rectangles, Clipper offsetting and Shapely areas rather than hand-written geometry), greedy CTC decoding of a
recognizer's scores, and upright crops of text boxes for the next model. OpenCV, pyclipper and Shapely come with the
`ocr` extra and are imported when a text model is loaded."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from forwardpass.config import CtcConfig, TextDetectionConfig
from forwardpass.errors import ConfigError, MissingExtraError, ShapeError
from forwardpass.pipeline.geometry import ImageTransform, recorded_transform
from forwardpass.pipeline.outputs import Prediction, Row

__all__ = ["CtcDecode", "DetectText", "crop_quad", "reading_order"]


def _require(module: str) -> ModuleType:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(module, "ocr") from None


class DetectText:
    """{"boxes": [{"points": [[x, y] x 4] clockwise from the top left, "score"}]} in original pixels, in reading
    order (top to bottom, then left to right on a line)."""

    def __init__(self, config: TextDetectionConfig, output: str, mapped: bool = False) -> None:
        self.config = config
        self.mapped = mapped  # the image preprocessing records its transform: boxes go back to the original pixels
        self.output = output
        self.cv2 = _require("cv2")
        self.pyclipper = _require("pyclipper")
        self.polygon = _require("shapely.geometry").Polygon

    def __call__(self, outputs: Row, inputs: Row, top_k: int | None = None) -> Prediction:
        found = outputs[self.output]
        if found.ndim < 2:
            raise ShapeError(f"text_detection: output '{self.output}' {list(found.shape)} is not a probability map")
        probability = found.reshape(found.shape[-2:]).astype(np.float32)
        height, width = found.shape[-2], found.shape[-1]
        transform = recorded_transform(inputs, self.mapped) or ImageTransform.identity(width, height)
        boxes = []
        for points, score in self.boxes(probability):
            # the map has the input's pixels; RapidOCR rounds, clips and orders the corners in the original image
            original = np.round(
                transform.to_original(points * (transform.input_width / width, transform.input_height / height))
            )
            corners = _clockwise(original)
            corners[:, 0] = np.clip(corners[:, 0], 0, transform.width - 1).astype(np.int64)
            corners[:, 1] = np.clip(corners[:, 1], 0, transform.height - 1).astype(np.int64)
            if int(np.linalg.norm(corners[0] - corners[1])) <= 3 or int(np.linalg.norm(corners[0] - corners[3])) <= 3:
                continue
            boxes.append({"points": corners.tolist(), "score": float(score)})
        return {"boxes": reading_order(boxes)}

    def boxes(self, probability: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Quadrilaterals [4, 2] in map pixels with their mean map score."""
        cv2, config = self.cv2, self.config
        bitmap = (probability > config.threshold).astype(np.uint8)
        if config.dilate:
            bitmap = cv2.dilate(bitmap, np.ones((2, 2), dtype=np.uint8))
        contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        found = []
        for contour in contours[: config.max_candidates]:
            points, short_side = self._min_area_box(contour)
            if short_side < config.min_size:
                continue
            score = self._mean_score(probability, points)
            if score < config.box_threshold:
                continue
            grown = self._unclip(points)
            if grown is None:
                continue
            points, short_side = self._min_area_box(grown)
            if short_side < config.min_size + 2:
                continue
            found.append((points, score))
        return found

    def _min_area_box(self, contour: np.ndarray) -> tuple[np.ndarray, float]:
        """The contour's minimum-area rectangle, corners from the top left clockwise, and its shorter side."""
        rectangle = self.cv2.minAreaRect(contour)
        corners = sorted(self.cv2.boxPoints(rectangle).tolist(), key=lambda point: point[0])
        top_left, bottom_left = (corners[0], corners[1]) if corners[1][1] > corners[0][1] else (corners[1], corners[0])
        top_right, bottom_right = (
            (corners[2], corners[3]) if corners[3][1] > corners[2][1] else (corners[3], corners[2])
        )
        box = np.asarray([top_left, top_right, bottom_right, bottom_left], dtype=np.float32)
        return box, min(rectangle[1])

    def _mean_score(self, probability: np.ndarray, points: np.ndarray) -> float:
        """The map's mean inside the box (PaddleOCR's box_score_fast)."""
        height, width = probability.shape
        x_min = int(np.clip(np.floor(points[:, 0].min()), 0, width - 1))
        x_max = int(np.clip(np.ceil(points[:, 0].max()), 0, width - 1))
        y_min = int(np.clip(np.floor(points[:, 1].min()), 0, height - 1))
        y_max = int(np.clip(np.ceil(points[:, 1].max()), 0, height - 1))
        mask = np.zeros((y_max - y_min + 1, x_max - x_min + 1), dtype=np.uint8)
        shifted = (points - (x_min, y_min)).astype(np.int32)
        self.cv2.fillPoly(mask, shifted.reshape(1, -1, 2), 1)
        return float(self.cv2.mean(probability[y_min : y_max + 1, x_min : x_max + 1], mask)[0])

    def _unclip(self, points: np.ndarray) -> np.ndarray | None:
        """The box grown by area * unclip_ratio / perimeter (Clipper's round offset)."""
        polygon = self.polygon(points)
        distance = polygon.area * self.config.unclip_ratio / polygon.length
        offset = self.pyclipper.PyclipperOffset()
        offset.AddPath(points, self.pyclipper.JT_ROUND, self.pyclipper.ET_CLOSEDPOLYGON)
        grown = offset.Execute(distance)
        if len(grown) != 1:  # the offset split the box or left nothing: PaddleOCR's reshape would fail on it
            return None
        return np.asarray(grown[0], dtype=np.float32).reshape(-1, 1, 2)


def _clockwise(points: np.ndarray) -> np.ndarray:
    """Corners ordered top-left, top-right, bottom-right, bottom-left (by x, then y within each side)."""
    by_x = points[np.argsort(points[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.asarray([left[0], right[0], right[1], left[1]], dtype=np.float64)


def reading_order(boxes: list[dict[str, Any]], line_tolerance: float = 10.0) -> list[dict[str, Any]]:
    """Top to bottom by the top-left corner; boxes whose tops are within `line_tolerance` pixels read left to right
    (PaddleOCR's sorted_boxes, the same swaps)."""
    ordered = sorted(boxes, key=lambda box: (box["points"][0][1], box["points"][0][0]))
    for i in range(len(ordered) - 1):
        for j in range(i, -1, -1):
            here, following = ordered[j]["points"][0], ordered[j + 1]["points"][0]
            if abs(following[1] - here[1]) < line_tolerance and following[0] < here[0]:
                ordered[j], ordered[j + 1] = ordered[j + 1], ordered[j]
            else:
                break
    return ordered


def crop_quad(pixels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The quadrilateral `points` [4, 2] (clockwise from the top left) of an image array cut out upright by a
    perspective warp (bicubic, edges replicated); a crop 1.5 times taller than wide is turned to lie flat."""
    cv2 = _require("cv2")
    quad = points.astype(np.float32)
    width = int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3])))
    height = int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))
    target = np.asarray([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    warp = cv2.getPerspectiveTransform(quad, target)
    crop = cv2.warpPerspective(pixels, warp, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    return np.rot90(crop) if crop.shape[0] >= crop.shape[1] * 1.5 else crop


class CtcDecode:
    """{"text", "score" (the mean of its characters' scores; 0 with none), "characters": [{"char", "score"}]}."""

    def __init__(self, config: CtcConfig, output: str, model_dir: Path) -> None:
        self.output = output
        self.blank = config.blank
        listed = (
            _read_characters(model_dir, config.characters)
            if isinstance(config.characters, str)
            else list(config.characters)
        )
        classes = [*listed[: config.blank], "", *listed[config.blank :]]
        self.classes = [*classes, " "] if config.space else classes

    def __call__(self, outputs: Row, inputs: Row, top_k: int | None = None) -> Prediction:
        scores = outputs[self.output]
        scores = scores.reshape(-1, scores.shape[-1])
        if scores.shape[1] != len(self.classes):
            raise ShapeError(
                f"ctc: output '{self.output}' scores {scores.shape[1]} classes, the characters make {len(self.classes)}"
            )
        best = scores.argmax(axis=1)
        confidence = scores.max(axis=1)
        keep = np.ones(len(best), dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        keep &= best != self.blank
        characters = [
            {"char": self.classes[i], "score": float(s)} for i, s in zip(best[keep], confidence[keep], strict=True)
        ]
        text = "".join(c["char"] for c in characters)
        score = float(np.mean(confidence[keep])) if keep.any() else 0.0
        return {"text": text, "score": score, "characters": characters}


def _read_characters(model_dir: Path, name: str) -> list[str]:
    """One character a line; unlike labels, a line holding a space is a character (PaddleOCR's dictionaries)."""
    path = model_dir / name
    if not path.resolve().is_relative_to(model_dir.resolve()):
        raise ConfigError(f"postprocess.characters '{name}' points outside the model folder {model_dir}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"postprocess.characters: cannot read {path} ({exc.strerror}); create it") from None
    lines = text.removesuffix("\n").split("\n")
    return [line.removesuffix("\r") for line in lines]
