"""Postprocessing of one item's output row: label, probabilities, top-K, regression value, embedding, raw tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.config import ClassificationConfig, EmbeddingConfig, RegressionConfig
from forwardpass.errors import ConfigError

__all__ = ["Classify", "Embed", "Prediction", "RawOutputs", "Regress", "load_labels"]

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


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


class Classify:
    """{"label", "index", "score", "top_k": [{"label", "index", "score"}, ...]}."""

    def __init__(self, config: ClassificationConfig, output: str, labels: list[str] | None) -> None:
        self.output = output
        self.activation = config.activation
        self.labels = labels
        self.top_k = config.top_k

    def __call__(self, outputs: Row, inputs: Row, top_k: int | None = None) -> Prediction:
        scores = outputs[self.output].astype(np.float64).reshape(-1)
        if self.activation == "softmax":
            scores = _softmax(scores)
        elif self.activation == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-scores))
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
        values = outputs[self.output].astype(np.float64).reshape(-1)
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
