"""Postprocessing of one item's output row: label, probabilities, top-K, regression value, embedding, anomaly score
and flag, cluster and distance, top-N recommendations, raw tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.config import (
    AnomalyConfig,
    ClassificationConfig,
    ClusterConfig,
    EmbeddingConfig,
    RecommendationConfig,
    RegressionConfig,
)
from forwardpass.errors import ConfigError, InputError, NonFiniteError

__all__ = [
    "Classify",
    "Cluster",
    "DetectAnomaly",
    "Embed",
    "Prediction",
    "RawOutputs",
    "Recommend",
    "Regress",
    "class_scores",
    "load_labels",
]

Prediction = dict[str, Any]
Row = dict[str, np.ndarray]


def load_labels(labels: str | list[str] | None, model_dir: Path) -> list[str] | None:
    if labels is None or isinstance(labels, list):
        return labels
    path = model_dir / labels
    if not path.resolve().is_relative_to(model_dir.resolve()):
        raise ConfigError(f"postprocess.labels '{labels}' points outside the model folder {model_dir}")
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise ConfigError(f"postprocess.labels: cannot read {path} ({exc.strerror}); create it") from None


def _answered(values: np.ndarray, output: str) -> np.ndarray:
    """The model's output row as float64, refused where it holds NaN: a label, value, cluster or flag read from one
    would be answered as if it meant something (a missing value given as NaN to a model that cannot take one, a
    column's `missing: model` on a logistic regression, scores NaN; NaN is no JSON number either)."""
    numbers = values.astype(np.float64).reshape(-1)
    if np.isnan(numbers).any():
        raise NonFiniteError(
            f"the model answered NaN in '{output}' for this item: an input it cannot take (a missing value given to "
            "a model that does not handle one?)"
        )
    return numbers


def class_scores(scores: np.ndarray, activation: str | None, binary: bool) -> np.ndarray:
    """Scores [..., classes] as answered, per class: the activation applied over the last axis; one score of a binary
    classifier is the second class's, the first class's its complement (a probability) or its negative (a decision
    function: scikit-learn predicts the second class where it is above 0)."""
    if activation == "softmax":
        shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores = shifted / shifted.sum(axis=-1, keepdims=True)
    elif activation == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-scores))
    if scores.shape[-1] == 1 and binary:
        first = -scores if activation == "decision" else 1.0 - scores
        scores = np.concatenate([first, scores], axis=-1)
    return scores


class Classify:
    """{"label", "index", "score", "top_k": [{"label", "index", "score"}, ...]}."""

    def __init__(self, config: ClassificationConfig, output: str, labels: list[str] | None) -> None:
        self.output = output
        self.activation = config.activation
        self.labels = labels
        self.top_k = config.top_k
        self._binary = labels is None or len(labels) == 2  # one label names the single score's class alone

    def __call__(self, outputs: Row, inputs: Row, top_k: int | None = None) -> Prediction:
        scores = class_scores(_answered(outputs[self.output], self.output), self.activation, self._binary)
        k = min(top_k or self.top_k, scores.size)
        best = np.argsort(-scores, kind="stable")[:k]
        ranked = [{"label": self._label(int(i)), "index": int(i), "score": float(scores[i])} for i in best]
        return {**ranked[0], "top_k": ranked}

    def _label(self, index: int) -> str:
        return self.labels[index] if self.labels and index < len(self.labels) else str(index)


class Regress:
    """{"value": float} (or a list for multi-target models), target scaling undone."""

    def __init__(self, config: RegressionConfig, output: str) -> None:
        self.output = output
        self.target = config.target

    def __call__(self, outputs: Row, inputs: Row, top_k: int | None = None) -> Prediction:
        values = _answered(outputs[self.output], self.output)
        if self.target is not None and self.target.transform == "standard":
            values = values * self.target.std + self.target.mean
        elif self.target is not None:
            values = values * (self.target.max - self.target.min) + self.target.min
        return {"value": float(values[0]) if values.size == 1 else values.tolist()}


class Embed:
    """{"embedding": [floats]}: token vectors pooled (mean over the mask, or the first token), L2-normalized."""

    def __init__(self, config: EmbeddingConfig, output: str) -> None:
        self.output = output
        self.config = config

    def __call__(self, outputs: Row, inputs: Row, top_k: int | None = None) -> Prediction:
        vectors = outputs[self.output].astype(np.float32)
        if self.config.pooling == "mean":
            mask = inputs[self.config.mask].astype(np.float32)[: vectors.shape[0], None]
            vectors = (vectors * mask).sum(axis=0) / max(float(mask.sum()), 1e-9)
        elif self.config.pooling == "cls":
            vectors = vectors[0]
        if self.config.normalize:
            vectors = vectors / max(float(np.linalg.norm(vectors)), 1e-12)
        return {"embedding": vectors.tolist()}


class RawOutputs:
    """{"outputs": {name: nested lists}} for models with no declared postprocessing."""

    def __call__(self, outputs: Row, inputs: Row, top_k: int | None = None) -> Prediction:
        return {"outputs": {name: value.tolist() for name, value in outputs.items()}}


class DetectAnomaly:
    """{"anomaly_score": float, "anomaly": bool}: anomalous strictly beyond the threshold, normal at it."""

    def __init__(self, config: AnomalyConfig, output: str) -> None:
        self.output = output
        self.threshold = config.threshold
        self.above = config.anomalous == "above"

    def __call__(self, outputs: Row, inputs: Row, top_k: int | None = None) -> Prediction:
        score = float(_answered(outputs[self.output], self.output)[0])
        flagged = score > self.threshold if self.above else score < self.threshold
        return {"anomaly_score": score, "anomaly": flagged}


class Cluster:
    """{"cluster": index, "label": name, "distance": to its centre}: the nearest centre (the first on a tie)."""

    def __init__(self, config: ClusterConfig, output: str, labels: list[str] | None) -> None:
        self.output = output
        self.labels = labels

    def __call__(self, outputs: Row, inputs: Row, top_k: int | None = None) -> Prediction:
        distances = _answered(outputs[self.output], self.output)
        nearest = int(np.argmin(distances))
        label = self.labels[nearest] if self.labels and nearest < len(self.labels) else str(nearest)
        return {"cluster": nearest, "label": label, "distance": float(distances[nearest])}


class Recommend:
    """{"items": [{"item", "index", "score"}, ...]}: exactly `top_n` (or the request's `top_k`) of the items the
    `seen` input does not mark, best first; fewer unseen items than asked is the caller's error."""

    def __init__(self, config: RecommendationConfig, output: str, seen: str, items: list[str] | None) -> None:
        self.output = output
        self.seen = seen
        self.items = items
        self.top_n = config.top_n

    def __call__(self, outputs: Row, inputs: Row, top_k: int | None = None) -> Prediction:
        scores = outputs[self.output].astype(np.float64).reshape(-1)
        seen = inputs[self.seen].reshape(-1) > 0
        if seen.size != scores.size:
            raise ConfigError(
                f"recommendation: input '{self.seen}' marks {seen.size} items, the model scores {scores.size}"
            )
        wanted = top_k or self.top_n
        candidates = np.flatnonzero(~seen)
        if candidates.size < wanted:
            raise InputError(f"only {candidates.size} items are unseen, {wanted} were asked for; ask for fewer")
        best = candidates[np.argsort(-scores[candidates], kind="stable")[:wanted]]
        return {"items": [{"item": self._item(int(i)), "index": int(i), "score": float(scores[i])} for i in best]}

    def _item(self, index: int) -> str:
        return self.items[index] if self.items and index < len(self.items) else str(index)
