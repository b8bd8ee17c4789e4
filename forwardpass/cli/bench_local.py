"""`forwardpass bench MODEL`: the model timed in this process beside raw ONNX Runtime, per batch size, thread count
and precision; accuracy beside speed with --eval, and MLPerf LoadGen's scenarios with --mlperf."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forwardpass.cli.bench_mlperf import mlperf_in_process
from forwardpass.cli.common import open_model
from forwardpass.cli.reporting import int_list, progress, text_list
from forwardpass.errors import InputError
from forwardpass.measure import RawSession, RoundDone, SpeedPoint, bench, evaluate, open_dataset
from forwardpass.measure.datasets import Dataset
from forwardpass.measure.report import configuration
from forwardpass.measure.speed import check_batch_sizes
from forwardpass.measure.variants import DEFAULT_PRECISION, precision_of, variants
from forwardpass.model import Model

__all__ = ["LocalBench", "bench_local"]


@dataclass(frozen=True)
class LocalBench:
    """What to time: the command's options for a run in this process."""

    name: str
    sizes: list[int]
    thread_counts: list[int | None]
    duration: float
    warmup: float
    dataset: Dataset | None
    eval_data: Path | None
    scenarios: list[str]
    out: Path | None


@dataclass
class _Measured:
    """What the run has measured so far: complete rows only, so Ctrl-C at any moment keeps what finished."""

    results: list[dict[str, Any]] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    mlperf_runs: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def bench_local(
    name: str,
    batch_sizes: str,
    threads: str | None,
    precision: str | None,
    duration: float,
    warmup: float,
    eval_data: Path | None,
    label_column: str | None,
    scenarios: list[str],
    out: Path | None,
    repository: Path | None,
    version: int | None,
    machine: dict[str, object],
    trust_pickle: bool,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """(the report's data, each configuration's latencies in ms) of every precision, thread count and batch size."""
    sizes = int_list(batch_sizes, "--batch-size")
    thread_counts: list[int | None] = list(int_list(threads, "--threads")) if threads is not None else [None]
    if precision is not None and version is not None:
        raise InputError("--precision picks versions by their precision.json; do not give --version with it")
    chosen = variants(name, text_list(precision, "--precision"), repository) if precision else {"": version}
    dataset = open_dataset(eval_data, label_column) if eval_data is not None else None
    run = LocalBench(name, sizes, thread_counts, duration, warmup, dataset, eval_data, scenarios, out)
    measured = _Measured()
    interrupted = None
    try:
        for asked, chosen_version in chosen.items():
            for count in thread_counts:
                overrides: dict[str, Any] = {} if count is None else {"intra_op_threads": count}
                loaded = open_model(name, repository, chosen_version, trust_pickle=trust_pickle, **overrides)
                try:
                    _bench_variant(run, loaded, asked or _precision_label(loaded), count == thread_counts[0], measured)
                finally:
                    loaded.close()
    except KeyboardInterrupt:
        planned = len(chosen) * len(thread_counts) * len(sizes)
        interrupted = f"{len(measured.results)} of {planned} configurations"
    return _report(run, measured, machine, interrupted), measured.latencies


def _bench_variant(run: LocalBench, model: Model, label: str, first_threads: bool, measured: _Measured) -> None:
    """One loaded variant at one thread count: each batch size timed; accuracy and MLPerf once per precision."""
    points: list[SpeedPoint] = []

    def record(point: SpeedPoint) -> dict[str, Any]:
        row = {
            "precision": label,
            "version": model.version,
            "threads": model.engine.intra_op_threads,
            **point.to_dict(),
        }
        for engine, timing in (("forwardpass", point.ours), ("onnxruntime", point.raw)):
            measured.latencies[f"{engine} {configuration(row)}"] = [s * 1e3 for s in timing.latencies]
        points.append(point)
        measured.results.append(row)  # last: a row in `results` is complete, whenever Ctrl-C comes
        return row

    _time(model, run.sizes, run.duration, run.warmup, label, record)
    measured.settings = {"graph_optimization": model.engine.graph_optimization, "providers": model.session.providers}
    if first_threads:
        if run.dataset is not None:
            measured.accuracy[label] = _accuracy(model, run.dataset, points)
        if run.scenarios and run.out is not None:
            out = run.out / "mlperf" / label
            measured.mlperf_runs += mlperf_in_process(model, run.dataset, run.scenarios, run.duration, out)


def _report(
    run: LocalBench, measured: _Measured, machine: dict[str, object], interrupted: str | None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kind": "bench",
        "model": run.name,
        "settings": {
            "batch_sizes": run.sizes,
            "threads": [c for c in run.thread_counts if c is not None] or "config",
            "precisions": list(dict.fromkeys(r["precision"] for r in measured.results)),
            "duration": run.duration,
            "warmup": run.warmup,
            **measured.settings,
        },
        "machine": machine,
        "results": measured.results,
    }
    if measured.accuracy:
        first = next(iter(measured.accuracy.values()))
        data["accuracy"] = {
            "metric": first["metric"],
            "data": str(run.eval_data),
            "batch_size": max(run.sizes),
            "by_precision": measured.accuracy,
        }
    if measured.mlperf_runs:
        data["mlperf"] = measured.mlperf_runs
    if interrupted:
        data["interrupted"] = interrupted
    return data


def _precision_label(model: Model) -> str:
    return precision_of(model.entry.artefact.parent) if model.version is not None else DEFAULT_PRECISION


def _time(
    model: Model,
    sizes: list[int],
    duration: float,
    warmup: float,
    label: str,
    record: Callable[[SpeedPoint], dict[str, Any]],
) -> None:
    """Each batch size timed and `record`ed as soon as it is measured (so that Ctrl-C keeps the finished ones)."""
    check_batch_sizes(model, sizes)  # all of them before any is timed
    raw = RawSession(model)
    threads = model.engine.intra_op_threads or "default"
    with progress() as bar:
        for size in sizes:
            task = bar.add_task(f"{label} t{threads} batch {size}", total=2 * (warmup + duration))

            def show(done: RoundDone, task: Any = task, size: int = size) -> None:
                step = "warm-up" if done.phase == "warmup" else f"round {done.index + 1}/{done.rounds}"
                speed = f"{done.items_per_second:,.0f} items/s"
                description = f"{label} t{threads} batch {size} {done.name} {step}: {speed}"
                bar.update(task, advance=done.seconds, description=description)

            for point in bench(model, [size], seconds=duration, warmup_seconds=warmup, on_round=show, raw=raw):
                row = record(point)
                # one line per finished configuration, above the bar (and in logs, where no bar is drawn)
                ours, theirs = point.ours.throughput, point.raw.throughput
                bar.console.print(f"measured {configuration(row)}: {ours:,.0f} items/s (raw ORT {theirs:,.0f})")


def _accuracy(model: Model, dataset: Dataset, points: list[SpeedPoint]) -> dict[str, Any]:
    report = evaluate(model, dataset)
    metric, value = report.rows[0]
    fastest = max(points, key=lambda point: point.batch_size)
    return {
        "version": model.version,
        "metric": metric,
        "value": value,
        "throughput": fastest.ours.throughput,
        "n": report.n,
        "bad": report.bad,
    }
