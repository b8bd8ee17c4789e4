"""Hugging Face model folders: config.json + *.safetensors weights + tokenizer.json (encoders: embeddings, sequence
and token classification) or preprocessor_config.json (image classification).

Natively transformers runs them (extra `huggingface`); converted, torch.onnx exports them with dynamic batch and
sequence axes. Outputs keep transformers' names: `last_hidden_state` for an encoder (pooling is the pipeline's job),
`logits` for a `...ForSequenceClassification` or `...ForImageClassification` head ([batch, classes]) or a
`...ForTokenClassification` head ([batch, sequence, classes]); any other head is refused naming its task, never
dropped for the encoder under it. Text inputs are `input_ids`, `attention_mask` and, for models with token types
(BERT), `token_type_ids`; an image classifier takes `pixel_values` [batch, channels, height, width], the height and
width its image processor makes (`huggingface_image`). Each file is checked before transformers reads it, so a
damaged one is named.
"""

from __future__ import annotations

import inspect
import json
import struct
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from forwardpass.backends.base import Session
from forwardpass.config import EngineConfig
from forwardpass.errors import ConfigError
from forwardpass.formats.base import ConvertOptions, LoadOptions, require
from forwardpass.formats.facts import ModelFacts
from forwardpass.formats.huggingface_image import PROCESSOR_CONFIG, image_preprocessing
from forwardpass.formats.parity import random_samples
from forwardpass.formats.torch import TorchSession, import_torch, script_exporting
from forwardpass.tensor import DataType, TensorSpec

__all__ = ["HUGGINGFACE", "SENTENCES", "HuggingFaceFormat"]

_EXTRA = "huggingface"
_CONFIG = "config.json"
_TOKENIZER = "tokenizer.json"
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The heads run with their own outputs (architecture suffix → transformers Auto class), and the architectures whose
# encoder is the model: a base model, or a pretraining checkpoint (masked LM) that is embedded with its encoder.
_HEADS = {
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForImageClassification": "AutoModelForImageClassification",
}
# Heads that answer one row of class scores per item: a classifier (or a regression) as transformers' pipelines read it
_ITEM_HEADS = ("AutoModelForSequenceClassification", "AutoModelForImageClassification")
_IMAGE_INPUT = "pixel_values"
_UNSIZED_IMAGES = 64  # height and width of parity images where the model's processor fixes none
# The task of a head no forwardpass pipeline reads, by the architecture's suffix: named in its refusal
_UNRUN_TASKS = {
    "ObjectDetection": "object detection",
    "Segmentation": "image segmentation",
    "DepthEstimation": "depth estimation",
    "KeypointDetection": "keypoint detection",
    "MaskedImageModeling": "masked image modeling",
    "VideoClassification": "video classification",
    "QuestionAnswering": "question answering",
    "CausalLM": "text generation",
}
_ENCODER_ARCHITECTURES = ("Model", "ForMaskedLM", "ForPreTraining")
# sentence-transformers' description of its modules (Transformer, Pooling, Normalize) and how Pooling names its modes
_MODULES = "modules.json"
_POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weighted_mean",
    "pooling_mode_lasttoken": "last_token",
}
# Model types whose position ids start after the padding index: max_position_embeddings counts those too.
_POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "camembert")

# Real sentences of different lengths: parity inputs for text models, padded per batch like real traffic.
SENTENCES = (
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The new movie is awesome!",
    "The cat sits outside.",
    "The new movie is so great, I watched it twice and would happily see it again next week.",
    "Python is a programming language that lets you work quickly and integrate systems more effectively.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.",
    "Inference servers batch requests to keep the accelerator busy.",
    "Hi",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates again.",
    "Please remember to water the plants while I am away.",
    "How do I reset my password?",
    "The museum's new exhibition features paintings from the early twentieth century.",
    "Rain is expected tomorrow afternoon.",
    "She finished the marathon in under four hours despite the heat.",
    "Quantum computers use qubits, which can represent a superposition of states.",
    "Where is the nearest train station?",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Our team shipped the release candidate on Friday evening.",
    "Birds migrate south for the winter.",
    "He apologised for the delay and promised to send the report by noon.",
    "This restaurant serves the best noodles in town.",
    "Electric cars are becoming cheaper every year.",
    "The library closes at nine.",
)


class HuggingFaceFormat:
    name = "huggingface"
    extra = _EXTRA
    detect_rank = 20

    def detect(self, path: Path) -> bool:
        return (
            path.is_dir()
            and (path / _CONFIG).is_file()
            and ((path / _TOKENIZER).is_file() or (path / PROCESSOR_CONFIG).is_file())
            and any(path.glob("*.safetensors"))
        )

    def open_native(self, path: Path, engine: EngineConfig, options: LoadOptions) -> Session:
        torch, encoder = _load(path, attention=None)  # transformers' fastest for this model
        if engine.intra_op_threads:
            torch.set_num_threads(engine.intra_op_threads)
        return TorchSession(encoder, encoder.input_specs, torch, path, [encoder.output_name])

    def convert(self, path: Path, output: Path, options: LoadOptions, convert: ConvertOptions) -> dict[str, Any]:
        torch, encoder = _load(path, attention="eager")  # the plainest attention exports to the plainest graph
        example = self.parity_samples(path, encoder.input_specs, 3)[-1]
        names = [spec.name for spec in encoder.input_specs]
        dynamic = {spec.name: _dynamic_axes(spec) for spec in encoder.input_specs}
        dynamic[encoder.output_name] = {0: "batch", 1: "sequence"} if encoder.per_token else {0: "batch"}
        with script_exporting(torch):
            try:
                torch.onnx.export(
                    encoder,
                    tuple(torch.from_numpy(example[name]) for name in names),
                    str(output),
                    dynamo=False,
                    opset_version=convert.opset,
                    input_names=names,
                    output_names=[encoder.output_name],
                    dynamic_axes=dynamic,
                )
            except Exception as exc:  # the exporter raises many kinds for unsupported operators
                raise ConfigError(f"{path}: torch.onnx cannot export this model: {exc}") from None
        transformers = require("transformers", _EXTRA)
        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        return {"tool_versions": versions, "exporter": "torch.onnx.export(dynamo=False)"}

    def facts(self, path: Path, options: LoadOptions) -> ModelFacts:
        """A sequence or image head's task as transformers' pipeline reads it: a regression's value (problem_type),
        else a classifier's labels (config.json `id2label`, in index order) over its logits; an encoder's pooling;
        how an image classifier's own processor prepares an image (or why forwardpass cannot)."""
        config = _read_config(path)
        tokenizer = path.resolve() / _TOKENIZER if (path / _TOKENIZER).is_file() else None
        said = ModelFacts(source="Hugging Face config.json", max_tokens=_max_tokens(config), tokenizer=tokenizer)
        id2label = config.get("id2label")
        auto_class = _auto_class(path, config)
        if auto_class == "AutoModel":
            return _sentence_transformers_facts(path, said)
        if auto_class == "AutoModelForImageClassification":
            try:
                said = replace(said, max_tokens=None, image=image_preprocessing(path, str(config["model_type"])))
            except ConfigError as exc:
                said = replace(said, max_tokens=None, preprocess_refused=str(exc))
        if auto_class not in _ITEM_HEADS:
            return said
        if config.get("problem_type") == "regression":
            return replace(said, task="regression")
        if not isinstance(id2label, dict):
            return said
        try:
            ordered = sorted((int(index), str(label)) for index, label in id2label.items())
        except ValueError:
            return said
        if [index for index, _ in ordered] != list(range(len(ordered))):  # its labels in order would be others'
            raise ConfigError(
                f"{path / 'config.json'}: id2label's indices {[index for index, _ in ordered]} are not the head's "
                f"classes 0..{len(ordered) - 1}; number them so"
            )
        return replace(
            said,
            task="classification",
            multi_label=config.get("problem_type") == "multi_label_classification",
            classes=tuple(label for _, label in ordered),
            scores_output="logits",
        )

    def parity_samples(self, path: Path, specs: Sequence[TensorSpec], n: int) -> list[dict[str, np.ndarray]]:
        """Real sentences, tokenized by the folder's tokenizer, in batches of 1, 3, then 16, padded per batch; for an
        image classifier, seeded random pixels of the size its processor makes."""
        if any(spec.name == _IMAGE_INPUT for spec in specs):
            return random_samples(specs, n, dynamic_size=_UNSIZED_IMAGES)
        tokenizer = _tokenizer(path)
        texts = [SENTENCES[i % len(SENTENCES)] for i in range(n)]
        batches, start = [], 0
        for size in _batch_sizes(n):
            encodings = tokenizer.encode_batch(texts[start : start + size])
            start += size
            fields = {
                "input_ids": [e.ids for e in encodings],
                "attention_mask": [e.attention_mask for e in encodings],
                "token_type_ids": [e.type_ids for e in encodings],
            }
            batches.append({spec.name: np.asarray(fields[spec.name], dtype=np.int64) for spec in specs})
        return batches


def _dynamic_axes(spec: TensorSpec) -> dict[int, str]:
    names = ("batch", "channels", "height", "width") if spec.name == _IMAGE_INPUT else ("batch", "sequence")
    return {axis: names[axis] for axis, dim in enumerate(spec.shape) if dim == -1}


def _batch_sizes(n: int) -> list[int]:
    sizes: list[int] = []
    for wanted in (1, 3):
        if sum(sizes) < n:
            sizes.append(min(wanted, n - sum(sizes)))
    while sum(sizes) < n:
        sizes.append(min(16, n - sum(sizes)))
    return sizes


def _tokenizer(path: Path) -> Any:
    """The folder's tokenizer, padding to the longest text of a batch and truncating where the model must."""
    from tokenizers import Tokenizer

    file = path / _TOKENIZER
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises plain Exception for malformed files
        raise ConfigError(f"{file}: not a readable tokenizer.json (huggingface folder): {exc}") from None
    tokenizer.enable_truncation(min(_max_tokens(_read_config(path)), 512))
    padding = tokenizer.padding or {}
    tokenizer.enable_padding(pad_id=int(padding.get("pad_id", 0)), pad_token=str(padding.get("pad_token", "[PAD]")))
    return tokenizer


def _sentence_transformers_facts(path: Path, said: ModelFacts) -> ModelFacts:
    """How the folder's own sentence-transformers modules (modules.json) pool and normalize an encoder's token
    vectors, when it lists them: the embedding its users compare against."""
    modules_file = path / _MODULES
    if not modules_file.is_file():
        return said
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        kinds = {str(module["type"]).rsplit(".", 1)[-1]: str(module.get("path", "")) for module in modules}
        pooling_file = path / kinds["Pooling"] / "config.json" if "Pooling" in kinds else None
        modes = json.loads(pooling_file.read_text(encoding="utf-8")) if pooling_file is not None else {}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{modules_file}: not a readable sentence-transformers modules.json: {exc}") from None
    pooling = next((mode for key, mode in _POOLING_MODES.items() if modes.get(key)), None)
    return replace(said, pooling=pooling, normalized="Normalize" in kinds, reads_tokens=_sequence_length(path))


def _sequence_length(path: Path) -> int | None:
    """The tokens sentence-transformers reads of a text (sentence_bert_config.json's max_seq_length), if it says."""
    file = path / "sentence_bert_config.json"
    try:
        length = json.loads(file.read_text(encoding="utf-8")).get("max_seq_length") if file.is_file() else None
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{file}: not a readable sentence-transformers config: {exc}") from None
    return length if isinstance(length, int) and length > 0 else None


def _max_tokens(config: dict[str, Any]) -> int:
    """The tokens the model's position embeddings hold; RoBERTa's positions start after its padding index."""
    positions = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in _POSITIONS_AFTER_PADDING:
        positions -= int(config.get("pad_token_id", 1)) + 1
    return positions


def _read_config(path: Path) -> dict[str, Any]:
    file = path / _CONFIG
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{file}: not a readable config.json (huggingface folder): {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ConfigError(f"{file}: not a transformers config.json (huggingface folder): no model_type")
    return config


def _check_safetensors(file: Path) -> None:
    """The header says how long the file must be: a truncated or damaged weights file is named before loading."""
    try:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError) as exc:
        raise ConfigError(f"{file}: not a readable safetensors file (huggingface folder): {exc}") from None
    expected = 8 + length + max(ends, default=0)
    if file.stat().st_size < expected:
        raise ConfigError(
            f"{file}: truncated safetensors file (huggingface folder): {file.stat().st_size} bytes, expected {expected}"
        )


def _load(path: Path, attention: str | None) -> tuple[ModuleType, Any]:
    """torch, and the model wrapped as an nn.Module taking its inputs positionally and returning one tensor. The
    folder's files are checked first, so a damaged one is named without importing a framework."""
    config = _read_config(path)
    auto_class = _auto_class(path, config)
    image = auto_class == "AutoModelForImageClassification"
    if not image:
        _tokenizer(path)
    for weights in sorted(path.glob("*.safetensors")):
        _check_safetensors(weights)
    torch = import_torch(_EXTRA)
    transformers = require("transformers", _EXTRA)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    auto = getattr(transformers, auto_class)
    try:
        model = auto.from_pretrained(str(path), local_files_only=True, attn_implementation=attention)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for folders it cannot read
        raise ConfigError(f"{path}: transformers cannot load this huggingface folder: {exc}") from None
    if image:
        channels = int(config.get("num_channels", 3))
        specs = [TensorSpec(_IMAGE_INPUT, DataType.FP32, (-1, channels, *_image_size(path, config)))]
    else:
        accepted = inspect.signature(model.forward).parameters
        names = [name for name in _TEXT_INPUTS if name in accepted]
        if "token_type_ids" in names and not config.get("type_vocab_size"):
            names.remove("token_type_ids")
        specs = [TensorSpec(name, DataType.INT64, (-1, -1)) for name in names]
    per_token = auto_class not in _ITEM_HEADS
    output_name = "last_hidden_state" if auto_class == "AutoModel" else "logits"
    return torch, _encoder_module(torch, model.float(), specs, output_name, per_token)


def _image_size(path: Path, config: dict[str, Any]) -> tuple[int, int]:
    """The (height, width) of the images the folder's processor makes, else of those the model was configured for
    (config.json image_size: where forwardpass does not read its processor, a config declares how images are
    prepared); (-1, -1) where neither fixes one."""
    try:
        image = image_preprocessing(path, str(config["model_type"]))
        crop, resize = image.crop, image.resize
        fixed = crop if crop is not None else resize if isinstance(resize, tuple) else None
    except ConfigError:
        fixed = config.get("image_size")
    if isinstance(fixed, int):
        return fixed, fixed
    if isinstance(fixed, tuple | list) and len(fixed) == 2:
        return int(fixed[0]), int(fixed[1])
    return -1, -1


def _auto_class(path: Path, config: dict[str, Any]) -> str:
    """The transformers Auto class that loads the folder's architecture with its head; one no head here runs is
    refused, since `AutoModel` would load the encoder under it and answer hidden states for the head's outputs."""
    architectures = [str(name) for name in config.get("architectures") or []]
    for architecture in architectures:
        head = next((suffix for suffix in _HEADS if architecture.endswith(suffix)), None)
        if head is not None:
            return _HEADS[head]
    encoder = all(name.endswith(_ENCODER_ARCHITECTURES) for name in architectures)
    images_only = not (path / _TOKENIZER).is_file() and (path / PROCESSOR_CONFIG).is_file()
    if encoder and not images_only:
        return "AutoModel"
    runs = ", ".join(f"*{suffix}" for suffix in (*_ENCODER_ARCHITECTURES, *_HEADS))
    if encoder:  # an image encoder: its features are no text embedding
        unsupported, task = (architectures or [str(config["model_type"])])[0], "image feature extraction"
    else:
        unsupported = next(name for name in architectures if not name.endswith(_ENCODER_ARCHITECTURES))
        task = next((task for suffix, task in _UNRUN_TASKS.items() if unsupported.endswith(suffix)), "")
    fix = (
        f"generate text with `forwardpass generate {path}`"
        if unsupported.endswith("ForCausalLM")
        else "export it to ONNX with its head (e.g. optimum-cli export onnx) and serve the .onnx file"
    )
    named = f"{unsupported} ({task})" if task else unsupported
    raise ConfigError(f"{path / _CONFIG}: architecture {named} is not one forwardpass runs ({runs}); {fix}")


def _encoder_module(torch: ModuleType, model: Any, specs: list[TensorSpec], output_name: str, per_token: bool) -> Any:
    names = [spec.name for spec in specs]

    class Encoder(torch.nn.Module):  # type: ignore[name-defined,misc]  # torch arrives as a ModuleType: Any
        """Positional inputs in, one named output out: the shape both torch and the ONNX exporter want."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.output_name = output_name
            self.per_token = per_token  # one output row per token, not per text
            self.input_specs = specs

        def forward(self, *tensors: Any) -> Any:
            return self.model(**dict(zip(names, tensors, strict=True)))[output_name]

    # eval() on the wrapper as well: exporting restores the training flag the wrapper had, dropout included
    return Encoder().eval()


HUGGINGFACE = HuggingFaceFormat()
