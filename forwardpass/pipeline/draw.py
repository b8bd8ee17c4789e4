"""Seeing an answer: a detection's boxes (with label, score and keypoints), text boxes, a pipeline's regions (with
their text or label) or a segmentation mask drawn on the image they were found in."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageDraw

from forwardpass.errors import InputError
from forwardpass.pipeline.outputs import Prediction
from forwardpass.pipeline.segmentation import mask_of

__all__ = ["draw"]

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]


def draw(image: Image.Image, prediction: Prediction) -> Image.Image:
    """A copy of `image` with what `prediction` found drawn on it; InputError for an answer with nothing to draw."""
    if "mask_png" in prediction:
        return _overlay(image.convert("RGB"), mask_of(prediction))
    shapes = prediction.get("detections", prediction.get("boxes", prediction.get("regions")))
    if shapes is None:
        raise InputError(
            "--draw draws boxes and masks: this model's answers have none (detection, text_detection, segmentation, "
            "pipelines)"
        )
    canvas = image.convert("RGB")
    pen = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 400))
    for shape in shapes:
        colour = COLOURS[int(shape.get("index", 0)) % len(COLOURS)]
        if "points" in shape:
            corners = [tuple(point) for point in shape["points"]]
            pen.polygon(corners, outline=colour, width=width)
            anchor = corners[0]
        else:
            pen.rectangle(shape["box"], outline=colour, width=width)
            anchor = (shape["box"][0], shape["box"][1])
        for x, y in shape.get("keypoints", []):
            pen.ellipse((x - 2 * width, y - 2 * width, x + 2 * width, y + 2 * width), fill=colour)
        caption = _caption(shape)
        if caption:
            _, top, _, bottom = pen.textbbox(anchor, caption)
            lifted = (anchor[0], max(0.0, anchor[1] - (bottom - top) - 2))  # the caption sits above the shape
            pen.rectangle(pen.textbbox(lifted, caption), fill=colour)
            pen.text(lifted, caption, fill="white")
    return canvas


def _overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """Each class in its colour, half transparent over the image (class 0, usually the background, left clear)."""
    palette = np.asarray([ImageColor.getrgb(colour) for colour in COLOURS], dtype=np.uint8)
    colours = Image.fromarray(palette[mask % len(COLOURS)], "RGB")
    shown = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), "L")
    return Image.composite(Image.blend(image, colours, 0.5), image, shown)


def _caption(shape: dict[str, Any]) -> str:
    if "text" in shape:
        return str(shape["text"])
    if "label" in shape:
        return f"{shape['label']} {shape.get('score', shape.get('box_score', 0.0)):.2f}"
    return ""
