"""Drift: one shifted feature is flagged, and only that one; PSI matches its formula on the stored bins; KS is
scipy's two-sample test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from forwardpass.quality import InputWindow, Profile, build_profile, drift_report
from forwardpass.quality.drift import psi
from forwardpass.quality.profile import bin_counts


@pytest.fixture(scope="module")
def training() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "height": rng.normal(170, 10, 5000),
        "weight": rng.lognormal(4.2, 0.2, 5000),
        "children": rng.integers(0, 4, 5000).astype(float),  # discrete: few distinct bin edges
        "score": rng.uniform(0, 1, 5000),
    }


def recent(seed: int, n: int = 800) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "height": rng.normal(170, 10, n),
        "weight": rng.lognormal(4.2, 0.2, n),
        "children": rng.integers(0, 4, n).astype(float),
        "score": rng.uniform(0, 1, n),
    }


def test_profile_bins_hold_the_training_fractions(training, tmp_path):
    profile = build_profile(training, bins=10, sample_size=300)
    profile.save(tmp_path / "profile.json")
    loaded = Profile.load(tmp_path / "profile.json")
    assert loaded == profile
    height = profile.features[0]
    assert len(height.edges) == 9 and sum(height.fractions) == pytest.approx(1.0)
    assert np.allclose(height.fractions, 0.1, atol=0.001)
    assert profile.features[2].edges == [0.0, 1.0, 2.0, 3.0]  # 4 distinct values: an edge at each, none between
    assert profile.sample_array().shape == (300, 4)


@pytest.mark.parametrize("shifted", ["height", "weight", "score"])
def test_only_the_shifted_feature_drifts(training, shifted):
    profile = build_profile(training)
    window = recent(seed=1)
    window[shifted] = window[shifted] + np.std(training[shifted]) * 0.8
    report = {entry.feature: entry for entry in drift_report(profile, window)}
    assert [name for name, entry in report.items() if entry.drifted] == [shifted]
    assert report[shifted].psi > 0.25
    steady = [entry for name, entry in report.items() if name != shifted]
    assert all(entry.psi < 0.05 and entry.ks_pvalue > 0.001 for entry in steady)


def test_no_drift_without_a_shift(training):
    assert not any(entry.drifted for entry in drift_report(build_profile(training), recent(seed=2)))


def test_psi_and_ks_follow_their_definitions(training):
    profile = build_profile(training)
    feature = profile.features[0]
    values = recent(seed=4)["height"] + 5
    counts = bin_counts(feature.edges, values)
    actual = counts / counts.sum()
    expected = np.asarray(feature.fractions)
    assert psi(expected, counts) == pytest.approx(float(np.sum((actual - expected) * np.log(actual / expected))))
    entry = drift_report(profile, {"height": values})[0]
    test = ks_2samp(profile.sample_array()[:, 0], values)
    assert entry.ks_statistic == pytest.approx(test.statistic) and entry.ks_pvalue == pytest.approx(test.pvalue)
    assert entry.count == len(values)


def test_window_keeps_the_last_records(training):
    window = InputWindow(build_profile(training), capacity=3)
    for height in (150, 160, 170, 180):
        window.add({"height": height, "weight": "n/a"})
    assert len(window) == 3
    values = window.recent()
    assert sorted(values["height"].tolist()) == [160, 170, 180]
    assert np.isnan(values["weight"]).all()
