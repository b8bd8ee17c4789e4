"""Dynamic batching on one asyncio loop: validated requests in, one forward pass per batch, each request's rows out.

    submit(arrays, rows) ──► queue (bounded) ──► an idle instance takes a batch ──► runner(batch) in its thread
              ◄── future resolves with this request's rows ◄── outputs split by row offsets ◄──┘

A request that finds an instance idle and nobody queued runs at once: batching adds no latency at low load. Requests
that had to queue are coalesced when an instance frees up, up to `max_batch_size` rows (or a preferred size), waiting
at most `max_queue_delay_s` (counted from the oldest request's arrival) for a fuller batch. Only requests whose
arrays agree past the batch dimension share a batch. A failed batch is retried request by request, so one bad
request fails alone. Dispatch is driven by callbacks (submit, batch done, delay timer), not by polling tasks.

A model whose forward passes take less than INLINE_RUN_S runs on the event loop itself: for the tiny MLP (~50 µs a
pass of 1 row, ~100 µs of 32) the hop to the instance's thread and back -- the wake-up, the GIL hand-overs, a second
loop iteration -- cost more than the pass. Its dispatch then waits for the end of the loop iteration, so that
requests arriving together still share a batch. Passes are timed per size class of batch (1 row, 2-3, 4-7, ...):
a fast model's pass is mostly a fixed cost, so a time per row taken from small batches, times 32 rows, put the
MLP's large batches at ~10x their time, and at load every one of them went to the thread. A batch runs in the
thread until its class (or a smaller one, whose time per row is higher) has been timed, and whenever that estimate
exceeds the bound: the loop never waits for a model that is slow on average. A class's estimate is the slowest but
one of its last TIMED_PASSES passes: at load about one inline pass of the MLP in seven took over 200 µs of CPU, most
with a collection of the youngest garbage generation inside (~190 µs each), and a running mean had then sent the
next several passes to the thread for nothing. In the thread a pass is timed by the thread's CPU time: its wall time
there counts its waits for the GIL, which the loop holds at load, so a fast model sent there once timed slow and
stayed. (A model whose passes are usually fast and rarely slow holds the loop for each slow pass: the estimate passes
over the odd one, but two slow passes in five send the next ones to the thread. With ONNX Runtime's threads set not
to spin, the calling thread's CPU time is less than a multi-threaded pass's wall time: such a model just over the
bound may alternate between the two.)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from forwardpass.errors import Overloaded
from forwardpass.scheduler.batches import Arrays, fail_alone, split_rows

__all__ = ["Batched", "Batcher", "Runner"]

# Forward passes estimated below this run on the event loop: about what a thread hop costs, and far below the
# ~1 ms a loop iteration may take anyway at load.
INLINE_RUN_S = 200e-6
# A size class's estimate is the slowest but one of its last passes: robust to the odd slow pass, not to two.
TIMED_PASSES = 5

Runner = Callable[[Arrays], Arrays]
BatchObserver = Callable[[int, float], None]  # (rows in the batch, seconds its forward pass took)


@dataclass(frozen=True, slots=True)
class Batched:
    """What one request gets back: its own rows of every output, and where its time went."""

    outputs: Arrays
    queued_s: float
    run_s: float
    batch_rows: int


class _Request:
    __slots__ = ("arrays", "behind", "enqueued", "future", "key", "rows")

    def __init__(self, arrays: Arrays, rows: int, key: object, future: asyncio.Future[Batched], behind: bool) -> None:
        self.arrays = arrays
        self.rows = rows
        self.key = key
        self.future = future
        self.enqueued = time.perf_counter()
        self.behind = behind  # arrived while every instance was busy (or others were queued): it may wait to batch


class Batcher:
    def __init__(
        self,
        runners: Sequence[Runner],
        *,
        max_batch_size: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue_delay_s: float = 0.0,
        max_queue_size: int = 256,
        name: str = "model",
        on_batch: BatchObserver | None = None,
    ) -> None:
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        self.name = name
        self._runners = list(runners)
        self._max_rows = max_batch_size
        self._preferred = sorted(size for size in preferred_batch_sizes if 0 < size <= max_batch_size)
        self._delay_s = max_queue_delay_s
        self._max_queue = max_queue_size
        self.on_batch = on_batch  # told of every batch: metrics
        self._idle = list(range(len(runners)))
        self._queue: deque[_Request] = deque()
        self._running = 0
        self._closing = False
        self._drained: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._row_s: dict[int, float] = {}  # per size class (rows.bit_length()), the pass's time per row
        self._timed: dict[int, deque[float]] = {}  # per size class, the time per row of its last passes
        self._dispatch_pending = False
        self._executor = ThreadPoolExecutor(max_workers=len(runners), thread_name_prefix=f"forwardpass-{name}")

    @property
    def depth(self) -> int:
        """Requests waiting for an instance (not counting those running)."""
        return len(self._queue)

    def submit(self, arrays: Arrays, rows: int) -> asyncio.Future[Batched]:
        """Queue one validated request of `rows` rows; the future resolves with its rows of the outputs."""
        if self._closing:
            raise Overloaded(f"model '{self.name}' is being unloaded; retry to reach its replacement")
        if len(self._queue) >= self._max_queue:
            raise Overloaded(f"model '{self.name}' has {len(self._queue)} requests queued, its limit; retry later")
        future: asyncio.Future[Batched] = asyncio.get_running_loop().create_future()
        key = _batch_key(arrays) if self._max_rows else None
        self._queue.append(_Request(arrays, rows, key, future, behind=not self._idle or bool(self._queue)))
        if self._runs_inline(rows):
            self._dispatch_after_this_iteration()
        else:
            self._dispatch()
        return future

    async def drain(self) -> None:
        """Refuse new requests, finish every queued and running one, then release the threads."""
        self._closing = True
        if self._queue or self._running:
            self._drained = asyncio.Event()
            await self._drained.wait()
        self._executor.shutdown(wait=False)

    def _dispatch_after_this_iteration(self) -> None:
        if not self._dispatch_pending:
            self._dispatch_pending = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_pending = False
        while self._idle and self._queue:
            batch = self._take()
            if batch is None:
                return
            instance = self._idle.pop()
            rows = batch[0].rows if len(batch) == 1 else sum(request.rows for request in batch)
            if self._runs_inline(rows):
                self._run_inline(instance, batch, rows)
            else:
                self._launch(instance, batch, rows)

    def _runs_inline(self, rows: int) -> bool:
        """Whether a pass of `rows` rows is expected within INLINE_RUN_S: by its size class's time per row, else by
        the nearest smaller class's (fixed costs weigh more in smaller batches: never an underestimate for a model
        whose pass time grows with its rows); False until one of them has been timed."""
        for size in range(rows.bit_length(), 0, -1):
            row_s = self._row_s.get(size)
            if row_s is not None:
                return row_s * rows < INLINE_RUN_S
        return False

    def _take(self) -> list[_Request] | None:
        """The next batch, removed from the queue; None when the queue should wait for a fuller batch."""
        queue = self._queue
        while queue and queue[0].future.done():  # timed out or cancelled while queued
            queue.popleft()
        if not queue:
            return None
        head = queue[0]
        if not self._max_rows or head.rows >= self._max_rows:
            return [queue.popleft()]
        batch: list[_Request] = []
        rows = 0
        for request in queue:
            if request.future.done() or request.key != head.key:
                continue
            if rows + request.rows > self._max_rows:
                break
            batch.append(request)
            rows += request.rows
            if rows == self._max_rows:
                break
        batch, full = self._cut(batch, rows)
        if not full and self._delay_s and head.behind:
            wait_s = head.enqueued + self._delay_s - time.perf_counter()
            if wait_s > 0:
                self._arm_timer(wait_s)
                return None
        self._remove(batch)
        return batch

    def _cut(self, batch: list[_Request], rows: int) -> tuple[list[_Request], bool]:
        """Trim to the largest preferred size that can be formed; (batch, whether it is as full as it should be)."""
        if rows == self._max_rows:
            return batch, True
        fitting = [size for size in self._preferred if size <= rows]
        if not fitting:
            return batch, False
        kept, total = [], 0
        for request in batch:
            if total + request.rows > fitting[-1]:
                break
            kept.append(request)
            total += request.rows
        return kept, True

    def _remove(self, batch: list[_Request]) -> None:
        queue = self._queue
        if all(queue[i] is request for i, request in enumerate(batch)):
            for _ in batch:
                queue.popleft()
            return
        taken = {id(request) for request in batch}
        self._queue = deque(r for r in queue if id(r) not in taken and not r.future.done())

    def _arm_timer(self, wait_s: float) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(wait_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _run_inline(self, instance: int, batch: list[_Request], rows: int) -> None:
        self._running += 1
        started = time.perf_counter()
        outcomes, pass_s = _timed_run(self._runners[instance], batch, time.perf_counter)  # what the loop waits
        self._settle(instance, batch, rows, started, outcomes, pass_s)

    def _launch(self, instance: int, batch: list[_Request], rows: int) -> None:
        self._running += 1
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        work = self._executor.submit(_timed_run, self._runners[instance], batch, time.thread_time)
        # straight back onto the loop: wrapping in an asyncio future would cost a second loop iteration
        work.add_done_callback(
            lambda done: loop.call_soon_threadsafe(self._finished, instance, batch, rows, started, done)
        )

    def _finished(
        self, instance: int, batch: list[_Request], rows: int, started: float, work: Future[tuple[_Outcome, float]]
    ) -> None:
        try:
            outcomes, pass_s = work.result()
        except BaseException as exc:  # the executor itself failed (e.g. shut down): every request learns why
            outcomes, pass_s = [exc] * len(batch), None
        self._settle(instance, batch, rows, started, outcomes, pass_s)
        self._dispatch()

    def _settle(
        self,
        instance: int,
        batch: list[_Request],
        rows: int,
        started: float,
        outcomes: _Outcome,
        pass_s: float | None,
    ) -> None:
        """Every request of a finished batch (of `rows` rows in all) gets its rows (or its error); the instance is
        idle again."""
        run_s = time.perf_counter() - started
        if pass_s is not None:
            size = rows.bit_length()
            timed = self._timed.setdefault(size, deque(maxlen=TIMED_PASSES))
            timed.append(pass_s / rows)
            ordered = sorted(timed)
            self._row_s[size] = ordered[-2] if len(ordered) >= 3 else ordered[-1]
        for request, outcome in zip(batch, outcomes, strict=True):
            if request.future.done():
                continue
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(Batched(outcome, started - request.enqueued, run_s, rows))
        if self.on_batch is not None:
            self.on_batch(rows, run_s)
        self._running -= 1
        self._idle.append(instance)
        if self._drained is not None and not self._running and not self._queue:
            self._drained.set()


_Outcome = list[Arrays | BaseException]


def _batch_key(arrays: Arrays) -> tuple[tuple[str, tuple[int, ...], np.dtype], ...]:
    return tuple((name, array.shape[1:], array.dtype) for name, array in arrays.items())


def _timed_run(runner: Runner, batch: list[_Request], clock: Callable[[], float]) -> tuple[_Outcome, float]:
    """`_run`, and how long it took by `clock` (the forward pass, without the hops around it)."""
    started = clock()
    outcomes = _run(runner, batch)
    return outcomes, clock() - started


def _run(runner: Runner, batch: list[_Request]) -> _Outcome:
    """In an instance's thread (on the loop for a fast model): the batch as one forward pass; if that fails, each
    request alone to find the culprit."""
    return [*fail_alone(partial(_run_together, runner), batch, Exception)]


def _run_together(runner: Runner, batch: list[_Request]) -> list[Arrays]:
    if len(batch) == 1:
        return [runner(batch[0].arrays)]
    names = batch[0].arrays.keys()
    outputs = runner({name: np.concatenate([r.arrays[name] for r in batch]) for name in names})
    return split_rows(outputs, [request.rows for request in batch])
