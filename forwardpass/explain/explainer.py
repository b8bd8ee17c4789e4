"""`explain(model, raw, prediction)`: what the CLI's --explain and the server's `explain: true` return."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forwardpass.config import ImageConfig, TabularConfig
from forwardpass.errors import ConfigError, InputError
from forwardpass.explain.image import occlusion_saliency
from forwardpass.explain.outputs import target_of
from forwardpass.explain.tabular import shap_attributions
from forwardpass.model import Model
from forwardpass.pipeline import Prediction

__all__ = ["explain"]


def explain(model: Model, raw: object, prediction: Prediction) -> dict[str, Any]:
    """Attributions of one item's prediction, with what they explain (`output`: "value" or "P(label)")."""
    index, output = target_of(model, prediction)
    config = model.config.preprocess
    if isinstance(config, TabularConfig):
        if not isinstance(raw, Mapping):
            raise InputError(f"expected a record to explain, got {type(raw).__name__}")
        return {"output": output, **shap_attributions(model, raw, index)}
    if isinstance(config, ImageConfig):
        return {"output": output, **occlusion_saliency(model, model.preprocess(raw), index)}
    raise ConfigError(f"model '{model.name}': explanations need a tabular or image model")
