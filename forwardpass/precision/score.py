"""What a candidate is worth: accuracy on the eval data, speed beside the original in the same run, size on disk.

Scores are in points (0-100), higher is better, and each names the metric it is -- never one for another: on
labelled eval data, top-1 accuracy on the labels (classifiers) or R² x 100 (regressors); on unlabelled data, the
share of items whose top-1 class is the original's (classifiers: "top-1 agreement"), else the mean cosine
similarity x 100 of each item's result (embedding, or first output) to the original's, or where that result is one
number, R² x 100 of the results against the original's.
This is the small internal helper that `forwardpass.measure` may absorb: it uses `measure.evaluate` and
`measure.timing.interleave` as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np

from forwardpass.config import ClassificationConfig
from forwardpass.errors import InputError
from forwardpass.measure.datasets import Dataset, open_dataset
from forwardpass.measure.evaluate import evaluate, task_of
from forwardpass.measure.timing import Timing, interleave
from forwardpass.model import Model
from forwardpass.pipeline import Arrays
from forwardpass.precision.samples import Samples, read_samples

__all__ = ["Quality", "Speed", "artefact_size", "measure_speed", "quality_for"]


class Quality(Protocol):
    metric: str  # what the score is, in words: "top-1 agreement with the original (%)"
    key: str  # the same as an identifier: "top1_agreement"
    items: int

    def measure(self, model: Model) -> float:
        """The model's score in points (higher is better)."""
        ...


class LabelledQuality:
    def __init__(self, dataset: Dataset, task: str) -> None:
        self.dataset = dataset
        self.task = task
        classifier = task == "classification"
        self.metric = "top-1 accuracy on the labels (%)" if classifier else "R² on the labels (x 100)"
        self.key = "top1_accuracy" if classifier else "r2"
        self.items = len(dataset.examples)

    def measure(self, model: Model) -> float:
        report = evaluate(model, self.dataset, top_k=(1,))
        if report.errors:
            first = report.errors[0]
            raise InputError(f"eval data '{self.dataset.path}': {first.source}: {first.error}")
        if self.task == "classification":
            return 100.0 * float(report.metrics["top_k_accuracy"]["1"])
        return 100.0 * float(report.metrics["r2"])


class Top1AgreementQuality:
    """The share of items (%) whose top-1 class is the one the original model gives."""

    metric = "top-1 agreement with the original (%)"
    key = "top1_agreement"

    def __init__(self, samples: Samples, original: Model) -> None:
        self.samples = samples
        self.items = len(samples.items)
        self.reference = self._top1(original)

    def measure(self, model: Model) -> float:
        return 100.0 * float(np.mean(self._top1(model) == self.reference))

    def _top1(self, model: Model) -> np.ndarray:
        predictions = [
            model.pipeline.postprocess(outputs, inputs, 1) for outputs, inputs in model.run_items(self.samples.items)
        ]
        return np.array([prediction["index"] for prediction in predictions])


class CosineQuality:
    """Mean cosine similarity of each item's result to the original model's, x 100."""

    metric = "cosine similarity to the original (x 100)"
    key = "cosine"

    def __init__(self, samples: Samples, original: Model) -> None:
        self.samples = samples
        self.items = len(samples.items)
        self.reference = self._vectors(original)

    def measure(self, model: Model) -> float:
        vectors = self._vectors(model)
        dots = np.sum(vectors * self.reference, axis=1)
        norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(self.reference, axis=1)
        return 100.0 * float(np.mean(dots / np.maximum(norms, 1e-30)))

    def _vectors(self, model: Model) -> np.ndarray:
        rows = []
        for outputs, inputs in model.run_items(self.samples.items):
            prediction = model.pipeline.postprocess(outputs, inputs, None)
            embedding = prediction.get("embedding")
            if embedding is not None:
                rows.append(np.asarray(embedding, dtype=np.float64))
            else:
                rows.append(np.asarray(next(iter(outputs.values())), dtype=np.float64).ravel())
        return np.stack(rows)


class OutputR2Quality(CosineQuality):
    """R² x 100 of each item's one-number result against the original's, over the items: the cosine of two single
    numbers is only whether their signs agree (an INT8 recommender whose scores moved by 0.084 on a range of 0.44
    scored 100.000)."""

    metric = "R² of the outputs against the original's (x 100)"
    key = "output_r2"

    def measure(self, model: Model) -> float:
        residual = float(np.sum((self._vectors(model) - self.reference) ** 2))
        spread = float(np.sum((self.reference - self.reference.mean()) ** 2))
        return 100.0 * (1.0 - residual / spread) if spread else 100.0 * float(residual == 0.0)


def quality_for(
    original: Model, eval_data: Path | None, calibration: Samples | None, name: str
) -> tuple[Quality, Samples]:
    """Labelled metrics when the data has labels and the model is a classifier or regressor; agreement with the
    original otherwise (top-1 for a classifier, cosine for the rest). Also the eval items, preprocessed (speed is
    measured on them)."""
    if eval_data is None:
        if calibration is None:
            raise InputError("give --eval DATA (or --calibration DATA) so that accuracy can be measured")
        return _agreement(calibration, original), calibration
    samples = read_samples(original, eval_data, role="eval", model_name=name)
    try:
        dataset = open_dataset(eval_data)
    except InputError:  # no labels: how closely the variant agrees with the original is what can be measured
        return _agreement(samples, original), samples
    # Labelled data and a model with no task is refused with what to declare, never scored as agreement instead
    return LabelledQuality(dataset, task_of(original)), samples


def _agreement(samples: Samples, original: Model) -> Quality:
    if isinstance(original.config.postprocess, ClassificationConfig):
        return Top1AgreementQuality(samples, original)
    cosine = CosineQuality(samples, original)
    return OutputR2Quality(samples, original) if cosine.reference.shape[1] == 1 else cosine


@dataclass(frozen=True, slots=True)
class Speed:
    throughput: float  # items/s at the measured batch size
    latency_ms: float  # median latency of one item alone (batch 1)


def measure_speed(
    models: Mapping[str, Model], samples: Samples, *, batch_size: int, seconds: float
) -> dict[str, Speed]:
    """Every model timed in the same interleaved rounds (so they share the machine's noise): throughput at
    `batch_size`, latency at batch 1, on real eval items."""
    first = next(iter(models.values()))
    batch = _batch(first, samples.items, batch_size)
    single = _batch(first, samples.items[:1], 1)
    rounds = 4
    at_batch = _timed(models, batch, batch_size, rounds, seconds)
    at_one = _timed(models, single, 1, rounds, seconds / 2)
    return {name: Speed(at_batch[name].throughput, at_one[name].latency.p50_ms) for name in models}


def _batch(model: Model, items: Sequence[Arrays], size: int) -> Arrays:
    chosen = [items[i % len(items)] for i in range(size)]
    return model.pipeline.collate(chosen)


def _timed(models: Mapping[str, Model], batch: Arrays, size: int, rounds: int, seconds: float) -> dict[str, Timing]:
    calls = {name: partial(model.forward, model.validate(batch)) for name, model in models.items()}
    return interleave(calls, size, rounds=rounds, round_seconds=seconds / rounds, warmup_seconds=0.2)


def artefact_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
