"""What every batching loop shares once it has formed a batch: a failed batch runs again item by item (so a bad item
fails alone), and the outputs are checked to hold one row per item before they are cut back into the items' rows.

The five loops, and why each collects its batch its own way:
- `Model.forward_each` (offline `predict`, batch jobs, streams): every item is known up front, so it cuts them into
  forward passes of the model's batch size; nothing waits.
- `forwardpass.modes.stream.run_stream`: records arrive on a reader thread; it takes the oldest plus whatever else is
  already waiting (never waiting for more, so a lone record is never held back) and hands them to `forward_each`.
- `forwardpass.scheduler.batcher.Batcher` (the server): requests of several rows arrive on an asyncio loop for
  several instances; it caps by rows, may wait `max_queue_delay` for a fuller batch, and joins only requests whose
  arrays agree past the batch dimension.
- `forwardpass.scheduler.sequence.SequenceBatcher`: one step per sequence at a time, in order, each with its own
  recurrent state stacked along that state's batch axis (not always the first).
- `forwardpass.generation.engine.Generator`: continuous batching, where the batch is a key/value cache that sequences
  join and leave at every decode step; a failed step fails every sequence in it, as their cache rows are one array.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from forwardpass.errors import ShapeError

__all__ = ["check_rows", "fail_alone", "split_rows"]

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
Item = TypeVar("Item")
Result = TypeVar("Result")
Failure = TypeVar("Failure", bound=Exception)


def fail_alone(
    run: Callable[[list[Item]], Sequence[Result]], items: list[Item], caught: type[Failure]
) -> list[Result | Failure]:
    """`run(items)`, one result per item; when it raises `caught`, each item runs alone to find the culprit (a failed
    batch blames no item by itself), and an item that fails alone gets its exception as its result."""
    try:
        return [*run(items)]
    except caught as exc:
        if len(items) == 1:
            return [exc]
        log.debug("a batch of %d items failed (%s); running each alone", len(items), exc)
    return [fail_alone(run, [item], caught)[0] for item in items]


def check_rows(outputs: Arrays, rows: int, axes: Mapping[str, int] | None = None) -> None:
    """A ShapeError unless every output holds `rows` rows along its batch axis (`axes`, else the first)."""
    for name, value in outputs.items():
        axis = axes.get(name, 0) if axes else 0
        if value.ndim <= axis or value.shape[axis] != rows:
            raise ShapeError(
                f"output '{name}' has shape {list(value.shape)} for {rows} items: it has no batch dimension"
                + (f" on axis {axis}" if axis else "")
            )


def split_rows(outputs: Arrays, counts: Sequence[int]) -> list[Arrays]:
    """The outputs of one forward pass cut back into consecutive parts of `counts` rows each (one per request)."""
    check_rows(outputs, sum(counts))
    parts = []
    start = 0
    for count in counts:
        end = start + count
        parts.append({name: value[start:end] for name, value in outputs.items()})
        start = end
    return parts
