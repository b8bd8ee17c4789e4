"""Summaries of measurements: latency percentiles and the ratio of two contenders timed in alternating rounds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LatencySummary", "paired_ratio"]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Per-call latency in milliseconds."""

    calls: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencySummary:
        if not seconds:
            raise ValueError("no latencies to summarize")
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(len(ms), float(ms.mean()), float(p50), float(p90), float(p99), float(ms.max()))

    def to_dict(self) -> dict[str, float | int]:
        return {
            "calls": self.calls,
            "mean": self.mean_ms,
            "p50": self.p50_ms,
            "p90": self.p90_ms,
            "p99": self.p99_ms,
            "max": self.max_ms,
        }


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median of round-by-round ratios: each pair ran back to back, so slow drifts of the machine cancel."""
    if not numerators or len(numerators) != len(denominators):
        raise ValueError("paired_ratio needs two equally long, non-empty sequences")
    return float(np.median(np.asarray(numerators, dtype=np.float64) / np.asarray(denominators, dtype=np.float64)))
