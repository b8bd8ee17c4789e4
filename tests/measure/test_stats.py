"""Latency summaries and paired ratios against numpy computed directly."""

from __future__ import annotations

import numpy as np
import pytest

from forwardpass.measure import LatencySummary, paired_ratio


def test_latency_summary_matches_numpy() -> None:
    seconds = list(np.random.default_rng(0).exponential(0.002, size=1001))
    summary = LatencySummary.of(seconds)
    ms = np.array(seconds) * 1000
    assert summary.calls == 1001
    assert summary.p50_ms == pytest.approx(np.median(ms))
    assert summary.p90_ms == pytest.approx(np.percentile(ms, 90))
    assert summary.p99_ms == pytest.approx(np.percentile(ms, 99))
    assert summary.max_ms == pytest.approx(ms.max())
    assert summary.mean_ms == pytest.approx(ms.mean())
    assert summary.p50_ms <= summary.p90_ms <= summary.p99_ms <= summary.max_ms
    assert set(summary.to_dict()) == {"calls", "mean", "p50", "p90", "p99", "max"}


def test_paired_ratio_is_the_median_of_round_ratios() -> None:
    # A slow drift (the machine got busier) hits both in each round; the median ratio stays 0.5.
    assert paired_ratio([50, 40, 10, 45], [100, 80, 20, 90]) == pytest.approx(0.5)
    assert paired_ratio([1, 2, 9], [1, 1, 1]) == 2


def test_empty_input_is_an_error() -> None:
    with pytest.raises(ValueError):
        LatencySummary.of([])
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])
