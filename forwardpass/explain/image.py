"""Occlusion saliency for image models: a patch of zeros (the normalized mean) slides over the preprocessed image
and each pixel's saliency is the mean drop of the explained class's probability over the patches covering it."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from forwardpass.config import ImageConfig
from forwardpass.errors import ConfigError
from forwardpass.explain.outputs import input_dtype, scalar_outputs
from forwardpass.model import Model
from forwardpass.pipeline import Arrays

__all__ = ["occlusion_saliency", "saliency_png"]


# Occluded copies per forward pass, at most: memory stays a few of them (MobileNetV2: 32 x 0.6 MB), not all 225.
OCCLUSION_CHUNK = 32


def occlusion_saliency(model: Model, item: Arrays, index: int, patch: int | None = None) -> dict[str, Any]:
    config = model.config.preprocess
    if not isinstance(config, ImageConfig):
        raise ConfigError(f"model '{model.name}': occlusion saliency needs an image model")
    input_name = config.input or model.inputs[0].name
    image = np.asarray(item[input_name], dtype=input_dtype(model, input_name))  # occluded copies in the model's dtype
    channels_last = config.layout == "NHWC"
    height, width = image.shape[:2] if channels_last else image.shape[1:3]
    size = patch or max(1, min(height, width) // 8)
    stride = max(1, size // 2)
    corners = [
        (top, left)
        for top in range(0, max(height - size, 0) + 1, stride)
        for left in range(0, max(width - size, 0) + 1, stride)
    ]
    chunk = min(model.batch_size, OCCLUSION_CHUNK)
    score = scalar_outputs(model, image[None], input_name, index)[0]
    drops = np.empty(len(corners))
    for start in range(0, len(corners), chunk):
        part = corners[start : start + chunk]
        occluded = np.repeat(image[None], len(part), axis=0)
        for n, (top, left) in enumerate(part):
            if channels_last:
                occluded[n, top : top + size, left : left + size, :] = 0
            else:
                occluded[n, :, top : top + size, left : left + size] = 0
        drops[start : start + len(part)] = score - scalar_outputs(model, occluded, input_name, index, chunk=chunk)
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
        "score": float(score),
        "saliency": saliency.tolist(),
    }


def saliency_png(saliency: list[list[float]], scale: int = 1) -> bytes:
    """A heat map: white where occlusion costs nothing (or helps), deep red where it costs the most."""
    values = np.clip(np.asarray(saliency, dtype=np.float64), 0.0, None)
    peak = float(values.max())
    heat = values / peak if peak > 0 else values
    rgb = np.stack([np.full_like(heat, 255.0), 255.0 * (1 - heat), 255.0 * (1 - heat)], axis=-1).astype(np.uint8)
    from PIL import Image  # only when an image model is explained: a server of other models never imports Pillow

    picture = Image.fromarray(rgb, mode="RGB")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
