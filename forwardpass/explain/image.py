"""Occlusion saliency for image models: a patch of zeros (the normalized mean) slides over the preprocessed image
and each pixel's saliency is the mean drop of the explained class's probability over the patches covering it."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from forwardpass.config import ImageConfig
from forwardpass.errors import ConfigError
from forwardpass.explain.outputs import scalar_outputs
from forwardpass.model import Model
from forwardpass.pipeline import Arrays

__all__ = ["occlusion_saliency", "saliency_png"]


def occlusion_saliency(model: Model, item: Arrays, index: int, patch: int | None = None) -> dict[str, Any]:
    config = model.config.preprocess
    if not isinstance(config, ImageConfig):
        raise ConfigError(f"model '{model.name}': occlusion saliency needs an image model")
    input_name = config.input or model.inputs[0].name
    image = item[input_name].astype(np.float64)
    channels_last = config.layout == "NHWC"
    height, width = image.shape[:2] if channels_last else image.shape[1:3]
    size = patch or max(1, min(height, width) // 8)
    stride = max(1, size // 2)
    corners = [
        (top, left)
        for top in range(0, max(height - size, 0) + 1, stride)
        for left in range(0, max(width - size, 0) + 1, stride)
    ]
    occluded = np.repeat(image[None], len(corners), axis=0)
    for n, (top, left) in enumerate(corners):
        if channels_last:
            occluded[n, top : top + size, left : left + size, :] = 0.0
        else:
            occluded[n, :, top : top + size, left : left + size] = 0.0
    batch = np.concatenate([image[None], occluded])
    scores = scalar_outputs(model, batch, input_name, index, chunk=model.batch_size)
    drops = scores[0] - scores[1:]
    total = np.zeros((height, width))
    covered = np.zeros((height, width))
    for drop, (top, left) in zip(drops, corners, strict=True):
        total[top : top + size, left : left + size] += drop
        covered[top : top + size, left : left + size] += 1
    saliency = total / np.maximum(covered, 1)
    return {
        "method": "occlusion",
        "patch": size,
        "stride": stride,
        "score": float(scores[0]),
        "saliency": saliency.tolist(),
    }


def saliency_png(saliency: list[list[float]], scale: int = 1) -> bytes:
    """A heat map: white where occlusion costs nothing (or helps), deep red where it costs the most."""
    values = np.clip(np.asarray(saliency, dtype=np.float64), 0.0, None)
    peak = float(values.max())
    heat = values / peak if peak > 0 else values
    rgb = np.stack([np.full_like(heat, 255.0), 255.0 * (1 - heat), 255.0 * (1 - heat)], axis=-1).astype(np.uint8)
    picture = Image.fromarray(rgb, mode="RGB")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
