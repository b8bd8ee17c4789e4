"""Parity: run two sessions on the same inputs and measure how far apart their outputs are.

The reference is the framework's own engine, the candidate the converted ONNX model. Outputs are compared by name.
Figures: the largest absolute difference, the largest relative one (relative to the reference value, absolute below
magnitude 1 so that values near zero do not blow it up), and for classifier-shaped outputs ([batch, classes >= 2])
the share of rows whose top-1 class agrees. A conversion passes when the relative figure is within the tolerance:
for outputs within [-1, 1] that is exactly the absolute difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from forwardpass.backends.base import Session
from forwardpass.errors import ConfigError, InputError
from forwardpass.tensor import DataType, TensorSpec

__all__ = ["Batch", "OutputParity", "ParityReport", "check_parity", "random_samples"]

Batch = Mapping[str, np.ndarray]

# Sizes of the batches random_samples cuts its items into: a single item, then larger batches, so that a parity
# check also proves the batch dimension stayed dynamic.
_FIRST_BATCHES = (1, 3)
_LARGEST_BATCH = 16


@dataclass(frozen=True, slots=True)
class OutputParity:
    name: str
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float | None  # None: not classifier-shaped


@dataclass(frozen=True, slots=True)
class ParityReport:
    samples: int  # items compared
    batch_sizes: tuple[int, ...]
    outputs: tuple[OutputParity, ...]

    @property
    def max_abs_diff(self) -> float:
        return max((o.max_abs_diff for o in self.outputs), default=0.0)

    @property
    def max_rel_diff(self) -> float:
        return max((o.max_rel_diff for o in self.outputs), default=0.0)

    @property
    def top1_agreement(self) -> float | None:
        figures = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(figures) if figures else None

    def passes(self, tolerance: float) -> bool:
        return self.max_rel_diff <= tolerance

    def summary(self) -> str:
        """One line of figures, e.g. for a refusal or a log."""
        top1 = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.2%}"
        return (
            f"max abs diff {self.max_abs_diff:.3g}, max rel diff {self.max_rel_diff:.3g}{top1} on {self.samples} inputs"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "batch_sizes": list(self.batch_sizes),
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "top1_agreement": self.top1_agreement,
            "outputs": [asdict(o) for o in self.outputs],
        }


def check_parity(reference: Session, candidate: Session, samples: Sequence[Batch]) -> ParityReport:
    """Run both sessions on every batch of `samples` and compare every output of the reference by name."""
    if not samples:
        raise ConfigError("parity check needs at least one batch of inputs")
    names = [spec.name for spec in reference.outputs]
    expected = {spec.name for spec in candidate.outputs}
    missing = [name for name in names if name not in expected]
    if missing:
        raise ConfigError(f"parity check: the converted model lacks output(s) {missing}; it has {sorted(expected)}")
    gathered: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in names}
    batch_sizes = []
    for batch in samples:
        feed = {name: np.asarray(value) for name, value in batch.items()}
        batch_sizes.append(_batch_size(feed))
        try:
            want = reference.run(feed)
        except InputError as exc:  # e.g. token ids past a small embedding: nothing to compare the conversion with
            raise ConfigError(f"parity check: the model itself refuses its parity inputs ({exc})") from None
        try:
            got = candidate.run(feed)
        except InputError as exc:  # e.g. a converter left a layer's variables as inputs of their own
            raise ConfigError(f"parity check: the converted model refuses inputs the model takes ({exc})") from None
        for name in names:
            gathered[name].append((np.asarray(want[name]), np.asarray(got[name])))
    outputs = tuple(_compare(name, pairs) for name, pairs in gathered.items())
    return ParityReport(sum(batch_sizes), tuple(batch_sizes), outputs)


def random_samples(
    specs: Sequence[TensorSpec],
    n: int = 32,
    *,
    seed: int = 0,
    dynamic_size: int = 8,
    int_high: int = 100,
) -> list[dict[str, np.ndarray]]:
    """`n` random items for `specs`, cut into batches of 1, 3, then up to 16 (a fixed batch dim keeps its size).

    Dynamic dimensions other than the batch get `dynamic_size`. Floats are standard normal; integer tensors whose
    name says mask get ones, token type ids zeros, other integers values in [0, int_high); booleans are random.
    """
    rng = np.random.default_rng(seed)
    batches: list[dict[str, np.ndarray]] = []
    done = 0
    while done < n:
        size = _next_batch_size(specs, len(batches), n - done)
        batches.append({spec.name: _random_tensor(spec, size, dynamic_size, int_high, rng) for spec in specs})
        done += size
    return batches


def _next_batch_size(specs: Sequence[TensorSpec], index: int, remaining: int) -> int:
    fixed = {spec.shape[0] for spec in specs if spec.shape and spec.shape[0] != -1}
    if fixed:
        return fixed.pop()
    wanted = _FIRST_BATCHES[index] if index < len(_FIRST_BATCHES) else _LARGEST_BATCH
    return min(wanted, remaining)


def _random_tensor(
    spec: TensorSpec, batch: int, dynamic_size: int, int_high: int, rng: np.random.Generator
) -> np.ndarray:
    if not spec.shape:
        raise ConfigError(f"input '{spec.name}' is a scalar: it has no batch dimension to compare along")
    shape = (batch, *(dynamic_size if dim == -1 else dim for dim in spec.shape[1:]))
    dtype = spec.dtype.numpy_dtype
    if dtype is None or spec.dtype is DataType.BYTES:
        raise ConfigError(f"input '{spec.name}' ({spec.dtype.name}): random parity inputs are numeric only")
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    lowered = spec.name.lower()
    if "mask" in lowered:
        return np.ones(shape, dtype=dtype)
    if "type" in lowered:
        return np.zeros(shape, dtype=dtype)
    return rng.integers(0, int_high, shape).astype(dtype)


def _batch_size(feed: Mapping[str, np.ndarray]) -> int:
    sizes = {value.shape[0] if value.ndim else 1 for value in feed.values()}
    return sizes.pop() if len(sizes) == 1 else max(sizes)


def _compare(name: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> OutputParity:
    abs_diffs, rel_diffs, agree, rows = [], [], 0, 0
    classifier = True
    for want, got in pairs:
        if want.shape != got.shape:
            raise ConfigError(f"parity check: output '{name}' has shape {list(got.shape)}, expected {list(want.shape)}")
        abs_diff, rel_diff = _differences(want, got)
        abs_diffs.append(abs_diff)
        rel_diffs.append(rel_diff)
        classifier = classifier and want.ndim == 2 and want.shape[1] >= 2 and want.dtype.kind in "fiu"
        if classifier:
            agree += int(np.sum(np.argmax(want, axis=1) == np.argmax(got, axis=1)))
            rows += want.shape[0]
    top1 = agree / rows if classifier and rows else None
    return OutputParity(name, max(abs_diffs), max(rel_diffs), top1)


def _differences(want: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    if want.size == 0:
        return 0.0, 0.0
    if want.dtype.kind not in "biuf" or got.dtype.kind not in "biuf":
        same = bool(np.all(want == got))
        return (0.0, 0.0) if same else (float("inf"), float("inf"))
    reference = want.astype(np.float64)
    candidate = got.astype(np.float64)
    both_nan = np.isnan(reference) & np.isnan(candidate)
    same_inf = np.isinf(reference) & (reference == candidate)
    diff = np.where(both_nan | same_inf, 0.0, np.abs(reference - candidate))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only: as far apart as can be
    scale = np.maximum(np.abs(np.where(np.isfinite(reference), reference, 1.0)), 1.0)
    return float(diff.max()), float((diff / scale).max())
