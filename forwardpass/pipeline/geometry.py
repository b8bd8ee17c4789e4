"""Where a model's input pixels come from in the original image, so that boxes and points map back to it.

Image preprocessing (resize, letterbox, rounding to a multiple, center crop) is an axis-aligned scale and shift:
`input = original * scale + offset` per axis, in continuous pixel coordinates (pixel i spans [i, i + 1), as Pillow
and OpenCV resize). The preprocessor records it per item beside the model's inputs (under TRANSFORM) and the
postprocessing that reports coordinates reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forwardpass.errors import ForwardpassError

__all__ = ["TRANSFORM", "ImageTransform", "recorded_transform"]

# The item-array name the image preprocessing records its transform under; never sent to the model.
TRANSFORM = "forwardpass.image_transform"


def recorded_transform(inputs: dict[str, np.ndarray], required: bool) -> ImageTransform | None:
    """The item's transform; a postprocessing that maps coordinates back fails loudly when it did not arrive
    (answering in the input's pixels instead would be plausibly wrong)."""
    recorded = inputs.get(TRANSFORM)
    if recorded is None and required:
        raise ForwardpassError("the image preprocessing's transform did not reach the postprocessing (a bug)")
    return ImageTransform.from_array(recorded) if recorded is not None else None


@dataclass(frozen=True, slots=True)
class ImageTransform:
    width: int  # the original image
    height: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    input_width: int  # the model's input image
    input_height: int

    @classmethod
    def identity(cls, width: int, height: int) -> ImageTransform:
        return cls(width, height, 1.0, 1.0, 0.0, 0.0, width, height)

    def then(
        self, scale_x: float, scale_y: float, offset_x: float, offset_y: float, width: int, height: int
    ) -> ImageTransform:
        """This transform followed by another scale and shift giving an image of `width` x `height`."""
        return ImageTransform(
            self.width,
            self.height,
            self.scale_x * scale_x,
            self.scale_y * scale_y,
            self.offset_x * scale_x + offset_x,
            self.offset_y * scale_y + offset_y,
            width,
            height,
        )

    def to_array(self) -> np.ndarray:
        return np.asarray(
            [
                self.width,
                self.height,
                self.scale_x,
                self.scale_y,
                self.offset_x,
                self.offset_y,
                self.input_width,
                self.input_height,
            ],
            dtype=np.float64,
        )

    @classmethod
    def from_array(cls, array: np.ndarray) -> ImageTransform:
        width, height, scale_x, scale_y, offset_x, offset_y, input_width, input_height = array.tolist()
        return cls(int(width), int(height), scale_x, scale_y, offset_x, offset_y, int(input_width), int(input_height))

    def to_original(self, points: np.ndarray, clip: bool = True) -> np.ndarray:
        """Input-pixel points [..., 2] (x, y) → original-pixel points, clipped to the original image unless not."""
        x = (points[..., 0] - self.offset_x) / self.scale_x
        y = (points[..., 1] - self.offset_y) / self.scale_y
        if clip:
            x, y = np.clip(x, 0.0, self.width), np.clip(y, 0.0, self.height)
        return np.stack([x, y], axis=-1)

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """Original-pixel points [..., 2] (x, y) → input-pixel points."""
        return np.stack(
            [points[..., 0] * self.scale_x + self.offset_x, points[..., 1] * self.scale_y + self.offset_y], axis=-1
        )
