"""The decoder graph as generation drives it: which inputs carry the KV cache, and the batch's cache itself.

The cache of a batch is one array per past input, [batch, heads, length, head_dim], every sequence left-padded to
the batch's length; the attention mask's zeros hide the padding and each sequence keeps its own position ids, so a
padded sequence computes what it would alone. Sequences join (their prefilled cache padded in) and leave (their rows
dropped, then the padding no row needs any more cut off) between decode steps. Prompts arriving together are
prefilled together, left-padded the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forwardpass.backends.base import Session
from forwardpass.errors import ConfigError

__all__ = ["BatchCache", "DecoderLayout"]

_PAST = "past_key_values."
_REQUIRED = ("input_ids", "attention_mask", "position_ids")


@dataclass(frozen=True)
class DecoderLayout:
    past: list[str]  # past_key_values.<i>.key|value, in layer order
    present: list[str]  # the output that feeds each past input at the next step
    shapes: list[tuple[int, int]]  # (heads, head_dim) of each past input
    dtype: np.dtype

    @classmethod
    def of(cls, session: Session, model_name: str) -> DecoderLayout:
        """Read from the graph's inputs and outputs; ConfigError for a graph that is not a KV-cache decoder."""
        inputs = {spec.name: spec for spec in session.inputs}
        outputs = {spec.name for spec in session.outputs}
        past = [name for name in inputs if name.startswith(_PAST)]
        missing = [name for name in _REQUIRED if name not in inputs]
        if missing or not past or "logits" not in outputs:
            raise ConfigError(
                f"model '{model_name}' is not a decoder with a KV cache (inputs {list(inputs)}): export it with "
                "forwardpass.generation.export_decoder or `forwardpass generate HF_FOLDER`"
            )
        present = [name.replace("past_key_values", "present", 1) for name in past]
        absent = [name for name in present if name not in outputs]
        if absent:
            raise ConfigError(f"model '{model_name}': outputs {absent} missing to feed {past[: len(absent)]}")
        shapes = []
        for name in past:
            shape = inputs[name].shape
            if len(shape) != 4 or shape[1] < 1 or shape[3] < 1:
                problem = f"input '{name}' has shape {shape}, not [batch, heads, -1, dim]"
                raise ConfigError(f"model '{model_name}': {problem}")
            shapes.append((shape[1], shape[3]))
        dtype = inputs[past[0]].dtype.numpy_dtype
        if dtype is None:
            raise ConfigError(f"model '{model_name}': the cache input '{past[0]}' has no numeric dtype")
        return cls(past, present, shapes, np.dtype(dtype))

    def empty(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, heads, 0, dim), self.dtype) for heads, dim in self.shapes]


class BatchCache:
    """The running batch's KV cache and attention mask; row i is the i-th sequence of the batch."""

    def __init__(self, layout: DecoderLayout) -> None:
        self.layout = layout
        self.arrays = layout.empty(0)
        self.mask = np.zeros((0, 0), np.int64)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def step_inputs(self) -> dict[str, np.ndarray]:
        """The cache inputs and the attention mask of a decode step (one new token per row)."""
        feed = dict(zip(self.layout.past, self.arrays, strict=True))
        feed["attention_mask"] = np.concatenate([self.mask, np.ones((self.rows, 1), np.int64)], axis=1)
        return feed

    def advance(self, outputs: dict[str, np.ndarray], mask: np.ndarray) -> None:
        """After a decode step: the present outputs become the cache, the step's mask its mask."""
        self.arrays = [outputs[name] for name in self.layout.present]
        self.mask = mask

    def join(self, outputs: dict[str, np.ndarray], mask: np.ndarray) -> None:
        """Add the sequences whose prompts were just run together (left-padded, `mask` their attention mask) as the
        last rows."""
        added = [outputs[name] for name in self.layout.present]
        width = max(self.mask.shape[1], mask.shape[1])
        self.arrays = [
            np.concatenate([_left_pad(old, width), _left_pad(new, width)], axis=0)
            for old, new in zip(self.arrays, added, strict=True)
        ]
        self.mask = np.concatenate([_left_pad_mask(self.mask, width), _left_pad_mask(mask, width)], axis=0)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), then drop the leading columns that are padding in every row left."""
        self.arrays = [array[rows] for array in self.arrays]
        self.mask = self.mask[rows]
        if not rows:
            self.arrays = self.layout.empty(0)
            self.mask = np.zeros((0, 0), np.int64)
            return
        first_used = int(self.mask.any(axis=0).argmax())
        if first_used:
            self.arrays = [np.ascontiguousarray(array[:, :, first_used:]) for array in self.arrays]
            self.mask = np.ascontiguousarray(self.mask[:, first_used:])


def _left_pad(array: np.ndarray, width: int) -> np.ndarray:
    missing = width - array.shape[2]
    if not missing:
        return array
    return np.pad(array, ((0, 0), (0, 0), (missing, 0), (0, 0)))


def _left_pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    return np.pad(mask, ((0, 0), (width - mask.shape[1], 0)))
