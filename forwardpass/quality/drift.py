"""Drift of recent inputs from the reference profile, per feature: PSI over the profile's bins and the two-sample
Kolmogorov-Smirnov test (scipy) against the profile's sample. A feature drifts when PSI >= `psi_limit` (0.25:
the usual "significant shift") or the KS p-value < `ks_alpha`."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from forwardpass.errors import MissingExtraError
from forwardpass.pipeline.records import PLAIN_NUMBERS, record_number
from forwardpass.quality.profile import Profile, bin_counts

__all__ = ["KS_ALPHA", "PSI_LIMIT", "FeatureDrift", "InputWindow", "drift_report", "psi"]

PSI_LIMIT = 0.25
KS_ALPHA = 0.001
_FLOOR = 1e-4  # an empty bin would make PSI infinite


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    feature: str
    count: int  # recent values seen (missing ones left out)
    psi: float
    ks_statistic: float
    ks_pvalue: float
    drifted: bool


def psi(expected_fractions: np.ndarray, actual_counts: np.ndarray) -> float:
    """Population stability index: sum over bins of (actual - expected) * ln(actual / expected)."""
    expected = np.maximum(np.asarray(expected_fractions, dtype=np.float64), _FLOOR)
    actual = np.maximum(actual_counts / max(int(actual_counts.sum()), 1), _FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_report(
    profile: Profile, recent: Mapping[str, np.ndarray], *, psi_limit: float = PSI_LIMIT, ks_alpha: float = KS_ALPHA
) -> list[FeatureDrift]:
    """One entry per profiled feature that `recent` holds values of ({feature: values}, NaN = missing)."""
    try:
        from scipy.stats import ks_2samp
    except ImportError:
        raise MissingExtraError("scipy", "drift") from None

    reference = profile.sample_array()
    report = []
    for column, feature in enumerate(profile.features):
        if feature.name not in recent:
            continue
        values = np.asarray(recent[feature.name], dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            report.append(FeatureDrift(feature.name, 0, math.nan, math.nan, math.nan, False))
            continue
        index = psi(np.asarray(feature.fractions), bin_counts(feature.edges, values))
        test = ks_2samp(reference[:, column], values)
        statistic, pvalue = float(test.statistic), float(test.pvalue)
        report.append(
            FeatureDrift(
                feature.name, int(values.size), index, statistic, pvalue, index >= psi_limit or pvalue < ks_alpha
            )
        )
    return report


class InputWindow:
    """The last `capacity` records' values of the profiled features (a ring buffer; NaN where a value is missing
    or not a number). Appends come from any thread."""

    def __init__(self, profile: Profile, capacity: int = 1000) -> None:
        self.profile = profile
        self.names = profile.names
        self._values = np.full((capacity, len(self.names)), np.nan)
        self._next = 0
        self._count = 0
        self._lock = threading.Lock()

    def add(self, record: Mapping[str, object]) -> None:
        values = [record.get(name) for name in self.names]
        row = values if set(map(type, values)) <= PLAIN_NUMBERS else [_number(value) for value in values]
        with self._lock:
            self._values[self._next] = row
            self._next = (self._next + 1) % len(self._values)
            self._count = min(self._count + 1, len(self._values))

    def recent(self) -> dict[str, np.ndarray]:
        with self._lock:
            values = self._values[: self._count].copy()
        return {name: values[:, i] for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return self._count

    def report(self) -> list[FeatureDrift]:
        return drift_report(self.profile, self.recent())


def _number(value: object) -> float:
    number = record_number(value)
    return math.nan if number is None else number
