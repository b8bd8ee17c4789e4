"""What a model file says about itself beyond its tensors: the task, the classes in score order, the feature names
in input order, which outputs already are probability distributions, whether the first dimension is a batch.

Each format reads what its framework records (`Format.facts`); an ONNX graph is read here (`onnx_facts`). These
facts fill what a config leaves out and check what it declares (`forwardpass.pipeline.complete`): nothing is
guessed from names alone where the model says otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from forwardpass.config import ImageConfig

__all__ = ["ModelFacts", "distribution_made_by", "merge_facts", "onnx_facts", "softmax_per_item"]

Task = Literal["classification", "regression"]
_Node = TypeVar("_Node")

# Ops whose output is already a distribution over its last axis (softmax) or per element (sigmoid).
_DISTRIBUTION_OPS = {"Softmax": "softmax", "Sigmoid": "sigmoid"}
# Ops that pass a tensor on unchanged in value: the op before them decides.
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}
_REGROUPING = {"Reshape", "Flatten"}  # of those, the ones that can lay a softmax's rows side by side
# ai.onnx.ml classifiers: (label output, scores output), scores post-transformed to probabilities by converters.
_ML_CLASSIFIERS = {"LinearClassifier", "TreeEnsembleClassifier", "SVMClassifier"}
# Pass-through ops looked back through before an output's value is called unknown (a cycle-proof bound).
_MAX_PASS_THROUGH = 32
# Symbols exporters give every dynamic dimension, each its own: they say nothing about which ones are the same axis.
_UNNAMED = ("unk__", "p2o.DynamicDimension", "DynamicDimension")
# Names converters give a classifier's probability output next to its label output (skl2onnx, onnxmltools).
PROBABILITY_NAMES = ("probabilities", "output_probability", "probability", "probs")


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """Everything optional: a format says what it knows. `source` names who said it, for the reasons shown."""

    source: str = ""
    task: Task | None = None
    classes: tuple[str, ...] | None = None  # class labels, in the order of the score columns
    scores_output: str | None = None  # the output holding one score per class
    label_output: str | None = None  # the output holding the predicted class itself
    feature_names: tuple[str, ...] | None = None  # the columns, in the model's input order
    imputed_text: dict[str, str] = field(default_factory=dict)  # text column → what the model's imputer fills in
    category_codes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # column → its categories in code order
    missing_values: frozenset[str] = frozenset()  # columns where the model itself takes a missing value (NaN)
    distributions: dict[str, str] = field(default_factory=dict)  # output → "softmax" | "sigmoid" | "probabilities"
    decision_scores: bool = False  # a classifier's scores are a decision function, not probabilities
    multi_label: bool = False  # each class is scored on its own (a sigmoid per class), not one class of them
    batch_first: bool | None = None  # None: the format's convention (batch first), unchecked
    max_tokens: int | None = None  # the most tokens a text model's positions hold
    reads_tokens: int | None = None  # the tokens its own tooling truncates a text to (fewer than max_tokens)
    pooling: str | None = None  # how an encoder's token vectors become one embedding ("mean", "cls", "max", ...)
    normalized: bool | None = None  # whether that embedding is scaled to unit length
    tokenizer: Path | None = None  # the tokenizer.json that makes a text model's inputs (a Hugging Face folder's)
    image: ImageConfig | None = None  # how the model's own image processor prepares an image (Hugging Face's)
    preprocess_refused: str | None = None  # why its own preprocessing cannot be reproduced: a config must declare it


def merge_facts(framework: ModelFacts, graph: ModelFacts | None) -> ModelFacts:
    """The framework's word on task, classes and features; the ONNX graph's on distributions and the batch axis."""
    if graph is None:
        return framework
    # The graph calls a classifier's scores probabilities by its node type alone; the framework knows (XGBoost's
    # multi:softmax gives margins, which onnxmltools writes into the same `probabilities` output).
    graph_distributions = {name: kind for name, kind in graph.distributions.items() if name != framework.scores_output}
    return replace(
        framework,
        source=framework.source or graph.source,
        task=framework.task or graph.task,
        classes=framework.classes or graph.classes,
        scores_output=framework.scores_output or graph.scores_output,
        label_output=framework.label_output or graph.label_output,
        feature_names=framework.feature_names or graph.feature_names,
        distributions={**graph_distributions, **framework.distributions},
        batch_first=graph.batch_first,
    )


def onnx_facts(path: Path) -> ModelFacts:
    """Facts read from an ONNX graph (weights not loaded): classifier nodes and their class labels, ZipMap, a final
    Softmax/Sigmoid, `metadata_props` labels, and whether inputs and outputs share a symbolic first dimension."""
    from google.protobuf.message import DecodeError

    from forwardpass.formats.onnx_graph import ModelProto  # not the onnx package: ~1 s of start-up for ml_dtypes

    try:
        model: Any = ModelProto.FromString(path.read_bytes())  # external weights stay unread, as they should
    except (OSError, DecodeError):  # unreadable files are ONNX Runtime's to report, with its own message
        return ModelFacts(source="ONNX graph")
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    outputs = [value.name for value in graph.output]
    facts: dict[str, Any] = {"source": "ONNX graph", "distributions": {}}
    ranks = _ranks(graph)
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    for name in outputs:
        kind = _distribution_of(name, producers, ranks, opset)
        if kind is not None:
            facts["distributions"][name] = kind
    classifier = next((node for node in graph.node if node.op_type in _ML_CLASSIFIERS), None)
    zipmap = next((node for node in graph.node if node.op_type == "ZipMap"), None)
    labelled = zipmap or classifier
    if labelled is not None:
        facts["task"] = "classification"
        facts["classes"] = _class_labels(labelled)
        label, scores = _label_and_scores(outputs, graph)
        facts["label_output"], facts["scores_output"] = label, scores
        if scores is not None:
            facts["distributions"].setdefault(scores, "probabilities")
    elif any(node.op_type in ("LinearRegressor", "TreeEnsembleRegressor", "SVMRegressor") for node in graph.node):
        facts["task"] = "regression"
    declared = _metadata_labels(model)
    if declared is not None:
        facts["classes"] = declared
    facts["batch_first"] = _shares_first_dim(graph)
    facts["feature_names"] = _column_inputs(model)
    return ModelFacts(**facts)


def _column_inputs(model: Any) -> tuple[str, ...] | None:
    """The inputs' names, when an ONNX-ML graph takes one [batch, 1] input per column of a record (as skl2onnx
    converts a pipeline of mixed-type columns): its records' fields. None for any other graph."""
    if not any(entry.domain == "ai.onnx.ml" for entry in model.opset_import):
        return None
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    for value in inputs:
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        if len(dims) != 2 or dims[1].dim_value != 1:
            return None
    return tuple(value.name for value in inputs) if len(inputs) > 1 else None


def _distribution_of(name: str, producers: dict[str, Any], ranks: dict[str, int], opset: int) -> str | None:
    def step(node: Any) -> tuple[str, Any]:
        return node.op_type, producers.get(node.input[0]) if node.input else None

    def per_item(node: Any, regrouped: bool) -> bool:
        axis = next((attribute.i for attribute in node.attribute if attribute.name == "axis"), -1 if opset >= 13 else 1)
        return softmax_per_item(axis, ranks.get(node.input[0]), regrouped)

    return distribution_made_by(producers.get(name), step, _DISTRIBUTION_OPS, _PASS_THROUGH, per_item, _REGROUPING)


def softmax_per_item(axis: int | None, rank: int | None, regrouped: bool) -> bool:
    """Whether a softmax over `axis` of a tensor of `rank` (None: unknown) makes one distribution an item, read as
    its classes: not over the batch axis (each row then depends on the others), and, where a reshape follows it
    (`regrouped`), over a [batch, classes] tensor: over the last of more axes it makes one distribution per
    position, which the reshape lays side by side ([N, 3, 4] became [N, 12]: three heads answered as 12 classes)."""
    if axis is None or axis == 0 or (rank is not None and axis == -rank):
        return False
    return not regrouped or rank == 2


def _ranks(graph: Any) -> dict[str, int]:
    """The rank of each tensor whose shape the graph records (its inputs, outputs and value_info)."""
    values = [*graph.input, *graph.output, *graph.value_info]
    return {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in values
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape")
    }


def distribution_made_by(
    node: _Node | None,
    step: Callable[[_Node], tuple[str, _Node | None]],
    distribution_ops: Mapping[str, str],
    pass_through: Collection[str],
    per_item: Callable[[_Node, bool], bool] | None = None,
    regrouping: Collection[str] = (),
) -> str | None:
    """ "softmax" or "sigmoid" when the op that made an output's value is one (`distribution_ops`: a framework's op
    name → kind), looking back through ops that pass a value on unchanged (`pass_through`); else None. `step(node)`
    gives a node's op name and the node its first input comes from (None where there is none). A softmax counts
    only where `per_item(node, regrouped)` says it makes one distribution an item (see `softmax_per_item`;
    `regrouped`: one of the `regrouping` pass-through ops, a reshape, lies after it). Every framework names its ops
    its own way; the walk is the same."""
    regrouped = False
    for _ in range(_MAX_PASS_THROUGH):
        if node is None:
            return None
        op, previous = step(node)
        if op in distribution_ops:
            kind = distribution_ops[op]
            if kind == "softmax" and per_item is not None and not per_item(node, regrouped):
                return None
            return kind
        if op not in pass_through:
            return None
        regrouped = regrouped or op in regrouping
        node = previous
    return None


def _class_labels(node: Any) -> tuple[str, ...] | None:
    for attribute in node.attribute:
        # TreeEnsembleClassifier and ZipMap name their integer classes classlabels_int64s, the others classlabels_ints
        if attribute.name in ("classlabels_int64s", "classlabels_ints") and attribute.ints:
            return tuple(str(value) for value in attribute.ints)
        if attribute.name == "classlabels_strings" and attribute.strings:
            return tuple(value.decode() for value in attribute.strings)
    return None


def _label_and_scores(outputs: list[str], graph: Any) -> tuple[str | None, str | None]:
    """The converters' two outputs: a 1-D label tensor and the per-class scores (a tensor, or ZipMap's maps). No
    scores where several other outputs hold them between them (skl2onnx's zipmap='columns': one output per class)."""
    types = {value.name: value.type for value in graph.output}
    label = next((name for name in outputs if types[name].HasField("tensor_type") and _rank(types[name]) == 1), None)
    others = [name for name in outputs if name != label]
    scores = next((name for name in others if name.lower() in PROBABILITY_NAMES), None)
    if scores is None and len(others) == 1:
        scores = others[0]
    return label, scores


def _rank(value_type: Any) -> int:
    return len(value_type.tensor_type.shape.dim) if value_type.tensor_type.HasField("shape") else -1


def _metadata_labels(model: Any) -> tuple[str, ...] | None:
    """Class labels an exporter left in `metadata_props` as a JSON list (keys "labels" or "classes")."""
    for prop in model.metadata_props:
        if prop.key in ("labels", "classes"):
            try:
                labels = json.loads(prop.value)
            except ValueError:
                continue
            if isinstance(labels, list) and labels:
                return tuple(str(label) for label in labels)
    return None


def _classifier_labels(graph: Any) -> set[str]:
    """The graph's outputs that are an ONNX-ML classifier's label, as it made it or Identity/Cast passed it on."""
    producers = {out: node for node in graph.node for out in node.output}
    found = set()
    for value in graph.output:
        name = value.name
        for _ in range(_MAX_PASS_THROUGH):
            node = producers.get(name)
            if node is None or node.op_type not in ("Identity", "Cast"):
                break
            name = node.input[0]
        node = producers.get(name)
        if node is not None and node.op_type in _ML_CLASSIFIERS and node.output[0] == name:
            found.add(value.name)
    return found


def _shares_first_dim(graph: Any) -> bool | None:
    """True when every input and output has the same symbolic first dimension (a batch axis); False when one has a
    fixed or another first dimension; None when the graph names none (batch-first is then unchecked)."""
    initializers = {init.name for init in graph.initializer}
    labels = _classifier_labels(graph)
    firsts = []
    for value in [*[v for v in graph.input if v.name not in initializers], *graph.output]:
        if not value.type.HasField("tensor_type"):
            continue  # ZipMap's sequence of maps: one map per row
        dims = value.type.tensor_type.shape.dim
        if not dims:
            return False
        if value.name in labels and len(dims) == 1 and dims[0].dim_value == 1:
            continue  # onnxmltools declares a classifier's label [1] whatever the batch
        first = dims[0]
        firsts.append(
            first.dim_param if first.HasField("dim_param") else first.dim_value if first.dim_value > 0 else ""
        )
    if not firsts:
        return None
    if any(isinstance(first, int) for first in firsts):
        return False
    named = {first for first in firsts if first and not first.startswith(_UNNAMED)}
    return len(named) <= 1
