"""Images: decode with Pillow (EXIF orientation applied), colour, resize, center crop, scale, normalize, layout."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from forwardpass.config import ImageConfig
from forwardpass.errors import ConfigError, DecodeError
from forwardpass.tensor import DataType

__all__ = ["ImagePreprocessor", "decode_image"]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
ImageSource = str | Path | bytes | Image.Image


def decode_image(source: ImageSource, max_pixels: int) -> Image.Image:
    """Open and fully decode an image, refusing corrupt, truncated and oversized ones with a DecodeError."""
    if isinstance(source, Image.Image):
        return source
    what = "image bytes" if isinstance(source, bytes) else f"'{source}'"
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            if image.width * image.height > max_pixels:
                raise DecodeError(f"{what}: {image.width}x{image.height} pixels is over the limit of {max_pixels}")
            image.load()
    except FileNotFoundError:
        raise DecodeError(f"{what}: no such file") from None
    except UnidentifiedImageError:
        raise DecodeError(f"{what} is not an image this model can read (corrupt, or not an image file)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"{what}: cannot decode image ({exc})") from None
    return ImageOps.exif_transpose(image)


class ImagePreprocessor:
    def __init__(self, config: ImageConfig, input_name: str) -> None:
        self.config = config
        self.input_name = input_name
        channels = 3 if config.color == "RGB" else 1
        self._mean = np.asarray(config.mean, dtype=np.float32).reshape(1, 1, -1)
        self._std = np.asarray(config.std, dtype=np.float32).reshape(1, 1, -1)
        if self._mean.size not in (1, channels) or self._std.size not in (1, channels):
            raise ConfigError(f"preprocess.mean/std: need 1 or {channels} values each for color {config.color}")
        dtype = DataType.from_name(config.datatype).numpy_dtype
        self._dtype = dtype if dtype is not None else np.dtype(np.float32)

    def __call__(self, raw: object) -> dict[str, np.ndarray]:
        if not isinstance(raw, str | Path | bytes | Image.Image):
            raise DecodeError(f"expected an image (file path, bytes or PIL image), got {type(raw).__name__}")
        image = decode_image(raw, self.config.max_pixels).convert(self.config.color)
        image = self._resize(image)
        image = self._crop(image)
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        pixels = (pixels * np.float32(self.config.scale) - self._mean) / self._std
        if self.config.layout == "NCHW":
            pixels = pixels.transpose(2, 0, 1)
        return {self.input_name: np.ascontiguousarray(pixels, dtype=self._dtype)}

    def _resize(self, image: Image.Image) -> Image.Image:
        size = self.config.resize
        if size is None:
            return image
        if isinstance(size, int):  # shorter side to `size`, as torchvision's Resize(int) computes it
            width, height = image.size
            size = (int(size * height / width), size) if width <= height else (size, int(size * width / height))
        return image.resize((size[1], size[0]), _RESAMPLE[self.config.interpolation])

    def _crop(self, image: Image.Image) -> Image.Image:
        crop = self.config.crop
        if crop is None:
            return image
        crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
        width, height = image.size
        if crop_h > height or crop_w > width:
            raise DecodeError(f"image {width}x{height} is smaller than the {crop_w}x{crop_h} crop; resize first")
        top = round((height - crop_h) / 2.0)
        left = round((width - crop_w) / 2.0)
        return image.crop((left, top, left + crop_w, top + crop_h))
