"""The one number an explanation explains, computed for many rows at once: a regression's value (target scaling
undone) or one class's probability."""

from __future__ import annotations

import numpy as np

from forwardpass.config import ClassificationConfig, RegressionConfig
from forwardpass.errors import ConfigError
from forwardpass.model import Model
from forwardpass.pipeline.outputs import class_scores

__all__ = ["input_dtype", "scalar_outputs", "target_of"]


def target_of(model: Model, prediction: dict[str, object]) -> tuple[int, str]:
    """(class index, what is explained): the predicted class's probability, or the regression value."""
    if isinstance(model.config.postprocess, ClassificationConfig):
        index = int(prediction["index"])  # type: ignore[call-overload]
        return index, f"P({prediction['label']})"
    if isinstance(model.config.postprocess, RegressionConfig):
        return 0, "value"
    raise ConfigError(f"model '{model.name}': explanations need a classification or regression postprocess")


def input_dtype(model: Model, input_name: str) -> np.dtype:
    """The numpy dtype the model takes for `input_name`: what perturbed copies of an item are built in."""
    dtype = next(spec.dtype.numpy_dtype for spec in model.inputs if spec.name == input_name)
    if dtype is None:
        raise ConfigError(f"model '{model.name}': input '{input_name}' is not numeric; it cannot be explained")
    return dtype


def scalar_outputs(model: Model, batch: np.ndarray, input_name: str, index: int, chunk: int = 4096) -> np.ndarray:
    """The explained number for each row of `batch` (the model's preprocessed input), in forward passes of `chunk`
    rows (one at a time when the model has no batch dimension)."""
    size = chunk if model.batchable else 1
    dtype = input_dtype(model, input_name)
    results = []
    for start in range(0, len(batch), size):
        part = batch[start : start + size].astype(dtype, copy=False)
        outputs = model.forward({input_name: part})
        results.append(_scalar(model, outputs, len(part), index))
    return np.concatenate(results)


def _scalar(model: Model, outputs: dict[str, np.ndarray], rows: int, index: int) -> np.ndarray:
    config = model.config.postprocess
    if isinstance(config, ClassificationConfig):
        name = config.output or model.outputs[0].name
        labels = config.labels if isinstance(config.labels, list) else None
        scores = outputs[name].astype(np.float64).reshape(rows, -1)
        return class_scores(scores, config.activation, labels is None or len(labels) == 2)[:, index]
    assert isinstance(config, RegressionConfig)
    name = config.output or model.outputs[0].name
    values = outputs[name].astype(np.float64).reshape(rows, -1)[:, index]
    target = config.target
    if target is not None and target.transform == "standard":
        return values * target.std + target.mean
    if target is not None:
        return values * (target.max - target.min) + target.min
    return values
