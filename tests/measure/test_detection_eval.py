"""Detection mAP on a COCO annotation file through pycocotools: the bundled faces model on scikit-image's photos."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import forwardpass
from forwardpass.measure.detection import evaluate_detection, is_coco

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = [*sorted((ROOT / "samples" / "faces").iterdir()), ROOT / "samples" / "images" / "coffee.png"]


def write_annotations(folder: Path, extra: list[float] | None = None) -> Path:
    """COCO ground truth: the faces the model finds (7), plus `extra`, a face on coffee.png it cannot find."""
    model = forwardpass.load("faces")
    images, boxes = [], []
    for number, photo in enumerate(PHOTOS, start=1):
        shutil.copy(photo, folder / photo.name)
        images.append({"id": number, "file_name": photo.name})
        for face in model.predict(str(photo))["detections"]:
            x1, y1, x2, y2 = face["box"]
            boxes.append((number, [x1, y1, x2 - x1, y2 - y1]))
    if extra is not None:
        boxes.append((len(PHOTOS), extra))
    found = [
        {"id": i, "image_id": image, "category_id": 1, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
        for i, (image, box) in enumerate(boxes, start=1)
    ]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": found, "categories": [{"id": 1, "name": "face"}]}))
    return path


def test_faces_found_where_they_are_score_one(tmp_path: Path) -> None:
    path = write_annotations(tmp_path)
    assert is_coco(path)
    report = evaluate_detection(forwardpass.load("faces"), path)
    assert report["map_50"] == pytest.approx(1.0) and report["map_50_95"] == pytest.approx(1.0)
    assert report["per_class"]["face"]["instances"] == 7 and not report["failures"]


def test_a_face_the_model_misses_costs_its_share_of_recall(tmp_path: Path) -> None:
    """Precision 1 up to recall 7/8, nothing after: COCO's 101-point AP is 88/101 at every IoU threshold."""
    report = evaluate_detection(forwardpass.load("faces"), write_annotations(tmp_path, extra=[100, 100, 80, 80]))
    assert report["map_50"] == pytest.approx(88 / 101) and report["map_50_95"] == pytest.approx(88 / 101)


def test_eval_from_the_command_line(tmp_path: Path) -> None:
    path = write_annotations(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "forwardpass", "eval", "faces", str(path), "--json", "-o", str(tmp_path / "report")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["map_50"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "report" / "report.json").read_text())["per_class"]["face"]["map_50"] == 1.0


def test_a_table_is_not_coco(tmp_path: Path) -> None:
    (tmp_path / "rows.json").write_text(json.dumps([{"a": 1, "label": "x"}]))
    assert not is_coco(tmp_path / "rows.json")
