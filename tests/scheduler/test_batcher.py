"""The dynamic batcher with plain Python runners: when it dispatches, what it coalesces, how failures stay alone."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from forwardpass.errors import InputError, Overloaded
from forwardpass.scheduler.batcher import Batched, Batcher

Arrays = dict[str, np.ndarray]


class Recorder:
    """A runner that doubles its input, records each batch's row count, and can hold a batch until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[int] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, arrays: Arrays) -> Arrays:
        self.started.set()
        self.release.wait(timeout=30)
        x = arrays["x"]
        self.batches.append(len(x))
        if np.isnan(x).any():
            raise InputError("x holds NaN")  # what ONNX Runtime does to a value it refuses
        return {"y": x * 2}


def rows(*values: float, width: int = 2) -> Arrays:
    return {"x": np.array([[v] * width for v in values], dtype=np.float32)}


async def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never came true")


async def hold_engine(batcher: Batcher, runner: Recorder) -> asyncio.Future[Batched]:
    """Start one request and wait until its batch is running, so that later requests must queue."""
    first = batcher.submit(rows(0.0), 1)
    await wait_for(runner.started.is_set)
    return first


@pytest.mark.asyncio
async def test_a_lone_request_runs_at_once_even_with_a_long_queue_delay():
    runner = Recorder()
    batcher = Batcher([runner], max_batch_size=8, max_queue_delay_s=5.0)
    started = time.perf_counter()
    done = await batcher.submit(rows(1.0), 1)
    assert time.perf_counter() - started < 2.5  # far below the 5 s delay: an idle engine does not wait
    np.testing.assert_array_equal(done.outputs["y"], [[2.0, 2.0]])
    assert runner.batches == [1]
    await batcher.drain()


@pytest.mark.asyncio
async def test_requests_queued_behind_a_busy_engine_share_one_forward_pass():
    runner = Recorder(hold_first=True)
    batcher = Batcher([runner], max_batch_size=8)
    first = await hold_engine(batcher, runner)
    queued = [batcher.submit(rows(float(i)), 1) for i in range(1, 6)]
    assert batcher.depth == 5
    runner.release.set()
    results = await asyncio.gather(first, *queued)
    assert runner.batches == [1, 5]
    for i, done in enumerate(results):
        np.testing.assert_array_equal(done.outputs["y"], [[2.0 * i, 2.0 * i]])
    assert results[1].batch_rows == 5
    await batcher.drain()


@pytest.mark.asyncio
async def test_batches_never_exceed_max_batch_size_and_multi_row_requests_stay_whole():
    runner = Recorder(hold_first=True)
    batcher = Batcher([runner], max_batch_size=4)
    first = await hold_engine(batcher, runner)
    sizes = [1, 2, 1, 3, 1, 1]
    queued = [batcher.submit(rows(*([float(n)] * n)), n) for n in sizes]
    runner.release.set()
    results = await asyncio.gather(first, *queued)
    assert runner.batches == [1, 4, 4, 1]  # 1+2+1 | 3+1 | 1: a request never splits across batches
    for n, done in zip(sizes, results[1:], strict=True):
        assert done.outputs["y"].shape == (n, 2)
        np.testing.assert_array_equal(done.outputs["y"], np.full((n, 2), 2.0 * n))
    await batcher.drain()


@pytest.mark.asyncio
async def test_a_request_larger_than_max_batch_size_runs_alone():
    runner = Recorder()
    batcher = Batcher([runner], max_batch_size=2)
    done = await batcher.submit(rows(1.0, 2.0, 3.0), 3)
    assert done.outputs["y"].shape == (3, 2)
    assert runner.batches == [3]
    await batcher.drain()


@pytest.mark.asyncio
async def test_preferred_sizes_cut_the_batch():
    runner = Recorder(hold_first=True)
    batcher = Batcher([runner], max_batch_size=8, preferred_batch_sizes=[2, 4])
    first = await hold_engine(batcher, runner)
    queued = [batcher.submit(rows(float(i)), 1) for i in range(7)]
    runner.release.set()
    await asyncio.gather(first, *queued)
    assert runner.batches == [1, 4, 2, 1]
    await batcher.drain()


@pytest.mark.asyncio
async def test_a_queued_request_waits_up_to_the_delay_for_a_fuller_batch():
    runner = Recorder(hold_first=True)
    delay = 0.3
    batcher = Batcher([runner], max_batch_size=8, max_queue_delay_s=delay)
    first = await hold_engine(batcher, runner)
    waiting = batcher.submit(rows(1.0), 1)
    runner.release.set()
    await first
    late = batcher.submit(rows(2.0), 1)  # arrives while the first queued one waits: joins its batch
    done = await waiting
    await late
    assert done.queued_s >= delay * 0.9  # it waited for its delay (timers never fire early)...
    assert runner.batches == [1, 2]  # ...and the late one joined it
    await batcher.drain()


@pytest.mark.asyncio
async def test_a_bad_request_fails_alone_and_its_batch_neighbours_succeed():
    runner = Recorder(hold_first=True)
    batcher = Batcher([runner], max_batch_size=8)
    first = await hold_engine(batcher, runner)
    good = [batcher.submit(rows(float(i)), 1) for i in range(1, 4)]
    bad = batcher.submit(rows(float("nan")), 1)
    more = [batcher.submit(rows(float(i)), 1) for i in range(4, 6)]
    runner.release.set()
    await first
    for i, future in zip([1, 2, 3, 4, 5], [*good, *more], strict=True):
        np.testing.assert_array_equal((await future).outputs["y"], [[2.0 * i, 2.0 * i]])
    with pytest.raises(InputError, match="NaN"):
        await bad
    assert runner.batches[:2] == [1, 6]  # the batch of six ran (and failed) together, then each alone
    assert sorted(runner.batches[2:]) == [1] * 6
    await batcher.drain()


@pytest.mark.asyncio
async def test_requests_of_different_shapes_never_share_a_batch():
    runner = Recorder(hold_first=True)
    batcher = Batcher([runner], max_batch_size=8)
    first = await hold_engine(batcher, runner)
    narrow = [batcher.submit(rows(1.0, width=2), 1) for _ in range(3)]
    wide = [batcher.submit(rows(1.0, width=3), 1) for _ in range(2)]
    runner.release.set()
    results = await asyncio.gather(first, *narrow, *wide)
    assert [done.outputs["y"].shape[1] for done in results[1:]] == [2, 2, 2, 3, 3]
    assert runner.batches == [1, 3, 2]
    await batcher.drain()


@pytest.mark.asyncio
async def test_a_full_queue_refuses_with_overloaded():
    runner = Recorder(hold_first=True)
    batcher = Batcher([runner], max_batch_size=4, max_queue_size=3, name="tiny")
    first = await hold_engine(batcher, runner)
    queued = [batcher.submit(rows(1.0), 1) for _ in range(3)]
    with pytest.raises(Overloaded, match="'tiny' has 3 requests queued") as refused:
        batcher.submit(rows(1.0), 1)
    assert refused.value.http_status == 503
    runner.release.set()
    await asyncio.gather(first, *queued)
    await batcher.drain()


@pytest.mark.asyncio
async def test_timed_out_requests_are_skipped_not_run():
    runner = Recorder(hold_first=True)
    batcher = Batcher([runner], max_batch_size=8)
    first = await hold_engine(batcher, runner)
    abandoned = batcher.submit(rows(1.0), 1)
    kept = batcher.submit(rows(2.0), 1)
    abandoned.cancel()  # what a request timeout does to its future
    runner.release.set()
    await first
    np.testing.assert_array_equal((await kept).outputs["y"], [[4.0, 4.0]])
    assert runner.batches == [1, 1]
    await batcher.drain()


@pytest.mark.asyncio
async def test_instances_run_batches_in_parallel():
    gate = threading.Barrier(2, timeout=10)

    def meet(arrays: Arrays) -> Arrays:
        gate.wait()  # returns only when both instances are inside a forward pass at once
        return {"y": arrays["x"]}

    batcher = Batcher([meet, meet], max_batch_size=8)
    results = await asyncio.gather(batcher.submit(rows(1.0), 1), batcher.submit(rows(2.0), 1))
    assert [done.outputs["y"][0, 0] for done in results] == [1.0, 2.0]
    await batcher.drain()


@pytest.mark.asyncio
async def test_drain_finishes_queued_work_then_refuses():
    runner = Recorder(hold_first=True)
    batcher = Batcher([runner], max_batch_size=8)
    first = await hold_engine(batcher, runner)
    queued = batcher.submit(rows(3.0), 1)
    draining = asyncio.create_task(batcher.drain())
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded, match="being unloaded"):
        batcher.submit(rows(1.0), 1)
    runner.release.set()
    await draining
    assert (await first).outputs["y"].shape == (1, 2)
    np.testing.assert_array_equal((await queued).outputs["y"], [[6.0, 6.0]])


@pytest.mark.asyncio
async def test_without_batching_each_request_runs_alone_and_the_observer_sees_every_batch():
    runner = Recorder(hold_first=True)
    seen: list[int] = []
    batcher = Batcher([runner], max_batch_size=0, on_batch=lambda rows, seconds: seen.append(rows))
    first = await hold_engine(batcher, runner)
    queued = [batcher.submit(rows(1.0, 2.0), 2) for _ in range(3)]
    runner.release.set()
    await asyncio.gather(first, *queued)
    assert runner.batches == [1, 2, 2, 2]
    assert seen == [1, 2, 2, 2]
    await batcher.drain()


@pytest.mark.asyncio
async def test_an_output_without_a_batch_dimension_is_answered_by_running_each_request_alone():
    calls: list[int] = []
    release = threading.Event()

    def total(arrays: Arrays) -> Arrays:
        release.wait(timeout=30)
        calls.append(len(arrays["x"]))
        return {"sum": np.asarray(arrays["x"].sum())}  # a scalar: rows cannot be split out of it

    batcher = Batcher([total], max_batch_size=8)
    first = batcher.submit(rows(1.0), 1)
    await asyncio.sleep(0.05)
    queued = [batcher.submit(rows(2.0), 1), batcher.submit(rows(3.0), 1)]
    release.set()
    results = await asyncio.gather(first, *queued)
    assert [float(done.outputs["sum"]) for done in results] == [2.0, 4.0, 6.0]
    assert calls == [1, 2, 1, 1]
    await batcher.drain()


class ThreadRecorder:
    """A runner that notes the thread of each pass and takes `pass_s` of wall time."""

    def __init__(self, pass_s: float) -> None:
        self.pass_s = pass_s
        self.threads: list[int] = []
        self.batches: list[int] = []

    def __call__(self, arrays: Arrays) -> Arrays:
        self.threads.append(threading.get_ident())
        self.batches.append(len(arrays["x"]))
        deadline = time.perf_counter() + self.pass_s
        while time.perf_counter() < deadline:
            pass
        return {"y": arrays["x"] * 2}


@pytest.mark.asyncio
async def test_a_fast_model_runs_on_the_loop_once_timed_and_requests_arriving_together_share_a_pass():
    runner = ThreadRecorder(pass_s=0.0)
    batcher = Batcher([runner], max_batch_size=8, name="fast")
    await asyncio.wait_for(batcher.submit(rows(1.0), 1), 5)  # the first pass is timed in the instance's thread
    assert runner.threads == [runner.threads[0]] and runner.threads[0] != threading.get_ident()
    # A pass preempted on a loaded machine times slow and sends the next one to the thread: lone requests until one
    # runs on the loop (the estimate falls back as passes time fast), then five at once; a few tries, since the lone
    # pass or the shared one can be preempted too (CI at load 8 did both). Without inline runs or shared passes,
    # every try fails.
    shared = False
    for _ in range(20):
        for _ in range(50):
            if runner.threads[-1] == threading.get_ident():
                break
            await asyncio.wait_for(batcher.submit(rows(1.0), 1), 5)
        passes = len(runner.threads)
        answers = await asyncio.wait_for(asyncio.gather(*(batcher.submit(rows(float(i)), 1) for i in range(5))), 5)
        assert [float(a.outputs["y"][0, 0]) for a in answers] == [0.0, 2.0, 4.0, 6.0, 8.0]
        assert sum(runner.batches[passes:]) == 5
        shared = runner.threads[passes:] == [threading.get_ident()] and runner.batches[passes:] == [5]
        if shared:  # one pass, on the loop's own thread
            break
    assert shared, list(zip(runner.threads, runner.batches, strict=True))[-12:]
    await batcher.drain()


@pytest.mark.asyncio
async def test_a_model_whose_pass_is_a_fixed_cost_runs_its_large_batches_on_the_loop_too():
    """60 µs a pass whatever its rows, as the tiny MLP's passes are mostly the Python around ONNX Runtime: the time
    per row of its 1-row passes, times 8 rows, is 480 µs, over the bound; its 8-row passes themselves take 60."""
    runner = ThreadRecorder(pass_s=60e-6)
    batcher = Batcher([runner], max_batch_size=8, name="fixed")
    eight_on_loop = []
    for _ in range(30):
        await asyncio.wait_for(batcher.submit(rows(1.0), 1), 5)
        answer = await asyncio.wait_for(batcher.submit(rows(*range(8)), 8), 5)
        assert answer.outputs["y"][:, 0].tolist() == [2.0 * i for i in range(8)]
        eight_on_loop.append(runner.batches[-1] == 8 and runner.threads[-1] == threading.get_ident())
    # the first is timed in the thread; a pass preempted on a loaded machine sends a few more there
    assert sum(eight_on_loop) >= 10, eight_on_loop
    await batcher.drain()


@pytest.mark.asyncio
async def test_one_slow_pass_among_fast_ones_does_not_send_the_next_to_the_thread():
    """A garbage collection or a preemption inside one pass makes it slow; the next pass of a fast model stays on the
    loop (a running mean had sent it, and several after it, to the thread). Two slow passes in five do send it."""
    runner = ThreadRecorder(pass_s=0.0)
    batcher = Batcher([runner], max_batch_size=8, name="spiky")
    on_loop_after_a_spike = []
    for _ in range(8):
        for _ in range(5):  # fast passes, so that the last five are fast (a preempted one may still be among them)
            await asyncio.wait_for(batcher.submit(rows(1.0), 1), 5)
        runner.pass_s = 0.002  # ten times the bound
        await asyncio.wait_for(batcher.submit(rows(1.0), 1), 5)
        runner.pass_s = 0.0
        await asyncio.wait_for(batcher.submit(rows(1.0), 1), 5)
        on_loop_after_a_spike.append(runner.threads[-1] == threading.get_ident())
    assert sum(on_loop_after_a_spike) >= 4, on_loop_after_a_spike  # every one, but for preemptions at load
    runner.pass_s = 0.002
    for _ in range(2):
        await asyncio.wait_for(batcher.submit(rows(1.0), 1), 5)
    runner.pass_s = 0.0
    await asyncio.wait_for(batcher.submit(rows(1.0), 1), 5)
    assert runner.threads[-1] != threading.get_ident()
    await batcher.drain()


@pytest.mark.asyncio
async def test_a_slow_model_never_runs_on_the_loop():
    runner = ThreadRecorder(pass_s=0.002)  # ten times the bound for running on the loop
    batcher = Batcher([runner], max_batch_size=8, name="slow")
    for _ in range(3):
        await asyncio.wait_for(batcher.submit(rows(1.0), 1), 5)
    assert len(runner.threads) == 3 and threading.get_ident() not in runner.threads
    await batcher.drain()
