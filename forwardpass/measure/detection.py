"""Detection accuracy on a COCO-style annotation file (images, annotations, categories), scored by pycocotools'
COCOeval: mAP@0.5 and mAP@0.5:0.95 overall and per class. Images are read relative to the file's folder; a
detection's label is matched to a category by name."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import ConfigError, ForwardpassError, InputError, MissingExtraError
from forwardpass.model import Model

__all__ = ["evaluate_detection", "is_coco"]


def is_coco(path: Path) -> bool:
    """A JSON file with COCO's images, annotations and categories."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        data = json.loads(path.read_bytes())
    except ValueError:
        return False
    return isinstance(data, dict) and {"images", "annotations", "categories"} <= data.keys()


def evaluate_detection(
    model: Model, annotations: Path, batch_size: int | None = None, on_progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise MissingExtraError("pycocotools", "measure") from None
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO(str(annotations))
    categories = {category["name"]: category["id"] for category in truth.loadCats(truth.getCatIds())}
    images = truth.loadImgs(sorted(truth.getImgIds()))
    folder = annotations.parent.resolve()
    size = batch_size or model.batch_size
    found: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    unknown: set[str] = set()
    for start in range(0, len(images), size):
        chunk = images[start : start + size]
        paths = [_image_path(folder, image["file_name"]) for image in chunk]
        for image, outcome in zip(chunk, model.predict_each(paths), strict=True):
            if isinstance(outcome, ForwardpassError):
                failures[image["file_name"]] = str(outcome)
                continue
            if "detections" not in outcome:
                raise ConfigError(f"model '{model.name}' gives no detections: COCO evaluation needs a detector")
            for detection in outcome["detections"]:
                category = categories.get(detection["label"])
                if category is None:
                    unknown.add(detection["label"])
                    continue
                x1, y1, x2, y2 = detection["box"]
                found.append(
                    {"image_id": image["id"], "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "score": detection["score"]}
                )  # fmt: skip
        if on_progress is not None:
            on_progress(len(chunk))
    report: dict[str, Any] = {
        "model": model.name,
        "data": str(annotations),
        "task": "detection",
        "images": len(images),
        "failures": failures,
        "labels_not_in_categories": sorted(unknown),
    }
    if not found:
        return {**report, "map_50": 0.0, "map_50_95": 0.0, "per_class": {name: _empty() for name in categories}}
    with contextlib.redirect_stdout(io.StringIO()):
        scored = COCOeval(truth, truth.loadRes(found), "bbox")
        scored.evaluate()
        scored.accumulate()
        scored.summarize()
    # precision: [IoU thresholds 0.5:0.95, recall points, classes, area ranges (all first), max detections (100 last)]
    precision = scored.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, category_id in enumerate(scored.params.catIds):
        name = truth.loadCats([category_id])[0]["name"]
        per_class[name] = {
            "map_50": _mean(precision[0, :, k]),
            "map_50_95": _mean(precision[:, :, k]),
            "instances": len(truth.getAnnIds(catIds=[category_id], iscrowd=False)),
        }
    return {**report, "map_50": float(scored.stats[1]), "map_50_95": float(scored.stats[0]), "per_class": per_class}


def _image_path(folder: Path, name: str) -> str:
    path = (folder / name).resolve()
    if not path.is_relative_to(folder):
        raise InputError(f"image '{name}' is outside the annotation file's folder {folder}")
    return str(path)


def _mean(values: np.ndarray) -> float:
    """COCO's mean over the precision entries that exist (-1: a class with no ground truth)."""
    present = values[values > -1]
    return float(present.mean()) if present.size else float("nan")


def _empty() -> dict[str, float]:
    return {"map_50": 0.0, "map_50_95": 0.0}
