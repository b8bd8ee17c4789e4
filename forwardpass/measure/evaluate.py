"""Evaluation: raw labelled data through the model's own pipeline, scored against the labels.

Classification: top-K accuracy (the label is among the K best labels), per-class precision / recall / F1, the
confusion matrix and calibration (expected calibration error of the top-1 score). Regression: MAE, RMSE, R².
Embeddings: retrieval recall@K, where items that share a label are each other's matches.
With groups (a group-by column), the same figures per group and the largest gap between groups (fairlearn).
An item that cannot be read, preprocessed or run is counted and reported; it never stops the run.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol

import numpy as np

from forwardpass.config import ClassificationConfig, EmbeddingConfig, RegressionConfig
from forwardpass.errors import ForwardpassError, InputError, MissingExtraError
from forwardpass.measure.datasets import Dataset, Example, ItemError
from forwardpass.model import Model
from forwardpass.pipeline import Prediction
from forwardpass.pipeline.complete import settle_activation, task_from_labels
from forwardpass.pipeline.outputs import Classify

__all__ = [
    "CALIBRATION_BINS",
    "ClassificationMetrics",
    "EmbeddingMetrics",
    "EvalReport",
    "Metric",
    "RegressionMetrics",
    "TopKAccuracy",
    "evaluate",
    "label_set",
]

Task = Literal["classification", "regression", "embedding"]
MAX_REPORTED_ERRORS = 20
_SAMPLED = 64  # items run to tell logits from probabilities when the labels settle a config-less model's task
CALIBRATION_BINS = 10


class Metric(Protocol):
    def add(self, prediction: Prediction, label: str, group: str | None = None) -> None:
        """Score one item; raise InputError (before changing any state) if the label or prediction is unusable."""
        ...

    def result(self) -> dict[str, Any]:
        """The figures as they appear in the JSON report."""
        ...

    def rows(self) -> list[tuple[str, float]]:
        """The headline figures as (name, value) rows for people."""
        ...


def _sklearn_metrics() -> Any:
    try:
        import sklearn.metrics
    except ImportError:
        raise MissingExtraError("scikit-learn", "measure") from None
    return sklearn.metrics


def _group_frame(metrics: Mapping[str, Callable[..., float]], truth: Any, predicted: Any, groups: list[str]) -> Any:
    try:
        from fairlearn.metrics import MetricFrame
    except ImportError:
        raise MissingExtraError("fairlearn", "measure") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # R² of a one-item group is undefined: NaN, said once in the report
        return MetricFrame(metrics=metrics, y_true=truth, y_pred=predicted, sensitive_features=np.asarray(groups))


def _groups_result(frame: Any, counts: dict[str, int]) -> dict[str, Any]:
    """{"by_group": {group: {metric: value, "n": count}}, "gaps": {metric: {difference, lowest, highest}}}."""
    by_group = {
        str(group): {**{name: _number(value) for name, value in row.items()}, "n": counts[str(group)]}
        for group, row in frame.by_group.iterrows()
    }
    gaps = {}
    for name in frame.by_group.columns:
        column = frame.by_group[name].astype(float)
        if column.notna().sum() < 2:
            continue
        gaps[name] = {
            "difference": _number(frame.difference(method="between_groups")[name]),
            "lowest": str(column.idxmin()),
            "highest": str(column.idxmax()),
        }
    return {"by_group": by_group, "gaps": gaps}


def _number(value: Any) -> float | None:
    number = float(value)
    return None if np.isnan(number) else number


class TopKAccuracy:
    def __init__(self, ks: Sequence[int]) -> None:
        if not ks or min(ks) < 1:
            raise InputError("top-K values must be positive integers, e.g. 1,5")
        self.ks = sorted(set(ks))
        self.ranks: list[int] = []  # where the true label came in the model's ranking (len(top_k): not in it)

    def add(self, prediction: Prediction, label: str, group: str | None = None) -> None:
        ranked = [entry["label"] for entry in prediction["top_k"]]
        self.ranks.append(ranked.index(label) if label in ranked else len(ranked))

    def result(self) -> dict[str, Any]:
        return {"top_k_accuracy": {str(k): self.accuracy(k, self.ranks) for k in self.ks}}

    def rows(self) -> list[tuple[str, float]]:
        return [(f"top-{k} accuracy", value) for k, value in self.result()["top_k_accuracy"].items()]

    @staticmethod
    def accuracy(k: int, ranks: Sequence[int]) -> float:
        return float(np.mean(np.asarray(ranks) < k)) if len(ranks) else float("nan")


class ClassificationMetrics:
    """Top-K accuracy plus scikit-learn's per-class report, confusion matrix and calibration of the top-1 score."""

    def __init__(self, ks: Sequence[int], labels: list[str] | None, positive_label: str | None = None) -> None:
        self.top_k = TopKAccuracy(ks)
        self.labels = labels
        self.positive_label = positive_label
        self.truth: list[str] = []
        self.predicted: list[str] = []
        self.confidence: list[float] = []
        self.groups: list[str] = []

    def add(self, prediction: Prediction, label: str, group: str | None = None) -> None:
        self.top_k.add(prediction, label)
        self.truth.append(label)
        self.predicted.append(prediction["label"])
        self.confidence.append(float(prediction["score"]))
        if group is not None:
            self.groups.append(group)

    def rows(self) -> list[tuple[str, float]]:
        result = self.result()
        return [*self.top_k.rows(), ("macro F1", result["macro_f1"]), ("ECE", result["calibration"]["ece"])]

    def result(self) -> dict[str, Any]:
        metrics = _sklearn_metrics()
        labels = self._labels()
        precision, recall, f1, support = metrics.precision_recall_fscore_support(
            self.truth, self.predicted, labels=labels, zero_division=0
        )
        per_class = {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        }
        scored = bool(self.truth)
        macro_f1 = metrics.f1_score(self.truth, self.predicted, labels=labels, average="macro", zero_division=0)
        result: dict[str, Any] = {
            **self.top_k.result(),
            "accuracy": float(metrics.accuracy_score(self.truth, self.predicted)) if scored else float("nan"),
            "macro_f1": float(macro_f1) if scored else float("nan"),
            "per_class": per_class,
            "confusion_matrix": {
                "labels": labels,
                "matrix": metrics.confusion_matrix(self.truth, self.predicted, labels=labels).tolist()
                if self.truth
                else [],
            },
            "calibration": self._calibration(),
            "positive_label": self.positive_label,
        }
        if self.groups:
            result["groups"] = self._by_group()
        return result

    def _labels(self) -> list[str]:
        """The model's label set in its own order; labels outside it (from predictions) after, sorted."""
        known = list(self.labels or [])
        return known + sorted((set(self.truth) | set(self.predicted)) - set(known))

    def _calibration(self) -> dict[str, Any]:
        """Expected calibration error over equal-width bins of the top-1 score (only where scores are
        probabilities): sum over bins of (share of items) x |accuracy - mean score|."""
        confidence = np.asarray(self.confidence, dtype=np.float64)
        if not len(confidence) or confidence.min() < 0 or confidence.max() > 1:
            return {"ece": float("nan"), "bins": []}
        correct = np.asarray(self.truth) == np.asarray(self.predicted)
        edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
        index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, CALIBRATION_BINS - 1)
        bins = []
        ece = 0.0
        for b in range(CALIBRATION_BINS):
            members = index == b
            if not members.any():
                continue
            accuracy, score = float(correct[members].mean()), float(confidence[members].mean())
            ece += members.mean() * abs(accuracy - score)
            bins.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "n": int(members.sum()),
                    "accuracy": accuracy,
                    "confidence": score,
                }
            )
        return {"ece": float(ece), "bins": bins}

    def _by_group(self) -> dict[str, Any]:
        metrics = _sklearn_metrics()
        ranks = np.asarray(self.top_k.ranks)
        scorers: dict[str, Callable[..., float]] = {
            "accuracy": metrics.accuracy_score,
            "macro_f1": partial(metrics.f1_score, labels=self._labels(), average="macro", zero_division=0),
        }
        if self.positive_label is not None:
            from fairlearn.metrics import selection_rate

            scorers["positive_rate"] = partial(selection_rate, pos_label=self.positive_label)
        frame = _group_frame(scorers, np.asarray(self.truth), np.asarray(self.predicted), self.groups)
        grouped = _groups_result(frame, _counts(self.groups))
        for k in self.top_k.ks:
            # top-K per group: the same frame over each item's rank of its true label
            top = _group_frame({"top": lambda r, _, k=k: TopKAccuracy.accuracy(k, r)}, ranks, ranks, self.groups)
            for group, value in top.by_group["top"].items():
                grouped["by_group"][str(group)][f"top_{k}_accuracy"] = _number(value)
        return grouped


class RegressionMetrics:
    def __init__(self) -> None:
        self.predicted: list[float] = []
        self.actual: list[float] = []
        self.groups: list[str] = []

    def add(self, prediction: Prediction, label: str, group: str | None = None) -> None:
        value = prediction["value"]
        if not isinstance(value, float):
            raise InputError(f"the model gives {len(value)} values per item; eval scores single-target regression")
        try:
            actual = float(label)
        except ValueError:
            raise InputError(f"label {label!r} is not a number") from None
        if not np.isfinite(actual):
            raise InputError(f"label {label!r} is not a finite number")
        self.predicted.append(value)
        self.actual.append(actual)
        if group is not None:
            self.groups.append(group)

    def rows(self) -> list[tuple[str, float]]:
        result = self.result()
        return [("MAE", result["mae"]), ("RMSE", result["rmse"]), ("R²", result["r2"])]

    def result(self) -> dict[str, Any]:
        if not self.actual:
            return {"mae": float("nan"), "rmse": float("nan"), "r2": float("nan")}
        result: dict[str, Any] = self._scores(self.actual, self.predicted)
        if self.groups:
            scorers = {name: partial(self._score, name) for name in ("mae", "rmse", "r2")}
            frame = _group_frame(scorers, np.asarray(self.actual), np.asarray(self.predicted), self.groups)
            result["groups"] = _groups_result(frame, _counts(self.groups))
        return result

    @classmethod
    def _score(cls, name: str, actual: Sequence[float], predicted: Sequence[float]) -> float:
        return cls._scores(actual, predicted)[name]

    @staticmethod
    def _scores(actual: Sequence[float], predicted: Sequence[float]) -> dict[str, float]:
        metrics = _sklearn_metrics()
        return {
            "mae": float(metrics.mean_absolute_error(actual, predicted)),
            "rmse": float(metrics.root_mean_squared_error(actual, predicted)),
            # R² of fewer than two items, or of a constant target, is undefined
            "r2": float(metrics.r2_score(actual, predicted)) if len(actual) > 1 and np.ptp(actual) > 0 else np.nan,
        }


class EmbeddingMetrics:
    """Retrieval recall@K: for each item whose label another item shares, is one of those among its K nearest
    neighbours (cosine similarity, itself excluded)?"""

    def __init__(self, ks: Sequence[int]) -> None:
        if not ks or min(ks) < 1:
            raise InputError("recall@K values must be positive integers, e.g. 1,5")
        self.ks = sorted(set(ks))
        self.vectors: list[list[float]] = []
        self.labels: list[str] = []

    def add(self, prediction: Prediction, label: str, group: str | None = None) -> None:
        self.vectors.append(prediction["embedding"])
        self.labels.append(label)

    def rows(self) -> list[tuple[str, float]]:
        return [(f"recall@{k}", value) for k, value in self.result()["recall_at_k"].items()]

    def result(self) -> dict[str, Any]:
        labels = np.asarray(self.labels)
        queries = [i for i in range(len(labels)) if (labels == labels[i]).sum() > 1]
        if not queries:
            return {"recall_at_k": {str(k): float("nan") for k in self.ks}, "queries": 0}
        _sklearn_metrics()  # one line if scikit-learn is missing
        from sklearn.neighbors import NearestNeighbors

        vectors = np.asarray(self.vectors, dtype=np.float64)
        neighbours = min(max(self.ks) + 1, len(vectors))
        index = NearestNeighbors(n_neighbors=neighbours, metric="cosine").fit(vectors)
        _, found = index.kneighbors(vectors[queries])
        recalls = {}
        for k in self.ks:
            hits = [
                any(labels[j] == labels[q] for j in [j for j in row if j != q][:k])
                for q, row in zip(queries, found, strict=True)
            ]
            recalls[str(k)] = float(np.mean(hits))
        return {"recall_at_k": recalls, "queries": len(queries)}


def _counts(groups: list[str]) -> dict[str, int]:
    values, counts = np.unique(np.asarray(groups), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


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
    unknown = sorted({example.label for example in dataset.examples} - set(known))
    if unknown:
        shown = ", ".join(repr(label) for label in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise InputError(
            f"{len(unknown)} label(s) in '{dataset.path}' are not in model '{model.name}''s label set: {shown}"
            f" (it knows {', '.join(known[:5])}{' ...' if len(known) > 5 else ''})"
        )
    return known


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
        metric = ClassificationMetrics(top_k, labels, positive_label)
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
        reason = report.errors[0].error if report.errors else "none"
        raise InputError(f"no item of '{dataset.path}' could be scored ({report.bad} bad); the first error: {reason}")
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
