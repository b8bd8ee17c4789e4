"""Drift as Prometheus gauges, computed when /metrics is scraped: PSI, KS statistic and a 0/1 drift flag per
model version and feature, over the window of its recent inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from forwardpass.quality.drift import InputWindow

__all__ = ["DriftCollector", "Windows"]

Windows = Callable[[], dict[tuple[str, str], InputWindow]]  # (model, version) → its window of recent inputs

# Fewer recent values than this say nothing about drift: no series until the window holds them.
MIN_VALUES = 30


class DriftCollector(Collector):
    def __init__(self, windows: Windows) -> None:
        self._windows = windows

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version", "feature"]
        psi = GaugeMetricFamily(
            "forwardpass_drift_psi", "PSI of recent inputs against the training profile", labels=labels
        )
        ks = GaugeMetricFamily(
            "forwardpass_drift_ks_statistic", "Two-sample KS statistic against the profile", labels=labels
        )
        drifted = GaugeMetricFamily(
            "forwardpass_drift_detected", "1 when the feature drifted (PSI or KS)", labels=labels
        )
        for (model, version), window in sorted(self._windows().items()):
            if len(window) < MIN_VALUES:
                continue
            for entry in window.report():
                if entry.count < MIN_VALUES:
                    continue
                key = [model, version, entry.feature]
                psi.add_metric(key, entry.psi)
                ks.add_metric(key, entry.ks_statistic)
                drifted.add_metric(key, float(entry.drifted))
        yield from (psi, ks, drifted)
