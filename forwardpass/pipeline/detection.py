"""Detections from a detector's raw outputs: boxes decoded from the common layouts (YOLO rows or columns, SSD offsets
against anchors, boxes + scores), thresholded, non-maximum suppressed (hard or MediaPipe's weighted, per class or
across classes) and mapped back to the original image's pixels through the recorded preprocessing."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from forwardpass.config import DetectionConfig
from forwardpass.errors import ConfigError, ShapeError
from forwardpass.pipeline.anchors import generate_anchors
from forwardpass.pipeline.geometry import ImageTransform, recorded_transform
from forwardpass.pipeline.outputs import Prediction, Row

__all__ = ["Decoded", "Detect", "box_iou", "nms", "weighted_nms"]


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [x1, y1, x2, y2] box with each of `boxes` [N, 4]; 0 where the union is empty."""
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0.0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0.0, None)
    intersection = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    union = area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - intersection
    iou: np.ndarray = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
    return iou


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: the indices kept, best score first (equal scores in input order). A box is dropped when its IoU
    with a box already kept is above `iou_threshold`."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, order = order[0], order[1:]
        keep.append(best)
        order = order[box_iou(boxes[best], boxes[order]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's weighted NMS: the best remaining box and every remaining box overlapping it by more than the
    threshold become one detection whose box and points are their score-weighted mean and whose score is the best's.
    → (kept indices, boxes [K, 4], points [K, P, 2])."""
    order = np.argsort(-scores, kind="stable")
    kept, merged_boxes, merged_points = [], [], []
    while order.size:
        best = order[0]
        close = box_iou(boxes[best], boxes[order]) > iou_threshold
        group = order[close] if close.any() else order[:1]
        weights = scores[group] / scores[group].sum()
        kept.append(best)
        merged_boxes.append(np.tensordot(weights, boxes[group], axes=1))
        merged_points.append(np.tensordot(weights, points[group], axes=1))
        order = order[~close] if close.any() else order[1:]
    return np.asarray(kept, dtype=np.int64), np.asarray(merged_boxes), np.asarray(merged_points)


class Decoded(NamedTuple):
    """A detector's candidates in input pixels: boxes [N, 4] x1 y1 x2 y2, class scores [N, C], points [N, P, 2], or
    [N, P, 3] with each point's visibility (YOLO pose)."""

    boxes: np.ndarray
    scores: np.ndarray
    points: np.ndarray


def _to_corners(raw: np.ndarray, box_format: str) -> np.ndarray:
    a, b, c, d = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
    if box_format == "cxcywh":
        return np.stack([a - c / 2, b - d / 2, a + c / 2, b + d / 2], axis=1)
    if box_format == "xywh":
        return np.stack([a, b, a + c, b + d], axis=1)
    if box_format == "yxyx":
        return np.stack([b, a, d, c], axis=1)
    return np.stack([a, b, c, d], axis=1)


class Detect:
    """{"detections": [{"box": [x1, y1, x2, y2], "score", "label", "index", "keypoints": [[x, y], ...],
    "keypoint_scores" (YOLO pose: each keypoint's visibility)}]}, best first, in the original image's pixels when
    the image preprocessing recorded its transform (else the input's)."""

    def __init__(
        self, config: DetectionConfig, outputs: tuple[str, ...], labels: list[str] | None, mapped: bool = False
    ) -> None:
        self.config = config
        self.mapped = mapped  # the image preprocessing records its transform: boxes go back to the original pixels
        self.outputs = outputs  # yolo layouts: (output,); anchors and boxes: (boxes, scores)
        self.labels = labels
        self.anchors = generate_anchors(config.anchors) if config.anchors is not None else None

    def __call__(self, outputs: Row, inputs: Row, top_k: int | None = None) -> Prediction:
        transform = recorded_transform(inputs, self.mapped)
        decoded = self.decode(outputs, transform)
        best = decoded.scores.argmax(axis=1) if decoded.scores.size else np.zeros(0, dtype=np.int64)
        score = decoded.scores.max(axis=1) if decoded.scores.size else np.zeros(0)
        boxes = decoded.boxes
        valid = (score > self.config.score_threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, points, best, score = boxes[valid], decoded.points[valid], best[valid], score[valid]
        boxes, points, best, score = self._suppress(boxes, points, best, score)
        limit = top_k or self.config.max_detections
        boxes, points, best, score = boxes[:limit], points[:limit], best[:limit], score[:limit]
        if transform is not None:
            boxes = transform.to_original(boxes.reshape(-1, 2, 2)).reshape(-1, 4)
            points = np.concatenate([transform.to_original(points[:, :, :2], clip=False), points[:, :, 2:]], axis=2)
        return {"detections": [self._detection(*item) for item in zip(boxes, points, best, score, strict=True)]}

    def decode(self, outputs: Row, transform: ImageTransform | None) -> Decoded:
        config = self.config
        if config.layout in ("yolo", "yolo_columns"):
            table = outputs[self.outputs[0]].astype(np.float64)
            table = table.reshape(table.shape[-2:]) if table.ndim > 2 else table
            rows = table.T if config.layout == "yolo_columns" else table
            first_score = 5 if config.objectness else 4
            first_point = rows.shape[-1] - 3 * config.keypoints  # (x, y, visibility) per keypoint after the scores
            if rows.ndim != 2 or first_point <= first_score:
                raise ShapeError(
                    f"detection: output {list(table.shape)} is not a {config.layout} table of 4 box numbers"
                    f"{', objectness' if config.objectness else ''}, class scores and {config.keypoints} keypoints"
                )
            scores = self._activate(rows[:, first_score:first_point])
            if config.objectness:
                scores = scores * self._activate(rows[:, 4:5])
            boxes = _to_corners(rows[:, :4], config.box_format)
            points = rows[:, first_point:].reshape(len(rows), config.keypoints, 3)
        else:
            raw = outputs[self.outputs[0]].astype(np.float64)
            raw = raw.reshape(-1, raw.shape[-1])
            scores = outputs[self.outputs[1]].astype(np.float64).reshape(len(raw), -1)
            scores = self._activate(scores)
            if config.layout == "anchors":
                boxes, points = self._from_anchors(raw)
            else:
                boxes, points = _to_corners(raw.reshape(-1, 4), config.box_format), np.zeros((len(raw), 0, 2))
        if config.normalized or config.layout == "anchors":
            if transform is None:
                raise ConfigError("detection: normalized boxes need the image preprocessing (preprocess kind image)")
            size = np.asarray([transform.input_width, transform.input_height], dtype=np.float64)
            boxes = boxes * np.tile(size, 2)
            points = np.concatenate([points[:, :, :2] * size, points[:, :, 2:]], axis=2)
        return Decoded(boxes, scores, points)

    def _from_anchors(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MediaPipe's TensorsToDetectionsCalculator: offsets scaled by box_scale, relative to each anchor."""
        anchors = self.anchors
        assert anchors is not None
        expected = 4 + 2 * self.config.keypoints
        if raw.shape != (len(anchors), expected):
            raise ShapeError(
                f"detection: box output {list(raw.shape)} does not fit {len(anchors)} anchors of {expected} numbers"
            )
        x_scale, y_scale, w_scale, h_scale = self.config.box_scale
        centre, size = anchors[:, :2].astype(np.float64), anchors[:, 2:].astype(np.float64)
        xy = raw[:, :2] / (x_scale, y_scale) * size + centre
        wh = raw[:, 2:4] / (w_scale, h_scale) * size
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
        points = raw[:, 4:].reshape(len(raw), -1, 2) / (x_scale, y_scale) * size[:, None] + centre[:, None]
        return boxes, points

    def _activate(self, scores: np.ndarray) -> np.ndarray:
        if self.config.score_clip is not None:
            scores = np.clip(scores, -self.config.score_clip, self.config.score_clip)
        if self.config.activation == "sigmoid":
            probabilities: np.ndarray = 1.0 / (1.0 + np.exp(-scores))
            return probabilities
        return scores

    def _suppress(
        self, boxes: np.ndarray, points: np.ndarray, classes: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """NMS within each class (or across all), then every kept detection best first."""
        groups = (
            [np.arange(len(boxes))]
            if self.config.class_agnostic
            else [np.flatnonzero(classes == c) for c in np.unique(classes)]
        )
        kept_boxes, kept_points, kept = [], [], []
        for group in groups:
            if self.config.nms == "weighted":
                indices, merged, merged_points = weighted_nms(
                    boxes[group], scores[group], points[group], self.config.iou_threshold
                )
            else:
                indices = nms(boxes[group], scores[group], self.config.iou_threshold)
                merged, merged_points = boxes[group][indices], points[group][indices]
            kept.append(group[indices])
            kept_boxes.append(merged.reshape(-1, 4))
            kept_points.append(merged_points.reshape(len(indices), *points.shape[1:]))
        if not kept:
            return boxes, points, classes, scores
        chosen = np.concatenate(kept)
        order = np.argsort(-scores[chosen], kind="stable")
        merged_boxes = np.concatenate(kept_boxes)[order]
        merged_points = np.concatenate(kept_points)[order]
        chosen = chosen[order]
        return merged_boxes, merged_points, classes[chosen], scores[chosen]

    def _detection(self, box: np.ndarray, points: np.ndarray, index: np.integer, score: np.floating) -> Prediction:
        label = self.labels[int(index)] if self.labels and int(index) < len(self.labels) else str(int(index))
        found: Prediction = {"box": [float(v) for v in box], "score": float(score), "label": label, "index": int(index)}
        if self.config.keypoints:
            found["keypoints"] = points[:, :2].tolist()
            if points.shape[1] == 3:  # YOLO pose: each keypoint's visibility
                found["keypoint_scores"] = points[:, 2].tolist()
        return found
