"""SSD anchors from declared options, as MediaPipe's SsdAnchorsCalculator generates them (ssd_anchors_calculator.cc),
so that a config carries the handful of options a detector was trained with instead of thousands of numbers."""

from __future__ import annotations

import math

import numpy as np

from forwardpass.config import AnchorsConfig

__all__ = ["generate_anchors"]


def _scale(options: AnchorsConfig, stride_index: int) -> float:
    count = len(options.strides)
    if count == 1:
        return (options.min_scale + options.max_scale) * 0.5
    return options.min_scale + (options.max_scale - options.min_scale) * stride_index / (count - 1.0)


def generate_anchors(options: AnchorsConfig) -> np.ndarray:
    """[N, 4] anchors (x_center, y_center, width, height), fractions of the input size, in the model's order."""
    strides = options.strides
    anchors: list[tuple[float, float, float, float]] = []
    layer = 0
    while layer < len(strides):
        scales: list[float] = []
        ratios: list[float] = []
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:  # layers of one stride share cells
            scale = _scale(options, last)
            if last == 0 and options.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                ratios += options.aspect_ratios
                scales += [scale] * len(options.aspect_ratios)
                if options.interpolated_scale_aspect_ratio > 0.0:
                    following = 1.0 if last == len(strides) - 1 else _scale(options, last + 1)
                    scales.append(math.sqrt(scale * following))
                    ratios.append(options.interpolated_scale_aspect_ratio)
            last += 1
        sizes = [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in zip(scales, ratios, strict=True)]
        rows = math.ceil(options.input_size[0] / strides[layer])
        columns = math.ceil(options.input_size[1] / strides[layer])
        offset_x, offset_y = options.anchor_offset
        for y in range(rows):
            for x in range(columns):
                for width, height in sizes:
                    if options.fixed_anchor_size:
                        width, height = 1.0, 1.0
                    anchors.append(((x + offset_x) / columns, (y + offset_y) / rows, width, height))
        layer = last
    return np.asarray(anchors, dtype=np.float32)
