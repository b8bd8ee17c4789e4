"""Evaluation: raw labelled data through the model's own pipeline, scored against the labels.

Classification: top-K accuracy (the label is among the K best labels), per-class precision / recall / F1, the
confusion matrix and calibration (expected calibration error of the top-1 score). Regression: MAE, RMSE, R².
Embeddings: retrieval recall@K, where items that share a label are each other's matches.
With groups (a group-by column), the same figures per group and the largest gap between groups (fairlearn).
An item that cannot be read, preprocessed or run is counted and reported; it never stops the run.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from forwardpass.config import ClassificationConfig, EmbeddingConfig, RegressionConfig
from forwardpass.errors import ForwardpassError, InputError
from forwardpass.measure.datasets import Dataset, Example, ItemError
from forwardpass.measure.metrics import ClassificationMetrics, EmbeddingMetrics, Metric, RegressionMetrics
from forwardpass.model import Model
from forwardpass.pipeline import Prediction
from forwardpass.pipeline.complete import settle_activation, task_from_labels
from forwardpass.pipeline.outputs import Classify

__all__ = ["EvalReport", "evaluate", "label_set"]

Task = Literal["classification", "regression", "embedding"]
MAX_REPORTED_ERRORS = 20
_SAMPLED = 64  # items run to tell logits from probabilities when the labels settle a config-less model's task


@dataclass(slots=True)
class EvalReport:
    model: str
    data: str
    task: Task
    metrics: dict[str, Any]  # Metric.result()
    rows: list[tuple[str, float]]  # Metric.rows()
    n: int  # items scored
    errors: list[ItemError] = field(default_factory=list)  # items that failed: not scored
    seconds: float = 0.0
    version: int | None = None
    group_by: str | None = None

    @property
    def bad(self) -> int:
        return len(self.errors)

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": "eval",
            "model": self.model,
            "version": self.version,
            "data": self.data,
            "task": self.task,
            "group_by": self.group_by,
            "n": self.n,
            "bad": self.bad,
            **self.metrics,
            "errors": [{"item": e.source, "error": e.error} for e in self.errors[:MAX_REPORTED_ERRORS]],
            "seconds": self.seconds,
        }


def task_of(model: Model) -> Task:
    postprocess = model.config.postprocess
    if isinstance(postprocess, ClassificationConfig):
        return "classification"
    if isinstance(postprocess, RegressionConfig):
        return "regression"
    if isinstance(postprocess, EmbeddingConfig):
        return "embedding"
    if postprocess is None:
        raise InputError(
            f"model '{model.name}' declares no task and records none, and its outputs "
            f"{[f'{spec.name} {list(spec.shape)}' for spec in model.outputs]} do not say it with these labels; "
            f"run 'forwardpass init {model.entry.artefact} --data DATA --label-column COLUMN' to write a config "
            "(postprocess: kind classification or regression), review it, and eval again"
        )
    raise InputError(
        f"model '{model.name}' has postprocess kind '{postprocess.kind}'; eval scores classification, regression or "
        "embeddings"
    )


def label_set(model: Model) -> list[str] | None:
    """The labels a classifier can predict: its label names, else its class indices as text; None if unknown."""
    postprocess = model.pipeline.postprocess
    if not isinstance(postprocess, Classify):
        return None
    if postprocess.labels is not None:
        return list(postprocess.labels)
    output = next((spec for spec in model.outputs if spec.name == postprocess.output), None)
    width = output.shape[-1] if output is not None and output.shape else -1
    return [str(i) for i in range(width)] if width > 0 else None


def _check_labels(model: Model, dataset: Dataset) -> list[str] | None:
    known = label_set(model)
    if known is None:
        return None
    _respell_decimals(dataset, set(known))
    unknown = sorted({example.label for example in dataset.examples} - set(known))
    if unknown:
        shown = ", ".join(repr(label) for label in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise InputError(
            f"{len(unknown)} label(s) in '{dataset.path}' are not in model '{model.name}''s label set: {shown}"
            f" (it knows {', '.join(known[:5])}{' ...' if len(known) > 5 else ''})"
        )
    return known


def _respell_decimals(dataset: Dataset, known: set[str]) -> None:
    """Labels a CSV spells as decimals ('1.0': how pandas writes an int column with a gap) that the model knows as
    integers ('1') are respelled in `dataset`; only when every label it does not know then is one it knows."""
    unknown = {example.label for example in dataset.examples} - known
    respelled = {label: _integer(label) for label in unknown}
    if not unknown or not set(respelled.values()) <= known:
        return
    dataset.items = [
        replace(item, label=respelled[item.label]) if isinstance(item, Example) and item.label in respelled else item
        for item in dataset.items
    ]


def _integer(label: str) -> str:
    """'1.0' as '1'; any other label as it is."""
    try:
        number = float(label)
    except ValueError:
        return label
    return str(int(number)) if number.is_integer() else label


def evaluate(
    model: Model,
    dataset: Dataset,
    *,
    top_k: Sequence[int] = (1,),
    batch_size: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    positive_label: str | None = None,
) -> EvalReport:
    """Score `dataset` with `model`. `batch_size`: items per forward pass (at most the model's own batch size).
    `top_k` also gives the K of an embedding model's recall@K. `positive_label`: the class whose predicted rate
    is compared between groups (default: the second of a two-class model's labels)."""
    if model.config.postprocess is None:
        model = with_task_from_labels(model, dataset)
    task = task_of(model)
    metric: Metric
    if task == "classification":
        labels = _check_labels(model, dataset)
        if positive_label is None and labels is not None and len(labels) == 2:
            positive_label = labels[1]
        if positive_label is not None and labels is not None and positive_label not in labels:
            raise InputError(f"positive label {positive_label!r} is not one of the model's labels")
        decision = isinstance(model.config.postprocess, ClassificationConfig) and (
            model.config.postprocess.activation == "decision"
        )
        metric = ClassificationMetrics(top_k, labels, positive_label, probabilities=not decision)
    elif task == "regression":
        metric = RegressionMetrics()
    else:
        metric = EmbeddingMetrics(top_k)
    ranks = max(top_k) if task == "classification" else None
    if batch_size is not None and batch_size < 1:
        raise InputError("the batch size must be a positive integer")
    chunk = batch_size or model.batch_size
    report = EvalReport(model.name, str(dataset.path), task, {}, [], 0, version=model.version)
    report.group_by = dataset.group_by
    start = time.perf_counter()
    for first in range(0, len(dataset.items), chunk):
        items = dataset.items[first : first + chunk]
        examples = [item for item in items if isinstance(item, Example)]
        outcomes = iter(_predict(model, examples, ranks, dataset.group_by))
        for item in items:
            if isinstance(item, ItemError):
                report.errors.append(item)
                continue
            outcome = next(outcomes)
            error = outcome if isinstance(outcome, str) else _score(metric, outcome, item)
            if error is None:
                report.n += 1
            else:
                report.errors.append(ItemError(item.source, error))
        if on_progress:
            on_progress(len(items))
    report.seconds = time.perf_counter() - start
    if report.n == 0:
        # the most common error: the first may be one row's own (an empty label) while every other row failed alike
        reason, count = Counter(e.error for e in report.errors).most_common(1)[0] if report.errors else ("none", 0)
        raise InputError(f"no item of '{dataset.path}' could be scored ({report.bad} bad); {count} of them: {reason}")
    report.metrics = metric.result()
    report.rows = metric.rows()
    return report


def _features(model: Model, example: Example, group_by: str | None) -> object:
    """The example's raw input: a record keeps its group-by column only where the model takes it as a column."""
    raw = example.raw
    columns = model.columns
    if isinstance(raw, dict) and group_by in raw and columns is not None and group_by not in columns:
        return {name: value for name, value in raw.items() if name != group_by}
    return raw


def with_task_from_labels(model: Model, dataset: Dataset) -> Model:
    """A config-less model whose task the labels settle (class indices for a multi-column score output), as the
    same model with that postprocessing; else the model as it is (`task_of` then says what to declare)."""
    examples = dataset.examples[:_SAMPLED]
    raws = [_features(model, example, dataset.group_by) for example in examples]
    found = task_from_labels(model.outputs, [example.label for example in dataset.examples], model.facts)
    if found is None or not raws:
        return model
    postprocess, why = found
    if isinstance(postprocess, ClassificationConfig):
        postprocess, why = settle_activation(postprocess, why, model.predict_each(raws))
    return model.reconfigured("postprocess", postprocess, why)


def _score(metric: Metric, prediction: Prediction, example: Example) -> str | None:
    try:
        metric.add(prediction, example.label, example.group)
    except InputError as exc:
        return str(exc)
    return None


def _predict(
    model: Model, examples: Sequence[Example], top_k: int | None, group_by: str | None
) -> list[Prediction | str]:
    """A prediction, or the error message, per example; one bad item never fails the others."""
    outcomes = model.predict_each([_features(model, example, group_by) for example in examples], top_k=top_k)
    return [str(outcome) if isinstance(outcome, ForwardpassError) else outcome for outcome in outcomes]
