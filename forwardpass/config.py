"""A model's declarative config (`<repository>/<model>/config.yaml`): tensors, pre/postprocessing, engine, batching.

Every field is optional: an ONNX model with no config is completed from the model itself (like Triton's
auto-complete). Errors name the file, the field and the fix.
"""

from __future__ import annotations

import difflib
import math
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forwardpass.errors import ConfigError
from forwardpass.tensor import DataType

__all__ = [
    "AnchorsConfig",
    "AnomalyConfig",
    "AudioConfig",
    "ClassificationConfig",
    "ClusterConfig",
    "CtcConfig",
    "DecisionConfig",
    "DecisionRule",
    "DetectionConfig",
    "DynamicBatchingConfig",
    "EmbeddingConfig",
    "EngineConfig",
    "FieldSchema",
    "GenerationConfig",
    "ImageConfig",
    "InputSchemaConfig",
    "InteractionsConfig",
    "ModelConfig",
    "PipelineConfig",
    "PostprocessConfig",
    "PreprocessConfig",
    "RawConfig",
    "RecommendationConfig",
    "RegressionConfig",
    "SegmentationConfig",
    "SequenceBatchingConfig",
    "SequenceStateConfig",
    "SourceConfig",
    "SpeechSegmentsConfig",
    "StepConfig",
    "TabularColumn",
    "TabularConfig",
    "TensorConfig",
    "TextConfig",
    "TextDetectionConfig",
    "category_text",
    "read_yaml",
]


# libyaml's safe loader parses a config ~10x faster than the pure-Python one (server start-up reads every config);
# the pure-Python one also recurses once per nesting level, so a deeply nested file ends in a RecursionError.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# What a config may expand to: YAML aliases let a 1 kB file stand for a billion values (or for itself), which
# validation, repr or numpy would then walk. A real config holds thousands of values, nested a few levels deep.
MAX_CONFIG_VALUES = 1_000_000
MAX_CONFIG_DEPTH = 64
# A config file's largest size: 11 MiB of labels take 6 s and 460 MB to parse; lists that large belong in a file the
# config names (labels: labels.txt)
MAX_CONFIG_BYTES = 4 * 2**20
# A wrong value as an error shows it: a list of a million numbers is named by its first few
_SHORT = reprlib.Repr()
_SHORT.maxlist = _SHORT.maxdict = 8
_SHORT.maxstring = _SHORT.maxother = 80


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Strict):
    name: str = Field(description="the tensor's name in the model")
    datatype: str | None = Field(
        default=None,
        description="source.inputs: the input's datatype (FP32, INT64, ...) where the format records none; not "
        "read under inputs",
    )
    shape: list[int] | None = Field(
        default=None,
        description="dimensions (-1: dynamic); under inputs it must equal the model's; under source.inputs, given "
        "where the format records none",
    )
    allow_nonfinite: bool = Field(
        default=True, description="false: a request whose tensor holds NaN or inf is refused (inputs only)"
    )
    max_shape: list[int] | None = Field(
        default=None,
        description="inputs only: the largest each dimension may be (-1: no bound; the batch dimension is bounded by "
        "max_batch_size), checked on every request before its data is decoded; one bound per dimension of the "
        "model's input, a fixed dimension's its size",
    )


class ImageConfig(_Strict):
    kind: Literal["image"] = Field(description="selects this section's kind")
    input: str | None = Field(
        default=None, description="the input tensor the image fills (default: the model's first input)"
    )
    color: Literal["RGB", "BGR", "L"] = Field(default="RGB", description="channel order the model takes")
    resize: int | tuple[int, int] | None = Field(
        default=None, description="int: shorter side to this size, keeping aspect; [height, width]: exact size"
    )
    crop: int | tuple[int, int] | None = Field(default=None, description="center crop: int (square) or [h, w]")
    crop_rounding: Literal["round", "floor"] = Field(
        default="round",
        description="where the center crop starts when the margin is odd: round (half to even, torchvision's "
        "CenterCrop) or floor (transformers' image processors)",
    )
    letterbox: tuple[int, int] | None = Field(
        default=None, description="[height, width]: resize keeping aspect into this box, pad the rest with pad_value"
    )
    pad_value: float = Field(default=0.0, description="letterbox padding, in pixel values (0-255) before scaling")
    pad_align: Literal["center", "top-left"] = Field(default="center", description="where the letterbox puts the image")
    pad_first: bool = Field(
        default=False,
        description="letterbox by padding to the box's aspect ratio first, then resizing the whole (MediaPipe's "
        "ImageToTensor); pad_value is then rounded to a whole pixel value",
    )
    min_side: int | None = Field(default=None, gt=0, description="scale up so the shorter side is at least this")
    max_side: int | None = Field(default=None, gt=0, description="scale down so the longer side is at most this")
    multiple_of: int | None = Field(
        default=None, gt=0, description="round each side of the resized image to the nearest multiple of this"
    )
    text_line: tuple[int, int] | None = Field(
        default=None,
        description="[height, width]: a text line resized as PaddleOCR does, to this height keeping its aspect "
        "(width rounded up), padded on the right to width with pad_value",
    )
    text_line_overflow: Literal["squeeze", "extend"] = Field(
        default="squeeze", description="a text line wider than width: squeezed into it, or kept (the input wider)"
    )
    resize_with: Literal["pillow", "opencv"] = Field(
        default="pillow", description="opencv: cv2.resize, for models whose training resized with OpenCV"
    )
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = Field(
        default="bilinear", description="the resize's resampling filter (Pillow's or OpenCV's, as resize_with says)"
    )
    jpeg_draft: int = Field(
        default=0,
        ge=0,
        description="JPEG only: decode at 1/2, 1/4 or 1/8 size (DCT scaling) while the image stays at least this "
        "many times the resized size, then resample only the crop's region, from the full image's exact box (one "
        "level off on ~0.01 % of values even with every pixel decoded); 0 decodes every pixel and resizes as "
        "torchvision does. On 400 camera-size photos MobileNetV2's top-1 agreed with full decoding on 95.5 / 97.25 / "
        "99.25 / 100 % at 1 / 2 / 3 / 4, the changed ones all near ties, for 3.8 / 2.7 / 1.6 / 1.3x less decoding "
        "CPU (bench/results/batch.md); off by default, since only 4 keeps 99.5 % and it saves a fifth. Not with "
        "pad_first or resize_with opencv",
    )
    scale: float = Field(
        default=1.0 / 255.0, description="pixel values (0-255) are multiplied by this first (1/255: to 0-1)"
    )
    mean: list[float] = Field(
        default=[0.0], description="subtracted from the scaled values, per channel (one value: every channel)"
    )
    std: list[float] = Field(default=[1.0], description="then divides them, per channel (one value: every channel)")
    layout: Literal["NCHW", "NHWC"] = Field(default="NCHW", description="NCHW: channels first; NHWC: channels last")
    datatype: str = Field(
        default="FP32",
        description="the input tensor's datatype (FP32, FP16, UINT8, ...); an integer one takes whole pixel values: "
        "scale, mean and std must keep 0-255 whole and within its range (scale: 1 gives the pixels as they are)",
    )
    max_pixels: int = Field(
        default=50_000_000,
        gt=0,
        description="refuse decoded images larger than this, and images that resizing or padding would make larger "
        "(checked before either)",
    )

    @model_validator(mode="after")
    def _check_geometry(self) -> ImageConfig:
        sized = [name for name in ("resize", "letterbox", "min_side", "max_side") if getattr(self, name) is not None]
        if self.letterbox is not None and len(sized) > 1:
            raise ValueError(f"letterbox sets the size itself; remove {[s for s in sized if s != 'letterbox']}")
        if self.resize is not None and len(sized) > 1:
            raise ValueError(f"resize sets the size itself; remove {[s for s in sized if s != 'resize']}")
        if self.letterbox is not None and (self.crop is not None or self.multiple_of is not None):
            raise ValueError("letterbox gives the exact size: crop and multiple_of do not apply")
        if self.text_line is not None and len(sized) > 0:
            raise ValueError(f"text_line sets the size itself; remove {sized}")
        if self.pad_first and self.letterbox is None:
            raise ValueError("pad_first applies to letterbox only; set letterbox: [height, width]")
        if self.jpeg_draft and (self.pad_first or self.resize_with == "opencv"):
            raise ValueError("jpeg_draft resamples the reduced decoding with Pillow: not with pad_first or opencv")
        for name in ("resize", "crop", "letterbox"):  # larger: every image refused at predict
            size = getattr(self, name)
            height, width = (size, size) if isinstance(size, int) else size or (0, 0)
            if height * width > self.max_pixels:
                raise ValueError(f"{name} {size} makes images of over max_pixels ({self.max_pixels})")
        return self

    @model_validator(mode="after")
    def _check_pixel_arithmetic(self) -> ImageConfig:
        """NaN, an infinity or a std of 0 made every pixel NaN or inf, and every image was answered (NaN scores)."""
        for name, values in (("scale", [self.scale]), ("pad_value", [self.pad_value]), ("mean", self.mean)):
            if not all(map(math.isfinite, values)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.scale == 0:
            raise ValueError("scale 0 makes every image the same")
        if not all(math.isfinite(value) and value != 0 for value in self.std):
            raise ValueError(f"std divides each channel: finite and non-zero, got {self.std}")
        return self

    @model_validator(mode="after")
    def _check_integer_pixels(self) -> ImageConfig:
        """An integer input takes the scaled values as numpy casts them: truncated and wrapped, so scale 1/255 on a
        UINT8 input gave every image as 0s and 1s, answered with exit 0. Each channel's (pixel * scale - mean) / std
        must be whole for every whole pixel value, and in the datatype's range from 0 to 255 (and at pad_value)."""
        dtype = DataType.from_name(self.datatype).numpy_dtype
        if dtype is None or dtype.kind not in "iu":
            return self
        means = self.mean * (len(self.std) if len(self.mean) == 1 else 1)
        stds = self.std * (len(means) if len(self.std) == 1 else 1)
        steps = [(self.scale / std, mean / std) for mean, std in zip(means, stds, strict=False)]
        whole = float(self.pad_value).is_integer() and all(
            float(step).is_integer() and float(offset).is_integer() for step, offset in steps
        )
        values = [pixel * step - offset for step, offset in steps for pixel in (0.0, 255.0, self.pad_value)]
        low, high = min(values), max(values)
        limits = np.iinfo(dtype)
        if not whole or low < limits.min or high > limits.max:
            fractions = "" if whole else " in fractions"
            raise ValueError(
                f"pixel values 0-255 become {low} to {high}{fractions}, which {self.datatype} does not hold; an "
                "integer input takes whole pixel values: keep scale, mean and std whole (scale: 1, mean: [0], std: "
                "[1] gives the pixels as they are), or give the model the datatype it was trained on"
            )
        return self


class TextConfig(_Strict):
    kind: Literal["text"] = Field(description="selects this section's kind")
    tokenizer: str = Field(
        default="tokenizer.json", description="the Hugging Face tokenizer.json, a file in the model folder"
    )
    max_length: int = Field(
        default=512,
        gt=0,
        description="tokens per text; longer texts are truncated. Left out: what sentence-transformers reads "
        "(a Hugging Face folder's sentence_bert_config.json), else 512 or the fewer that the model's positions "
        "hold; more than they hold is refused at load",
    )
    padding: Literal["longest", "max_length"] = Field(
        default="longest",
        description="longest: a batch is padded to its longest text; max_length: every text to max_length",
    )
    inputs: dict[Literal["input_ids", "attention_mask", "token_type_ids"], str] = Field(
        default={
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
        },
        description="the model input each tokenizer output feeds (input_ids, attention_mask, token_type_ids); "
        "outputs not listed are not fed",
    )


def category_text(value: object) -> str:
    """How a record's value and a model's category compare: as text, a number 1.0 the same category as 1."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class TabularColumn(_Strict):
    name: str = Field(description="the record's field this column reads (one input per column: the input's name too)")
    transform: Literal["none", "standard", "minmax"] = Field(
        default="none",
        description="scaling of the value: standard (x - mean) / std, minmax (x - min) / (max - min), or none",
    )
    mean: float = Field(default=0.0, description="transform standard: subtracted from the value")
    std: float = Field(default=1.0, description="transform standard: divides the value")
    min: float = Field(default=0.0, description="transform minmax: the value that becomes 0")
    max: float = Field(default=1.0, description="transform minmax: the value that becomes 1")
    impute: float | str | None = Field(
        default=None,
        description="value used when the record's value is null or empty (an absent column is an error unless "
        "the tabular section sets impute_absent: true)",
    )
    categories: list[str] | None = Field(default=None, description="one-hot encode into len(categories) features")
    codes: list[str] | None = Field(
        default=None,
        description="a category the model takes as one feature holding its code: the value's position in this list "
        "(LightGBM's and XGBoost's categorical features, in the order their files record)",
    )
    missing: Literal["refuse", "model"] = Field(
        default="refuse",
        description="a null, empty or NaN value: refused unless impute fills it, or (model) given to the model as NaN, "
        "for models that fill or route one themselves (XGBoost's and LightGBM's trees, a scikit-learn pipeline's own "
        "imputer, HistGradientBoosting; filled in from the model file)",
    )

    @model_validator(mode="after")
    def _check_scales(self) -> TabularColumn:
        if self.categories is not None and self.codes is not None:
            raise ValueError("a column is one-hot encoded (categories) or coded (codes), not both")
        if self.missing == "model" and self.impute is not None:
            raise ValueError("a missing value is filled by impute or missing: model, not both")
        if self.missing == "model" and self.categories is not None:
            raise ValueError("a one-hot encoded column (categories) has no feature to hold a missing value")
        if self.transform == "standard" and self.std == 0:
            raise ValueError("std must not be 0 for transform: standard")
        if self.transform == "minmax" and self.max == self.min:
            raise ValueError("max must differ from min for transform: minmax")
        return self


class TabularConfig(_Strict):
    kind: Literal["tabular"] = Field(description="selects this section's kind")
    input: str | None = Field(
        default=None,
        description="the input tensor the columns fill, in order (default: the model's only input); a model that "
        "takes one [batch, 1] input per column (skl2onnx's mixed-type pipelines) gets each column in its own input",
    )
    datatype: str = Field(
        default="FP32", description="the feature vector's datatype (one input per column: each input's own)"
    )
    columns: list[TabularColumn] = Field(
        min_length=1,
        description="the model's features in its input order (a column with categories makes one per category)",
    )
    impute_absent: bool = Field(
        default=False, description="true: a column absent from a record gets its impute value; false: an error"
    )
    unknown_fields: Literal["refuse", "ignore"] = Field(
        default="refuse", description="a record's field that is no column: refused with its name, or ignored"
    )


class InteractionsConfig(_Strict):
    """A user's history: a record `{"seen": [item ids]}` or a list of ids → a multi-hot vector over `items`."""

    kind: Literal["interactions"] = Field(description="selects this section's kind")
    input: str | None = Field(
        default=None, description="the input tensor the multi-hot vector fills (default: the model's first input)"
    )
    items: str | list[str] = Field(description="item ids in the model's order: a file in the model folder, or a list")
    field: str = Field(default="seen", description="the record's field that lists the items seen")
    datatype: str = Field(default="FP32", description="the multi-hot vector's datatype")


class AudioConfig(_Strict):
    """A sound file (WAV, FLAC, OGG/Vorbis: what libsndfile reads; int PCM scaled to [-1, 1]) → float32 samples at
    the model's rate, channels mixed or kept, fitted to the model's window; bounded before it is decoded."""

    kind: Literal["audio"] = Field(description="selects this section's kind")
    input: str | None = Field(
        default=None, description="the input tensor the samples fill (default: the model's first input)"
    )
    sample_rate: int = Field(gt=0, description="samples per second the model takes; other rates are resampled (soxr)")
    channels: Literal["mono", "keep"] = Field(
        default="mono",
        description="mono: the channels averaged ([samples]; [1, samples] for an input of [batch, 1, samples]); "
        "keep: [channels, samples]",
    )
    window: int | None = Field(
        default=None,
        gt=0,
        description="samples per item: shorter audio zero-padded at the end, longer cut (default: the input's "
        "fixed last dimension, else the whole recording); with split: chunks, samples per step",
    )
    split: Literal["window", "chunks"] = Field(
        default="window",
        description="window: one item of `window` samples; chunks: the recording cut into windows (the last "
        "zero-padded), the steps of a stateful model (sequence_batching), run in order with its state carried",
    )
    max_seconds: float = Field(default=600.0, gt=0, description="longer recordings are refused before decoding")
    max_channels: int = Field(default=8, gt=0, description="recordings with more channels are refused")
    max_bytes: int = Field(default=256 * 2**20, gt=0, description="larger files are refused before they are read")


PreprocessConfig = Annotated[
    ImageConfig | TextConfig | TabularConfig | InteractionsConfig | AudioConfig, Field(discriminator="kind")
]


class ClassificationConfig(_Strict):
    kind: Literal["classification"] = Field(description="selects this section's kind")
    output: str | None = Field(
        default=None,
        description="the output holding one score per class (default: the one the model marks as its class "
        "scores, else its only floating-point output)",
    )
    activation: Literal["softmax", "sigmoid", "none", "decision"] | None = Field(
        default=None,
        description="applied to the scores (default: none when the model already outputs probabilities, as a "
        "final Softmax/Sigmoid or a converter's 'probabilities'; decision for a classifier without probabilities; "
        "sigmoid for one score; softmax for logits). decision: the scores are a decision function, answered as they "
        "are, no probabilities; one score is the second class's, and the first class's is its negative",
    )
    labels: str | list[str] | None = Field(
        default=None,
        description="class names in score order: a file in the model folder, or a list (default: the classes the "
        "model records)",
    )
    top_k: int = Field(
        default=5, gt=0, description="classes listed per prediction, best first (a request's top_k overrides it)"
    )


class TargetScaling(_Strict):
    transform: Literal["standard", "minmax"] = Field(
        description="how the target was scaled for training; the value is scaled back (standard: value * std + "
        "mean; minmax: value * (max - min) + min)"
    )
    mean: float = Field(default=0.0, description="standard: the training target's mean")
    std: float = Field(default=1.0, description="standard: the training target's standard deviation")
    min: float = Field(default=0.0, description="minmax: the training target's minimum")
    max: float = Field(default=1.0, description="minmax: the training target's maximum")


class RegressionConfig(_Strict):
    kind: Literal["regression"] = Field(description="selects this section's kind")
    output: str | None = Field(default=None, description="the output holding the value (default: the only float one)")
    target: TargetScaling | None = Field(
        default=None,
        description="the target's scaling in training, undone on the value (None: the value as the model gives it)",
    )


class EmbeddingConfig(_Strict):
    kind: Literal["embedding"] = Field(description="selects this section's kind")
    output: str | None = Field(
        default=None, description="the output holding the token vectors or the embedding (default: the first)"
    )
    pooling: Literal["mean", "cls", "none"] = Field(
        default="none",
        description="mean: token vectors averaged over mask; cls: the first token's; none: the output as it is. "
        "Left out: as the model folder's sentence-transformers Pooling module pools (modules.json), else none; "
        "another than it is refused at load",
    )
    mask: str = Field(default="attention_mask", description="input tensor whose 1s mark tokens for mean pooling")
    normalize: bool = Field(
        default=False,
        description="scale the embedding to unit length (L2). Left out: as the model folder's sentence-transformers "
        "modules do (a Normalize module), else false; another than they do is refused at load",
    )


class RawConfig(_Strict):
    kind: Literal["raw"] = Field(description="selects this section's kind")


class AnomalyConfig(_Strict):
    """An anomaly score read from `output` and a flag: an item is anomalous when its score lies strictly beyond
    `threshold` in the `anomalous` direction; a score equal to the threshold is normal (as scikit-learn's
    IsolationForest, whose decision_function < 0 marks an outlier)."""

    kind: Literal["anomaly"] = Field(description="selects this section's kind")
    output: str | None = Field(default=None, description="the output holding the anomaly score (default: the first)")
    threshold: float = Field(default=0.0, description="an item is anomalous when its score lies strictly beyond this")
    anomalous: Literal["above", "below"] = Field(
        default="above",
        description="above: scores above threshold are anomalous; below: those below (IsolationForest's scores)",
    )


class ClusterConfig(_Strict):
    """`output` holds each item's distance to every cluster centre: the nearest centre is its cluster."""

    kind: Literal["cluster"] = Field(description="selects this section's kind")
    output: str | None = Field(
        default=None, description="the output holding the distance to every cluster centre (default: the first)"
    )
    labels: str | list[str] | None = Field(
        default=None, description="cluster names: a file in the model folder, or a list"
    )


class RecommendationConfig(_Strict):
    """`output` scores every item; the `top_n` best that the input tensor `seen` does not mark (> 0) are returned."""

    kind: Literal["recommendation"] = Field(description="selects this section's kind")
    output: str | None = Field(default=None, description="the output scoring every item (default: the first)")
    seen: str | None = Field(default=None, description="input tensor marking items already seen (default: the first)")
    items: str | list[str] | None = Field(default=None, description="item ids: a file in the model folder, or a list")
    top_n: int = Field(
        default=10,
        gt=0,
        description="unseen items returned per prediction, best first (a request's top_k overrides it)",
    )


class AnchorsConfig(_Strict):
    """SSD anchors generated as MediaPipe's SsdAnchorsCalculator does (BlazeFace, MediaPipe's SSD detectors):
    one anchor centre per feature-map cell of each stride; sizes from the scales and aspect ratios."""

    input_size: tuple[int, int] = Field(description="[height, width] of the model's input")
    strides: list[Annotated[int, Field(gt=0)]] = Field(min_length=1, description="one per layer")
    min_scale: float = Field(
        default=0.1484375, gt=0, description="anchor size of the first layer, a fraction of the input size"
    )
    max_scale: float = Field(
        default=0.75, gt=0, description="anchor size of the last layer (the layers between: interpolated linearly)"
    )
    anchor_offset: tuple[float, float] = Field(default=(0.5, 0.5), description="[x, y] within each cell")
    aspect_ratios: list[Annotated[float, Field(gt=0)]] = Field(
        default=[1.0], description="anchor width / height: one anchor per ratio in each cell"
    )
    interpolated_scale_aspect_ratio: float = Field(default=1.0, ge=0, description="0: no interpolated anchor")
    reduce_boxes_in_lowest_layer: bool = Field(
        default=False,
        description="the first layer's anchors are instead scale 0.1 at ratio 1 and its own scale at ratios 2 and 0.5",
    )
    fixed_anchor_size: bool = Field(default=True, description="every anchor 1 x 1 (the box offsets carry the size)")


class DetectionConfig(_Strict):
    """Boxes from a detector's outputs, in the original image's pixels: decoded, thresholded, NMS'd, mapped back
    through the image preprocessing (letterbox, resize, crop)."""

    kind: Literal["detection"] = Field(description="selects this section's kind")
    layout: Literal["yolo", "yolo_columns", "anchors", "boxes"] = Field(
        description="yolo: one output [N, 4 + classes]; yolo_columns: [4 + classes, N] (Ultralytics YOLOv8+); "
        "anchors: SSD offsets `boxes` [N, 4 + 2*keypoints] and logits `scores` [N, classes] against `anchors`; "
        "boxes: the model emits `boxes` [N, 4] and `scores` [N, classes] or [N]"
    )
    output: str | None = Field(default=None, description="yolo layouts: the output tensor (default: the first)")
    boxes: str | None = Field(default=None, description="anchors / boxes layouts: the box output")
    scores: str | None = Field(default=None, description="anchors / boxes layouts: the score output")
    box_format: Literal["cxcywh", "xyxy", "xywh", "yxyx"] = Field(
        default="cxcywh", description="how the 4 box numbers are ordered (yolo, boxes); anchors are always cxcywh"
    )
    normalized: bool = Field(default=False, description="box numbers are fractions of the input size, not pixels")
    objectness: bool = Field(default=False, description="yolo: a 5th number scales every class score (YOLOv5)")
    activation: Literal["none", "sigmoid"] = Field(default="none", description="applied to the class scores")
    score_clip: float | None = Field(default=None, gt=0, description="clip raw scores to ±this before the activation")
    anchors: AnchorsConfig | None = Field(
        default=None, description="layout anchors: the SSD anchors the box offsets are decoded against (required by it)"
    )
    box_scale: tuple[float, float, float, float] = Field(
        default=(1.0, 1.0, 1.0, 1.0), description="anchors: offsets are divided by [x, y, w, h] scales (MediaPipe)"
    )
    keypoints: int = Field(
        default=0,
        ge=0,
        description="keypoints per detection: anchors: (x, y) offsets after the 4 box numbers; yolo layouts: (x, y, "
        "visibility) after the class scores, as YOLOv8-pose exports them ([N, 4 + classes + 3*keypoints])",
    )
    score_threshold: float = Field(default=0.25, ge=0, description="keep detections scoring strictly above this")
    iou_threshold: float = Field(default=0.45, ge=0, le=1, description="NMS drops boxes overlapping more than this")
    nms: Literal["hard", "weighted"] = Field(
        default="hard", description="weighted: a kept box is the score-weighted mean of those it suppresses (MediaPipe)"
    )
    class_agnostic: bool = Field(default=False, description="NMS across classes instead of within each class")
    max_detections: int = Field(
        default=100, gt=0, description="detections returned per image, best first (a request's top_k overrides it)"
    )
    labels: str | list[str] | None = Field(
        default=None, description="class names: a file in the model folder, or a list"
    )

    @model_validator(mode="after")
    def _check_layout(self) -> DetectionConfig:
        if (self.layout == "anchors") != (self.anchors is not None):
            raise ValueError("anchors: required by layout anchors, and only used by it")
        if self.keypoints and self.layout == "boxes":
            raise ValueError("keypoints are read with layouts anchors, yolo and yolo_columns, not boxes")
        if self.layout in ("yolo", "yolo_columns") and (self.boxes or self.scores):
            raise ValueError(f"layout {self.layout} reads one output: name it with output, not boxes/scores")
        if self.layout in ("anchors", "boxes") and self.output:
            raise ValueError(f"layout {self.layout} reads two outputs: name them with boxes and scores, not output")
        return self


class TextDetectionConfig(_Strict):
    """DBNet's probability map → text boxes (quadrilaterals in original pixels), as PaddleOCR's DBPostProcess:
    threshold, dilate, contours, min-area rectangles scored on the map, expanded by the unclip ratio."""

    kind: Literal["text_detection"] = Field(description="selects this section's kind")
    output: str | None = Field(default=None, description="the output holding the probability map (default: the first)")
    threshold: float = Field(default=0.3, ge=0, le=1, description="map pixels above this are text")
    box_threshold: float = Field(default=0.5, ge=0, le=1, description="boxes whose mean map score is below: dropped")
    unclip_ratio: float = Field(default=1.6, gt=0, description="how far a box grows: area * ratio / perimeter")
    max_candidates: int = Field(
        default=1000, gt=0, description="contours of the thresholded map examined, at most (PaddleOCR's max_candidates)"
    )
    min_size: int = Field(default=3, ge=0, description="boxes with a side shorter than this (map pixels): dropped")
    dilate: bool = Field(default=True, description="dilate the thresholded map with a 2 x 2 kernel first")


class SegmentationConfig(_Strict):
    """Per-pixel class scores → the best class of every pixel of the original image (a PNG of class indices) and
    the share of the image each class covers."""

    kind: Literal["segmentation"] = Field(description="selects this section's kind")
    output: str | None = Field(
        default=None, description="the output holding the per-pixel class scores (default: the first)"
    )
    channels: Literal["first", "last"] = Field(default="first", description="scores [classes, h, w] or [h, w, classes]")
    labels: str | list[str] | None = Field(
        default=None, description="class names: a file in the model folder, or a list"
    )


class CtcConfig(_Strict):
    """Greedy CTC decoding of a recognizer's [time, classes] scores: best class per step, repeats merged, blanks
    dropped → text, its mean score and each character's."""

    kind: Literal["ctc"] = Field(description="selects this section's kind")
    output: str | None = Field(
        default=None, description="the output holding the [time, classes] scores (default: the first)"
    )
    characters: str | list[str] = Field(description="the character of each class: a file (one a line), or a list")
    blank: int = Field(default=0, ge=0, description="the blank class; characters fill the other classes in order")
    space: bool = Field(default=False, description="a space follows the characters as the last class (PaddleOCR)")


class SpeechSegmentsConfig(_Strict):
    """A voice-activity detector's speech probability per chunk → the speech segments (start and end in seconds),
    found as the silero-vad package's get_speech_timestamps finds them; its defaults are the defaults here."""

    kind: Literal["speech_segments"] = Field(description="selects this section's kind")
    output: str | None = Field(
        default=None, description="the output holding each chunk's probability (default: the first)"
    )
    threshold: float = Field(default=0.5, gt=0, lt=1, description="a chunk at or above it is speech")
    neg_threshold: float | None = Field(
        default=None, gt=0, lt=1, description="within speech, a chunk below it is silence (default: threshold - 0.15)"
    )
    min_speech_ms: float = Field(default=250, ge=0, description="shorter speech is dropped")
    max_speech_s: float | None = Field(
        default=None, gt=0, description="longer speech is cut at its longest silence, else where it reaches this"
    )
    min_silence_ms: float = Field(default=100, ge=0, description="silence shorter than this does not end speech")
    min_silence_at_max_speech_ms: float = Field(
        default=98, ge=0, description="max_speech_s: silences longer than this are where speech may be cut"
    )
    speech_pad_ms: float = Field(default=30, ge=0, description="each segment widened by this on both sides")


PostprocessConfig = Annotated[
    ClassificationConfig
    | RegressionConfig
    | EmbeddingConfig
    | RawConfig
    | AnomalyConfig
    | ClusterConfig
    | RecommendationConfig
    | DetectionConfig
    | TextDetectionConfig
    | CtcConfig
    | SegmentationConfig
    | SpeechSegmentsConfig,
    Field(discriminator="kind"),
]


class DecisionRule(_Strict):
    """Fires when the score read by the decision compares true against every bound given (at least one)."""

    action: str = Field(
        min_length=1,
        description="the action given when this rule fires, e.g. refer (returned with the prediction, audited)",
    )
    at_least: float | None = Field(default=None, description="fires when score >= at_least")
    above: float | None = Field(default=None, description="fires when score > above")
    at_most: float | None = Field(default=None, description="fires when score <= at_most")
    below: float | None = Field(default=None, description="fires when score < below")
    label: str | None = Field(default=None, description="classification: read this class's probability")

    @model_validator(mode="after")
    def _check_bounds(self) -> DecisionRule:
        given = {"at_least": self.at_least, "above": self.above, "at_most": self.at_most, "below": self.below}
        bounds = {name: bound for name, bound in given.items() if bound is not None}
        if not bounds:
            raise ValueError(f"rule '{self.action}' needs a bound: at_least, above, at_most or below")
        for name, bound in bounds.items():
            if not math.isfinite(bound):  # NaN never compares true; ±inf bounds nothing
                raise ValueError(f"rule '{self.action}': {name} {bound} is not a finite number")
        return self


class DecisionConfig(_Strict):
    """Prediction → action: rules in order, the first that fires wins, else `default`. A rule that can never fire
    (bounds no score meets, outside the score's range, or always taken by earlier rules) is refused at load; an item
    whose score is NaN is refused, never given `default`. Every decision is audited."""

    score: Literal["score", "value", "anomaly_score", "distance"] = Field(
        default="score", description="the prediction's field the rules read (score: the top class's probability)"
    )
    rules: list[DecisionRule] = Field(
        min_length=1, description="tried in order: the first whose bounds all hold gives its action"
    )
    default: str = Field(min_length=1, description="the action when no rule fires")
    audit: bool = Field(default=True, description="write every decision to the audit log")
    audit_group_ms: float = Field(
        default=100.0,
        ge=0,
        description="> 0: append each request's decisions to the audit journal before answering (survives kill -9) "
        "and move them into the SQLite log every this many ms; 0: commit them to SQLite before answering",
    )


class FieldSchema(_Strict):
    type: Literal["number", "integer", "string", "boolean"] = Field(
        default="number",
        description="number, integer (a whole number), string, or boolean (true / false, also as text)",
    )
    required: bool = Field(
        default=True, description="a missing value (absent, null, empty or NaN) is an error; false: it passes"
    )
    min: float | None = Field(default=None, description="number / integer: the smallest value allowed (inclusive)")
    max: float | None = Field(default=None, description="number / integer: the largest value allowed (inclusive)")
    categories: list[str] | None = Field(default=None, description="the values allowed (compared as text)")


class InputSchemaConfig(_Strict):
    """Checked on every raw record before preprocessing; each violation names the field and the rule."""

    fields: dict[str, FieldSchema] = Field(min_length=1, description="each record field's rules, by name")
    allow_extra: bool = Field(default=True, description="False: a field the schema does not name is an error")


class EngineConfig(_Strict):
    intra_op_threads: int = Field(default=0, ge=0, description="0: ONNX Runtime's default (one per core)")
    inter_op_threads: int = Field(
        default=0,
        ge=0,
        description="threads running independent operators at once; 0: the runtime's default (read by TensorFlow "
        "served natively; ONNX Runtime runs operators one at a time)",
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ONNX Runtime's graph optimization level (disable: none)"
    )
    providers: Literal["auto"] | list[str] = Field(
        default="auto",
        description="auto: TensorRT and CUDA where present, then CPU; a list: these ONNX Runtime execution "
        "providers in order, each required",
    )
    warmup: int = Field(default=1, ge=0, description="forward passes run on load so the first request is not slow")
    allow_spinning: bool = Field(
        default=True,
        description="ONNX Runtime's threads spin between operators (lowest latency); off, they sleep and leave the "
        "cores to work beside them, such as a batch job's image decoding",
    )


class SourceConfig(_Strict):
    """How a non-ONNX artefact (TorchScript, SavedModel, Hugging Face folder, ...) is opened. Trusting a pickle is
    never a config field: a repository must not be able to vouch for its own files."""

    serve: Literal["auto", "native", "onnx"] = Field(
        default="auto", description="auto: convert once, keep the faster of native and ONNX that passes parity"
    )
    signature: str | None = Field(default=None, description="TensorFlow SavedModel signature (serving_default)")
    inputs: list[TensorConfig] = Field(
        default=[], description="names, datatypes and shapes where the format records none (-1: dynamic)"
    )
    outputs: list[str] = Field(default=[], description="output names where they cannot be inferred (frozen graphs)")
    opset: int = Field(default=17, ge=7, description="ONNX opset of the conversion")
    tolerance: float = Field(default=1e-4, gt=0, description="largest difference the conversion's parity check allows")


class DynamicBatchingConfig(_Strict):
    """Triton's dynamic batcher: used whenever `max_batch_size` > 0. A request that finds an instance idle runs at
    once; requests that had to queue are coalesced into one forward pass."""

    preferred_batch_size: list[Annotated[int, Field(gt=0)]] = Field(
        default=[], description="batch sizes to dispatch as soon as they can be formed (default: max_batch_size)"
    )
    max_queue_delay_us: int = Field(
        default=0, ge=0, description="how long a queued request may wait for a fuller batch; 0: take what is queued"
    )
    max_queue_size: int = Field(default=256, gt=0, description="requests waiting beyond this are refused (503)")


class GenerationConfig(_Strict):
    """A decoder language model exported with its KV cache (`forwardpass.generation`): how to generate with it."""

    tokenizer: str = Field(default="tokenizer.json", description="the tokenizer, a file in the model folder")
    eos_token_ids: list[int] = Field(default=[], description="tokens that end a generation")
    context_length: int = Field(default=2048, gt=1, description="most tokens (prompt + generated) a sequence holds")
    max_new_tokens: int = Field(default=128, gt=0, description="default when a request names none")
    repetition_penalty: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="transformers' repetition_penalty, from the model's generation_config.json: the logits of the "
        "tokens already in the sequence are divided by it (multiplied where negative) before the next is chosen",
    )
    max_batch_size: int = Field(default=16, gt=0, description="sequences decoded together (continuous batching)")
    max_queue_size: int = Field(default=256, gt=0, description="requests waiting beyond this are refused (503)")


class SequenceStateConfig(_Strict):
    """One recurrent state tensor (Triton's implicit state): the server feeds `output` of a sequence's step back as
    `input` of its next step; the first step gets `initial` everywhere. Clients never send or see these tensors."""

    input: str = Field(description="the model input that takes the state")
    output: str = Field(description="the model output that gives the next state")
    initial: float = Field(default=0.0, description="the value of every element before a sequence's first step")
    batch_axis: int = Field(default=0, ge=0, description="the axis along which sequences stack (Silero's state: 1)")


class SequenceBatchingConfig(_Strict):
    """Triton's sequence batcher: requests carry a correlation id (`sequence_id`) and start/end flags; steps of
    different sequences share forward passes (up to `max_batch_size`), steps of one sequence run in order."""

    state: list[SequenceStateConfig] = Field(
        min_length=1, description="the state tensors the server carries from each step of a sequence to its next"
    )
    max_sequences: int = Field(default=1024, gt=0, description="sequences kept at once; a further start gets 503")
    max_sequences_per_client: int | None = Field(
        default=None,
        gt=0,
        description="sequences one client (host) may hold open at once; a further start gets 429 "
        "(default: a quarter of max_sequences, at least 1)",
    )
    idle_timeout_s: float = Field(default=60.0, gt=0, description="a sequence with no request for this long is freed")

    @property
    def client_share(self) -> int:
        """`max_sequences_per_client`, or its default: one client cannot take every slot."""
        return self.max_sequences_per_client or max(1, self.max_sequences // 4)


class StepConfig(_Strict):
    """One step of a pipeline of models: another model of the repository, run on the request's image or on crops
    of the regions the first step found."""

    model: str = Field(min_length=1, description="a model of the same repository")
    input: Literal["image", "crops"] = Field(
        default="image", description="image: the request's image (the first step); crops: each region, cut upright"
    )
    key: str | None = Field(default=None, description="each region's field for this step's answer (None: merged)")
    rotate_label: str | None = Field(
        default=None, description="a classifier step: crops it labels so are turned 180 degrees for later steps"
    )
    rotate_min_score: float = Field(default=0.9, ge=0, le=1, description="only when its score is above this")
    min_score: float | None = Field(default=None, description="regions whose score at this step is below: dropped")


class PipelineConfig(_Strict):
    """Triton's ensemble, declared: the first step finds regions in the image (detection or text_detection), each
    later step runs on every region's crop; the answer is the regions with every step's findings."""

    steps: list[StepConfig] = Field(
        min_length=2,
        description="the models in order: the first finds regions in the image, each later one runs on their crops",
    )

    @model_validator(mode="after")
    def _check_steps(self) -> PipelineConfig:
        if self.steps[0].input != "image" or any(step.input != "crops" for step in self.steps[1:]):
            raise ValueError("the first step reads the image, every later step the crops")
        return self


class LatestVersions(_Strict):
    latest: int = Field(gt=0, description="serve the highest N versions")


class SpecificVersions(_Strict):
    specific: list[Annotated[int, Field(gt=0)]] = Field(min_length=1, description="serve exactly these versions")


class ModelConfig(_Strict):
    description: str = Field(default="", description="free text about the model, shown in the web UI")
    max_batch_size: int = Field(default=0, ge=0, description="0: no server-side batching")
    dynamic_batching: DynamicBatchingConfig = Field(
        default=DynamicBatchingConfig(),
        description="how queued requests are coalesced into forward passes (when max_batch_size > 0)",
    )
    sequence_batching: SequenceBatchingConfig | None = Field(
        default=None, description="stateful models: per-sequence state kept by the server"
    )
    instances: int = Field(default=1, ge=1, le=64, description="parallel sessions the server runs for this model")
    inputs: list[TensorConfig] = Field(
        default=[],
        description="the model's inputs restated: names and shapes checked against the model, NaN/inf refused per "
        "input",
    )
    outputs: list[TensorConfig] = Field(default=[], description="not read: the outputs are always the model's own")
    preprocess: PreprocessConfig | None = Field(
        default=None,
        description="raw item (image, text, record, history, sound file) to input tensors (default: tabular where "
        "the model names its features, else clients send tensors)",
    )
    postprocess: PostprocessConfig | None = Field(
        default=None,
        description="output tensors to a prediction (default: the task the model records, else the raw outputs)",
    )
    engine: EngineConfig = Field(
        default=EngineConfig(), description="runtime settings: threads, graph optimization, execution providers, warmup"
    )
    source: SourceConfig = Field(
        default=SourceConfig(),
        description="how a non-ONNX artefact (TorchScript, SavedModel, ...) is opened and converted",
    )
    version_policy: Literal["all"] | LatestVersions | SpecificVersions = Field(
        default="all",
        description="which versions are served and loaded by name: all, {latest: N} or {specific: [1, 3]} (Triton's "
        "policies); a version outside it is not found",
    )
    precision: Literal["fp64", "fp32", "fp16", "bf16", "int8", "int8-dynamic", "int4", "mixed"] | None = Field(
        default=None, description="serve the highest version of this precision (forwardpass optimize); None: highest"
    )
    decision: DecisionConfig | None = Field(
        default=None, description="rules that turn each prediction into an action, audited (None: no decisions)"
    )
    input_schema: InputSchemaConfig | None = Field(
        default=None, description="rules each raw record must pass before preprocessing (None: no check)"
    )
    profile: str | None = Field(default=None, description="the training data's reference profile (drift), a file")
    generation: GenerationConfig | None = Field(
        default=None, description="a decoder language model exported with its KV cache: how to generate with it"
    )
    pipeline: PipelineConfig | None = Field(default=None, description="a pipeline of other models, not a model file")
    constants: dict[str, float | int | str | list[Any]] = Field(
        default={},
        description="inputs fed a fixed value on every forward pass (e.g. sr: 16000); clients never send them",
    )

    @model_validator(mode="after")
    def _check_batching(self) -> ModelConfig:
        too_big = [size for size in self.dynamic_batching.preferred_batch_size if size > self.max_batch_size]
        if too_big and self.max_batch_size > 0:
            raise ValueError(f"preferred_batch_size {too_big} exceeds max_batch_size {self.max_batch_size}")
        return self

    @model_validator(mode="after")
    def _check_pipeline_policy(self) -> ModelConfig:
        """A pipeline has no versions of its own: a policy there would seem to choose its steps' versions."""
        if self.pipeline is not None and "version_policy" in self.model_fields_set:
            raise ValueError("version_policy chooses a model's versions; a pipeline has none: write it in its steps'")
        return self

    @model_validator(mode="after")
    def _check_max_shape(self) -> ModelConfig:
        """A bound is enforced on what clients send: written on an output or under source.inputs it would hold
        nothing back, so it is refused rather than ignored."""
        for field, tensors in (("outputs", self.outputs), ("source.inputs", self.source.inputs)):
            if any(tensor.max_shape is not None for tensor in tensors):
                raise ValueError(f"{field}[].max_shape bounds nothing there; write it under inputs")
        return self

    @classmethod
    def of(cls, path: Path | None) -> ModelConfig:
        """The config at `path`, or the defaults for a model that has none (`ModelEntry.config_path` is None)."""
        return cls.from_file(path) if path is not None else cls()

    @classmethod
    def from_file(cls, path: Path) -> ModelConfig:
        return cls.from_dict(read_yaml(path) or {}, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<config>") -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of fields at the top level, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_describe(exc, data)}") from None


def read_yaml(path: Path) -> Any:
    """A config file's data; ConfigError when it cannot be read, is over MAX_CONFIG_BYTES, is not YAML, or expands
    (through aliases) past MAX_CONFIG_VALUES values or MAX_CONFIG_DEPTH levels."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: is over {MAX_CONFIG_BYTES // 2**20} MiB; keep long lists in a file the config names "
                "(labels: labels.txt)"
            )
        data = yaml.load(raw.decode("utf-8"), Loader=_SAFE_LOADER)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        if isinstance(exc, yaml.constructor.ConstructorError):  # valid YAML: a tag the safe loader builds nothing for
            tag = str(exc.problem).rpartition(" tag ")[2]
            raise ConfigError(f"{path}:{line} uses the YAML tag {tag}, never loaded; plain YAML only") from None
        raise ConfigError(f"{path}:{line} is not valid YAML; fix the syntax") from None
    _check_size(data, path)
    return data


def _check_size(data: Any, path: Path) -> None:
    """Walks the data as its readers will, each alias as often as it is used, stopping at the first limit passed."""
    pending: list[tuple[Any, int]] = [(data, 1)]
    values = 0
    while pending:
        node, depth = pending.pop()
        values += 1
        if values > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{path}: holds more than {MAX_CONFIG_VALUES:,} values (YAML aliases repeating or containing "
                "themselves?); write the values out, or keep large lists in a file the config names"
            )
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(
                f"{path}: is nested more than {MAX_CONFIG_DEPTH} levels deep (a YAML alias containing itself?); no "
                "config field is"
            )
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node if isinstance(node, list) else ()
        pending.extend((child, depth + 1) for child in children)


_KINDS = {
    "preprocess": "'image', 'text', 'tabular', 'interactions'",
    "postprocess": "'classification', 'regression', 'embedding', 'raw', 'anomaly', 'cluster', 'recommendation', "
    "'detection', 'text_detection', 'ctc', 'segmentation'",
}


def _field(loc: tuple[int | str, ...], data: Any) -> str:
    """The error's place as the YAML spells it: pydantic adds levels of its own for a tagged union's tag
    ('preprocess.image.resize') and for a union's member types ('resize.int'); neither is in the file."""
    parts: list[str] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue  # the tag of a tagged union
        if not isinstance(node, dict | list):
            break  # below a value: the names of union members
        parts.append(str(part))
        if isinstance(node, dict):
            node = node.get(part)
        else:
            node = node[part] if isinstance(part, int) and 0 <= part < len(node) else None
    return ".".join(parts)


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The fields the section at a pydantic error's place takes: the names a misspelt key is compared with."""
    models: list[type[BaseModel]] = [ModelConfig]
    for part in loc:
        if isinstance(part, int):  # a list's item: the same models
            continue
        tagged = [model for model in models if _kind(model) == part]
        if tagged:  # a tagged union's tag, which pydantic puts in the place
            models = tagged
            continue
        found = [model.model_fields[part].annotation for model in models if part in model.model_fields]
        models = [model for annotation in found for model in _models_in(annotation)]
    return sorted({name for model in models for name in model.model_fields})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in _models_in(argument)]


def _kind(model: type[BaseModel]) -> object:
    field = model.model_fields.get("kind")
    return get_args(field.annotation)[0] if field is not None and get_origin(field.annotation) is Literal else None


def _describe(exc: ValidationError, data: Any) -> str:
    """The first error as 'field <dotted.path>: problem; fix'."""
    error = exc.errors()[0]
    field = _field(error["loc"], data) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(error["loc"][-1]), _fields_at(error["loc"][:-1]), n=1)
        fix = f"did you mean '{close[0]}'? else remove it" if close else "remove it or check its spelling"
    elif kind == "missing":
        fix = "add it"
    elif kind == "union_tag_invalid" or kind == "union_tag_not_found":
        tags = error.get("ctx", {}).get("expected_tags") or _KINDS.get(field, "the documented kinds")
        fix = f"set kind to one of {tags}"
    else:
        fix = f"got {_SHORT.repr(error.get('input'))}"
    return f"field '{field}': {error['msg']}; {fix}"
