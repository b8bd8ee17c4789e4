"""A model's config, declared, else inferred, else refused: what the config leaves out is filled from what the model
records (`ModelFacts`) and its tensors, and the result is checked against the model before anything is served.

    complete(config, inputs, outputs, facts)  → the config every mode uses, and {field: why it was inferred}
    check(config, inputs, outputs, facts, …)  → ConfigError naming the file, the field, what the model has, the fix

Inference never guesses where the model could be answered wrongly: with no word from the model on its task, a
config-less model gives its raw outputs, and `forwardpass init --data` proposes a config for the user to review.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np

from forwardpass.config import (
    ClassificationConfig,
    EmbeddingConfig,
    ImageConfig,
    ModelConfig,
    PostprocessConfig,
    PreprocessConfig,
    RegressionConfig,
    TabularColumn,
    TabularConfig,
    TextConfig,
)
from forwardpass.errors import ConfigError
from forwardpass.formats.facts import ModelFacts
from forwardpass.pipeline.outputs import load_labels
from forwardpass.tensor import FLOATS, DataType, TensorSpec

__all__ = [
    "INFERRED_BATCH_SIZE",
    "check",
    "class_width",
    "complete",
    "scores_candidates",
    "settle_activation",
    "task_from_labels",
]

# max_batch_size given to a model whose every input and output has a dynamic first dimension (Triton auto-completes
# batching on the same condition).
INFERRED_BATCH_SIZE = 32

Inferred = dict[str, str]
# The poolings an embedding config can declare besides none, and who says how a model pools.
_POOLINGS = ("mean", "cls")
_EMBEDDING_MODULES = "sentence-transformers modules.json"
_TOKEN_VECTORS = "last_hidden_state"  # a Hugging Face encoder's output of one vector per token
Activation = Literal["softmax", "sigmoid", "none", "decision"]
TokenizerOutput = Literal["input_ids", "attention_mask", "token_type_ids"]
_TOKENIZER_OUTPUTS: tuple[TokenizerOutput, ...] = ("input_ids", "attention_mask", "token_type_ids")


def complete(
    config: ModelConfig, inputs: list[TensorSpec], outputs: list[TensorSpec], facts: ModelFacts
) -> tuple[ModelConfig, Inferred]:
    """`config` with what it leaves out filled from the model; the second value says, per field, why."""
    inferred: Inferred = {}
    update: dict[str, object] = {}
    visible = [spec for spec in inputs if spec.name not in config.constants]
    postprocess = _postprocess(config.postprocess, outputs, facts, inferred)
    if postprocess is not config.postprocess:
        update["postprocess"] = postprocess
    if config.preprocess is None:
        preprocess = (
            _tabular(visible, facts, inferred) or _tokenized(visible, facts, inferred) or _image(facts, inferred)
        )
        if preprocess is not None:
            update["preprocess"] = preprocess
    elif isinstance(config.preprocess, TextConfig):
        text = _text(config.preprocess, facts, inferred)
        if text is not config.preprocess:
            update["preprocess"] = text
    if "max_batch_size" not in config.model_fields_set and config.sequence_batching is None:
        reason = _batching(visible, outputs, facts)
        if reason is not None:
            update["max_batch_size"] = INFERRED_BATCH_SIZE
            inferred["max_batch_size"] = reason
    return (config.model_copy(update=update) if update else config), inferred


def scores_candidates(outputs: list[TensorSpec], facts: ModelFacts) -> list[str]:
    """The outputs a classifier's scores may be read from: the one the model names, else its float outputs."""
    if facts.scores_output is not None and any(spec.name == facts.scores_output for spec in outputs):
        return [facts.scores_output]
    return [spec.name for spec in outputs if spec.dtype in FLOATS]


def class_width(spec: TensorSpec) -> int | None:
    """Classes in a scores output [batch, classes] (or [classes]); None where the dimension is dynamic."""
    width = spec.shape[-1] if spec.shape else 1
    return None if width == -1 else width


def one_row_an_item(spec: TensorSpec) -> bool:
    """Whether a scores output holds one row of class scores an item: [batch, classes] and [batch, 1, classes] do,
    [batch, positions, classes] does not."""
    return all(dim == 1 for dim in spec.shape[1:-1])


# --- postprocessing ------------------------------------------------------------------------------------------------


def _postprocess(
    declared: PostprocessConfig | None, outputs: list[TensorSpec], facts: ModelFacts, inferred: Inferred
) -> PostprocessConfig | None:
    by_name = {spec.name: spec for spec in outputs}
    if declared is None:
        return _undeclared(by_name, facts, inferred)
    if isinstance(declared, ClassificationConfig):
        update: dict[str, object] = {}
        output = declared.output
        if output is None:
            candidates = scores_candidates(outputs, facts)
            if len(candidates) != 1:
                return declared  # `check` refuses it, naming the candidates
            output = update["output"] = candidates[0]
            inferred["postprocess.output"] = _why_output(output, facts)
        if declared.activation is None and output in by_name:
            update["activation"], inferred["postprocess.activation"] = _activation(by_name[output], facts)
        if declared.labels is None and facts.classes is not None:
            update["labels"] = list(facts.classes)
            inferred["postprocess.labels"] = f"{facts.source}: the model's classes, in score order"
        return declared.model_copy(update=update) if update else declared
    if isinstance(declared, EmbeddingConfig):
        return _embedding(declared, facts, inferred)
    if isinstance(declared, RegressionConfig) and declared.output is None:
        floats = [spec.name for spec in outputs if spec.dtype in FLOATS]
        if len(floats) == 1:
            inferred["postprocess.output"] = "the model's only floating-point output"
            return declared.model_copy(update={"output": floats[0]})
    return declared


def _embedding(declared: EmbeddingConfig, facts: ModelFacts, inferred: Inferred) -> EmbeddingConfig:
    """Pooling and normalizing as the model's own modules do, where the config leaves them out."""
    update: dict[str, object] = {}
    if "pooling" not in declared.model_fields_set and facts.pooling in _POOLINGS:
        update["pooling"] = facts.pooling
        inferred["postprocess.pooling"] = f"{_EMBEDDING_MODULES}: the model's Pooling module"
    if "normalize" not in declared.model_fields_set and facts.normalized is not None:
        update["normalize"] = facts.normalized
        listed = "a Normalize module" if facts.normalized else "no Normalize module"
        inferred["postprocess.normalize"] = f"{_EMBEDDING_MODULES}: {listed}"
    return declared.model_copy(update=update) if update else declared


def _undeclared(by_name: dict[str, TensorSpec], facts: ModelFacts, inferred: Inferred) -> PostprocessConfig | None:
    """A task the model itself records (its framework's classifier or regressor, a final Softmax); else None."""
    scores = facts.scores_output if facts.scores_output in by_name else None
    if facts.task == "classification" and scores is not None:
        activation, why_activation = _activation(by_name[scores], facts)
        inferred["postprocess"] = f"{facts.source}: a classifier, its class scores in '{scores}'"
        inferred["postprocess.activation"] = why_activation
        if facts.classes is not None:
            inferred["postprocess.labels"] = f"{facts.source}: the model's classes, in score order"
        labels = list(facts.classes) if facts.classes is not None else None
        return ClassificationConfig(kind="classification", output=scores, activation=activation, labels=labels)
    floats = [name for name, spec in by_name.items() if spec.dtype in FLOATS]
    if facts.task == "regression" and len(floats) == 1:
        inferred["postprocess"] = f"{facts.source}: a regressor, its value in '{floats[0]}'"
        return RegressionConfig(kind="regression", output=floats[0])
    if (
        len(by_name) == 1
        and facts.distributions.get(floats[0] if floats else "") == "softmax"
        and one_row_an_item(by_name[floats[0]])  # a softmax per token or pixel classifies no item: raw outputs
    ):
        name = floats[0]
        inferred["postprocess"] = f"{facts.source}: '{name}' comes out of a Softmax, a distribution over classes"
        inferred["postprocess.activation"] = "none: the output already is a probability distribution"
        labels = list(facts.classes) if facts.classes is not None else None
        return ClassificationConfig(kind="classification", output=name, activation="none", labels=labels)
    if facts.pooling in _POOLINGS and _TOKEN_VECTORS in by_name:
        inferred["postprocess"] = f"{_EMBEDDING_MODULES}: an encoder of sentence embeddings"
        return _embedding(EmbeddingConfig(kind="embedding", output=_TOKEN_VECTORS), facts, inferred)
    return None


def _activation(spec: TensorSpec, facts: ModelFacts) -> tuple[Activation, str]:
    already = facts.distributions.get(spec.name)
    if already is not None:
        how = "a converter's probabilities" if already == "probabilities" else f"the output of a {already.title()}"
        return "none", f"{facts.source}: '{spec.name}' already holds probabilities ({how})"
    if facts.multi_label:
        return "sigmoid", f"{facts.source}: a multi-label classifier: each class is scored on its own"
    if facts.decision_scores:  # a sigmoid of one would be no probability: nothing calibrated it
        return (
            "decision",
            f"{facts.source}: '{spec.name}' holds decision-function scores (the model has no probabilities), "
            "answered as they are",
        )
    if class_width(spec) == 1:
        return (
            "sigmoid",
            f"'{spec.name}' holds one score per item (one logit): sigmoid gives the second class's probability",
        )
    return "softmax", f"nothing marks '{spec.name}' as probabilities: read as logits"


def _why_output(output: str, facts: ModelFacts) -> str:
    if output == facts.scores_output:
        return f"{facts.source}: the model's class scores"
    return "the model's only floating-point output"


# --- from data: labels settle what the model does not say ---------------------------------------------------------


def task_from_labels(
    outputs: list[TensorSpec], labels: list[str], facts: ModelFacts
) -> tuple[PostprocessConfig, str] | None:
    """A config-less model's task when its labels settle it: class indices 0..C-1 against one float output scoring
    C > 1 classes (classification); non-integer numbers against one float output of one value (regression). None
    where they do not (e.g. 0/1 labels against one output could be either)."""
    floats = [spec for spec in outputs if spec.dtype in FLOATS]
    if len(floats) != 1 or not labels:
        return None
    spec, width = floats[0], class_width(floats[0])
    indices = [int(label) for label in labels if label.lstrip("-").isdigit()]
    if width is not None and width > 1 and len(indices) == len(labels) and 0 <= min(indices) <= max(indices) < width:
        why = f"the labels are class indices and output '{spec.name}' scores {width} classes"
        activation, how = _activation(spec, facts)
        return ClassificationConfig(kind="classification", output=spec.name, activation=activation), f"{why}; {how}"
    numbers = [_number_or_none(label) for label in labels]
    if width == 1 and None not in numbers and len(indices) < len(labels):
        why = f"the labels are numbers and output '{spec.name}' gives one value per item"
        return RegressionConfig(kind="regression", output=spec.name), why
    return None


def settle_activation(
    post: ClassificationConfig, why: str, outcomes: Sequence[Mapping[str, Any] | Exception]
) -> tuple[ClassificationConfig, str]:
    """Softmax inferred for an output nothing marks: if every row the model gave is already a distribution
    (non-negative, summing to 1), it is one, and a softmax over it would distort every score."""
    rows = [
        np.asarray(outcome["outputs"][post.output], dtype=np.float64).reshape(-1)
        for outcome in outcomes
        if isinstance(outcome, Mapping) and "outputs" in outcome
    ]
    if post.activation != "softmax" or not rows:
        return post, why
    values = np.stack(rows)
    if (values >= 0).all() and np.allclose(values.sum(axis=1), 1.0, atol=1e-4):
        settled = post.model_copy(update={"activation": "none"})
        return settled, why.replace("read as logits", "each row of the data sums to 1: already probabilities")
    return post, why


def _number_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# --- preprocessing and batching ------------------------------------------------------------------------------------


def _tabular(inputs: list[TensorSpec], facts: ModelFacts, inferred: Inferred) -> PreprocessConfig | None:
    """Named columns the model records: one [batch, features] input, or one [batch, 1] input per column."""
    names = facts.feature_names
    if not names:
        return None
    codes = facts.category_codes
    columns = [
        TabularColumn(
            name=name,
            codes=list(codes[name]) if name in codes else None,
            missing="model" if name in facts.missing_values else "refuse",
            impute=facts.imputed_text.get(name),
        )
        for name in names
    ]
    by_column = {spec.name for spec in inputs}
    if by_column == set(names) and all(spec.shape[1:] == (1,) for spec in inputs):
        inferred["preprocess"] = f"{facts.source}: {len(names)} named columns, one input each"
        return TabularConfig(kind="tabular", columns=columns)
    if len(inputs) == 1 and len(inputs[0].shape) == 2 and inputs[0].shape[1] == len(names):
        inferred["preprocess"] = f"{facts.source}: the model's {len(names)} feature names, in its input order"
        datatype = inputs[0].dtype.name if inputs[0].dtype in FLOATS else "FP32"
        return TabularConfig(kind="tabular", input=inputs[0].name, datatype=datatype, columns=columns)
    return None


def _tokenized(inputs: list[TensorSpec], facts: ModelFacts, inferred: Inferred) -> TextConfig | None:
    """Texts tokenized by the model's own tokenizer, when every input of the model is one a tokenizer gives."""
    names = [spec.name for spec in inputs]
    if facts.tokenizer is None or "input_ids" not in names or not set(names) <= set(_TOKENIZER_OUTPUTS):
        return None
    inferred["preprocess"] = f"{facts.source}: texts, tokenized by the folder's {facts.tokenizer.name} into {names}"
    fields: dict[TokenizerOutput, str] = {name: name for name in _TOKENIZER_OUTPUTS if name in names}
    return _text(TextConfig(kind="text", tokenizer=str(facts.tokenizer), inputs=fields), facts, inferred)


def _image(facts: ModelFacts, inferred: Inferred) -> ImageConfig | None:
    """Images prepared as the model's own image processor prepares them (a Hugging Face preprocessor_config.json)."""
    if facts.image is None:
        return None
    inferred["preprocess"] = "the folder's preprocessor_config.json: images prepared as its image processor does"
    return facts.image


def _text(pre: TextConfig, facts: ModelFacts, inferred: Inferred) -> TextConfig:
    """Texts truncated where the model's own tooling truncates them (sentence-transformers), else where its
    positions end, when the config does not say where (its default may be more than they hold: a longer text would
    fail in the model, or be read past its positions)."""
    if "max_length" in pre.model_fields_set:
        return pre
    if facts.reads_tokens is not None and facts.reads_tokens <= (facts.max_tokens or facts.reads_tokens):
        reads = f"sentence-transformers reads {facts.reads_tokens} tokens of a text"
        inferred["preprocess.max_length"] = f"sentence_bert_config.json: {reads}"
        return pre.model_copy(update={"max_length": facts.reads_tokens})
    if facts.max_tokens is None or facts.max_tokens >= pre.max_length:
        return pre
    inferred["preprocess.max_length"] = f"{facts.source}: the model's positions hold {facts.max_tokens} tokens"
    return pre.model_copy(update={"max_length": facts.max_tokens})


def _batching(inputs: list[TensorSpec], outputs: list[TensorSpec], facts: ModelFacts) -> str | None:
    """Why batching may be on, or None: every tensor has a dynamic first dimension, and (in an ONNX graph) the
    inputs' and outputs' first dimensions are one symbol, so the first axis is the batch."""
    tensors = [*inputs, *outputs]
    if not tensors or any(not spec.shape or spec.shape[0] != -1 for spec in tensors):
        return None
    if facts.batch_first is False:
        return None
    return "every input and output has a dynamic first dimension, the batch (as Triton's auto-complete)"


# --- the check at load ---------------------------------------------------------------------------------------------


def check(
    config: ModelConfig,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    facts: ModelFacts,
    model_dir: Path,
    source: str,
) -> None:
    """Refuse a config that does not fit its model: the first mismatch, as 'SOURCE: field 'F': problem; fix'."""
    by_output = {spec.name: spec for spec in outputs}
    by_input = {spec.name: spec for spec in inputs}
    for name in config.constants:
        if name not in by_input:
            _refuse(source, f"constants.{name}", f"the model has no input '{name}'; it has {list(by_input)}")
    post = config.postprocess
    if isinstance(post, ClassificationConfig):
        _check_classification(post, by_output, facts, model_dir, source)
    elif isinstance(post, RegressionConfig) and post.output is not None and post.output in by_output:
        _check_float(by_output[post.output], source)
    elif isinstance(post, EmbeddingConfig):
        _check_embedding(post, facts, source)
    pre = config.preprocess
    if pre is None and facts.preprocess_refused is not None:
        _refuse(
            source,
            "preprocess",
            facts.preprocess_refused,
            "declare preprocess as the model's own tooling prepares its inputs, in a config.yaml beside its version "
            "folder (MODEL/config.yaml, the model in MODEL/1/)",
        )
    if isinstance(pre, TabularConfig):
        _check_tabular(pre, [spec for spec in inputs if spec.name not in config.constants], source)
    elif isinstance(pre, ImageConfig):
        _check_image(pre, by_input, source)
    elif isinstance(pre, TextConfig) and facts.max_tokens is not None and pre.max_length > facts.max_tokens:
        _refuse(
            source,
            "preprocess.max_length",
            f"{pre.max_length} tokens, but the model's positions hold {facts.max_tokens} ({facts.source})",
            f"set max_length to {facts.max_tokens} at most, or leave it out",
        )


def _check_classification(
    post: ClassificationConfig, by_output: dict[str, TensorSpec], facts: ModelFacts, model_dir: Path, source: str
) -> None:
    if post.output is None:
        candidates = scores_candidates(list(by_output.values()), facts)
        _refuse(
            source,
            "postprocess.output",
            f"the model has {len(candidates)} outputs that could hold class scores {candidates}",
            "name the one with a score per class",
        )
    spec = by_output.get(post.output)
    if spec is None:
        _refuse(source, "postprocess.output", f"the model has no output '{post.output}'; it has {list(by_output)}")
    _check_float(spec, source)
    if not one_row_an_item(spec):
        _refuse(
            source,
            "postprocess.output",
            f"'{spec.name}' ({spec.dtype.name} {list(spec.shape)}) holds a row of scores per position, "
            "not one per item",
            "classify an output of [batch, classes], or use kind: raw",
        )
    width = class_width(spec)
    if width is None and facts.classes is not None and spec.name == facts.scores_output:
        width = len(facts.classes)  # e.g. ZipMap's maps: one entry per class the graph lists
    labels = load_labels(post.labels, model_dir)
    if labels is not None and width is not None and len(labels) != width and not (width == 1 and len(labels) <= 2):
        _refuse(
            source,
            "postprocess.labels",
            f"{len(labels)} labels, but output '{spec.name}' ({spec.dtype.name} {list(spec.shape)}) scores {width} "
            f"class{'es' if width != 1 else ''}",
            f"list {width} labels, in the model's class order" + (f" ({list(facts.classes)})" if facts.classes else ""),
        )
    already = facts.distributions.get(spec.name)
    if already is not None and post.activation in ("softmax", "sigmoid", "decision"):
        _refuse(
            source,
            "postprocess.activation",
            f"{post.activation} over '{spec.name}', which already holds probabilities ({facts.source}: "
            f"{'a converter output' if already == 'probabilities' else 'the output of a ' + already.title()}): "
            "it would distort every score",
            "remove the field (or set activation: none)",
        )
    if facts.multi_label and post.activation == "softmax":
        _refuse(
            source,
            "postprocess.activation",
            f"softmax over '{spec.name}', but the model is a multi-label classifier ({facts.source}): each class is "
            "scored on its own, and a softmax would make them compete",
            "remove the field (or set activation: sigmoid)",
        )


def _check_embedding(post: EmbeddingConfig, facts: ModelFacts, source: str) -> None:
    """An embedding pooled or normalized otherwise than the model's own modules do differs from what its users
    compare against (sentence-transformers' encode) in every value, with nothing to show it."""
    if facts.pooling is not None and facts.pooling not in _POOLINGS:
        _refuse(
            source,
            "postprocess.pooling",
            f"the model pools by {facts.pooling} ({_EMBEDDING_MODULES}), which forwardpass does not do",
            "export the encoder with its pooling to ONNX and serve that",
        )
    if facts.pooling is not None and post.pooling != facts.pooling:
        _refuse(
            source,
            "postprocess.pooling",
            f"{post.pooling}, but the model pools by {facts.pooling} ({_EMBEDDING_MODULES})",
            f"set pooling to {facts.pooling}, or leave it out",
        )
    if facts.normalized is not None and post.normalize != facts.normalized:
        does = "normalizes" if facts.normalized else "does not normalize"
        _refuse(
            source,
            "postprocess.normalize",
            f"{str(post.normalize).lower()}, but the model {does} its embeddings ({_EMBEDDING_MODULES})",
            f"set normalize to {str(facts.normalized).lower()}, or leave it out",
        )


def _check_float(spec: TensorSpec, source: str) -> None:
    if spec.dtype not in FLOATS:
        what = "the predicted class itself" if spec.dtype in (DataType.INT64, DataType.BYTES) else "not scores"
        _refuse(
            source,
            "postprocess.output",
            f"'{spec.name}' is {spec.dtype.name} {list(spec.shape)}, {what}",
            "name a floating-point output (a classifier's per-class scores or probabilities, a regressor's value)",
        )


def _check_tabular(pre: TabularConfig, inputs: list[TensorSpec], source: str) -> None:
    width = sum(len(column.categories) if column.categories else 1 for column in pre.columns)
    names = [column.name for column in pre.columns]
    if pre.input is None and {spec.name for spec in inputs} == set(names) and len(inputs) == len(names):
        return  # one input per column
    target = next((spec for spec in inputs if spec.name == pre.input), None) if pre.input else None
    if target is None:
        if pre.input is not None:
            _refuse(
                source, "preprocess.input", f"the model has no input '{pre.input}'; it has {[s.name for s in inputs]}"
            )
        if len(inputs) != 1:
            _refuse(
                source,
                "preprocess.input",
                f"the model takes {len(inputs)} inputs {[spec.name for spec in inputs]}",
                "name the one the columns fill",
            )
        target = inputs[0]
    features = target.shape[-1] if target.shape else None
    if features not in (None, -1) and features != width:
        _refuse(
            source,
            "preprocess.columns",
            f"{len(pre.columns)} columns make {width} features, but input '{target.name}' takes {features} "
            f"({target.dtype.name} {list(target.shape)})",
            f"list the model's {features} features in its input order",
        )


def _check_image(pre: ImageConfig, by_input: dict[str, TensorSpec], source: str) -> None:
    spec = by_input.get(pre.input) if pre.input else next(iter(by_input.values()), None)
    if spec is None:
        return
    made_dtype, taken_dtype = DataType.from_name(pre.datatype).numpy_dtype, spec.dtype.numpy_dtype
    # float pixels go to any float input (cast as requests' tensors are); to an integer one every image was refused
    if made_dtype is not None and taken_dtype is not None and made_dtype.kind == "f" and taken_dtype.kind != "f":
        _refuse(
            source,
            "preprocess.datatype",
            f"makes {pre.datatype} images, but input '{spec.name}' takes {spec.dtype.name} ({list(spec.shape)})",
            f"set datatype to {spec.dtype.name}",
        )
    if len(spec.shape) != 4:
        return
    channels = spec.shape[1] if pre.layout == "NCHW" else spec.shape[3]
    made = 1 if pre.color == "L" else 3
    if channels not in (-1, made):
        _refuse(
            source,
            "preprocess.color" if channels in (1, 3) else "preprocess.layout",
            f"makes {made}-channel {pre.layout} images, but input '{spec.name}' is {list(spec.shape)}",
            "set color (RGB or L) and layout (NCHW or NHWC) to what the model takes",
        )
    takes = tuple(spec.shape[2:4] if pre.layout == "NCHW" else spec.shape[1:3])
    sized = _fixed_size(pre)
    if sized is not None and -1 not in takes and sized[1] != takes:
        height, width = takes
        _refuse(
            source,
            f"preprocess.{sized[0]}",
            f"makes {sized[1][0]}x{sized[1][1]} images, but input '{spec.name}' takes {height}x{width} "
            f"({list(spec.shape)})",
            f"set {sized[0]} to [{height}, {width}]",
        )


def _fixed_size(pre: ImageConfig) -> tuple[str, tuple[int, int]] | None:
    """The field that sets the [height, width] every image comes out at, and that size; None where the config leaves
    it to each image (a shorter side, limits, sides rounded to a multiple, text lines)."""
    if pre.letterbox is not None:
        return "letterbox", pre.letterbox
    if pre.crop is not None:
        return "crop", (pre.crop, pre.crop) if isinstance(pre.crop, int) else pre.crop
    varying = (pre.min_side, pre.max_side, pre.multiple_of, pre.text_line)
    if isinstance(pre.resize, tuple) and all(field is None for field in varying):
        return "resize", pre.resize
    return None


def _refuse(source: str, field: str, problem: str, fix: str | None = None) -> NoReturn:
    raise ConfigError(f"{source}: field '{field}': {problem}" + (f"; fix: {fix}" if fix else ""))
