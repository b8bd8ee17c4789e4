"""What the server measures: Prometheus metrics for `/metrics` and Triton's per-model statistics for `/stats`.

Both are fed from the same three events: a request succeeded (with its time per stage), a request failed, a batch
ran. Prometheus children are cached per model version so the hot path does no label lookups. A request's five
durations (total and per stage) are appended to a list and counted into their histograms in bulk -- at a scrape, or
every FOLD_EVERY requests -- because five `Histogram.observe` calls cost ~15 µs a request, a tenth of the tiny
MLP's whole request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from forwardpass.errors import ForwardpassError

__all__ = ["CONTENT_TYPE", "STAGES", "Metrics", "Timings"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STAGES = ("queue", "preprocess", "inference", "postprocess")
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_GENERATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# Durations waiting to be counted into the histograms are folded in once this many have gathered (~1 ms of numpy).
FOLD_EVERY = 4096

QueueDepths = Callable[[], dict[tuple[str, str], int]]  # (model, version) → requests queued


@dataclass(slots=True)
class Timings:
    """Seconds one request spent in each stage; `total` from the data plane's first look to its answer."""

    queue: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    total: float = 0.0


@dataclass(slots=True)
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class _VersionStats:
    """Triton's statistics of one model version (the JSON form `tritonclient` and `perf_analyzer` read)."""

    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, _Duration] = field(default_factory=dict)

    def to_dict(self, name: str, version: str) -> dict[str, Any]:
        empty = {"count": 0, "ns": 0}
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": self.compute_input.to_dict(),
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": self.compute_output.to_dict(),
                "cache_hit": empty,
                "cache_miss": empty,
            },
            "batch_stats": [
                {"batch_size": size, "compute_input": empty, "compute_infer": infer.to_dict(), "compute_output": empty}
                for size, infer in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }


class _QueueDepthCollector(Collector):
    def __init__(self, depths: QueueDepths) -> None:
        self._depths = depths

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "forwardpass_queue_depth", "Requests waiting for a model instance", labels=["model", "version"]
        )
        for (model, version), depth in sorted(self._depths().items()):
            gauge.add_metric([model, version], depth)
        yield gauge


class _Children:
    """One model version's Prometheus series, looked up once."""

    __slots__ = ("batch_size", "requests")

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self.requests = metrics.requests.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)


class _Durations(Collector):
    """The request duration histogram and the per-stage one, counted in bulk: `add` appends one request's five
    durations (total, then STAGES); `fold` counts what gathered into the buckets. Appends come from the event
    loop, scrapes from a worker thread: one lock around both."""

    def __init__(self) -> None:
        self._bounds = np.array(_LATENCY_BUCKETS)
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], list[tuple[float, float, float, float, float]]] = {}
        # per (model, version): a row per duration (total, then STAGES), a column per bucket (+Inf last)
        self._counts: dict[tuple[str, str], np.ndarray] = {}
        self._sums: dict[tuple[str, str], np.ndarray] = {}
        self._gathered = 0

    def add(self, key: tuple[str, str], timings: Timings) -> None:
        durations = (timings.total, timings.queue, timings.preprocess, timings.inference, timings.postprocess)
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = []
            pending.append(durations)
            self._gathered += 1
            if self._gathered >= FOLD_EVERY:
                self._fold()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._fold()
            counts = {key: value.copy() for key, value in self._counts.items()}
            sums = {key: value.copy() for key, value in self._sums.items()}
        latency = HistogramMetricFamily(
            "forwardpass_request_duration_seconds",
            "Time from a decoded request to its answer",
            labels=["model", "version"],
        )
        stages = HistogramMetricFamily(
            "forwardpass_stage_duration_seconds",
            "Time per request in each stage: queue, preprocess, inference, postprocess",
            labels=["model", "version", "stage"],
        )
        bounds = [repr(float(bound)) for bound in _LATENCY_BUCKETS] + ["+Inf"]  # as prometheus_client writes them
        for (model, version), per_duration in sorted(counts.items()):
            cumulative = per_duration.cumsum(axis=1)
            total_sums = sums[(model, version)].tolist()
            latency.add_metric([model, version], list(zip(bounds, cumulative[0].tolist(), strict=True)), total_sums[0])
            for row, stage in enumerate(STAGES, start=1):
                buckets = list(zip(bounds, cumulative[row].tolist(), strict=True))
                stages.add_metric([model, version, stage], buckets, total_sums[row])
        yield latency
        yield stages

    def _fold(self) -> None:
        """With the lock held: count every pending duration into its buckets."""
        for key, pending in self._pending.items():
            if not pending:
                continue
            durations = np.array(pending).T  # a row per duration kind
            buckets = np.searchsorted(self._bounds, durations, side="left")  # Prometheus buckets hold value <= le
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = np.zeros((len(durations), len(self._bounds) + 1), dtype=np.int64)
                self._sums[key] = np.zeros(len(durations))
            for row, indexes in enumerate(buckets):
                counts[row] += np.bincount(indexes, minlength=counts.shape[1])
            self._sums[key] += durations.sum(axis=1)
            pending.clear()
        self._gathered = 0


class Metrics:
    def __init__(self, queue_depths: QueueDepths) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "forwardpass_requests", "Inference requests answered", ["model", "version"], registry=self.registry
        )
        self.failures = Counter(
            "forwardpass_request_failures",
            "Inference requests refused or failed, by HTTP status (model empty when unknown)",
            ["model", "code"],
            registry=self.registry,
        )
        self._durations = _Durations()
        self.registry.register(self._durations)
        self.batch_size = Histogram(
            "forwardpass_batch_size",
            "Rows per forward pass",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        # token generation (vLLM's figures under forwardpass names): a stream is one request, however many tokens
        self.generations = Counter(
            "forwardpass_generation_requests",
            "Generations finished, by why they stopped (stop, length)",
            ["model", "version", "finish_reason"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "forwardpass_prompt_tokens",
            "Prompt tokens of finished generations",
            ["model", "version"],
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "forwardpass_generated_tokens", "Tokens generated", ["model", "version"], registry=self.registry
        )
        self.time_to_first_token = Histogram(
            "forwardpass_time_to_first_token_seconds",
            "From a generation's submission (queue and prefill included) to its first token",
            ["model", "version"],
            buckets=_GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.generation_duration = Histogram(
            "forwardpass_generation_duration_seconds",
            "From a generation's submission to its last token",
            ["model", "version"],
            buckets=_GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_QueueDepthCollector(queue_depths))
        self._children: dict[tuple[str, str], _Children] = {}
        self._stats: dict[tuple[str, str], _VersionStats] = {}

    def succeeded(self, model: str, version: str, timings: Timings) -> None:
        children, stats = self._series(model, version)
        children.requests.inc()
        self._durations.add((model, version), timings)
        stats.success.add(timings.total)
        stats.queue.add(timings.queue)
        stats.compute_input.add(timings.preprocess)
        stats.compute_infer.add(timings.inference)
        stats.compute_output.add(timings.postprocess)
        stats.last_inference_ms = int(time.time() * 1000)

    def failed(self, model: str | None, version: str | None, error: ForwardpassError, seconds: float = 0.0) -> None:
        """`model` only when it is a served model: names from requests must not become label values."""
        self.failures.labels(model or "", str(error.http_status)).inc()
        if model is not None and version is not None:
            self._series(model, version)[1].fail.add(seconds)

    def generated(
        self,
        model: str,
        version: str,
        prompt_tokens: int,
        tokens: int,
        first_token_s: float,
        total_s: float,
        reason: str,
    ) -> None:
        """A generation that ran to its end (failures go to `failed`)."""
        self.generations.labels(model, version, reason).inc()
        self.prompt_tokens.labels(model, version).inc(prompt_tokens)
        self.generated_tokens.labels(model, version).inc(tokens)
        self.time_to_first_token.labels(model, version).observe(first_token_s)
        self.generation_duration.labels(model, version).observe(total_s)

    def batch(self, model: str, version: str, rows: int, run_s: float) -> None:
        children, stats = self._series(model, version)
        children.batch_size.observe(rows)
        stats.inference_count += rows
        stats.execution_count += 1
        stats.batches.setdefault(rows, _Duration()).add(run_s)

    def statistics(self, versions: list[tuple[str, str]]) -> dict[str, Any]:
        """Triton's `{"model_stats": [...]}` for these (model, version) pairs."""
        return {
            "model_stats": [
                self._stats.get((name, version), _VersionStats()).to_dict(name, version) for name, version in versions
            ]
        }

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _series(self, model: str, version: str) -> tuple[_Children, _VersionStats]:
        key = (model, version)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = _Children(self, model, version)
            self._stats[key] = _VersionStats()
        return children, self._stats[key]
