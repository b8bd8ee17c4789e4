"""The request and stage duration histograms, counted in bulk, read exactly as prometheus_client's own Histogram."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from forwardpass.server.metrics import _LATENCY_BUCKETS, FOLD_EVERY, STAGES, Metrics, Timings


def _series(text: str, name: str) -> dict[str, float]:
    """Each sample of the metric `name` (its `_created` timestamps left out) by its name and labels."""
    lines = [line for line in text.splitlines() if line.startswith(name) and "_created" not in line]
    return {key: float(value) for key, value in (line.rsplit(" ", 1) for line in lines)}


def test_bulk_counted_durations_read_as_prometheus_histograms_across_folds_and_scrapes() -> None:
    rng = np.random.default_rng(0)
    metrics = Metrics(dict)
    registry = CollectorRegistry()
    total = Histogram(
        "forwardpass_request_duration_seconds", "", ["model", "version"], buckets=_LATENCY_BUCKETS, registry=registry
    )
    stages = Histogram(
        "forwardpass_stage_duration_seconds",
        "",
        ["model", "version", "stage"],
        buckets=_LATENCY_BUCKETS,
        registry=registry,
    )
    # values on the bucket bounds themselves (Prometheus counts value <= le), and past the last bound
    values = np.concatenate([np.array(_LATENCY_BUCKETS), [20.0], rng.exponential(0.003, FOLD_EVERY + 500)])
    for i, value in enumerate(values.tolist()):
        model = "a" if i % 3 else "b"
        timings = Timings(
            queue=value / 2, preprocess=value / 3, inference=value / 4, postprocess=value / 5, total=value
        )
        metrics.succeeded(model, "1", timings)
        total.labels(model, "1").observe(value)
        for stage, seconds in zip(STAGES, (value / 2, value / 3, value / 4, value / 5), strict=True):
            stages.labels(model, "1", stage).observe(seconds)
        if i == 100:  # a scrape in the middle folds what gathered so far
            metrics.exposition()
    ours, theirs = metrics.exposition().decode(), generate_latest(registry).decode()
    for name, series in (("forwardpass_request_duration_seconds", 1), ("forwardpass_stage_duration_seconds", 4)):
        expected = _series(theirs, name)
        assert len(expected) == 2 * series * (len(_LATENCY_BUCKETS) + 3)  # buckets, +Inf, count, sum
        got = _series(ours, name)
        assert got.keys() == expected.keys()
        for key, value in expected.items():  # sums may differ in their last digits: numpy adds in another order
            assert np.isclose(got[key], value, rtol=1e-9), (key, got[key], value)
