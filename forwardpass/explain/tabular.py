"""SHAP attributions for tabular models (the `shap` package): one value per column, in the model's output units,
that sum to the prediction minus the base value (the mean prediction over the background).

The background is the model's reference profile sample (up to 100 training rows) or, without a profile, one row
of each column's baseline (its impute value, else its mean / minimum). With up to 10 columns shap computes exact
Shapley values; beyond, its permutation estimate (exact for additive models, and it always sums exactly). The
model is explained on its preprocessed features: a per-column affine scaling leaves Shapley values unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from forwardpass.config import TabularColumn, TabularConfig
from forwardpass.errors import ConfigError, MissingExtraError
from forwardpass.explain.outputs import scalar_outputs
from forwardpass.model import Model

__all__ = ["BACKGROUND_ROWS", "shap_attributions"]

BACKGROUND_ROWS = 100


def shap_attributions(model: Model, record: Mapping[str, Any], index: int) -> dict[str, Any]:
    config = model.config.preprocess
    if not isinstance(config, TabularConfig):
        raise ConfigError(f"model '{model.name}': SHAP explanations need a tabular model")
    if any(column.categories is not None or column.codes is not None for column in config.columns):
        raise ConfigError(f"model '{model.name}': SHAP explanations support numeric columns only, not categories")
    try:
        import shap
    except ImportError:
        raise MissingExtraError("shap", "explain") from None
    names = [column.name for column in config.columns]
    input_name = model.pipeline.preprocess.input_name  # type: ignore[attr-defined]
    background_raw = _background(model, config.columns)
    preprocess = model.pipeline.preprocess  # not model.preprocess: background rows are no recent inputs (drift)
    background = np.stack([preprocess(dict(zip(names, row, strict=True)))[input_name] for row in background_raw])
    features = preprocess(record)[input_name].astype(np.float64)

    def predict(rows: np.ndarray) -> np.ndarray:
        return scalar_outputs(model, rows, input_name, index)

    masker = shap.maskers.Independent(background.astype(np.float64), max_samples=BACKGROUND_ROWS)
    # seeded: the permutation explainer samples orderings, and the same input must get the same explanation
    explainer = shap.Explainer(predict, masker, algorithm="exact" if len(names) <= 10 else "permutation", seed=0)
    result = (
        explainer(features[None, :], silent=True)
        if len(names) <= 10
        else explainer(features[None, :], max_evals=2 * len(names) + 1, silent=True)
    )
    values = np.asarray(result.values, dtype=np.float64).reshape(-1)
    base = float(np.asarray(result.base_values, dtype=np.float64).reshape(-1)[0])
    baseline = np.asarray(background_raw, dtype=np.float64).mean(axis=0)
    return {
        "method": f"shap.{'exact' if len(names) <= 10 else 'permutation'}",
        "base_value": base,
        "attributions": {name: float(value) for name, value in zip(names, values, strict=True)},
        "baseline": {name: float(value) for name, value in zip(names, baseline, strict=True)},
    }


def _background(model: Model, columns: list[TabularColumn]) -> list[list[float]]:
    names = [column.name for column in columns]
    profile = model.profile
    if profile is not None and set(names) <= set(profile.names):
        positions = [profile.names.index(name) for name in names]
        sample = profile.sample_array()[:BACKGROUND_ROWS]
        rows: list[list[float]] = sample[:, positions].tolist()
        return rows
    return [[_baseline(column) for column in columns]]


def _baseline(column: TabularColumn) -> float:
    if isinstance(column.impute, int | float):
        return float(column.impute)
    if column.transform == "standard":
        return column.mean
    return column.min if column.transform == "minmax" else 0.0
