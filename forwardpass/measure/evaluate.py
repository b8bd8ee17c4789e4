"""Evaluation: raw labelled data through the model's own pipeline, scored against the labels.

Classification: top-K accuracy (the label is among the K best labels). Regression: MAE, RMSE, R².
An item that cannot be read, preprocessed or run is counted and reported; it never stops the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from forwardpass.config import ClassificationConfig, RegressionConfig
from forwardpass.errors import ForwardpassError, InputError
from forwardpass.measure.datasets import Dataset, Example, ItemError
from forwardpass.model import Model
from forwardpass.pipeline import Prediction
from forwardpass.pipeline.outputs import Classify

__all__ = ["EvalReport", "Metric", "RegressionMetrics", "TopKAccuracy", "evaluate"]

Task = Literal["classification", "regression"]
MAX_REPORTED_ERRORS = 20


class Metric(Protocol):
    def add(self, prediction: Prediction, label: str) -> None:
        """Score one item; raise InputError (before changing any state) if the label or prediction is unusable."""
        ...

    def result(self) -> dict[str, Any]:
        """The figures as they appear in the JSON report."""
        ...

    def rows(self) -> list[tuple[str, float]]:
        """The figures as (name, value) rows for people."""
        ...


class TopKAccuracy:
    def __init__(self, ks: Sequence[int]) -> None:
        if not ks or min(ks) < 1:
            raise InputError("top-K values must be positive integers, e.g. 1,5")
        self.ks = sorted(set(ks))
        self.hits = dict.fromkeys(self.ks, 0)
        self.n = 0

    def add(self, prediction: Prediction, label: str) -> None:
        ranked = [entry["label"] for entry in prediction["top_k"]]
        rank = ranked.index(label) if label in ranked else len(ranked)
        for k in self.ks:
            self.hits[k] += rank < k
        self.n += 1

    def result(self) -> dict[str, Any]:
        return {"top_k_accuracy": {str(k): self.hits[k] / self.n if self.n else math.nan for k in self.ks}}

    def rows(self) -> list[tuple[str, float]]:
        return [(f"top-{k} accuracy", value) for k, value in self.result()["top_k_accuracy"].items()]


class RegressionMetrics:
    def __init__(self) -> None:
        self.predicted: list[float] = []
        self.actual: list[float] = []

    def add(self, prediction: Prediction, label: str) -> None:
        value = prediction["value"]
        if not isinstance(value, float):
            raise InputError(f"the model gives {len(value)} values per item; eval scores single-target regression")
        try:
            actual = float(label)
        except ValueError:
            raise InputError(f"label {label!r} is not a number") from None
        if not math.isfinite(actual):
            raise InputError(f"label {label!r} is not a finite number")
        self.predicted.append(value)
        self.actual.append(actual)

    def rows(self) -> list[tuple[str, float]]:
        return [(name.upper() if name != "r2" else "R²", value) for name, value in self.result().items()]

    def result(self) -> dict[str, Any]:
        n = len(self.actual)
        if not n:
            return {"mae": math.nan, "rmse": math.nan, "r2": math.nan}
        errors = [p - a for p, a in zip(self.predicted, self.actual, strict=True)]
        mean = sum(self.actual) / n
        total = sum((a - mean) ** 2 for a in self.actual)
        squared = sum(e * e for e in errors)
        return {
            "mae": sum(abs(e) for e in errors) / n,
            "rmse": math.sqrt(squared / n),
            "r2": 1.0 - squared / total if total > 0 else math.nan,
        }


@dataclass(slots=True)
class EvalReport:
    model: str
    data: str
    task: Task
    metrics: dict[str, Any]  # Metric.result()
    rows: list[tuple[str, float]]  # Metric.rows()
    n: int  # items scored
    errors: list[ItemError] = field(default_factory=list)  # items that failed: not scored
    unknown_labels: list[str] = field(default_factory=list)  # data labels the model cannot predict
    seconds: float = 0.0

    @property
    def bad(self) -> int:
        return len(self.errors)

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "data": self.data,
            "task": self.task,
            "n": self.n,
            "bad": self.bad,
            **self.metrics,
            "unknown_labels": self.unknown_labels,
            "errors": [{"item": e.source, "error": e.error} for e in self.errors[:MAX_REPORTED_ERRORS]],
            "seconds": self.seconds,
        }


def task_of(model: Model) -> Task:
    postprocess = model.config.postprocess
    if isinstance(postprocess, ClassificationConfig):
        return "classification"
    if isinstance(postprocess, RegressionConfig):
        return "regression"
    kind = getattr(postprocess, "kind", "none")
    raise InputError(f"model '{model.name}' has postprocess kind '{kind}'; eval scores classification or regression")


def evaluate(
    model: Model,
    dataset: Dataset,
    *,
    top_k: Sequence[int] = (1,),
    batch_size: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> EvalReport:
    """Score `dataset` with `model`. `batch_size`: items per forward pass (at most the model's own batch size)."""
    task = task_of(model)
    metric: Metric = TopKAccuracy(top_k) if task == "classification" else RegressionMetrics()
    ranks = max(top_k) if task == "classification" else None
    if batch_size is not None and batch_size < 1:
        raise InputError("the batch size must be a positive integer")
    chunk = batch_size or model.batch_size
    report = EvalReport(model.name, str(dataset.path), task, {}, [], 0)
    start = time.perf_counter()
    for first in range(0, len(dataset.items), chunk):
        items = dataset.items[first : first + chunk]
        outcomes = iter(_predict(model, [item for item in items if isinstance(item, Example)], ranks))
        for item in items:
            if isinstance(item, ItemError):
                report.errors.append(item)
                continue
            outcome = next(outcomes)
            error = outcome if isinstance(outcome, str) else _score(metric, outcome, item.label)
            if error is None:
                report.n += 1
            else:
                report.errors.append(ItemError(item.source, error))
        if on_progress:
            on_progress(len(items))
    report.seconds = time.perf_counter() - start
    report.metrics = metric.result()
    report.rows = metric.rows()
    report.unknown_labels = _unknown_labels(model, dataset) if task == "classification" else []
    return report


def _score(metric: Metric, prediction: Prediction, label: str) -> str | None:
    try:
        metric.add(prediction, label)
    except InputError as exc:
        return str(exc)
    return None


def _predict(model: Model, examples: Sequence[Example], top_k: int | None) -> list[Prediction | str]:
    """A prediction, or the error message, per example; one bad item never fails the others."""
    outcomes = model.predict_each([example.raw for example in examples], top_k=top_k)
    return [str(outcome) if isinstance(outcome, ForwardpassError) else outcome for outcome in outcomes]


def _unknown_labels(model: Model, dataset: Dataset) -> list[str]:
    postprocess = model.pipeline.postprocess
    known = postprocess.labels if isinstance(postprocess, Classify) else None
    if known is None:
        return []
    return sorted({example.label for example in dataset.examples} - set(known))
