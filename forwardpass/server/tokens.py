"""One generation as the HTTP routes send it: its tokens with the text each completes, cut before the first stop
string (which ends it, finish reason "stop"), the finished generation counted in the metrics, and several
generations of one request merged as they come; a generation whose client has gone away is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, TypeVar

from starlette.requests import Request

from forwardpass.errors import InputError
from forwardpass.generation.sampling import SamplingParams
from forwardpass.generation.text import StopStrings
from forwardpass.registry import Served
from forwardpass.server.metrics import Metrics

if TYPE_CHECKING:
    from forwardpass.generation.engine import Generator, TokenEvent

__all__ = ["TextStream", "merged", "open_streams", "unless_disconnected"]

T = TypeVar("T")


class TextStream:
    """Queued at construction (a refusal raises there, before any answer is sent); `texts()` gives each token with
    the text it completes (the rest of the text with the last token); `close()` takes it out of the batch."""

    def __init__(
        self,
        metrics: Metrics,
        served: Served,
        generator: Generator,
        prompt: list[int],
        params: SamplingParams,
        stop: tuple[str, ...] = (),
    ) -> None:
        self.prompt = prompt
        self.generator = generator
        self.tokens = 0
        self._metrics = metrics
        self._served = served
        self._stop = stop
        self._use = served.in_use()  # retiring this model version waits until the generation ends
        self._use.__enter__()
        self._started = time.perf_counter()
        try:
            self._events = generator.stream(prompt, params)
        except BaseException:
            self._use.__exit__(None, None, None)
            raise
        self._closed = False

    async def texts(self) -> AsyncIterator[tuple[TokenEvent, str]]:
        text = self.generator.codec.incremental()
        stops = StopStrings(self._stop)
        first_token_s = 0.0
        try:
            async for event in self._events:
                if not self.tokens:
                    first_token_s = time.perf_counter() - self._started
                self.tokens += 1
                reason = event.finish_reason
                delta = stops.feed(text.push(event.token_id) + (text.flush() if reason else ""), final=bool(reason))
                if stops.stopped:
                    reason = "stop"
                if reason is None:
                    yield event, delta
                    continue
                elapsed = time.perf_counter() - self._started
                served = self._served
                self._metrics.generated(
                    served.name, served.version, len(self.prompt), self.tokens, first_token_s, elapsed, reason
                )
                yield dataclasses.replace(event, finish_reason=reason), delta
                return
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._events.close()
            self._use.__exit__(None, None, None)


def open_streams(
    metrics: Metrics,
    served: Served,
    generator: Generator,
    prompts: list[list[int]],
    params: list[SamplingParams],
    stop: tuple[str, ...],
) -> list[TextStream]:
    """One stream per (prompt, params), all queued now; if one is refused, those already queued are cancelled."""
    most = generator.config.max_queue_size
    if len(prompts) > most:  # no retry would get them in: not the 503 of a queue that is full for now
        raise InputError(
            f"the request asks for {len(prompts)} generations: model '{served.name}' queues at most {most}; split it"
        )
    opened: list[TextStream] = []
    try:
        for prompt, choice in zip(prompts, params, strict=True):
            opened.append(TextStream(metrics, served, generator, prompt, choice, stop))
    except BaseException:
        for stream in opened:
            stream.close()
        raise
    return opened


async def merged(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """The items of several iterators as they come, each with the index of its iterator; the first error ends all."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:  # type: ignore[type-var]
            async for item in only:
                yield 0, item
        return
    arrived: asyncio.Queue[tuple[int, T] | BaseException | None] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                arrived.put_nowait((index, item))
        except Exception as exc:  # a ForwardpassError, or a bug: either way the answer ends with it
            arrived.put_nowait(exc)
        finally:
            arrived.put_nowait(None)

    tasks = [asyncio.create_task(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            got = await arrived.get()
            if got is None:
                running -= 1
            elif isinstance(got, BaseException):
                raise got
            else:
                yield got
    finally:
        for task in tasks:
            task.cancel()


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled if the client goes away before it is done (its generations leave the batch at the next
    step instead of running to their end for nobody)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise InputError("the client disconnected; its generation was cancelled")
    return task.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: what the server receives next is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        continue
