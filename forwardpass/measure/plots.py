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
    "saliency_overlay",
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
    figure.colorbar(image, ax=axes, fraction=0.046).set_label("items")
    ticks = range(len(labels))
    long_names = len(labels) > 6 and max(len(str(label)) for label in labels) > 3
    axes.set_xticks(ticks, labels, rotation=90 if long_names else 0)
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
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
    figure, axes = plt.subplots(figsize=(max(6.0, 0.5 * len(labels) + 2), 4.4))
    positions = np.arange(len(labels))
    for offset, name in zip((-0.27, 0.0, 0.27), ("precision", "recall", "f1"), strict=True):
        axes.bar(positions + offset, [per_class[label][name] for label in labels], width=0.27, label=name)
    long_names = len(labels) > 8 and max(len(str(label)) for label in labels) > 3
    ticks = [f"{label}\n{per_class[label].get('support', '')}" for label in labels]
    axes.set_xticks(positions, [t.replace("\n", " ") for t in ticks] if long_names else ticks,
                    rotation=90 if long_names else 0)  # fmt: skip
    axes.set_xlabel("class and its support (items of that class in the data)")
    axes.set_ylabel("score (0 to 1)")
    axes.set_ylim(0, 1.0)
    axes.grid(axis="y", alpha=0.3)
    # above the axes, never over a bar
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=8)
    axes.set_title(title, pad=24)
    return _save(figure, path)


SPARSE_BIN = 10  # a calibration bin with fewer items than this is drawn faded: its accuracy says little


def calibration_curve(path: Path, bins: Sequence[Mapping[str, float]], ece: float, title: str) -> Path:
    """Reliability diagram: one bar per score bin (accuracy of its items) beside the diagonal, each bar labelled
    with its item count; below, how many items fall in each bin."""
    plt = _pyplot()
    figure, (axes, counts) = plt.subplots(2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    lows = [b["low"] for b in bins]
    widths = [b["high"] - b["low"] for b in bins]
    sparse = [b["n"] < SPARSE_BIN for b in bins]
    colors = ["#c6dbef" if thin else "#3182bd" for thin in sparse]
    axes.bar(lows, [b["accuracy"] for b in bins], width=widths, align="edge", color=colors, edgecolor="white",
             label=f"model (ECE {ece:.3f})")  # fmt: skip
    for bin_, thin in zip(bins, sparse, strict=True):
        axes.annotate(f"n={bin_['n']}", (bin_["low"] + (bin_["high"] - bin_["low"]) / 2, bin_["accuracy"]),
                      textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7,
                      color="grey" if thin else "black")  # fmt: skip
    axes.set_ylabel("accuracy of the items in the bin")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.08)
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=8)
    axes.set_title(f"{title}\n(pale: bins with fewer than {SPARSE_BIN} items)", fontsize=10, pad=22)
    counts.bar(lows, [b["n"] for b in bins], width=widths, align="edge", color=colors, edgecolor="white")
    counts.set_yscale("log")
    counts.set_ylabel("items")
    counts.set_xlabel("top-1 score (bin)")
    return _save(figure, path)


def latency_distribution(path: Path, latencies_ms: Mapping[str, Sequence[float]], title: str) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    values = [np.asarray(v, dtype=np.float64) for v in latencies_ms.values() if len(v)]
    if values:
        low, high = min(v.min() for v in values), max(v.max() for v in values)
        edges = np.geomspace(max(low, 1e-3), max(high, low * 1.01, 1e-3 * 1.01), 50)
        colours: dict[str, Any] = {}
        for name, series in latencies_ms.items():
            # one colour per configuration; raw ONNX Runtime dashed beside forwardpass in the same colour
            engine, _, configuration = name.partition(" ")
            colour = colours.setdefault(configuration, f"C{len(colours) % 10}")
            style = "--" if engine == "onnxruntime" else "-"
            axes.hist(series, bins=edges, histtype="step", label=name, linewidth=1.2, color=colour, linestyle=style)
        axes.set_xscale("log")
    axes.set_xlabel("latency per call (ms, log scale)")
    axes.set_ylabel("calls (log scale)")
    axes.set_yscale("log")
    axes.legend(fontsize=7)
    axes.set_title(f"{title}: latency per call")
    return _save(figure, path)


def _lines(
    path: Path,
    series: Series,
    xlabel: str,
    ylabel: str,
    title: str,
    *,
    log_x: bool = False,
    point_labels: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
        for text, point in zip((point_labels or {}).get(name, []), points, strict=False):
            axes.annotate(text, point, textcoords="offset points", xytext=(4, 4), fontsize=7)
    if log_x:  # batch sizes: log-spaced, labelled with the sizes measured, not powers of two
        axes.set_xscale("log", base=2)
        sizes = sorted({x for points in series.values() for x, _ in points})
        axes.set_xticks(sizes, [f"{x:g}" for x in sizes])
        axes.minorticks_off()
        axes.set_ylim(bottom=0)  # throughput from zero: the gaps between lines read as they are
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    axes.set_title(title)
    return _save(figure, path)


def throughput_vs_batch_size(path: Path, series: Series, title: str) -> Path:
    return _lines(path, series, "batch size (log scale)", "items per second", f"{title}: throughput per batch size",
                  log_x=True)  # fmt: skip


def latency_vs_throughput(
    path: Path,
    series: Series,
    title: str,
    point_labels: Mapping[str, Sequence[str]] | None = None,
    unit: str = "call",
) -> Path:
    """Each line: one engine or client; each point: one load (batch size or concurrency, named by `point_labels`),
    its p99 latency. `unit`: what is counted, "call" (items per second) or "request" (requests per second)."""
    rate = "items per second" if unit == "call" else f"{unit}s per second"
    return _lines(path, series, rate, f"p99 latency per {unit} (ms)", f"{title}: p99 latency vs throughput",
                  point_labels=point_labels)  # fmt: skip


def accuracy_vs_throughput(path: Path, points: Mapping[str, tuple[float, float]], metric: str, title: str) -> Path:
    """One labelled point per precision: (throughput, accuracy)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, (throughput, accuracy) in points.items():
        axes.scatter([throughput], [accuracy], s=40)
        axes.annotate(name, (throughput, accuracy), textcoords="offset points", xytext=(5, 5))
    axes.set_xlabel("items per second (at the largest batch size)")
    axes.set_ylabel(metric)
    _fraction_range(axes, [accuracy for _, accuracy in points.values()])
    axes.grid(alpha=0.3)
    axes.set_title(title)
    return _save(figure, path)


def _fraction_range(axes: Any, values: Sequence[float]) -> None:
    """A y axis for values between 0 and 1 (accuracy, F1) that never runs past 1 nor below 0, with a margin that
    does not vanish when there is a single point."""
    if not values or min(values) < 0 or max(values) > 1:
        return
    margin = max(0.02, (max(values) - min(values)) * 0.15)
    axes.set_ylim(max(0.0, min(values) - margin), min(1.0, max(values) + margin))


def compare_bars(path: Path, values: Mapping[str, Mapping[str, float]], ylabel: str, title: str) -> Path:
    """Grouped bars: one group per configuration (x, in the order the reports list them: batch 8 before batch 32),
    one bar per report."""
    plt = _pyplot()
    reports = list(values)
    groups = list(dict.fromkeys(key for per_report in values.values() for key in per_report))
    figure, axes = plt.subplots(figsize=(max(6.0, 0.8 * len(groups) * max(1, len(reports)) / 2 + 3), 4))
    width = 0.8 / max(1, len(reports))
    positions = np.arange(len(groups))
    for index, report in enumerate(reports):
        heights = [values[report].get(group, np.nan) for group in groups]
        axes.bar(positions + (index - (len(reports) - 1) / 2) * width, heights, width=width, label=report)
    crowded = len(groups) > 4
    axes.set_xticks(positions, groups, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=7, title="report", title_fontsize=7)
    axes.set_title(title)
    return _save(figure, path)


def saliency_overlay(
    path: Path, image: np.ndarray, saliency: Sequence[Sequence[float]], output: str, title: str
) -> Path:
    """Left: the image as the model saw it (after its preprocessing; H x W, or H x W x 3). Right: the same image with
    the occlusion saliency over it, and a colour bar in the saliency's own unit (the drop of `output`)."""
    plt = _pyplot()
    picture = np.asarray(image, dtype=np.float64)
    low, high = float(picture.min()), float(picture.max())
    shown = (picture - low) / (high - low) if high > low else np.zeros_like(picture)
    heat = np.clip(np.asarray(saliency, dtype=np.float64), 0.0, None)  # a patch whose hiding helps is not salient
    figure, (plain, overlaid) = plt.subplots(1, 2, figsize=(8.4, 4))
    grey = "gray" if shown.ndim == 2 else None
    for axes in (plain, overlaid):
        axes.imshow(shown, cmap=grey, interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
    plain.set_title("input, as the model sees it", fontsize=9)
    layer = overlaid.imshow(heat, cmap="inferno", alpha=0.6, vmin=0.0, vmax=max(float(heat.max()), 1e-9),
                            interpolation="nearest")  # fmt: skip
    overlaid.set_title("saliency over the input", fontsize=9)
    figure.colorbar(layer, ax=overlaid, fraction=0.046, pad=0.04).set_label(
        f"drop in {output} when this area is hidden", fontsize=8
    )
    figure.suptitle(title)
    return _save(figure, path)
