"""The decoder graph as generation drives it: which inputs carry the KV cache, and the running batch's cache.

Two kinds of graph, two caches, one interface (`prefill` new prompts as the last rows, `decode` one token per row,
`keep` the rows that go on):

- a graph that takes `position_ids` (forwardpass's torch.onnx export) concatenates its cache: `BatchCache` keeps one
  array per past input, [batch, heads, length, head_dim], every sequence left-padded to the batch's length; the
  attention mask's zeros hide the padding and each sequence keeps its own position ids, so a padded sequence
  computes what it would alone;
- a graph without them (ONNX Runtime GenAI's model builder: GroupQueryAttention with rotary embedding) takes each
  row's past length from its attention mask (its sum) and writes the new keys and values into the past buffer
  itself when the present output is bound to the same memory: `InPlaceCache` keeps pre-allocated buffers
  [rows, heads, capacity, head_dim], every sequence right-padded (left padding shifts its positions: wrong tokens
  after a few steps, measured), and binds them as both past and present with ONNX Runtime's I/O binding — nothing
  is concatenated or copied per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from forwardpass.backends.base import Session
from forwardpass.backends.ort import OrtSession
from forwardpass.errors import ConfigError

__all__ = [
    "FIRST_CAPACITY",
    "RESERVE_AHEAD",
    "BatchCache",
    "DecoderLayout",
    "InPlaceCache",
    "PromptInChunks",
    "fewest_moves",
]

_PAST = "past_key_values."
_REQUIRED = ("input_ids", "attention_mask")
# tokens per row the in-place buffers start with; they grow by half when a row needs more (SmolLM2 holds 46 KB per
# token and row: a generous start would be most of a small model's memory at 8 rows)
FIRST_CAPACITY = 64
# ... but when requests join, the buffers are sized at once for what they may write (prompt and token limit), up to
# this many tokens per row: growing copies every row (8 rows of SmolLM2 from 64 to 96 tokens: ~25 MB, about a
# batch-8 step), and rows joining in groups would grow them at every group
RESERVE_AHEAD = 256


@dataclass(frozen=True)
class DecoderLayout:
    past: list[str]  # past_key_values.<i>.key|value, in the graph's input order
    present: list[str]  # the output that feeds each past input at the next step
    shapes: list[tuple[int, int]]  # (heads, head_dim) of each past input
    dtype: np.dtype
    positions: bool = True  # the graph takes position_ids (else: past lengths from the attention mask)
    vocab: int = -1  # the logits' last dimension, when the graph fixes it

    @classmethod
    def of(cls, session: Session, model_name: str) -> DecoderLayout:
        """Read from the graph's inputs and outputs; ConfigError for a graph that is not a KV-cache decoder."""
        inputs = {spec.name: spec for spec in session.inputs}
        outputs = {spec.name: spec for spec in session.outputs}
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
        positions = "position_ids" in inputs
        vocab = outputs["logits"].shape[-1]
        if not positions and (vocab < 1 or not isinstance(session, OrtSession)):
            raise ConfigError(
                f"model '{model_name}': a decoder without position_ids runs on ONNX Runtime with a fixed vocabulary "
                f"(logits {outputs['logits'].shape}, session {type(session).__name__})"
            )
        return cls(past, present, shapes, np.dtype(dtype), positions, vocab)

    def empty(self, batch: int, length: int = 0) -> list[np.ndarray]:
        return [np.zeros((batch, heads, length, dim), self.dtype) for heads, dim in self.shapes]

    def cache(self, session: Session) -> BatchCache | InPlaceCache:
        """An empty cache of the kind this graph needs."""
        if self.positions:
            return BatchCache(self, session)
        assert isinstance(session, OrtSession)  # checked by `of`
        return InPlaceCache(self, session)


class BatchCache:
    """The running batch's concatenated KV cache and attention mask, left-padded; row i is the i-th sequence."""

    def __init__(self, layout: DecoderLayout, session: Session) -> None:
        self.layout = layout
        self.session = session
        self.arrays = layout.empty(0)
        self.mask = np.zeros((0, 0), np.int64)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def reserve(self, rows: int, width: int) -> None:
        """Nothing to reserve: the arrays are concatenated at every step."""

    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        """Run the prompts together (left-padded) and add them as the last rows; the logits [prompts, vocab] of
        each one's last token."""
        width = max(len(prompt) for prompt in prompts)
        ids = np.zeros((len(prompts), width), np.int64)
        mask = np.zeros((len(prompts), width), np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = prompt
            mask[row, width - len(prompt) :] = 1
        feed = dict(zip(self.layout.past, self.layout.empty(len(prompts)), strict=True))
        feed.update(input_ids=ids, attention_mask=mask, position_ids=np.maximum(mask.cumsum(axis=1) - 1, 0))
        outputs = self.session.run(feed)
        self.join(outputs, mask)
        return outputs["logits"][:, -1]

    def decode(self, tokens: list[int]) -> np.ndarray:
        """One step: `tokens` (one per row) in; the logits [rows, vocab] of the next."""
        feed = dict(zip(self.layout.past, self.arrays, strict=True))
        feed["attention_mask"] = np.concatenate([self.mask, np.ones((self.rows, 1), np.int64)], axis=1)
        feed["input_ids"] = np.asarray(tokens, np.int64)[:, None]
        feed["position_ids"] = self.mask.sum(axis=1, keepdims=True)  # each row's own length so far
        outputs = self.session.run(feed)
        self.arrays = [outputs[name] for name in self.layout.present]
        self.mask = feed["attention_mask"]
        return outputs["logits"][:, -1]

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

    def adopt(self, prompt: PromptInChunks) -> None:
        """Add a prompt prefilled in chunks as the last row."""
        self.join(dict(zip(self.layout.present, prompt.arrays, strict=True)), np.ones((1, prompt.done), np.int64))

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


class InPlaceCache:
    """The running batch's KV cache in pre-allocated buffers that the graph updates in place, right-padded; row i
    is the i-th sequence, `lengths[i]` the tokens it has cached."""

    def __init__(self, layout: DecoderLayout, session: OrtSession) -> None:
        self.layout = layout
        self.session = session
        self.buffers = layout.empty(0)
        self.lengths = np.zeros(0, np.int64)
        self._logits = np.zeros((0, 1, layout.vocab), np.float32)
        self._binding = session.io_binding()
        self._bound_rows = -1  # the row count the cache buffers are bound for (-1: not bound)

    @property
    def rows(self) -> int:
        return int(self.lengths.shape[0])

    def reserve(self, rows: int, width: int) -> None:
        """Room for `rows` sequences of up to `width` tokens (at most RESERVE_AHEAD) before they join."""
        self._reserve(rows, min(width, RESERVE_AHEAD))

    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        """Run the prompts together (right-padded) and add them as the last rows; the logits [prompts, vocab] of
        each one's last token."""
        lengths = np.array([len(prompt) for prompt in prompts], np.int64)
        width = int(lengths.max())
        ids = np.zeros((len(prompts), width), np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = prompt
        mask = (np.arange(width) < lengths[:, None]).astype(np.int64)
        feed = dict(zip(self.layout.past, self.layout.empty(len(prompts)), strict=True))
        feed.update(input_ids=ids, attention_mask=mask)
        outputs = self.session.run(feed)
        first = self.rows
        self._reserve(first + len(prompts), width + 1)
        for buffer, name in zip(self.buffers, self.layout.present, strict=True):
            buffer[first : first + len(prompts), :, :width] = outputs[name]
        self.lengths = np.concatenate([self.lengths, lengths])
        # [prompts, 1, vocab]: each one's last position ([prompts, width, vocab] from a graph exported before that)
        logits: np.ndarray = outputs["logits"]
        last = np.minimum(lengths - 1, logits.shape[1] - 1)
        return np.asarray(logits[np.arange(len(prompts)), last])

    def decode(self, tokens: list[int]) -> np.ndarray:
        """One step: `tokens` (one per row) in; the logits [rows, vocab] of the next (valid until the next step)."""
        rows = self.rows
        width = int(self.lengths.max()) + 1
        self._reserve(rows, width)
        binding = self._binding
        if self._bound_rows != rows:
            for past, present, buffer in zip(self.layout.past, self.layout.present, self.buffers, strict=True):
                value = ort.OrtValue.ortvalue_from_numpy(buffer[:rows])  # a view: the graph writes the buffer
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
            binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self._logits[:rows]))
            self._bound_rows = rows
        binding.bind_cpu_input("input_ids", np.asarray(tokens, np.int64)[:, None])
        binding.bind_cpu_input("attention_mask", (np.arange(width) <= self.lengths[:, None]).astype(np.int64))
        self.session.run_bound(binding)
        self.lengths += 1
        return self._logits[:rows, -1]

    def adopt(self, prompt: PromptInChunks) -> None:
        """Add a prompt prefilled in chunks as the last row (its cache copied into the batch's buffers)."""
        row, length = self.rows, prompt.done
        self._reserve(row + 1, length + 1)
        for buffer, own in zip(self.buffers, prompt.arrays, strict=True):
            buffer[row, :, :length] = own[0, :, :length]
        self.lengths = np.append(self.lengths, length)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order): the first rows of the buffers; only the rows that change place are
        copied (in the order `fewest_moves` gives, one per row that left)."""
        moved = [target for target, row in enumerate(rows) if target != row]
        if moved:
            sources = [rows[target] for target in moved]
            width = int(self.lengths[sources].max())
            for buffer in self.buffers:
                buffer[moved, :, :width] = buffer[sources, :, :width]
        self.lengths = self.lengths[rows]
        self._bound_rows = -1

    def _reserve(self, rows: int, width: int) -> None:
        """Buffers for at least `rows` sequences of `width` tokens: larger ones (by half) when these are short."""
        held_rows, held_width = (self.buffers[0].shape[0], self.buffers[0].shape[2])
        if rows <= held_rows and width <= held_width:
            return
        new_rows = max(rows, held_rows * 3 // 2 if rows > held_rows else held_rows)
        new_width = max(width, FIRST_CAPACITY, held_width * 3 // 2 if width > held_width else held_width)
        grown = self.layout.empty(new_rows, new_width)
        used = self.rows
        for old, new in zip(self.buffers, grown, strict=True):
            new[:used, :, :held_width] = old[:used]
        self.buffers = grown
        self._logits = np.zeros((new_rows, 1, self.layout.vocab), np.float32)
        self._bound_rows = -1


class PromptInChunks:
    """A long prompt prefilled a chunk at a time, between the batch's decode steps, so that the streams already
    running are not held up for the whole prompt; its cache is its own until `adopt` adds it to the batch. The
    logits equal one run's (both graphs take a past cache with several new tokens; measured equal, max diff 0.0);
    chunks of a few hundred tokens cost no more CPU than one run (attention over a shorter span each time)."""

    def __init__(self, layout: DecoderLayout, session: Session, prompt: list[int]) -> None:
        self.layout = layout
        self.session = session
        self.prompt = prompt
        self.done = 0  # the prompt's tokens in the cache
        # In place as in InPlaceCache (a graph without position_ids writes each chunk into the buffers it reads);
        # concatenated, as in BatchCache, by one with them.
        self.arrays = layout.empty(1, 0 if layout.positions else len(prompt))
        self._binding: ort.IOBinding | None = None
        if not layout.positions:
            assert isinstance(session, OrtSession)  # DecoderLayout.of checked it
            self._binding = session.io_binding()
            for past, present, array in zip(layout.past, layout.present, self.arrays, strict=True):
                value = ort.OrtValue.ortvalue_from_numpy(array)
                self._binding.bind_ortvalue_input(past, value)
                self._binding.bind_ortvalue_output(present, value)

    def run(self, most_tokens: int) -> np.ndarray | None:
        """Prefill the prompt's next `most_tokens` tokens; the logits [vocab] of its last token once all are in."""
        chunk = np.asarray([self.prompt[self.done : self.done + most_tokens]], np.int64)
        total = self.done + chunk.shape[1]
        mask = np.ones((1, total), np.int64)
        if self._binding is None:
            feed = dict(zip(self.layout.past, self.arrays, strict=True))
            feed.update(input_ids=chunk, attention_mask=mask, position_ids=np.arange(self.done, total)[None])
            outputs = self.session.run(feed)
            self.arrays = [outputs[name] for name in self.layout.present]
            logits = outputs["logits"]
        else:
            assert isinstance(self.session, OrtSession)
            # bound afresh each run: the logits' shape follows the chunk's ([1, chunk, vocab] from an older graph)
            self._binding.bind_output("logits")
            self._binding.bind_cpu_input("input_ids", chunk)
            self._binding.bind_cpu_input("attention_mask", mask)
            self.session.run_bound(self._binding)
            logits = self._binding.get_outputs()[len(self.layout.present)].numpy()
        self.done = total
        return np.asarray(logits[0, -1]) if total == len(self.prompt) else None


def fewest_moves(kept: list[int]) -> list[int]:
    """An order for the rows `kept` (in increasing order) that moves the fewest: the rows already among the first
    len(kept) stay where they are, the last rows fill the places of those that left."""
    size = len(kept)
    staying = {row for row in kept if row < size}
    movers = iter(row for row in kept if row >= size)
    return [row if row in staying else next(movers) for row in range(size)]


def _left_pad(array: np.ndarray, width: int) -> np.ndarray:
    missing = width - array.shape[2]
    if not missing:
        return array
    return np.pad(array, ((0, 0), (0, 0), (missing, 0), (0, 0)))


def _left_pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    return np.pad(mask, ((0, 0), (width - mask.shape[1], 0)))
