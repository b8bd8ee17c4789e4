"""What an optimized variant records about how it was made (`precision.json`), and the plot of its candidates."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from forwardpass.formats.base import require
from forwardpass.measure.machine import machine_info
from forwardpass.precision.samples import Samples
from forwardpass.precision.score import Quality
from forwardpass.repository import ModelEntry

if TYPE_CHECKING:  # optimize imports this module: its types only for annotations
    from forwardpass.precision.optimize import Candidate, OptimizeRequest

__all__ = ["plot_candidates", "provenance"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _figures(candidate: Candidate) -> dict[str, object]:
    return {
        "score": candidate.score,
        "throughput": candidate.throughput,
        "latency_ms_p50": candidate.latency_ms,
        "size_bytes": candidate.size_bytes,
    }


def provenance(
    request: OptimizeRequest,
    entry: ModelEntry,
    quality: Quality,
    calibration: Samples | None,
    original: Candidate,
    chosen: Candidate,
    candidates: list[Candidate],
) -> dict[str, object]:
    """What `precision.json` records: the source (with its hash), the settings and tools, the data it was measured
    on, every candidate's figures and the machine they were measured on."""
    converted = chosen.converted
    assert converted is not None
    record: dict[str, object] = {
        "precision": chosen.precision,
        "requested": request.precision,
        "candidate": chosen.label,
        "artefact": converted.path.name,
        "engine": converted.engine,
        "source": {
            "model": entry.name,
            "version": entry.version,
            "artefact": str(entry.artefact),
            "sha256": _sha256(entry.artefact),
        },
        "layers": chosen.layers,
        "settings": converted.settings,
        "notes": converted.notes,
        "calibration": calibration.summary() if calibration else None,
        "evaluation": {
            "data": str(request.eval_data or request.calibration),
            "metric": quality.metric,
            "metric_key": quality.key,
            "items": quality.items,
        },
        "tool_versions": converted.tool_versions,
        "measured": {
            "original": _figures(original),
            "optimized": _figures(chosen),
            "metric": quality.metric,
            "score_drop": chosen.drop,
            "throughput_ratio": chosen.throughput / original.throughput if original.throughput else None,
            "size_ratio": chosen.size_bytes / original.size_bytes,
            "batch_size": request.batch_size,
            "intra_op_threads": request.threads,
            "machine": machine_info(),
        },
        "max_accuracy_drop": request.max_accuracy_drop,
        "candidates": [original.to_dict(), *(c.to_dict() for c in candidates)],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if converted.engine == "torch":
        record["serve"] = "native"
    return record


def plot_candidates(
    path: Path, original: Candidate, candidates: list[Candidate], chosen: Candidate, metric: str, batch: int
) -> None:
    """Every candidate's score against its throughput, the chosen one starred, as a PNG at `path`."""
    require("matplotlib", "precision").use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for candidate in [original, *candidates]:
        marker = "*" if candidate is chosen else ("o" if candidate.qualifies else "x")
        axes.scatter(candidate.throughput, candidate.score, marker=marker, s=140 if candidate is chosen else 50)
        axes.annotate(
            candidate.label,
            (candidate.throughput, candidate.score),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    axes.set_xlabel(f"throughput at batch {batch} (items/s)")
    axes.set_ylabel(metric)
    accuracies = [c.score for c in [original, *candidates]]
    if accuracies and "%" in metric:  # never above 100 %, and a visible range even when every point is equal
        margin = max(0.5, (max(accuracies) - min(accuracies)) * 0.15)
        axes.set_ylim(max(0.0, min(accuracies) - margin), min(100.0, max(accuracies) + margin))
    axes.set_title(f"{metric} vs throughput; chosen: {chosen.label}\n(star: chosen, o: within budget, x: refused)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
