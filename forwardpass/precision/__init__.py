"""Precision variants of a model: FP64/FP32/FP16/BF16/INT8/INT4 and mixed precision chosen against an accuracy
budget, each measured beside the original and written with its provenance (`precision.json`)."""

from forwardpass.precision.optimize import PRECISIONS, Candidate, OptimizeReport, OptimizeRequest, optimize
from forwardpass.precision.transforms import Int8Settings

__all__ = ["PRECISIONS", "Candidate", "Int8Settings", "OptimizeReport", "OptimizeRequest", "optimize"]
