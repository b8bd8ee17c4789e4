"""PNG plots of measurements (matplotlib, headless Agg backend): each function draws one figure into one file.

matplotlib is imported on first use: `import forwardpass` stays light, and a missing install is one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import MissingExtraError

__all__ = [
    "accuracy_vs_throughput",
    "calibration_curve",
    "compare_bars",
    "confusion_matrix",
    "latency_distribution",
    "latency_vs_throughput",
    "per_class_bars",
    "throughput_vs_batch_size",
]

Series = Mapping[str, Sequence[tuple[float, float]]]  # one line per name: (x, y) points


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError("matplotlib", "measure") from None
    matplotlib.use("Agg", force=True)  # files only: never a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return path


def confusion_matrix(path: Path, labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str) -> Path:
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.int64)
    size = max(4.0, 0.45 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    ticks = range(len(labels))
    axes.set_xticks(ticks, labels, rotation=90 if len(labels) > 6 else 0)
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(labels) <= 20:
        threshold = counts.max() / 2 if counts.size else 0
        for (row, column), value in np.ndenumerate(counts):
            color = "white" if value > threshold else "black"
            axes.text(column, row, str(value), ha="center", va="center", color=color, fontsize=8)
    axes.set_title(title)
    return _save(figure, path)


def per_class_bars(path: Path, per_class: Mapping[str, Mapping[str, float]], title: str) -> Path:
    plt = _pyplot()
    labels = list(per_class)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.5 * len(labels) + 2), 4))
    positions = np.arange(len(labels))
    for offset, name in zip((-0.27, 0.0, 0.27), ("precision", "recall", "f1"), strict=True):
        axes.bar(positions + offset, [per_class[label][name] for label in labels], width=0.27, label=name)
    axes.set_xticks(positions, labels, rotation=90 if len(labels) > 8 else 0)
    axes.set_ylim(0, 1.05)
    axes.legend(loc="lower right")
    axes.set_title(title)
    return _save(figure, path)


def calibration_curve(path: Path, bins: Sequence[Mapping[str, float]], ece: float, title: str) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    label = f"model (ECE {ece:.3f})"
    axes.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=label)
    axes.set_xlabel("top-1 score (mean per bin)")
    axes.set_ylabel("accuracy in bin")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left")
    axes.set_title(title)
    return _save(figure, path)


def latency_distribution(path: Path, latencies_ms: Mapping[str, Sequence[float]], title: str) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    values = [np.asarray(v, dtype=np.float64) for v in latencies_ms.values() if len(v)]
    if values:
        low, high = min(v.min() for v in values), max(v.max() for v in values)
        edges = np.geomspace(max(low, 1e-3), max(high, low * 1.01, 1e-3 * 1.01), 50)
        for name, series in latencies_ms.items():
            axes.hist(series, bins=edges, histtype="step", label=name, linewidth=1.2)
        axes.set_xscale("log")
    axes.set_xlabel("latency per call (ms, log scale)")
    axes.set_ylabel("calls")
    axes.legend(fontsize=7)
    axes.set_title(title)
    return _save(figure, path)


def _lines(path: Path, series: Series, xlabel: str, ylabel: str, title: str, *, log_x: bool = False) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
    if log_x:
        axes.set_xscale("log", base=2)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    axes.set_title(title)
    return _save(figure, path)


def throughput_vs_batch_size(path: Path, series: Series, title: str) -> Path:
    return _lines(path, series, "batch size", "items per second", title, log_x=True)


def latency_vs_throughput(path: Path, series: Series, title: str) -> Path:
    """Each line: one engine or client; each point: one load (batch size or concurrency), p99 latency."""
    return _lines(path, series, "items per second", "p99 latency (ms)", title)


def accuracy_vs_throughput(path: Path, points: Mapping[str, tuple[float, float]], metric: str, title: str) -> Path:
    """One labelled point per precision: (throughput, accuracy)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, (throughput, accuracy) in points.items():
        axes.scatter([throughput], [accuracy], s=40)
        axes.annotate(name, (throughput, accuracy), textcoords="offset points", xytext=(5, 5))
    axes.set_xlabel("items per second")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    axes.set_title(title)
    return _save(figure, path)


def compare_bars(path: Path, values: Mapping[str, Mapping[str, float]], ylabel: str, title: str) -> Path:
    """Grouped bars: one group per configuration (x), one bar per report."""
    plt = _pyplot()
    reports = list(values)
    groups = sorted({key for per_report in values.values() for key in per_report})
    figure, axes = plt.subplots(figsize=(max(6.0, 0.8 * len(groups) * max(1, len(reports)) / 2 + 3), 4))
    width = 0.8 / max(1, len(reports))
    positions = np.arange(len(groups))
    for index, report in enumerate(reports):
        heights = [values[report].get(group, np.nan) for group in groups]
        axes.bar(positions + (index - (len(reports) - 1) / 2) * width, heights, width=width, label=report)
    crowded = len(groups) > 4
    axes.set_xticks(positions, groups, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=7)
    axes.set_title(title)
    return _save(figure, path)
