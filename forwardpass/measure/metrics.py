"""The figures an evaluation computes, one class per task, each fed one scored item at a time: top-K accuracy,
per-class precision / recall / F1 with the confusion matrix and calibration, regression errors, retrieval recall@K;
per group where a group-by column is given (fairlearn)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol

import numpy as np

from forwardpass.errors import InputError, MissingExtraError
from forwardpass.pipeline import Prediction

__all__ = [
    "CALIBRATION_BINS",
    "ClassificationMetrics",
    "EmbeddingMetrics",
    "Metric",
    "RegressionMetrics",
    "TopKAccuracy",
]

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

    def __init__(
        self,
        ks: Sequence[int],
        labels: list[str] | None,
        positive_label: str | None = None,
        *,
        probabilities: bool = True,
    ) -> None:
        """`probabilities`: whether the scores are the model's probabilities; decision scores get no calibration."""
        self.top_k = TopKAccuracy(ks)
        self.labels = labels
        self.positive_label = positive_label
        self.probabilities = probabilities
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
        # over the classes in the data or the predictions (scikit-learn's default): a class with neither has no F1
        macro_f1 = metrics.f1_score(self.truth, self.predicted, average="macro", zero_division=0)
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
        if not self.probabilities or not len(confidence) or confidence.min() < 0 or confidence.max() > 1:
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
            "macro_f1": partial(metrics.f1_score, average="macro", zero_division=0),
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
