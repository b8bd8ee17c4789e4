"""Measurement: accuracy on labelled data (`evaluate`), speed against raw ONNX Runtime (`bench`), machine info.

Submodules imported on use: `loadgen` (load on a V2 server; `payload`: what it sends), `mlperf` (MLCommons LoadGen
scenarios), `report` and `plots` (JSON / Markdown / PNG reports), `variants` (a model's precision versions).
"""

from forwardpass.measure.datasets import Dataset, Example, ItemError, open_dataset
from forwardpass.measure.evaluate import EvalReport, evaluate
from forwardpass.measure.machine import machine_info
from forwardpass.measure.metrics import RegressionMetrics, TopKAccuracy
from forwardpass.measure.speed import RawSession, SpeedPoint, bench, random_inputs
from forwardpass.measure.stats import LatencySummary, paired_ratio
from forwardpass.measure.timing import RoundDone, Timing, interleave

__all__ = [
    "Dataset",
    "EvalReport",
    "Example",
    "ItemError",
    "LatencySummary",
    "RawSession",
    "RegressionMetrics",
    "RoundDone",
    "SpeedPoint",
    "Timing",
    "TopKAccuracy",
    "bench",
    "evaluate",
    "interleave",
    "machine_info",
    "open_dataset",
    "paired_ratio",
    "random_inputs",
]
