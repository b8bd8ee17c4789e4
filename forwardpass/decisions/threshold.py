"""The cost-based choice of a decision threshold from an evaluation set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forwardpass.errors import InputError

__all__ = ["ThresholdChoice", "choose_threshold"]


@dataclass(frozen=True, slots=True)
class ThresholdChoice:
    threshold: float  # act when score >= threshold
    cost: float  # total cost on the evaluation set at that threshold
    false_positives: int
    false_negatives: int


def choose_threshold(
    scores: np.ndarray, positives: np.ndarray, *, false_positive_cost: float, false_negative_cost: float
) -> ThresholdChoice:
    """The threshold t (act when score >= t) with the least total cost on the evaluation set. Candidates are the
    observed scores plus +inf (never act); on a cost tie the highest threshold wins (fewest actions)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = np.asarray(positives, dtype=bool).reshape(-1)
    if scores.size == 0 or scores.size != positives.size:
        raise InputError(f"need as many labels as scores, and at least one: got {scores.size} and {positives.size}")
    if not np.isfinite(scores).all():  # a NaN is never acted on: it would count as a miss at every threshold
        raise InputError(f"scores must be finite numbers: {int((~np.isfinite(scores)).sum())} are not")
    if not (0 <= false_positive_cost < np.inf and 0 <= false_negative_cost < np.inf):  # NaN fails both
        raise InputError("costs must be finite numbers, not negative")
    candidates = np.append(np.unique(scores), np.inf)
    acted = scores[None, :] >= candidates[:, None]
    false_positives = (acted & ~positives).sum(axis=1)
    false_negatives = (~acted & positives).sum(axis=1)
    costs = false_positives * false_positive_cost + false_negatives * false_negative_cost
    best = int(np.flatnonzero(costs == costs.min())[-1])
    return ThresholdChoice(
        float(candidates[best]), float(costs[best]), int(false_positives[best]), int(false_negatives[best])
    )
