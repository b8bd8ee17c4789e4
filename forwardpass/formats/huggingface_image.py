"""A Hugging Face image processor (a folder's preprocessor_config.json) as forwardpass's image preprocessing: the
`ImageConfig` that resizes, center crops, rescales and normalizes an image as the processor does.

transformers' image processors have two backends: Pillow, which this reproduces value for value, and torchvision (its
default where torchvision is installed), whose resampling of 8-bit images differs from Pillow's by one level on a
few values in a thousand. Only the processors whose every step is one forwardpass does are read, with their own
defaults for what the file leaves out; any other processor, and any setting these do not reproduce (a resampling
filter, a size rule, padding), is refused naming it: an image prepared otherwise than the model was trained with is
answered plausibly and wrongly, so it is never approximated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from forwardpass.config import ImageConfig
from forwardpass.errors import ConfigError

__all__ = ["PROCESSOR_BY_MODEL_TYPE", "PROCESSOR_CONFIG", "image_preprocessing"]

PROCESSOR_CONFIG = "preprocessor_config.json"
_STANDARD = (0.5, 0.5, 0.5)  # transformers' IMAGENET_STANDARD_MEAN and _STD
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # IMAGENET_DEFAULT_MEAN, _STD
_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))  # OPENAI_CLIP_MEAN, _STD
# PIL's resampling filters by the number a processor records (PILImageResampling); BOX (4) and HAMMING (5) are not
# forwardpass's.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_PIL_FILTERS = {4: "BOX", 5: "HAMMING"}
# ConvNeXt's resize warps to a square from this shortest edge up; below it, it resizes to shortest_edge / crop_pct
# and crops the square.
_CONVNEXT_WARP_FROM = 384


@dataclass(frozen=True)
class _Processor:
    """A processor class's own defaults (its class attributes in transformers), for what a file leaves out."""

    resample: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: dict[str, int]
    default_to_square: bool = True  # an int size: a square, else the shortest edge
    crop_size: dict[str, int] | None = None
    do_center_crop: bool = False
    crop_pct: float | None = None  # ConvNeXt's resize-then-crop ratio (its own resize rule)
    normalizes: bool = True  # False: no mean and std, whatever do_normalize says (MobileViT's steps have none)
    flip_channel_order: bool | None = None  # MobileViT's step to BGR, and its default; None: no such step


_SQUARE_224 = {"height": 224, "width": 224}
_SHORT_256 = {"shortest_edge": 256}
# Processors whose preprocessing is transformers' plain resize, center crop, rescale, normalize (ConvNeXt's with its
# crop_pct resize): each is checked against its Pillow backend in tests/formats/test_huggingface_image.py.
_PROCESSORS = {
    "ViTImageProcessor": _Processor(2, *(_STANDARD, _STANDARD), _SQUARE_224),
    "DeiTImageProcessor": _Processor(
        3, *(_STANDARD, _STANDARD), {"height": 256, "width": 256}, crop_size=_SQUARE_224, do_center_crop=True
    ),
    "BitImageProcessor": _Processor(3, *_CLIP, {"shortest_edge": 224}, False, _SQUARE_224, True),
    "CLIPImageProcessor": _Processor(3, *_CLIP, {"shortest_edge": 224}, False, _SQUARE_224, True),
    "MobileNetV1ImageProcessor": _Processor(2, *(_STANDARD, _STANDARD), _SHORT_256, False, _SQUARE_224, True),
    "MobileNetV2ImageProcessor": _Processor(2, *(_STANDARD, _STANDARD), _SHORT_256, False, _SQUARE_224, True),
    "PvtImageProcessor": _Processor(3, *_IMAGENET, _SQUARE_224),
    "BeitImageProcessor": _Processor(3, *(_STANDARD, _STANDARD), _SQUARE_224, crop_size=_SQUARE_224),
    "SiglipImageProcessor": _Processor(3, *(_STANDARD, _STANDARD), _SQUARE_224, default_to_square=False),
    "MobileViTImageProcessor": _Processor(
        3,
        *(_STANDARD, _STANDARD),
        {"shortest_edge": 224},
        False,
        {"height": 256, "width": 256},
        True,
        normalizes=False,
        flip_channel_order=True,
    ),
    "ConvNextImageProcessor": _Processor(
        3, *(_STANDARD, _STANDARD), {"shortest_edge": 384}, default_to_square=False, crop_pct=224 / 256
    ),
}


# The processor transformers picks by the model's config.json model_type when preprocessor_config.json names none
# (AutoImageProcessor's mapping, for the model types of the processors above).
PROCESSOR_BY_MODEL_TYPE = {
    **dict.fromkeys(("vit", "vit_msn", "swin", "swinv2", "dinat", "ijepa", "swiftformer"), "ViTImageProcessor"),
    **dict.fromkeys(("beit", "data2vec-vision"), "BeitImageProcessor"),
    **dict.fromkeys(("bit", "dinov2", "focalnet", "hiera"), "BitImageProcessor"),
    **dict.fromkeys(("convnext", "convnextv2", "cvt", "regnet", "resnet"), "ConvNextImageProcessor"),
    **dict.fromkeys(("pvt", "pvt_v2"), "PvtImageProcessor"),
    "deit": "DeiTImageProcessor",
    "clip": "CLIPImageProcessor",
    "mobilenet_v1": "MobileNetV1ImageProcessor",
    "mobilenet_v2": "MobileNetV2ImageProcessor",
    **dict.fromkeys(("mobilevit", "mobilevitv2"), "MobileViTImageProcessor"),
    "siglip": "SiglipImageProcessor",
}


def image_preprocessing(folder: Path, model_type: str) -> ImageConfig:
    """The ImageConfig that prepares an image as the folder's preprocessor_config.json does (its processor named
    there, else the one transformers picks for `model_type`), or a ConfigError naming what forwardpass does not
    reproduce (one line)."""
    file = folder / PROCESSOR_CONFIG
    try:
        said = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{file}: not a readable image processor config (huggingface folder): {exc}") from None
    if not isinstance(said, dict):
        raise ConfigError(f"{file}: not an image processor config (huggingface folder): not a JSON object")
    name = _class_name(said) or PROCESSOR_BY_MODEL_TYPE.get(model_type)
    processor = _PROCESSORS.get(name or "")
    if processor is None:
        runs = ", ".join(_PROCESSORS)
        named = (
            f"image processor {name}" if name else f"no image processor class (image_processor_type) for {model_type}"
        )
        raise ConfigError(f"{file}: {named}, which forwardpass does not reproduce exactly (it reproduces {runs})")
    return _Reading(file, name or "", said, processor).config()


def _class_name(said: dict[str, Any]) -> str | None:
    """The processor's class as transformers resolves it: image_processor_type, else an older file's
    feature_extractor_type; the Fast (torchvision) and Pil (Pillow) variants of one processor prepare alike."""
    name = said.get("image_processor_type") or said.get("feature_extractor_type")
    if not isinstance(name, str):
        return None
    name = name.replace("FeatureExtractor", "ImageProcessor")
    for backend in ("Fast", "Pil"):
        name = name.removesuffix(backend)
    return name


@dataclass(frozen=True)
class _Reading:
    file: Path
    name: str
    said: dict[str, Any]
    processor: _Processor

    def config(self) -> ImageConfig:
        if self._flag("do_pad", False):
            self._refuse("do_pad true (padding to a size)", "forwardpass pads only letterboxed images")
        resize, crop = self._resize_and_crop()
        interpolation = self._interpolation()
        scale = self._rescale_factor() if self._flag("do_rescale", True) else 1.0
        normalize = self.processor.normalizes and self._flag("do_normalize", True)
        flip = self.processor.flip_channel_order
        bgr = flip is not None and self._flag("do_flip_channel_order", flip)
        mean = self._channels("image_mean", self.processor.mean) if normalize else [0.0]
        std = self._channels("image_std", self.processor.std) if normalize else [1.0]
        try:
            return ImageConfig(
                kind="image",
                input="pixel_values",
                color="BGR" if bgr else "RGB",  # the pipeline reads every image as RGB (load_image); MobileViT flips
                resize=resize,
                crop=crop,
                crop_rounding="floor",
                interpolation=interpolation,
                scale=scale,
                mean=mean,
                std=std,
                layout="NCHW",
            )
        except ValidationError as exc:  # values no preprocessing can use (NaN, a std of 0, a pixel bomb)
            problem = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"{self.file}: {self.name} as image preprocessing: {problem}") from None

    def _resize_and_crop(self) -> tuple[int | tuple[int, int] | None, tuple[int, int] | None]:
        """ImageConfig's resize (an int: the shortest edge; a pair: the exact [height, width]) and crop."""
        crop = self._size("crop_size", self.processor.crop_size, square=True) if self._center_crop() else None
        if not self._flag("do_resize", True):
            return None, _pair(crop)
        size = self._size("size", self.processor.size, square=self._flag("default_to_square", None))
        if self.processor.crop_pct is not None:  # ConvNeXt: its own resize, which crops below 384
            return self._convnext(size, crop)
        if "shortest_edge" in size:
            resize: int | tuple[int, int] = size["shortest_edge"]
            smallest = (size["shortest_edge"], size["shortest_edge"])
        else:
            resize = smallest = (size["height"], size["width"])
        self._check_crop_fits(_pair(crop), smallest)
        return resize, _pair(crop)

    def _convnext(
        self, size: dict[str, int], crop: dict[str, int] | None
    ) -> tuple[int | tuple[int, int], tuple[int, int] | None]:
        if "shortest_edge" not in size:
            self._refuse(f"size {size}", "ConvNeXt's resize takes a shortest_edge")
        edge = size["shortest_edge"]
        if edge >= _CONVNEXT_WARP_FROM:  # warped to a square, not cropped
            self._check_crop_fits(_pair(crop), (edge, edge))
            return (edge, edge), _pair(crop)
        crop_pct = self._value("crop_pct", self.processor.crop_pct)
        if not isinstance(crop_pct, int | float) or isinstance(crop_pct, bool) or not 0 < crop_pct <= 1:
            self._refuse(f"crop_pct {crop_pct!r}", "ConvNeXt's resize takes a crop_pct in (0, 1]")
        square = (edge, edge)
        if crop is not None and _pair(crop) != square:  # a second center crop moves the first one's origin
            self._refuse(f"crop_size {crop} after crop_pct's {edge}x{edge} crop", "forwardpass crops once")
        return int(edge / crop_pct), square

    def _check_crop_fits(self, crop: tuple[int, int] | None, smallest: tuple[int, int]) -> None:
        if crop is not None and (crop[0] > smallest[0] or crop[1] > smallest[1]):
            self._refuse(
                f"crop_size {crop[0]}x{crop[1]} larger than the resized image ({smallest[0]}x{smallest[1]} at least)",
                "transformers pads such an image, forwardpass does not",
            )

    def _center_crop(self) -> bool:
        return bool(self._flag("do_center_crop", self.processor.do_center_crop))

    def _interpolation(self) -> Any:
        resample = self._value("resample", self.processor.resample)
        if isinstance(resample, bool) or not isinstance(resample, int) or resample not in _RESAMPLE:
            what = _PIL_FILTERS.get(resample, repr(resample)) if isinstance(resample, int) else repr(resample)
            self._refuse(f"resample {what}", f"forwardpass resamples with {', '.join(_RESAMPLE.values())}")
        return _RESAMPLE[resample]

    def _size(self, key: str, default: dict[str, int] | None, square: bool | None) -> dict[str, int]:
        """A size as transformers' get_size_dict reads it: an int (a square, or the shortest edge where the
        processor does not default to squares), [height, width], or a dict of height and width or shortest_edge."""
        value = self._value(key, default)
        square = self.processor.default_to_square if square is None else square
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return {"height": value, "width": value} if square else {"shortest_edge": value}
        if isinstance(value, list) and len(value) == 2 and all(_positive(side) for side in value):
            return {"height": value[0], "width": value[1]}
        if isinstance(value, dict):
            given = {name: side for name, side in value.items() if side is not None}
            if set(given) in ({"height", "width"}, {"shortest_edge"}) and all(map(_positive, given.values())):
                return given
        self._refuse(f"{key} {value!r}", "forwardpass resizes and crops to a height and width, or a shortest_edge")

    def _channels(self, key: str, default: tuple[float, ...]) -> list[float]:
        value = self._value(key, default)
        values = [value] if isinstance(value, int | float) else value
        if not isinstance(values, list | tuple) or len(values) not in (1, 3) or not all(map(_number, values)):
            self._refuse(f"{key} {value!r}", "one value or one per RGB channel")
        return [float(number) for number in values]

    def _rescale_factor(self) -> float:
        factor = self._value("rescale_factor", 1 / 255)
        if not _number(factor):
            self._refuse(f"rescale_factor {factor!r}", "a number")
        return float(factor)

    def _flag(self, key: str, default: bool | None) -> bool | None:
        value = self._value(key, default)
        return None if value is None else bool(value)

    def _value(self, key: str, default: Any) -> Any:
        value = self.said.get(key)
        return default if value is None else value

    def _refuse(self, setting: str, why: str) -> NoReturn:
        raise ConfigError(f"{self.file}: {self.name} with {setting}, which forwardpass does not reproduce ({why})")


def _pair(size: dict[str, int] | None) -> tuple[int, int] | None:
    return None if size is None else (size["height"], size["width"])


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
