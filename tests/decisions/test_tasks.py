"""Anomaly, cluster and recommendation models through forwardpass give the reference estimator's answers."""

from __future__ import annotations

import numpy as np
import pytest

import forwardpass
from forwardpass.errors import InputError


def test_anomaly_scores_and_flags_match_isolation_forest(tasks):
    forest, x = tasks.estimators["anomaly"], tasks.data["anomaly"]
    model = forwardpass.load("anomaly", repository=tasks.root)
    names = [f"f{i}" for i in range(x.shape[1])]
    predictions = model.predict([dict(zip(names, map(float, row), strict=True)) for row in x])
    scores = np.array([p["anomaly_score"] for p in predictions])
    np.testing.assert_allclose(scores, forest.decision_function(x), atol=1e-4)
    clear = np.abs(scores) > 1e-4  # a score within float error of the threshold may fall either way
    flags = np.array([p["anomaly"] for p in predictions])
    assert clear.sum() > len(x) * 0.9
    np.testing.assert_array_equal(flags[clear], forest.predict(x)[clear] == -1)
    assert flags.any() and not flags.all()


def test_anomaly_threshold_boundary_is_normal(tasks):
    from forwardpass.config import AnomalyConfig
    from forwardpass.pipeline.outputs import DetectAnomaly

    below = DetectAnomaly(AnomalyConfig(kind="anomaly", threshold=0.25, anomalous="below"), "s")
    above = DetectAnomaly(AnomalyConfig(kind="anomaly", threshold=0.25, anomalous="above"), "s")
    at = {"s": np.array([0.25])}
    assert not below(at, {})["anomaly"] and not above(at, {})["anomaly"]
    assert below({"s": np.array([np.nextafter(0.25, 0)])}, {})["anomaly"]
    assert above({"s": np.array([np.nextafter(0.25, 1)])}, {})["anomaly"]


def test_clusters_and_distances_match_kmeans(tasks):
    kmeans, x = tasks.estimators["cluster"], tasks.data["cluster"]
    model = forwardpass.load("cluster", repository=tasks.root)
    predictions = model.predict(list(x))
    np.testing.assert_array_equal([p["cluster"] for p in predictions], kmeans.predict(x))
    np.testing.assert_allclose([p["distance"] for p in predictions], kmeans.transform(x).min(axis=1), atol=1e-4)
    assert {p["label"] for p in predictions} == {"a", "b", "c"}


def test_recommendations_match_the_factor_model_and_skip_seen_items(tasks):
    factors, histories = tasks.estimators["recommend"], tasks.data["recommend"][:50]
    model = forwardpass.load("recommend", repository=tasks.root)
    items = [f"r{r}c{c}" for r in range(8) for c in range(8)]
    raws = [{"seen": [items[i] for i in np.flatnonzero(row)]} for row in histories]
    for history, raw, prediction in zip(histories, raws, model.predict(raws), strict=True):
        scores = history @ factors @ factors.T
        scores[history > 0] = -np.inf
        expected = np.argsort(-scores, kind="stable")[:5]
        got = [entry["index"] for entry in prediction["items"]]
        assert len(got) == 5
        assert not set(got) & set(np.flatnonzero(history))
        np.testing.assert_allclose([e["score"] for e in prediction["items"]], scores[expected], rtol=1e-4, atol=1e-5)
        assert set(got) == set(expected.tolist()) or np.isclose(scores[expected[-1]], scores[got[-1]], atol=1e-5)
        assert [entry["item"] for entry in prediction["items"]] == [items[i] for i in got]
        assert not {entry["item"] for entry in prediction["items"]} & set(raw["seen"])


@pytest.mark.parametrize("wanted", [1, 7, 60])
def test_recommendation_returns_exactly_n(tasks, wanted):
    model = forwardpass.load("recommend", repository=tasks.root)
    seen = [f"r0c{c}" for c in range(4)]  # 60 items left
    prediction = model.predict({"seen": seen}, top_k=wanted)
    assert len(prediction["items"]) == wanted
    assert len({entry["index"] for entry in prediction["items"]}) == wanted


def test_recommendation_refuses_more_than_the_unseen_items(tasks):
    model = forwardpass.load("recommend", repository=tasks.root)
    with pytest.raises(InputError, match="only 60 items are unseen, 61 were asked"):
        model.predict({"seen": [f"r0c{c}" for c in range(4)]}, top_k=61)
    with pytest.raises(InputError, match="unknown item 'r9c9'"):
        model.predict({"seen": ["r9c9"]})
