"""The real server for tests in this process: an InferenceServer on 127.0.0.1 (a free port the OS picks) in a thread of
its own with its own uvloop loop. `serve` starts one on a repository; `stop` ends it; `copy_bundled` puts a bundled
model into a test's repository."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

import forwardpass
from forwardpass.repository import default_repository
from forwardpass.server.app import InferenceServer
from forwardpass.server.settings import ServerSettings

T = TypeVar("T")


class RunningServer:
    """A started InferenceServer; `call` runs a coroutine on its loop (e.g. registry operations)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.server = InferenceServer(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="forwardpass-test-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.http_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """host:port, as tritonclient wants it."""
        return f"127.0.0.1:{self.port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.settings.grpc_port}"

    def start(self) -> RunningServer:
        self._thread.start()
        assert self._started.wait(timeout=60), "the server did not start within 60 s"
        if self._failure is not None:
            raise self._failure
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)

    def call(self, coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine(), self._loop).result(timeout=60)

    def batch_sizes(self, model: str) -> list[int]:
        """A list that the model's batcher appends the rows of every batch it runs to, from now on (its own
        observer, chained before the server's metrics)."""
        sizes: list[int] = []

        async def observe() -> None:
            batcher = self.server.registry.get(model).batcher
            metrics = batcher.on_batch

            def observer(rows: int, run_s: float) -> None:
                sizes.append(rows)
                if metrics is not None:
                    metrics(rows, run_s)

            batcher.on_batch = observer

        self.call(observe)
        return sizes

    def hold_loop(self) -> threading.Event:
        """Blocks the server's event loop until the returned event is set (30 s at most): requests sent meanwhile
        wait in their sockets, and the server reads them all at once when it resumes."""
        assert self._loop is not None
        held, resume = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            resume.wait(timeout=30)

        self._loop.call_soon_threadsafe(hold)
        assert held.wait(timeout=60), "the server's loop never ran the hold"
        return resume

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._failure = exc
            self._started.set()
            return
        self._started.set()
        await self.server.wait(self._stop)
        await self.server.stop()


def serve(repository: Path, **overrides: Any) -> RunningServer:
    settings = ServerSettings(**{"repository": repository, "http_port": 0, "grpc_port": 0, **overrides})
    return RunningServer(settings).start()


def copy_bundled(name: str, repository: Path) -> Path:
    source = default_repository() / name
    if not (source / "1").is_dir():
        pytest.skip(f"bundled model {name} is not built (make models)")
    return Path(shutil.copytree(source, repository / name, ignore=shutil.ignore_patterns(".*")))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers started on a port of their own)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def loaded_once(repository: Path) -> Iterator[Callable[[str], forwardpass.Model]]:
    """For a fixture to yield from: the served models loaded in this process, once each, closed at its end (the
    reference every answer must equal)."""
    loaded: dict[str, forwardpass.Model] = {}

    def get(name: str) -> forwardpass.Model:
        if name not in loaded:
            loaded[name] = forwardpass.load(repository / name)
        return loaded[name]

    yield get
    for each in loaded.values():
        each.close()
