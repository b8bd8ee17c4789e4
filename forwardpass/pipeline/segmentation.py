"""Semantic segmentation: per-pixel class scores → the best class of every pixel of the original image, as a PNG of
class indices (base64), and the share of the image each class covers."""

from __future__ import annotations

import base64
import io

import numpy as np

from forwardpass.config import SegmentationConfig
from forwardpass.errors import ShapeError
from forwardpass.pipeline.geometry import ImageTransform, recorded_transform
from forwardpass.pipeline.outputs import Prediction, Row

__all__ = ["Segment", "mask_of"]


class Segment:
    """{"mask_png": base64 PNG (8-bit class indices, 16-bit past 256 classes), "width", "height",
    "classes": [{"label", "index", "fraction"}] largest first}."""

    def __init__(self, config: SegmentationConfig, output: str, labels: list[str] | None, mapped: bool = False) -> None:
        self.output = output
        self.mapped = mapped  # the image preprocessing records its transform: the mask goes back to the original size
        self.channels_last = config.channels == "last"
        self.labels = labels

    def __call__(self, outputs: Row, inputs: Row, top_k: int | None = None) -> Prediction:
        scores = outputs[self.output]
        if scores.ndim != 3:
            raise ShapeError(f"segmentation: output '{self.output}' {list(scores.shape)} is not [classes, h, w]")
        best = scores.argmax(axis=2 if self.channels_last else 0)
        transform = recorded_transform(inputs, self.mapped)
        if transform is not None:
            best = _to_original(best, transform)
        classes = int(scores.shape[2 if self.channels_last else 0])
        counts = np.bincount(best.reshape(-1), minlength=classes)
        present = np.flatnonzero(counts)
        present = present[np.argsort(-counts[present], kind="stable")]  # the largest first
        shares = [
            {"label": self._label(int(i)), "index": int(i), "fraction": float(counts[i] / best.size)} for i in present
        ]
        from PIL import Image  # only for a segmentation model: a server of other models never imports Pillow

        mode = "L" if classes <= 256 else "I;16"
        buffer = io.BytesIO()
        Image.fromarray(best.astype(np.uint8 if mode == "L" else np.uint16), mode).save(buffer, format="PNG")
        return {
            "mask_png": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "width": int(best.shape[1]),
            "height": int(best.shape[0]),
            "classes": shares,
        }

    def _label(self, index: int) -> str:
        return self.labels[index] if self.labels and index < len(self.labels) else str(index)


def _to_original(best: np.ndarray, transform: ImageTransform) -> np.ndarray:
    """Each original pixel takes the class of the input pixel its centre falls in (the preprocessing is an
    axis-aligned scale and shift, so rows and columns map separately)."""
    height, width = best.shape
    columns = np.floor((np.arange(transform.width) + 0.5) * transform.scale_x + transform.offset_x).astype(np.int64)
    rows = np.floor((np.arange(transform.height) + 0.5) * transform.scale_y + transform.offset_y).astype(np.int64)
    classes: np.ndarray = best[np.clip(rows, 0, height - 1)][:, np.clip(columns, 0, width - 1)]
    return classes


def mask_of(prediction: Prediction) -> np.ndarray:
    """The class-index array of a segmentation answer."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(prediction["mask_png"]))))
