"""Triton's sequence batcher for stateful models: each sequence's recurrent state lives here, between its steps.

    submit(id, arrays, start, end) ──► the sequence's own queue ──► ready sequences (oldest first)
        an idle instance takes the next step of up to `max_batch_size` sequences ──► one forward pass, their states
        stacked along each state's batch axis ──► every sequence keeps its rows of the state outputs for its next step

A request carries a correlation id and start/end flags. `start` (re)opens a sequence with every state at its
initial value; a request for an id that is not open and has no `start` is refused (InputError), as is a start beyond
`max_sequences` (Overloaded) or beyond `max_sequences_per_client` of the same client (ClientQuotaExceeded), so one
client cannot take every slot. Steps of one sequence run one at a time, in the order they were submitted; steps of
different sequences share forward passes, so interleaved sequences give exactly what each gives alone. A sequence
frees its state after its `end` step, or after `idle_timeout_s` without a request. A failed step fails alone and
leaves its sequence's state as it was; so does a step whose deadline passed, queued or running (a `start` resets it
either way: what follows it is the new stream's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from forwardpass.config import SequenceBatchingConfig
from forwardpass.errors import ClientQuotaExceeded, ConfigError, DeadlineExceeded, InputError, Overloaded, ShapeError
from forwardpass.scheduler.batcher import Batched, BatchObserver, Runner
from forwardpass.scheduler.batches import Arrays, check_rows, fail_alone
from forwardpass.tensor import TensorSpec

__all__ = ["SequenceBatcher", "StateSlot", "run_steps", "sequence_flags", "state_slots"]

log = logging.getLogger(__name__)

SequenceId = int | str


@dataclass(frozen=True, slots=True)
class StateSlot:
    """One state tensor: fed as `input`, read back from `output`; `initial` is one sequence's first value."""

    input: str
    output: str
    batch_axis: int
    initial: np.ndarray


def state_slots(
    config: SequenceBatchingConfig, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> list[StateSlot]:
    """The config's state pairs checked against the model: names exist, the batch axis is dynamic, every other
    dimension is fixed (so the initial value has a shape)."""
    by_input = {spec.name: spec for spec in inputs}
    output_names = [spec.name for spec in outputs]
    slots = []
    for index, declared in enumerate(config.state):
        where = f"sequence_batching.state[{index}]"
        spec = by_input.get(declared.input)
        if spec is None:
            raise ConfigError(f"{where}.input: the model has no input '{declared.input}'; it has {list(by_input)}")
        if declared.output not in output_names:
            raise ConfigError(f"{where}.output: the model has no output '{declared.output}'; it has {output_names}")
        shape = list(spec.shape)
        if declared.batch_axis >= len(shape) or shape[declared.batch_axis] != -1:
            raise ConfigError(
                f"{where}.batch_axis {declared.batch_axis}: input '{spec.name}' {shape} is not dynamic there"
            )
        shape[declared.batch_axis] = 1
        if any(dim < 0 for dim in shape):
            raise ConfigError(
                f"{where}: input '{spec.name}' {list(spec.shape)} has a dynamic dimension besides the batch"
            )
        if spec.dtype.numpy_dtype is None:
            raise ConfigError(f"{where}: input '{spec.name}' of type {spec.dtype.name} cannot hold a state")
        initial = np.full(shape, declared.initial, dtype=spec.dtype.numpy_dtype)
        slots.append(StateSlot(declared.input, declared.output, declared.batch_axis, initial))
    return slots


# Longer string ids are refused: each open sequence keeps its id, and ids are echoed in errors.
MAX_SEQUENCE_ID_BYTES = 128


def run_steps(forward: Runner, slots: Sequence[StateSlot], steps: Arrays, deadline: float | None = None) -> Arrays:
    """One whole sequence that is all here at once (a recording's chunks): the arrays' first axis is its steps, in
    order; each step is one forward pass of one row, fed the state outputs of the step before (the initial state
    first). The other outputs of the steps, stacked along their first axis. No batcher: nothing waits between steps,
    and a step cannot share a forward pass with the steps after it, which need its state. Past `deadline`
    (time.perf_counter()) the steps left are not run: DeadlineExceeded."""
    state = {slot.input: slot.initial for slot in slots}
    fed_back = {slot.output: slot.input for slot in slots}
    count = len(next(iter(steps.values())))
    collected: dict[str, list[np.ndarray]] = {}
    for index in range(count):
        if deadline is not None and time.perf_counter() > deadline:
            raise DeadlineExceeded(
                f"the sequence's steps ran past their deadline ({index} of {count} run); retry later, or send less"
            )
        outputs = forward({**{name: array[index : index + 1] for name, array in steps.items()}, **state})
        for name, value in outputs.items():
            if name in fed_back:
                state[fed_back[name]] = value
            else:
                collected.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in collected.items()}


def sequence_flags(parameters: Mapping[str, Any], model: str) -> tuple[SequenceId, bool, bool]:
    """(correlation id, start, end) from a request's parameters, as tritonclient sends them (`sequence_id`,
    `sequence_start`, `sequence_end`); Triton's rule: the id is a non-zero integer or a non-empty string."""
    sequence_id = parameters.get("sequence_id")
    if sequence_id is None or sequence_id == 0 or sequence_id == "":
        raise InputError(
            f"model '{model}' keeps state per sequence: send parameter 'sequence_id' (non-zero integer or string) "
            "with every request, and 'sequence_start' with the first"
        )
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str):
        raise InputError(f"parameter 'sequence_id' must be an integer or a string, got {type(sequence_id).__name__}")
    if isinstance(sequence_id, str) and len(sequence_id.encode()) > MAX_SEQUENCE_ID_BYTES:
        raise InputError(f"parameter 'sequence_id' is over {MAX_SEQUENCE_ID_BYTES} bytes")
    if isinstance(sequence_id, int) and not 0 < sequence_id < 2**64:  # Triton's ids are uint64
        raise InputError("parameter 'sequence_id' must be an integer from 1 to 2**64 - 1, or a string")
    flags = []
    for name in ("sequence_start", "sequence_end"):
        value = parameters.get(name, False)
        if not isinstance(value, bool):
            raise InputError(f"parameter '{name}' must be true or false, got {value!r}")
        flags.append(value)
    return sequence_id, flags[0], flags[1]


class _Step:
    __slots__ = ("arrays", "end", "enqueued", "future", "key", "start")

    def __init__(self, arrays: Arrays, start: bool, end: bool, future: asyncio.Future[Batched]) -> None:
        self.arrays = arrays
        self.start = start
        self.end = end
        self.future = future
        self.key = tuple((name, array.shape[1:], array.dtype) for name, array in arrays.items())
        self.enqueued = time.perf_counter()


class _Sequence:
    __slots__ = ("id", "key", "open", "pending", "ready", "running", "state", "timer")

    def __init__(self, key: tuple[str, SequenceId]) -> None:
        self.key = key  # (client, id): one client's ids are not another's
        self.id = key[1]
        self.pending: deque[_Step] = deque()
        self.state: Arrays | None = None  # None: the initial values
        self.open = True  # accepts steps without `start` (its end has not been submitted)
        self.running = False
        self.ready = False  # in the ready queue
        self.timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Job:
    """One step inside a forward pass: its inputs, state included."""

    sequence: _Sequence
    step: _Step
    inputs: Arrays


_Outcome = list[tuple[Arrays, Arrays] | BaseException]  # per job: (its outputs, its next state) or its error


class SequenceBatcher:
    def __init__(
        self,
        runners: Sequence[Runner],
        inputs: Sequence[TensorSpec],
        states: Sequence[StateSlot],
        *,
        max_batch_size: int = 1,
        max_sequences: int = 1024,
        max_sequences_per_client: int | None = None,
        idle_timeout_s: float = 60.0,
        max_queue_size: int = 256,
        name: str = "model",
        on_batch: BatchObserver | None = None,
    ) -> None:
        if not runners:
            raise ValueError("a sequence batcher needs at least one runner")
        self.name = name
        self.states = list(states)
        state_inputs = {slot.input for slot in self.states}
        self.inputs = [spec for spec in inputs if spec.name not in state_inputs]  # what clients send
        self.state_outputs = frozenset(slot.output for slot in self.states)  # what clients never see
        self.idle_timeout_s = idle_timeout_s
        self.on_batch = on_batch
        self._runners = list(runners)
        self._max_rows = max(1, max_batch_size)
        self._max_sequences = max_sequences
        self._max_per_client = max_sequences_per_client or max_sequences
        self._per_client: Counter[str] = Counter()  # open sequences by client
        self._max_queue = max_queue_size
        self._sequences: dict[tuple[str, SequenceId], _Sequence] = {}
        self._ready: deque[_Sequence] = deque()
        self._idle = list(range(len(runners)))
        self._queued = 0
        self._running = 0
        self._closing = False
        self._drained: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(max_workers=len(runners), thread_name_prefix=f"forwardpass-seq-{name}")

    @property
    def active(self) -> int:
        """Sequences holding state now."""
        return len(self._sequences)

    @property
    def depth(self) -> int:
        """Steps waiting for an instance."""
        return self._queued

    def validate(self, arrays: Mapping[str, Any]) -> Arrays:
        """A step's inputs (state excluded), each one row: the client's part of the forward pass."""
        names = [spec.name for spec in self.inputs]
        if set(arrays) != set(names):
            raise InputError(
                f"model '{self.name}' takes {names} per step (its state stays on the server); got {sorted(arrays)}"
            )
        validated = {spec.name: spec.validate(arrays[spec.name]) for spec in self.inputs}
        for name, array in validated.items():
            if array.ndim == 0 or array.shape[0] != 1:
                raise ShapeError(
                    f"input '{name}': a sequence step is one row (batch dimension 1), got {list(array.shape)}"
                )
        return validated

    def submit(
        self, sequence_id: SequenceId, arrays: Arrays, *, start: bool, end: bool, client: str = ""
    ) -> asyncio.Future[Batched]:
        """Queue one step of a sequence; the future resolves with its outputs (state outputs left out). Sequence ids
        are the `client`'s own: another client's step with the same id is another sequence."""
        if self._closing:
            raise Overloaded(f"model '{self.name}' is being unloaded; its sequences end here")
        if self._queued >= self._max_queue:
            raise Overloaded(f"model '{self.name}' has {self._queued} steps queued, its limit; retry later")
        key = (client, sequence_id)
        sequence = self._sequences.get(key)
        if not start and (sequence is None or not sequence.open):
            raise InputError(
                f"model '{self.name}': sequence {sequence_id!r} is not active (never started, ended, or idle for "
                f"over {self.idle_timeout_s:g} s and freed); send 'sequence_start' with its first request"
            )
        if sequence is None:
            if len(self._sequences) >= self._max_sequences:
                raise Overloaded(f"model '{self.name}' holds {len(self._sequences)} sequences, its limit; retry later")
            if self._per_client[client] >= self._max_per_client:
                raise ClientQuotaExceeded(
                    f"model '{self.name}': this client holds {self._per_client[client]} open sequences, its limit "
                    f"(max_sequences_per_client {self._max_per_client}); end one (sequence_end) before starting another"
                )
            sequence = self._sequences[key] = _Sequence(key)
            self._per_client[client] += 1
        sequence.open = not end
        future: asyncio.Future[Batched] = asyncio.get_running_loop().create_future()
        sequence.pending.append(_Step(arrays, start, end, future))
        self._queued += 1
        self._make_ready(sequence)
        self._touch(sequence)
        self._dispatch()
        return future

    async def drain(self) -> None:
        """Refuse new steps, finish those queued and running, free every sequence, release the threads."""
        self._closing = True
        if self._queued or self._running:
            self._drained = asyncio.Event()
            await self._drained.wait()
        for sequence in self._sequences.values():
            if sequence.timer is not None:
                sequence.timer.cancel()
        self._sequences.clear()
        self._per_client.clear()
        self._executor.shutdown(wait=False)

    # scheduling

    def _make_ready(self, sequence: _Sequence) -> None:
        if sequence.pending and not sequence.running and not sequence.ready:
            sequence.ready = True
            self._ready.append(sequence)

    def _touch(self, sequence: _Sequence) -> None:
        """(Re)start the sequence's idle clock."""
        if sequence.timer is not None:
            sequence.timer.cancel()
        sequence.timer = asyncio.get_running_loop().call_later(self.idle_timeout_s, self._on_idle, sequence)

    def _on_idle(self, sequence: _Sequence) -> None:
        sequence.timer = None
        if sequence.running or sequence.pending:  # busy, not idle: the clock restarts when it is done
            return
        if self._sequences.get(sequence.key) is sequence:
            log.info("model '%s': sequence %r idle for %g s, freed", self.name, sequence.id, self.idle_timeout_s)
            self._forget(sequence)

    def _forget(self, sequence: _Sequence) -> None:
        del self._sequences[sequence.key]
        client = sequence.key[0]
        self._per_client[client] -= 1
        if not self._per_client[client]:
            del self._per_client[client]  # no entry per client ever seen: only per client holding sequences

    def _dispatch(self) -> None:
        while self._idle and self._ready:
            jobs = self._take()
            if jobs:
                self._launch(self._idle.pop(), jobs)

    def _take(self) -> list[_Job]:
        """The next step of up to `max_batch_size` ready sequences whose steps can share a forward pass."""
        jobs: list[_Job] = []
        passed: list[_Sequence] = []
        key: object = None
        while self._ready and len(jobs) < self._max_rows:
            sequence = self._ready.popleft()
            step = self._next_step(sequence)
            if step is None:
                sequence.ready = False
                continue
            if key is not None and step.key != key:
                passed.append(sequence)  # stays ready, ahead of those behind it
                continue
            key = step.key
            sequence.pending.popleft()
            self._queued -= 1
            sequence.ready = False
            sequence.running = True
            jobs.append(_Job(sequence, step, {**step.arrays, **self._state_of(sequence, step)}))
        self._ready.extendleft(reversed(passed))
        return jobs

    def _next_step(self, sequence: _Sequence) -> _Step | None:
        """The sequence's first step still wanted; steps whose caller gave up (timed out) are dropped. A dropped
        `start` resets the state all the same, as one given up while it ran does: the steps after it belong to the
        new stream, not to the one before the restart."""
        while sequence.pending and sequence.pending[0].future.done():
            if sequence.pending.popleft().start:
                sequence.state = None
            self._queued -= 1
        return sequence.pending[0] if sequence.pending else None

    def _state_of(self, sequence: _Sequence, step: _Step) -> Arrays:
        if step.start or sequence.state is None:
            return {slot.input: slot.initial for slot in self.states}
        return sequence.state

    def _launch(self, instance: int, jobs: list[_Job]) -> None:
        self._running += 1
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        work = self._executor.submit(_run, self._runners[instance], self.states, jobs)
        work.add_done_callback(lambda done: loop.call_soon_threadsafe(self._finished, instance, jobs, started, done))

    def _finished(self, instance: int, jobs: list[_Job], started: float, work: Future[_Outcome]) -> None:
        run_s = time.perf_counter() - started
        try:
            outcomes = work.result()
        except BaseException as exc:  # the executor itself failed: every step learns why
            outcomes = [exc] * len(jobs)
        for job, outcome in zip(jobs, outcomes, strict=True):
            sequence, step = job.sequence, job.step
            sequence.running = False
            # A step whose caller was answered already (its deadline passed while it ran) failed as far as the
            # caller knows: like a failed step it leaves the state as it was, so the caller's retry counts once.
            if isinstance(outcome, BaseException) or step.future.done():
                if step.start:
                    sequence.state = None
                if isinstance(outcome, BaseException) and not step.future.done():
                    step.future.set_exception(outcome)
            else:
                outputs, sequence.state = outcome
                step.future.set_result(Batched(outputs, started - step.enqueued, run_s, len(jobs)))
            if step.end:
                sequence.state = None
                if not sequence.pending and self._sequences.get(sequence.key) is sequence:
                    self._forget(sequence)
                    if sequence.timer is not None:
                        sequence.timer.cancel()
                    continue
            self._make_ready(sequence)
            self._touch(sequence)
        if self.on_batch is not None:
            self.on_batch(len(jobs), run_s)
        self._running -= 1
        self._idle.append(instance)
        self._dispatch()
        if self._drained is not None and not self._running and not self._queued:
            self._drained.set()


def _run(runner: Runner, states: list[StateSlot], jobs: list[_Job]) -> _Outcome:
    """In an instance's thread: the steps as one forward pass; if that fails, each alone to find the culprit."""
    return [*fail_alone(partial(_run_together, runner, states), jobs, Exception)]


def _run_together(runner: Runner, states: list[StateSlot], jobs: list[_Job]) -> list[tuple[Arrays, Arrays]]:
    if len(jobs) == 1:
        return [_split(runner(jobs[0].inputs), states, 1)[0]]
    axes = {slot.input: slot.batch_axis for slot in states}
    batch = {
        name: np.concatenate([job.inputs[name] for job in jobs], axis=axes.get(name, 0)) for name in jobs[0].inputs
    }
    return _split(runner(batch), states, len(jobs))


def _split(outputs: Arrays, states: list[StateSlot], count: int) -> list[tuple[Arrays, Arrays]]:
    """Per step: its rows of the outputs the client sees, and its own copy of the next state. (Not `split_rows`:
    each state has a batch axis of its own, and a step keeps a copy of its state, not a view of the batch's.)"""
    axes = {slot.output: slot.batch_axis for slot in states}
    check_rows(outputs, count, axes)
    parts = []
    for row in range(count):
        visible = {name: value[row : row + 1] for name, value in outputs.items() if name not in axes}
        state = {
            slot.input: np.ascontiguousarray(np.take(outputs[slot.output], [row], axis=slot.batch_axis))
            for slot in states
        }
        parts.append((visible, state))
    return parts
