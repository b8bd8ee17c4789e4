"""Per-item preprocessing and postprocessing, assembled from a model's declarative config. Pure: no I/O per call."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from forwardpass.config import (
    AnomalyConfig,
    AudioConfig,
    ClassificationConfig,
    ClusterConfig,
    CtcConfig,
    DetectionConfig,
    EmbeddingConfig,
    ImageConfig,
    InteractionsConfig,
    ModelConfig,
    RecommendationConfig,
    RegressionConfig,
    SegmentationConfig,
    SpeechSegmentsConfig,
    TabularConfig,
    TextConfig,
    TextDetectionConfig,
)
from forwardpass.errors import ConfigError, DecodeError, ShapeError
from forwardpass.pipeline.audio import SAMPLES, AudioPreprocessor, audio_window, mono_channel_axis
from forwardpass.pipeline.detection import Detect
from forwardpass.pipeline.geometry import TRANSFORM
from forwardpass.pipeline.interactions import InteractionsPreprocessor
from forwardpass.pipeline.kinds import kind_of
from forwardpass.pipeline.ocr import CtcDecode, DetectText
from forwardpass.pipeline.outputs import (
    Classify,
    Cluster,
    DetectAnomaly,
    Embed,
    Prediction,
    RawOutputs,
    Recommend,
    Regress,
    load_labels,
)
from forwardpass.pipeline.segmentation import Segment
from forwardpass.pipeline.speech import SpeechSegments
from forwardpass.pipeline.tabular import TabularPreprocessor
from forwardpass.pipeline.text import TextPreprocessor
from forwardpass.tensor import DataType, TensorSpec, as_array

__all__ = ["Arrays", "Collate", "Pipeline", "Postprocessor", "Prediction", "Preprocessor", "stack", "text_item_shape"]

Arrays = dict[str, np.ndarray]
Collate = Callable[[Sequence[Arrays]], Arrays]


class Preprocessor(Protocol):
    def __call__(self, raw: object) -> Arrays: ...


class Postprocessor(Protocol):
    def __call__(self, outputs: Arrays, inputs: Arrays, top_k: int | None = None) -> Prediction: ...


def stack(items: Sequence[Arrays]) -> Arrays:
    """Items of equal shape → one batch (batch dimension first)."""
    try:
        return {name: np.stack([item[name] for item in items]) for name in items[0]}
    except ValueError:
        raise ShapeError("items in one batch differ in shape; send them separately or pad them") from None


def text_item_shape(inputs: Sequence[TensorSpec]) -> tuple[int, ...] | None:
    """The shape a text takes as an item of a model whose only input holds one string per item ([batch] or [batch,
    1]: a Keras TextVectorization model, an ONNX string pipeline); None for any other model."""
    if len(inputs) != 1 or inputs[0].dtype is not DataType.BYTES:
        return None
    shape = inputs[0].shape
    return (1,) * (len(shape) - 1) if all(dim in (1, -1) for dim in shape[1:]) else None


class TensorInput:
    """No declared preprocessing: an array (single-input models) or a {name: array} mapping per item."""

    def __init__(self, inputs: list[TensorSpec]) -> None:
        self.names = [spec.name for spec in inputs]
        self.text_shape = text_item_shape(inputs)

    def __call__(self, raw: object) -> Arrays:
        if isinstance(raw, Mapping):
            return dict(raw)
        if isinstance(raw, np.ndarray | list) and len(self.names) == 1:
            return {self.names[0]: as_array(self.names[0], raw)}
        if isinstance(raw, str) and self.text_shape is not None:
            return {self.names[0]: np.array(raw, dtype=object).reshape(self.text_shape)}
        expected = "an array" if len(self.names) == 1 else f"a mapping of {self.names} to arrays"
        raise DecodeError(f"this model declares no preprocessing: expected {expected}, got {type(raw).__name__}")


class Pipeline:
    """`preprocess(raw) -> arrays` for one item, `collate(items) -> batch`, `postprocess(outputs, inputs)` per item."""

    def __init__(self, config: ModelConfig, inputs: list[TensorSpec], outputs: list[TensorSpec], model_dir: Path):
        self.preprocess, self.collate = _preprocessor(config, inputs, model_dir)
        self.postprocess = _postprocessor(config, inputs, outputs, model_dir)
        # arrays the preprocessing hands the postprocessing beside the model's inputs (never fed to the model)
        self.context: tuple[str, ...] = (TRANSFORM,) if _maps_coordinates(config) else ()
        # a recording cut into chunks, each a step of a stateful model: its length before the last was padded
        self.chunked = _chunked(config)
        if self.chunked:
            self.context = (SAMPLES,)

    def feeds(self, batch: Arrays) -> Arrays:
        """What the model takes of a batch (or item): its arrays less the context arrays."""
        if not self.context:
            return batch
        return {name: array for name, array in batch.items() if name not in self.context}


def _maps_coordinates(config: ModelConfig) -> bool:
    """The postprocessing reports coordinates in the original image: it needs the image preprocessing's transform."""
    return isinstance(config.preprocess, ImageConfig) and isinstance(
        config.postprocess, DetectionConfig | TextDetectionConfig | SegmentationConfig
    )


def _chunked(config: ModelConfig) -> bool:
    """A recording cut into the chunks a stateful model steps through."""
    return isinstance(config.preprocess, AudioConfig) and config.preprocess.split == "chunks"


def _pick(name: str | None, specs: list[TensorSpec], field: str) -> str:
    names = [spec.name for spec in specs]
    if name is None:
        return names[0]
    if name not in names:
        raise ConfigError(f"{field}: the model has no tensor '{name}'; it has {names}")
    return name


Built = tuple[Preprocessor, Collate]


def _preprocessor(config: ModelConfig, inputs: list[TensorSpec], model_dir: Path) -> Built:
    return _BUILDERS[kind_of(config).name](config, inputs, model_dir)


def _image(config: ModelConfig, inputs: list[TensorSpec], model_dir: Path) -> Built:
    from forwardpass.pipeline.image import ImagePreprocessor  # Pillow: only for a model that takes images

    declared = config.preprocess
    assert isinstance(declared, ImageConfig)
    image = ImagePreprocessor(declared, _pick(declared.input, inputs, "preprocess.input"), _maps_coordinates(config))
    return image, ((lambda items: stack(image.widen(items))) if image.pads_lines else stack)


def _text(config: ModelConfig, inputs: list[TensorSpec], model_dir: Path) -> Built:
    declared = config.preprocess
    assert isinstance(declared, TextConfig)
    for tensor in declared.inputs.values():
        _pick(tensor, inputs, "preprocess.inputs")
    text = TextPreprocessor(declared, model_dir)
    return text, text.collate


def _interactions(config: ModelConfig, inputs: list[TensorSpec], model_dir: Path) -> Built:
    declared = config.preprocess
    assert isinstance(declared, InteractionsConfig)
    items = load_labels(declared.items, model_dir) or []
    return InteractionsPreprocessor(declared, _pick(declared.input, inputs, "preprocess.input"), items), stack


def _tabular(config: ModelConfig, inputs: list[TensorSpec], model_dir: Path) -> Built:
    declared = config.preprocess
    assert isinstance(declared, TabularConfig)
    names = {column.name for column in declared.columns}
    if declared.input is None and {spec.name for spec in inputs} == names and len(inputs) == len(names):
        return TabularPreprocessor(declared, "", per_column=inputs), stack  # one input per column
    return TabularPreprocessor(declared, _pick(declared.input, inputs, "preprocess.input")), stack


def _audio(config: ModelConfig, inputs: list[TensorSpec], model_dir: Path) -> Built:
    declared = config.preprocess
    assert isinstance(declared, AudioConfig)
    name = _pick(declared.input, inputs, "preprocess.input")
    spec = next(spec for spec in inputs if spec.name == name)
    window = audio_window(declared, spec, config.sequence_batching is not None)
    return AudioPreprocessor(declared, name, window, mono_channel_axis(declared, spec)), stack


def _tensors(config: ModelConfig, inputs: list[TensorSpec], model_dir: Path) -> Built:
    return TensorInput(inputs), stack


# Each input kind's preprocessor (forwardpass.pipeline.kinds declares the kinds)
_BUILDERS: dict[str, Callable[[ModelConfig, list[TensorSpec], Path], Built]] = {
    "image": _image,
    "text": _text,
    "tabular": _tabular,
    "interactions": _interactions,
    "audio": _audio,
    "tensor": _tensors,
}


def _postprocessor(
    config: ModelConfig, inputs: list[TensorSpec], outputs: list[TensorSpec], model_dir: Path
) -> Postprocessor:
    declared = config.postprocess
    if isinstance(declared, ClassificationConfig):
        labels = load_labels(declared.labels, model_dir)
        return Classify(declared, _pick(declared.output, outputs, "postprocess.output"), labels)
    if isinstance(declared, RegressionConfig):
        return Regress(declared, _pick(declared.output, outputs, "postprocess.output"))
    if isinstance(declared, EmbeddingConfig):
        return Embed(declared, _pick(declared.output, outputs, "postprocess.output"))
    if isinstance(declared, AnomalyConfig):
        return DetectAnomaly(declared, _pick(declared.output, outputs, "postprocess.output"))
    if isinstance(declared, ClusterConfig):
        labels = load_labels(declared.labels, model_dir)
        return Cluster(declared, _pick(declared.output, outputs, "postprocess.output"), labels)
    if isinstance(declared, RecommendationConfig):
        output = _pick(declared.output, outputs, "postprocess.output")
        seen = _pick(declared.seen, inputs, "postprocess.seen")
        return Recommend(declared, output, seen, load_labels(declared.items, model_dir))
    if isinstance(declared, DetectionConfig):
        return _detect(config, declared, outputs, model_dir)
    if isinstance(declared, TextDetectionConfig):
        return DetectText(declared, _pick(declared.output, outputs, "postprocess.output"), _maps_coordinates(config))
    if isinstance(declared, SegmentationConfig):
        output = _pick(declared.output, outputs, "postprocess.output")
        return Segment(declared, output, load_labels(declared.labels, model_dir), _maps_coordinates(config))
    if isinstance(declared, SpeechSegmentsConfig):
        audio = config.preprocess
        if not isinstance(audio, AudioConfig) or audio.split != "chunks":
            raise ConfigError(
                "postprocess: speech_segments reads one probability per chunk: preprocess kind audio, split: chunks"
            )
        output = _pick(declared.output, outputs, "postprocess.output")
        chunks = _pick(audio.input, inputs, "preprocess.input")
        return SpeechSegments(declared, output, chunks, SAMPLES, audio.sample_rate)
    if isinstance(declared, CtcConfig):
        return CtcDecode(declared, _pick(declared.output, outputs, "postprocess.output"), model_dir)
    return RawOutputs()


def _check_yolo_width(declared: DetectionConfig, spec: TensorSpec) -> None:
    """A YOLO table whose numbers per candidate are known must hold the box, a class score and every keypoint."""
    width = spec.shape[-1 if declared.layout == "yolo" else -2] if len(spec.shape) >= 2 else -1
    least = (5 if declared.objectness else 4) + 1 + 3 * declared.keypoints
    if width != -1 and width < least:
        raise ConfigError(
            f"postprocess: output '{spec.name}' {list(spec.shape)} has {width} numbers per candidate, but layout "
            f"{declared.layout} with {declared.keypoints} keypoints needs at least {least} (the box, "
            f"{'objectness, ' if declared.objectness else ''}a class score, (x, y, visibility) per keypoint)"
        )


def _detect(config: ModelConfig, declared: DetectionConfig, outputs: list[TensorSpec], model_dir: Path) -> Detect:
    if (declared.normalized or declared.anchors is not None) and not isinstance(config.preprocess, ImageConfig):
        raise ConfigError("postprocess: boxes as fractions of the input need preprocess kind image (its size)")
    if declared.layout in ("yolo", "yolo_columns"):
        names: tuple[str, ...] = (_pick(declared.output, outputs, "postprocess.output"),)
        _check_yolo_width(declared, next(spec for spec in outputs if spec.name == names[0]))
    else:
        boxes = _pick(declared.boxes, outputs, "postprocess.boxes")
        scores = _pick(
            declared.scores or (outputs[1].name if len(outputs) > 1 else None), outputs, "postprocess.scores"
        )
        if boxes == scores:
            raise ConfigError(
                f"postprocess: layout {declared.layout} reads boxes and scores from two outputs; name them"
            )
        names = (boxes, scores)
    return Detect(declared, names, load_labels(declared.labels, model_dir), _maps_coordinates(config))
