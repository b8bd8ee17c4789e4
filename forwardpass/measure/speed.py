"""Speed: `Model.infer` against raw `onnxruntime.InferenceSession.run` on the same file and options, interleaved."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from forwardpass.errors import ConfigError, DTypeError, InputError
from forwardpass.measure.timing import OnRound, Timing, interleave
from forwardpass.model import Model
from forwardpass.tensor import DataType, TensorSpec

__all__ = [
    "OURS",
    "RAW",
    "ROUND_SECONDS",
    "RawSession",
    "SpeedPoint",
    "bench",
    "check_batch_sizes",
    "random_inputs",
]

OURS = "forwardpass"
RAW = "onnxruntime"
# Short enough that several rounds fit in a few seconds, long enough that switching contenders costs nothing.
ROUND_SECONDS = 0.5
DYNAMIC_DIM = 16


def random_inputs(
    specs: Sequence[TensorSpec], batch_size: int, *, dynamic_dim: int = DYNAMIC_DIM, seed: int = 0
) -> dict[str, np.ndarray]:
    """A valid batch from the specs: normal floats, small non-negative ints, random bools; dynamic dims set."""
    rng = np.random.default_rng(seed)
    batch: dict[str, np.ndarray] = {}
    for spec in specs:
        first, rest = (spec.shape[0], spec.shape[1:]) if spec.shape else (-1, ())
        if first not in (-1, batch_size):
            raise InputError(f"input '{spec.name}' has a fixed batch size of {first}; use batch size {first}")
        shape = (batch_size, *(dynamic_dim if dim == -1 else dim for dim in rest)) if spec.shape else ()
        batch[spec.name] = _random(spec, shape, rng)
    return batch


def check_batch_sizes(model: Model, batch_sizes: Sequence[int]) -> None:
    """Refuses a batch size over the model's max_batch_size: its server refuses such a batch and splits none, so a
    figure for it would time a forward pass that serving the model never runs."""
    most = model.config.max_batch_size
    over = [size for size in batch_sizes if most and size > most]
    if over:
        raise InputError(
            f"batch size {', '.join(map(str, over))} is over model '{model.name}''s max_batch_size of {most}: a "
            f"forward pass of it never holds more items; time batch sizes up to {most}"
        )


def _random(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = spec.dtype.numpy_dtype
    if dtype is None or spec.dtype is DataType.BYTES:
        raise DTypeError(f"input '{spec.name}' is {spec.dtype.name}: random inputs are only made for numeric tensors")
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, 10, shape).astype(dtype)  # small: ints are often indices (tokens, categories)


class RawSession:
    """A plain `onnxruntime.InferenceSession` on the model's file, built here from the same engine options."""

    def __init__(self, model: Model) -> None:
        import onnxruntime as ort  # imported on use, as the backend does

        from forwardpass.backends.ort import session_options

        runs = model.serving.runs  # the converted ONNX file when a non-ONNX model is served converted
        if runs.suffix != ".onnx":
            raise ConfigError(
                f"model '{model.name}' runs natively ({model.serving.format}): raw ONNX Runtime has no file to be "
                "compared with; load it with --serve onnx"
            )
        self.session = ort.InferenceSession(
            str(runs), sess_options=session_options(model.engine), providers=model.session.providers
        )
        self.output_names = [output.name for output in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> list[Any]:
        outputs: list[Any] = self.session.run(self.output_names, feed)
        return outputs


@dataclass(frozen=True, slots=True)
class SpeedPoint:
    """One batch size: both contenders' timings and their paired throughput ratio (ours / raw)."""

    batch_size: int
    ours: Timing
    raw: Timing

    @property
    def ratio(self) -> float:
        return self.ours.ratio_to(self.raw)

    def to_dict(self) -> dict[str, object]:
        return {"batch_size": self.batch_size, OURS: self.ours.to_dict(), RAW: self.raw.to_dict(), "ratio": self.ratio}


def bench(
    model: Model,
    batch_sizes: Sequence[int],
    *,
    seconds: float,
    warmup_seconds: float,
    rounds: int | None = None,
    on_round: OnRound | None = None,
    raw: RawSession | None = None,
) -> list[SpeedPoint]:
    """For each batch size, `seconds` of `Model.infer` and as many of raw ORT, in alternating rounds."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise InputError("batch sizes must be positive integers")
    if seconds <= 0 or warmup_seconds < 0:
        raise InputError("the duration must be positive and the warm-up not negative")
    check_batch_sizes(model, batch_sizes)
    rounds = rounds or max(2, math.ceil(seconds / ROUND_SECONDS))
    reference = raw or RawSession(model)
    points = []
    for batch_size in batch_sizes:
        feed = random_inputs(model.inputs, batch_size)
        timings = interleave(
            {OURS: partial(model.infer, feed), RAW: partial(reference.run, feed)},
            batch_size,
            rounds=rounds,
            round_seconds=seconds / rounds,
            warmup_seconds=warmup_seconds,
            on_round=on_round,
        )
        points.append(SpeedPoint(batch_size, timings[OURS], timings[RAW]))
    return points
