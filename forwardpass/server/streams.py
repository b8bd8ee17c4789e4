"""One stream of requests answered concurrently, so that its requests can share batches, and in request order: what
gRPC's ModelStreamInfer and the WebSocket endpoint both do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["STREAM_WINDOW", "in_order"]

# Requests of one stream in flight at once: enough to fill batches, few enough to bound memory.
STREAM_WINDOW = 64

Request = TypeVar("Request")
Answer = TypeVar("Answer")


async def in_order(
    requests: AsyncIterator[Request], answer: Callable[[Request], Coroutine[Any, Any, Answer]]
) -> AsyncGenerator[Answer, None]:
    """`answer(request)` for each request as it arrives (at most STREAM_WINDOW at once), yielded in request order.
    A failure to read `requests` is raised after the answers before it; closing this stops reading and cancels the
    answers not yet yielded."""
    answers: asyncio.Queue[asyncio.Task[Answer] | None] = asyncio.Queue(STREAM_WINDOW)

    async def read() -> None:
        try:
            async for request in requests:
                await answers.put(asyncio.create_task(answer(request)))
        finally:
            await answers.put(None)

    reader = asyncio.create_task(read())
    try:
        while (task := await answers.get()) is not None:
            yield await task
        await reader  # re-raises a failure to read the stream
    finally:
        reader.cancel()
        while not answers.empty():
            pending = answers.get_nowait()
            if pending is not None:
                pending.cancel()
