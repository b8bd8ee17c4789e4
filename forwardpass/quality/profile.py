"""The reference profile of a model's training data, stored beside the model at build time (`profile: profile.json`).

Per feature: bin edges at the training data's quantiles and the fraction of training values in each bin (for PSI),
and a sample of training rows (for the KS test, and as the background of SHAP explanations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from forwardpass.errors import ConfigError

__all__ = ["FeatureProfile", "Profile", "bin_counts", "build_profile"]

PROFILE_VERSION = 1


@dataclass(frozen=True, slots=True)
class FeatureProfile:
    name: str
    edges: list[float]  # inner bin edges: bins are (-inf, e0], (e0, e1], ..., (e_last, inf)
    fractions: list[float]  # training fraction per bin (len(edges) + 1)
    mean: float
    std: float


@dataclass(frozen=True, slots=True)
class Profile:
    features: list[FeatureProfile]
    sample: list[list[float]]  # training rows, one value per feature in `features` order
    rows: int  # how many training rows the profile describes

    @property
    def names(self) -> list[str]:
        return [feature.name for feature in self.features]

    def sample_array(self) -> np.ndarray:
        return np.asarray(self.sample, dtype=np.float64).reshape(len(self.sample), len(self.features))

    def save(self, path: Path) -> None:
        data = {"version": PROFILE_VERSION, **asdict(self)}
        path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))

    @classmethod
    def load(cls, path: Path) -> Profile:
        try:
            data: dict[str, Any] = orjson.loads(path.read_bytes())
            features = [FeatureProfile(**feature) for feature in data["features"]]
            return cls(features, data["sample"], int(data["rows"]))
        except OSError as exc:
            raise ConfigError(f"profile: cannot read {path} ({exc.strerror}); rebuild the model's profile") from None
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"profile: {path} is not a forwardpass profile ({exc})") from None


def bin_counts(edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    """How many values fall in each bin (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    positions = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    return np.bincount(positions, minlength=len(edges) + 1)


def build_profile(
    columns: Mapping[str, np.ndarray], *, bins: int = 10, sample_size: int = 500, seed: int = 0
) -> Profile:
    """The profile of training data given as {feature: values} (equal lengths, raw units as records hold them)."""
    names = list(columns)
    matrix = np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in names])
    features = []
    for name, values in zip(names, matrix.T, strict=True):
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = bin_counts(edges.tolist(), values)
        fractions = counts / counts.sum()
        features.append(
            FeatureProfile(name, edges.tolist(), fractions.tolist(), float(values.mean()), float(values.std()))
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(matrix), size=min(sample_size, len(matrix)), replace=False))
    return Profile(features, matrix[chosen].tolist(), len(matrix))
